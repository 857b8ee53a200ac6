import { readFileSync } from 'node:fs';
import path from 'node:path';
import { ConfigError, describeValue, parseOptions, schema as s, type ComponentContext, type InferOutput } from '@jwtproxy/core';

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

/** A whole number written as a number or a string of digits (as in a URL), checked by `ok`. */
const digits = (ok: (value: unknown) => boolean, problem: string, description: string, typeText: string) =>
  s.pipe(
    s.union([s.number(), s.string()], (issue) => `${problem}, got ${describeValue(issue.input)}`),
    s.rawTransform<number | string, number>(({ dataset, addIssue, NEVER }) => {
      const value = typeof dataset.value === 'string' && /^\d+$/.test(dataset.value) ? Number(dataset.value) : dataset.value;
      if (ok(value)) return value as number;
      addIssue({ message: `${problem}, got ${describeValue(dataset.value)}` });
      return NEVER;
    }),
    s.description(description),
    s.metadata({ typeText }),
  );
const portNumber = (description: string) => digits(isPort, 'must be a port number (1-65535)', description, 'port (1-65535)');

function isPort(value: unknown): boolean {
  return typeof value === 'number' && Number.isInteger(value) && value >= 1 && value <= 65535;
}

function isDatabase(value: unknown): boolean {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0;
}

const nonEmpty = (description: string) => s.optional(s.pipe(s.string(), s.minLength(1), s.description(description)));
const text = (description: string) => s.optional(s.pipe(s.string(), s.description(description)));
const timeout = (description: string) => s.optional(s.pipe(s.duration('positive'), s.description(description)));
const endpoints = (defaultPort: number, description: string) =>
  s.optional(
    s.pipe(
      s.array(s.strictObject({ host: s.pipe(s.string(), s.minLength(1)), port: s.optional(portNumber(`Default ${defaultPort}.`), defaultPort) })),
      s.minLength(1, (issue) => `must be a non-empty list of {host, port}, got ${describeValue(issue.input)}`),
      s.description(description),
    ),
  );

/** `nonce_storage: {type: redis, options}` as YAML writes it. */
export const redisNonceStoreOptions = s.strictObject({
  url: s.optional(
    s.pipe(
      s.string(),
      s.minLength(1),
      s.rawCheck(({ dataset, addIssue }) => {
        if (!dataset.typed) return;
        try {
          parseRedisUrl(dataset.value);
        } catch (error) {
          addIssue({ message: (error as ConfigError).problem });
        }
      }),
      s.description('`redis://[[username]:password@]host[:port][/db]`, or `rediss://…` for TLS. Not with `host`/`port`, `sentinels` or `cluster`.'),
    ),
  ),
  host: nonEmpty('Default 127.0.0.1 when neither url, sentinels nor cluster is given.'),
  port: s.optional(portNumber('Default 6379.')),
  username: text('ACL user name.'),
  password: text('Password; never repeated in errors or logs.'),
  db: s.optional(digits(isDatabase, 'must be a database number (0 or more)', 'Database number, default 0; must be 0 with `cluster`.', 'integer ≥ 0')),
  tls: s.optional(
    s.pipe(
      s.union(
        [
          s.boolean(),
          s.strictObject({
            ca_file: nonEmpty('PEM file of the CA(s) to trust instead of the system roots, relative to the configuration file.'),
            insecure_skip_verify: s.optional(s.pipe(s.boolean(), s.description('Skip certificate verification (test set-ups only).'))),
            server_name: nonEmpty('Name to check the certificate against, when it differs from the host.'),
          }),
        ],
        (issue) => `must be true, false or {ca_file, insecure_skip_verify, server_name}, got ${describeValue(issue.input)}`,
      ),
      s.description('`true` for TLS with the system roots, or a mapping. On for `rediss://`.'),
    ),
  ),
  key_prefix: s.optional(s.pipe(s.string(), s.description('Prepended to every `jti`.')), DEFAULT_KEY_PREFIX),
  command_timeout: timeout('Longest a claim waits for Redis before it is refused (503). Default 250ms.'),
  connect_timeout: timeout('Longest one connection attempt waits. Default 2s.'),
  reconnect_max_delay: timeout('Reconnection attempts back off from 50 ms up to this, and never stop. Default 1s.'),
  sentinels: endpoints(26379, 'Sentinels to ask for the master `name`.'),
  name: nonEmpty('The master name the Sentinels monitor.'),
  sentinel_username: text('When the Sentinels require authentication.'),
  sentinel_password: text('When the Sentinels require authentication.'),
  cluster: endpoints(6379, 'Seed nodes of a Redis Cluster.'),
});

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

