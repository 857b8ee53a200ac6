import { randomFillSync } from 'node:crypto';
import { threadId } from 'node:worker_threads';
import { NonceStoreUnavailableError } from '@jwtproxy/core';

/**
 * What a claim answers: `claimed` (the jti was not held: it is now, until its expiry), `seen`
 * (an unexpired claim of it is held: a replay) or `full` (not held, and there is no room).
 */
export type NonceClaim = 'claimed' | 'seen' | 'full';

/** Bytes the table takes per nonce of `max_entries`: two 16-byte slots (it is never more than half full). */
export const SHARED_TABLE_BYTES_PER_ENTRY = 32;
/** Bytes before the slots: the lock, the bookkeeping and the fingerprint key (one cache line). */
export const SHARED_TABLE_HEADER_BYTES = 64;
/** Largest `max_entries` a shared table is made for (1 GiB of slots). */
export const SHARED_TABLE_MAX_ENTRIES = 2 ** 25;
/** Slots a purge slice looks at while holding the lock (measured: tens of microseconds). */
export const SHARED_PURGE_SLICE = 4_096;
/**
 * Longest a claim waits for the lock. It is held for well under a millisecond; a holder that is
 * gone (a worker terminated inside it) is released by the primary (`threadExited`). Past this
 * the claim fails closed (503) instead of blocking its event loop any longer.
 */
export const SHARED_LOCK_WAIT_LIMIT_MS = 1_000;
/** After a wait ran out, claims that find the same holder fail at once for this long (no second stall). */
const STALLED_FAIL_FAST_MS = 1_000;
/** Attempts to take a contended lock before sleeping in Atomics.wait. */
const SPINS = 64;
/** One Atomics.wait; the waiter then looks at the lock (and the time it has waited) again. */
const WAIT_SLICE_MS = 20;

// Header, in 32-bit words. Everything but LOCK is read and written only under the lock.
const LOCK = 0; // 0: free; otherwise the holder's threadId + 1, with CONTENDED set once a thread sleeps on it
const MAGIC = 2;
const VERSION = 3;
const MAX_ENTRIES = 4;
const CAPACITY = 5;
const COUNT = 6; // occupied slots: unexpired nonces and expired ones not yet purged
const CURSOR = 7; // the slot where the next purge slice starts
const SEED = 8; // 8..11: the key of the fingerprint, random per table
const MIN_EXP = 12; // no slot holds an expiry below this: when it is not past, nothing has expired
const CYCLE_ADVANCED = 13; // slots the purge has moved past in its current round of the table
const CYCLE_MIN = 14; // the least expiry met (or stored) in the current round
const ADVANCES = 15; // slots the purge has moved past since creation (wraps): 'has every slot been looked at since…'
const HEADER_WORDS = SHARED_TABLE_HEADER_BYTES / 4;
const MAGIC_VALUE = 0x4e4f4e43; // 'NONC'
const LAYOUT_VERSION = 1;
const WORDS_PER_SLOT = 4; // fingerprint (3 words), expiry
const NEVER = 0x7fffffff;
/**
 * Expiries are kept as whole seconds since this epoch (2020-01-01T00:00:00Z) in an Int32: they fit
 * until 2088, where Unix seconds in an Int32 stop in 2038. 0 marks an empty slot.
 */
const EPOCH_S = 1_577_836_800;

/**
 * In the lock word: some thread may be sleeping on it, so the holder wakes one when it lets go.
 * A flag rather than a count of sleepers, so that a sleeper terminated in its sleep leaves no
 * trace beyond one unneeded wake-up.
 */
const CONTENDED = 1 << 30;
const OWNER = threadId + 1;

/** The fingerprint of the jti being claimed: written by `fingerprintInto`, read at once (thread-local). */
const fingerprint = new Int32Array(3);
/**
 * What `fingerprint` holds now is of this jti under this key: tables that share a key (a local
 * store's generations, looked up one after the other for one claim) hash the jti once.
 */
let fingerprintedText: string | undefined;
let fingerprintedSeed: Int32Array | undefined;

/**
 * A 96-bit keyed fingerprint of `text` (its UTF-16 code units, two to a 32-bit word), in
 * `fingerprint`. The mixing is MurmurHash3's x86 128-bit one, with the 128-bit key as the four
 * lanes' starting values; three of the four output words are kept.
 */
