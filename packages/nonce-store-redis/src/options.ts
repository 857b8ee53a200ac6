import { readFileSync } from 'node:fs';
import path from 'node:path';
import { ConfigError, toDuration, type ComponentContext } from '@jwtproxy/core';

/** A Redis node, Sentinel or cluster seed. */
export interface RedisEndpoint {
  host: string;
  port: number;
}

/** TLS towards Redis. The system roots are trusted unless `ca` is given. */
export interface RedisTlsOptions {
  /** PEM certificate(s) to trust instead of the system roots. */
  ca?: string | Buffer | Array<string | Buffer>;
  /** Skip certificate verification (test set-ups only). Default false. */
  insecureSkipVerify?: boolean;
  /** Name to verify the certificate against, when it differs from the host. */
  serverName?: string;
}

/** Options of `RedisNonceStore`, typed for programmatic use; the YAML form is parsed by `parseRedisNonceStoreOptions`. */
export interface RedisNonceStoreOptions {
  /** `redis://[[username]:password@]host[:port][/db]` or `rediss://…` (TLS). Not with `host`/`port`, `sentinels` or `cluster`. */
  url?: string;
  /** Default 127.0.0.1 when neither url, sentinels nor cluster is given. */
  host?: string;
  /** Default 6379. */
  port?: number;
  username?: string;
  password?: string;
  /** Database number, default 0 (not with cluster). */
  db?: number;
  /** true: TLS with the system roots; an object: TLS with these settings. */
  tls?: boolean | RedisTlsOptions;
  /** Prefix of every nonce key; default `jwtproxy:nonce:`. */
  keyPrefix?: string;
  /** Longest a claim waits for Redis before failing closed, ms; default 250. */
  commandTimeoutMs?: number;
  /** Longest one connection attempt waits, ms; default 2000. */
  connectTimeoutMs?: number;
  /** Longest wait between two reconnection attempts, ms; default 1000. */
  reconnectMaxDelayMs?: number;
  /** Sentinels to ask for the master `name`. */
  sentinels?: RedisEndpoint[];
  /** Master name, with `sentinels`. */
  name?: string;
  sentinelUsername?: string;
  sentinelPassword?: string;
  /** Seed nodes of a Redis Cluster. */
  cluster?: RedisEndpoint[];
}

export const DEFAULT_KEY_PREFIX = 'jwtproxy:nonce:';
export const DEFAULT_COMMAND_TIMEOUT_MS = 250;
export const DEFAULT_CONNECT_TIMEOUT_MS = 2000;
export const DEFAULT_RECONNECT_MAX_DELAY_MS = 1000;

const knownYamlOptions = new Set([
  'url',
  'host',
  'port',
  'username',
  'password',
  'db',
  'tls',
  'key_prefix',
  'command_timeout',
  'connect_timeout',
  'reconnect_max_delay',
  'sentinels',
  'name',
  'sentinel_username',
  'sentinel_password',
  'cluster',
]);

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  return typeof value === 'string' ? JSON.stringify(value) : typeof value;
}

function optionalString(options: Record<string, unknown>, key: string, where = key): string | undefined {
  const value = options[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'string') throw new ConfigError(where, `must be a string, got ${describe(value)}`);
  return value;
}

function nonEmptyString(options: Record<string, unknown>, key: string, where = key): string | undefined {
  const value = optionalString(options, key, where);
  if (value === '') throw new ConfigError(where, 'must not be empty');
  return value;
}

function port(value: unknown, where: string): number {
  if (typeof value === 'string' && /^\d+$/.test(value)) value = Number(value);
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > 65535) {
    throw new ConfigError(where, `must be a port number (1-65535), got ${describe(value)}`);
  }
  return value;
}

function database(value: unknown, where: string): number {
  if (typeof value === 'string' && /^\d+$/.test(value)) value = Number(value);
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) {
    throw new ConfigError(where, `must be a database number (0 or more), got ${describe(value)}`);
  }
  return value;
}

function positiveDuration(options: Record<string, unknown>, key: string): number | undefined {
  const value = options[key];
  if (value === undefined || value === null) return undefined;
  let ms: number;
  try {
    ms = toDuration(value);
  } catch {
    throw new ConfigError(key, `must be a duration such as "250ms" or "2s", got ${describe(value)}`);
  }
  if (!(ms > 0)) throw new ConfigError(key, `must be longer than 0, got ${describe(value)}`);
  return ms;
}

function endpoints(value: unknown, where: string, defaultPort: number): RedisEndpoint[] {
  if (!Array.isArray(value) || value.length === 0) {
    throw new ConfigError(where, `must be a non-empty list of {host, port}, got ${describe(value)}`);
  }
  return value.map((entry: unknown, index) => {
    const at = `${where}[${index}]`;
    if (!isRecord(entry)) throw new ConfigError(at, `must be {host, port}, got ${describe(entry)}`);
    for (const key of Object.keys(entry)) {
      if (key !== 'host' && key !== 'port') throw new ConfigError(`${at}.${key}`, 'unknown option (expected host, port)');
    }
    const host = nonEmptyString(entry, 'host', `${at}.host`);
    if (host === undefined) throw new ConfigError(`${at}.host`, 'is required');
    return { host, port: entry.port === undefined ? defaultPort : port(entry.port, `${at}.port`) };
  });
}

