import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import {
  applyServerLimits,
  checkRequestHead,
  httpServerOptions,
  listenOn,
  parseListenAddress,
  removeSocketFile,
  silentLogger,
  type Logger,
  type RunningProxy,
  type ServerLimits,
} from '@jwtproxy/core';
import type { JwtProxyMetrics } from './metrics.js';
import { Readiness, type ReadinessReport } from './readiness.js';

/**
 * The admin listener serves a few small answers to probes and scrapers: tight limits, whatever
 * the proxies' are. A client that connects and sends nothing is closed after 5 s; at most 64
 * connections (Prometheus, the kubelet and a load balancer need a handful).
 */
export const ADMIN_SERVER_LIMITS: Readonly<ServerLimits> = Object.freeze({
  readHeaderTimeoutMs: 5_000,
  idleTimeoutMs: 5_000,
  bodyIdleTimeoutMs: 5_000,
  maxConnections: 64,
  maxHeaderLines: 100,
});

/** A whole request (the admin endpoints take no body) must arrive within this, ms. */
const REQUEST_TIMEOUT_MS = 10_000;

export interface AdminServerOptions {
  /** `host:port`, `:port` or `unix:/path` (core's parseListenAddress). */
  listenAddr: string;
  /** Rendered at `GET /metrics`; without it, `/metrics` answers 404. */
  metrics?: JwtProxyMetrics | undefined;
  /** The checks behind `GET /readyz`; a new, empty one by default (always ready). */
  readiness?: Readiness | undefined;
  /** Timeouts and caps of the listener; ADMIN_SERVER_LIMITS for what is not given. */
  limits?: Partial<ServerLimits> | undefined;
  /** Mode of a unix socket listener, default 0o755 (as the proxies'). */
  socketPermission?: number | undefined;
  /** How long stop() lets answers in flight finish by default, ms (default 2 s). */
  shutdownTimeoutMs?: number | undefined;
  logger?: Logger | undefined;
  /**
   * The signer's public keys (e.g. PresharedPrivateKeySource.publicJwks), read on each request so
   * that a reload is seen; served at `GET /.well-known/jwks.json` as `{"keys":[…]}`. Without it,
   * or while it returns undefined, that path answers 404.
   */
  publicJwks?: (() => readonly object[] | undefined) | undefined;
  /** `Cache-Control: max-age` of the JWK set, seconds (default 300). */
  jwksMaxAgeSeconds?: number | undefined;
}

export interface RunningAdminServer extends RunningProxy {
  readonly readiness: Readiness;
}

function limitsFrom(limits: Partial<ServerLimits> | undefined): ServerLimits {
  const merged: ServerLimits = { ...ADMIN_SERVER_LIMITS };
  if (limits) for (const key of Object.keys(merged) as Array<keyof ServerLimits>) if (limits[key] !== undefined) merged[key] = limits[key];
  return merged;
}

function send(res: ServerResponse, status: number, contentType: string, body: string, close = false, cacheControl = 'no-store'): void {
  res.statusCode = status;
  res.setHeader('Content-Type', contentType);
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.setHeader('Cache-Control', cacheControl);
  if (close) res.setHeader('Connection', 'close');
  res.end(body);
}

const TEXT = 'text/plain; charset=utf-8';
const JSON_TYPE = 'application/json';

/** True when the request says it carries a body, which no admin endpoint reads. */
function hasBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

function readinessBody(report: ReadinessReport): string {
  return `${JSON.stringify({ status: report.ready ? 'ready' : report.stopping ? 'stopping' : 'not ready', checks: report.checks })}\n`;
}

/**
 * The admin listener, on its own address off the proxied ports:
 *  - `GET /metrics`: every metric in the Prometheus text format;
 *  - `GET /healthz`: 200 while the process runs (liveness);
 *  - `GET /readyz`: 200 when every readiness check passes, else 503; the JSON body names each
 *    check and, for those not ready, why (`{"status":"not ready","checks":[…]}`);
 *  - `GET /.well-known/jwks.json`: the signer's public keys as a JWK set, when `publicJwks` gives them.
 * HEAD works as GET without the body; anything else is 405, an unknown path 404.
 */
export async function startAdminServer(options: AdminServerOptions): Promise<RunningAdminServer> {
  const logger = options.logger ?? silentLogger;
  const listenAddress = parseListenAddress(options.listenAddr);
  const limits = limitsFrom(options.limits);
  const readiness = options.readiness ?? new Readiness();
  const { metrics } = options;
  // Scrapes that come while the text is being rendered share it.
  let rendering: Promise<string> | undefined;

  const server = http.createServer({ ...httpServerOptions(limits), requestTimeout: REQUEST_TIMEOUT_MS });
  applyServerLimits(server, limits);
  // Node's headersTimeout starts with the first byte of a request: a connection that sends nothing
  // would stay open. Any connection silent this long is closed (no callback: Node destroys it).
  server.setTimeout(limits.readHeaderTimeoutMs);

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const malformed = checkRequestHead(req, limits);
    if (malformed) return send(res, malformed.status, TEXT, `${malformed.message}\n`, true);
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('Allow', 'GET, HEAD');
      return send(res, 405, TEXT, 'method not allowed\n', true);
    }
    // A body is never read: answer, and close rather than parse it as the next request.
    if (hasBody(req)) return send(res, 400, TEXT, 'the admin endpoints take no request body\n', true);
    const url = req.url ?? '';
    const question = url.indexOf('?');
    const path = question < 0 ? url : url.slice(0, question);
    switch (path) {
      case '/healthz':
        return send(res, 200, TEXT, 'ok\n');
      case '/readyz': {
        const report = await readiness.evaluate();
        return send(res, report.ready ? 200 : 503, JSON_TYPE, readinessBody(report));
      }
      case '/metrics':
        if (metrics) {
          rendering ??= metrics.render().finally(() => (rendering = undefined));
          return send(res, 200, metrics.contentType, await rendering);
        }
        break;
      case '/.well-known/jwks.json': {
        const keys = options.publicJwks?.();
        if (keys) return send(res, 200, 'application/jwk-set+json', JSON.stringify({ keys }), false, `max-age=${options.jwksMaxAgeSeconds ?? 300}`);
        break;
      }
    }
    return send(res, 404, TEXT, 'not found: the admin listener serves /metrics, /healthz and /readyz\n');
  };

  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    handle(req, res).catch((error: unknown) => {
      logger.error('admin request failed', { path: req.url?.split('?', 1)[0], error: (error as Error)?.message ?? String(error) });
      if (!res.headersSent) send(res, 500, TEXT, 'internal error\n', true);
      else res.destroy();
    });
  });
  server.on('error', (error: Error) => logger.error('admin listener failed', { error: error.message }));

  const address = await listenOn(server, listenAddress, { socketPermission: options.socketPermission ?? 0o755 });
  logger.info('admin listening', { address, endpoints: metrics ? '/metrics /healthz /readyz' : '/healthz /readyz' });

  let stopped: Promise<void> | undefined;
  const stop = async (deadline: number): Promise<void> => {
    readiness.markStopping();
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeIdleConnections();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([closed, new Promise<void>((resolve) => (timer = setTimeout(resolve, Math.max(0, deadline - Date.now()))))]);
    clearTimeout(timer);
    server.closeAllConnections();
    await closed;
    await removeSocketFile(listenAddress);
  };
  return {
    address,
    readiness,
    stop(deadline = Date.now() + (options.shutdownTimeoutMs ?? 2_000)) {
      stopped ??= stop(deadline);
      return stopped;
    },
  };
}
