import { readFileSync } from 'node:fs';
import path from 'node:path';
import { ConfigError, parseListenAddress, toDuration } from '@jwtproxy/core';
import { isValidName } from './names.js';
import { defaultStoragePath, keyRegistryDefaults, type KeyRegistryServerOptions, type StorageSpec } from './server.js';

/** The environment variable holding the admin token when the configuration names none. */
export const adminTokenEnvVar = 'JWTPROXY_REGISTRY_TOKEN';
export const minAdminTokenLength = 16;

const knownOptions = [
  'enabled', 'listen_addr', 'public_url', 'key_file', 'crt_file', 'shutdown_timeout', 'storage', 'admin_token', 'admin_token_file',
  'auto_approve', 'max_skew', 'max_ttl', 'pending_ttl', 'expired_retention', 'max_body_bytes',
  'max_pending_keys', 'max_pending_keys_per_service', 'read_header_timeout', 'request_timeout', 'body_idle_timeout', 'idle_timeout',
  'max_connections',
];

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function rejectUnknown(block: Record<string, unknown>, known: readonly string[], prefix: string): void {
  for (const key of Object.keys(block)) {
    if (!known.includes(key)) throw new ConfigError(`${prefix}${key}`, `unknown option (known: ${known.join(', ')})`);
  }
}

function optionalString(block: Record<string, unknown>, key: string, at: string): string | undefined {
  const value = block[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'string' || value === '') throw new ConfigError(at, 'must be a non-empty string');
  return value;
}

function duration(block: Record<string, unknown>, key: string): number | undefined {
  const value = block[key];
  if (value === undefined || value === null) return undefined;
  let ms: number;
  try {
    ms = toDuration(value);
  } catch {
    throw new ConfigError(key, `${JSON.stringify(value)} is not a duration (examples: 30s, 5m, 24h, 0)`);
  }
  if (ms < 0) throw new ConfigError(key, 'must not be negative');
  return ms;
}

function readFileOption(file: string, baseDir: string, at: string): string {
  try {
    return readFileSync(path.resolve(baseDir, file), 'utf8');
  } catch (error) {
    throw new ConfigError(at, `cannot read ${file}: ${(error as Error).message}`);
  }
}

