import { Redis, type RedisOptions } from 'ioredis';
import type { Logger } from '@jwtproxy/core';
import { StorageUnavailableError } from './errors.js';
import type { KeyChange, KeyStore, StoredKey } from './store.js';

export interface RedisKeyStoreOptions {
  /** `redis://[user:password@]host:port[/db]` or `rediss://…`; default `redis://127.0.0.1:6379`. */
  url?: string;
  /** Prefix of every Redis key this store uses; default `jwtproxy:keyregistry:`. */
  keyPrefix?: string;
  /** A command that takes longer fails (and the request answers 503); default 2000 ms. */
  commandTimeoutMs?: number;
  logger?: Logger;
}

/**
 * Checks every expected revision, then applies every write, as one atomic step.
 * KEYS[1] the service's hash (kid → JSON), KEYS[2] the set of services.
 * ARGV[1] the service, then triples: kid, expected revision ('' = must be absent), new JSON ('' = delete).
 */
const commitScript = `
for i = 2, #ARGV, 3 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  if ARGV[i + 1] == '' then
    if current then return 0 end
  else
    if not current then return 0 end
    local ok, record = pcall(cjson.decode, current)
    if not ok or type(record) ~= 'table' or record['revision'] ~= ARGV[i + 1] then return 0 end
  end
end
for i = 2, #ARGV, 3 do
  if ARGV[i + 2] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
  end
end
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
else
  redis.call('SADD', KEYS[2], ARGV[1])
end
return 1
`;

type RedisWithCommit = Redis & { registryCommit(hashKey: string, servicesKey: string, ...args: string[]): Promise<number> };

/**
 * Keys in Redis, so that several registry replicas share them. Each service is one hash
 * (kid → JSON record); every change is a Lua script that compares revisions and writes in one
 * step, so concurrent writers on any replica never lose or corrupt a key. Token ids are
 * `SET NX PX` keys that Redis expires by itself.
 */
export class RedisKeyStore implements KeyStore {
  readonly #redis: RedisWithCommit;
  readonly #prefix: string;
  readonly #logger: Logger | undefined;
  #lastErrorLog = 0;

  private constructor(redis: Redis, prefix: string, logger: Logger | undefined) {
    this.#redis = redis as RedisWithCommit;
    this.#prefix = prefix;
    this.#logger = logger;
    this.#redis.defineCommand('registryCommit', { numberOfKeys: 2, lua: commitScript });
  }

  /** Connects and checks the connection with a PING; rejects with a clear message when Redis cannot be reached. */
  static async connect(options: RedisKeyStoreOptions = {}): Promise<RedisKeyStore> {
    const url = options.url ?? 'redis://127.0.0.1:6379';
    const settings: RedisOptions = {
      lazyConnect: true,
      commandTimeout: options.commandTimeoutMs ?? 2000,
      maxRetriesPerRequest: 1,
      connectTimeout: 5000,
      retryStrategy: (attempt) => Math.min(attempt * 200, 2000),
    };
    const redis = new Redis(url, settings);
    const store = new RedisKeyStore(redis, options.keyPrefix ?? 'jwtproxy:keyregistry:', options.logger);
    redis.on('error', (error: Error) => store.#logError(error));
    try {
      await redis.connect();
      await redis.ping();
    } catch (error) {
      redis.disconnect();
      throw new Error(`could not connect to Redis at ${redactedUrl(url)}: ${(error as Error).message}`, { cause: error });
    }
    return store;
  }

  #logError(error: Error): void {
    const now = Date.now();
    if (now - this.#lastErrorLog < 10_000) return;
    this.#lastErrorLog = now;
    this.#logger?.error('key registry storage: Redis error', { error: error.message });
  }

  #hashKey(service: string): string {
    return `${this.#prefix}keys:${service}`;
  }

  get #servicesKey(): string {
    return `${this.#prefix}services`;
  }

  async #ask<T>(work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (error) {
      this.#logError(error as Error);
      throw new StorageUnavailableError(`key storage unavailable: ${(error as Error).message}`, { cause: error });
    }
  }

  #parse(value: string): StoredKey | undefined {
    try {
      return JSON.parse(value) as StoredKey;
    } catch {
      this.#logger?.warn('key registry storage: skipping an unreadable record');
      return undefined;
    }
  }

  async get(service: string, kid: string): Promise<StoredKey | undefined> {
    const value = await this.#ask(() => this.#redis.hget(this.#hashKey(service), kid));
    return value === null ? undefined : this.#parse(value);
  }

  async listService(service: string): Promise<StoredKey[]> {
    const values = await this.#ask(() => this.#redis.hvals(this.#hashKey(service)));
    return values.map((value) => this.#parse(value)).filter((key): key is StoredKey => key !== undefined);
  }

  async listAll(): Promise<StoredKey[]> {
    const services = await this.#ask(() => this.#redis.smembers(this.#servicesKey));
    const lists = await Promise.all(services.map((service) => this.listService(service)));
    return lists.flat();
  }

  async commit(service: string, changes: readonly KeyChange[]): Promise<boolean> {
    const args = changes.flatMap((change) => [change.kid, change.expectedRevision ?? '', change.next ? JSON.stringify(change.next) : '']);
    const applied = await this.#ask(() => this.#redis.registryCommit(this.#hashKey(service), this.#servicesKey, service, ...args));
    return applied === 1;
  }

  async claimTokenId(service: string, jti: string, deadAt: number): Promise<boolean> {
    const ttl = Math.max(1, Math.ceil(deadAt - Date.now()));
    // The service's length keeps `a:b` + `c` apart from `a` + `b:c`.
    const key = `${this.#prefix}jti:${service.length}:${service}:${jti}`;
    const answer = await this.#ask(() => this.#redis.set(key, '1', 'PX', ttl, 'NX'));
    return answer === 'OK';
  }

  async close(): Promise<void> {
    try {
      await this.#redis.quit();
    } catch {
      this.#redis.disconnect();
    }
  }
}

function redactedUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return 'the configured URL';
  }
}
