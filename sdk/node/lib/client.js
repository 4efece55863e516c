'use strict';
/**
 * DeployERPClient: the deployERP key API over Node's global fetch (Node 18 or newer), no dependencies.
 *
 * Each endpoint is described once (method, path under the prefix, JSON body, query) by `auth` and `apiKeys`
 * and sent by `request()`, the one place that builds headers, retries, reads answers and maps errors.
 *
 * Retries (429 and 503): a 429 means the request was not processed, so any method is sent again; a 503 only
 * for an idempotent method (RFC 9110 9.2.2: GET, HEAD, OPTIONS, PUT, DELETE), as a POST that failed halfway
 * must not create a second key. The wait is the answer's Retry-After (RFC 9110 10.2.3: seconds or an
 * HTTP-date), else an exponential backoff with jitter. Both the number of retries (`maxRetries`) and the
 * total time spent waiting (`maxRetryWait`) are bounded: a Retry-After beyond what is left of the budget is
 * not waited for, the error is thrown at once with its `retryAfter`.
 */

const { inspect } = require('node:util');
const {
  APIConnectionError,
  APITimeoutError,
  AuthenticationError,
  ConfigurationError,
  RateLimitError,
  errorClass,
} = require('./errors');

const VERSION = '0.1.0';
const DEFAULT_BASE_URL = 'https://api.deployerp.com';
const DEFAULT_PREFIX = '/v1';
const DEFAULTS = Object.freeze({ timeout: 30_000, maxRetries: 2, maxRetryWait: 60_000 });
const BACKOFF_BASE = 500; // ms, the first wait without a Retry-After; doubled each retry
const BACKOFF_CAP = 8_000;
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE']);

function blankToNull(value) {
  if (typeof value !== 'string') return null;
  const trimmed = value.trim();
  return trimmed === '' ? null : trimmed;
}

function checkNumber(name, value, { integer = false } = {}) {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || (integer && !Number.isInteger(value))) {
    throw new ConfigurationError(`${name} must be a non-negative ${integer ? 'integer' : 'number'} (got ${value})`);
  }
  return value;
}

function parseBaseUrl(value) {
  let url;
  try {
    url = new URL(value);
  } catch {
    url = null;
  }
  if (!url || !['http:', 'https:'].includes(url.protocol) || url.search || url.hash || url.username) {
    throw new ConfigurationError(
      `baseUrl (or DEPLOYERP_BASE_URL) must be an http:// or https:// URL like ${DEFAULT_BASE_URL} (got ${JSON.stringify(value)})`,
    );
  }
  return url.href.replace(/\/+$/, '');
}

/** A header value that cannot split or bend the Authorization header: printable ASCII, no spaces. */
function sendable(key) {
  return /^[\x21-\x7e]+$/.test(key);
}

/** Retry-After as seconds, or null (RFC 9110 10.2.3: a number of seconds or an HTTP-date). */
function parseRetryAfter(value) {
  if (value == null) return null;
  const text = value.trim();
  if (/^\d+(\.\d+)?$/.test(text)) return Number(text);
  const when = Date.parse(text);
  if (Number.isNaN(when)) return null;
  return Math.max(0, (when - Date.now()) / 1000);
}

/** Arguments as the API spells them: camelCase to snake_case, Dates as ISO 8601, undefined left out. */
/**
 * A success body without the DeployAlly wrapper: `{success: true, data}` gives `data`, and a list
 * (`{success: true, data: [...], meta: {pagination}}`) gives `{data: [...], pagination}`, the deployERP shape.
 */
function unwrap(doc) {
  if (doc === null || typeof doc !== 'object' || doc.success !== true || !('data' in doc)) return doc;
  const { meta } = doc;
  if (Array.isArray(doc.data) && meta !== null && typeof meta === 'object') return { ...meta, data: doc.data };
  return doc.data;
}

function body(fields) {
  const out = {};
  for (const [name, value] of Object.entries(fields || {})) {
    if (value === undefined) continue;
    const key = name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
    out[key] = value instanceof Date ? value.toISOString().replace(/\.\d{3}Z$/, 'Z') : value;
  }
  return out;
}

