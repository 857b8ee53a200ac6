import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { ConfigError, NonceStoreFullError, createRuntime, silentLogger, type ComponentContext, type Logger } from '@jwtproxy/core';
import { afterEach, describe, expect, it } from 'vitest';
import {
  DEFAULT_MAX_ENTRIES,
  DEFAULT_PURGE_INTERVAL_MS,
  LOCAL_FIRST_TABLE_ENTRIES,
  LocalNonceStore,
  SHARED_PURGE_SLICE,
  SHARED_TABLE_BYTES_PER_ENTRY,
  localNonceStore,
  noNonceStore,
} from '../src/index.js';

/** The registry as the CLI fills it. */
const { nonceStores } = createRuntime();
nonceStores.register(localNonceStore);
nonceStores.register(noNonceStore);

/** A clock the test moves by hand; starts at a realistic epoch time. */
function movableClock(start = 1_700_000_000_000) {
  let now = start;
  return {
    now: () => now,
    advance(ms: number) {
      now += ms;
    },
    seconds: () => Math.floor(now / 1000),
  };
}

function recordingLogger(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const record = (level: string) => (message: string) => {
    lines.push(`${level}: ${message}`);
  };
  return { lines, logger: { debug: record('debug'), info: record('info'), warn: record('warn'), error: record('error') } };
}

const stores: LocalNonceStore[] = [];
afterEach(async () => {
  await Promise.all(stores.splice(0).map((store) => store.stop()));
});

async function localStore(options: Record<string, unknown>, context: Partial<ComponentContext> = {}): Promise<LocalNonceStore> {
  const store = await nonceStores.create(
    { type: 'local', options },
    { logger: silentLogger, clock: Date.now, baseDir: process.cwd(), ...context },
  );
  expect(store).toBeInstanceOf(LocalNonceStore);
  stores.push(store as LocalNonceStore);
  return store as LocalNonceStore;
}

const jti = () => randomBytes(24).toString('base64');

