import { createPublicKey, type JsonWebKey } from 'node:crypto';
import {
  KeyExpiredError,
  KeyNotFoundError,
  KeyServerUnavailableError,
  silentLogger,
  systemClock,
  verificationKeyFrom,
  type Clock,
  type KeyCacheComponent,
  type Logger,
  type PublicKeyResolver,
  type VerificationKey,
} from '@jwtproxy/core';
import { LRUCache } from 'lru-cache';
import { MemoryKeyCache } from './cache.js';
import { keyRegistryDefaults } from './config.js';
import { RegistryEndpoint } from './endpoint.js';
import { UnknownKeyLookupsLimitedError } from './errors.js';
import { LookupLimiter, type LookupCharge } from './lookup-limiter.js';

export interface KeyRegistryClientOptions {
  /** Base URL of the registry; its path is kept (`https://quay.example/keys/`). */
  registry: string | URL;
  /** Longest time a key is kept, in ms, whatever the registry's max-age says (default 10m; 0: no caching). */
  cacheDuration?: number;
  /** How often expired keys are dropped from memory, in ms (default 1m). */
  purgeInterval?: number;
  /** Whole-request timeout, in ms (default 5s). */
  timeout?: number;
  /** Most keys kept in memory (default 10,000). */
  maxCachedKeys?: number;
  /** How long a 404, 409 or 403 answer is remembered, in ms (default 2s; capped by cacheDuration; 0: not at all). */
  notFoundCacheDuration?: number;
  /** Most 404/409/403 answers remembered (default 10,000), apart from keys: they never push a key out. */
  maxCachedNotFound?: number;
  /** Lookups a second of keys not in the cache, per issuer (default 10); beyond it KeyNotFoundError without asking. */
  unknownKidRate?: number;
  /** Largest burst of such lookups per issuer (default 100). */
  unknownKidBurst?: number;
  /** Most issuers with a lookup limit of their own (default 1,000); see LookupLimiter. */
  maxTrackedIssuers?: number;
  /** A failing (issuer, kid) is logged at most once per this many ms (default 1m). */
  failureLogInterval?: number;
  /** A cache built elsewhere (a `cache.type` plugin); by default a MemoryKeyCache. */
  cache?: KeyCacheComponent;
  /** Most sockets kept open to the registry (default 32). */
  connections?: number;
  logger?: Logger;
  clock?: Clock;
  /** Told of cache hits, limited lookups and registry fetches (metrics); see also `observe`. */
  observer?: KeyRegistryObserver;
}

/** How a registry GET ended: a key, a "no usable key" answer, or a failure (`unavailable`: 5xx or any other status; `error`: no answer). */
export type KeyFetchOutcome = 'key' | 'not_found' | 'expired' | 'pending' | 'unusable' | 'unavailable' | 'error';

/** What a KeyRegistryClient tells its observer (metrics). Called synchronously on the lookup path: keep each call cheap. */
export interface KeyRegistryObserver {
  /** A lookup answered from memory: a cached key, or a remembered 404/409/403. */
  cacheHit?(kind: 'key' | 'negative'): void;
  /** A lookup of a key not in the cache refused by its issuer's limit, without asking the registry. */
  limited?(): void;
  /** A registry GET ended, after `durationMs`. */
  fetched?(outcome: KeyFetchOutcome, durationMs: number): void;
}

/** What the key cache holds for an (issuer, kid): only keys the registry served. */
type CachedKey = { kind: 'key'; key: VerificationKey };

/** What the registry answered for an (issuer, kid) that has no usable key; kept apart from keys. */
type NegativeAnswer = 'not-found' | 'pending' | 'expired';

/** Issuers and key IDs longer than this are refused without asking the registry. */
const MAX_NAME_LENGTH = 1024;

/** Largest JWK answer read, in bytes (an RSA 16384-bit JWK with padding is about 2.9 KB). */
export const MAX_JWK_BYTES = 16 * 1024;

/** Largest RSA modulus accepted, in bits (the key registry's own limit); a bigger key makes every verification slow. */
const MAX_RSA_BITS = 16_384;

/** JWK members that belong to a private or secret key: never imported into a verification key. */
const PRIVATE_MEMBERS = new Set(['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k']);

/**
 * Turns a registry's JWK into a verification key, once. Private members are ignored; when the
 * JWK names an `alg`, the key verifies that algorithm only.
 */
