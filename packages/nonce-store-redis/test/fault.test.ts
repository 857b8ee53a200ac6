import { setTimeout as sleep } from 'node:timers/promises';
import { httpAnswerFor, NonceStoreUnavailableError, type Logger } from '@jwtproxy/core';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { RedisNonceStore } from '../src/index.js';
import { startOwnRedis, type OwnRedis } from '@jwtproxy/testkit';

const COMMAND_TIMEOUT_MS = 250;
const RECONNECT_MAX_DELAY_MS = 500;

function recordingLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const record = (level: string) => (message: string) => lines.push(`${level} ${message}`);
  return { lines, debug: record('debug'), info: record('info'), warn: record('warn'), error: record('error') };
}

const nowSeconds = (): number => Math.floor(Date.now() / 1000);

/** Claims until one succeeds; returns how long that took. */
async function timeUntilServing(store: RedisNonceStore, limitMs: number): Promise<number> {
  const started = performance.now();
  for (let i = 0; ; i++) {
    try {
      if (await store.claim(`recovery-probe-${started}-${i}`, nowSeconds() + 60)) return performance.now() - started;
    } catch (error) {
      expect(error).toBeInstanceOf(NonceStoreUnavailableError);
    }
    if (performance.now() - started > limitMs) throw new Error(`store did not serve again within ${limitMs} ms`);
    await sleep(10);
  }
}

// Anything ioredis lets escape would surface here (vitest would also fail the run on it).
const escaped: unknown[] = [];
const onEscape = (error: unknown) => escaped.push(error);

let redis: OwnRedis;
const stores: RedisNonceStore[] = [];

beforeAll(async () => {
  process.on('unhandledRejection', onEscape);
  process.on('uncaughtException', onEscape);
  redis = await startOwnRedis();
});

afterEach(async () => {
  await Promise.all(stores.splice(0).map((s) => s.stop()));
  if (!redis.process) await redis.start();
});

afterAll(async () => {
  await redis.close();
  process.off('unhandledRejection', onEscape);
  process.off('uncaughtException', onEscape);
});

function newStore(logger: Logger): RedisNonceStore {
  const store = new RedisNonceStore(
    { url: redis.url, keyPrefix: 'fault:', commandTimeoutMs: COMMAND_TIMEOUT_MS, reconnectMaxDelayMs: RECONNECT_MAX_DELAY_MS },
    { logger },
  );
  stores.push(store);
  return store;
}