function fingerprintInto(text: string, seed: Int32Array): void {
  if (text === fingerprintedText && seed === fingerprintedSeed) return;
  let h1 = seed[0]!;
  let h2 = seed[1]!;
  let h3 = seed[2]!;
  let h4 = seed[3]!;
  const length = text.length;
  const whole = length & ~7;
  let p = 0;
  for (; p < whole; p += 8) {
    let k1 = text.charCodeAt(p) | (text.charCodeAt(p + 1) << 16);
    let k2 = text.charCodeAt(p + 2) | (text.charCodeAt(p + 3) << 16);
    let k3 = text.charCodeAt(p + 4) | (text.charCodeAt(p + 5) << 16);
    let k4 = text.charCodeAt(p + 6) | (text.charCodeAt(p + 7) << 16);
    k1 = Math.imul(k1, 0x239b961b);
    k1 = (k1 << 15) | (k1 >>> 17);
    h1 ^= Math.imul(k1, 0xab0e9789);
    h1 = (h1 << 19) | (h1 >>> 13);
    h1 = (h1 + h2) | 0;
    h1 = (Math.imul(h1, 5) + 0x561ccd1b) | 0;
    k2 = Math.imul(k2, 0xab0e9789);
    k2 = (k2 << 16) | (k2 >>> 16);
    h2 ^= Math.imul(k2, 0x38b34ae5);
    h2 = (h2 << 17) | (h2 >>> 15);
    h2 = (h2 + h3) | 0;
    h2 = (Math.imul(h2, 5) + 0x0bcaa747) | 0;
    k3 = Math.imul(k3, 0x38b34ae5);
    k3 = (k3 << 17) | (k3 >>> 15);
    h3 ^= Math.imul(k3, 0xa1e38b93);
    h3 = (h3 << 15) | (h3 >>> 17);
    h3 = (h3 + h4) | 0;
    h3 = (Math.imul(h3, 5) + 0x96cd1c35) | 0;
    k4 = Math.imul(k4, 0xa1e38b93);
    k4 = (k4 << 18) | (k4 >>> 14);
    h4 ^= Math.imul(k4, 0x239b961b);
    h4 = (h4 << 13) | (h4 >>> 19);
    h4 = (h4 + h1) | 0;
    h4 = (Math.imul(h4, 5) + 0x32ac3b17) | 0;
  }
  if (p < length) {
    // The last 1-7 code units; the missing ones count as 0 (the length, mixed in below, tells them apart).
    const rest = length - p;
    let k1 = text.charCodeAt(p) | (rest > 1 ? text.charCodeAt(p + 1) << 16 : 0);
    let k2 = rest > 2 ? text.charCodeAt(p + 2) | (rest > 3 ? text.charCodeAt(p + 3) << 16 : 0) : 0;
    let k3 = rest > 4 ? text.charCodeAt(p + 4) | (rest > 5 ? text.charCodeAt(p + 5) << 16 : 0) : 0;
    let k4 = rest > 6 ? text.charCodeAt(p + 6) : 0;
    k4 = Math.imul(k4, 0xa1e38b93);
    k4 = (k4 << 18) | (k4 >>> 14);
    h4 ^= Math.imul(k4, 0x239b961b);
    k3 = Math.imul(k3, 0x38b34ae5);
    k3 = (k3 << 17) | (k3 >>> 15);
    h3 ^= Math.imul(k3, 0xa1e38b93);
    k2 = Math.imul(k2, 0xab0e9789);
    k2 = (k2 << 16) | (k2 >>> 16);
    h2 ^= Math.imul(k2, 0x38b34ae5);
    k1 = Math.imul(k1, 0x239b961b);
    k1 = (k1 << 15) | (k1 >>> 17);
    h1 ^= Math.imul(k1, 0xab0e9789);
  }
  h1 ^= length;
  h2 ^= length;
  h3 ^= length;
  h4 ^= length;
  h1 = (h1 + h2 + h3 + h4) | 0;
  h2 = (h2 + h1) | 0;
  h3 = (h3 + h1) | 0;
  h4 = (h4 + h1) | 0;
  h1 = finalMix(h1);
  h2 = finalMix(h2);
  h3 = finalMix(h3);
  h4 = finalMix(h4);
  h1 = (h1 + h2 + h3 + h4) | 0;
  fingerprint[0] = h1;
  fingerprint[1] = (h2 + h1) | 0;
  fingerprint[2] = (h3 + h1) | 0;
  fingerprintedText = text;
  fingerprintedSeed = seed;
}

