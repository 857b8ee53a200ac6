import { systemClock, type Clock, type KeyCacheComponent } from '@jwtproxy/core';
import { LRUCache } from 'lru-cache';

export interface MemoryKeyCacheOptions {
  /** Most entries kept; the least recently used goes first. */
  maxEntries: number;
  /** How often expired entries are dropped, in ms; 0: only when met or pushed out. */
  purgeInterval: number;
  clock?: Clock;
}

/**
 * The in-memory key cache (`cache.type: memory`, the default): bounded by entry count so that a
 * flood of made-up key IDs cannot grow it without limit, each entry with its own lifetime.
 * Values are live objects (KeyObjects), so this is a per-process cache.
 */
export class MemoryKeyCache implements KeyCacheComponent {
  readonly #entries: LRUCache<string, { value: unknown }>;
  readonly #purgeTimer: NodeJS.Timeout | undefined;

  constructor(options: MemoryKeyCacheOptions) {
    const clock = options.clock ?? systemClock;
    this.#entries = new LRUCache<string, { value: unknown }>({
      max: Math.max(1, options.maxEntries),
      // Time comes from the injected clock (so tests can move it); ttlResolution 0 reads it on every check.
      perf: { now: clock },
      ttlResolution: 0,
    });
    if (options.purgeInterval > 0) {
      this.#purgeTimer = setInterval(() => this.purge(), options.purgeInterval);
      // The purge must never keep the process alive.
      this.#purgeTimer.unref();
    }
  }

  get(key: string): unknown {
    return this.#entries.get(key)?.value;
  }

  /** Keeps `value` for `ttlMs`; a lifetime of 0 or less removes the entry instead. */
  set(key: string, value: unknown, ttlMs: number): void {
    if (!(ttlMs > 0)) {
      this.#entries.delete(key);
      return;
    }
    this.#entries.set(key, { value }, { ttl: ttlMs });
  }

  delete(key: string): void {
    this.#entries.delete(key);
  }

  /** Drops every expired entry now. */
  purge(): void {
    this.#entries.purgeStale();
  }

  get size(): number {
    return this.#entries.size;
  }

  async stop(): Promise<void> {
    if (this.#purgeTimer) clearInterval(this.#purgeTimer);
    this.#entries.clear();
  }
}
