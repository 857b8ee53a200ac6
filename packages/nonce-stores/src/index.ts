import { registerNonceStores } from './register.js';

export { registerNonceStores } from './register.js';
export {
  LocalNonceStore,
  createLocalNonceStore,
  DEFAULT_MAX_ENTRIES,
  DEFAULT_PURGE_INTERVAL_MS,
  FULL_PURGE_SPACING_MS,
  MIN_NONCE_TTL_MS,
  type LocalNonceStoreOptions,
} from './local.js';
export { NoNonceStore, createNoNonceStore } from './none.js';

// `import '@jwtproxy/nonce-stores'` is enough to make `local` and `none` known to the registry.
registerNonceStores();
