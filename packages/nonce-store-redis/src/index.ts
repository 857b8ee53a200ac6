/**
 * @jwtproxy/nonce-store-redis: `nonce_storage: {type: redis}` — replay protection shared by
 * verifier replicas. `redisNonceStore` is its definition: `runtime.nonceStores.register(redisNonceStore)`.
 */
import { defineComponent } from '@jwtproxy/core';
import { redisNonceStoreOptions, redisOptionsFrom } from './options.js';
import { RedisNonceStore } from './store.js';

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

/** The type name in `nonce_storage.type`. */
export const REDIS_NONCE_STORE_TYPE = 'redis';

/**
 * `nonce_storage: {type: redis}`. Building waits briefly for the first connection: it starts
 * serving even when Redis is down (claims then fail closed with 503 until it answers), but gives
 * the first connection its chance so the first requests are not refused.
 */
export const redisNonceStore = defineComponent({
  type: REDIS_NONCE_STORE_TYPE,
  description: 'Nonces in Redis, shared by verifier replicas: standalone, Sentinel or Cluster, with TLS; fails closed (503) while Redis cannot answer.',
  options: redisNonceStoreOptions,
  async create(options, context): Promise<RedisNonceStore> {
    const store = new RedisNonceStore(redisOptionsFrom(options, context), { logger: context.logger, clock: context.clock });
    await store.ready();
    return store;
  },
});
