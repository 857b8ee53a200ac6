import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import {
  listenOn,
  parseListenAddress,
  removeSocketFile,
  silentLogger,
  systemClock,
  type Clock,
  type Logger,
  type RunningProxy,
} from '@jwtproxy/core';
import { FileKeyStore } from './file-store.js';
import { createRequestHandler } from './http.js';
import { JwkSetPublisher } from './jwks.js';
import { RedisKeyStore } from './redis-store.js';
import { KeyRegistry, serviceMatcher } from './registry.js';
import { MemoryKeyStore, type KeyStore } from './store.js';
import { audienceOrigin } from './token.js';

/** Which store to open: a JSON file (default), Redis, or process memory (development only). */
export type StorageSpec =
  | { type: 'file'; path: string }
  | { type: 'redis'; url?: string; keyPrefix?: string; commandTimeoutMs?: number }
  | { type: 'memory' };

export interface KeyRegistryServerOptions {
  /** From the YAML `enabled` (default true); the CLI skips a disabled registry, startKeyRegistryServer ignores it. */
  enabled?: boolean;
  /** `host:port`, `:port` (all interfaces) or `unix:/path`; default `:8081`. */
  listenAddr?: string;
  /** The registry's `scheme://host[:port]` as publishers address it; the `aud` they must sign. Default from listenAddr. */
  publicUrl?: string;
  /** Serve HTTPS with this PEM key and certificate. */
  tls?: { key: string | Buffer; cert: string | Buffer };
  /** Where keys live; default a file under $XDG_CONFIG_HOME/jwtproxy. Ignored when `store` is given. */
  storage?: StorageSpec;
  /** An already opened store; the caller keeps ownership (stop() does not close it). */
  store?: KeyStore;
  /** Bearer token for the admin API; without one the admin API answers 403. */
  adminToken?: string;
  /** Service names or globs (`*`, `?`) whose new keys are approved at once. For development. */
  autoApprove?: readonly string[];
  /** Clock difference allowed on the publishing JWT's exp, nbf and iat; default 5 min. */
  maxSkewMs?: number;
  /** Longest exp − iat of a publishing JWT; default 1 h. */
  maxTtlMs?: number;
  /** Unapproved keys are purged this long after publication; 0 never; default 24 h. */
  pendingTtlMs?: number;
  /** Expired keys are forgotten this long after expiry (until then they answer 403); 0 never; default 7 days. */
  expiredRetentionMs?: number;
  /** Largest accepted request body; default 64 KiB. */
  maxBodyBytes?: number;
  /** Most keys awaiting approval in the whole registry; more answer 429. Default 10,000. */
  maxPendingKeys?: number;
  /** Most keys awaiting approval per service; more answer 429. Default 100. */
  maxPendingKeysPerService?: number;
  /** A request's head (request line and headers) must arrive within this; default 10 s. */
  readHeaderTimeoutMs?: number;
  /** A whole request (head and body) must arrive within this; default 30 s. */
  requestTimeoutMs?: number;
  /** A request body that sends nothing for this long is answered 408 and its connection closed; default 10 s. */
  bodyIdleTimeoutMs?: number;
  /** A kept-alive connection with no request is closed after this; default 30 s. */
  idleTimeoutMs?: number;
  /** Connections open at once; more are closed as they arrive. Default from the open-file limit (see defaultMaxConnections). */
  maxConnections?: number;
  /** Longest `Cache-Control: max-age` of the JWK sets, in ms (whole seconds are served; never past the soonest key expiry listed); default 300 s. */
  jwksMaxAgeMs?: number;
  /** Most keys in one JWK set; beyond it only the newest are listed (and a warning logged). Default 1,000. */
  jwksMaxKeys?: number;
  /** How long stop() waits for requests in flight by default; default 5 s. */
  shutdownTimeoutMs?: number;
  /** How often purges run; default min(1 min, pending_ttl / 2). */
  sweepIntervalMs?: number;
  logger?: Logger;
  clock?: Clock;
}

export interface RunningKeyRegistry extends RunningProxy {
  /** The origin publishing JWTs must name in `aud`. */
  readonly publicUrl: string;
  /** The protocol rules, for embedding and tests (e.g. run a purge now). */
  readonly registry: KeyRegistry;
}

export const keyRegistryDefaults = {
  listenAddr: ':8081',
  maxSkewMs: 5 * 60_000,
  maxTtlMs: 60 * 60_000,
  pendingTtlMs: 24 * 3600_000,
  expiredRetentionMs: 7 * 24 * 3600_000,
  maxBodyBytes: 64 * 1024,
  shutdownTimeoutMs: 5000,
  maxPendingKeys: 10_000,
  maxPendingKeysPerService: 100,
  readHeaderTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  bodyIdleTimeoutMs: 10_000,
  idleTimeoutMs: 30_000,
  /** Changes to one key that may wait behind the one in progress (beyond: 503 busy). */
  maxQueuedChangesPerKey: 1000,
  jwksMaxAgeMs: 300_000,
  jwksMaxKeys: 1000,
} as const;

