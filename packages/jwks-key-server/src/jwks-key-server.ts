import {
  KeyNotFoundError,
  KeyServerUnavailableError,
  silentLogger,
  systemClock,
  type AsymmetricAlgorithm,
  type Clock,
  type Logger,
  type PublicKeyResolver,
  type VerificationKey,
} from '@jwtproxy/core';
import { JwksDiscoveryError, JwksError, JwksInvalidError, JwksUnavailableError } from './errors.js';
import { HttpSource, isLoopback, parseSourceUrl, urlForLogs } from './http-source.js';
import { MAX_KID_LENGTH, readKeySet, supportedAlgorithms, type KeySetContents } from './jwk.js';
import { freshnessLifetime, type LifetimeRules } from './lifetime.js';

/** Defaults, in ms unless said otherwise. */
export const jwksDefaults = {
  timeout: 5_000,
  /** Bytes; a set of 100 RSA-4096 keys with their certificate chains is about 300 KB, the usual one 2-20 KB. */
  maxAnswerBytes: 256 * 1024,
  maxKeys: 100,
  cacheDuration: 10 * 60_000,
  minCacheDuration: 60_000,
  maxCacheDuration: 24 * 3_600_000,
  maxStale: 3_600_000,
  unknownKidRefetchInterval: 10_000,
  /** A failing source is logged at once, then at most once per this long. */
  failureLogInterval: 60_000,
  /** Retries of a failing source wait 1 s, 2 s, 4 s … up to this. */
  maxRetryDelay: 60_000,
} as const;

export interface JwksKeyServerOptions {
  /** The JWK set's address. Without it, `discoveryIssuer` names an OIDC issuer whose discovery document gives it. */
  url?: string | URL;
  /** An OIDC issuer: the set is the `jwks_uri` of `{issuer}/.well-known/openid-configuration`, whose `issuer` must be this one. */
  discoveryIssuer?: string;
  /** The `iss` values this key server answers for, compared exactly; any other is a KeyNotFoundError without a lookup. */
  issuers: readonly string[];
  /** Algorithms accepted (default: all of supportedAlgorithms); keys fit for none of them are refused. */
  algorithms?: readonly AsymmetricAlgorithm[];
  /** Whole-request timeout, ms. */
  timeout?: number;
  /** Largest answer read, bytes. */
  maxAnswerBytes?: number;
  /** Most keys a set may list; a longer set is refused as a whole. */
  maxKeys?: number;
  /** How long a set is kept when its answer says nothing (no max-age, no Expires), ms. */
  cacheDuration?: number;
  /** Least time a set is kept, whatever its answer says, ms. */
  minCacheDuration?: number;
  /** Longest time a set is kept, whatever its answer says, ms. */
  maxCacheDuration?: number;
  /** How long past its expiry a set's keys keep verifying while the source cannot be read, ms (0: not at all). */
  maxStale?: number;
  /** Least time between two reads of the set caused by tokens naming a kid it does not hold, ms. */
  unknownKidRefetchInterval?: number;
  /** CA certificates (PEM) trusted for an https source. */
  ca?: string;
  logger?: Logger;
  clock?: Clock;
}

/** What a JwksKeyServer holds and has done, for tests, metrics and a status page. */
export interface JwksStatus {
  /** The kids of the usable keys held. */
  kids: string[];
  /** The kids of keys refused, with the reason. */
  refused: Record<string, string>;
  /** When the set held was read and when it expires (ms since the epoch), if one is held. */
  fetchedAt: number | undefined;
  expiresAt: number | undefined;
  /** GETs of the set sent so far (each ended, well or not), and of the discovery document. */
  setFetches: number;
  discoveryFetches: number;
  /** Reads that failed in a row, up to now. */
  failures: number;
  lastError: JwksError | undefined;
}

/** How a read of the set ended: a usable set, an unusable one, an answer other than 200, or no answer (timeout, refused, too large). */
export type JwksReadOutcome = 'key' | 'unusable' | 'unavailable' | 'error';

