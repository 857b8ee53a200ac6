import path from 'node:path';
import { ConfigError, DEFAULT_SERVER_LIMITS, readFileAsync, isLogFormat, isLogLevel, type LogFormat, type LogLevel, parseListenAddress, silentLogger, type ComponentConfig, type Logger, type ServerLimits } from '@jwtproxy/core';
import { isMap, isScalar, LineCounter, parseDocument } from 'yaml';
import { expandEnv } from './expand-env.js';
import { describe, MapReader, readComponent, YamlSource } from './reader.js';
import type {
  AdminConfig,
  KeyRegistryConfig,
  LogConfig,
  LoadedConfig,
  SignerConfig,
  SignerProxyConfig,
  VerifierConfig,
  CheConfig,
  VerifierProxyConfig,
} from './types.js';

/** Go defaults (from the Go code, which differs from its README in places). Durations in ms. */
export const defaults = {
  signerListenAddr: ':8080',
  verifierListenAddr: ':8082',
  shutdownTimeout: 5_000,
  socketPermission: 0o755,
  issuer: 'jwtproxy',
  expirationTime: 5 * 60_000,
  signerMaxSkew: 60_000,
  nonceLength: 32,
  verifierMaxSkew: 5 * 60_000,
  maxTtl: 5 * 60_000,
  nonceStorage: { type: 'local', options: { purge_interval: '1m' } } satisfies ComponentConfig,
} as const;

export interface LoadConfigOptions {
  /** Environment for `$VAR` expansion of the path (default process.env). */
  env?: Record<string, string | undefined>;
  /** Receives warnings about unknown keys (default: silent). */
  logger?: Logger;
  /** Unknown keys anywhere are errors, not warnings (jwtproxy -check). */
  strict?: boolean;
}

/**
 * Reads a Go jwtproxy YAML configuration file. The path goes through `$VAR`/`${VAR}` expansion
 * as in Go's os.ExpandEnv. Throws ConfigError naming the key path and file:line of a mistake.
 */
export async function loadConfig(file: string, options: LoadConfigOptions = {}): Promise<LoadedConfig> {
  const { text, file: expanded } = await readConfigFile(file, options.env);
  return parseConfig(text, expanded, options);
}

/**
 * The configuration file's text and its path after `$VAR` expansion, without parsing it (the
 * command's primary hands the same text to its workers). ConfigError when it cannot be read.
 */
export async function readConfigFile(file: string, env: Record<string, string | undefined> = process.env): Promise<{ text: string; file: string }> {
  const expanded = expandEnv(file, env);
  try {
    return { text: await readFileAsync(expanded, 'utf8'), file: expanded };
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (error as Error).message;
    throw new ConfigError('', `cannot read configuration file ${JSON.stringify(expanded)}: ${reason}`);
  }
}

