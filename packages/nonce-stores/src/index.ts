export {
  LocalNonceStore,
  localNonceStore,
  DEFAULT_MAX_ENTRIES,
  DEFAULT_PURGE_INTERVAL_MS,
  LOCAL_FIRST_TABLE_ENTRIES,
  MIN_NONCE_TTL_MS,
  sharedNonceTableKey,
  type LocalNonceStoreOptions,
} from './local.js';
export {
  SharedNonceTable,
  SharedNonceTables,
  SHARED_TABLE_BYTES_PER_ENTRY,
  SHARED_TABLE_HEADER_BYTES,
  SHARED_TABLE_MAX_ENTRIES,
  SHARED_PURGE_SLICE,
  SHARED_LOCK_WAIT_LIMIT_MS,
  type NonceClaim,
} from './shared-table.js';
export { NoNonceStore, noNonceStore, voidNonceStore } from './none.js';