function finalMix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}

/** Unix seconds → the table's expiry (seconds since EPOCH_S), within 1 ..= NEVER. */
function tableSeconds(unixSeconds: number): number {
  const relative = unixSeconds - EPOCH_S;
  return relative < 1 ? 1 : relative > NEVER ? NEVER : relative;
}

/**
 * The nonces of every worker thread of a process in one table on a SharedArrayBuffer, so that a
 * token is accepted once per process, not once per worker.
 *
 * - An open-addressing hash table with linear probing, sized at creation: 2 × `maxEntries` slots
 *   of 16 bytes (a 96-bit fingerprint of the jti and its expiry), so it is never more than half
 *   full and a probe looks at 1.5–2.5 slots on average. Memory: 32 bytes × `maxEntries` + 64.
 * - `claim` is one insert-if-absent under a short global lock (an Int32 taken with
 *   Atomics.compareExchange; a waiter spins briefly, then sleeps in Atomics.wait). The critical
 *   section is the probe and at most four stores; the fingerprint is computed before it.
 * - Bounded: at most `maxEntries` occupied slots. An unexpired nonce is never dropped to make
 *   room; `full` until some expire. Expired slots on a probe's way are reused in place, and a
 *   purge removes expired ones in slices (`purgeSlice`), never in one pass over the table.
 * - A fingerprint collision (two jtis with the same 96 bits) can only make the second look like a
 *   replay of the first: refused, never accepted, as the same jti always gives the same
 *   fingerprint. With the key random per table and 1M nonces held, a new jti collides with one of
 *   them with probability 1M / 2^96 ≈ 1.3e-23.
 *
 * Hand it to a worker as `table.buffer` (a SharedArrayBuffer is shared, not copied, by
 * postMessage and workerData) and open it there with `SharedNonceTable.attach(buffer)`.
 */
export class SharedNonceTable {
  /** The memory of the table: hand this to workers. */
  readonly buffer: SharedArrayBuffer;
  /** Most nonces held at once. */
  readonly maxEntries: number;
  /** Slots (2 × maxEntries). */
  readonly capacity: number;
  /** The header, for the lock (Atomics) and, under it, the bookkeeping. */
  readonly #header: Int32Array;
  readonly #slots: Int32Array;
  readonly #seed: Int32Array;
  /** A holder whose lock a wait gave up on, and until when claims that find it there fail at once. */
  #stalled: { owner: number; until: number } | undefined;

  private constructor(buffer: SharedArrayBuffer, sameKeyAs?: SharedNonceTable) {
    if (!(buffer instanceof SharedArrayBuffer) || buffer.byteLength < SHARED_TABLE_HEADER_BYTES) throw new TypeError('not a shared nonce table');
    const header = new Int32Array(buffer, 0, HEADER_WORDS);
    const maxEntries = header[MAX_ENTRIES]!;
    const capacity = header[CAPACITY]!;
    if (header[MAGIC] !== MAGIC_VALUE || header[VERSION] !== LAYOUT_VERSION || capacity !== 2 * maxEntries || buffer.byteLength !== SharedNonceTable.byteLengthFor(maxEntries)) {
      throw new TypeError('not a shared nonce table of this version');
    }
    this.buffer = buffer;
    this.maxEntries = maxEntries;
    this.capacity = capacity;
    this.#header = header;
    this.#slots = new Int32Array(buffer, SHARED_TABLE_HEADER_BYTES, capacity * WORDS_PER_SLOT);
    // The key never changes after creation: a private copy keeps the hot path off the shared line.
    // Tables made with one key share the copy, which is how the fingerprint cache knows them.
    this.#seed = sameKeyAs ? sameKeyAs.#seed : header.slice(SEED, SEED + 4);
  }

  /** Bytes of a table for `maxEntries` nonces. */
  static byteLengthFor(maxEntries: number): number {
    return SHARED_TABLE_HEADER_BYTES + SHARED_TABLE_BYTES_PER_ENTRY * maxEntries;
  }