/** Soft limit on open files of this process (Linux), or undefined where it cannot be read. */
function openFileLimit(): number | undefined {
  try {
    const soft = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'))?.[1];
    return soft === undefined ? undefined : Number(soft);
  } catch {
    return undefined;
  }
}

/**
 * Default connection cap: a quarter of the open-file limit (less 64 for the process itself), from
 * 64 to 4,096. The registry often shares its process with a signer and verifiers, which need
 * descriptors too: a flood of registry connections must not leave them without.
 */
export function defaultMaxConnections(fileLimit = openFileLimit()): number {
  if (fileLimit === undefined) return 1024;
  return Math.max(64, Math.min(4096, Math.floor((fileLimit - 64) / 4)));
}
/** `$XDG_CONFIG_HOME/jwtproxy/keyregistry.json`, else `~/.config/jwtproxy/keyregistry.json` (next to the Go tool's key folder). */
export function defaultStoragePath(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CONFIG_HOME || path.join(env.HOME || os.homedir(), '.config');
  return path.join(base, 'jwtproxy', 'keyregistry.json');
}

/** Opens the store a StorageSpec describes. */
export async function openKeyStore(spec: StorageSpec, logger: Logger = silentLogger, clock: Clock = systemClock): Promise<KeyStore> {
  switch (spec.type) {
    case 'file':
      return FileKeyStore.open(spec.path, { clock });
    case 'redis':
      return RedisKeyStore.connect({ url: spec.url, keyPrefix: spec.keyPrefix, commandTimeoutMs: spec.commandTimeoutMs, logger });
    case 'memory':
      logger.warn('key registry: keys are kept in memory only and are lost at exit');
      return new MemoryKeyStore({ clock });
  }
}

