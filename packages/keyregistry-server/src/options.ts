import { readFileSync } from 'node:fs';
import path from 'node:path';
import { ConfigError, parseListenAddress, parseOptions, schema as s, type InferOutput } from '@jwtproxy/core';
import { isValidName } from './names.js';
import { defaultStoragePath, keyRegistryDefaults, type KeyRegistryServerOptions, type StorageSpec } from './server.js';

/** The environment variable holding the admin token when the configuration names none. */
export const adminTokenEnvVar = 'JWTPROXY_REGISTRY_TOKEN';
export const minAdminTokenLength = 16;

const nonEmpty = (description: string) => s.optional(s.pipe(s.string(), s.minLength(1), s.description(description)));
const duration = (rule: 'positive' | 'non-negative', description: string) => s.optional(s.pipe(s.duration(rule), s.description(description)));
const count = (max: number, description: string) => s.optional(s.pipe(s.number(), s.integer(), s.minValue(1), s.maxValue(max), s.description(description)));

function isHttpUrl(text: string): boolean {
  try {
    return /^https?:$/.test(new URL(text).protocol);
  } catch {
    return false;
  }
}

/** Where keys are kept: `storage: {type, options}`, the options by type. */
const storageOptions = {
  file: s.strictObject({ path: nonEmpty('The JSON file; default `$XDG_CONFIG_HOME/jwtproxy/keyregistry.json`.') }),
  redis: s.strictObject({
    url: s.optional(s.pipe(s.string(), s.regex(/^rediss?:\/\//, 'must start with redis:// or rediss://'))),
    key_prefix: s.optional(s.string()),
    command_timeout: s.optional(s.duration('positive')),
  }),
  memory: s.strictObject({}),
};
const storageTypes = Object.keys(storageOptions) as Array<keyof typeof storageOptions>;

/** The YAML block `jwtproxy.keyregistry`. */
export const keyRegistryBlockOptions = s.strictObject({
  enabled: s.optional(s.pipe(s.boolean(), s.description('Run the key registry in this process.')), true),
  listen_addr: s.optional(
    s.pipe(
      s.string(),
      s.rawCheck(({ dataset, addIssue }) => {
        if (!dataset.typed) return;
        try {
          parseListenAddress(dataset.value);
        } catch (error) {
          addIssue({ message: (error as ConfigError).problem });
        }
      }),
      s.description('`host:port`, `:port` or `unix:/path`; default `:8081`.'),
    ),
  ),
  public_url: s.optional(
    s.pipe(
      s.string(),
      s.check(isHttpUrl, 'must be an absolute http:// or https:// URL, e.g. https://keys.example.com'),
      s.description('The audience of publishing tokens; default from listen_addr.'),
    ),
  ),
  key_file: nonEmpty('TLS key (with crt_file).'),
  crt_file: nonEmpty('TLS certificate (with key_file).'),
  shutdown_timeout: duration('non-negative', 'How long requests in flight may finish at stop; default 5s.'),
  storage: s.optional(
    s.pipe(
      s.strictObject({
        type: s.picklist(storageTypes, (issue) => `unknown storage type ${JSON.stringify(issue.input)} (known: ${storageTypes.join(', ')})`),
        options: s.optional(s.record(s.string(), s.unknown()), {}),
      }),
      s.description(
        'Where keys are kept: `{type: file, options: {path}}` (the default, under `$XDG_CONFIG_HOME/jwtproxy/`), `{type: redis, options: {url, key_prefix, command_timeout}}` (shared by replicas) or `{type: memory}`.',
      ),
    ),
  ),
  admin_token: nonEmpty(`Bearer token of the admin API (at least ${minAdminTokenLength} characters); default $${adminTokenEnvVar}.`),
  admin_token_file: nonEmpty('A file holding the admin token.'),
  auto_approve: s.optional(
    s.pipe(
      s.union(
        [s.string(), s.array(s.string())],
        (issue) => `must be a service name or glob, or a list of them, got ${JSON.stringify(issue.input)}`,
      ),
      s.transform((value) => (typeof value === 'string' ? [value] : value)),
      s.checkItems((pattern) => isValidName(pattern.replace(/[*?]/g, 'x')), 'must be a service name, optionally with * and ? wildcards'),
      s.description('Service names or globs whose new keys are approved at once (development).'),
    ),
  ),
  max_skew: duration('non-negative', 'Clock difference allowed on publishing tokens; default 5m.'),
  max_ttl: duration('positive', 'Longest lifetime of a publishing token; default 1h.'),
  pending_ttl: duration('non-negative', 'How long a key awaits approval before it is dropped.'),
  expired_retention: duration('non-negative', 'How long expired keys are kept.'),
  max_body_bytes: s.optional(s.pipe(s.number(), s.integer(), s.minValue(1024), s.maxValue(16 * 1024 * 1024), s.description('Largest request body; default 64 KiB.'))),
  max_pending_keys: count(10_000_000, 'Keys awaiting approval in the whole registry; default 10,000.'),
  max_pending_keys_per_service: count(10_000_000, 'Keys awaiting approval per service; default 100.'),
  read_header_timeout: duration('positive', "A request's head must arrive within this; default 10s."),
  request_timeout: duration('positive', 'A whole request must arrive within this; default 30s.'),
  body_idle_timeout: duration('positive', 'A request body silent this long is answered 408; default 10s.'),
  idle_timeout: duration('positive', 'A kept-alive connection without a request is closed after this; default 30s.'),
  max_connections: count(1_000_000, 'Connections open at once; default from the open-file limit.'),
  jwks_max_age: duration('non-negative', 'Longest Cache-Control max-age of the JWK sets (never past the soonest key expiry listed); default 5m.'),
  jwks_max_keys: count(100_000, 'Most keys in one JWK set; beyond it only the newest are listed; default 1,000.'),
});

function readFileOption(file: string, baseDir: string, at: string): string {
  try {
    return readFileSync(path.resolve(baseDir, file), 'utf8');
  } catch (error) {
    throw new ConfigError(at, `cannot read ${file}: ${(error as Error).message}`);
  }
}

function storageFrom(storage: InferOutput<typeof keyRegistryBlockOptions>['storage'], baseDir: string, env: NodeJS.ProcessEnv): StorageSpec {
  switch (storage?.type) {
    case undefined:
      return { type: 'file', path: defaultStoragePath(env) };
    case 'file': {
      const file = parseOptions(storageOptions.file, storage.options, 'storage.options').path;
      return { type: 'file', path: file ? path.resolve(baseDir, file) : defaultStoragePath(env) };
    }
    case 'redis': {
      const { url, key_prefix: keyPrefix, command_timeout: commandTimeoutMs } = parseOptions(storageOptions.redis, storage.options, 'storage.options');
      return { type: 'redis', ...(url && { url }), ...(keyPrefix !== undefined && { keyPrefix }), ...(commandTimeoutMs !== undefined && { commandTimeoutMs }) };
    }
    case 'memory':
      parseOptions(storageOptions.memory, storage.options, 'storage.options');
      return { type: 'memory' };
  }
}

/**
 * Turns the YAML block `jwtproxy.keyregistry` into server options, checking every value with
 * `keyRegistryBlockOptions`. Relative paths are resolved against `baseDir` (the configuration
 * file's directory). A mistake throws ConfigError whose path is relative to the block (e.g. `storage.options.url`).
 */
export function keyRegistryOptionsFrom(raw: Record<string, unknown>, baseDir: string, env: NodeJS.ProcessEnv = process.env): KeyRegistryServerOptions {
  const block = parseOptions(keyRegistryBlockOptions, raw);
  const { key_file: keyFile, crt_file: crtFile, admin_token: adminToken, admin_token_file: adminTokenFile } = block;
  if ((keyFile === undefined) !== (crtFile === undefined)) throw new ConfigError(keyFile ? 'crt_file' : 'key_file', 'key_file and crt_file go together');
  if (keyFile && block.listen_addr?.startsWith('unix:')) throw new ConfigError('key_file', 'TLS cannot be used on a unix socket listener');
  if (adminToken !== undefined && adminTokenFile !== undefined) throw new ConfigError('admin_token_file', 'give admin_token or admin_token_file, not both');
  const token = adminToken ?? (adminTokenFile !== undefined ? readFileOption(adminTokenFile, baseDir, 'admin_token_file').trim() : env[adminTokenEnvVar] || undefined);
  if (token !== undefined) {
    const at = adminToken !== undefined ? 'admin_token' : adminTokenFile !== undefined ? 'admin_token_file' : `$${adminTokenEnvVar}`;
    if (token.length < minAdminTokenLength) throw new ConfigError(at, `the admin token must be at least ${minAdminTokenLength} characters`);
    if (/\s/.test(token)) throw new ConfigError(at, 'the admin token must not contain white space');
  }
  const headerTimeout = block.read_header_timeout ?? keyRegistryDefaults.readHeaderTimeoutMs;
  if ((block.request_timeout ?? keyRegistryDefaults.requestTimeoutMs) < headerTimeout) {
    throw new ConfigError(block.request_timeout !== undefined ? 'request_timeout' : 'read_header_timeout', 'request_timeout must be at least read_header_timeout');
  }
  const options: KeyRegistryServerOptions = {
    enabled: block.enabled,
    listenAddr: block.listen_addr,
    publicUrl: block.public_url,
    ...(keyFile && crtFile ? { tls: { key: readFileOption(keyFile, baseDir, 'key_file'), cert: readFileOption(crtFile, baseDir, 'crt_file') } } : {}),
    storage: storageFrom(block.storage, baseDir, env),
    adminToken: token,
    autoApprove: block.auto_approve,
    maxSkewMs: block.max_skew,
    maxTtlMs: block.max_ttl,
    pendingTtlMs: block.pending_ttl,
    expiredRetentionMs: block.expired_retention,
    shutdownTimeoutMs: block.shutdown_timeout,
    readHeaderTimeoutMs: block.read_header_timeout,
    requestTimeoutMs: block.request_timeout,
    bodyIdleTimeoutMs: block.body_idle_timeout,
    idleTimeoutMs: block.idle_timeout,
    maxBodyBytes: block.max_body_bytes,
    maxPendingKeys: block.max_pending_keys,
    maxPendingKeysPerService: block.max_pending_keys_per_service,
    maxConnections: block.max_connections,
    jwksMaxAgeMs: block.jwks_max_age,
    jwksMaxKeys: block.jwks_max_keys,
  };
  for (const key of Object.keys(options) as Array<keyof KeyRegistryServerOptions>) if (options[key] === undefined) delete options[key];
  return options;
}
