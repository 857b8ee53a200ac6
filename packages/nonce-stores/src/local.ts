import {
  NonceStoreFullError,
  defineComponent,
  schema as s,
  silentLogger,
  systemClock,
  type Clock,
  type Logger,
  type NonceStore,
  type UnixSeconds,
} from '@jwtproxy/core';
import { SharedNonceTable, SHARED_PURGE_SLICE, SHARED_TABLE_MAX_ENTRIES, type NonceClaim } from './shared-table.js';

/** Go's default purge interval for `local` (the Go README says 0; the Go code uses 1m). */
export const DEFAULT_PURGE_INTERVAL_MS = 60_000;
/** Default bound on the number of nonces kept: see the README for the memory it stands for. */
export const DEFAULT_MAX_ENTRIES = 1_000_000;
/**
 * The shortest time a nonce is kept, also for a token that expires now or has expired: it is
 * kept until the second after the current one is over (1 to 2 s).
 */
export const MIN_NONCE_TTL_MS = 1_000;
/**
 * Entries of a store's first table (512 KiB), made at its first claim. Each growth replaces the
 * table by one twice its size (at most `maxEntries`).
 */
export const LOCAL_FIRST_TABLE_ENTRIES = 16_384;
/**
 * A table being replaced moves to its successor in slices of this many slots, between turns of
 * the event loop, while claims also move a few slots each.
 */
const MOVE_SLICE = SHARED_PURGE_SLICE;

export interface LocalNonceStoreOptions {
  /** How often expired nonces are removed from memory, ms; 0 or less: only when the store is full. Default 1 min. */
  purgeIntervalMs?: number;
  /** Most nonces kept at once; when all are unexpired, new tokens are refused. Default 1,000,000. */
  maxEntries?: number;
  /** Milliseconds since the epoch; injectable so tests can move time. */
  clock?: Clock;
  logger?: Logger;
  /**
   * Keep the nonces in this table, shared with the other worker threads of the process, instead
   * of in this store's own memory; `maxEntries` is then the table's.
   */
  sharedTable?: SharedNonceTable;
}

/**
 * `nonce_storage: {type: local}`: the nonces of one process, in memory.
 *
 * Each jti is kept until its token's `exp` in whole seconds: until the second after `exp` begins
 * (and at least until the next second is over), so a token can never be replayed while the
 * verifier would still accept it. The store never evicts an unexpired nonce to make room, as that
 * would re-open the door to a replay: when it holds `maxEntries` unexpired nonces, `claim`
 * rejects with NonceStoreFullError (answered 503) until some expire. Claims are atomic: the
 * check and the insert happen in one synchronous step.
 *
 * The nonces live in SharedNonceTables (open addressing on an Int32Array, a 16-byte slot of
 * fingerprint and expiry second per nonce, at most half full), not in a Map of jti strings:
 * - Memory: 32 bytes per entry of the table, where a Map took ~120-130 bytes of heap per nonce (the
 *   jti string, the entry, a HeapNumber for the expiry, a list slot): 1,000,000 nonces were
 *   ~115 MiB of heap and ~160 MiB of RSS, enough to have a 128 MiB sidecar OOM-killed by a flood
 *   of valid tokens before the store said full. Never more than `maxEntries` entries (32 MB for
 *   the default), plus the table being replaced during a growth.
 * - GC: nothing per nonce is on the heap, so there is nothing for the scavenger to promote and
 *   nothing for a full GC to mark; every nonce of the Map was promoted to old space.
 * - No rehash stall. The first table holds LOCAL_FIRST_TABLE_ENTRIES; when it is full, a table
 *   twice as large (at most `maxEntries`) takes the new nonces, and the old one's move into it a
 *   slice at a time: a few slots with each claim (enough that the move is over long before the
 *   new table could fill) and MOVE_SLICE slots between turns of the event loop. Meanwhile a claim
 *   looks the jti up in the old table too (one fingerprint: the tables share a key). A Map
 *   instead rehashed its whole table at each doubling, in one go: 70-75 ms at 524,288 entries.
 *   When the table is at most an eighth full after a purge (traffic fell), a smaller one takes
 *   over the same way, so memory follows the nonces down as well as up.
 *
 * Given a SharedNonceTable (worker threads), the nonces live there instead: one table for every
 * worker of the process, sized `maxEntries` at creation, claimed under its lock, purged in slices
 * by each worker's timer.
 */