function hostForUrl(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

/** Starts the registry: opens the store, listens, and purges unapproved and long-expired keys in the background. */
export async function startKeyRegistryServer(options: KeyRegistryServerOptions = {}): Promise<RunningKeyRegistry> {
  const logger = options.logger ?? silentLogger;
  const clock = options.clock ?? systemClock;
  const listenAddr = options.listenAddr ?? keyRegistryDefaults.listenAddr;
  const listenAddress = parseListenAddress(listenAddr);
  if (listenAddress.kind === 'unix' && options.tls) throw new Error('TLS cannot be used on a unix socket listener');
  const scheme = options.tls ? 'https' : 'http';
  const ownsStore = !options.store;
  const store = options.store ?? (await openKeyStore(options.storage ?? { type: 'file', path: defaultStoragePath() }, logger, clock));

  try {
    const readHeaderTimeoutMs = options.readHeaderTimeoutMs ?? keyRegistryDefaults.readHeaderTimeoutMs;
    const requestTimeoutMs = Math.max(readHeaderTimeoutMs, options.requestTimeoutMs ?? keyRegistryDefaults.requestTimeoutMs);
    const serverOptions: http.ServerOptions = {
      headersTimeout: readHeaderTimeoutMs,
      requestTimeout: requestTimeoutMs,
      keepAliveTimeout: options.idleTimeoutMs ?? keyRegistryDefaults.idleTimeoutMs,
      // Node checks the two deadlines above only this often (default 30 s): a fraction of the shorter.
      connectionsCheckingInterval: Math.max(250, Math.min(30_000, Math.floor(readHeaderTimeoutMs / 4))),
    };
    const server = options.tls
      ? https.createServer({ ...serverOptions, key: options.tls.key, cert: options.tls.cert, handshakeTimeout: readHeaderTimeoutMs })
      : http.createServer(serverOptions);
    // Node's head timer does not reliably cover a connection that has sent nothing yet (20 silent
    // connections stayed open past a 1 s limit): each connection's idle timer runs until its first
    // request starts (Node then resets it), and when it fires, Node closes the connection.
    server.on(options.tls ? 'secureConnection' : 'connection', (socket: Socket) => socket.setTimeout(readHeaderTimeoutMs));
    const maxConnections = options.maxConnections ?? defaultMaxConnections();
    server.maxConnections = maxConnections;
    let droppedLoggedAt = Number.NEGATIVE_INFINITY;
    let droppedSinceLog = 0;
    server.on('drop', () => {
      droppedSinceLog++;
      if (Date.now() - droppedLoggedAt < 10_000) return;
      logger.warn('key registry: connection limit reached; closing new connections', { max_connections: maxConnections, dropped: droppedSinceLog });
      droppedLoggedAt = Date.now();
      droppedSinceLog = 0;
    });
    let address: string;
    try {
      address = await listenOn(server, listenAddress);
    } catch (error) {
      // The system error stays the cause: the CLI tells a bind failure by its code.
      throw new Error(`key registry: ${(error as Error).message}`, { cause: (error as Error).cause ?? error });
    }
    let derivedPublicUrl: string;
    if (listenAddress.kind === 'unix') derivedPublicUrl = `${scheme}://localhost`;
    else {
      const { port } = server.address() as AddressInfo;
      const { host } = listenAddress;
      const named = host !== undefined && host !== '' && host !== '0.0.0.0' && host !== '::';
      derivedPublicUrl = `${scheme}://${named ? hostForUrl(host) : 'localhost'}:${port}`;
    }
    if (!options.publicUrl) {
      logger.warn('key registry: public_url is not set; publishing tokens must name this audience', { aud: derivedPublicUrl });
    }
    const publicUrl = audienceOrigin(options.publicUrl ?? derivedPublicUrl);

    const pendingTtlMs = options.pendingTtlMs ?? keyRegistryDefaults.pendingTtlMs;
    const registry = new KeyRegistry(
      store,
      {
        audience: publicUrl,
        maxSkewMs: options.maxSkewMs ?? keyRegistryDefaults.maxSkewMs,
        maxTtlMs: options.maxTtlMs ?? keyRegistryDefaults.maxTtlMs,
        pendingTtlMs,
        expiredRetentionMs: options.expiredRetentionMs ?? keyRegistryDefaults.expiredRetentionMs,
        autoApprove: serviceMatcher(options.autoApprove ?? []),
        pendingLimits: {
          perService: options.maxPendingKeysPerService ?? keyRegistryDefaults.maxPendingKeysPerService,
          total: options.maxPendingKeys ?? keyRegistryDefaults.maxPendingKeys,
        },
        maxQueuedChangesPerKey: keyRegistryDefaults.maxQueuedChangesPerKey,
      },
      logger,
      clock,
    );
    const adminTokenDigest = options.adminToken ? createHash('sha256').update(options.adminToken).digest() : undefined;
    const jwkSets = new JwkSetPublisher(
      registry,
      {
        maxAgeSeconds: Math.floor((options.jwksMaxAgeMs ?? keyRegistryDefaults.jwksMaxAgeMs) / 1000),
        maxKeys: options.jwksMaxKeys ?? keyRegistryDefaults.jwksMaxKeys,
      },
      logger,
      clock,
    );
    const handler = createRequestHandler({
      registry, jwkSets, logger, adminTokenDigest,
      maxBodyBytes: options.maxBodyBytes ?? keyRegistryDefaults.maxBodyBytes,
      bodyIdleTimeoutMs: options.bodyIdleTimeoutMs ?? keyRegistryDefaults.bodyIdleTimeoutMs,
    });
    server.on('request', handler);
    // `Expect: 100-continue` goes to the same handler, which refuses an oversize body before the client sends it.
    server.on('checkContinue', handler);
    server.on('clientError', (error: NodeJS.ErrnoException, socket: Socket) => {
      if (!socket.writable || error.code === 'ECONNRESET') return void socket.destroy();
      const status = error.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : error.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? '408 Request Timeout' : '400 Bad Request';
      // A response to HEAD must not carry a body; the raw packet tells us the method when there is one.
      const head = (error as { rawPacket?: Buffer }).rawPacket?.subarray(0, 5).toString('latin1') === 'HEAD ';
      const body = head ? '' : JSON.stringify({ error: 'bad_request', message: `malformed HTTP request (${status.slice(4)})` });
      socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    });

    const sweepIntervalMs = options.sweepIntervalMs ?? Math.max(1000, Math.min(60_000, pendingTtlMs > 0 ? pendingTtlMs / 2 : 60_000));
    let sweeping: Promise<unknown> | undefined;
    const sweepTimer = setInterval(() => {
      sweeping ??= registry
        .sweep()
        .catch((error: unknown) => logger.warn('key registry: purge failed', { error: (error as Error).message }))
        .finally(() => (sweeping = undefined));
    }, sweepIntervalMs);
    sweepTimer.unref();

    logger.info('key registry: listening', { address, public_url: publicUrl, storage: options.store ? 'custom' : (options.storage?.type ?? 'file') });
    let stopping: Promise<void> | undefined;
    return {
      address,
      publicUrl,
      registry,
      stop(deadline?: number): Promise<void> {
        stopping ??= (async () => {
          clearInterval(sweepTimer);
          const closed = new Promise<void>((resolve) => server.close(() => resolve()));
          server.closeIdleConnections();
          const until = deadline ?? Date.now() + (options.shutdownTimeoutMs ?? keyRegistryDefaults.shutdownTimeoutMs);
          let timer: NodeJS.Timeout | undefined;
          await Promise.race([closed, new Promise<void>((resolve) => (timer = setTimeout(resolve, Math.max(0, until - Date.now()))))]);
          clearTimeout(timer);
          server.closeAllConnections();
          await closed;
          await removeSocketFile(listenAddress).catch((error: unknown) =>
            logger.warn('key registry: cannot remove its socket file', { address, error: (error as Error).message }),
          );
          await sweeping;
          if (ownsStore) await store.close();
          logger.info('key registry: stopped', { address });
        })();
        return stopping;
      },
    };
  } catch (error) {
    if (ownsStore) await store.close();
    throw error;
  }
}