/**
 * What a JwksKeyServer tells its observer (metrics; the shape of the keyregistry key server's, so
 * @jwtproxy/admin counts both). Called synchronously: keep each call cheap.
 */
export interface JwksObserver {
  /** A lookup answered from the set held. */
  cacheHit?(kind: 'key'): void;
  /** A lookup of a kid the set lacks refused without a read (unknown_kid_refetch_interval). */
  limited?(): void;
  /** A read of the set ended, after `durationMs`. */
  fetched?(outcome: JwksReadOutcome, durationMs: number): void;
}

/** A set as held: its contents and its times (ms, the key server's clock). */
interface HeldSet extends KeySetContents {
  fetchedAt: number;
  expiresAt: number;
}

type Facts = Record<string, string | number>;

/** The longest delay a Node timer takes. */
const MAX_TIMER_DELAY = 2 ** 31 - 1;

/**
 * `key_server: {type: jwks}`: verification keys from a JWK set over HTTP(S), or from the set an
 * OIDC issuer's discovery document names.
 *
 * - The set is kept for its `Cache-Control: max-age` (held within min and max) and read again in
 *   the background when three quarters of that time have passed, so requests rarely wait.
 * - One read at a time: every request that needs the set while it is being read waits for that
 *   read.
 * - A token naming a kid the set does not hold causes a read of the set at most once per
 *   `unknownKidRefetchInterval`, whatever the kids: made-up kids never enter any cache (the set
 *   is replaced as a whole, bounded by `maxKeys`), and cost the source one GET per interval.
 * - While the source cannot be read, the keys held keep verifying until `maxStale` past the
 *   set's expiry; then, and before any set was read, requests fail closed
 *   (KeyServerUnavailableError, 403 "Unexpected key server error").
 * - `iss` must be one of `issuers`: a JWK set says nothing about issuers, so this is what ties
 *   the set's keys to the tokens they may sign.
 * Refusals carry facts (`problem`, the set's age, the last read's error) for the access log.
 */
export class JwksKeyServer implements PublicKeyResolver {
  readonly #issuers: ReadonlySet<string>;
  readonly #algorithms: ReadonlySet<AsymmetricAlgorithm>;
  readonly #fixedUrl: URL | undefined;
  readonly #discoveryIssuer: string | undefined;
  readonly #discoveryUrl: URL | undefined;
  readonly #http: HttpSource;
  readonly #maxKeys: number;
  readonly #lifetimes: LifetimeRules;
  readonly #maxStale: number;
  readonly #unknownKidRefetchInterval: number;
  readonly #logger: Logger;
  readonly #clock: Clock;
  readonly #stopping = new AbortController();

  #set: HeldSet | undefined;
  #discovered: { jwksUrl: URL; expiresAt: number } | undefined;
  #inFlight: Promise<void> | undefined;
  /** No read of an expired set is started for a request before this time (a failing source backs off). */
  #retryAt = 0;
  /** No read for an unknown kid is started before this time. */
  #unknownKidRefetchAt = -Infinity;
  #failures = 0;
  #lastError: JwksError | undefined;
  #lastFailureLogAt = -Infinity;
  #timer: NodeJS.Timeout | undefined;
  #setFetches = 0;
  #discoveryFetches = 0;
  #observer: JwksObserver | undefined;

