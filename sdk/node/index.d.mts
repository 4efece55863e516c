// Type declarations of the ESM entry (index.mjs): the same names as the CommonJS entry, and it as the default.
export * from './index.js';
import * as sdk from './index.js';
export default sdk;