/** Parses configuration text; `fileName` is used in messages and to resolve relative paths. */
export function parseConfig(text: string, fileName: string, options: Pick<LoadConfigOptions, 'logger' | 'strict'> = {}): LoadedConfig {
  const logger = options.logger ?? silentLogger;
  const lines = new LineCounter();
  // YAML 1.1, as the Go tool's yaml.v2 reads it: `0755` is octal, `yes`/`no` are booleans.
  const doc = parseDocument(text, { lineCounter: lines, version: '1.1', prettyErrors: true, uniqueKeys: true });
  const syntaxError = doc.errors[0];
  if (syntaxError) {
    const line = syntaxError.linePos?.[0].line;
    const reason = syntaxError.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
    throw new ConfigError('', `invalid YAML: ${reason}`, { file: fileName, ...(line ? { line } : {}) });
  }
  const src = new YamlSource(doc, fileName, lines, logger, options.strict ?? false);
  const root = src.resolve(doc.contents);
  if (!isMap(root)) {
    throw src.error('jwtproxy', src.lineOf(root), 'is missing: the configuration goes under a top-level "jwtproxy:" key');
  }
  // Other top-level keys belong to other programs sharing the file: not read, not warned about.
  const top = new MapReader(src, '', root, undefined, 'any');
  if (!top.keys().includes('jwtproxy')) {
    throw src.error('jwtproxy', undefined, 'is missing: the configuration goes under a top-level "jwtproxy:" key');
  }
  const baseDir = path.dirname(path.resolve(fileName));
  const lineIndex = new Map<string, number>();
  src.indexLines(top.node('jwtproxy'), '', lineIndex);

  const block = top.node('jwtproxy');
  if (block && !isMap(block)) throw src.error('jwtproxy', top.lineOf('jwtproxy'), `must be a mapping, got ${describe(block, doc)}`);
  // A path is written from the top of the `jwtproxy:` block, as users read errors against the file.
  const jwtproxy = top.node('jwtproxy')
    ? new MapReader(src, '', top.node('jwtproxy')!, top.lineOf('jwtproxy'), ['signer_proxy', 'verifier_proxies', 'keyregistry', 'log', 'admin', 'workers'])
    : undefined;

  const filePath = (value: string | undefined): string | undefined => (value === undefined ? undefined : path.resolve(baseDir, value));
  const signerBlock = jwtproxy?.optionalMap('signer_proxy', signerProxyKeys);
  const signerProxy = signerBlock ? readSignerProxy(signerBlock, filePath) : undefined;
  const verifierProxies = (jwtproxy?.list('verifier_proxies') ?? []).map(({ node, path: at, line }) => {
    if (node === null) throw src.error(at, line, 'must be a mapping, got nothing');
    return readVerifierProxy(new MapReader(src, at, node, line, verifierProxyKeys), filePath);
  });
  const keyregistryBlock = jwtproxy?.optionalMap('keyregistry', 'any');
  const keyregistry: KeyRegistryConfig | undefined = keyregistryBlock && {
    path: keyregistryBlock.path,
    enabled: keyregistryBlock.bool('enabled', true),
    options: keyregistryBlock.toPlain(['enabled']),
  };

  const log = readLog(jwtproxy?.optionalMap('log', ['level', 'format', 'access_log', 'access_log_sample']));
  const admin = readAdmin(jwtproxy?.optionalMap('admin', ['listen_addr', 'serve_jwks']));
  const workers = jwtproxy?.keys().includes('workers') ? readWorkers(jwtproxy) : undefined;

  const lineOf = (keyPath: string): number | undefined => {
    // The nearest ancestor in the file: `a.b[0].c` → `a.b[0]` → `a.b` → `a`.
    for (let p = keyPath; p; p = p.replace(/(?:\.[^.[\]]*|\[\d+\])$/, '')) {
      const line = lineIndex.get(p);
      if (line !== undefined) return line;
      if (!/[.[]/.test(p)) break;
    }
    return top.lineOf('jwtproxy');
  };
  return {
    file: fileName,
    baseDir,
    ...(signerProxy ? { signerProxy } : {}),
    verifierProxies,
    ...(keyregistry ? { keyregistry } : {}),
    log,
    ...(admin ? { admin } : {}),
    ...(workers !== undefined ? { workers } : {}),
    lineOf,
    errorAt: (keyPath, problem) => {
      const line = lineOf(keyPath);
      return new ConfigError(keyPath, problem, { file: fileName, ...(line ? { line } : {}) });
    },
  };
}

/** Listener limits, our addition to both proxy blocks. */
const limitKeys = ['read_header_timeout', 'idle_timeout', 'body_idle_timeout', 'max_connections', 'max_header_lines'];

const signerProxyKeys = [
  ...limitKeys,
  'enabled',
  'listen_addr',
  'shutdown_timeout',
  'socket_permission',
  'ca_key_file',
  'ca_crt_file',
  'trusted_certificates',
  'insecure_skip_verify',
  'signer',
];
const signerKeys = ['issuer', 'expiration_time', 'max_skew', 'nonce_length', 'private_key'];
const verifierProxyKeys = [...limitKeys, 'enabled', 'listen_addr', 'shutdown_timeout', 'socket_permission', 'key_file', 'crt_file', 'verifier'];
const verifierKeys = [
  'upstream',
  'audience',
  'max_skew',
  'max_ttl',
  'key_server',
  'nonce_storage',
  'claims_verifiers',
  'upstream_ca_file',
  'claims_to_headers',
  'strip_token',
  'excludes',
  'auth_cookies_enabled',
  'cookie_path',
  'auth_redirect_url',
  'public_base_path',
  'query_token',
];

type FilePath = (value: string | undefined) => string | undefined;

function readSignerProxy(block: MapReader, filePath: FilePath): SignerProxyConfig {
  const enabled = block.bool('enabled', true);
  const listenAddr = listenAddress(block, defaults.signerListenAddr);
  const caKeyFile = block.optionalString('ca_key_file');
  const caCrtFile = block.optionalString('ca_crt_file');
  if (caKeyFile !== undefined && caCrtFile === undefined) block.failMissing('ca_crt_file', 'is required when ca_key_file is set');
  if (caCrtFile !== undefined && caKeyFile === undefined) block.failMissing('ca_key_file', 'is required when ca_crt_file is set');
  const signerBlock = block.optionalMap('signer', signerKeys);
  return {
    path: block.path,
    enabled,
    listenAddr,
    shutdownTimeout: block.duration('shutdown_timeout', defaults.shutdownTimeout),
    socketPermission: block.fileMode('socket_permission', defaults.socketPermission),
    ...(caKeyFile !== undefined ? { caKeyFile: filePath(caKeyFile)! } : {}),
    ...(caCrtFile !== undefined ? { caCrtFile: filePath(caCrtFile)! } : {}),
    trustedCertificates: block.stringList('trusted_certificates').map((f) => filePath(f)!),
    insecureSkipVerify: block.bool('insecure_skip_verify', false),
    limits: readLimits(block),
    signer: readSigner(block, signerBlock, enabled),
  };
}

function readSigner(proxy: MapReader, block: MapReader | undefined, enabled: boolean): SignerConfig {
  const noKey = 'no private key provider specified';
  if (!block && enabled) proxy.failMissing('signer.private_key.type', noKey);
  const nonceLength = block?.int('nonce_length', defaults.nonceLength) ?? defaults.nonceLength;
  if (nonceLength <= 0) block!.fail('nonce_length', `must be greater than 0, got ${nonceLength}`);
  const keyNode = block?.node('private_key');
  let privateKey: ComponentConfig = { type: '', options: {} };
  if (keyNode) privateKey = readComponent(block!.src, keyNode, block!.pathOf('private_key'), block!.lineOf('private_key'), noKey);
  else if (enabled) block!.failMissing('private_key.type', noKey);
  return {
    issuer: block?.string('issuer', defaults.issuer) || defaults.issuer,
    expirationTime: block?.duration('expiration_time', defaults.expirationTime, 'positive') ?? defaults.expirationTime,
    maxSkew: block?.duration('max_skew', defaults.signerMaxSkew) ?? defaults.signerMaxSkew,
    nonceLength,
    privateKey,
  };
}

function readVerifierProxy(block: MapReader, filePath: FilePath): VerifierProxyConfig {
  const enabled = block.bool('enabled', true);
  const listenAddr = listenAddress(block, defaults.verifierListenAddr);
  const keyFile = block.optionalString('key_file');
  const crtFile = block.optionalString('crt_file');
  if (keyFile !== undefined && crtFile === undefined) block.failMissing('crt_file', 'is required when key_file is set');
  if (crtFile !== undefined && keyFile === undefined) block.failMissing('key_file', 'is required when crt_file is set');
  if (keyFile !== undefined && listenAddr.startsWith('unix:')) block.fail('key_file', 'TLS on a unix socket listener is not supported');
  const verifierBlock = block.optionalMap('verifier', verifierKeys);
  if (!verifierBlock && enabled) block.failMissing('verifier', 'is required (with upstream, audience and key_server)');
  return {
    path: block.path,
    enabled,
    listenAddr,
    shutdownTimeout: block.duration('shutdown_timeout', defaults.shutdownTimeout),
    socketPermission: block.fileMode('socket_permission', defaults.socketPermission),
    ...(keyFile !== undefined ? { keyFile: filePath(keyFile)! } : {}),
    ...(crtFile !== undefined ? { crtFile: filePath(crtFile)! } : {}),
    limits: readLimits(block),
    verifier: verifierBlock ? readVerifier(verifierBlock, enabled, filePath) : emptyVerifier(),
  };
}

/** A disabled verifier need not be complete (as in Go, which checks only what it starts). */
function emptyVerifier(): VerifierConfig {
  return {
    upstream: '',
    audience: '',
    maxSkew: defaults.verifierMaxSkew,
    maxTtl: defaults.maxTtl,
    keyServer: { type: '', options: {} },
    nonceStorage: structuredClone(defaults.nonceStorage),
    claimsVerifiers: [],
    claimsToHeaders: {},
    stripToken: false,
    che: { excludes: [], cookiesEnabled: false },
  };
}

function readVerifier(block: MapReader, enabled: boolean, filePath: FilePath): VerifierConfig {
  const upstream = enabled ? block.requiredString('upstream') : block.string('upstream', '');
  if (upstream) checkUpstream(block, upstream);
  const audience = enabled ? block.requiredString('audience') : block.string('audience', '');
  if (audience && !/^[a-zA-Z][a-zA-Z0-9+.-]*:\/\/[^/?#\s]+/.test(audience)) {
    block.fail('audience', `${JSON.stringify(audience)} is not an absolute URL (expected scheme://host[:port], as in https://service.example)`);
  }
  const keyServerNode = block.node('key_server');
  if (!keyServerNode && enabled) block.failMissing('key_server.type', 'is required: no key server specified');
  const keyServer = keyServerNode
    ? readComponent(block.src, keyServerNode, block.pathOf('key_server'), block.lineOf('key_server'), 'is required: no key server specified')
    : { type: '', options: {} };
  const nonceNode = block.node('nonce_storage');
  const nonceStorage = nonceNode
    ? readComponent(block.src, nonceNode, block.pathOf('nonce_storage'), block.lineOf('nonce_storage'), 'is required: no nonce storage specified')
    : structuredClone(defaults.nonceStorage);
  const claimsVerifiers = block.list('claims_verifiers').map(({ node, path: at, line }) => {
    if (node === null) throw block.src.error(at, line, 'must be a mapping with type and options, got nothing');
    return readComponent(block.src, node, at, line, 'is required: no claims verifier type specified');
  });
  const upstreamCaFile = block.optionalString('upstream_ca_file');
  const claimsToHeaders: Record<string, string> = {};
  const mapping = block.optionalMap('claims_to_headers', 'any');
  for (const claim of mapping?.keys() ?? []) {
    const header = mapping!.string(claim, '');
    if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(header)) mapping!.fail(claim, `must be a header name, got ${JSON.stringify(header)}`);
    if (['host', 'authorization', 'connection', 'content-length', 'transfer-encoding'].includes(header.toLowerCase())) {
      mapping!.fail(claim, `cannot be ${JSON.stringify(header)}: the proxy owns that header`);
    }
    claimsToHeaders[claim] = header;
  }
  return {
    upstream,
    audience,
    maxSkew: block.duration('max_skew', defaults.verifierMaxSkew),
    maxTtl: block.duration('max_ttl', defaults.maxTtl, 'positive'),
    keyServer,
    nonceStorage,
    claimsVerifiers,
    ...(upstreamCaFile !== undefined ? { upstreamCaFile: filePath(upstreamCaFile)! } : {}),
    claimsToHeaders,
    stripToken: block.bool('strip_token', false),
    che: readChe(block),
  };
}

/** The Che fork's keys (eclipse-che/che-jwtproxy config.VerifierConfig), checked here so a bad one fails `-check`. */
function readChe(block: MapReader): CheConfig {
  const excludes = block.stringList('excludes');
  excludes.forEach((pattern, i) => {
    try {
      new RegExp(pattern);
    } catch (error) {
      block.fail('excludes', `[${i}] ${JSON.stringify(pattern)} is not a valid regular expression: ${(error as Error).message}`);
    }
  });
  const authRedirectUrl = block.optionalString('auth_redirect_url');
  if (authRedirectUrl !== undefined && !/^https?:\/\/[^/?#\s]+/.test(authRedirectUrl)) {
    block.fail('auth_redirect_url', `${JSON.stringify(authRedirectUrl)} is not an absolute http(s) URL`);
  }
  const cookiePath = block.optionalString('cookie_path');
  if (cookiePath !== undefined && !/^\/[\x21-\x3a\x3c-\x7e]*$/.test(cookiePath)) block.fail('cookie_path', `must be a path starting with / (no ; or spaces), got ${JSON.stringify(cookiePath)}`);
  const publicBasePath = block.optionalString('public_base_path');
  const queryToken = block.has('query_token') ? block.bool('query_token', false) : undefined;
  return {
    excludes,
    cookiesEnabled: block.bool('auth_cookies_enabled', false),
    ...(cookiePath !== undefined ? { cookiePath } : {}),
    ...(authRedirectUrl !== undefined ? { authRedirectUrl } : {}),
    ...(publicBasePath !== undefined ? { publicBasePath } : {}),
    ...(queryToken !== undefined ? { queryToken } : {}),
  };
}

/** `jwtproxy.log`: level and format (the flags win), the access log on or off and its sampling. */
function readLog(block: MapReader | undefined): LogConfig {
  if (!block) return { accessLog: true, accessLogSample: 1 };
  const level = block.optionalString('level');
  if (level !== undefined && !isLogLevel(level)) block.fail('level', `must be debug, info, warn or error, got ${JSON.stringify(level)}`);
  const format = block.optionalString('format');
  if (format !== undefined && !isLogFormat(format)) block.fail('format', `must be text or json, got ${JSON.stringify(format)}`);
  const sample = block.number('access_log_sample', 1);
  if (!(sample >= 0 && sample <= 1)) block.fail('access_log_sample', `must be a number from 0 to 1, got ${sample}`);
  return {
    ...(level !== undefined ? { level: level as LogLevel } : {}),
    ...(format !== undefined ? { format: format as LogFormat } : {}),
    accessLog: block.bool('access_log', true),
    accessLogSample: sample,
  };
}

/** `admin: {listen_addr}`: where the admin listener listens; the block without it is a mistake. */
function readAdmin(block: MapReader | undefined): AdminConfig | undefined {
  if (!block) return undefined;
  if (block.optionalString('listen_addr') === undefined) block.failMissing('listen_addr', 'is required: where /metrics, /healthz and /readyz listen (host:port, :port or unix:/path)');
  return { path: block.path, listenAddr: listenAddress(block, ''), serveJwks: block.bool('serve_jwks', false) };
}

/** Most worker threads `workers:` may ask for: far above any core count a sidecar gets. */
export const MAX_WORKERS = 256;

/** `workers: N` or `workers: auto` (our addition): 1 to MAX_WORKERS, or one per available core; absent means auto (the command decides). */
function readWorkers(block: MapReader): number | 'auto' {
  const node = block.node('workers');
  if (isScalar(node) && node.value === 'auto') return 'auto';
  const value = block.int('workers', 1);
  if (value < 1 || value > MAX_WORKERS) block.fail('workers', `must be from 1 to ${MAX_WORKERS} or auto (one per available core), got ${value}`);
  return value;
}

/** The listener's timeouts and caps; what is absent keeps core's default. */
function readLimits(block: MapReader): ServerLimits {
  const positiveInt = (key: string, fallback: number): number => {
    const value = block.int(key, fallback);
    if (value <= 0) block.fail(key, `must be greater than 0, got ${value}`);
    return value;
  };
  return {
    readHeaderTimeoutMs: block.duration('read_header_timeout', DEFAULT_SERVER_LIMITS.readHeaderTimeoutMs, 'positive'),
    idleTimeoutMs: block.duration('idle_timeout', DEFAULT_SERVER_LIMITS.idleTimeoutMs, 'positive'),
    bodyIdleTimeoutMs: block.duration('body_idle_timeout', DEFAULT_SERVER_LIMITS.bodyIdleTimeoutMs),
    maxConnections: positiveInt('max_connections', DEFAULT_SERVER_LIMITS.maxConnections),
    maxHeaderLines: positiveInt('max_header_lines', DEFAULT_SERVER_LIMITS.maxHeaderLines),
  };
}

/**
 * `:8080`, `host:8080`, `[::1]:8080` or `unix:/path/to.sock`, as Go's net.Listen and the Go tool
 * take them. Core's parser, which the proxies listen with, is the one definition of what is valid.
 */
function listenAddress(block: MapReader, fallback: string): string {
  const value = block.string('listen_addr', fallback);
  try {
    parseListenAddress(value);
  } catch {
    block.fail('listen_addr', `${JSON.stringify(value)} is not a listen address (expected host:port, :port or unix:/path/to.sock)`);
  }
  return value;
}

function checkUpstream(block: MapReader, value: string): void {
  const problem = `${JSON.stringify(value)} is not an upstream (expected http://host[:port][/path], https://… or unix:/path/to.sock)`;
  if (value.startsWith('unix:')) {
    if (value.length === 'unix:'.length) block.fail('upstream', problem);
    return;
  }
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    block.fail('upstream', problem);
  }
  if ((url.protocol !== 'http:' && url.protocol !== 'https:') || !url.hostname) block.fail('upstream', problem);
}
