import { NonceStoreUnavailableError } from '@jwtproxy/core';
import { startOwnRedis, type OwnRedis } from '@jwtproxy/testkit';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { RedisNonceStore } from '../src/index.js';

const COMMAND_TIMEOUT_MS = 250;
let redis: OwnRedis;
const stores: RedisNonceStore[] = [];

beforeAll(async () => {
  redis = await startOwnRedis();
});
afterEach(async () => {
  await Promise.all(stores.splice(0).map((store) => store.stop()));
  if (!redis.process) await redis.start();
});
afterAll(async () => {
  await redis.close();
});

function newStore(): RedisNonceStore {
  const store = new RedisNonceStore({ url: redis.url, keyPrefix: 'ping:', commandTimeoutMs: COMMAND_TIMEOUT_MS, reconnectMaxDelayMs: 200 });
  stores.push(store);
  return store;
}

/** How long `ping` took to settle, and whether it failed. */
async function timedPing(store: RedisNonceStore): Promise<{ ms: number; error: unknown }> {
  const started = performance.now();
  const error = await store.ping().then(
    () => undefined,
    (reason: unknown) => reason,
  );
  return { ms: performance.now() - started, error };
}

describe('RedisNonceStore.ping (the readiness probe)', () => {
  it('resolves while Redis answers; rejects with NonceStoreUnavailableError at once when Redis is down, within the command timeout when it hangs', async () => {
    const store = newStore();
    expect(await store.ready()).toBe(true);
    expect((await timedPing(store)).error).toBeUndefined();

    redis.pause();
    try {
      const hung = await timedPing(store);
      expect(hung.error).toBeInstanceOf(NonceStoreUnavailableError);
      expect(hung.ms).toBeGreaterThanOrEqual(COMMAND_TIMEOUT_MS - 20);
      expect(hung.ms).toBeLessThan(COMMAND_TIMEOUT_MS + 250);
    } finally {
      redis.resume();
    }

    await redis.kill();
    const down = await timedPing(store);
    expect(down.error).toBeInstanceOf(NonceStoreUnavailableError);
    expect(down.ms).toBeLessThan(COMMAND_TIMEOUT_MS + 100);
    expect(store.available).toBe(false);

    await redis.start();
    let error: unknown = new Error('not tried');
    for (let i = 0; i < 40 && error !== undefined; i++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      ({ error } = await timedPing(store));
    }
    expect(error).toBeUndefined();
    expect(store.available).toBe(true);
  });

  it('a stopped store does not answer', async () => {
    const store = newStore();
    await store.ready();
    await store.stop();
    await expect(store.ping()).rejects.toBeInstanceOf(NonceStoreUnavailableError);
  });
});
