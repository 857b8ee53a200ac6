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
import { SharedNonceTable, SHARED_PURGE_SLICE } from './shared-table.js';

/** Go's default purge interval for `local` (the Go README says 0; the Go code uses 1m). */
export const DEFAULT_PURGE_INTERVAL_MS = 60_000;
/** Default bound on the number of nonces kept: see the README for the memory it stands for. */
export const DEFAULT_MAX_ENTRIES = 1_000_000;
/** The shortest time a nonce is kept, also for a token that expires now or has expired. */
export const MIN_NONCE_TTL_MS = 1_000;
/**
 * When the store is full and a search for expired nonces found none to remove, the least time
 * before the next search, so that a flood at capacity does not spend the event loop searching.
 */
export const FULL_PURGE_SPACING_MS = 100;
/**
 * Most entries a purge looks at before it yields to the event loop. A purge of a busy store
 * removes a whole interval's nonces (200,000 a minute at 3,300 requests/s); done in one go that
 * stalled every request for about half a second. The purge_interval timer works in slices of
 * this size, and a full store frees one slice's worth of room at a time.
 */
export const PURGE_SLICE = 2_000;

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
 * Each jti is kept until its token's `exp` (at least MIN_NONCE_TTL_MS), so a token can never be
 * replayed while the verifier would still accept it. The store never evicts an unexpired nonce
 * to make room, as that would re-open the door to a replay: when it holds `maxEntries`
 * unexpired nonces, `claim` rejects with NonceStoreFullError (answered 503) until some expire.
 * Claims are atomic: the check and the insert happen in one synchronous step.
 *
 * Given a SharedNonceTable (worker threads), the nonces live there instead: one table for every
 * worker of the process, claimed under its lock, kept in whole seconds (until the second after
 * `exp` begins), purged in slices by each worker's timer.
 */
