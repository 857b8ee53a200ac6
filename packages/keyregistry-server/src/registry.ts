import { randomUUID } from 'node:crypto';
import type { Clock, Logger } from '@jwtproxy/core';
import { BadRequestError, ForbiddenError, KeyExpiredError, KeyNotFoundError, KeyPendingError, KeyRegistryError, PendingKeyLimitError } from './errors.js';
import { parsePublicJwk, sameKey, type PublicJwk } from './jwk.js';
import { checkName } from './names.js';
import type { KeyChange, KeyState, KeyStore, PendingLimits, StoredKey } from './store.js';
import { bearerToken, signerKid, verifyRegistryToken, type TokenPolicy } from './token.js';

export interface KeyRegistryPolicy extends TokenPolicy {
  /** Unapproved keys older than this are purged (0: never). */
  pendingTtlMs: number;
  /** Expired keys are forgotten this long after they expired (0: never); until then they answer 403. */
  expiredRetentionMs: number;
  /** Services whose new keys are approved at once (development). */
  autoApprove: (service: string) => boolean;
  /** Caps on keys awaiting approval, per service and in all; beyond them publishing answers 429. */
  pendingLimits: PendingLimits;
  /** Changes to one key waiting behind the one in progress; more answer 503 `busy`. */
  maxQueuedChangesPerKey: number;
}

/** What a key looks like right now: `expired` and purged keys are derived from the clock, not stored. */
export type LiveState = KeyState | 'expired';

/** A key as the admin API shows it. Times are ISO 8601. */
export interface KeyInfo {
  service: string;
  kid: string;
  state: LiveState;
  kty: PublicJwk['kty'];
  alg: PublicJwk['alg'];
  createdAt: string;
  expiresAt: string | null;
  approvedAt: string | null;
  approvedBy: string | null;
  rotationSeconds: number | null;
  jwk: PublicJwk;
}

export interface PublishRequest {
  service: string;
  kid: string;
  /** The parsed JSON body. */
  body: unknown;
  authorization: string | undefined;
  /** Raw query values; absent when null/undefined. */
  expiration?: string | null | undefined;
  rotation?: string | null | undefined;
}

export interface PublishResult {
  status: 200 | 202;
  /** What happened, for the log and the response body. */
  outcome: 'pending' | 'auto-approved' | 'refreshed' | 'rotated';
}

const maxCasAttempts = 8;
const oneDaySeconds = 86_400;
/** The pending-key cap is logged at most once per this long, with the number refused meanwhile. */
const limitLogIntervalMs = 10_000;

function iso(ms: number | null): string | null {
  return ms === null ? null : new Date(ms).toISOString();
}

function parseExpiration(raw: string | null | undefined, now: number): number | null {
  if (raw === undefined || raw === null || raw === '') return null;
  const seconds = Number(raw);
  if (!/^\s*\d+(\.\d+)?\s*$/.test(raw) || !Number.isFinite(seconds)) throw new BadRequestError('"expiration" must be a unix time in seconds');
  const ms = Math.round(seconds * 1000);
  if (ms <= now) throw new BadRequestError('"expiration" is in the past');
  if (ms > 253_402_300_799_000) throw new BadRequestError('"expiration" is after the year 9999');
  return ms;
}

function parseRotation(raw: string | null | undefined): number | null {
  if (raw === undefined || raw === null || raw === '') return null;
  if (!/^\d{1,10}$/.test(raw)) throw new BadRequestError('"rotation" must be a whole number of seconds');
  return Number(raw);
}

/**
 * One change at a time per key, in arrival order: concurrent refreshes of one key wait for each
 * other instead of failing their compare-and-set. At most `maxWaiting` wait per key; beyond that
 * the request answers 503 `busy` (a client hammering one key cannot queue without bound).
 */
class KeyedLocks {
  readonly #queues = new Map<string, Array<() => void>>();
  readonly #maxWaiting: number;

  constructor(maxWaiting: number) {
    this.#maxWaiting = maxWaiting;
  }