describe('local nonce store', () => {
  it('is the nonce storage type local, with the Go defaults', async () => {
    expect(nonceStores.types()).toEqual(['local', 'none']);
    const store = await localStore({});
    expect(store.purgeIntervalMs).toBe(DEFAULT_PURGE_INTERVAL_MS);
    expect(store.purgeIntervalMs).toBe(60_000);
    expect(store.maxEntries).toBe(DEFAULT_MAX_ENTRIES);
    expect((await localStore({ purge_interval: '1m30s', max_entries: 10 })).purgeIntervalMs).toBe(90_000);
    expect((await localStore({ purge_interval: 0, max_entries: 10 })).purgeIntervalMs).toBe(0);
  });

  it('claims a jti once: a replay answers false', async () => {
    const clock = movableClock();
    const store = await localStore({ max_entries: 1000 }, { clock: clock.now });
    const exp = clock.seconds() + 300;
    expect(await store.claim('abc', exp)).toBe(true);
    expect(await store.claim('abc', exp)).toBe(false);
    expect(await store.claim('abc', exp + 1000)).toBe(false);
    expect(await store.claim('abd', exp)).toBe(true);
  });

  it('1,000 concurrent claims of one jti succeed exactly once', async () => {
    const store = await localStore({ max_entries: 1000 });
    const exp = Math.floor(Date.now() / 1000) + 300;
    const answers = await Promise.all(Array.from({ length: 1000 }, () => store.claim('same-jti', exp)));
    expect(answers.filter(Boolean)).toHaveLength(1);
    expect(answers.filter((answer) => !answer)).toHaveLength(999);
  });

  it('keeps a nonce until its exp (inclusive, in whole seconds), then purges it and the jti can be claimed again', async () => {
    const clock = movableClock();
    const store = await localStore({ purge_interval: 0, max_entries: 2 }, { clock: clock.now });
    const exp = clock.seconds() + 10;
    expect(await store.claim('a', exp)).toBe(true);
    expect(await store.claim('b', exp)).toBe(true);
    clock.advance(exp * 1000 - clock.now()); // now == exp: the verifier still accepts the token
    expect(await store.claim('a', exp)).toBe(false);
    clock.advance(999); // the last millisecond of exp's second: still held
    expect(await store.claim('a', exp)).toBe(false);
    expect(store.purge()).toBe(0);
    clock.advance(1); // the next second has begun
    expect(store.purge()).toBe(2);
    expect(store.size).toBe(0);
    expect(await store.claim('a', clock.seconds() + 10)).toBe(true);
    expect(await store.claim('c', clock.seconds() + 10)).toBe(true);
    expect(store.size).toBe(2);
  });

  it('a full store frees expired slots by itself when a new jti arrives', async () => {
    const clock = movableClock();
    const store = await localStore({ purge_interval: 0, max_entries: 2 }, { clock: clock.now });
    await store.claim('a', clock.seconds() + 5);
    await store.claim('b', clock.seconds() + 60);
    clock.advance(6_000);
    expect(await store.claim('c', clock.seconds() + 60)).toBe(true); // 'a' expired and was purged to make room
    expect(await store.claim('b', clock.seconds() + 60)).toBe(false);
    expect(store.size).toBe(2);
  });

  it('an already expired (or expiring now) token is kept until the next second is over (1 to 2 s)', async () => {
    const clock = movableClock(1_700_000_000_500);
    const store = await localStore({ purge_interval: 0, max_entries: 1000 }, { clock: clock.now });
    expect(await store.claim('old', clock.seconds() - 10)).toBe(true);
    expect(await store.claim('old', clock.seconds() - 10)).toBe(false);
    clock.advance(999);
    expect(await store.claim('old', clock.seconds() - 10)).toBe(false);
    clock.advance(500); // 1,700,000,001,999: the last millisecond of the next second
    expect(await store.claim('old', clock.seconds() - 10)).toBe(false);
    clock.advance(1);
    expect(await store.claim('old', clock.seconds() - 10)).toBe(true);
  });

  it('when full of unexpired nonces refuses new jtis with NonceStoreFullError, still answers false for known ones, and recovers', async () => {
    const clock = movableClock();
    const { logger, lines } = recordingLogger();
    const store = await localStore({ purge_interval: 0, max_entries: 3 }, { clock: clock.now, logger });
    const exp = clock.seconds() + 60;
    for (const id of ['a', 'b', 'c']) expect(await store.claim(id, exp)).toBe(true);
    await expect(store.claim('d', exp)).rejects.toBeInstanceOf(NonceStoreFullError);
    const error = await store.claim('e', exp).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'ERR_NONCE_STORE_FULL', status: 503 });
    // Nothing was evicted: every stored nonce is still refused as a replay.
    for (const id of ['a', 'b', 'c']) expect(await store.claim(id, exp)).toBe(false);
    clock.advance(30_000);
    await expect(store.claim('f', exp)).rejects.toBeInstanceOf(NonceStoreFullError);
    expect(lines.filter((line) => line.startsWith('warn: nonce storage is full'))).toHaveLength(1);
    clock.advance(31_000); // past exp
    expect(await store.claim('d', clock.seconds() + 60)).toBe(true);
    expect(lines).toContain('info: nonce storage has room again');
  });

  it('the purge_interval timer removes expired nonces; stop() ends it', async () => {
    const clock = movableClock();
    const store = await localStore({ purge_interval: '20ms', max_entries: 1000 }, { clock: clock.now });
    for (let i = 0; i < 100; i++) await store.claim(jti(), clock.seconds() + 10);
    await sleep(60);
    expect(store.size).toBe(100); // nothing expired yet
    clock.advance(11_000);
    for (let waited = 0; store.size > 0 && waited < 2_000; waited += 10) await sleep(10);
    expect(store.size).toBe(0);

    await store.stop();
    for (let i = 0; i < 10; i++) await store.claim(jti(), clock.seconds() + 10);
    clock.advance(11_000);
    await sleep(100);
    expect(store.size).toBe(10);
  });

  it('the purge_interval timer removes a busy store\'s expired nonces in slices: requests are never held up for long', async () => {
    const clock = movableClock();
    const store = await localStore({ purge_interval: '20ms' }, { clock: clock.now });
    // 400,000 nonces over 5 minutes of 5-minute tokens: a busy verifier, as the Go signer's defaults make them.
    const count = 400_000;
    for (let i = 0; i < count; i++) {
      clock.advance(300_000 / count);
      await store.claim(`nonce-${i}-0123456789abcdefghijkl`, clock.seconds() + 300);
    }
    // Scavenges promote the set-up's 400,000 young nonces before the measurement: on Node 22 and 24,
    // whose young generation is larger, the first scavenge after the set-up copied them for 250-300 ms,
    // a pause of the set-up's making that would otherwise land in whichever purge slice came next.
    const shortLived: number[][] = [];
    for (let round = 0; round < 2; round++) {
      for (let i = 0; i < 4_000_000; i++) shortLived[i & 1023] = [i];
      await sleep(20);
    }
    clock.advance(120_000); // two purge intervals of the Go default: 40 % of them expired
    let longestGap = 0;
    let last = performance.now();
    const ticker = setInterval(() => {
      const now = performance.now();
      longestGap = Math.max(longestGap, now - last);
      last = now;
    }, 1);
    // The timer takes whole past seconds: the ~1,300 nonces of the second now under way wait for the next purge.
    for (let waited = 0; store.size > 241_500 && waited < 10_000; waited += 10) await sleep(10);
    clearInterval(ticker);
    expect(store.size).toBeLessThanOrEqual(241_500);
    expect(store.size).toBeGreaterThanOrEqual(240_000); // none of the unexpired ones went
    // In one go this purge held the event loop for about 100 ms (200 ms for the whole 1M-entry walk).
    // Sliced, the longest gap is ~10 ms on a quiet machine; 75 leaves room for a loaded one and still fails the ~100-180 ms of a purge in one go.
    expect(longestGap).toBeLessThan(75);
  });

  it('a full store whose nonces have expired makes room a slice at a time, and no unexpired nonce goes', async () => {
    const clock = movableClock();
    const count = 400_000;
    const store = await localStore({ purge_interval: 0, max_entries: count }, { clock: clock.now });
    for (let i = 0; i < count; i++) {
      clock.advance(300_000 / count);
      await store.claim(`nonce-${i}-0123456789abcdefghijkl`, clock.seconds() + 300);
    }
    clock.advance(120_000); // 40 % of them have expired; the store is full
    // The first new claim frees at most one slice of a table (SHARED_PURGE_SLICE slots), not all
    // 160,000 expired nonces (freeing them all at once held the Map store's claim ~60 ms).
    expect(await store.claim('fresh-0', clock.seconds() + 300)).toBe(true);
    expect(store.size).toBeGreaterThanOrEqual(count - SHARED_PURGE_SLICE);
    expect(store.size).toBeLessThanOrEqual(count);
    for (let i = 1; i < 10_000; i++) expect(await store.claim(`fresh-${i}`, clock.seconds() + 300)).toBe(true);
    expect(store.size).toBeLessThanOrEqual(count);
    // The unexpired ones are all still there: replays of them are refused.
    for (let i = count - 1; i > count - 1000; i--) expect(await store.claim(`nonce-${i}-0123456789abcdefghijkl`, clock.seconds() + 300)).toBe(false);
  });

  it('a jti claimed again after it expired stays when the purge visits its first, expired, claim', async () => {
    const clock = movableClock();
    const store = await localStore({ purge_interval: 0, max_entries: 10 }, { clock: clock.now });
    expect(await store.claim('again', clock.seconds() + 5)).toBe(true);
    clock.advance(6_000);
    expect(await store.claim('again', clock.seconds() + 60)).toBe(true);
    clock.advance(1_000);
    expect(store.purge()).toBe(0);
    expect(await store.claim('again', clock.seconds() + 60)).toBe(false);
    clock.advance(61_000);
    expect(store.purge()).toBe(1);
    expect(store.size).toBe(0);
  });

  it('purge_interval 0 runs no timer', async () => {
    const clock = movableClock();
    const store = await localStore({ purge_interval: 0, max_entries: 1000 }, { clock: clock.now });
    await store.claim('x', clock.seconds() + 1);
    clock.advance(5_000);
    await sleep(50);
    expect(store.size).toBe(1);
  });

  it('refuses a non-finite expiresAt rather than keeping the jti forever', async () => {
    const store = await localStore({ max_entries: 10 });
    await expect(store.claim('n', Number.NaN)).rejects.toBeInstanceOf(TypeError);
  });

  it('bad options are ConfigErrors naming the option', async () => {
    const create = (options: Record<string, unknown>) =>
      nonceStores.create({ type: 'local', options }, { logger: silentLogger, clock: Date.now, baseDir: '.' }).catch((e: unknown) => e);
    expect(await create({ purge_interval: 'soon' })).toMatchObject({ path: 'purge_interval' });
    expect(await create({ purge_interval: 60 })).toMatchObject({ path: 'purge_interval' });
    expect(await create({ max_entries: 0 })).toMatchObject({ path: 'max_entries' });
    expect(await create({ max_entries: '100' })).toMatchObject({ path: 'max_entries' });
    expect(await create({ max_entries: 1.5 })).toMatchObject({ path: 'max_entries' });
    const unknown = await create({ purge_intervall: '1m' });
    expect(unknown).toBeInstanceOf(ConfigError);
    expect(unknown).toMatchObject({ path: 'purge_intervall' });
  });
});

