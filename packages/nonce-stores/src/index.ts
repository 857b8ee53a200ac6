export {
  LocalNonceStore,
  localNonceStore,
  DEFAULT_MAX_ENTRIES,
  DEFAULT_PURGE_INTERVAL_MS,
  FULL_PURGE_SPACING_MS,
  MIN_NONCE_TTL_MS,
  type LocalNonceStoreOptions,
} from './local.js';
export { NoNonceStore, noNonceStore } from './none.js';
