import { systemClock, type Clock } from '@jwtproxy/core';
import { LRUCache } from 'lru-cache';

export interface LookupLimiterOptions {
  /** Lookups a second each bucket earns back. */
  rate: number;
  /** Most lookups a bucket holds, i.e. the largest burst. */
  burst: number;
  /** Most issuers with a bucket of their own (the least recently used lose theirs). */
  maxIssuers: number;
  clock?: Clock;
}

/** One token bucket. `tokens` as of `updatedAt` (ms). */
interface Bucket {
  tokens: number;
  updatedAt: number;
}

/** What a granted lookup was charged to, so that it can be given back. */
export type LookupCharge = Bucket;

/**
 * Limits registry lookups of keys the verifier does not know, per issuer, with token buckets.
 *
 * An issuer gets a bucket of its own only once the registry served one of its keys
 * (`markKnownIssuer`): anyone can write any `iss` in a token, so a bucket per claimed issuer
 * would hand a fresh burst to every made-up issuer. Issuers without a known key share one
 * bucket. So a flood of made-up issuers costs the registry one burst, a flood of made-up kids
 * under a real issuer costs that issuer's burst, and neither uses up another real issuer's.
 * The buckets of known issuers live in a bounded LRU map.
 */
export class LookupLimiter {
  readonly #rate: number;
  readonly #burst: number;
  readonly #clock: Clock;
  readonly #shared: Bucket;
  readonly #knownIssuers: LRUCache<string, Bucket>;

  constructor(options: LookupLimiterOptions) {
    if (!(options.rate > 0) || !Number.isFinite(options.rate)) throw new RangeError(`rate must be a positive number, got ${options.rate}`);
    if (!(options.burst >= 1)) throw new RangeError(`burst must be at least 1, got ${options.burst}`);
    this.#rate = options.rate;
    this.#burst = options.burst;
    this.#clock = options.clock ?? systemClock;
    this.#shared = this.#fullBucket();
    this.#knownIssuers = new LRUCache<string, Bucket>({ max: Math.max(1, options.maxIssuers) });
  }

  /** Takes one lookup from the issuer's bucket; undefined when it is empty (refuse without asking). */
  take(issuer: string): LookupCharge | undefined {
    const bucket = this.#knownIssuers.get(issuer) ?? this.#shared;
    this.#refill(bucket);
    if (bucket.tokens < 1) return undefined;
    bucket.tokens -= 1;
    return bucket;
  }

  /** Gives a lookup back (the registry served a key: finding real keys should not use up the limit). */
  giveBack(charge: LookupCharge): void {
    this.#refill(charge);
    charge.tokens = Math.min(this.#burst, charge.tokens + 1);
  }

  /** The registry served a key of `issuer`: from now on it has a bucket of its own. */
  markKnownIssuer(issuer: string): void {
    if (!this.#knownIssuers.has(issuer)) this.#knownIssuers.set(issuer, this.#fullBucket());
  }

  /** Does `issuer` have a bucket of its own? */
  isKnownIssuer(issuer: string): boolean {
    return this.#knownIssuers.has(issuer);
  }

  #fullBucket(): Bucket {
    return { tokens: this.#burst, updatedAt: this.#clock() };
  }

  #refill(bucket: Bucket): void {
    const now = this.#clock();
    const elapsed = now - bucket.updatedAt;
    if (elapsed > 0) bucket.tokens = Math.min(this.#burst, bucket.tokens + (elapsed / 1000) * this.#rate);
    bucket.updatedAt = now;
  }
}
