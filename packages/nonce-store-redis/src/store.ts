import type { ConnectionOptions } from 'node:tls';
import { InvalidClaimError, NonceStoreUnavailableError, silentLogger, systemClock, type Clock, type Logger, type NonceStore, type UnixSeconds } from '@jwtproxy/core';
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';
import {
  DEFAULT_COMMAND_TIMEOUT_MS,
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_KEY_PREFIX,
  DEFAULT_RECONNECT_MAX_DELAY_MS,
  resolveConnection,
  validateRedisNonceStoreOptions,
  type RedisNonceStoreOptions,
  type RedisTlsOptions,
} from './options.js';

/**
 * A verifier accepts a token while its `exp` second has not passed, so the nonce must
 * outlive `exp` by up to one second; keeping it one second longer is harmless.
 */
const EXPIRY_GRACE_MS = 1000;

/** Besides the options, what the store needs from its surroundings. */
export interface RedisNonceStoreEnvironment {
  logger?: Logger;
  clock?: Clock;
}

type Availability = 'connecting' | 'available' | 'unavailable' | 'stopped';

function tlsConnectionOptions(tls: RedisTlsOptions | undefined): ConnectionOptions | undefined {
  if (!tls) return undefined;
  const options: ConnectionOptions = {};
  if (tls.ca !== undefined) options.ca = tls.ca;
  if (tls.insecureSkipVerify) options.rejectUnauthorized = false;
  if (tls.serverName !== undefined) options.servername = tls.serverName;
  return options;
}

function errorText(error: unknown): string {
  if (error instanceof AggregateError && error.errors.length) return errorText(error.errors[0]);
  if (error instanceof Error) return error.message || (error as NodeJS.ErrnoException).code || error.name;
  return String(error);
}

/**
 * Rejects with "Command timed out" when `answer` has not settled `ms` after the command went out.
 * Auto-pipelining sends the commands of one event-loop turn together from a setImmediate; the
 * clock starts in the immediate queued after it, that is once the command is written. When the
 * timer fires, one more pass of the event loop's I/O phase comes first (setImmediate again), so
 * that a reply Redis already sent is read before giving up. Under a burst of requests the event
 * loop can be busy for longer than the timeout; a clock started at the call, or checked before
 * the waiting socket data, would then refuse claims that Redis answered in a millisecond
 * (ioredis's own commandTimeout does exactly that).
 */
function withCommandTimeout<T>(answer: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  let settled = false;
  const timedOut = new Promise<never>((_, reject) => {
    setImmediate(() => {
      if (!settled) timer = setTimeout(() => setImmediate(() => reject(new Error('Command timed out'))), ms);
    });
  });
  return Promise.race([answer, timedOut]).finally(() => {
    settled = true;
    clearTimeout(timer);
  });
}

/**
 * Replay protection shared by every verifier that uses the same Redis: a `jti` is claimed
 * with one atomic `SET key 1 PX ttl NX`, so exactly one replica, once, gets true.
 *
 * Fails closed: when Redis is down, slow or unreachable, `claim` rejects with
 * NonceStoreUnavailableError (503) at once or within the command timeout; it never waits
 * for Redis to come back. The connection re-establishes itself in the background.
 */
export class RedisNonceStore implements NonceStore {
  readonly #client: Redis | Cluster;
  readonly #keyPrefix: string;
  readonly #commandTimeoutMs: number;
  readonly #clock: Clock;
  readonly #logger: Logger;
  readonly #target: string;
  #availability: Availability = 'connecting';
  /** Resolves when the first connection is ready or has failed; claims made before then wait for it. */
  readonly #firstAttempt: Promise<void>;
  #settleFirstAttempt: () => void = () => {};