export class LocalNonceStore implements NonceStore {
  readonly maxEntries: number;
  readonly purgeIntervalMs: number;
  readonly #clock: Clock;
  readonly #logger: Logger;
  /** The nonces of every worker of the process, when this store was given one. */
  readonly #table: SharedNonceTable | undefined;
  /** Without a shared table: the table that takes new nonces; none until the first claim. */
  #newest: SharedNonceTable | undefined;
  /** The table #newest replaces, while its nonces move there. */
  #older: SharedNonceTable | undefined;
  /** Slots of #older that each claim moves: enough to empty it before #newest could fill. */
  #slotsPerClaim = 0;
  /** A move in slices between turns of the event loop is under way. */
  #moving = false;
  readonly #timer: NodeJS.Timeout | undefined;
  #full = false;
  /** A timer purge still working through its slices. */
  #purging = false;
  #stopped = false;

  constructor(options: LocalNonceStoreOptions = {}) {
    this.#table = options.sharedTable;
    this.maxEntries = this.#table?.maxEntries ?? options.maxEntries ?? DEFAULT_MAX_ENTRIES;
    if (!Number.isSafeInteger(this.maxEntries) || this.maxEntries < 1) throw new RangeError('maxEntries must be a whole number of 1 or more');
    this.purgeIntervalMs = options.purgeIntervalMs ?? DEFAULT_PURGE_INTERVAL_MS;
    this.#clock = options.clock ?? systemClock;
    this.#logger = options.logger ?? silentLogger;
    if (this.purgeIntervalMs > 0) {
      this.#timer = setInterval(() => this.#purgeInSlices(), this.purgeIntervalMs);
      this.#timer.unref();
    }
  }

