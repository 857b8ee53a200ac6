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
  /** How long a 404 or 403 answer is remembered, in ms (default 2s; capped by cacheDuration). */
  notFoundCacheDuration?: number;
  /** A failing (issuer, kid) is logged at most once per this many ms (default 1m). */
  failureLogInterval?: number;
  /** A cache built elsewhere (a `cache.type` plugin); by default a MemoryKeyCache. */
  cache?: KeyCacheComponent;
  /** Most sockets kept open to the registry (default 32). */
  connections?: number;
  logger?: Logger;
  clock?: Clock;
}

/** What the cache remembers for an (issuer, kid). */
type CachedAnswer = { kind: 'key'; key: VerificationKey } | { kind: 'not-found' } | { kind: 'expired' };

/** Issuers and key IDs longer than this are refused without asking the registry. */
const MAX_NAME_LENGTH = 1024;

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
 * `cache.duration`). Concurrent lookups of one key share one request. A key in the cache keeps
 * verifying while the registry is down, until its cache time ends; after that, and for any
 * answer it cannot use, it fails closed with KeyServerUnavailableError.
 */
export class KeyRegistryClient implements PublicKeyResolver {
  readonly endpoint: RegistryEndpoint;
  readonly #cache: KeyCacheComponent;
  readonly #cacheDuration: number;
  readonly #notFoundCacheDuration: number;
  readonly #inFlight = new Map<string, Promise<VerificationKey>>();
  readonly #recentlyLogged: LRUCache<string, true>;
  readonly #logger: Logger;

  constructor(options: KeyRegistryClientOptions) {
    const clock = options.clock ?? systemClock;
    const timeout = options.timeout ?? keyRegistryDefaults.timeout;
    this.endpoint = new RegistryEndpoint(options.registry, {
      timeout,
      ...(options.connections !== undefined ? { connections: options.connections } : {}),
    });
    this.#cacheDuration = options.cacheDuration ?? keyRegistryDefaults.cacheDuration;
    this.#notFoundCacheDuration = Math.min(options.notFoundCacheDuration ?? keyRegistryDefaults.notFoundCacheDuration, this.#cacheDuration);
    this.#cache =
      options.cache ??
      new MemoryKeyCache({
        maxEntries: options.maxCachedKeys ?? keyRegistryDefaults.maxCachedKeys,
        purgeInterval: options.purgeInterval ?? keyRegistryDefaults.purgeInterval,
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
    if (!issuer || !kid || issuer.length > MAX_NAME_LENGTH || kid.length > MAX_NAME_LENGTH) {
      return Promise.reject(new KeyNotFoundError());
    }
    // Length-prefixed, so that no two (issuer, kid) pairs share a cache key.
    const cacheKey = `${issuer.length}:${issuer}${kid}`;
    const cached = this.#cache.get(cacheKey) as CachedAnswer | undefined;
    if (cached) {
      if (cached.kind === 'key') return Promise.resolve(cached.key);
      return Promise.reject(cached.kind === 'not-found' ? new KeyNotFoundError() : new KeyExpiredError());
    }
    let pending = this.#inFlight.get(cacheKey);
    if (!pending) {
      pending = this.#fetch(issuer, kid, cacheKey).finally(() => this.#inFlight.delete(cacheKey));
      this.#inFlight.set(cacheKey, pending);
    }
    return pending;
  }

  async #fetch(issuer: string, kid: string, cacheKey: string): Promise<VerificationKey> {
    const path = this.endpoint.pathFor(issuer, kid);
    let response;
    try {
      response = await this.endpoint.send({ method: 'GET', path, readBodyOf: [200] });
    } catch (error) {
      this.#logFailure(cacheKey, issuer, kid, { error });
      throw new KeyServerUnavailableError({ cause: error });
    }
    switch (response.status) {
      case 200: {
        let key: VerificationKey;
        try {
          key = verificationKeyFromJwk(JSON.parse(response.body ?? ''));
        } catch (error) {
          this.#logFailure(cacheKey, issuer, kid, { error: `unusable key: ${(error as Error).message}` });
          throw new KeyServerUnavailableError({ cause: error });
        }
        const lifetime = cacheLifetime(response.headers['cache-control'], this.#cacheDuration);
        if (lifetime > 0) this.#cache.set(cacheKey, { kind: 'key', key } satisfies CachedAnswer, lifetime);
        return key;
      }
      case 404:
        if (this.#notFoundCacheDuration > 0) this.#cache.set(cacheKey, { kind: 'not-found' } satisfies CachedAnswer, this.#notFoundCacheDuration);
        throw new KeyNotFoundError();
      case 403:
        if (this.#notFoundCacheDuration > 0) this.#cache.set(cacheKey, { kind: 'expired' } satisfies CachedAnswer, this.#notFoundCacheDuration);
        throw new KeyExpiredError();
      default: {
        // 409 (awaiting approval), 5xx, anything else: we cannot verify with it.
        this.#logFailure(cacheKey, issuer, kid, { status: response.status });
        throw new KeyServerUnavailableError({ cause: new Error(`key registry answered HTTP ${response.status}`) });
      }
    }
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
    this.#cache.delete(`${issuer.length}:${issuer}${kid}`);
  }

  async stop(deadline?: number): Promise<void> {
    const cache = this.#cache as KeyCacheComponent & { stop?: () => Promise<void> | void };
    if (typeof cache.stop === 'function') await cache.stop();
    await this.endpoint.close(deadline);
  }
}