function tlsOptions(value: unknown, baseDir: string): boolean | RedisTlsOptions | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'boolean') return value;
  if (!isRecord(value)) throw new ConfigError('tls', `must be true, false or {ca_file, insecure_skip_verify, server_name}, got ${describe(value)}`);
  for (const key of Object.keys(value)) {
    if (!['ca_file', 'insecure_skip_verify', 'server_name'].includes(key)) {
      throw new ConfigError(`tls.${key}`, 'unknown option (expected ca_file, insecure_skip_verify, server_name)');
    }
  }
  const tls: RedisTlsOptions = {};
  const caFile = nonEmptyString(value, 'ca_file', 'tls.ca_file');
  if (caFile !== undefined) {
    const file = path.resolve(baseDir, caFile);
    let pem: string;
    try {
      pem = readFileSync(file, 'utf8');
    } catch (error) {
      throw new ConfigError('tls.ca_file', `cannot read ${file}: ${(error as Error).message}`);
    }
    if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new ConfigError('tls.ca_file', `${file} holds no PEM certificate`);
    tls.ca = pem;
  }
  const skip = value.insecure_skip_verify;
  if (skip !== undefined && skip !== null) {
    if (typeof skip !== 'boolean') throw new ConfigError('tls.insecure_skip_verify', `must be true or false, got ${describe(skip)}`);
    tls.insecureSkipVerify = skip;
  }
  const serverName = nonEmptyString(value, 'server_name', 'tls.server_name');
  if (serverName !== undefined) tls.serverName = serverName;
  return tls;
}

/** What a `redis://` or `rediss://` URL says. */
interface ParsedUrl {
  host: string;
  port: number;
  tls: boolean;
  username?: string;
  password?: string;
  db?: number;
}

function parseRedisUrl(text: string): ParsedUrl {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    // Never echo the text: it may hold a password.
    throw new ConfigError('url', 'is not a URL (expected redis://[[username]:password@]host[:port][/db] or rediss://…)');
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') {
    throw new ConfigError('url', `scheme must be redis: or rediss:, got ${url.protocol}`);
  }
  if (!url.hostname) throw new ConfigError('url', 'has no host');
  if (url.search || url.hash) throw new ConfigError('url', 'must not have a query or fragment; use the options db, tls, … instead');
  const parsed: ParsedUrl = {
    // URL keeps IPv6 literals in brackets; net.connect wants them bare.
    host: url.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: url.port ? Number(url.port) : 6379,
    tls: url.protocol === 'rediss:',
  };
  if (url.username) parsed.username = decodeURIComponent(url.username);
  if (url.password) parsed.password = decodeURIComponent(url.password);
  const dbPath = url.pathname.replace(/^\//, '');
  if (dbPath !== '') {
    if (!/^\d+$/.test(dbPath)) throw new ConfigError('url', `path must be a database number, got /${dbPath}`);
    parsed.db = Number(dbPath);
  }
  return parsed;
}

/**
 * Turns the YAML `nonce_storage.options` of type `redis` into typed options.
 * Every mistake is a ConfigError naming the option (relative to `options`).
 */
export function parseRedisNonceStoreOptions(options: Record<string, unknown>, context: Pick<ComponentContext, 'baseDir'>): RedisNonceStoreOptions {
  if (!isRecord(options)) throw new ConfigError('', `options must be a mapping, got ${describe(options)}`);
  for (const key of Object.keys(options)) {
    if (!knownYamlOptions.has(key)) throw new ConfigError(key, `unknown option (known: ${[...knownYamlOptions].join(', ')})`);
  }
  const result: RedisNonceStoreOptions = {};
  const url = nonEmptyString(options, 'url');
  if (url !== undefined) result.url = url;
  const host = nonEmptyString(options, 'host');
  if (host !== undefined) result.host = host;
  if (options.port !== undefined && options.port !== null) result.port = port(options.port, 'port');
  const username = optionalString(options, 'username');
  if (username !== undefined) result.username = username;
  const password = optionalString(options, 'password');
  if (password !== undefined) result.password = password;
  if (options.db !== undefined && options.db !== null) result.db = database(options.db, 'db');
  const tls = tlsOptions(options.tls, context.baseDir);
  if (tls !== undefined) result.tls = tls;
  const keyPrefix = optionalString(options, 'key_prefix');
  if (keyPrefix !== undefined) result.keyPrefix = keyPrefix;
  const commandTimeout = positiveDuration(options, 'command_timeout');
  if (commandTimeout !== undefined) result.commandTimeoutMs = commandTimeout;
  const connectTimeout = positiveDuration(options, 'connect_timeout');
  if (connectTimeout !== undefined) result.connectTimeoutMs = connectTimeout;
  const reconnectMaxDelay = positiveDuration(options, 'reconnect_max_delay');
  if (reconnectMaxDelay !== undefined) result.reconnectMaxDelayMs = reconnectMaxDelay;
  if (options.sentinels !== undefined && options.sentinels !== null) result.sentinels = endpoints(options.sentinels, 'sentinels', 26379);
  const name = nonEmptyString(options, 'name');
  if (name !== undefined) result.name = name;
  const sentinelUsername = optionalString(options, 'sentinel_username');
  if (sentinelUsername !== undefined) result.sentinelUsername = sentinelUsername;
  const sentinelPassword = optionalString(options, 'sentinel_password');
  if (sentinelPassword !== undefined) result.sentinelPassword = sentinelPassword;
  if (options.cluster !== undefined && options.cluster !== null) result.cluster = endpoints(options.cluster, 'cluster', 6379);
  validateRedisNonceStoreOptions(result, {
    url: 'url',
    host: 'host',
    port: 'port',
    username: 'username',
    password: 'password',
    db: 'db',
    tls: 'tls',
    name: 'name',
    sentinels: 'sentinels',
    sentinelUsername: 'sentinel_username',
    sentinelPassword: 'sentinel_password',
    cluster: 'cluster',
    commandTimeoutMs: 'command_timeout',
    connectTimeoutMs: 'connect_timeout',
    reconnectMaxDelayMs: 'reconnect_max_delay',
  });
  return result;
}