describe('local nonce store tables', () => {
  const bytesOf = (entries: number): number => SHARED_TABLE_BYTES_PER_ENTRY * entries + 64;
  /** Turns of the event loop, for the moves between tables that go on between them. */
  const turns = async (n = 50): Promise<void> => {
    for (let i = 0; i < n; i++) await new Promise((resolve) => setImmediate(resolve));
  };

  it('grows through several tables and keeps every nonce: each of 100,000 jtis claimed once, then each a replay', async () => {
    const clock = movableClock();
    const store = await localStore({ purge_interval: 0 }, { clock: clock.now });
    const exp = clock.seconds() + 300;
    const ids = Array.from({ length: 100_000 }, (_, i) => `grow-${i}-${jti()}`);
    let largest = 0;
    // Claims awaited one after the other never let the event loop turn: the moves go by the claims alone.
    for (const id of ids) {
      expect(await store.claim(id, exp)).toBe(true);
      largest = Math.max(largest, store.byteLength);
    }
    expect(store.size).toBe(100_000);
    // 16,384 → 32,768 → 65,536 → 131,072 entries; at most the new table and the one moving into it.
    expect(store.byteLength).toBe(bytesOf(131_072));
    expect(largest).toBe(bytesOf(65_536) + bytesOf(131_072));
    for (const id of ids) expect(await store.claim(id, exp)).toBe(false);
    expect(store.size).toBe(100_000);
  });

  it('a replay across a growth is refused, whether its nonce is still in the old table or has moved', async () => {
    const clock = movableClock();
    const store = await localStore({ purge_interval: 0 }, { clock: clock.now });
    const exp = clock.seconds() + 300;
    const first = Array.from({ length: LOCAL_FIRST_TABLE_ENTRIES }, (_, i) => `first-${i}`);
    for (const id of first) expect(await store.claim(id, exp)).toBe(true);
    expect(store.byteLength).toBe(bytesOf(LOCAL_FIRST_TABLE_ENTRIES));
    // The first table is full: this claim makes one twice as large, and the first starts moving into it.
    expect(await store.claim('after-growth', exp)).toBe(true);
    expect(store.byteLength).toBe(bytesOf(LOCAL_FIRST_TABLE_ENTRIES) + bytesOf(2 * LOCAL_FIRST_TABLE_ENTRIES));
    // Replays while the move is under way (each claim moves a few slots: some nonces are in either table).
    for (const id of [...first].reverse()) expect(await store.claim(id, exp)).toBe(false);
    expect(await store.claim('after-growth', exp)).toBe(false);
    await turns();
    // The old table has moved and is gone; the replays are still refused.
    expect(store.byteLength).toBe(bytesOf(2 * LOCAL_FIRST_TABLE_ENTRIES));
    expect(store.size).toBe(LOCAL_FIRST_TABLE_ENTRIES + 1);
    for (const id of first) expect(await store.claim(id, exp)).toBe(false);
    expect(await store.claim('after-growth', exp)).toBe(false);
  });

  it('full at max_entries unexpired nonces (across tables), nothing forgotten; room again once they expire and a purge ran', async () => {
    const clock = movableClock();
    const { logger, lines } = recordingLogger();
    const max = 50_000;
    const store = await localStore({ purge_interval: 0, max_entries: max }, { clock: clock.now, logger });
    const exp = clock.seconds() + 60;
    const ids = Array.from({ length: max }, (_, i) => `held-${i}`);
    let largest = 0;
    for (const id of ids) {
      expect(await store.claim(id, exp)).toBe(true);
      largest = Math.max(largest, store.byteLength);
    }
    // 16,384 → 32,768 → 50,000 (max_entries caps the table), with 32,768 moving into the last at most.
    expect(largest).toBeLessThanOrEqual(bytesOf(32_768) + bytesOf(max));
    await turns();
    expect(store.byteLength).toBe(bytesOf(max));
    await expect(store.claim('one-more', exp)).rejects.toBeInstanceOf(NonceStoreFullError);
    await expect(store.claim('and-another', exp)).rejects.toMatchObject({ status: 503 });
    expect(lines.filter((line) => line.startsWith('warn: nonce storage is full'))).toHaveLength(1);
    for (const id of ids) expect(await store.claim(id, exp)).toBe(false);
    clock.advance(59_000);
    await expect(store.claim('one-more', exp)).rejects.toBeInstanceOf(NonceStoreFullError);
    clock.advance(2_000); // the second after exp has begun
    expect(store.purge()).toBe(max);
    expect(store.size).toBe(0);
    expect(lines).toContain('info: nonce storage has room again');
    // An empty store keeps no table: the next claim makes a first one.
    expect(store.byteLength).toBe(0);
    expect(await store.claim('one-more', clock.seconds() + 60)).toBe(true);
    expect(store.byteLength).toBe(bytesOf(LOCAL_FIRST_TABLE_ENTRIES));
  });

  it('the table is replaced by a smaller one once most of its nonces expire, and the old one is dropped: the few left are still refused', async () => {
    const clock = movableClock();
    const store = await localStore({ purge_interval: '20ms' }, { clock: clock.now });
    for (let i = 0; i < 100_000; i++) expect(await store.claim(`short-${i}`, clock.seconds() + 10)).toBe(true);
    const kept = Array.from({ length: 5_000 }, (_, i) => `long-${i}`);
    for (const id of kept) expect(await store.claim(id, clock.seconds() + 600)).toBe(true);
    await turns();
    expect(store.byteLength).toBe(bytesOf(131_072));
    clock.advance(11_000);
    // The timer purges in slices; then the 5,000 left move into a table of 32,768 (four times as many, a power of two).
    for (let waited = 0; store.byteLength !== bytesOf(32_768) && waited < 5_000; waited += 10) await sleep(10);
    expect(store.size).toBe(5_000);
    expect(store.byteLength).toBe(bytesOf(32_768));
    for (const id of kept) expect(await store.claim(id, clock.seconds() + 600)).toBe(false);
    expect(await store.claim('short-1', clock.seconds() + 10)).toBe(true); // expired: claimable again
  });
});