  /** Throws TypeError for options that cannot work (no source, no issuer, an unknown algorithm). */
  constructor(options: JwksKeyServerOptions) {
    if (options.url !== undefined) {
      this.#fixedUrl = parseSourceUrl(options.url);
      if (!this.#fixedUrl) throw new TypeError(`the JWK set's url must be an absolute http or https URL without credentials: ${String(options.url)}`);
    } else if (options.discoveryIssuer !== undefined) {
      const issuerUrl = parseSourceUrl(options.discoveryIssuer);
      if (!issuerUrl || issuerUrl.search) throw new TypeError(`an OIDC issuer must be an http or https URL without query or credentials: ${options.discoveryIssuer}`);
      this.#discoveryIssuer = options.discoveryIssuer;
      this.#discoveryUrl = new URL(`${issuerUrl.href.replace(/\/+$/, '')}/.well-known/openid-configuration`);
    } else {
      throw new TypeError('a JWK set url or an OIDC issuer to discover it from is required');
    }
    if (options.issuers.length === 0) throw new TypeError('at least one issuer is required');
    this.#issuers = new Set(options.issuers);
    const algorithms = options.algorithms ?? supportedAlgorithms;
    const unknown = algorithms.find((alg) => !(supportedAlgorithms as readonly string[]).includes(alg));
    if (unknown !== undefined || algorithms.length === 0) throw new TypeError(`algorithms must be some of ${supportedAlgorithms.join(', ')}`);
    this.#algorithms = new Set(algorithms);
    const timeout = options.timeout ?? jwksDefaults.timeout;
    this.#http = new HttpSource({ timeout, maxBytes: options.maxAnswerBytes ?? jwksDefaults.maxAnswerBytes, ...(options.ca ? { ca: options.ca } : {}) });
    this.#maxKeys = options.maxKeys ?? jwksDefaults.maxKeys;
    const min = options.minCacheDuration ?? jwksDefaults.minCacheDuration;
    const max = Math.max(min, options.maxCacheDuration ?? jwksDefaults.maxCacheDuration);
    this.#lifetimes = { min, max, fallback: options.cacheDuration ?? jwksDefaults.cacheDuration };
    this.#maxStale = options.maxStale ?? jwksDefaults.maxStale;
    this.#unknownKidRefetchInterval = options.unknownKidRefetchInterval ?? jwksDefaults.unknownKidRefetchInterval;
    this.#logger = options.logger ?? silentLogger;
    this.#clock = options.clock ?? systemClock;
    const plain = this.#fixedUrl ?? this.#discoveryUrl!;
    if (plain.protocol === 'http:' && !isLoopback(plain)) {
      this.#logger.warn('the JWK set is read over plain http: anyone on the path can swap its keys and sign tokens this verifier accepts; use https', {
        jwks: this.#source(),
      });
    }
  }

  /** The set's key for (issuer, kid), or a typed refusal with facts. */
  resolve(issuer: string, kid: string): Promise<VerificationKey> {
    if (!this.#issuers.has(issuer)) {
      return Promise.reject(new KeyNotFoundError().with({ key_server: 'jwks', problem: 'iss is not one of the issuers of this key server', iss: shorten(issuer) }));
    }
    if (kid.length === 0 || kid.length > MAX_KID_LENGTH) {
      return Promise.reject(new KeyNotFoundError().with({ key_server: 'jwks', problem: `kid empty or longer than ${MAX_KID_LENGTH}` }));
    }
    const set = this.#set;
    if (set !== undefined && this.#clock() < set.expiresAt) {
      const held = set.keys.get(kid);
      if (held !== undefined) {
        this.#observer?.cacheHit?.('key');
        return held.resolved;
      }
    }
    return this.#resolveSlowly(kid);
  }

  /** Observes lookups and reads from now on (metrics); one observer at a time, undefined to stop. */
  observe(observer: JwksObserver | undefined): void {
    this.#observer = observer;
  }

  /** An unknown kid, or no fresh set: read the set if allowed, then look again. */
  async #resolveSlowly(kid: string): Promise<VerificationKey> {
    const now = this.#clock();
    const set = this.#set;
    let refetch: string;
    if (set === undefined || now >= set.expiresAt) {
      // No set, or an expired one: read it, unless a failing source is backing off.
      if (this.#inFlight !== undefined || now >= this.#retryAt) {
        await this.#refresh().catch(() => {});
        refetch = this.#failures === 0 ? 'read again: not in it' : 'read failed';
      } else refetch = `not tried: the source failed, next try in ${Math.ceil((this.#retryAt - now) / 1000)} s`;
      const current = this.#set;
      const at = this.#clock();
      if (current === undefined) throw this.#unavailable('no JWK set could be read yet');
      if (at >= current.expiresAt + this.#maxStale) throw this.#unavailable('the JWK set held expired more than max_stale ago and cannot be read again');
      const held = current.keys.get(kid);
      if (held !== undefined) return held.key;
    } else {
      // A read under way may have started before the key was published: if it does not have the
      // kid, a read of our own may still follow (within the limit).
      if (this.#inFlight !== undefined) {
        await this.#inFlight.catch(() => {});
        const held = this.#set?.keys.get(kid);
        if (held !== undefined) return held.key;
      }
      const at = this.#clock();
      if (at >= this.#unknownKidRefetchAt) {
        this.#unknownKidRefetchAt = at + this.#unknownKidRefetchInterval;
        await this.#refresh().catch(() => {});
        refetch = this.#failures === 0 ? 'read again: not in it' : 'read failed';
      } else {
        this.#observer?.limited?.();
        refetch = `not read again: at most one read for unknown kids every ${this.#unknownKidRefetchInterval / 1000} s, next in ${Math.ceil((this.#unknownKidRefetchAt - at) / 1000)} s`;
      }
      const held = this.#set?.keys.get(kid);
      if (held !== undefined) return held.key;
    }
    const refused = this.#set?.refused.get(kid);
    if (refused !== undefined) throw this.#notFound(kid, `the set's key with this kid is refused: ${refused.problem}`, refetch);
    throw this.#notFound(kid, 'kid not in the JWK set', refetch);
  }

  /** Reads the set now (or joins the read under way); rejects with the read's JwksError. Requests do not need this: they read when they must. */
  refresh(): Promise<void> {
    return this.#refresh();
  }

  #refresh(): Promise<void> {
    if (this.#stopping.signal.aborted) return Promise.reject(new JwksError('stopped'));
    this.#inFlight ??= this.#read().finally(() => (this.#inFlight = undefined));
    return this.#inFlight;
  }

  async #read(): Promise<void> {
    let url: URL | undefined;
    try {
      url = await this.#setUrl();
      this.#setFetches++;
      const started = performance.now();
      let contents: KeySetContents;
      let answer;
      try {
        answer = await this.#http.get(url, this.#stopping.signal);
        contents = readKeySet(answer.body, { algorithms: this.#algorithms }, this.#maxKeys);
      } catch (error) {
        this.#observer?.fetched?.(readOutcomeOf(error), performance.now() - started);
        throw error;
      }
      this.#observer?.fetched?.('key', performance.now() - started);
      const lifetime = freshnessLifetime(answer.headers, this.#lifetimes);
      const fetchedAt = this.#clock();
      const previous = this.#set;
      this.#set = { ...contents, fetchedAt, expiresAt: fetchedAt + lifetime };
      this.#logRead(previous, this.#set, url, lifetime);
      this.#failures = 0;
      this.#lastError = undefined;
      this.#retryAt = 0;
      // Read again before it expires, so that requests find it fresh.
      this.#schedule(lifetime * 0.75);
    } catch (thrown) {
      const error = thrown instanceof JwksError ? thrown : new JwksError(`unexpected: ${(thrown as Error)?.message}`, { cause: thrown });
      this.#failures++;
      this.#lastError = error;
      const delay = Math.min(jwksDefaults.maxRetryDelay, 1_000 * 2 ** Math.min(this.#failures - 1, 16));
      this.#retryAt = this.#clock() + delay;
      this.#logFailure(error, url);
      this.#schedule(delay);
      throw error;
    }
  }

  /** The set's address: fixed, or the `jwks_uri` of the issuer's discovery document (read again when it expires). */
  async #setUrl(): Promise<URL> {
    if (this.#fixedUrl) return this.#fixedUrl;
    const now = this.#clock();
    if (this.#discovered && now < this.#discovered.expiresAt) return this.#discovered.jwksUrl;
    const discoveryUrl = this.#discoveryUrl!;
    try {
      this.#discoveryFetches++;
      const answer = await this.#http.get(discoveryUrl, this.#stopping.signal);
      const jwksUrl = jwksUrlFromDiscovery(answer.body, this.#discoveryIssuer!, discoveryUrl);
      if (this.#discovered?.jwksUrl.href !== jwksUrl.href) {
        this.#logger.info('OIDC discovery: the JWK set is at its jwks_uri', { issuer: this.#discoveryIssuer, jwks: urlForLogs(jwksUrl) });
      }
      this.#discovered = { jwksUrl, expiresAt: this.#clock() + freshnessLifetime(answer.headers, this.#lifetimes) };
      return jwksUrl;
    } catch (thrown) {
      const error = thrown instanceof JwksDiscoveryError ? thrown : new JwksDiscoveryError(`discovery document: ${(thrown as Error).message}`, { cause: thrown });
      // A known jwks_uri outlives a failing discovery document: the set is what matters.
      if (this.#discovered) {
        this.#logger.warn('OIDC discovery document could not be read again; reading the JWK set from the jwks_uri it gave before', {
          issuer: this.#discoveryIssuer,
          error: error.message,
        });
        this.#discovered.expiresAt = now + this.#lifetimes.min;
        return this.#discovered.jwksUrl;
      }
      throw error;
    }
  }

  #schedule(delay: number): void {
    if (this.#stopping.signal.aborted) return;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#refresh().catch(() => {});
    }, Math.min(MAX_TIMER_DELAY, Math.max(0, delay)));
    // A refresh must never keep the process alive.
    this.#timer.unref();
  }

  /** The set's address for logs and facts (without its query). */
  #source(url?: URL): string {
    const known = url ?? this.#fixedUrl ?? this.#discovered?.jwksUrl;
    return known ? urlForLogs(known) : `discovery of ${this.#discoveryIssuer}`;
  }

  #facts(problem: string, more: Facts = {}): Facts {
    const facts: Facts = { key_server: 'jwks', jwks: this.#source(), problem, ...more };
    const set = this.#set;
    if (set) {
      facts.set_age_s = Math.round((this.#clock() - set.fetchedAt) / 1000);
      facts.keys = set.keys.size;
    }
    if (this.#lastError) {
      facts.last_error = `${this.#lastError.code}: ${this.#lastError.message}`;
      facts.failed_reads = this.#failures;
    }
    return facts;
  }

  #notFound(kid: string, problem: string, refetch: string): KeyNotFoundError {
    return new KeyNotFoundError({ cause: this.#lastError }).with(this.#facts(problem, { kid: shorten(kid), refetch }));
  }

  #unavailable(problem: string): KeyServerUnavailableError {
    return new KeyServerUnavailableError({ cause: this.#lastError }).with(this.#facts(problem));
  }

  #logRead(previous: HeldSet | undefined, next: HeldSet, url: URL, lifetime: number): void {
    const kids = [...next.keys.keys()];
    const fields: Record<string, unknown> = { jwks: this.#source(url), keys: kids.length, lifetime_s: Math.round(lifetime / 1000) };
    if (this.#failures > 0) this.#logger.info('JWK set read again after failed reads', { ...fields, failed_reads: this.#failures });
    if (previous === undefined) this.#logger.info('JWK set read', { ...fields, kids: listForLog(kids) });
    else {
      const added = kids.filter((kid) => !previous.keys.has(kid));
      const removed = [...previous.keys.keys()].filter((kid) => !next.keys.has(kid));
      if (added.length > 0 || removed.length > 0) this.#logger.info('JWK set changed', { ...fields, added: listForLog(added), removed: listForLog(removed) });
    }
    // Refused keys once per change of what is refused, not at every refresh.
    const refusedNow = refusalSummary(next);
    if (refusedNow !== '' && (previous === undefined || refusalSummary(previous) !== refusedNow)) {
      for (const refusal of [...next.refused.values(), ...next.refusedWithoutKid].slice(0, 10)) {
        this.#logger.warn('JWK set key refused', { jwks: fields.jwks, kid: refusal.kid, problem: refusal.problem });
      }
    }
    if (next.privateMembersIgnored && !previous?.privateMembersIgnored) {
      this.#logger.warn('the JWK set publishes private key members (d, p, q …): they were ignored, but the publisher leaks its private key', { jwks: fields.jwks });
    }
    if (next.listed === 0) this.#logger.warn('the JWK set lists no keys: every token is refused until it does', { jwks: fields.jwks });
  }

  #logFailure(error: JwksError, url: URL | undefined): void {
    const now = this.#clock();
    if (this.#failures > 1 && now - this.#lastFailureLogAt < jwksDefaults.failureLogInterval) return;
    this.#lastFailureLogAt = now;
    const set = this.#set;
    const fields: Record<string, unknown> = { jwks: this.#source(url), error: error.message, code: error.code, failed_reads: this.#failures };
    if (set === undefined) this.#logger.warn('JWK set could not be read; refusing tokens until it can', fields);
    else {
      fields.stale_until = new Date(set.expiresAt + this.#maxStale).toISOString();
      this.#logger.warn('JWK set could not be read again; its keys held keep verifying until stale_until', fields);
    }
  }

  status(): JwksStatus {
    const set = this.#set;
    return {
      kids: set ? [...set.keys.keys()] : [],
      refused: set ? Object.fromEntries([...set.refused].map(([kid, error]) => [kid, error.problem])) : {},
      fetchedAt: set?.fetchedAt,
      expiresAt: set?.expiresAt,
      setFetches: this.#setFetches,
      discoveryFetches: this.#discoveryFetches,
      failures: this.#failures,
      lastError: this.#lastError,
    };
  }

  /** Stops refreshing, drops a read under way and closes the connections; the keys held still answer. */
  async stop(): Promise<void> {
    this.#stopping.abort();
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#http.close();
  }
}

/**
 * The `jwks_uri` of a discovery document, checked as OIDC Discovery 1.0 §4.3 asks: its `issuer`
 * must be exactly the one configured (else a document served elsewhere could name any set), and
 * the set is read over https unless the issuer itself is plain http.
 */
export function jwksUrlFromDiscovery(text: string, issuer: string, documentUrl: URL): URL {
  let document: unknown;
  try {
    document = JSON.parse(text);
  } catch {
    throw new JwksDiscoveryError('the discovery document is not JSON');
  }
  if (typeof document !== 'object' || document === null || Array.isArray(document)) throw new JwksDiscoveryError('the discovery document is not a JSON object');
  const fields = document as Record<string, unknown>;
  if (fields.issuer !== issuer) {
    throw new JwksDiscoveryError(`the discovery document names issuer ${typeof fields.issuer === 'string' ? JSON.stringify(fields.issuer.slice(0, 200)) : 'nothing'}, not ${JSON.stringify(issuer)}`);
  }
  const jwksUrl = typeof fields.jwks_uri === 'string' ? parseSourceUrl(fields.jwks_uri) : undefined;
  if (!jwksUrl) throw new JwksDiscoveryError('the discovery document has no jwks_uri that is an http(s) URL without credentials');
  if (jwksUrl.protocol === 'http:' && documentUrl.protocol === 'https:') throw new JwksDiscoveryError('the discovery document of an https issuer names a plain http jwks_uri');
  return jwksUrl;
}

function readOutcomeOf(error: unknown): JwksReadOutcome {
  if (error instanceof JwksInvalidError) return 'unusable';
  if (error instanceof JwksUnavailableError && error.status !== undefined) return 'unavailable';
  return 'error';
}

/** A token's or source's name for a log line: not too long. */
function shorten(name: string): string {
  return name.length > 64 ? `${name.slice(0, 61)}...` : name;
}

/** Kids for a log line: not too many, not too long (they come from the source). */
function listForLog(kids: readonly string[]): string {
  const shown = kids.slice(0, 20).map(shorten);
  return shown.join(', ') + (kids.length > shown.length ? ` (+${kids.length - shown.length} more)` : '');
}

function refusalSummary(set: KeySetContents): string {
  return [...set.refused.values(), ...set.refusedWithoutKid].map((error) => error.message).join('\n');
}