export class LocalNonceStore implements NonceStore {
  readonly maxEntries: number;
  readonly purgeIntervalMs: number;
  readonly #clock: Clock;
  readonly #logger: Logger;
  /**
   * jti → when it expires (ms). Unused with a shared table. A Map grows with the nonces held, where
   * a cache sized by `max_entries` would take its whole size up front (28 MB for the default
   * 1,000,000, in every idle sidecar).
   */
  readonly #cache = new Map<string, number>();
  /** The nonces of every worker of the process, when this store was given one. */
  readonly #table: SharedNonceTable | undefined;
  /**
   * The jtis stored for each second in which they expire, so that a purge visits only the
   * nonces that may have expired (never the whole store). At most max_ttl + max_skew seconds
   * are present. A jti claimed again after it expired is also in its old second's list; the
   * purge drops that stale mention without touching the new entry.
   */
  readonly #expiringIn = new Map<number, string[]>();
  readonly #timer: NodeJS.Timeout | undefined;
  #lastFruitlessSearchAt = -Infinity;
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
    return this.#table ? this.#table.size : this.#cache.size;
  }

  claim(jti: string, expiresAt: UnixSeconds): Promise<boolean> {
    try {
      return Promise.resolve(this.#table ? this.#claimShared(this.#table, jti, expiresAt) : this.#claimNow(jti, expiresAt));
    } catch (error) {
      return Promise.reject(error);
    }
  }

  #claimShared(table: SharedNonceTable, jti: string, expiresAt: UnixSeconds): boolean {
    // Fail closed: a NaN expiry would be stored without a TTL and never expire.
    if (!Number.isFinite(expiresAt)) throw new TypeError('expiresAt must be a finite number of seconds');
    const answer = table.claim(jti, expiresAt, Math.floor(this.#clock() / 1000));
    if (answer === 'full') {
      this.#refusedFull();
      throw new NonceStoreFullError();
    }
    if (answer === 'claimed' && this.#full) {
      this.#full = false;
      this.#logger.info('nonce storage has room again', { removed: 0 });
    }
    return answer === 'claimed';
  }

  #refusedFull(): void {
    if (!this.#full) {
      this.#full = true;
      this.#logger.warn('nonce storage is full of unexpired nonces; refusing new tokens until some expire', { max_entries: this.maxEntries });
    }
  }

  #claimNow(jti: string, expiresAt: UnixSeconds): boolean {
    // Fail closed: a NaN expiry would be stored without a TTL and never expire.
    if (!Number.isFinite(expiresAt)) throw new TypeError('expiresAt must be a finite number of seconds');
    const now = this.#clock();
    const held = this.#cache.get(jti);
    // Held through its last millisecond, as the verifier accepts a token at exactly its exp.
    if (held !== undefined && held >= now) return false;
    if (this.#cache.size >= this.maxEntries && !this.#makeRoom(now)) {
      this.#refusedFull();
      throw new NonceStoreFullError();
    }
    // A token expiring now (or already expired: the verifier should not ask) is kept for 1 s.
    const ttl = Math.max(Math.ceil(expiresAt * 1000 - now), MIN_NONCE_TTL_MS);
    const expiryMs = now + ttl;
    const second = Math.floor((now + ttl) / 1000);
    // An expired entry for this jti may still be stored: delete it first so its count goes.
    this.#cache.delete(jti);
    this.#cache.set(jti, expiryMs);
    const expiring = this.#expiringIn.get(second);
    if (expiring) expiring.push(jti);
    else this.#expiringIn.set(second, [jti]);
    return true;
  }

  /** Whether some stored nonce may have expired by `now` (ms): one whose second has begun. */
  #somethingExpired(now: number): boolean {
    for (const second of this.#expiringIn.keys()) if (second * 1000 < now) return true;
    return false;
  }

  /** A full store removes one slice of expired nonces: room for the next claims, never a long stall. */
  #makeRoom(now: number): boolean {
    if (now - this.#lastFruitlessSearchAt < FULL_PURGE_SPACING_MS || !this.#somethingExpired(now)) return false;
    // Whole past seconds first: all their nonces have expired, so the slice is all room gained.
    let { removed } = this.#purgeExpired(now - 999, PURGE_SLICE);
    if (removed === 0) ({ removed } = this.#purgeExpired(now, PURGE_SLICE));
    if (removed === 0) this.#lastFruitlessSearchAt = now;
    this.#purged(removed);
    return this.#cache.size < this.maxEntries;
  }

  /**
   * Removes the expired nonces of the seconds that began before `since` (ms), looking at `budget`
   * entries at most; returns how many were removed and whether the budget ran out first.
   */
  #purgeExpired(since: number, budget: number): { removed: number; more: boolean } {
    const now = this.#clock();
    let removed = 0;
    let visited = 0;
    for (const [second, jtis] of this.#expiringIn) {
      if (second * 1000 >= since) continue;
      // Entries of this second expire within it: keep those whose exact expiry is still ahead.
      const kept: string[] = [];
      let i = 0;
      for (; i < jtis.length && visited < budget; i++, visited++) {
        const jti = jtis[i]!;
        // A jti claimed again since is listed under its new second: only that mention counts.
        const expiry = this.#cache.get(jti);
        if (expiry === undefined || Math.floor(expiry / 1000) !== second) continue;
        if (expiry < now) {
          this.#cache.delete(jti);
          removed++;
        } else kept.push(jti);
      }
      const rest = kept.concat(jtis.slice(i));
      if (rest.length > 0) this.#expiringIn.set(second, rest);
      else this.#expiringIn.delete(second);
      if (visited >= budget) return { removed, more: true };
    }
    return { removed, more: false };
  }

  /** Removes expired nonces now, in one go; returns how many were removed. */
  purge(): number {
    if (this.#table) {
      const removed = this.#table.purge(Math.floor(this.#clock() / 1000));
      this.#purged(removed);
      return removed;
    }
    const now = this.#clock();
    if (!this.#somethingExpired(now)) return 0;
    const { removed } = this.#purgeExpired(now, Infinity);
    this.#purged(removed);
    return removed;
  }

  /** The purge_interval timer's purge: slices of PURGE_SLICE entries, yielding between them. */
  #purgeInSlices(): void {
    if (this.#purging) return;
    if (this.#table) {
      this.#purgeSharedInSlices(this.#table);
      return;
    }
    this.#purging = true;
    let removed = 0;
    const slice = (): void => {
      // Whole past seconds only: every entry visited is then expired and removed, so each slice
      // moves on (the current second's unexpired entries would be visited again and again).
      const result = this.#purgeExpired(this.#clock() - 999, PURGE_SLICE);
      removed += result.removed;
      if (result.more) {
        setImmediate(slice);
        return;
      }
      this.#purging = false;
      this.#purged(removed);
    };
    slice();
  }

  /**
   * The timer's purge of a shared table: one round of it in slices, each under the table's lock
   * for tens of microseconds, yielding between them. Every worker's timer does this; the table's
   * cursor is shared, so they divide the work, and a table with nothing expired is not visited.
   */
  #purgeSharedInSlices(table: SharedNonceTable): void {
    this.#purging = true;
    let removed = 0;
    const start = table.purgeAdvances();
    const slice = (): void => {
      const nowSeconds = Math.floor(this.#clock() / 1000);
      // Until every slot has been looked at since this purge began (by this worker or another).
      if (this.#stopped || ((table.purgeAdvances() - start) >>> 0) >= table.capacity || !table.mayHoldExpired(nowSeconds)) {
        this.#purging = false;
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