function segment(id) {
  if (typeof id !== 'string' || id === '' || id === '.' || id === '..') {
    throw new TypeError("a key id must be a non-empty string such as 'key_abc123'");
  }
  return encodeURIComponent(id);
}

class DeployERPClient {
  #apiKey;
  #fetch;

  /**
   * @param {object} [options]
   * @param {string} [options.apiKey]   default: process.env.DEPLOYERP_API_KEY
   * @param {string} [options.baseUrl]  default: process.env.DEPLOYERP_BASE_URL, else https://api.deployerp.com
   * @param {string} [options.prefix]   the key API's path under the base URL, default '/v1'
   * @param {number} [options.timeout]  ms per attempt, default 30000
   * @param {number} [options.maxRetries]    retries of a 429 / 503 answer, default 2
   * @param {number} [options.maxRetryWait]  ms spent waiting between attempts at most, default 60000
   * @param {Function} [options.fetch]  a fetch implementation, default the global one
   */
  constructor(options = {}) {
    if (options === null || typeof options !== 'object') {
      throw new ConfigurationError('options must be an object such as { apiKey, baseUrl }');
    }
    if (options.apiKey !== undefined && options.apiKey !== null && typeof options.apiKey !== 'string') {
      throw new ConfigurationError('apiKey must be a string');
    }
    // No key is not an error yet: the first call throws AuthenticationError (the guide's try wraps the call).
    this.#apiKey = options.apiKey != null ? blankToNull(options.apiKey) : blankToNull(process.env.DEPLOYERP_API_KEY);
    this.baseUrl = parseBaseUrl(options.baseUrl ?? (blankToNull(process.env.DEPLOYERP_BASE_URL) || DEFAULT_BASE_URL));
    this.prefix = options.prefix ?? DEFAULT_PREFIX;
    if (typeof this.prefix !== 'string' || (this.prefix && (!this.prefix.startsWith('/') || this.prefix.endsWith('/')))) {
      throw new ConfigurationError(`prefix must start with '/' and not end with one, like '/v1'`);
    }
    this.timeout = checkNumber('timeout', options.timeout ?? DEFAULTS.timeout);
    this.maxRetries = checkNumber('maxRetries', options.maxRetries ?? DEFAULTS.maxRetries, { integer: true });
    this.maxRetryWait = checkNumber('maxRetryWait', options.maxRetryWait ?? DEFAULTS.maxRetryWait);
    this.#fetch = options.fetch ?? globalThis.fetch;
    if (typeof this.#fetch !== 'function') {
      throw new ConfigurationError('no fetch: Node 18 or newer has a global one, or pass options.fetch');
    }

    const call = (method, path, init) => this.request(method, `${this.prefix}${path}`, init);
    this.auth = Object.freeze({
      /** GET {prefix}/auth/test: authenticated, key_id, permissions, rate_limit of this key. */
      test: async () => call('GET', '/auth/test'),
    });
    // async: a bad argument rejects, as every other failure does, rather than throwing before the promise.
    this.apiKeys = Object.freeze({
      create: async (params) => call('POST', '/api-keys', { body: body(params) }),
      list: async (params) => call('GET', '/api-keys', { query: params }),
      get: async (id) => call('GET', `/api-keys/${segment(id)}`),
      update: async (id, params) => call('PATCH', `/api-keys/${segment(id)}`, { body: body(params) }),
      revoke: async (id) => call('DELETE', `/api-keys/${segment(id)}`),
      rotate: async (id, params) => call('POST', `/api-keys/${segment(id)}/rotate`, { body: body(params) }),
    });
  }

