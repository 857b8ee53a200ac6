import { Redis, type RedisOptions } from 'ioredis';
import type { Logger } from '@jwtproxy/core';
import { PendingKeyLimitError, StorageUnavailableError } from './errors.js';
import type { KeyChange, KeyStore, PendingLimits, StoredKey } from './store.js';

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
 * Checks every expected revision and the caps on pending keys, then applies every write, as one
 * atomic step. KEYS[1] the service's hash (kid → JSON), KEYS[2] the set of services, KEYS[3] the
 * hash of pending-key counts (service → count), KEYS[4] the registry's pending-key count.
 * ARGV[1] the service, ARGV[2] and ARGV[3] the caps per service and in all ('' = none), then
 * quadruples: kid, expected revision ('' = must be absent), new JSON ('' = delete), whether the
 * new record is pending ('1'/'0'). Returns 1 applied, 0 a revision did not match, -1/-2 the
 * service's/the registry's cap would be exceeded.
 */
const commitScript = `
local delta = 0
for i = 4, #ARGV, 4 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  local wasPending = 0
  if ARGV[i + 1] == '' then
    if current then return 0 end
  else
    if not current then return 0 end
    local ok, record = pcall(cjson.decode, current)
    if not ok or type(record) ~= 'table' or record['revision'] ~= ARGV[i + 1] then return 0 end
    if record['state'] == 'pending' then wasPending = 1 end
  end
  delta = delta + tonumber(ARGV[i + 3]) - wasPending
end
if delta > 0 then
  if ARGV[2] ~= '' and tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0') + delta > tonumber(ARGV[2]) then return -1 end
  if ARGV[3] ~= '' and tonumber(redis.call('GET', KEYS[4]) or '0') + delta > tonumber(ARGV[3]) then return -2 end
end
for i = 4, #ARGV, 4 do
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
if delta ~= 0 then
  if redis.call('HINCRBY', KEYS[3], ARGV[1], delta) <= 0 then redis.call('HDEL', KEYS[3], ARGV[1]) end
  redis.call('INCRBY', KEYS[4], delta)
end
return 1
`;

/**
 * Counts the pending keys of every service from the records, once per key prefix: data written
 * before the counts existed gets them. KEYS[1] the set of services, KEYS[2] the counts hash,
 * KEYS[3] the total, KEYS[4] the marker that the counts are kept; ARGV[1] the hash key prefix.
 */
const countScript = `
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
redis.call('DEL', KEYS[2])
local total = 0
for _, service in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local pending = 0
  for _, value in ipairs(redis.call('HVALS', ARGV[1] .. service)) do
    local ok, record = pcall(cjson.decode, value)
    if ok and type(record) == 'table' and record['state'] == 'pending' then pending = pending + 1 end
  end
  if pending > 0 then redis.call('HSET', KEYS[2], service, pending) end
  total = total + pending
end
redis.call('SET', KEYS[3], total)
redis.call('SET', KEYS[4], '1')
return 1
`;

type RedisWithCommit = Redis & {
  registryCommit(hashKey: string, servicesKey: string, pendingKey: string, pendingTotalKey: string, ...args: string[]): Promise<number>;
  registryCountPending(servicesKey: string, pendingKey: string, pendingTotalKey: string, markerKey: string, hashPrefix: string): Promise<number>;
};

/**
 * Keys in Redis, so that several registry replicas share them. Each service is one hash
 * (kid → JSON record); every change is a Lua script that compares revisions, checks the caps on
 * pending keys and writes in one step, so concurrent writers on any replica never lose or corrupt
 * a key nor pass a cap. Pending keys are counted per service (`pending` hash) and in all
 * (`pending-total`), kept by the same script, so no operation reads more than the keys it
 * changes. Token ids are `SET NX PX` keys that Redis expires by itself.
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
    this.#redis.defineCommand('registryCommit', { numberOfKeys: 4, lua: commitScript });
    this.#redis.defineCommand('registryCountPending', { numberOfKeys: 4, lua: countScript });
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
      await store.#countPendingOnce();
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

  get #pendingKey(): string {
    return `${this.#prefix}pending`;
  }

  get #pendingTotalKey(): string {
    return `${this.#prefix}pending-total`;
  }

  async #countPendingOnce(): Promise<void> {
    await this.#redis.registryCountPending(this.#servicesKey, this.#pendingKey, this.#pendingTotalKey, `${this.#prefix}pending-counted`, this.#hashKey(''));
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

  async commit(service: string, changes: readonly KeyChange[], limits?: PendingLimits): Promise<boolean> {
    const args = changes.flatMap((change) => [
      change.kid, change.expectedRevision ?? '', change.next ? JSON.stringify(change.next) : '', change.next?.state === 'pending' ? '1' : '0',
    ]);
    const caps = limits ? [String(limits.perService), String(limits.total)] : ['', ''];
    const applied = await this.#ask(() =>
      this.#redis.registryCommit(this.#hashKey(service), this.#servicesKey, this.#pendingKey, this.#pendingTotalKey, service, ...caps, ...args),
    );
    if (applied === -1) throw new PendingKeyLimitError('service', service, limits!.perService);
    if (applied === -2) throw new PendingKeyLimitError('total', service, limits!.total);
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