describe('local nonce store memory', () => {
  const gc = (globalThis as { gc?: () => void }).gc;
  const heapUsed = (): number => {
    gc?.();
    gc?.();
    return process.memoryUsage().heapUsed;
  };
  const MiB = 1024 * 1024;

  /** Heap bytes a store takes from creation to holding `count` distinct 32-character nonces, and the store. */
  async function measure(count: number, options: Record<string, unknown>): Promise<{ heap: number; store: LocalNonceStore }> {
    const entropy = randomBytes(count * 24);
    const before = heapUsed();
    const store = await localStore({ purge_interval: 0, ...options });
    const exp = Math.floor(Date.now() / 1000) + 300;
    for (let i = 0; i < count; i++) {
      if (!(await store.claim(entropy.toString('base64', i * 24, i * 24 + 24), exp))) throw new Error('duplicate nonce');
    }
    await new Promise((resolve) => setImmediate(resolve));
    const after = heapUsed();
    expect(store.size).toBe(count); // keeps the store alive until after the measurement
    return { heap: after - before, store };
  }

  it('runs with --expose-gc so the figures are after a full collection', () => {
    expect(typeof gc).toBe('function');
  });

  it('100,000 nonces in a default store (max_entries 1,000,000): one table of 131,072 entries (4 MiB), nothing per nonce on the heap', async () => {
    const { heap, store } = await measure(100_000, {});
    console.log(`local nonce store, default max_entries, 100k nonces: tables ${(store.byteLength / MiB).toFixed(1)} MiB, heap ${(heap / MiB).toFixed(2)} MiB`);
    expect(store.byteLength).toBe(SHARED_TABLE_BYTES_PER_ENTRY * 131_072 + 64);
    // The Map store took ~12 MiB of heap here (~127 bytes per nonce).
    expect(heap).toBeLessThan(1 * MiB);
  });

  it('a store of max_entries 100,000 holding 100,000 nonces: 32 bytes per max_entries, nothing per nonce on the heap', async () => {
    const { heap, store } = await measure(100_000, { max_entries: 100_000 });
    console.log(`local nonce store, max_entries 100k, 100k nonces: tables ${(store.byteLength / MiB).toFixed(1)} MiB, heap ${(heap / MiB).toFixed(2)} MiB`);
    expect(store.byteLength).toBe(SHARED_TABLE_BYTES_PER_ENTRY * 100_000 + 64);
    expect(heap).toBeLessThan(1 * MiB);
  });
});
