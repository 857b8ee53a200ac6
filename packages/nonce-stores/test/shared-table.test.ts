import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker } from 'node:worker_threads';
import { NonceStoreFullError, NonceStoreUnavailableError, createRuntime, silentLogger, type Logger, type SharedState } from '@jwtproxy/core';
import { afterEach, describe, expect, it } from 'vitest';
import {
  LocalNonceStore,
  SHARED_LOCK_WAIT_LIMIT_MS,
  SHARED_TABLE_BYTES_PER_ENTRY,
  SHARED_TABLE_HEADER_BYTES,
  SharedNonceTable,
  SharedNonceTables,
  localNonceStore,
  sharedNonceTableKey,
} from '../src/index.js';

const NOW = 1_700_000_000;
const workerScript = new URL('./fixtures/table-worker.mjs', import.meta.url);
const running = new Set<Worker>();
afterEach(async () => {
  await Promise.all([...running].map((worker) => worker.terminate()));
  running.clear();
});

interface Started {
  worker: Worker;
  /** The worker's { type: 'done' } message; rejects if it fails or exits first. */
  done: Promise<Record<string, unknown>>;
}

/** A worker thread running test/fixtures/table-worker.mjs in `mode`; `onMessage` sees its other messages. */
function startWorker(data: Record<string, unknown>, onMessage?: (message: Record<string, unknown>, worker: Worker) => void): Started {
  const worker = new Worker(workerScript, { workerData: data });
  running.add(worker);
  const done = new Promise<Record<string, unknown>>((resolve, reject) => {
    worker.on('message', (message: Record<string, unknown>) => {
      if (message.type === 'done') resolve(message);
      else onMessage?.(message, worker);
    });
    worker.on('error', reject);
    worker.on('exit', (code) => reject(new Error(`worker exited with ${code} before it was done`)));
  });
  done.catch(() => {});
  return { worker, done };
}

/** Resolves with the first message of `type` from `worker` (bounded by the test's timeout). */
function nextMessage(worker: Worker, type: string): Promise<Record<string, unknown>> {
  return new Promise((resolve) => {
    const listener = (message: Record<string, unknown>): void => {
      if (message.type !== type) return;
      worker.off('message', listener);
      resolve(message);
    };
    worker.on('message', listener);
  });
}

const int32s = (length: number): Int32Array => new Int32Array(new SharedArrayBuffer(4 * length));

/** Waits (bounded) until `ready[0]` reaches `count`, then lets everyone go at once with `go[0] = round`. */
async function startTogether(ready: Int32Array, go: Int32Array, count: number, round = 1): Promise<void> {
  for (let waited = 0; Atomics.load(ready, 0) < count * round; waited += 5) {
    if (waited > 20_000) throw new Error('workers did not get ready');
    await sleep(5);
  }
  Atomics.store(go, 0, round);
  Atomics.notify(go, 0);
}

function sum(values: ArrayLike<number>): number {
  let total = 0;
  for (let i = 0; i < values.length; i++) total += values[i]!;
  return total;
}

