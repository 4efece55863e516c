// Type declarations of @deployerp/sdk (CommonJS entry, index.js; the ESM entry re-exports these, index.d.mts).

export interface ClientOptions {
  /** Default: process.env.DEPLOYERP_API_KEY. A missing key throws AuthenticationError at the first call. */
  apiKey?: string | null;
  /** Default: process.env.DEPLOYERP_BASE_URL, else https://api.deployerp.com. */
  baseUrl?: string;
  /** Where the key API lives under the base URL. Default '/v1'. */
  prefix?: string;
  /** Milliseconds per attempt. Default 30000. */
  timeout?: number;
  /** Retries of a 429 answer (any method) or a 503 one (idempotent methods). Default 2. */
  maxRetries?: number;
  /** Milliseconds spent waiting between attempts, at most, in all. Default 60000. */
  maxRetryWait?: number;
  /** A fetch implementation. Default: the global fetch of Node 18+. */
  fetch?: FetchLike;
}

/** What the client needs of fetch (declared here so that no DOM or @types/node typings are required). */
export type FetchLike = (input: any, init?: any) => Promise<{
  ok: boolean;
  status: number;
  statusText: string;
  headers: { get(name: string): string | null };
  text(): Promise<string>;
}>;

export interface RateLimitInfo {
  limit: number;
  remaining: number;
  reset: string;
  window?: string;
  tier?: string;
  burst?: { limit: number; remaining: number; reset: string; window?: string } | null;
  [field: string]: unknown;
}

export interface AuthTestResult {
  authenticated: boolean;
  key_id: string;
  permissions: string[];
  rate_limit: RateLimitInfo | null;
  [field: string]: unknown;
}

export interface ApiKey {
  id: string;
  name: string;
  permissions: string[];
  status: 'active' | 'expired' | 'revoked' | string;
  environment: 'live' | 'test' | string;
  expires_at: string | null;
  ip_whitelist?: string[];
  allowed_ips?: string[];
  rate_limit_tier?: string | null;
  description?: string | null;
  created_at?: string;
  [field: string]: unknown;
}

/** A key as create() answers it: its value, shown this once. */
export interface CreatedApiKey extends ApiKey {
  value: string;
}

export interface ApiKeyPage {
  data: ApiKey[];
  pagination: { limit: number; offset: number; next_offset: number | null };
}

export interface RotateResult {
  old_key: { id: string; expires_at: string | null };
  new_key: { id: string; value: string; created_at: string };
}

/** Fields of a key; camelCase names are sent snake_case (expiresAt as expires_at), Dates as ISO 8601. */
export interface ApiKeyFields {
  permissions?: string[];
  expiresAt?: string | Date | null;
  ipWhitelist?: string[];
  allowedIps?: string[];
  rateLimitTier?: string | null;
  autoRotate?: boolean;
  rotationPeriod?: string | null;
  description?: string | null;
}

export interface CreateApiKeyParams extends ApiKeyFields {
  name: string;
  environment?: 'live' | 'test';
}

export interface UpdateApiKeyParams extends ApiKeyFields {
  name?: string;
}

export interface ListApiKeysParams {
  limit?: number;
  offset?: number;
  environment?: 'live' | 'test';
  status?: 'active' | 'expired' | 'revoked';
}

export interface RequestOptions {
  body?: unknown;
  query?: Record<string, string | number | boolean | null | undefined>;
}

export interface AuthResource {
  /** GET {prefix}/auth/test: this key's id, permissions and rate limit; spends no request. */
  test(): Promise<AuthTestResult>;
}

export interface ApiKeysResource {
  create(params: CreateApiKeyParams): Promise<CreatedApiKey>;
  list(params?: ListApiKeysParams): Promise<ApiKeyPage>;
  get(id: string): Promise<ApiKey>;
  update(id: string, params: UpdateApiKeyParams): Promise<ApiKey>;
  revoke(id: string): Promise<ApiKey>;
  rotate(id: string, params?: { gracePeriod?: string }): Promise<RotateResult>;
}

export declare class DeployERPClient {
  constructor(options?: ClientOptions);
  readonly baseUrl: string;
  readonly prefix: string;
  readonly timeout: number;
  readonly maxRetries: number;
  readonly maxRetryWait: number;
  readonly auth: AuthResource;
  readonly apiKeys: ApiKeysResource;
  /** Any route of the API with this key; path under the base URL ('/v1/servers'). */
  request<T = unknown>(method: string, path: string, options?: RequestOptions): Promise<T>;
  toJSON(): { baseUrl: string; prefix: string; apiKey: '[redacted]' | null };
}

export declare class DeployERPError extends Error {}
export declare class ConfigurationError extends DeployERPError {}
export declare class APIConnectionError extends DeployERPError {}
export declare class APITimeoutError extends APIConnectionError {}

export interface APIErrorDetails {
  status: number;
  code?: string | null;
  field?: string | null;
  requestId?: string | null;
  body?: unknown;
}

export declare class APIError extends DeployERPError {
  constructor(message: string, details: APIErrorDetails);
  readonly status: number;
  /** The API's error code: invalid_token, insufficient_permissions ... (UNAUTHORIZED ... for DeployAlly). */
  readonly code: string | null;
  /** The request field at fault (validation errors). */
  readonly field: string | null;
  readonly requestId: string | null;
  readonly body: unknown;
}

export declare class BadRequestError extends APIError {}
export declare class AuthenticationError extends APIError {}
export declare class PermissionError extends APIError {}
export { PermissionError as PermissionDeniedError };
export declare class NotFoundError extends APIError {}
export declare class ConflictError extends APIError {}
export declare class ValidationError extends APIError {}
export declare class RateLimitError extends APIError {
  constructor(message: string, details: APIErrorDetails & { retryAfter?: number | null });
  /** Seconds to wait, from Retry-After; null when the answer gave none. */
  readonly retryAfter: number | null;
}
export declare class ServerError extends APIError {}

export declare const VERSION: string;