function storageFrom(value: unknown, baseDir: string, env: NodeJS.ProcessEnv): StorageSpec {
  if (value === undefined || value === null) return { type: 'file', path: defaultStoragePath(env) };
  if (!isRecord(value)) throw new ConfigError('storage', 'must be a mapping with type and options');
  rejectUnknown(value, ['type', 'options'], 'storage.');
  const options = value.options ?? {};
  if (!isRecord(options)) throw new ConfigError('storage.options', 'must be a mapping');
  switch (value.type) {
    case 'file': {
      rejectUnknown(options, ['path'], 'storage.options.');
      const file = optionalString(options, 'path', 'storage.options.path');
      return { type: 'file', path: file ? path.resolve(baseDir, file) : defaultStoragePath(env) };
    }
    case 'redis': {
      rejectUnknown(options, ['url', 'key_prefix', 'command_timeout'], 'storage.options.');
      const url = optionalString(options, 'url', 'storage.options.url');
      if (url !== undefined && !/^rediss?:\/\//.test(url)) throw new ConfigError('storage.options.url', 'must start with redis:// or rediss://');
      const keyPrefix = options.key_prefix;
      if (keyPrefix !== undefined && typeof keyPrefix !== 'string') throw new ConfigError('storage.options.key_prefix', 'must be a string');
      let commandTimeoutMs: number | undefined;
      try {
        commandTimeoutMs = duration(options, 'command_timeout');
      } catch (error) {
        throw new ConfigError('storage.options.command_timeout', (error as ConfigError).message.replace(/^command_timeout: /, ''));
      }
      if (commandTimeoutMs === 0) throw new ConfigError('storage.options.command_timeout', 'must be more than 0');
      return { type: 'redis', ...(url && { url }), ...(keyPrefix !== undefined && { keyPrefix }), ...(commandTimeoutMs !== undefined && { commandTimeoutMs }) };
    }
    case 'memory':
      rejectUnknown(options, [], 'storage.options.');
      return { type: 'memory' };
    default:
      throw new ConfigError('storage.type', `unknown storage type ${JSON.stringify(value.type)} (known: file, redis, memory)`);
  }
}

/**
 * Turns the YAML block `jwtproxy.keyregistry` into server options, checking every value.
 * Relative paths are resolved against `baseDir` (the configuration file's directory). A
 * mistake throws ConfigError whose path is relative to the block (e.g. `storage.options.url`).
 */
export function keyRegistryOptionsFrom(raw: Record<string, unknown>, baseDir: string, env: NodeJS.ProcessEnv = process.env): KeyRegistryServerOptions {
  if (!isRecord(raw)) throw new ConfigError('', 'the keyregistry block must be a mapping');
  rejectUnknown(raw, knownOptions, '');
  const options: KeyRegistryServerOptions = {};

  if (raw.enabled !== undefined && raw.enabled !== null) {
    if (typeof raw.enabled !== 'boolean') throw new ConfigError('enabled', 'must be true or false');
    options.enabled = raw.enabled;
  } else {
    options.enabled = true;
  }

  const listenAddr = optionalString(raw, 'listen_addr', 'listen_addr');
  if (listenAddr !== undefined) {
    parseListenAddress(listenAddr, 'listen_addr');
    options.listenAddr = listenAddr;
  }

  const publicUrl = optionalString(raw, 'public_url', 'public_url');
  if (publicUrl !== undefined) {
    let parsed: URL | undefined;
    try {
      parsed = new URL(publicUrl);
    } catch {
      parsed = undefined;
    }
    if (!parsed || (parsed.protocol !== 'http:' && parsed.protocol !== 'https:')) {
      throw new ConfigError('public_url', 'must be an absolute http:// or https:// URL, e.g. https://keys.example.com');
    }
    options.publicUrl = publicUrl;
  }

  const keyFile = optionalString(raw, 'key_file', 'key_file');
  const crtFile = optionalString(raw, 'crt_file', 'crt_file');
  if ((keyFile === undefined) !== (crtFile === undefined)) throw new ConfigError(keyFile ? 'crt_file' : 'key_file', 'key_file and crt_file go together');
  if (keyFile && crtFile) {
    if (listenAddr?.startsWith('unix:')) throw new ConfigError('key_file', 'TLS cannot be used on a unix socket listener');
    options.tls = { key: readFileOption(keyFile, baseDir, 'key_file'), cert: readFileOption(crtFile, baseDir, 'crt_file') };
  }

  options.storage = storageFrom(raw.storage, baseDir, env);

  const adminToken = optionalString(raw, 'admin_token', 'admin_token');
  const adminTokenFile = optionalString(raw, 'admin_token_file', 'admin_token_file');
  if (adminToken !== undefined && adminTokenFile !== undefined) throw new ConfigError('admin_token_file', 'give admin_token or admin_token_file, not both');
  const token = adminToken ?? (adminTokenFile !== undefined ? readFileOption(adminTokenFile, baseDir, 'admin_token_file').trim() : env[adminTokenEnvVar] || undefined);
  if (token !== undefined) {
    const at = adminToken !== undefined ? 'admin_token' : adminTokenFile !== undefined ? 'admin_token_file' : `$${adminTokenEnvVar}`;
    if (token.length < minAdminTokenLength) throw new ConfigError(at, `the admin token must be at least ${minAdminTokenLength} characters`);
    if (/\s/.test(token)) throw new ConfigError(at, 'the admin token must not contain white space');
    options.adminToken = token;
  }

  const autoApprove = raw.auto_approve;
  if (autoApprove !== undefined && autoApprove !== null) {
    const patterns = typeof autoApprove === 'string' ? [autoApprove] : autoApprove;
    if (!Array.isArray(patterns)) throw new ConfigError('auto_approve', 'must be a service name or glob, or a list of them');
    options.autoApprove = patterns.map((pattern, index) => {
      if (typeof pattern !== 'string' || !isValidName(pattern.replace(/[*?]/g, 'x'))) {
        throw new ConfigError(`auto_approve[${index}]`, 'must be a service name, optionally with * and ? wildcards');
      }
      return pattern;
    });
  }

  type DurationField =
    | 'maxSkewMs' | 'maxTtlMs' | 'pendingTtlMs' | 'expiredRetentionMs' | 'shutdownTimeoutMs'
    | 'readHeaderTimeoutMs' | 'requestTimeoutMs' | 'bodyIdleTimeoutMs' | 'idleTimeoutMs';
  const durations: Array<[string, DurationField]> = [
    ['max_skew', 'maxSkewMs'], ['max_ttl', 'maxTtlMs'], ['pending_ttl', 'pendingTtlMs'], ['expired_retention', 'expiredRetentionMs'], ['shutdown_timeout', 'shutdownTimeoutMs'],
    ['read_header_timeout', 'readHeaderTimeoutMs'], ['request_timeout', 'requestTimeoutMs'], ['body_idle_timeout', 'bodyIdleTimeoutMs'], ['idle_timeout', 'idleTimeoutMs'],
  ];
  for (const [key, field] of durations) {
    const ms = duration(raw, key);
    if (ms !== undefined) options[field] = ms;
  }
  // No way to turn these off: every stage of a request is bounded.
  for (const [key, ms] of [
    ['max_ttl', options.maxTtlMs], ['read_header_timeout', options.readHeaderTimeoutMs], ['request_timeout', options.requestTimeoutMs],
    ['body_idle_timeout', options.bodyIdleTimeoutMs], ['idle_timeout', options.idleTimeoutMs],
  ] as const) {
    if (ms === 0) throw new ConfigError(key, 'must be more than 0');
  }
  const headerTimeout = options.readHeaderTimeoutMs ?? keyRegistryDefaults.readHeaderTimeoutMs;
  const requestTimeout = options.requestTimeoutMs ?? keyRegistryDefaults.requestTimeoutMs;
  if (requestTimeout < headerTimeout) {
    throw new ConfigError(options.requestTimeoutMs !== undefined ? 'request_timeout' : 'read_header_timeout', 'request_timeout must be at least read_header_timeout');
  }

  const counts: Array<[string, 'maxPendingKeys' | 'maxPendingKeysPerService' | 'maxConnections', number]> = [
    ['max_pending_keys', 'maxPendingKeys', 10_000_000], ['max_pending_keys_per_service', 'maxPendingKeysPerService', 10_000_000], ['max_connections', 'maxConnections', 1_000_000],
  ];
  for (const [key, field, max] of counts) {
    const value = raw[key];
    if (value === undefined || value === null) continue;
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > max) throw new ConfigError(key, `must be a whole number from 1 to ${max}`);
    options[field] = value;
  }

  const maxBody = raw.max_body_bytes;
  if (maxBody !== undefined && maxBody !== null) {
    if (typeof maxBody !== 'number' || !Number.isInteger(maxBody) || maxBody < 1024 || maxBody > 16 * 1024 * 1024) {
      throw new ConfigError('max_body_bytes', 'must be a whole number of bytes from 1024 to 16777216');
    }
    options.maxBodyBytes = maxBody;
  }
  return options;
}