describe('SharedNonceTable in one thread', () => {
  it('claims a jti once, answers seen while it is unexpired, and claimed again once its second is past', () => {
    const table = SharedNonceTable.create(100);
    expect(table.claim('abc', NOW + 10, NOW)).toBe('claimed');
    expect(table.claim('abc', NOW + 10, NOW)).toBe('seen');
    expect(table.claim('abc', NOW + 1000, NOW + 10)).toBe('seen'); // now == exp: the verifier still accepts it
    expect(table.claim('abd', NOW + 10, NOW)).toBe('claimed');
    expect(table.claim('abc', NOW + 100, NOW + 11)).toBe('claimed');
    expect(table.size).toBe(2);
    // A token already expired is held until the next second is over.
    expect(table.claim('old', NOW - 50, NOW)).toBe('claimed');
    expect(table.claim('old', NOW - 50, NOW + 1)).toBe('seen');
    expect(table.claim('old', NOW - 50, NOW + 2)).toBe('claimed');
  });

  it('takes 32 bytes per max_entries and 64 for the header, fixed at creation', () => {
    const table = SharedNonceTable.create(1_000_000);
    expect(SHARED_TABLE_BYTES_PER_ENTRY).toBe(32);
    expect(SHARED_TABLE_HEADER_BYTES).toBe(64);
    expect(table.buffer.byteLength).toBe(32_000_064);
    expect(table.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(() => SharedNonceTable.create(0)).toThrow(RangeError);
    expect(() => SharedNonceTable.create(2 ** 25 + 1)).toThrow(RangeError);
    expect(() => SharedNonceTable.attach(new SharedArrayBuffer(64))).toThrow(TypeError);
  });

  it('a table attached to the same buffer sees the same nonces; another table does not (its own key)', () => {
    const table = SharedNonceTable.create(10);
    const attached = SharedNonceTable.attach(table.buffer);
    expect(table.claim('x', NOW + 60, NOW)).toBe('claimed');
    expect(attached.claim('x', NOW + 60, NOW)).toBe('seen');
    expect(attached.size).toBe(1);
    expect(SharedNonceTable.create(10).claim('x', NOW + 60, NOW)).toBe('claimed');
  });

  it('holds answers whether an unexpired claim is held, without claiming', () => {
    const table = SharedNonceTable.create(100);
    expect(table.holds('h', NOW)).toBe(false);
    expect(table.size).toBe(0);
    expect(table.claim('h', NOW + 10, NOW)).toBe('claimed');
    expect(table.holds('h', NOW + 10)).toBe(true);
    expect(table.holds('h', NOW + 11)).toBe(false); // its second is past
    expect(table.holds('i', NOW)).toBe(false);
    expect(() => table.holds('h', Number.NaN)).toThrow(TypeError);
  });

  it('moveSlice moves the unexpired nonces into a table with the same key, a slice at a time, and drops the expired ones', () => {
    const from = SharedNonceTable.create(1_000);
    const into = SharedNonceTable.create(2_000, from);
    for (let i = 0; i < 1_000; i++) expect(from.claim(`m-${i}`, NOW + (i < 100 ? 5 : 60), NOW)).toBe('claimed');
    expect(() => from.moveSlice(SharedNonceTable.create(2_000), NOW)).toThrow(TypeError); // another key
    expect(() => from.moveSlice(from, NOW)).toThrow(TypeError);
    const moved = from.moveSlice(into, NOW + 6, 100);
    expect(from.size).toBeGreaterThan(800);
    let total = moved;
    while (from.size > 0) total += from.moveSlice(into, NOW + 6, 100);
    expect(total).toBe(900);
    expect(into.size).toBe(900);
    for (let i = 0; i < 1_000; i++) expect(into.claim(`m-${i}`, NOW + 60, NOW + 6)).toBe(i < 100 ? 'claimed' : 'seen');
  });

  it('when full of unexpired nonces answers full, never forgets one, and has room once some expire', () => {
    const table = SharedNonceTable.create(1000);
    for (let i = 0; i < 1000; i++) expect(table.claim(`n-${i}`, NOW + 10 + (i % 20), NOW)).toBe('claimed');
    expect(table.claim('one-more', NOW + 60, NOW)).toBe('full');
    expect(table.claim('one-more', NOW + 60, NOW + 10)).toBe('full'); // nothing expired yet (exp == now is alive)
    for (let i = 0; i < 1000; i++) expect(table.claim(`n-${i}`, NOW + 60, NOW + 10)).toBe('seen');
    // At NOW + 15 the nonces expiring at NOW + 10 ..= 14 (250 of them) have gone.
    for (let i = 0; i < 250; i++) expect(table.claim(`new-${i}`, NOW + 60, NOW + 15)).toBe('claimed');
    expect(table.claim('new-250', NOW + 60, NOW + 15)).toBe('full');
    // The expired ones went to make that room: claimed again they need room too; the others are replays.
    for (let i = 0; i < 1000; i++) expect(table.claim(`n-${i}`, NOW + 60, NOW + 15)).toBe(i % 20 < 5 ? 'full' : 'seen');
  });

  it('a purge removes exactly the expired nonces, and a new round of jtis goes in afterwards', () => {
    const table = SharedNonceTable.create(50_000);
    for (let i = 0; i < 50_000; i++) table.claim(`p-${i}`, NOW + (i % 10), NOW);
    expect(table.size).toBe(50_000);
    expect(table.mayHoldExpired(NOW)).toBe(false);
    expect(table.purge(NOW)).toBe(0);
    expect(table.purge(NOW + 5)).toBe(25_000); // exp NOW+0 ..= NOW+4
    expect(table.size).toBe(25_000);
    for (let i = 0; i < 50_000; i++) expect(table.claim(`p-${i}`, NOW + 60, NOW + 5)).toBe(i % 10 < 5 ? 'claimed' : 'seen');
    expect(table.purge(NOW + 10)).toBe(25_000); // exp NOW+5 ..= NOW+9
    expect(table.size).toBe(25_000);
    // One round of the table later the purge knows nothing has expired: it does not look again.
    expect(table.mayHoldExpired(NOW + 10)).toBe(false);
  });

  it('distinct jtis with the same prefix and suffix all go in: 1,000,000 claimed, then each a replay', () => {
    const table = SharedNonceTable.create(1_000_000);
    let claimed = 0;
    for (let i = 0; i < 1_000_000; i++) if (table.claim(`nonce-${i}-0123456789abcdefghijkl`, NOW + 300, NOW) === 'claimed') claimed++;
    expect(claimed).toBe(1_000_000);
    let seen = 0;
    for (let i = 0; i < 1_000_000; i++) if (table.claim(`nonce-${i}-0123456789abcdefghijkl`, NOW + 300, NOW) === 'seen') seen++;
    expect(seen).toBe(1_000_000);
    // Lengths 0..40 and code units beyond Latin-1 are told apart.
    const odd = ['', 'a', 'a\u0000', '\u0000a', 'é', '\u{1F600}', 'abcdefgh', 'abcdefghi'];
    const small = SharedNonceTable.create(100);
    for (const jti of odd) expect(small.claim(jti, NOW + 300, NOW)).toBe('claimed');
    for (const jti of odd) expect(small.claim(jti, NOW + 300, NOW)).toBe('seen');
  });
});

describe('SharedNonceTable across worker threads', () => {
  it('one jti replayed 1,000 times at once across 4 workers is claimed exactly once (20 rounds)', async () => {
    const table = SharedNonceTable.create(10_000);
    const rounds = 20;
    const ready = int32s(1);
    const go = int32s(1);
    const claimedPerRound = int32s(rounds);
    const prefix = randomBytes(16).toString('base64url');
    const workers = Array.from({ length: 4 }, () =>
      startWorker({ mode: 'replay', buffer: table.buffer, ready: ready.buffer, go: go.buffer, claimedPerRound: claimedPerRound.buffer, rounds, times: 250, prefix, now: NOW }),
    );
    for (let round = 1; round <= rounds; round++) await startTogether(ready, go, 4, round);
    const results = await Promise.all(workers.map((w) => w.done));
    expect([...claimedPerRound]).toEqual(new Array(rounds).fill(1));
    const answers = results.map((r) => r.answers as Record<string, number>);
    expect(sum(answers.map((a) => a.claimed!))).toBe(rounds);
    expect(sum(answers.map((a) => a.seen!))).toBe(rounds * 1000 - rounds);
    expect(sum(answers.map((a) => a.full!))).toBe(0);
    // All four took part in the races (each won or lost some).
    for (const a of answers) expect(a.claimed! + a.seen!).toBe(rounds * 250);
  });

  it('100,000 distinct jtis claimed by 4 workers at once, each in its own order: every one claimed exactly once', async () => {
    const table = SharedNonceTable.create(200_000);
    const count = 100_000;
    const counts = int32s(count);
    const ready = int32s(1);
    const go = int32s(1);
    const prefix = randomBytes(16).toString('base64url');
    const strides = [1, 3, 7, 99_999];
    const workers = strides.map((stride, w) =>
      startWorker({ mode: 'distinct', buffer: table.buffer, counts: counts.buffer, ready: ready.buffer, go: go.buffer, count, prefix, stride, offset: w * 25_000, now: NOW }),
    );
    await startTogether(ready, go, 4);
    const results = await Promise.all(workers.map((w) => w.done));
    let notOnce = 0;
    for (let i = 0; i < count; i++) if (counts[i] !== 1) notOnce++;
    expect(notOnce).toBe(0);
    const answers = results.map((r) => r.answers as Record<string, number>);
    expect(sum(answers.map((a) => a.claimed!))).toBe(count);
    expect(sum(answers.map((a) => a.seen!))).toBe(3 * count);
    expect(table.size).toBe(count);
    // Every worker won some: they really ran at the same time.
    for (const a of answers) expect(a.claimed!).toBeGreaterThan(0);
  });

  it('a full table answers full in every worker, loses nothing, and takes new jtis once the old ones expire', async () => {
    const table = SharedNonceTable.create(1_000);
    const clock = int32s(1);
    Atomics.store(clock, 0, NOW);
    const run = async (prefix: string): Promise<{ counts: Int32Array; answers: Record<string, number>[] }> => {
      const counts = int32s(1_500);
      const ready = int32s(1);
      const go = int32s(1);
      const workers = [1, 7, 11, 13].map((stride, w) =>
        startWorker({ mode: 'distinct', buffer: table.buffer, counts: counts.buffer, clock: clock.buffer, ready: ready.buffer, go: go.buffer, count: 1_500, prefix, stride, offset: w * 375, ttl: 60 }),
      );
      await startTogether(ready, go, 4);
      const results = await Promise.all(workers.map((w) => w.done));
      return { counts, answers: results.map((r) => r.answers as Record<string, number>) };
    };
    const first = await run('first');
    expect(sum(first.counts)).toBe(1_000);
    expect(Math.max(...first.counts)).toBe(1);
    expect(sum(first.answers.map((a) => a.full!))).toBe(4 * 500); // each of 4 workers, for each of the 500 left out
    expect(table.size).toBe(1_000);
    // Still full a minute later (exp is inclusive): nothing was evicted to make room.
    Atomics.store(clock, 0, NOW + 60);
    expect(table.claim('late', NOW + 120, NOW + 60)).toBe('full');
    for (let i = 0; i < 1_500; i++) if (first.counts[i] === 1) expect(table.claim(`first-${i}`, NOW + 120, NOW + 60)).toBe('seen');
    // Past their expiry the workers' claims free the room themselves (no purge timer here).
    Atomics.store(clock, 0, NOW + 61);
    const second = await run('second');
    expect(sum(second.counts)).toBe(1_000);
    expect(Math.max(...second.counts)).toBe(1);
    expect(table.size).toBe(1_000);
  });

  it('a purge running while workers claim never loses an unexpired nonce, and the count stays exact', async () => {
    const table = SharedNonceTable.create(100_000);
    const clock = int32s(1);
    Atomics.store(clock, 0, NOW);
    const total = 160_000;
    const claimedExp = int32s(total);
    const stop = int32s(1);
    const purger = startWorker({ mode: 'purger', buffer: table.buffer, clock: clock.buffer, stop: stop.buffer });
    const claimers = [0, 1, 2, 3].map((w) =>
      startWorker({ mode: 'expiring', buffer: table.buffer, clock: clock.buffer, claimedExp: claimedExp.buffer, from: w * 40_000, to: (w + 1) * 40_000, prefix: 'e' }),
    );
    // Time runs on (a second every 20 ms) while they claim 0-5 s nonces and the purger removes expired ones.
    const ticker = setInterval(() => Atomics.add(clock, 0, 1), 20);
    const results = await Promise.all(claimers.map((w) => w.done));
    clearInterval(ticker);
    Atomics.store(stop, 0, 1);
    const purged = await purger.done;
    const now = Atomics.load(clock, 0);
    let alive = 0;
    let lost = 0;
    for (let i = 0; i < total; i++) {
      const exp = claimedExp[i]!;
      if (exp === 0 || exp < now) continue;
      alive++;
      if (table.claim(`e-${i}`, exp, now) !== 'seen') lost++;
    }
    expect(lost).toBe(0);
    expect(alive).toBeGreaterThan(0);
    expect(purged.removed as number).toBeGreaterThan(0);
    // After purging the rest, exactly the unexpired nonces are held: none lost, none doubled.
    table.purge(now);
    expect(table.size).toBe(alive);
    const answers = results.map((r) => r.answers as Record<string, number>);
    expect(sum(answers.map((a) => a.claimed!))).toBe(sum(Array.from(claimedExp, (exp) => (exp === 0 ? 0 : 1))));
  });

  it('workers terminated at random moments while claiming and purging leave the table usable and lose no nonce', async () => {
    const table = SharedNonceTable.create(200_000);
    const clock = int32s(1);
    Atomics.store(clock, 0, NOW);
    const count = 30_000;
    const counts = int32s(count);
    const stop = int32s(1);
    // Three survivors claim the same long-lived jtis (each exactly once in all), then keep replaying them.
    const survivors = [1, 7, 11].map((stride, w) =>
      startWorker({ mode: 'distinct', buffer: table.buffer, counts: counts.buffer, clock: clock.buffer, stop: stop.buffer, count, prefix: 'keep', stride, offset: w * 10_000, ttl: 3_600 }),
    );
    const ticker = setInterval(() => Atomics.add(clock, 0, 1), 5);
    let diedHoldingLock = 0;
    let released = 0;
    let kills = 0;
    // Until three died inside the critical section (they spend most of their time there), at most 30.
    for (; kills < 30 && diedHoldingLock < 3; kills++) {
      // Victims churn short-lived nonces and purge them: slots move under the survivors' entries.
      const victim = startWorker({ mode: 'churn', buffer: table.buffer, clock: clock.buffer });
      await nextMessage(victim.worker, 'started');
      await sleep(5 + Math.floor(Math.random() * 30));
      const id = victim.worker.threadId;
      await victim.worker.terminate();
      running.delete(victim.worker);
      if (table.lockHolder() === id) diedHoldingLock++;
      // What the primary does on a worker's 'exit'.
      if (table.threadExited(id)) released++;
    }
    clearInterval(ticker);
    Atomics.store(stop, 0, 1);
    const results = await Promise.all(survivors.map((w) => w.done));
    console.log(`${kills} workers terminated while claiming: ${diedHoldingLock} died holding the lock, ${released} released by threadExited`);
    expect(diedHoldingLock).toBeGreaterThan(0);
    expect(released).toBe(diedHoldingLock);
    let notOnce = 0;
    for (let i = 0; i < count; i++) if (counts[i] !== 1) notOnce++;
    expect(notOnce).toBe(0);
    for (const result of results) {
      const answers = result.answers as Record<string, number>;
      // Replays of the kept jtis after the first pass: every one a replay, none claimed anew or refused as full.
      expect(answers.later_claimed ?? 0).toBe(0);
      expect(answers.later_full ?? 0).toBe(0);
      expect(result.passes as number).toBeGreaterThan(0);
    }
    expect(table.lockHolder()).toBeUndefined();
    expect(table.claim('after', NOW + 100_000, Atomics.load(clock, 0))).toBe('claimed');
  });

  it('a lock left held by a terminated worker: claims fail closed (503) after a bounded wait instead of hanging, and go on once the primary releases it', async () => {
    const table = SharedNonceTable.create(10_000);
    const holder = startWorker({ mode: 'hold-lock', buffer: table.buffer });
    await nextMessage(holder.worker, 'holding');
    const holderId = holder.worker.threadId;
    await holder.worker.terminate();
    running.delete(holder.worker);
    expect(table.lockHolder()).toBe(holderId);

    let started = performance.now();
    const error = (() => {
      try {
        table.claim('x', NOW + 60, NOW);
      } catch (e) {
        return e;
      }
    })();
    const waited = performance.now() - started;
    expect(error).toBeInstanceOf(NonceStoreUnavailableError);
    expect(error).toMatchObject({ status: 503, code: 'ERR_NONCE_STORE_UNAVAILABLE', facts: { lock_holder_thread: holderId } });
    expect(waited).toBeGreaterThanOrEqual(SHARED_LOCK_WAIT_LIMIT_MS - 5);
    expect(waited).toBeLessThan(SHARED_LOCK_WAIT_LIMIT_MS + 1_000);
    // The next claim does not stall again: it fails at once.
    started = performance.now();
    expect(() => table.claim('y', NOW + 60, NOW)).toThrow(NonceStoreUnavailableError);
    expect(performance.now() - started).toBeLessThan(50);

    // Workers start claiming (and wait on the lock); the primary sees the exit and releases it.
    const counts = int32s(5_000);
    const workers = [1, 3].map((stride) => startWorker({ mode: 'distinct', buffer: table.buffer, counts: counts.buffer, count: 5_000, prefix: 'w', stride, offset: 0, now: NOW }));
    await sleep(100);
    expect(table.threadExited(holderId)).toBe(true);
    expect(table.threadExited(holderId)).toBe(false);
    await Promise.all(workers.map((w) => w.done));
    expect(sum(counts)).toBe(5_000);
    expect(Math.max(...counts)).toBe(1);
    expect(table.claim('x', NOW + 60, NOW)).toBe('claimed');
  });
});

describe('local nonce store on a shared table', () => {
  function movableClock(start = NOW * 1000) {
    let now = start;
    return { now: () => now, advance: (ms: number) => void (now += ms), seconds: () => Math.floor(now / 1000) };
  }

  it('without sharedState keeps its own nonces (one process, as before)', async () => {
    const { nonceStores } = createRuntime();
    nonceStores.register(localNonceStore);
    const context = { logger: silentLogger, clock: Date.now, baseDir: '.' };
    const a = await nonceStores.create({ type: 'local', options: { max_entries: 10 } }, context);
    const b = await nonceStores.create({ type: 'local', options: { max_entries: 10 } }, context);
    const exp = Math.floor(Date.now() / 1000) + 60;
    expect(await a.claim('j', exp)).toBe(true);
    expect(await b.claim('j', exp)).toBe(true);
    await Promise.all([a.stop?.(), b.stop?.()]);
  });

  it('asks sharedState for a table named by its path and max_entries, and stores built with the same name share nonces', async () => {
    const tables = new SharedNonceTables();
    const asked: string[] = [];
    const sharedState: SharedState = {
      nonceTable: (key, maxEntries) => {
        asked.push(key);
        return tables.bufferFor(key, maxEntries);
      },
    };
    const { nonceStores } = createRuntime();
    nonceStores.register(localNonceStore);
    const build = (path: string, maxEntries: number) =>
      nonceStores.create({ type: 'local', options: { max_entries: maxEntries } }, { logger: silentLogger, clock: Date.now, baseDir: '.', path, sharedState });
    const verifier0 = 'verifier_proxies[0].verifier.nonce_storage';
    const [a, b, other, resized] = await Promise.all([build(verifier0, 1_000), build(verifier0, 1_000), build('verifier_proxies[1].verifier.nonce_storage', 1_000), build(verifier0, 2_000)]);
    expect(asked[0]).toBe(sharedNonceTableKey(verifier0, 1_000));
    expect(asked[0]).toBe('verifier_proxies[0].verifier.nonce_storage#max_entries=1000');
    const exp = Math.floor(Date.now() / 1000) + 60;
    expect(await a.claim('j', exp)).toBe(true);
    expect(await b.claim('j', exp)).toBe(false);
    expect(await other.claim('j', exp)).toBe(true); // another verifier: its own table
    expect(await resized.claim('j', exp)).toBe(true); // max_entries changed: a new table
    expect((a as LocalNonceStore).maxEntries).toBe(1_000);
    expect(tables.byteLength).toBe(3 * 64 + 32 * (1_000 + 1_000 + 2_000));
    tables.retainOnly([sharedNonceTableKey(verifier0, 1_000)]);
    expect(tables.byteLength).toBe(64 + 32 * 1_000);
    await Promise.all([a, b, other, resized].map((store) => store.stop?.()));
  });

  it('full: rejects with NonceStoreFullError (503) and warns once, then recovers once nonces expire', async () => {
    const clock = movableClock();
    const lines: string[] = [];
    const logger: Logger = { debug: () => {}, info: (m) => lines.push(`info: ${m}`), warn: (m) => lines.push(`warn: ${m}`), error: () => {} };
    const table = SharedNonceTable.create(3);
    const store = new LocalNonceStore({ sharedTable: table, clock: clock.now, logger, purgeIntervalMs: 0, maxEntries: 999 });
    expect(store.maxEntries).toBe(3); // the table's
    const exp = clock.seconds() + 60;
    for (const id of ['a', 'b', 'c']) expect(await store.claim(id, exp)).toBe(true);
    const error = await store.claim('d', exp).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(NonceStoreFullError);
    expect(error).toMatchObject({ code: 'ERR_NONCE_STORE_FULL', status: 503 });
    await expect(store.claim('e', exp)).rejects.toBeInstanceOf(NonceStoreFullError);
    expect(lines.filter((line) => line.startsWith('warn: nonce storage is full'))).toHaveLength(1);
    for (const id of ['a', 'b', 'c']) expect(await store.claim(id, exp)).toBe(false);
    clock.advance(61_000); // exp is past
    expect(await store.claim('d', clock.seconds() + 60)).toBe(true);
    expect(lines).toContain('info: nonce storage has room again');
    // 'd' took the room of an expired nonce on its way, or a purge slice made room: 1 to 3 held.
    expect(store.size).toBeGreaterThanOrEqual(1);
    expect(store.size).toBeLessThanOrEqual(3);
    expect(await store.claim('d', clock.seconds() + 60)).toBe(false);
    await expect(store.claim('n', Number.NaN)).rejects.toBeInstanceOf(TypeError);
  });

  it('the purge_interval timer purges the shared table in slices; stop() ends it', async () => {
    const clock = movableClock();
    const table = SharedNonceTable.create(100_000);
    const store = new LocalNonceStore({ sharedTable: table, clock: clock.now, purgeIntervalMs: 20 });
    for (let i = 0; i < 100_000; i++) await store.claim(`t-${i}`, clock.seconds() + (i % 2 === 0 ? 5 : 600));
    await sleep(60);
    expect(store.size).toBe(100_000); // nothing expired yet
    clock.advance(10_000);
    let longestGap = 0;
    let last = performance.now();
    const ticker = setInterval(() => {
      const now = performance.now();
      longestGap = Math.max(longestGap, now - last);
      last = now;
    }, 1);
    for (let waited = 0; store.size > 50_000 && waited < 5_000; waited += 10) await sleep(10);
    clearInterval(ticker);
    expect(store.size).toBe(50_000);
    // Sliced, the longest gap is ~10 ms on a quiet machine; 75 leaves room for a loaded one and still fails the ~100-180 ms of a purge in one go.
    expect(longestGap).toBeLessThan(75);
    await store.stop();
    clock.advance(1_000_000);
    await sleep(100);
    expect(store.size).toBe(50_000);
    expect(store.purge()).toBe(50_000);
  });

  it('4 workers build the local store through the registry, get one table from the primary, and accept a jti replayed 1,000 times exactly once', async () => {
    const tables = new SharedNonceTables();
    const ready = int32s(1);
    const go = int32s(1);
    const jti = randomBytes(24).toString('base64url');
    const keys = new Set<string>();
    // The primary's side: answer each worker's request for a table, release locks of exited workers.
    const answer = (message: Record<string, unknown>, worker: Worker): void => {
      if (message.type !== 'nonce-table') return;
      keys.add(message.key as string);
      worker.postMessage({ type: 'nonce-table', id: message.id, buffer: tables.bufferFor(message.key as string, message.maxEntries as number) });
    };
    const workers = Array.from({ length: 4 }, () =>
      startWorker({ mode: 'store', path: 'verifier_proxies[0].verifier.nonce_storage', maxEntries: 50_000, ready: ready.buffer, go: go.buffer, jti, times: 250 }, answer),
    );
    for (const { worker } of workers) worker.on('exit', () => tables.threadExited(worker.threadId));
    await startTogether(ready, go, 4);
    const results = await Promise.all(workers.map((w) => w.done));
    expect(sum(results.map((r) => r.accepted as number))).toBe(1);
    expect(sum(results.map((r) => r.refused as number))).toBe(999);
    expect([...keys]).toEqual(['verifier_proxies[0].verifier.nonce_storage#max_entries=50000']);
    expect(tables.byteLength).toBe(64 + 32 * 50_000);
  });
});