  /**
   * Call any route of the API with this key: `path` under the base URL (`/v1/servers`). Resolves to the parsed
   * JSON answer (a DeployAlly `{success, data}` wrapper removed); rejects with a DeployERPError.
   */
  async request(method, path, { body: payload, query } = {}) {
    if (typeof path !== 'string' || !path.startsWith('/') || path.includes('://')) {
      throw new TypeError("path must be a path under the base URL, such as '/v1/servers'");
    }
    method = String(method).toUpperCase();
    const url = new URL(this.baseUrl + path);
    for (const [name, value] of Object.entries(query || {})) {
      if (value !== undefined && value !== null) url.searchParams.set(name, String(value));
    }
    const headers = { authorization: `Bearer ${this.#key()}`, accept: 'application/json',
      'user-agent': `deployerp-node/${VERSION}` };
    const init = { method, headers, redirect: 'manual' };
    if (payload !== undefined) {
      headers['content-type'] = 'application/json';
      init.body = JSON.stringify(payload);
    }
    let waited = 0;
    for (let retry = 0; ; retry++) {
      const { response, doc } = await this.#send(url, init);
      if (response.ok) {
        return unwrap(doc);
      }
      const retryAfter = parseRetryAfter(response.headers.get('retry-after'));
      const again = response.status === 429 || (response.status === 503 && IDEMPOTENT.has(method));
      if (again && retry < this.maxRetries) {
        const delay = retryAfter !== null
          ? retryAfter * 1000
          : Math.min(BACKOFF_CAP, BACKOFF_BASE * 2 ** retry) * (0.5 + Math.random() / 2);
        if (waited + delay <= this.maxRetryWait) {
          waited += delay;
          await new Promise((resolve) => setTimeout(resolve, delay));
          continue;
        }
      }
      throw this.#error(response, doc, retryAfter);
    }
  }

  #key() {
    const key = this.#apiKey;
    if (key === null) {
      throw new AuthenticationError('no API key: pass new DeployERPClient({ apiKey }) or set DEPLOYERP_API_KEY', {
        status: 401, code: 'authentication_required' });
    }
    if (!sendable(key)) {
      throw new AuthenticationError('the API key contains spaces or characters that cannot be sent in a header', {
        status: 401, code: 'invalid_token' });
    }
    return key;
  }

  #redact(text) {
    return this.#apiKey ? String(text).split(this.#apiKey).join('[redacted]') : String(text);
  }

  async #send(url, init) {
    const where = `the deployERP API at ${this.baseUrl}`;
    let response;
    let text;
    try {
      response = await this.#fetch(url, { ...init, signal: AbortSignal.timeout(this.timeout) });
      text = await response.text();
    } catch (err) {
      if (err && (err.name === 'TimeoutError' || err.name === 'AbortError')) {
        throw new APITimeoutError(`${where} did not answer within ${this.timeout} ms`);
      }
      const reason = err && err.cause && err.cause.code ? err.cause.code : (err && err.message) || String(err);
      throw new APIConnectionError(`cannot reach ${where}: ${this.#redact(reason)}`);
    }
    let doc = null;
    if (text) {
      try {
        doc = JSON.parse(text);
      } catch {
        doc = null;
      }
    }
    return { response, doc };
  }

  #error(response, doc, retryAfter) {
    const status = response.status;
    const err = doc !== null && typeof doc === 'object' && doc.error !== null && typeof doc.error === 'object'
      ? doc.error : null;
    const details = {
      status,
      code: err && err.code != null ? String(err.code) : null,
      field: err && err.field != null ? String(err.field) : null,
      requestId: response.headers.get('x-request-id'),
      body: doc,
    };
    const message = this.#redact(err && err.message ? err.message
      : `HTTP ${status} ${response.statusText || ''}`.trim() + ' (not an API error body)');
    const Cls = errorClass(status);
    return Cls === RateLimitError ? new RateLimitError(message, { ...details, retryAfter })
      : new Cls(message, details);
  }

  /** What console.log and util.inspect show: never the key, only whether there is one. */
  [inspect.custom]() {
    return `DeployERPClient { baseUrl: ${JSON.stringify(this.baseUrl)}, prefix: ${JSON.stringify(this.prefix)}, `
      + `apiKey: ${this.#apiKey ? "'[redacted]'" : 'null'} }`;
  }

  toJSON() {
    return { baseUrl: this.baseUrl, prefix: this.prefix, apiKey: this.#apiKey ? '[redacted]' : null };
  }
}

module.exports = { DeployERPClient, VERSION, DEFAULTS };