  /** Resolves with the release function once `name` is ours. */
  acquire(name: string): Promise<() => void> {
    const release = (): void => {
      const waiters = this.#queues.get(name)!;
      const next = waiters.shift();
      if (next) next();
      else this.#queues.delete(name);
    };
    const waiters = this.#queues.get(name);
    if (!waiters) {
      this.#queues.set(name, []);
      return Promise.resolve(release);
    }
    if (waiters.length >= this.#maxWaiting) {
      return Promise.reject(new KeyRegistryError(503, 'busy', `too many concurrent changes to this key (${waiters.length} waiting); retry`));
    }
    return new Promise((resolve) => waiters.push(() => resolve(release)));
  }
}

/**
 * The key registry's rules, independent of HTTP: what publishing, rotating, deleting,
 * approving and fetching do. Every change is a compare-and-set on the store, retried on
 * conflict, so that concurrent requests (on any replica) never lose or corrupt a key.
 */
export class KeyRegistry {
  readonly #store: KeyStore;
  readonly #policy: KeyRegistryPolicy;
  readonly #logger: Logger;
  readonly #clock: Clock;
  readonly #locks: KeyedLocks;
  #limitLoggedAt = Number.NEGATIVE_INFINITY;
  #limitRefusedSinceLog = 0;

  constructor(store: KeyStore, policy: KeyRegistryPolicy, logger: Logger, clock: Clock) {
    this.#store = store;
    this.#policy = policy;
    this.#logger = logger;
    this.#clock = clock;
    this.#locks = new KeyedLocks(policy.maxQueuedChangesPerKey);
  }

  /**
   * Runs `work` holding the locks of these keys of the service, taken in sorted order so that two
   * changes touching the same two keys (a rotation) cannot wait for each other.
   */
  async #exclusive<T>(service: string, kids: readonly string[], work: () => Promise<T>): Promise<T> {
    const releases: Array<() => void> = [];
    try {
      for (const kid of [...new Set(kids)].sort()) releases.push(await this.#locks.acquire(`${service.length}:${service}/${kid}`));
      return await work();
    } finally {
      for (const release of releases.reverse()) release();
    }
  }