export function verificationKeyFromJwk(value: unknown): VerificationKey {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new TypeError('the answer is not a JWK object');
  const jwk = value as Record<string, unknown>;
  if (typeof jwk.kty !== 'string') throw new TypeError('the JWK has no "kty"');
  if (jwk.kty === 'oct') throw new TypeError('the JWK is a symmetric key');
  if (jwk.use !== undefined && jwk.use !== 'sig') throw new TypeError(`the JWK is for "use": ${JSON.stringify(jwk.use)}, not "sig"`);
  const publicMembers = Object.fromEntries(Object.entries(jwk).filter(([name]) => !PRIVATE_MEMBERS.has(name)));
  const key = createPublicKey({ key: publicMembers as JsonWebKey, format: 'jwk' });
  const modulusLength = key.asymmetricKeyDetails?.modulusLength;
  if (modulusLength !== undefined && modulusLength > MAX_RSA_BITS) throw new TypeError(`the key has ${modulusLength} bits, more than ${MAX_RSA_BITS}`);
  const verification = verificationKeyFrom(key);
  let algorithms = verification.algorithms;
  if (typeof jwk.alg === 'string') algorithms = algorithms.filter((alg) => alg === jwk.alg);
  if (algorithms.length === 0) {
    throw new TypeError(`the JWK (${jwk.kty}${typeof jwk.alg === 'string' ? `, alg ${jwk.alg}` : ''}) can verify no supported algorithm`);
  }
  return { key, algorithms };
}

/**
 * How long an answer may be kept, in ms: the registry's `Cache-Control: max-age`, capped by `cap`;
 * nothing for `no-store` or `no-cache` (we never revalidate); `cap` when the registry says nothing.
 */
export function cacheLifetime(cacheControl: string | string[] | undefined, cap: number): number {
  if (cacheControl === undefined) return cap;
  const directives = (Array.isArray(cacheControl) ? cacheControl.join(',') : cacheControl).split(',');
  let maxAge: number | undefined;
  for (const directive of directives) {
    const [rawName = '', rawValue] = directive.split('=', 2);
    const name = rawName.trim().toLowerCase();
    if (name === 'no-store' || name === 'no-cache') return 0;
    if (name === 'max-age' && rawValue !== undefined) {
      const seconds = Number(rawValue.trim().replace(/^"(.*)"$/, '$1'));
      // A malformed max-age makes the answer stale (RFC 9111 §4.2.1): do not keep it.
      maxAge = Number.isFinite(seconds) && seconds >= 0 ? Math.floor(seconds) : 0;
    }
  }
  return maxAge === undefined ? cap : Math.min(maxAge * 1000, cap);
}

/**
 * The verifier's key server `keyregistry`: fetches `GET {registry}/services/{iss}/keys/{kid}`,
 * imports the JWK once, and keeps it as long as the registry's max-age allows (capped by
 * `cache.duration`). A key in the cache keeps verifying while the registry is down, until its
 * cache time ends; after that, and for any answer it cannot use, it fails closed with
 * KeyServerUnavailableError.
 *
 * Tokens name any (issuer, kid) they like, so what they can cost is bounded:
 * - keys and "no key" answers (404, 409, 403) live in separate bounded caches: made-up kids
 *   never push a real key out, and a 404 is remembered for a short time only;
 * - a lookup of a key that is not cached and was never served is charged to the issuer's
 *   token bucket (LookupLimiter); beyond it the token is refused as an unknown key without
 *   asking the registry. A key the registry served before is refreshed without limit;
 * - concurrent lookups of one key share one request; every request has a timeout and a
 *   bounded answer size.
 */
export class KeyRegistryClient implements PublicKeyResolver {
  readonly endpoint: RegistryEndpoint;
  readonly #cache: KeyCacheComponent;
  readonly #cacheDuration: number;
  readonly #notFoundCacheDuration: number;
  /** 404/409/403 answers, for notFoundCacheDuration. */
  readonly #negative: LRUCache<string, { answer: NegativeAnswer }> | undefined;
  /** (issuer, kid)s the registry served a key for: their refreshes are not limited. Only 200 answers add. */
  readonly #servedBefore: LRUCache<string, true>;
  readonly #limiter: LookupLimiter;
  readonly #inFlight = new Map<string, Promise<VerificationKey>>();
  readonly #recentlyLogged: LRUCache<string, true>;
  readonly #logger: Logger;
  #observer: KeyRegistryObserver | undefined;

