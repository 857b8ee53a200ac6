import {
  NonceStoreFullError,
  silentLogger,
  systemClock,
  type Clock,
  type ComponentContext,
  type Logger,
  type NonceStore,
  type UnixSeconds,
} from '@jwtproxy/core';
import { LRUCache } from 'lru-cache';
import { durationOption, positiveIntegerOption, rejectUnknownOptions } from './options.js';

/** Go's default purge interval for `local` (the Go README says 0; the Go code uses 1m). */
export const DEFAULT_PURGE_INTERVAL_MS = 60_000;
/** Default bound on the number of nonces kept: see the README for the memory it stands for. */
export const DEFAULT_MAX_ENTRIES = 1_000_000;
/** The shortest time a nonce is kept, also for a token that expires now or has expired. */
export const MIN_NONCE_TTL_MS = 1_000;
/**
 * When the store is full, the least time between two purges made to find room. A purge walks
 * every entry; without a pause a flood at capacity would spend the event loop purging.
 */
export const FULL_PURGE_SPACING_MS = 100;

export interface LocalNonceStoreOptions {
  /** How often expired nonces are removed from memory, ms; 0 or less: only when the store is full. Default 1 min. */
  purgeIntervalMs?: number;
  /** Most nonces kept at once; when all are unexpired, new tokens are refused. Default 1,000,000. */
  maxEntries?: number;
  /** Milliseconds since the epoch; injectable so tests can move time. */
  clock?: Clock;
  logger?: Logger;
}

/**
 * `nonce_storage: {type: local}`: the nonces of one process, in memory.
 *
 * Each jti is kept until its token's `exp` (at least MIN_NONCE_TTL_MS), so a token can never be
 * replayed while the verifier would still accept it. The store never evicts an unexpired nonce
 * to make room, as that would re-open the door to a replay: when it holds `maxEntries`
 * unexpired nonces, `claim` rejects with NonceStoreFullError (answered 503) until some expire.
 * Claims are atomic: the check and the insert happen in one synchronous step.
 */
export class LocalNonceStore implements NonceStore {
  readonly maxEntries: number;
  readonly purgeIntervalMs: number;
  readonly #clock: Clock;
  readonly #logger: Logger;
  /** jti → the second in which it expires (a small integer; the exact TTL is lru-cache's). */
  readonly #cache: LRUCache<string, number>;
  /**
   * How many stored nonces expire in each second. It tells, without walking the cache, whether
   * a purge can free anything: a purge walks every entry (~0.5 µs each), so one that frees
   * nothing is not run. At most max_ttl + skew distinct seconds are present.
   */
  readonly #expiringPerSecond = new Map<number, number>();
  readonly #timer: NodeJS.Timeout | undefined;
  #lastFullPurgeAt = -Infinity;
  #full = false;

  constructor(options: LocalNonceStoreOptions = {}) {
    this.maxEntries = options.maxEntries ?? DEFAULT_MAX_ENTRIES;
    if (!Number.isSafeInteger(this.maxEntries) || this.maxEntries < 1) throw new RangeError('maxEntries must be a whole number of 1 or more');
    this.purgeIntervalMs = options.purgeIntervalMs ?? DEFAULT_PURGE_INTERVAL_MS;
    this.#clock = options.clock ?? systemClock;
    this.#logger = options.logger ?? silentLogger;
    const clock = this.#clock;
    this.#cache = new LRUCache<string, number>({
      max: this.maxEntries,
      // Time comes from our clock, read afresh each time (ttlResolution 0: no cached "now").
      perf: { now: () => clock() },
      ttlResolution: 0,
      // Entries expire lazily and on purge; per-entry timers would cost a timer per nonce.
      ttlAutopurge: false,
      // Keeps the per-second counts exact whatever removes an entry (purge, delete).
      dispose: (second) => this.#forget(second),
    });
    if (this.purgeIntervalMs > 0) {
      this.#timer = setInterval(() => this.purge(), this.purgeIntervalMs);
      this.#timer.unref();
    }
  }

  /** Nonces held, counting expired ones not yet purged. */
  get size(): number {
    return this.#cache.size;
  }

  claim(jti: string, expiresAt: UnixSeconds): Promise<boolean> {
    try {
      return Promise.resolve(this.#claimNow(jti, expiresAt));
    } catch (error) {
      return Promise.reject(error);
    }
  }

  #claimNow(jti: string, expiresAt: UnixSeconds): boolean {
    // Fail closed: a NaN expiry would be stored without a TTL and never expire.
    if (!Number.isFinite(expiresAt)) throw new TypeError('expiresAt must be a finite number of seconds');
    if (this.#cache.has(jti)) return false;
    const now = this.#clock();
    if (this.#cache.size >= this.maxEntries && !this.#makeRoom(now)) {
      if (!this.#full) {
        this.#full = true;
        this.#logger.warn('nonce storage is full of unexpired nonces; refusing new tokens until some expire', { max_entries: this.maxEntries });
      }
      throw new NonceStoreFullError();
    }
    // A token expiring now (or already expired: the verifier should not ask) is kept for 1 s.
    const ttl = Math.max(Math.ceil(expiresAt * 1000 - now), MIN_NONCE_TTL_MS);
    const expiryMs = now + ttl;
    const second = Math.floor((now + ttl) / 1000);
    // An expired entry for this jti may still be stored: delete it first so its count goes.
    this.#cache.delete(jti);
    this.#cache.set(jti, second, { ttl, start: now });
    this.#expiringPerSecond.set(second, (this.#expiringPerSecond.get(second) ?? 0) + 1);
    return true;
  }

  #forget(second: number): void {
    const count = (this.#expiringPerSecond.get(second) ?? 0) - 1;
    if (count > 0) this.#expiringPerSecond.set(second, count);
    else this.#expiringPerSecond.delete(second);
  }

  /** Whether some stored nonce may have expired by `now` (ms). */
  #somethingExpired(now: number): boolean {
    for (const second of this.#expiringPerSecond.keys()) if (second * 1000 <= now) return true;
    return false;
  }

  #makeRoom(now: number): boolean {
    if (now - this.#lastFullPurgeAt < FULL_PURGE_SPACING_MS || !this.#somethingExpired(now)) return false;
    this.#lastFullPurgeAt = now;
    this.purge();
    return this.#cache.size < this.maxEntries;
  }

  /** Removes expired nonces now (the purge_interval timer calls this); returns how many were removed. */
  purge(): number {
    if (!this.#somethingExpired(this.#clock())) return 0;
    const before = this.#cache.size;
    this.#cache.purgeStale();
    const removed = before - this.#cache.size;
    if (this.#full && this.#cache.size < this.maxEntries) {
      this.#full = false;
      this.#logger.info('nonce storage has room again', { removed });
    }
    if (removed > 0) this.#logger.debug('expired nonces purged', { removed, kept: this.#cache.size });
    return removed;
  }

  /** Stops the purge timer. The nonces stay until the store is dropped. */
  stop(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    return Promise.resolve();
  }
}

/** The registry factory: options `purge_interval` (Go duration, default 1m, 0 disables) and `max_entries`. */
export function createLocalNonceStore(options: Record<string, unknown>, context: ComponentContext): LocalNonceStore {
  rejectUnknownOptions(options, ['purge_interval', 'max_entries']);
  return new LocalNonceStore({
    purgeIntervalMs: durationOption(options, 'purge_interval', DEFAULT_PURGE_INTERVAL_MS),
    maxEntries: positiveIntegerOption(options, 'max_entries', DEFAULT_MAX_ENTRIES),
    clock: context.clock,
    logger: context.logger,
  });
}