  /** Logs a refusal by the pending-key cap: the first at once, then at most one line per interval with the count. */
  #logPendingLimit(error: PendingKeyLimitError): void {
    this.#limitRefusedSinceLog++;
    const now = this.#clock();
    if (now - this.#limitLoggedAt < limitLogIntervalMs) return;
    this.#logger.warn('key registry: too many keys awaiting approval; refusing new ones (429)', {
      scope: error.scope, service: error.service, limit: error.limit, refused: this.#limitRefusedSinceLog,
    });
    this.#limitLoggedAt = now;
    this.#limitRefusedSinceLog = 0;
  }

  /** The state a stored key is in now; undefined when an unapproved key outlived pending_ttl (treated as purged). */
  liveState(key: StoredKey, now = this.#clock()): LiveState | undefined {
    if (key.state === 'pending' && this.#policy.pendingTtlMs > 0 && key.createdAt + this.#policy.pendingTtlMs <= now) return undefined;
    if (key.expiresAt !== null && key.expiresAt <= now) return 'expired';
    return key.state;
  }

  async #live(service: string, kid: string): Promise<{ key: StoredKey; state: LiveState } | { key: StoredKey | undefined; state: undefined }> {
    const key = await this.#store.get(service, kid);
    const state = key && this.liveState(key);
    return state ? { key: key!, state } : { key, state: undefined };
  }

  /**
   * Runs read-decide-write until the write's conditions hold. Changes on this replica are
   * serialised per key by the caller, so a conflict means another replica wrote the key: retry
   * after a short random pause.
   */
  async #retrying<T>(attempt: () => Promise<{ changes: KeyChange[]; service: string; result: T } | { done: T }>): Promise<T> {
    for (let i = 0; i < maxCasAttempts; i++) {
      const plan = await attempt();
      if ('done' in plan) return plan.done;
      try {
        if (await this.#store.commit(plan.service, plan.changes, this.#policy.pendingLimits)) return plan.result;
      } catch (error) {
        if (error instanceof PendingKeyLimitError) this.#logPendingLimit(error);
        throw error;
      }
      await new Promise((resolve) => setTimeout(resolve, Math.random() * 5 * (i + 1)));
    }
    throw new KeyRegistryError(503, 'busy', 'too many concurrent changes to this key; retry');
  }

  /** GET /services/{service}/keys/{kid}: the JWK and how long it may be cached. */
  async getKey(service: string, kid: string): Promise<{ jwk: PublicJwk; maxAgeSeconds: number }> {
    checkName('service', service);
    checkName('kid', kid);
    const now = this.#clock();
    const { key, state } = await this.#live(service, kid);
    if (!key || !state) throw new KeyNotFoundError(service, kid);
    if (state === 'pending') throw new KeyPendingError(service, kid);
    if (state === 'expired') throw new KeyExpiredError(service, kid);
    const untilExpiry = key.expiresAt === null ? oneDaySeconds : Math.floor((key.expiresAt - now) / 1000);
    return { jwk: key.jwk, maxAgeSeconds: Math.max(0, Math.min(oneDaySeconds, untilExpiry)) };
  }

  /** GET /services/{service}/keys: approved, unexpired keys; an unknown service has none. */
  async listKeys(service: string): Promise<PublicJwk[]> {
    checkName('service', service);
    const now = this.#clock();
    const keys = await this.#store.listService(service);
    return keys
      .filter((key) => this.liveState(key, now) === 'approved')
      .sort((a, b) => a.createdAt - b.createdAt || a.kid.localeCompare(b.kid))
      .map((key) => key.jwk);
  }

  /**
   * Approved, unexpired keys of one service, or of every service when `service` is undefined
   * (for JWK sets). Pending, purged and expired keys are left out.
   */
  async approvedKeys(service?: string): Promise<Array<{ service: string; jwk: PublicJwk; createdAt: number; expiresAt: number | null }>> {
    if (service !== undefined) checkName('service', service);
    const keys = service === undefined ? await this.#store.listAll() : await this.#store.listService(service);
    const now = this.#clock();
    return keys
      .filter((key) => this.liveState(key, now) === 'approved')
      .map((key) => ({ service: key.service, jwk: key.jwk, createdAt: key.createdAt, expiresAt: key.expiresAt }));
  }

  async #claim(service: string, jti: string, deadAt: number): Promise<void> {
    if (!(await this.#store.claimTokenId(service, jti, deadAt))) {
      throw new BadRequestError('invalid token: "jti" was already used', 'token_replayed');
    }
  }

  /** PUT /services/{service}/keys/{kid}: a new self-signed key, a refresh of it, or a rotation signed by an approved key. */
  async publish(request: PublishRequest): Promise<PublishResult> {
    const service = checkName('service', request.service);
    const kid = checkName('kid', request.kid);
    const now = this.#clock();
    const expiresAt = parseExpiration(request.expiration, now);
    const rotationSeconds = parseRotation(request.rotation);
    const token = bearerToken(request.authorization);
    const jwk = parsePublicJwk(request.body, kid);
    const signer = signerKid(token);

    if (signer === undefined || signer === kid) {
      const verified = await verifyRegistryToken(token, jwk, service, this.#policy, now);
      await this.#claim(service, verified.jti, verified.deadAt);
      const result = await this.#exclusive(service, [kid], () => this.#retrying<PublishResult>(async () => {
        const current = await this.#live(service, kid);
        const at = this.#clock();
        if (!current.state) {
          const approved = this.#policy.autoApprove(service);
          const next: StoredKey = {
            service, kid, jwk, state: approved ? 'approved' : 'pending', createdAt: at, expiresAt,
            approvedAt: approved ? at : null, approvedBy: approved ? 'auto' : null, rotationSeconds, revision: randomUUID(),
          };
          return { service, changes: [{ kid, expectedRevision: current.key?.revision ?? null, next }], result: { status: 202, outcome: approved ? 'auto-approved' : 'pending' } };
        }
        const existing = current.key;
        if (!sameKey(existing.jwk, jwk)) throw new BadRequestError(`key id ${JSON.stringify(kid)} is already registered for a different key`, 'key_conflict');
        if (current.state === 'expired') throw new KeyExpiredError(service, kid);
        // The holder of the key may change its expiration: rotating to a new key could do as much.
        const next: StoredKey = { ...existing, expiresAt, rotationSeconds, revision: randomUUID() };
        return { service, changes: [{ kid, expectedRevision: existing.revision, next }], result: { status: current.state === 'approved' ? 200 : 202, outcome: 'refreshed' } };
      }));
      this.#logger.info('key registry: key published', { service, kid, outcome: result.outcome });
      return result;
    }

    const signing = await this.#live(service, signer);
    if (signing.state !== 'approved') throw new ForbiddenError(`key ${JSON.stringify(signer)} is not an approved, unexpired key of service ${JSON.stringify(service)}`);
    const verified = await verifyRegistryToken(token, signing.key.jwk, service, this.#policy, now);
    await this.#claim(service, verified.jti, verified.deadAt);
    const result = await this.#exclusive(service, [signer, kid], () => this.#retrying<PublishResult>(async () => {
      const [signerNow, target] = await Promise.all([this.#live(service, signer), this.#live(service, kid)]);
      if (signerNow.state !== 'approved' || !sameKey(signerNow.key.jwk, signing.key.jwk)) {
        throw new ForbiddenError(`key ${JSON.stringify(signer)} is no longer an approved, unexpired key of service ${JSON.stringify(service)}`);
      }
      if (target.state) throw new BadRequestError(`key id ${JSON.stringify(kid)} is already registered`, 'key_conflict');
      const at = this.#clock();
      const next: StoredKey = {
        service, kid, jwk, state: 'approved', createdAt: at, expiresAt, approvedAt: at, approvedBy: `rotation:${signer}`, rotationSeconds, revision: randomUUID(),
      };
      return {
        service,
        changes: [
          { kid: signer, expectedRevision: signerNow.key.revision, next: null },
          { kid, expectedRevision: target.key?.revision ?? null, next },
        ],
        result: { status: 200, outcome: 'rotated' },
      };
    }));
    this.#logger.info('key registry: key rotated', { service, kid, replaced: signer });
    return result;
  }

  /** DELETE /services/{service}/keys/{kid}, signed by that key or by an approved key of the service. */
  async remove(request: { service: string; kid: string; authorization: string | undefined }): Promise<void> {
    const service = checkName('service', request.service);
    const kid = checkName('kid', request.kid);
    const now = this.#clock();
    const token = bearerToken(request.authorization);
    const signer = signerKid(token);
    if (signer === undefined) throw new BadRequestError('invalid token: the header needs the "kid" of the signing key', 'invalid_token');
    let signingJwk: PublicJwk;
    if (signer === kid) {
      const target = await this.#live(service, kid);
      if (!target.state) throw new KeyNotFoundError(service, kid);
      signingJwk = target.key.jwk;
    } else {
      const signing = await this.#live(service, signer);
      if (signing.state !== 'approved') throw new ForbiddenError(`key ${JSON.stringify(signer)} is not an approved, unexpired key of service ${JSON.stringify(service)}`);
      signingJwk = signing.key.jwk;
    }
    const verified = await verifyRegistryToken(token, signingJwk, service, this.#policy, now);
    await this.#claim(service, verified.jti, verified.deadAt);
    await this.#exclusive(service, [kid], () => this.#retrying<void>(async () => {
      const target = await this.#live(service, kid);
      if (!target.state) throw new KeyNotFoundError(service, kid);
      if (signer === kid && !sameKey(target.key.jwk, signingJwk)) throw new ForbiddenError('the key changed while it was being deleted');
      return { service, changes: [{ kid, expectedRevision: target.key.revision, next: null }], result: undefined };
    }));
    this.#logger.info('key registry: key deleted', { service, kid, signer });
  }

  info(key: StoredKey, state: LiveState): KeyInfo {
    return {
      service: key.service, kid: key.kid, state, kty: key.jwk.kty, alg: key.jwk.alg,
      createdAt: iso(key.createdAt)!, expiresAt: iso(key.expiresAt), approvedAt: iso(key.approvedAt), approvedBy: key.approvedBy,
      rotationSeconds: key.rotationSeconds, jwk: key.jwk,
    };
  }

  /** Admin: every key (purged ones excepted), optionally of one service and in one state. */
  async adminList(filter: { service?: string | undefined; state?: LiveState | undefined } = {}): Promise<KeyInfo[]> {
    if (filter.service !== undefined) checkName('service', filter.service);
    const now = this.#clock();
    const keys = filter.service !== undefined ? await this.#store.listService(filter.service) : await this.#store.listAll();
    const infos: KeyInfo[] = [];
    for (const key of keys) {
      const state = this.liveState(key, now);
      if (state && (filter.state === undefined || filter.state === state)) infos.push(this.info(key, state));
    }
    return infos.sort((a, b) => a.service.localeCompare(b.service) || a.createdAt.localeCompare(b.createdAt) || a.kid.localeCompare(b.kid));
  }

  async adminGet(service: string, kid: string): Promise<KeyInfo> {
    checkName('service', service);
    checkName('kid', kid);
    const { key, state } = await this.#live(service, kid);
    if (!key || !state) throw new KeyNotFoundError(service, kid);
    return this.info(key, state);
  }

  /** Admin: approves a pending key; approving an approved key changes nothing. */
  async approve(service: string, kid: string): Promise<KeyInfo> {
    checkName('service', service);
    checkName('kid', kid);
    const info = await this.#exclusive(service, [kid], () => this.#retrying<KeyInfo>(async () => {
      const { key, state } = await this.#live(service, kid);
      if (!key || !state) throw new KeyNotFoundError(service, kid);
      if (state === 'expired') throw new KeyExpiredError(service, kid);
      if (state === 'approved') return { done: this.info(key, state) };
      const at = this.#clock();
      const next: StoredKey = { ...key, state: 'approved', approvedAt: at, approvedBy: 'admin', revision: randomUUID() };
      return { service, changes: [{ kid, expectedRevision: key.revision, next }], result: this.info(next, 'approved') };
    }));
    this.#logger.info('key registry: key approved', { service, kid });
    return info;
  }

  /** Admin: removes a key in any state; verifiers then get 404 for it (once their cached copy expires). */
  async revoke(service: string, kid: string): Promise<void> {
    checkName('service', service);
    checkName('kid', kid);
    await this.#exclusive(service, [kid], () => this.#retrying<void>(async () => {
      const { key, state } = await this.#live(service, kid);
      if (!key || !state) throw new KeyNotFoundError(service, kid);
      return { service, changes: [{ kid, expectedRevision: key.revision, next: null }], result: undefined };
    }));
    this.#logger.info('key registry: key revoked', { service, kid });
  }

  /** Deletes unapproved keys past pending_ttl and expired keys past expired_retention; resolves how many. */
  async sweep(): Promise<number> {
    const now = this.#clock();
    let purged = 0;
    for (const key of await this.#store.listAll()) {
      const stalePending = key.state === 'pending' && this.#policy.pendingTtlMs > 0 && key.createdAt + this.#policy.pendingTtlMs <= now;
      const longExpired = key.expiresAt !== null && this.#policy.expiredRetentionMs > 0 && key.expiresAt + this.#policy.expiredRetentionMs <= now;
      if (!stalePending && !longExpired) continue;
      if (await this.#store.commit(key.service, [{ kid: key.kid, expectedRevision: key.revision, next: null }])) {
        purged++;
        this.#logger.info('key registry: key purged', { service: key.service, kid: key.kid, reason: stalePending ? 'never approved' : 'expired' });
      }
    }
    return purged;
  }
}

/** `dev-*`, `test?` or a plain name → a predicate on service names. */
export function serviceMatcher(patterns: readonly string[]): (service: string) => boolean {
  const expressions = patterns.map(
    (pattern) => new RegExp(`^${pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`),
  );
  return (service) => expressions.some((expression) => expression.test(service));
}