  constructor(options: KeyRegistryClientOptions) {
    this.#observer = options.observer;
    const clock = options.clock ?? systemClock;
    const timeout = options.timeout ?? keyRegistryDefaults.timeout;
    this.endpoint = new RegistryEndpoint(options.registry, {
      timeout,
      ...(options.connections !== undefined ? { connections: options.connections } : {}),
    });
    this.#cacheDuration = options.cacheDuration ?? keyRegistryDefaults.cacheDuration;
    this.#notFoundCacheDuration = Math.min(options.notFoundCacheDuration ?? keyRegistryDefaults.notFoundCacheDuration, this.#cacheDuration);
    const maxCachedKeys = options.maxCachedKeys ?? keyRegistryDefaults.maxCachedKeys;
    this.#cache =
      options.cache ??
      new MemoryKeyCache({
        maxEntries: maxCachedKeys,
        purgeInterval: options.purgeInterval ?? keyRegistryDefaults.purgeInterval,
        clock,
      });
    if (this.#notFoundCacheDuration > 0) {
      this.#negative = new LRUCache<string, { answer: NegativeAnswer }>({
        max: Math.max(1, options.maxCachedNotFound ?? keyRegistryDefaults.maxCachedNotFound),
        ttl: this.#notFoundCacheDuration,
        perf: { now: clock },
        ttlResolution: 0,
      });
    }
    this.#servedBefore = new LRUCache<string, true>({ max: Math.max(1, maxCachedKeys) });
    this.#limiter = new LookupLimiter({
      rate: options.unknownKidRate ?? keyRegistryDefaults.unknownKidRate,
      burst: options.unknownKidBurst ?? keyRegistryDefaults.unknownKidBurst,
      maxIssuers: options.maxTrackedIssuers ?? keyRegistryDefaults.maxTrackedIssuers,
      clock,
    });
    this.#recentlyLogged = new LRUCache<string, true>({
      max: 1_000,
      ttl: options.failureLogInterval ?? keyRegistryDefaults.failureLogInterval,
      perf: { now: clock },
      ttlResolution: 0,
    });
    this.#logger = options.logger ?? silentLogger;
  }

  resolve(issuer: string, kid: string): Promise<VerificationKey> {
    if (!usableName(issuer) || !usableName(kid)) return Promise.reject(new KeyNotFoundError());
    // Length-prefixed, so that no two (issuer, kid) pairs share a cache key.
    const cacheKey = `${issuer.length}:${issuer}${kid}`;
    const cached = this.#cache.get(cacheKey) as CachedKey | undefined;
    if (cached?.kind === 'key') {
      this.#observer?.cacheHit?.('key');
      return Promise.resolve(cached.key);
    }
    const negative = this.#negative?.get(cacheKey);
    if (negative) {
      this.#observer?.cacheHit?.('negative');
      return Promise.reject(errorFor(negative.answer));
    }
    const pending = this.#inFlight.get(cacheKey);
    if (pending) return pending;

    let charge: LookupCharge | undefined;
    if (!this.#servedBefore.has(cacheKey)) {
      charge = this.#limiter.take(issuer);
      if (!charge) {
        this.#observer?.limited?.();
        return Promise.reject(this.#limited(issuer));
      }
    }
    const fetching = this.#fetch(issuer, kid, cacheKey, charge).finally(() => this.#inFlight.delete(cacheKey));
    this.#inFlight.set(cacheKey, fetching);
    return fetching;
  }

  /** Observes registry fetches and cache hits from now on (metrics); one observer at a time, undefined to stop. */
  observe(observer: KeyRegistryObserver | undefined): void {
    this.#observer = observer;
  }

  async #fetch(issuer: string, kid: string, cacheKey: string, charge: LookupCharge | undefined): Promise<VerificationKey> {
    const started = this.#observer ? performance.now() : 0;
    let outcome: KeyFetchOutcome = 'error';
    try {
      return await this.#fetchOnce(issuer, kid, cacheKey, charge, (ended) => (outcome = ended));
    } finally {
      this.#observer?.fetched?.(outcome, performance.now() - started);
    }
  }

  async #fetchOnce(issuer: string, kid: string, cacheKey: string, charge: LookupCharge | undefined, ended: (outcome: KeyFetchOutcome) => void): Promise<VerificationKey> {
    const path = this.endpoint.pathFor(issuer, kid);
    let response;
    try {
      response = await this.endpoint.send({ method: 'GET', path, readBodyOf: [200], maxBodyBytes: MAX_JWK_BYTES });
    } catch (error) {
      this.#logFailure(cacheKey, issuer, kid, { error });
      throw new KeyServerUnavailableError({ cause: error });
    }
    ended(outcomeOf(response.status));
    switch (response.status) {
      case 200: {
        let key: VerificationKey;
        try {
          key = verificationKeyFromJwk(JSON.parse(response.body ?? ''));
        } catch (error) {
          ended('unusable');
          this.#logFailure(cacheKey, issuer, kid, { error: `unusable key: ${(error as Error).message}` });
          throw new KeyServerUnavailableError({ cause: error });
        }
        // A real key: its lookup does not count against the issuer, its refreshes are not
        // limited, and its issuer gets a limit of its own.
        if (charge) this.#limiter.giveBack(charge);
        this.#servedBefore.set(cacheKey, true);
        this.#limiter.markKnownIssuer(issuer);
        this.#negative?.delete(cacheKey);
        const lifetime = cacheLifetime(response.headers['cache-control'], this.#cacheDuration);
        if (lifetime > 0) this.#cache.set(cacheKey, { kind: 'key', key } satisfies CachedKey, lifetime);
        return key;
      }
      case 404:
        throw this.#remember(cacheKey, 'not-found');
      case 403:
        throw this.#remember(cacheKey, 'expired');
      case 409:
        // Awaiting approval: we cannot verify with it (fail closed), and ask again shortly.
        this.#logFailure(cacheKey, issuer, kid, { status: 409 });
        throw this.#remember(cacheKey, 'pending');
      default: {
        // 5xx, anything else: not remembered, so that a recovered registry is asked at once.
        this.#logFailure(cacheKey, issuer, kid, { status: response.status });
        throw new KeyServerUnavailableError({ cause: new Error(`key registry answered HTTP ${response.status}`) });
      }
    }
  }

  /** Keeps a "no usable key" answer apart from the keys, and forgets that a key was served. */
  #remember(cacheKey: string, answer: NegativeAnswer): Error {
    this.#servedBefore.delete(cacheKey);
    this.#negative?.set(cacheKey, { answer });
    return errorFor(answer);
  }

  /** The answer to a lookup over the limit: an unknown key, logged once per interval per limit. */
  #limited(issuer: string): KeyNotFoundError {
    const sharedLimit = !this.#limiter.isKnownIssuer(issuer);
    const cause = new UnknownKeyLookupsLimitedError(issuer, sharedLimit);
    // Issuers without a known key share one limit, so they share one log line too.
    const logKey = sharedLimit ? 'limited' : `limited:${issuer}`;
    if (!this.#recentlyLogged.has(logKey)) {
      this.#recentlyLogged.set(logKey, true);
      this.#logger.warn('too many lookups of unknown keys; refusing their tokens without asking the key registry', {
        registry: this.endpoint.base.href,
        issuer: sharedLimit ? undefined : issuer,
        limit: sharedLimit ? 'issuers without a known key' : 'issuer',
      });
    }
    return new KeyNotFoundError({ cause });
  }

  /** One warning per failing key per interval: a registry outage must not flood the log. */
  #logFailure(cacheKey: string, issuer: string, kid: string, detail: { status?: number; error?: unknown }): void {
    if (this.#recentlyLogged.has(cacheKey)) return;
    this.#recentlyLogged.set(cacheKey, true);
    this.#logger.warn('key registry lookup failed; refusing requests signed with this key', {
      registry: this.endpoint.base.href,
      issuer,
      kid,
      status: detail.status,
      error: detail.error,
    });
  }

  /** Forgets every cached answer for (issuer, kid). */
  forget(issuer: string, kid: string): void {
    const cacheKey = `${issuer.length}:${issuer}${kid}`;
    this.#cache.delete(cacheKey);
    this.#negative?.delete(cacheKey);
  }

  async stop(deadline?: number): Promise<void> {
    const cache = this.#cache as KeyCacheComponent & { stop?: () => Promise<void> | void };
    if (typeof cache.stop === 'function') await cache.stop();
    this.#negative?.clear();
    await this.endpoint.close(deadline);
  }
}

/**
 * Can this issuer or kid be a path segment of the registry? Not empty, not oversized, and not
 * `.` or `..`, which servers resolve as dot segments even when escaped (`%2E`): such a token
 * would make us ask for another route.
 */
function usableName(name: string): boolean {
  return name.length > 0 && name.length <= MAX_NAME_LENGTH && name !== '.' && name !== '..';
}

function outcomeOf(status: number): KeyFetchOutcome {
  switch (status) {
    case 200:
      return 'key';
    case 404:
      return 'not_found';
    case 403:
      return 'expired';
    case 409:
      return 'pending';
    default:
      return 'unavailable';
  }
}

function errorFor(answer: NegativeAnswer): Error {
  switch (answer) {
    case 'not-found':
      return new KeyNotFoundError();
    case 'expired':
      return new KeyExpiredError();
    case 'pending':
      return new KeyServerUnavailableError({ cause: new Error('key registry answered HTTP 409: the key awaits approval') });
  }
}
