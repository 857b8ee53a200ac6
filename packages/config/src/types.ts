import type { ComponentConfig, ConfigError, LogFormat, LogLevel, ServerLimits } from '@jwtproxy/core';

/**
 * The `jwtproxy:` block of the Go YAML configuration, typed, with every Go default filled in.
 * Durations are milliseconds. File paths are as written, resolved against the configuration
 * file's directory (the same rule the components apply to their own options).
 */

export interface SignerConfig {
  /** Go default `jwtproxy`. */
  issuer: string;
  /** Token lifetime, ms (default 5m). */
  expirationTime: number;
  /** How far `nbf` is set back, ms (default 1m). */
  maxSkew: number;
  /** Length of the `jti` nonce (default 32). */
  nonceLength: number;
  /** `private_key`: built by a factory from `privateKeySources`, which checks its own options. */
  privateKey: ComponentConfig;
}

export interface SignerProxyConfig {
  /** Key path of this block, for errors: `signer_proxy`. */
  path: string;
  enabled: boolean;
  /** `host:port`, `:port` or `unix:/path` (default `:8080`). */
  listenAddr: string;
  /** ms (default 5s). */
  shutdownTimeout: number;
  /** File mode of a unix socket (default 0o755). */
  socketPermission: number;
  caKeyFile?: string;
  caCrtFile?: string;
  /** Replaces the system roots for upstream TLS when not empty. */
  trustedCertificates: string[];
  insecureSkipVerify: boolean;
  /** Listener timeouts and caps (our addition): `read_header_timeout`, `idle_timeout`, `body_idle_timeout`, `max_connections`, `max_header_lines`. */
  limits: ServerLimits;
  signer: SignerConfig;
}

export interface VerifierConfig {
  /** `http://…`, `https://…` or `unix:/path`. */
  upstream: string;
  audience: string;
  /** ms (default 5m). */
  maxSkew: number;
  /** ms (default 5m). */
  maxTtl: number;
  keyServer: ComponentConfig;
  /** Default `{type: 'local', options: {purge_interval: '1m'}}`. */
  nonceStorage: ComponentConfig;
  claimsVerifiers: ComponentConfig[];
  /** Our addition (`upstream_ca_file`): an extra CA to trust for an https upstream. */
  upstreamCaFile?: string;
  /** Our addition (`claims_to_headers`): claim name → request header the service receives it in. */
  claimsToHeaders: Record<string, string>;
  /** Our addition (`strip_token`): the verified token is not forwarded to the service. */
  stripToken: boolean;
  /** The Che fork's keys: `excludes`, `auth_cookies_enabled`, `cookie_path`, `auth_redirect_url`, `public_base_path` (+ our `query_token`). */
  che: CheConfig;
}

/** The options of the Eclipse Che fork of jwtproxy, under the same YAML keys. */
export interface CheConfig {
  /** Path regexes proxied without a token (matched anywhere in the path, as the fork). */
  excludes: string[];
  cookiesEnabled: boolean;
  cookiePath?: string;
  authRedirectUrl?: string;
  publicBasePath?: string;
  /** Ours: read the `token` query parameter (default on with cookies or the redirect). */
  queryToken?: boolean;
}

export interface VerifierProxyConfig {
  /** Key path of this entry, for errors: `verifier_proxies[0]`. */
  path: string;
  enabled: boolean;
  /** `host:port`, `:port` or `unix:/path` (default `:8082`). */
  listenAddr: string;
  /** ms (default 5s). */
  shutdownTimeout: number;
  /** File mode of a unix socket (default 0o755). */
  socketPermission: number;
  keyFile?: string;
  crtFile?: string;
  /** Listener timeouts and caps (our addition), as for the signer. */
  limits: ServerLimits;
  verifier: VerifierConfig;
}

/** `jwtproxy.keyregistry`: `enabled` (default true) and every other key of the block, unchecked here. */
export interface KeyRegistryConfig {
  /** Key path of the block: `keyregistry`. */
  path: string;
  enabled: boolean;
  options: Record<string, unknown>;
}

/** `jwtproxy.log` (our addition): the command line's -log-level and -log-format win over it. */
export interface LogConfig {
  level?: LogLevel;
  format?: LogFormat;
  /** One `access` line per request, upgrade and tunnel (default true). */
  accessLog: boolean;
  /** Share of passed requests written to the access log, 0 to 1 (default 1); refusals and failures always are. */
  accessLogSample: number;
}

/** `jwtproxy.admin` (our addition): the admin listener with /metrics, /healthz and /readyz. */
export interface AdminConfig {
  /** `admin`. */
  path: string;
  /** `host:port`, `:port` or `unix:/path`. */
  listenAddr: string;
  /** `serve_jwks`: the signer's public key (a key source that can give it, as `preshared`) at `/.well-known/jwks.json`. */
  serveJwks: boolean;
}

export interface LoadedConfig {
  /** The configuration file as opened (after environment expansion), as shown in error messages. */
  file: string;
  /** Directory of the configuration file: relative paths in it are relative to here. */
  baseDir: string;
  /** Present when the file has a `signer_proxy:` block. */
  signerProxy?: SignerProxyConfig;
  verifierProxies: VerifierProxyConfig[];
  keyregistry?: KeyRegistryConfig;
  log: LogConfig;
  /** Present when the file has an `admin:` block. */
  admin?: AdminConfig;
  /**
   * `workers` (our addition): worker threads running the proxies; `auto` is one per available
   * core (within the container's CPU and memory limits); absent means `auto`; 1 runs everything
   * on the main thread. Read at start only.
   */
  workers?: number | 'auto';
  /**
   * The line of a key path inside `jwtproxy:` (`verifier_proxies[0].verifier.key_server.options.registry`);
   * for a path not in the file, the line of its nearest ancestor that is.
   */
  lineOf(path: string): number | undefined;
  /** A ConfigError at `path` with its file and line. */
  errorAt(path: string, problem: string): ConfigError;
}
