// The ESM entry: the very classes of the CommonJS one (index.js), so `instanceof` holds whichever way a
// program or its dependencies load the package.
import sdk from './index.js';

export const {
  DeployERPClient,
  DeployERPError,
  ConfigurationError,
  APIConnectionError,
  APITimeoutError,
  APIError,
  BadRequestError,
  AuthenticationError,
  PermissionError,
  PermissionDeniedError,
  NotFoundError,
  ConflictError,
  ValidationError,
  RateLimitError,
  ServerError,
  VERSION,
} = sdk;

export default sdk;
