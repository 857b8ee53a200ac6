/**
 * @jwtproxy/nonce-store-redis: `nonce_storage: {type: redis}` — replay protection shared by
 * verifier replicas. `redisNonceStore` is its definition: `runtime.nonceStores.register(redisNonceStore)`.
 */
export { RedisNonceStore, type RedisNonceStoreEnvironment } from './store.js';
export {
  parseRedisNonceStoreOptions,
  redisNonceStoreOptions,
  validateRedisNonceStoreOptions,
  DEFAULT_KEY_PREFIX,
  DEFAULT_COMMAND_TIMEOUT_MS,
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_RECONNECT_MAX_DELAY_MS,
  type RedisNonceStoreOptions,
  type RedisTlsOptions,
  type RedisEndpoint,
} from './options.js';

export { redisNonceStore, REDIS_NONCE_STORE_TYPE } from './component.js';