  constructor(options: RedisNonceStoreOptions = {}, environment: RedisNonceStoreEnvironment = {}) {
    validateRedisNonceStoreOptions(options);
    this.#logger = environment.logger ?? silentLogger;
    this.#clock = environment.clock ?? systemClock;
    this.#keyPrefix = options.keyPrefix ?? DEFAULT_KEY_PREFIX;
    this.#commandTimeoutMs = options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
    this.#firstAttempt = new Promise((resolve) => (this.#settleFirstAttempt = resolve));

    const connection = resolveConnection(options);
    const reconnectMaxDelayMs = options.reconnectMaxDelayMs ?? DEFAULT_RECONNECT_MAX_DELAY_MS;
    // Capped exponential backoff from 50 ms; never give up.
    const retryStrategy = (attempt: number): number => Math.min(50 * 2 ** Math.min(attempt - 1, 16), reconnectMaxDelayMs);
    const common: RedisOptions = {
      username: connection.username,
      password: connection.password,
      // No ioredis commandTimeout: claim() applies its own (see withCommandTimeout).
      connectTimeout: options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
      // A SET NX sent again after a broken connection may have run the first time and would
      // then answer "already seen": refuse (503) rather than risk calling a fresh token a replay.
      autoResendUnfulfilledCommands: false,
      maxRetriesPerRequest: 0,
      connectionName: 'jwtproxy-nonce-store',
      // Claims made in the same event-loop turn go out in one write and their replies come back
      // in one read: under load, fewer system calls per request on both sides (bench: verifier-redis).
      enableAutoPipelining: true,
      tls: tlsConnectionOptions(connection.tls),
    };

    if (options.cluster) {
      const clusterOptions: ClusterOptions = {
        enableOfflineQueue: false,
        clusterRetryStrategy: retryStrategy,
        redisOptions: common,
      };
      this.#client = new Cluster(options.cluster, clusterOptions);
      this.#target = `cluster (seeds ${options.cluster.map((node) => `${node.host}:${node.port}`).join(', ')})`;
    } else if (options.sentinels) {
      this.#client = new Redis({
        ...common,
        db: connection.db,
        sentinels: options.sentinels,
        name: options.name,
        sentinelUsername: options.sentinelUsername,
        sentinelPassword: options.sentinelPassword,
        sentinelRetryStrategy: retryStrategy,
        // Sentinels reached over TLS when the data connection is TLS.
        enableTLSForSentinelMode: connection.tls !== undefined,
        sentinelTLS: tlsConnectionOptions(connection.tls),
        sentinelCommandTimeout: this.#commandTimeoutMs,
        enableOfflineQueue: false,
        retryStrategy,
      });
      this.#target = `sentinel master ${options.name} (sentinels ${options.sentinels.map((node) => `${node.host}:${node.port}`).join(', ')})`;
    } else {
      this.#client = new Redis({
        ...common,
        host: connection.host,
        port: connection.port,
        db: connection.db,
        enableOfflineQueue: false,
        retryStrategy,
      });
      this.#target = `${connection.host}:${connection.port}${connection.db ? `/${connection.db}` : ''}`;
    }

    // ioredis emits 'error' on every failed attempt; without a listener it would print each one.
    this.#client.on('error', (error: unknown) => this.#markUnavailable(error));
    this.#client.on('close', () => this.#markUnavailable(new Error('connection closed')));
    this.#client.on('ready', () => this.#markAvailable());
    // Cluster reports node failures separately; the cluster as a whole may still serve.
    if (this.#client instanceof Cluster) this.#client.on('node error', () => {});
    // The first connection attempt is bounded by the connect timeout.
    const firstTimer = setTimeout(() => this.#settleFirstAttempt(), (options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS) + 100);
    firstTimer.unref();
  }

  /** Where the store connects, for logs (no password). */
  get target(): string {
    return this.#target;
  }

  /** True while Redis answers, as far as the store knows. */
  get available(): boolean {
    return this.#availability === 'available';
  }

  /** Resolves once the first connection is ready (true) or has failed or timed out (false). */
  async ready(): Promise<boolean> {
    await this.#firstAttempt;
    return this.#availability === 'available';
  }

  async claim(jti: string, expiresAt: UnixSeconds): Promise<boolean> {
    // The verifier checked exp already; this only keeps a NaN from reaching Redis as a TTL.
    if (!Number.isFinite(expiresAt)) throw new InvalidClaimError('exp');
    if (this.#availability === 'connecting') {
      // Right after start-up, wait for the first connection rather than fail the first requests;
      // bounded by the command timeout like any claim.
      await Promise.race([this.#firstAttempt, new Promise((resolve) => setTimeout(resolve, this.#commandTimeoutMs).unref())]);
    }
    if (this.#availability === 'stopped') throw new NonceStoreUnavailableError({ cause: new Error('nonce store stopped') });
    const ttlMs = Math.max(1, Math.ceil(expiresAt * 1000 + EXPIRY_GRACE_MS - this.#clock()));
    let answer: string | null;
    try {
      answer = await withCommandTimeout(this.#client.set(this.#keyPrefix + jti, '1', 'PX', ttlMs, 'NX'), this.#commandTimeoutMs);
    } catch (error) {
      this.#markUnavailable(error);
      throw new NonceStoreUnavailableError({ cause: error });
    }
    this.#markAvailable();
    return answer === 'OK';
  }

  /**
   * Resolves when Redis answers a PING within the command timeout (the readiness probe); rejects
   * with NonceStoreUnavailableError when it does not, at once while the connection is down.
   */
  async ping(): Promise<void> {
    if (this.#availability === 'stopped') throw new NonceStoreUnavailableError({ cause: new Error('nonce store stopped') });
    try {
      await withCommandTimeout(this.#client.ping(), this.#commandTimeoutMs);
    } catch (error) {
      this.#markUnavailable(error);
      throw new NonceStoreUnavailableError({ cause: error });
    }
    this.#markAvailable();
  }

  /** Closes the connection: QUIT (letting claims in flight finish) until `deadline`, then drops it. */
  async stop(deadline?: number): Promise<void> {
    if (this.#availability === 'stopped') return;
    this.#availability = 'stopped';
    this.#settleFirstAttempt();
    const client = this.#client;
    if (client.status === 'end') return;
    const waitMs = Math.max(0, (deadline ?? Date.now() + this.#commandTimeoutMs) - Date.now());
    let timer: NodeJS.Timeout | undefined;
    const quitting = client.status === 'ready' ? client.quit().then(() => true, () => false) : Promise.resolve(false);
    const gaveUp = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), waitMs)));
    const quit = await Promise.race([quitting, gaveUp]);
    clearTimeout(timer);
    if (!quit) client.disconnect();
  }

  #markAvailable(): void {
    const before = this.#availability;
    if (before === 'available' || before === 'stopped') return;
    this.#availability = 'available';
    this.#settleFirstAttempt();
    if (before === 'unavailable') this.#logger.info('redis nonce store reconnected', { target: this.#target });
    else this.#logger.info('redis nonce store connected', { target: this.#target });
  }

  #markUnavailable(error: unknown): void {
    const before = this.#availability;
    if (before === 'unavailable' || before === 'stopped') return;
    this.#availability = 'unavailable';
    this.#settleFirstAttempt();
    this.#logger.warn('redis nonce store unavailable; verifier answers 503 until it reconnects', { target: this.#target, error: errorText(error) });
  }
}
