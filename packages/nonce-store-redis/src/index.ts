/**
 * @jwtproxy/nonce-store-redis: `nonce_storage: {type: redis}` — replay protection shared by
 * verifier replicas. Importing this module registers the type in core's `nonceStores`.
 */
import { nonceStores, type ComponentContext, type NonceStore } from '@jwtproxy/core';
import { parseRedisNonceStoreOptions } from './options.js';
import { RedisNonceStore } from './store.js';

export { RedisNonceStore, type RedisNonceStoreEnvironment } from './store.js';
export {
  parseRedisNonceStoreOptions,
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

/** Builds a store from YAML options (throws ConfigError naming a bad option) and waits briefly for the first connection. */
export async function createRedisNonceStore(options: Record<string, unknown>, context: ComponentContext): Promise<RedisNonceStore> {
  const store = new RedisNonceStore(parseRedisNonceStoreOptions(options, context), { logger: context.logger, clock: context.clock });
  // Start serving even when Redis is down (claims then fail closed with 503 until it answers),
  // but give the first connection its chance so the first requests are not refused.
  await store.ready();
  return store;
}

/** Registers `redis` in core's `nonceStores`. Idempotent; done on import. */
export function registerRedisNonceStore(): void {
  nonceStores.register(REDIS_NONCE_STORE_TYPE, (options, context): Promise<NonceStore> => createRedisNonceStore(options, context));
}

registerRedisNonceStore();
