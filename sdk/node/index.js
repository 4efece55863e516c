'use strict';
/**
 * @deployerp/sdk: a client of the deployERP API's keys for Node.js 18 or newer, with no dependencies.
 *
 *   const { DeployERPClient, AuthenticationError } = require('@deployerp/sdk');
 *   const client = new DeployERPClient();   // process.env.DEPLOYERP_API_KEY, DEPLOYERP_BASE_URL
 *   await client.auth.test();
 *
 * The error classes are drawn as a tree in lib/errors.js; index.d.ts declares every export.
 */

const { DeployERPClient, VERSION } = require('./lib/client');
const errors = require('./lib/errors');

module.exports = {
  DeployERPClient,
  DeployERPError: errors.DeployERPError,
  ConfigurationError: errors.ConfigurationError,
  APIConnectionError: errors.APIConnectionError,
  APITimeoutError: errors.APITimeoutError,
  APIError: errors.APIError,
  BadRequestError: errors.BadRequestError,
  AuthenticationError: errors.AuthenticationError,
  PermissionError: errors.PermissionError,
  PermissionDeniedError: errors.PermissionDeniedError,
  NotFoundError: errors.NotFoundError,
  ConflictError: errors.ConflictError,
  ValidationError: errors.ValidationError,
  RateLimitError: errors.RateLimitError,
  ServerError: errors.ServerError,
  VERSION,
};
