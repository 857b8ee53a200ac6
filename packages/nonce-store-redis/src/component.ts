/**
 * The definition of `nonce_storage: {type: redis}` alone (`@jwtproxy/nonce-store-redis/component`):
 * its option schema, without ioredis, which `create` loads when a store is built.
 */
import { defineComponent } from '@jwtproxy/core';
import { redisNonceStoreOptions, redisOptionsFrom } from './options.js';
import type { RedisNonceStore } from './store.js';

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
    // ioredis loads here, not when the definition is registered: a verifier on local nonces never loads it.
    const { RedisNonceStore } = await import('./store.js');
    const store = new RedisNonceStore(redisOptionsFrom(options, context), { logger: context.logger, clock: context.clock });
    await store.ready();
    return store;
  },
});