  /**
   * A new, empty table (in the primary, before the workers start or when one asks). With
   * `sameKeyAs`, its fingerprints are keyed as that table's: a jti looked up in both is hashed once.
   */
  static create(maxEntries: number, sameKeyAs?: SharedNonceTable): SharedNonceTable {
    if (!Number.isSafeInteger(maxEntries) || maxEntries < 1 || maxEntries > SHARED_TABLE_MAX_ENTRIES) {
      throw new RangeError(`a shared nonce table holds 1 to ${SHARED_TABLE_MAX_ENTRIES} entries, not ${maxEntries}`);
    }
    const buffer = new SharedArrayBuffer(SharedNonceTable.byteLengthFor(maxEntries));
    const header = new Int32Array(buffer, 0, HEADER_WORDS);
    header[MAGIC] = MAGIC_VALUE;
    header[VERSION] = LAYOUT_VERSION;
    header[MAX_ENTRIES] = maxEntries;
    header[CAPACITY] = 2 * maxEntries;
    header[MIN_EXP] = NEVER;
    header[CYCLE_MIN] = NEVER;
    if (sameKeyAs) header.set(sameKeyAs.#seed, SEED);
    else randomFillSync(header.subarray(SEED, SEED + 4));
    return new SharedNonceTable(buffer, sameKeyAs);
  }

  /** The table whose memory is `buffer` (in a worker, from workerData or a message). */
  static attach(buffer: SharedArrayBuffer): SharedNonceTable {
    return new SharedNonceTable(buffer);
  }

  /** Occupied slots: nonces held, counting expired ones not yet purged. */
  get size(): number {
    return Atomics.load(this.#header, COUNT);
  }

  /** The thread holding the lock now (its worker_threads threadId), if any: for diagnostics. */
  lockHolder(): number | undefined {
    const word = Atomics.load(this.#header, LOCK);
    return word === 0 ? undefined : (word & ~CONTENDED) - 1;
  }

  /**
   * Claims `jti` until `expSeconds` (Unix seconds; kept while the second `nowSeconds` is not past
   * it, and at least until the next second), as one atomic insert-if-absent across all threads.
   * Throws NonceStoreUnavailableError when the lock stays held (a holder that is gone and not yet
   * released): fail closed.
   */
  claim(jti: string, expSeconds: number, nowSeconds: number): NonceClaim {
    if (!Number.isFinite(expSeconds) || !Number.isFinite(nowSeconds)) throw new TypeError('expSeconds and nowSeconds must be finite numbers of seconds');
    fingerprintInto(jti, this.#seed);
    const f0 = fingerprint[0]!;
    const f1 = fingerprint[1]!;
    const f2 = fingerprint[2]!;
    const now = tableSeconds(Math.floor(nowSeconds));
    const exp = Math.max(tableSeconds(Math.ceil(expSeconds)), now === NEVER ? NEVER : now + 1);
    this.#lock();
    try {
      return this.#claimLocked(f0, f1, f2, exp, now);
    } finally {
      this.#unlock();
    }
  }

  /**
   * Whether an unexpired claim of `jti` is held at `nowSeconds` (what `claim` would answer
   * `seen` to), without claiming it: a lookup under the lock.
   */
  holds(jti: string, nowSeconds: number): boolean {
    if (!Number.isFinite(nowSeconds)) throw new TypeError('nowSeconds must be a finite number of seconds');
    fingerprintInto(jti, this.#seed);
    const f0 = fingerprint[0]!;
    const f1 = fingerprint[1]!;
    const f2 = fingerprint[2]!;
    const now = tableSeconds(Math.floor(nowSeconds));
    const slots = this.#slots;
    const capacity = this.capacity;
    this.#lock();
    try {
      let i = (f0 & 0x7fffffff) % capacity;
      // The whole run, as in a claim: a live copy may sit behind an expired one.
      for (let probes = 0; probes < capacity; probes++) {
        const at = i * WORDS_PER_SLOT;
        const slotExp = slots[at + 3]!;
        if (slotExp === 0) return false;
        if (slotExp >= now && slots[at] === f0 && slots[at + 1] === f1 && slots[at + 2] === f2) return true;
        if (++i === capacity) i = 0;
      }
      return false;
    } finally {
      this.#unlock();
    }
  }

  #claimLocked(f0: number, f1: number, f2: number, exp: number, now: number): NonceClaim {
    const slots = this.#slots;
    const header = this.#header;
    const capacity = this.capacity;
    for (let attempt = 0; ; attempt++) {
      let i = (f0 & 0x7fffffff) % capacity;
      // The whole run up to an empty slot is read: a live copy of the fingerprint anywhere in it is
      // a replay, even behind an expired one (a holder that stopped mid-purge can leave both).
      let expiredMatch = -1;
      let expiredSlot = -1;
      let empty = -1;
      for (let probes = 0; probes < capacity; probes++) {
        const at = i * WORDS_PER_SLOT;
        const slotExp = slots[at + 3]!;
        if (slotExp === 0) {
          empty = at;
          break;
        }
        if (slots[at] === f0 && slots[at + 1] === f1 && slots[at + 2] === f2) {
          if (slotExp >= now) return 'seen';
          if (expiredMatch < 0) expiredMatch = at;
        } else if (expiredSlot < 0 && slotExp < now) expiredSlot = at;
        if (++i === capacity) i = 0;
      }
      if (expiredMatch >= 0) {
        slots[expiredMatch + 3] = exp;
        this.#noteExpiry(exp);
        return 'claimed';
      }
      // An expired slot on the way is reused: no room needed. The fingerprint first, the expiry
      // last, so that a holder stopped in between leaves an expired slot, never a half-written live one.
      const at = expiredSlot >= 0 ? expiredSlot : header[COUNT]! < this.maxEntries ? empty : -1;
      if (at >= 0) {
        slots[at] = f0;
        slots[at + 1] = f1;
        slots[at + 2] = f2;
        slots[at + 3] = exp;
        if (at === empty) header[COUNT] = header[COUNT]! + 1;
        this.#noteExpiry(exp);
        return 'claimed';
      }
      // Full. If something may have expired, one slice of purge, then probe again (slots moved).
      if (attempt > 0 || header[MIN_EXP]! >= now || this.#purgeLocked(now, SHARED_PURGE_SLICE) === 0) return 'full';
    }
  }

  #noteExpiry(exp: number): void {
    const header = this.#header;
    if (exp < header[MIN_EXP]!) header[MIN_EXP] = exp;
    if (exp < header[CYCLE_MIN]!) header[CYCLE_MIN] = exp;
  }

  /** Whether some held nonce may have expired by `nowSeconds`: when not, a purge has nothing to do. */
  mayHoldExpired(nowSeconds: number): boolean {
    return Atomics.load(this.#header, MIN_EXP) < tableSeconds(Math.floor(nowSeconds));
  }

  /**
   * Removes the expired nonces of the next `maxSlots` slots (a slice; the next call goes on where
   * this one stopped, round the table), under the lock; returns how many it removed.
   */
  purgeSlice(nowSeconds: number, maxSlots: number = SHARED_PURGE_SLICE): number {
    const now = tableSeconds(Math.floor(nowSeconds));
    this.#lock();
    try {
      return this.#header[MIN_EXP]! < now ? this.#purgeLocked(now, maxSlots) : 0;
    } finally {
      this.#unlock();
    }
  }

  /**
   * Slots the purge (of any thread) has moved past since the table was made, modulo 2^32: when it
   * has grown by `capacity` since a moment, every slot has been looked at since then.
   */
  purgeAdvances(): number {
    return Atomics.load(this.#header, ADVANCES) >>> 0;
  }

  /**
   * Removes every expired nonce now, slice after slice without yielding (a whole-table pass: for
   * tests and explicit calls, never the hot path); returns how many.
   */
  purge(nowSeconds: number): number {
    let removed = 0;
    const start = this.purgeAdvances();
    // One round removes them all; a second makes the table's bound on expiries exact again, so
    // that mayHoldExpired says false until one does expire.
    while (this.mayHoldExpired(nowSeconds) && ((this.purgeAdvances() - start) >>> 0) < 2 * this.capacity) {
      removed += this.purgeSlice(nowSeconds);
    }
    return removed;
  }

  /** A slice of purge under the lock: looks at `budget` slots from the cursor. */
  #purgeLocked(now: number, budget: number): number {
    const slots = this.#slots;
    const header = this.#header;
    const capacity = this.capacity;
    let i = header[CURSOR]!;
    let removed = 0;
    for (let visits = 0; visits < budget; visits++) {
      const slotExp = slots[i * WORDS_PER_SLOT + 3]!;
      if (slotExp !== 0) {
        if (slotExp < now) {
          this.#removeAt(i);
          removed++;
          // Slot i now holds what moved back into it (or nothing): look at it again.
          continue;
        }
        if (slotExp < header[CYCLE_MIN]!) header[CYCLE_MIN] = slotExp;
      }
      if (++i === capacity) i = 0;
      header[ADVANCES] = (header[ADVANCES]! + 1) | 0;
      if (++header[CYCLE_ADVANCED]! >= capacity) {
        // A whole round: every slot held now was met in it (or stored during it), so the least
        // expiry met is a bound for the table, and a full table stops searching until it passes.
        header[MIN_EXP] = header[CYCLE_MIN]!;
        header[CYCLE_MIN] = NEVER;
        header[CYCLE_ADVANCED] = 0;
      }
    }
    header[CURSOR] = i;
    return removed;
  }

  /**
   * Moves the nonces of the next `maxSlots` slots (from the purge cursor, round the table) into
   * `into`, a table made with this one's key (`create(n, this)`), and drops the expired ones: how
   * a local store replaces a table by a larger or smaller one a slice at a time, never in one
   * go. Returns how many it moved; it stops early when this table is empty or `into` is full
   * (what could not move stays here). For tables of one thread: `into` must not already hold an
   * unexpired claim of a jti held here (a store that looks this table up first never makes one).
   */
  moveSlice(into: SharedNonceTable, nowSeconds: number, maxSlots: number = SHARED_PURGE_SLICE): number {
    if (into.#seed !== this.#seed || into === this) throw new TypeError('moveSlice: the tables must be two, made with one key');
    const now = tableSeconds(Math.floor(nowSeconds));
    const slots = this.#slots;
    const header = this.#header;
    const capacity = this.capacity;
    this.#lock();
    try {
      into.#lock();
      try {
        let i = header[CURSOR]!;
        let moved = 0;
        for (let visits = 0; visits < maxSlots && header[COUNT]! > 0; visits++) {
          const at = i * WORDS_PER_SLOT;
          const slotExp = slots[at + 3]!;
          if (slotExp !== 0) {
            if (slotExp >= now) {
              if (into.#claimLocked(slots[at]!, slots[at + 1]!, slots[at + 2]!, slotExp, now) === 'full') break;
              moved++;
            }
            this.#removeAt(i);
            // Slot i now holds what moved back into it (or nothing): look at it again.
            continue;
          }
          if (++i === capacity) i = 0;
        }
        header[CURSOR] = i;
        return moved;
      } finally {
        into.#unlock();
      }
    } finally {
      this.#unlock();
    }
  }

  /**
   * Empties slot `hole` and moves back the entries after it that may be (linear probing's
   * deletion without tombstones), so that every entry stays reachable from its home slot. Each
   * entry is copied before the slot it came from is reused, and a slot is emptied only at the
   * end: a holder stopped anywhere in here leaves at worst a duplicate or an expired slot, never
   * an entry cut off from its home.
   */
  #removeAt(hole: number): void {
    const slots = this.#slots;
    const capacity = this.capacity;
    let j = hole;
    for (let probes = 0; probes < capacity; probes++) {
      if (++j === capacity) j = 0;
      const from = j * WORDS_PER_SLOT;
      const slotExp = slots[from + 3]!;
      if (slotExp === 0) break;
      const home = (slots[from]! & 0x7fffffff) % capacity;
      // The entry at j may move to the hole unless its home lies after the hole, up to j (cyclically).
      const stays = hole <= j ? home > hole && home <= j : home > hole || home <= j;
      if (stays) continue;
      const to = hole * WORDS_PER_SLOT;
      slots[to] = slots[from]!;
      slots[to + 1] = slots[from + 1]!;
      slots[to + 2] = slots[from + 2]!;
      slots[to + 3] = slotExp;
      hole = j;
    }
    slots[hole * WORDS_PER_SLOT + 3] = 0;
    this.#header[COUNT] = this.#header[COUNT]! - 1;
  }

  /**
   * Releases the lock if the thread `exitedThreadId` holds it: call it in the primary when a
   * worker exits (its 'exit' event), as a worker terminated inside a claim cannot let go
   * itself. The table stays consistent (see #removeAt and #claimLocked). Returns whether it held it.
   */
  threadExited(exitedThreadId: number): boolean {
    const owner = exitedThreadId + 1;
    if (owner === OWNER) return false; // this thread is running this code: it holds nothing
    const header = this.#header;
    for (;;) {
      const word = Atomics.load(header, LOCK);
      if ((word & ~CONTENDED) !== owner) return false;
      // A waiter may set CONTENDED meanwhile: then try again with the new word.
      if (Atomics.compareExchange(header, LOCK, word, 0) === word) break;
    }
    Atomics.notify(header, LOCK);
    return true;
  }

  #lock(): void {
    if (Atomics.compareExchange(this.#header, LOCK, 0, OWNER) !== 0) this.#lockContended();
  }

  #lockContended(): void {
    const header = this.#header;
    for (let spin = 0; spin < SPINS; spin++) {
      if (Atomics.load(header, LOCK) === 0 && Atomics.compareExchange(header, LOCK, 0, OWNER) === 0) return;
    }
    const started = performance.now();
    const stalled = this.#stalled;
    if (stalled && started < stalled.until && (Atomics.load(header, LOCK) & ~CONTENDED) === stalled.owner) throw lockStalled(stalled.owner, 0);
    for (;;) {
      let word = Atomics.load(header, LOCK);
      if (word === 0) {
        // Taken as contended: others may still be asleep, and the next unlock must wake one.
        if (Atomics.compareExchange(header, LOCK, 0, OWNER | CONTENDED) === 0) return;
        continue;
      }
      const holder = word & ~CONTENDED;
      // Code in this thread never claims inside a claim: the word names another thread.
      if (holder === OWNER) throw lockStalled(holder, 0);
      const waited = performance.now() - started;
      if (waited >= SHARED_LOCK_WAIT_LIMIT_MS) {
        this.#stalled = { owner: holder, until: performance.now() + STALLED_FAIL_FAST_MS };
        throw lockStalled(holder, waited);
      }
      if ((word & CONTENDED) === 0) {
        if (Atomics.compareExchange(header, LOCK, word, word | CONTENDED) !== word) continue;
        word |= CONTENDED;
      }
      // Bounded: a wake-up lost to a terminated thread costs at most one slice.
      Atomics.wait(header, LOCK, word, Math.min(WAIT_SLICE_MS, SHARED_LOCK_WAIT_LIMIT_MS - waited));
    }
  }

  #unlock(): void {
    const header = this.#header;
    const word = Atomics.compareExchange(header, LOCK, OWNER, 0);
    if (word === OWNER) return;
    // Someone sleeps on it (or did): let go and wake one.
    if (word === (OWNER | CONTENDED) && Atomics.compareExchange(header, LOCK, word, 0) === word) Atomics.notify(header, LOCK, 1);
  }
}

function lockStalled(owner: number, waitedMs: number): NonceStoreUnavailableError {
  return new NonceStoreUnavailableError({ cause: new Error('the shared nonce table stays locked') }).with({
    lock_holder_thread: owner - 1,
    waited_ms: Math.round(waitedMs),
  });
}

/**
 * In the primary: the shared nonce tables of one process, by name, each made when first asked
 * for. Answer a worker's `sharedState.nonceTable(key, maxEntries)` with `bufferFor(key,
 * maxEntries)`, and call `threadExited(worker.threadId)` on each worker's 'exit'.
 */
export class SharedNonceTables {
  readonly #tables = new Map<string, SharedNonceTable>();

  /** The buffer of the table named `key` for `maxEntries` nonces, made on the first call. */
  bufferFor(key: string, maxEntries: number): SharedArrayBuffer {
    const name = `${key}\u0000${maxEntries}`;
    let table = this.#tables.get(name);
    if (!table) {
      table = SharedNonceTable.create(maxEntries);
      this.#tables.set(name, table);
    }
    return table.buffer;
  }

  /** A worker exited: releases the lock of any table it held (it may have been terminated mid-claim). */
  threadExited(threadId: number): number {
    let released = 0;
    for (const table of this.#tables.values()) if (table.threadExited(threadId)) released++;
    return released;
  }

  /** Forgets every table but those named in `keys` (after a reload, the names the new configuration asked for). */
  retainOnly(keys: Iterable<string>): void {
    const kept = new Set(keys);
    for (const name of [...this.#tables.keys()]) if (!kept.has(name.slice(0, name.lastIndexOf('\u0000')))) this.#tables.delete(name);
  }

  /** Bytes held by all the tables. */
  get byteLength(): number {
    let bytes = 0;
    for (const table of this.#tables.values()) bytes += table.buffer.byteLength;
    return bytes;
  }
}