type OptionNames = Partial<Record<keyof RedisNonceStoreOptions, string>>;

/** The name an option has in the user's eyes: YAML snake_case when parsed from YAML, else the property name. */
function nameOf(names: OptionNames, key: keyof RedisNonceStoreOptions): string {
  return names[key] ?? key;
}

/** Checks that the options fit together; throws ConfigError. Used for both YAML and programmatic options. */
export function validateRedisNonceStoreOptions(options: RedisNonceStoreOptions, names: OptionNames = {}): void {
  const n = (key: keyof RedisNonceStoreOptions): string => nameOf(names, key);
  const given = (key: keyof RedisNonceStoreOptions): boolean => options[key] !== undefined;
  const modes = (['url', 'sentinels', 'cluster'] as const).filter(given);
  if (modes.length > 1) throw new ConfigError(n(modes[1]!), `cannot be combined with ${n(modes[0]!)}`);
  if (modes.length === 1) {
    for (const key of ['host', 'port'] as const) {
      if (given(key)) throw new ConfigError(n(key), `cannot be combined with ${n(modes[0]!)}`);
    }
  }
  if (given('name') && !given('sentinels')) throw new ConfigError(n('name'), `is the Sentinel master name and needs ${n('sentinels')}`);
  if (given('sentinels') && !given('name')) throw new ConfigError(n('name'), `is required with ${n('sentinels')} (the master name the Sentinels know)`);
  for (const key of ['sentinelUsername', 'sentinelPassword'] as const) {
    if (given(key) && !given('sentinels')) throw new ConfigError(n(key), `needs ${n('sentinels')}`);
  }
  if (given('cluster') && options.db !== undefined && options.db !== 0) throw new ConfigError(n('db'), 'must be 0 with a cluster (Redis Cluster has one database)');
  if (options.url !== undefined) {
    const parsed = parseRedisUrl(options.url);
    for (const key of ['username', 'password', 'db'] as const) {
      if (parsed[key] !== undefined && given(key)) throw new ConfigError(n(key), `is given both in ${n('url')} and as ${n(key)}`);
    }
    if (parsed.tls && options.tls === false) throw new ConfigError(n('tls'), `is false but ${n('url')} is rediss:// (TLS)`);
  }
  const checkPositive = (key: 'commandTimeoutMs' | 'connectTimeoutMs' | 'reconnectMaxDelayMs'): void => {
    const value = options[key];
    if (value !== undefined && !(typeof value === 'number' && Number.isFinite(value) && value > 0)) {
      throw new ConfigError(n(key), `must be longer than 0, got ${describe(value)}`);
    }
  };
  checkPositive('commandTimeoutMs');
  checkPositive('connectTimeoutMs');
  checkPositive('reconnectMaxDelayMs');
  if (options.port !== undefined) port(options.port, n('port'));
  if (options.db !== undefined) database(options.db, n('db'));
}

/** Where the store connects, with the URL folded in; internal to the package. */
export interface ResolvedConnection {
  mode: 'standalone' | 'sentinel' | 'cluster';
  host: string;
  port: number;
  username: string | undefined;
  password: string | undefined;
  db: number;
  tls: RedisTlsOptions | undefined;
}

export function resolveConnection(options: RedisNonceStoreOptions): ResolvedConnection {
  const parsed = options.url !== undefined ? parseRedisUrl(options.url) : undefined;
  const tlsSetting = options.tls ?? (parsed?.tls ? true : undefined);
  return {
    mode: options.cluster ? 'cluster' : options.sentinels ? 'sentinel' : 'standalone',
    host: parsed?.host ?? options.host ?? '127.0.0.1',
    port: parsed?.port ?? options.port ?? 6379,
    username: options.username ?? parsed?.username,
    password: options.password ?? parsed?.password,
    db: options.db ?? parsed?.db ?? 0,
    tls: tlsSetting === true ? {} : tlsSetting === false ? undefined : tlsSetting,
  };
}
