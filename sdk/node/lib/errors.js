'use strict';
/**
 * The SDK's one exception tree.
 *
 *   DeployERPError                    anything this SDK throws on purpose
 *    +-- ConfigurationError           a base URL that is not http(s), or a bad option
 *    +-- APIConnectionError           the API could not be reached (refused, reset, DNS ...)
 *    |    +-- APITimeoutError         ... or did not answer within `timeout`
 *    +-- APIError                     the API answered with an error status
 *         +-- BadRequestError         400
 *         +-- AuthenticationError     401 (authentication_required, invalid_token, expired_token), and no API
 *         |                           key at all (thrown by the first call, before any request)
 *         +-- PermissionError         403 (insufficient_permissions, ip_restricted); alias PermissionDeniedError
 *         +-- NotFoundError           404
 *         +-- ConflictError           409 (the key is revoked, expired or already rotated)
 *         +-- ValidationError         422, with `field`: the request field at fault
 *         +-- RateLimitError          429, with `retryAfter`: seconds to wait (from Retry-After), or null
 *         +-- ServerError             5xx (503 rate_limit_unavailable, 502 upstream_unavailable ...)
 *
 * Every APIError carries the API's error `code`, its `message`, the HTTP `status`, `field`, `requestId` and
 * the parsed error `body`. None holds the API key, the request or its headers: an error can be logged whole
 * (`console.error(error)` prints its own properties).
 */

class DeployERPError extends Error {
  constructor(message, options) {
    super(message, options);
    Object.defineProperty(this, 'name', { value: new.target.name, enumerable: false, configurable: true });
  }
}

class ConfigurationError extends DeployERPError {}

class APIConnectionError extends DeployERPError {}

class APITimeoutError extends APIConnectionError {}

class APIError extends DeployERPError {
  constructor(message, { status, code = null, field = null, requestId = null, body = null } = {}) {
    const label = code ? `${status} ${code}` : String(status);
    super(`${label}: ${message}`);
    this.status = status;
    this.code = code;
    this.field = field;
    this.requestId = requestId;
    this.body = body;
  }
}

class BadRequestError extends APIError {}

class AuthenticationError extends APIError {}

class PermissionError extends APIError {}

class NotFoundError extends APIError {}

class ConflictError extends APIError {}

class ValidationError extends APIError {}

class RateLimitError extends APIError {
  constructor(message, { retryAfter = null, ...rest } = {}) {
    super(message, rest);
    this.retryAfter = retryAfter;
  }
}

class ServerError extends APIError {}

const BY_STATUS = new Map([
  [400, BadRequestError],
  [401, AuthenticationError],
  [403, PermissionError],
  [404, NotFoundError],
  [409, ConflictError],
  [422, ValidationError],
  [429, RateLimitError],
]);

/** The error class for an error status (5xx: ServerError; an unlisted 4xx: APIError). */
function errorClass(status) {
  if (status >= 500) return ServerError;
  return BY_STATUS.get(status) || APIError;
}

module.exports = {
  DeployERPError,
  ConfigurationError,
  APIConnectionError,
  APITimeoutError,
  APIError,
  BadRequestError,
  AuthenticationError,
  PermissionError,
  PermissionDeniedError: PermissionError,
  NotFoundError,
  ConflictError,
  ValidationError,
  RateLimitError,
  ServerError,
  errorClass,
};