describe('RedisNonceStore when Redis fails', () => {
  it('Redis killed: claims fail closed (503) at once, one log line; Redis back on the same port: the same store serves again', async () => {
    const logger = recordingLogger();
    const store = newStore(logger);
    expect(await store.ready()).toBe(true);
    expect(await store.claim('before-kill', nowSeconds() + 60)).toBe(true);

    await redis.kill();
    // Requests keep coming while Redis is down: each is refused quickly, none hangs.
    const failTimes: number[] = [];
    for (let i = 0; i < 50; i++) {
      const started = performance.now();
      const outcome = await store.claim(`while-down-${i}`, nowSeconds() + 60).then(
        (value) => ({ value }),
        (error: unknown) => ({ error }),
      );
      failTimes.push(performance.now() - started);
      expect(outcome).toHaveProperty('error');
      const { error } = outcome as { error: unknown };
      expect(error).toBeInstanceOf(NonceStoreUnavailableError);
      expect(httpAnswerFor(error)).toEqual({ status: 503, body: 'jwtproxy: unable to verify request: Nonce storage unavailable' });
      await sleep(i < 10 ? 0 : 20);
    }
    const slowest = Math.max(...failTimes);
    console.log(`Redis down: first claim failed in ${failTimes[0]!.toFixed(2)} ms, slowest of 50 in ${slowest.toFixed(2)} ms (command timeout ${COMMAND_TIMEOUT_MS} ms)`);
    expect(slowest).toBeLessThanOrEqual(COMMAND_TIMEOUT_MS + 100);
    expect(store.available).toBe(false);

    const restartedAt = performance.now();
    await redis.start();
    const recoveryMs = await timeUntilServing(store, RECONNECT_MAX_DELAY_MS + 2000);
    console.log(`Redis back: the store served again ${recoveryMs.toFixed(0)} ms after redis-server answered PING (${(performance.now() - restartedAt).toFixed(0)} ms after restart began; reconnect backoff cap ${RECONNECT_MAX_DELAY_MS} ms)`);
    expect(recoveryMs).toBeLessThan(RECONNECT_MAX_DELAY_MS + 700);
    expect(store.available).toBe(true);
    // A restarted Redis without persistence has forgotten the old nonce; that is the operator's choice.
    expect(await store.claim('after-restart', nowSeconds() + 60)).toBe(true);
    expect(await store.claim('after-restart', nowSeconds() + 60)).toBe(false);

    // Logged once per change of state, not once per refused request or reconnection attempt.
    expect(logger.lines.filter((line) => line.includes('unavailable'))).toHaveLength(1);
    expect(logger.lines).toEqual([
      'info redis nonce store connected',
      'warn redis nonce store unavailable; verifier answers 503 until it reconnects',
      'info redis nonce store reconnected',
    ]);
    expect(escaped).toEqual([]);
  });

  it('Redis hangs (SIGSTOP): a claim fails closed within the command timeout; it serves again when Redis resumes', async () => {
    const logger = recordingLogger();
    const store = newStore(logger);
    expect(await store.ready()).toBe(true);
    expect(await store.claim('before-pause', nowSeconds() + 60)).toBe(true);
    redis.pause();
    try {
      const started = performance.now();
      const results = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => store.claim(`paused-${i}`, nowSeconds() + 60)));
      const elapsed = performance.now() - started;
      console.log(`Redis hung: 20 concurrent claims all refused after ${elapsed.toFixed(0)} ms (command timeout ${COMMAND_TIMEOUT_MS} ms)`);
      for (const result of results) {
        expect(result.status).toBe('rejected');
        expect((result as PromiseRejectedResult).reason).toBeInstanceOf(NonceStoreUnavailableError);
      }
      expect(elapsed).toBeGreaterThanOrEqual(COMMAND_TIMEOUT_MS - 20);
      expect(elapsed).toBeLessThan(COMMAND_TIMEOUT_MS + 250);
    } finally {
      redis.resume();
    }
    const recoveryMs = await timeUntilServing(store, 2000);
    console.log(`Redis resumed: served again after ${recoveryMs.toFixed(0)} ms`);
    expect(logger.lines.filter((line) => line.includes('unavailable'))).toHaveLength(1);
    expect(logger.lines.at(-1)).toBe('info redis nonce store reconnected');
    expect(escaped).toEqual([]);
  });

  it('a busy event loop is not mistaken for a slow Redis: a claim Redis answered at once is not refused after the timeout', async () => {
    const logger = recordingLogger();
    const store = newStore(logger);
    expect(await store.ready()).toBe(true);
    const claims = Array.from({ length: 50 }, (_, i) => store.claim(`busy-${i}`, nowSeconds() + 60));
    // The verifier busy with a burst of other requests for longer than the command timeout.
    const busyUntil = Date.now() + COMMAND_TIMEOUT_MS + 100;
    while (Date.now() < busyUntil);
    expect(await Promise.all(claims)).toEqual(claims.map(() => true));
    expect(logger.lines.filter((line) => line.includes('unavailable'))).toEqual([]);
  });

  it('Redis down at start-up: the store is created, claims fail closed, and it serves once Redis starts', async () => {
    await redis.kill();
    const logger = recordingLogger();
    const store = newStore(logger);
    expect(await store.ready()).toBe(false);
    const started = performance.now();
    await expect(store.claim('no-redis-yet', nowSeconds() + 60)).rejects.toBeInstanceOf(NonceStoreUnavailableError);
    expect(performance.now() - started).toBeLessThan(COMMAND_TIMEOUT_MS);
    await redis.start();
    await timeUntilServing(store, RECONNECT_MAX_DELAY_MS + 2000);
    expect(logger.lines).toEqual(['warn redis nonce store unavailable; verifier answers 503 until it reconnects', 'info redis nonce store reconnected']);
    expect(escaped).toEqual([]);
  });

  it('a claim in flight when the connection breaks is refused, never resent (a resent SET NX could call a fresh token a replay)', async () => {
    const store = newStore(recordingLogger());
    expect(await store.ready()).toBe(true);
    expect(await store.claim('warm', nowSeconds() + 60)).toBe(true);
    redis.pause();
    const inFlight = store.claim('in-flight', nowSeconds() + 60);
    await redis.kill();
    await expect(inFlight).rejects.toBeInstanceOf(NonceStoreUnavailableError);
    await redis.start();
    await timeUntilServing(store, RECONNECT_MAX_DELAY_MS + 2000);
    // The refused claim did not reach the new Redis behind the client's back.
    expect(await store.claim('in-flight', nowSeconds() + 60)).toBe(true);
  });

  it('Redis out of memory (maxmemory with noeviction): claims fail closed; they succeed again once Redis has room', async () => {
    const logger = recordingLogger();
    const store = newStore(logger);
    expect(await store.ready()).toBe(true);
    expect(await store.claim('before-oom', nowSeconds() + 60)).toBe(true);
    const admin = new Redis(redis.port, '127.0.0.1');
    try {
      await admin.config('SET', 'maxmemory-policy', 'noeviction');
      await admin.config('SET', 'maxmemory', '1');
      const error = await store.claim('during-oom', nowSeconds() + 60).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(NonceStoreUnavailableError);
      expect(String((error as Error).cause)).toMatch(/OOM/);
      await admin.config('SET', 'maxmemory', '0');
    } finally {
      await admin.quit();
    }
    expect(await store.claim('during-oom', nowSeconds() + 60)).toBe(true);
    expect(logger.lines).toEqual([
      'info redis nonce store connected',
      'warn redis nonce store unavailable; verifier answers 503 until it reconnects',
      'info redis nonce store reconnected',
    ]);
  });

  it('stop(deadline) returns by the deadline even when Redis hangs', async () => {
    const store = new RedisNonceStore({ url: redis.url, commandTimeoutMs: 5000 });
    expect(await store.ready()).toBe(true);
    expect(await store.claim('x', nowSeconds() + 60)).toBe(true);
    redis.pause();
    try {
      const started = performance.now();
      await store.stop(Date.now() + 200);
      const took = performance.now() - started;
      expect(took).toBeGreaterThanOrEqual(150);
      expect(took).toBeLessThan(600);
    } finally {
      redis.resume();
    }
    await expect(store.claim('y', nowSeconds() + 60)).rejects.toBeInstanceOf(NonceStoreUnavailableError);
  });
});
