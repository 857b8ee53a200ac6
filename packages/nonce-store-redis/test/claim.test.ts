import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { createRuntime, silentLogger, type Logger, type NonceStore } from '@jwtproxy/core';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_KEY_PREFIX, RedisNonceStore, redisNonceStore } from '../src/index.js';

/** The registry as the CLI fills it. */
const { nonceStores } = createRuntime();
nonceStores.register(redisNonceStore);

// The shared Redis of the test environment; every test works under a random prefix and cleans it up.
const REDIS_URL = 'redis://127.0.0.1:6379';

let admin: Redis;
const prefixes: string[] = [];
const stores: NonceStore[] = [];

function newPrefix(): string {
  const prefix = `jwtproxy-test:${randomBytes(6).toString('hex')}:`;
  prefixes.push(prefix);
  return prefix;
}

function store(keyPrefix = newPrefix(), extra: ConstructorParameters<typeof RedisNonceStore>[1] = {}): RedisNonceStore {
  // A generous timeout: these tests are about answers, not about failing fast (fault.test.ts is),
  // and must not turn into 503s on a loaded machine.
  const created = new RedisNonceStore({ url: REDIS_URL, keyPrefix, commandTimeoutMs: 5000 }, extra);
  stores.push(created);
  return created;
}

const nowSeconds = (): number => Math.floor(Date.now() / 1000);

function recordingLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const record = (level: string) => (message: string, fields?: Record<string, unknown>) => lines.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`);
  return { lines, debug: record('debug'), info: record('info'), warn: record('warn'), error: record('error') };
}

beforeAll(() => {
  admin = new Redis(REDIS_URL);
});

afterEach(async () => {
  await Promise.all(stores.splice(0).map((s) => s.stop?.()));
});

afterAll(async () => {
  for (const prefix of prefixes) {
    const keys = await admin.keys(`${prefix}*`);
    if (keys.length) await admin.del(...keys);
  }
  await admin.quit();
});

describe('RedisNonceStore against the real Redis', () => {
  it('claims a jti once: true, then false for every later claim', async () => {
    const nonces = store();
    const exp = nowSeconds() + 300;
    expect(await nonces.claim('jti-once', exp)).toBe(true);
    expect(await nonces.claim('jti-once', exp)).toBe(false);
    expect(await nonces.claim('jti-once', exp)).toBe(false);
    expect(await nonces.claim('jti-other', exp)).toBe(true);
  });

  it('stores the nonce under key_prefix + jti', async () => {
    const prefix = newPrefix();
    const nonces = store(prefix);
    await nonces.claim('a/b+c', nowSeconds() + 60);
    expect(await admin.get(`${prefix}a/b+c`)).toBe('1');
    expect(await admin.exists(`${DEFAULT_KEY_PREFIX}a/b+c`)).toBe(0);
  });

  it('1,000 concurrent claims of one jti from two replicas (two connections): exactly one true', async () => {
    const prefix = newPrefix();
    const replicaA = store(prefix);
    const replicaB = store(prefix);
    const exp = nowSeconds() + 300;
    const answers = await Promise.all(Array.from({ length: 1000 }, (_, i) => (i % 2 ? replicaA : replicaB).claim('contended-jti', exp)));
    expect(answers.filter(Boolean)).toHaveLength(1);
    expect(answers.filter((answer) => !answer)).toHaveLength(999);
  });

  it('1,000 concurrent claims of distinct jtis all succeed', async () => {
    const nonces = store();
    const exp = nowSeconds() + 300;
    const answers = await Promise.all(Array.from({ length: 1000 }, (_, i) => nonces.claim(`distinct-${i}`, exp)));
    expect(answers.every(Boolean)).toBe(true);
  });

  it('keeps a nonce exactly as long as its token is valid (PTTL = exp + 1 s − now)', async () => {
    const prefix = newPrefix();
    const nonces = store(prefix);
    const exp = nowSeconds() + 120;
    await nonces.claim('ttl-jti', exp);
    const pttl = await admin.pttl(`${prefix}ttl-jti`);
    const expected = exp * 1000 + 1000 - Date.now();
    expect(pttl).toBeGreaterThan(expected - 200);
    expect(pttl).toBeLessThanOrEqual(expected + 50);
  });

  it('measures TTL on the injected clock', async () => {
    const prefix = newPrefix();
    const inTheFuture = () => Date.now() + 60_000;
    const nonces = store(prefix, { clock: inTheFuture });
    const exp = nowSeconds() + 120;
    await nonces.claim('clock-jti', exp);
    const pttl = await admin.pttl(`${prefix}clock-jti`);
    expect(pttl).toBeGreaterThan(60_000 - 200);
    expect(pttl).toBeLessThanOrEqual(61_000 + 50);
  });

  it('forgets a nonce once its token has expired: the key is gone from Redis', async () => {
    const prefix = newPrefix();
    const nonces = store(prefix);
    const exp = nowSeconds() + 1;
    expect(await nonces.claim('short-lived', exp)).toBe(true);
    expect(await nonces.claim('short-lived', exp)).toBe(false);
    expect(await admin.pttl(`${prefix}short-lived`)).toBeGreaterThan(0);
    const goneBy = (exp + 1) * 1000 + 300;
    while (Date.now() < goneBy && (await admin.exists(`${prefix}short-lived`))) await sleep(50);
    expect(await admin.exists(`${prefix}short-lived`)).toBe(0);
    expect(Date.now()).toBeGreaterThanOrEqual((exp + 1) * 1000 - 50);
  });

  it('still records a token whose exp is this very second', async () => {
    const prefix = newPrefix();
    const nonces = store(prefix);
    const exp = nowSeconds();
    expect(await nonces.claim('last-second', exp)).toBe(true);
    expect(await nonces.claim('last-second', exp)).toBe(false);
    expect(await admin.pttl(`${prefix}last-second`)).toBeGreaterThan(0);
  });

  it('refuses a non-numeric exp as an invalid exp claim without bothering Redis', async () => {
    const nonces = store();
    expect(await nonces.ready()).toBe(true);
    await expect(nonces.claim('nan-exp', Number.NaN)).rejects.toMatchObject({ code: 'ERR_INVALID_CLAIM', claim: 'exp' });
    expect(nonces.available).toBe(true);
    expect(await nonces.claim('nan-exp', nowSeconds() + 60)).toBe(true);
  });

  it('claim latency on loopback: median under 2 ms (sequential); concurrent claims share the connection', async () => {
    const nonces = store();
    const exp = nowSeconds() + 60;
    await nonces.claim('warm-up', exp);
    const count = 2000;
    const durations: number[] = [];
    for (let i = 0; i < count; i++) {
      const started = performance.now();
      await nonces.claim(`seq-${i}`, exp);
      durations.push(performance.now() - started);
    }
    durations.sort((a, b) => a - b);
    const median = durations[count / 2]!;
    const p99 = durations[Math.floor(count * 0.99)]!;
    const started = performance.now();
    await Promise.all(Array.from({ length: count }, (_, i) => nonces.claim(`par-${i}`, exp)));
    const concurrentMs = performance.now() - started;
    console.log(
      `claim latency: median ${(median * 1000).toFixed(0)} µs, p99 ${(p99 * 1000).toFixed(0)} µs sequential; ${count} concurrent claims in ${concurrentMs.toFixed(1)} ms (${Math.round((count / concurrentMs) * 1000)}/s)`,
    );
    // Generous for a loaded CI machine; a claim that took a round trip per retry or a timer would blow it.
    expect(median).toBeLessThan(2);
  });

  it('is registered as nonce_storage type "redis" and built from YAML options', async () => {
    expect(nonceStores.types()).toEqual(['redis']);
    const logger = recordingLogger();
    const prefix = newPrefix();
    const built = await nonceStores.create(
      { type: 'redis', options: { url: REDIS_URL, key_prefix: prefix, command_timeout: '500ms', connect_timeout: '1s' } },
      { logger, clock: Date.now, baseDir: process.cwd() },
    );
    stores.push(built);
    expect(built).toBeInstanceOf(RedisNonceStore);
    // The factory waited for the connection, so the very first claim is served.
    expect((built as RedisNonceStore).available).toBe(true);
    expect(await built.claim('yaml-jti', nowSeconds() + 60)).toBe(true);
    expect(await built.claim('yaml-jti', nowSeconds() + 60)).toBe(false);
    expect(logger.lines).toEqual([`info redis nonce store connected {"target":"127.0.0.1:6379"}`]);
  });

  it('host/port/db options select the database', async () => {
    const prefix = newPrefix();
    const built = await nonceStores.create({ type: 'redis', options: { host: '127.0.0.1', port: 6379, db: 3, key_prefix: prefix } }, { logger: silentLogger, clock: Date.now, baseDir: '.' });
    stores.push(built);
    expect(await built.claim('db-jti', nowSeconds() + 60)).toBe(true);
    const db3 = new Redis({ host: '127.0.0.1', port: 6379, db: 3 });
    try {
      expect(await db3.get(`${prefix}db-jti`)).toBe('1');
      expect(await admin.exists(`${prefix}db-jti`)).toBe(0);
      await db3.del(`${prefix}db-jti`);
    } finally {
      await db3.quit();
    }
  });

  it('stop() closes the connection; later claims fail closed', async () => {
    const nonces = new RedisNonceStore({ url: REDIS_URL, keyPrefix: newPrefix() });
    expect(await nonces.ready()).toBe(true);
    expect(await nonces.claim('before-stop', nowSeconds() + 60)).toBe(true);
    const started = Date.now();
    await nonces.stop(Date.now() + 1000);
    expect(Date.now() - started).toBeLessThan(500);
    await expect(nonces.claim('after-stop', nowSeconds() + 60)).rejects.toMatchObject({ code: 'ERR_NONCE_STORE_UNAVAILABLE', status: 503 });
    await nonces.stop();
  });
});