  /** Nonces held, counting expired ones not yet purged. */
  get size(): number {
    if (this.#table) return this.#table.size;
    return (this.#newest?.size ?? 0) + (this.#older?.size ?? 0);
  }

  /** Bytes of the tables that hold the nonces (the shared table's, with one). */
  get byteLength(): number {
    if (this.#table) return this.#table.buffer.byteLength;
    return (this.#newest?.buffer.byteLength ?? 0) + (this.#older?.buffer.byteLength ?? 0);
  }

  claim(jti: string, expiresAt: UnixSeconds): Promise<boolean> {
    try {
      // Fail closed: a NaN expiry would be stored without a TTL and never expire.
      if (!Number.isFinite(expiresAt)) throw new TypeError('expiresAt must be a finite number of seconds');
      const nowSeconds = Math.floor(this.#clock() / 1000);
      return Promise.resolve(this.#answered(this.#table ? this.#table.claim(jti, expiresAt, nowSeconds) : this.#claimOwn(jti, expiresAt, nowSeconds)));
    } catch (error) {
      return Promise.reject(error);
    }
  }

  #answered(answer: NonceClaim): boolean {
    if (answer === 'full') {
      if (!this.#full) {
        this.#full = true;
        this.#logger.warn('nonce storage is full of unexpired nonces; refusing new tokens until some expire', { max_entries: this.maxEntries });
      }
      throw new NonceStoreFullError();
    }
    if (answer === 'claimed' && this.#full) {
      this.#full = false;
      this.#logger.info('nonce storage has room again', { removed: 0 });
    }
    return answer === 'claimed';
  }

  /** A claim in this store's own tables, in one synchronous step. */
  #claimOwn(jti: string, expiresAt: number, nowSeconds: number): NonceClaim {
    const newest = this.#newest ?? this.#replaceNewest(Math.min(LOCAL_FIRST_TABLE_ENTRIES, this.maxEntries, SHARED_TABLE_MAX_ENTRIES));
    const older = this.#older;
    if (older) {
      if (older.holds(jti, nowSeconds)) return 'seen';
      older.moveSlice(newest, nowSeconds, this.#slotsPerClaim);
      if (older.size === 0) this.#dropOlder();
      else if (older.size + newest.size >= this.maxEntries) {
        // Both tables together may hold more than maxEntries while the move is under way: a new
        // jti goes in only if expired nonces make room.
        if (newest.holds(jti, nowSeconds)) return 'seen';
        if (newest.mayHoldExpired(nowSeconds)) newest.purgeSlice(nowSeconds);
        if (older.size + newest.size >= this.maxEntries) return 'full';
      }
    }
    const answer = newest.claim(jti, expiresAt, nowSeconds);
    if (answer !== 'full' || this.#older) return answer;
    // Full (after one slice of purge): a table twice as large, if maxEntries leaves room for it.
    const entries = Math.min(2 * newest.maxEntries, this.maxEntries, SHARED_TABLE_MAX_ENTRIES);
    if (entries <= newest.maxEntries) return 'full';
    return this.#replaceNewest(entries).claim(jti, expiresAt, nowSeconds);
  }

  /**
   * A new, empty table of `entries` takes the new nonces; the current one (if any) moves into it
   * in slices. An allocation of zeroed memory: nothing is moved now.
   */
  #replaceNewest(entries: number): SharedNonceTable {
    const current = this.#newest;
    const table = SharedNonceTable.create(entries, current);
    this.#newest = table;
    if (current) {
      this.#older = current;
      // Empty within entries/4 claims: emptying it takes at most 1.5 × capacity slot visits (each
      // slot, plus a second look at each slot a nonce left), and 8 × capacity / entries per claim
      // covers that with room to spare. By then the new table holds at most what moved (at most
      // current.maxEntries <= entries / 2 on a growth, an eighth of it on a shrink) plus those claims.
      this.#slotsPerClaim = Math.ceil((8 * current.capacity) / entries);
      this.#moveInSlices();
    }
    this.#logger.debug('nonce table replaced', { entries, previous_entries: current?.maxEntries ?? 0, moving: current?.size ?? 0 });
    return table;
  }

  #dropOlder(): void {
    this.#older = undefined;
    this.#slotsPerClaim = 0;
  }

  /** Moves #older into #newest a slice per turn of the event loop, until it is empty or nothing moves. */
  #moveInSlices(): void {
    if (this.#moving) return;
    this.#moving = true;
    const slice = (): void => {
      const older = this.#older;
      const newest = this.#newest;
      if (!older || !newest || this.#stopped) {
        this.#moving = false;
        return;
      }
      const before = older.size;
      older.moveSlice(newest, Math.floor(this.#clock() / 1000), MOVE_SLICE);
      if (older.size === 0) this.#dropOlder();
      // The new table is full (only when maxEntries caps it): claims and the purge timer go on later.
      else if (older.size < before) {
        setImmediate(slice);
        return;
      }
      this.#moving = false;
    };
    setImmediate(slice);
  }

  /**
   * After a purge: when the table is large and at most an eighth full, a smaller one (room for
   * four times the nonces held, at least LOCAL_FIRST_TABLE_ENTRIES) takes over; an empty one is
   * dropped (the next claim makes a first table).
   */
  #shrinkIfIdle(): void {
    const only = this.#newest;
    if (!only || this.#older || only.maxEntries <= LOCAL_FIRST_TABLE_ENTRIES || only.size * 8 > only.maxEntries) return;
    if (only.size === 0) {
      this.#newest = undefined;
      this.#logger.debug('nonce table dropped', { entries: only.maxEntries });
      return;
    }
    let entries = LOCAL_FIRST_TABLE_ENTRIES;
    while (entries < 4 * only.size) entries *= 2;
    this.#replaceNewest(Math.min(entries, Math.floor(only.maxEntries / 2)));
  }

  /** Removes expired nonces now, in one go (and ends a table's move); returns how many were removed. */
  purge(): number {
    const nowSeconds = Math.floor(this.#clock() / 1000);
    let removed = 0;
    if (this.#table) removed = this.#table.purge(nowSeconds);
    else if (this.#newest) {
      const before = this.size;
      this.#newest.purge(nowSeconds);
      const older = this.#older;
      if (older) {
        // Until it is empty, or a slice changes nothing (the new table is full: only when maxEntries caps it).
        for (let left = -1; older.size > 0 && older.size !== left; ) {
          left = older.size;
          older.moveSlice(this.#newest, nowSeconds, older.capacity);
        }
        if (older.size === 0) this.#dropOlder();
      }
      removed = before - this.size;
      this.#shrinkIfIdle();
    }
    this.#purged(removed);
    return removed;
  }

  /**
   * The purge_interval timer's purge: one round of the table in slices (SHARED_PURGE_SLICE
   * slots, tens of microseconds), yielding to the event loop between them. A shared table's
   * cursor is shared, so every worker's timer divides the work; a table with nothing expired is
   * not visited. A table being replaced is not purged but moved (its expired nonces are dropped).
   */
  #purgeInSlices(): void {
    if (this.#purging) return;
    if (this.#older) this.#moveInSlices();
    const table = this.#table ?? this.#newest;
    if (!table) return;
    this.#purging = true;
    let removed = 0;
    const start = table.purgeAdvances();
    const slice = (): void => {
      const nowSeconds = Math.floor(this.#clock() / 1000);
      // Until every slot has been looked at since this round began (by this worker or another).
      if (this.#stopped || ((table.purgeAdvances() - start) >>> 0) >= table.capacity || !table.mayHoldExpired(nowSeconds)) {
        this.#purging = false;
        if (!this.#table && !this.#stopped && table === this.#newest) this.#shrinkIfIdle();
        this.#purged(removed);
        return;
      }
      removed += table.purgeSlice(nowSeconds, SHARED_PURGE_SLICE);
      setImmediate(slice);
    };
    slice();
  }

  #purged(removed: number): void {
    if (this.#full && this.size < this.maxEntries) {
      this.#full = false;
      this.#logger.info('nonce storage has room again', { removed });
    }
    if (removed > 0) this.#logger.debug('expired nonces purged', { removed, kept: this.size });
  }

  /**
   * Always answers: the store is this process's memory (the readiness probe). A full store refuses
   * claims (503) yet stays ready: its room comes back as nonces expire, on every replica alike.
   */
  ping(): Promise<void> {
    return Promise.resolve();
  }

  /** Stops the purge timer. The nonces stay until the store is dropped. */
  stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearInterval(this.#timer);
    return Promise.resolve();
  }
}

/** `nonce_storage: {type: local, options: {purge_interval, max_entries}}`, the Go default. */
export const localNonceStore = defineComponent({
  type: 'local',
  description: 'The nonces of this process, in memory (the default). Replicas need a shared store such as `redis`.',
  options: s.strictObject({
    purge_interval: s.optional(
      s.pipe(s.duration('any'), s.description('How often expired nonces leave memory; 0 or negative (as in Go): only when the store is full.')),
      '1m',
    ),
    max_entries: s.optional(
      s.pipe(s.number(), s.integer(), s.minValue(1), s.description('Most nonces kept; when all are unexpired, tokens are refused (503) rather than one forgotten.')),
      DEFAULT_MAX_ENTRIES,
    ),
  }),
  create: async (options, context): Promise<LocalNonceStore> => {
    // Worker threads: one table for the whole process, named by where the store is configured.
    const buffer = await context.sharedState?.nonceTable(sharedNonceTableKey(context.path, options.max_entries), options.max_entries);
    const sharedTable = buffer ? SharedNonceTable.attach(buffer) : undefined;
    if (sharedTable && sharedTable.maxEntries !== options.max_entries) {
      throw new RangeError(`the shared nonce table handed over holds ${sharedTable.maxEntries} entries, not max_entries ${options.max_entries}`);
    }
    return new LocalNonceStore({
      purgeIntervalMs: options.purge_interval,
      maxEntries: options.max_entries,
      clock: context.clock,
      logger: context.logger,
      ...(sharedTable ? { sharedTable } : {}),
    });
  },
});

/**
 * The name a `local` store asks `sharedState.nonceTable` for: its key path in the configuration
 * and its `max_entries`, so that every worker's store of one verifier gets the same table, a
 * reload that keeps both keeps the nonces, and a changed `max_entries` gets a new table.
 */
export function sharedNonceTableKey(path: string | undefined, maxEntries: number): string {
  return `${path ?? 'nonce_storage'}#max_entries=${maxEntries}`;
}