/** The YAML names of the options, for the cross-option checks. */
const yamlNames: OptionNames = {
  sentinelUsername: 'sentinel_username',
  sentinelPassword: 'sentinel_password',
  commandTimeoutMs: 'command_timeout',
  connectTimeoutMs: 'connect_timeout',
  reconnectMaxDelayMs: 'reconnect_max_delay',
  keyPrefix: 'key_prefix',
};

/**
 * Turns the YAML `nonce_storage.options` of type `redis` into typed options (`ca_file` read,
 * relative to `baseDir`). Every mistake is a ConfigError naming the option (relative to `options`).
 */
export function parseRedisNonceStoreOptions(options: unknown, context: Pick<ComponentContext, 'baseDir'>): RedisNonceStoreOptions {
  return redisOptionsFrom(parseOptions(redisNonceStoreOptions, options), context);
}

/** The typed options from the checked YAML ones. */
export function redisOptionsFrom(yaml: InferOutput<typeof redisNonceStoreOptions>, context: Pick<ComponentContext, 'baseDir'>): RedisNonceStoreOptions {
  const { tls, key_prefix: keyPrefix, command_timeout, connect_timeout, reconnect_max_delay, sentinel_username, sentinel_password, ...same } = yaml;
  const result: RedisNonceStoreOptions = {
    ...same,
    ...(keyPrefix !== DEFAULT_KEY_PREFIX ? { keyPrefix } : {}),
    ...(command_timeout !== undefined ? { commandTimeoutMs: command_timeout } : {}),
    ...(connect_timeout !== undefined ? { connectTimeoutMs: connect_timeout } : {}),
    ...(reconnect_max_delay !== undefined ? { reconnectMaxDelayMs: reconnect_max_delay } : {}),
    ...(sentinel_username !== undefined ? { sentinelUsername: sentinel_username } : {}),
    ...(sentinel_password !== undefined ? { sentinelPassword: sentinel_password } : {}),
  };
  if (typeof tls === 'boolean') result.tls = tls;
  else if (tls) {
    result.tls = {
      ...(tls.ca_file !== undefined ? { ca: readCaFile(path.resolve(context.baseDir, tls.ca_file)) } : {}),
      ...(tls.insecure_skip_verify !== undefined ? { insecureSkipVerify: tls.insecure_skip_verify } : {}),
      ...(tls.server_name !== undefined ? { serverName: tls.server_name } : {}),
    };
  }
  for (const key of Object.keys(result) as Array<keyof RedisNonceStoreOptions>) if (result[key] === undefined) delete result[key];
  validateRedisNonceStoreOptions(result, yamlNames);
  return result;
}

function readCaFile(file: string): string {
  let pem: string;
  try {
    pem = readFileSync(file, 'utf8');
  } catch (error) {
    throw new ConfigError('tls.ca_file', `cannot read ${file}: ${(error as Error).message}`);
  }
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new ConfigError('tls.ca_file', `${file} holds no PEM certificate`);
  return pem;
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
      throw new ConfigError(n(key), `must be greater than 0, got ${describeValue(value)}`);
    }
  };
  checkPositive('commandTimeoutMs');
  checkPositive('connectTimeoutMs');
  checkPositive('reconnectMaxDelayMs');
  if (options.port !== undefined && !isPort(options.port)) throw new ConfigError(n('port'), `must be a port number (1-65535), got ${describeValue(options.port)}`);
  if (options.db !== undefined && !isDatabase(options.db)) throw new ConfigError(n('db'), `must be a database number (0 or more), got ${describeValue(options.db)}`);
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
