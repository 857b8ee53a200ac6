import { readFile } from 'node:fs/promises';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import net, { type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import {
  applyServerLimits,
  checkRequestHead,
  ConfigError,
  DEFAULT_SERVER_LIMITS,
  httpAnswerFor,
  httpServerOptions,
  listenOn,
  parseListenAddress,
  removeSocketFile,
  RepeatedLogLimiter,
  RequestTracker,
  requestHeadAnswer,
  watchRequestBody,
  writeRawAnswer,
  type HttpAnswer,
  type Logger,
  type RequestSigner,
  type RunningProxy,
  type ServerLimits,
} from '@jwtproxy/core';
import { CertificateForger } from './certificates.js';
import { answer, createForwarder, hasBody } from './forwarding.js';
import { TlsInterceptor } from './interception.js';
import { BadTargetError, absoluteTarget, isAbsoluteForm, tunnelTarget, type RequestTarget, type Tunnel } from './targets.js';
import { ConnectTunnels } from './tunnels.js';
import { forwardUpgrade } from './upgrade.js';
import { UpstreamPools } from './upstreams.js';

export interface SignerProxyOptions {
  /** `host:port`, `:port` (every interface) or `unix:/path`. */
  listenAddr: string;
  /** Mode of a unix socket, default 0o755 (as Go). */
  socketPermission?: number;
  /** How long stop() lets requests in flight finish by default, in ms. */
  shutdownTimeout: number;
  signer: RequestSigner;
  /** The MITM CA (PEM files). Without both, a CONNECT tunnel that carries TLS is closed (plain HTTP in a tunnel is still signed). */
  caKeyFile?: string;
  caCertFile?: string;
  /** PEM files whose certificates replace the system roots for upstream TLS (as Go). */
  trustedCertificates?: string[];
  /** Accept any upstream certificate. */
  insecureSkipVerify?: boolean;
  logger: Logger;
  /** Least time between two log lines about the same recurring failure, ms (default 10 s). */
  repeatedLogIntervalMs?: number;
  /**
   * Timeouts, connection cap and header-line limit; each field left out is DEFAULT_SERVER_LIMITS'.
   * They hold for the listener and, the same, for the requests read from inside CONNECT tunnels.
   */
  limits?: Partial<ServerLimits>;
}

const LISTEN_ADDR_KEY = 'signer_proxy.listen_addr';

export const NOT_A_PROXY_REQUEST = 'This is a forward proxy server. Does not respond to non-proxy requests.';
export const SHUTTING_DOWN: HttpAnswer = { status: 503, body: 'jwtproxy: shutting down' };

async function readTrustedCertificates(files: string[]): Promise<string[]> {
  return Promise.all(
    files.map(async (file) => {
      let pem: string;
      try {
        pem = await readFile(file, 'utf8');
      } catch (error) {
        throw new ConfigError('signer_proxy.trusted_certificates', `cannot read ${(error as Error).message}`, { file });
      }
      if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new ConfigError('signer_proxy.trusted_certificates', 'no PEM certificate in the file', { file });
      return pem;
    }),
  );
}

/** DEFAULT_SERVER_LIMITS with the fields `limits` gives (an undefined field keeps the default). */
function serverLimits(limits: Partial<ServerLimits> | undefined): ServerLimits {
  const merged: ServerLimits = { ...DEFAULT_SERVER_LIMITS };
  if (limits) for (const key of Object.keys(merged) as Array<keyof ServerLimits>) if (limits[key] !== undefined) merged[key] = limits[key];
  return merged;
}


/**
 * Starts the signer: a forward proxy that adds `Authorization: Bearer <jwt>` to every request:
 * absolute-form requests, requests inside CONNECT tunnels that carry plain HTTP and, with a CA,
 * inside tunnels that carry TLS. Rejects with ConfigError (naming the key and file) when it
 * cannot start.
 */
export async function startSignerProxy(options: SignerProxyOptions): Promise<RunningProxy> {
  const { signer, logger } = options;
  const listenAddress = parseListenAddress(options.listenAddr, LISTEN_ADDR_KEY);
  if (Boolean(options.caKeyFile) !== Boolean(options.caCertFile)) {
    throw new ConfigError(options.caKeyFile ? 'signer_proxy.ca_crt_file' : 'signer_proxy.ca_key_file', 'ca_key_file and ca_crt_file must be given together');
  }
  const forger =
    options.caKeyFile && options.caCertFile ? await CertificateForger.load({ caKeyFile: options.caKeyFile, caCertFile: options.caCertFile }) : undefined;
  const trustedCertificates = options.trustedCertificates?.length ? await readTrustedCertificates(options.trustedCertificates) : undefined;
  const tlsPolicy = { trustedCertificates, insecureSkipVerify: options.insecureSkipVerify ?? false };
  const pools = new UpstreamPools(tlsPolicy);
  const forwarder = createForwarder(signer, pools, logger, options.repeatedLogIntervalMs);
  const limits = serverLimits(options.limits);
  // While a dependency (key source, upstream) is down every request fails alike: one line per kind and interval.
  const repeats = new RepeatedLogLimiter(logger, { intervalMs: options.repeatedLogIntervalMs });

  let stopping = false;
  /** Requests of both servers: in order per connection, and drained at a stop. */
  const requests = new RequestTracker();
  /** Upgraded connections (WebSocket): they run until the shutdown deadline. */
  const upgrades = new Set<Duplex>();
  let upgradesDone: (() => void) | undefined;

  const outerServer = http.createServer(httpServerOptions(limits));
  const innerServer = http.createServer(httpServerOptions(limits));
  applyServerLimits(outerServer, limits);
  applyServerLimits(innerServer, limits);
  // The inner server reads the requests inside CONNECT tunnels and is never bound to a port. Node
  // starts tracking a server's connections, which its headersTimeout and closeIdleConnections
  // need, when the server starts listening: without this a tunnel could hold a half-sent request
  // head for ever.
  innerServer.emit('listening');
  // Both servers' connections: the inner server's are the tunnels that carry HTTP.
  requests.watch(outerServer);
  requests.watch(innerServer);

  const interceptor = forger
    ? new TlsInterceptor(forger, {
        logger,
        handshakeTimeoutMs: Math.min(10_000, limits.readHeaderTimeoutMs),
        // Called after a handshake, long after `tunnels` below exists.
        handOver: (tlsSocket, authority) => tunnels.handOverTls(tlsSocket, authority),
      })
    : undefined;
  const tunnels = new ConnectTunnels({ innerServer, interceptor, firstBytesTimeoutMs: limits.readHeaderTimeoutMs, logger, log: repeats });

  /** Where a request goes, or the answer when it cannot be forwarded. */
  const targetOf = (req: IncomingMessage, tunnel: Tunnel | undefined): RequestTarget | HttpAnswer => {
    const url = req.url ?? '';
    try {
      if (tunnel !== undefined) return tunnelTarget(tunnel, url, req.headers.host);
      if (isAbsoluteForm(url)) return absoluteTarget(url);
      return { status: 500, body: NOT_A_PROXY_REQUEST };
    } catch (error) {
      const reason = error instanceof BadTargetError ? error.message : `cannot parse ${url}`;
      return { status: 400, body: `jwtproxy: bad request target: ${reason}` };
    }
  };

  /** One of the signer's own refusals: it closes the connection, so nothing pipelined behind it runs. */
  const refuse = (req: IncomingMessage, res: ServerResponse, refusal: HttpAnswer): void => {
    requests.closeAfter(res);
    answer(res, refusal);
    req.resume();
  };

  const serve = (req: IncomingMessage, res: ServerResponse, tunnel: Tunnel | undefined): void => {
    const target = requestHeadAnswer(req, limits) ?? targetOf(req, tunnel);
    if ('status' in target) return refuse(req, res, target);
    // Only a body can stall; watching a request without one would clear the keep-alive timer
    // Node sets after the answer (the watch ends its timer when the request ends).
    if (hasBody(req)) watchRequestBody(req, limits.bodyIdleTimeoutMs);
    forwarder.forward(req, res, target).catch((error: unknown) => {
      // A bug, not a request problem: answer and keep serving rather than crash on an unhandled rejection.
      logger.error('request failed unexpectedly', { error });
      if (!res.headersSent) requests.closeAfter(res);
      answer(res, httpAnswerFor(error));
    });
  };

  // WebSocket and other upgrades: signed, then the connections are joined. An open tunnel is kept
  // until the deadline at a stop, as a request in flight is.
  const handleUpgrade = (req: IncomingMessage, client: Duplex, bodyHead: Buffer, tunnel: Tunnel | undefined): void => {
    client.on('error', () => undefined);
    // No longer an HTTP connection: it runs until it ends, or until the stop's deadline.
    requests.release(client as Socket);
    if (stopping) return writeRawAnswer(client, SHUTTING_DOWN);
    upgrades.add(client);
    client.once('close', () => {
      upgrades.delete(client);
      if (upgrades.size === 0) upgradesDone?.();
    });
    const target = requestHeadAnswer(req, limits) ?? targetOf(req, tunnel);
    if ('status' in target) return writeRawAnswer(client, target);
    void forwardUpgrade(signer, tlsPolicy, repeats, req, client, bodyHead, target);
  };

  outerServer.on('request', (req: IncomingMessage, res: ServerResponse) => requests.admit(req, res, () => serve(req, res, undefined)));
  innerServer.on('request', (req: IncomingMessage, res: ServerResponse) => requests.admit(req, res, () => serve(req, res, tunnels.tunnelOf(req))));
  outerServer.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => undefined);
    // A tunnel now; if it carries HTTP, the inner server watches it again.
    requests.release(socket as Socket);
    if (stopping) return writeRawAnswer(socket, SHUTTING_DOWN);
    // A CONNECT needs no Host header (RFC 9112 §3.2.3), but one that is there must be valid.
    const problem = checkRequestHead(req, limits);
    if (problem && (problem.status === 431 || req.headers.host !== undefined)) return writeRawAnswer(socket, httpAnswerFor(problem));
    tunnels.handleConnect(req, socket, head);
  });
  outerServer.on('upgrade', (req: IncomingMessage, client: Duplex, bodyHead: Buffer) => handleUpgrade(req, client, bodyHead, undefined));
  innerServer.on('upgrade', (req: IncomingMessage, client: Duplex, bodyHead: Buffer) => handleUpgrade(req, client, bodyHead, tunnels.tunnelOf(req)));

  let address: string;
  try {
    address = await listenOn(outerServer, listenAddress, { socketPermission: options.socketPermission ?? 0o755 });
  } catch (error) {
    innerServer.close();
    throw new ConfigError(LISTEN_ADDR_KEY, (error as Error).message);
  }
  if (!forger) {
    logger.warn('no CA configured (ca_key_file, ca_crt_file): CONNECT tunnels that carry TLS will be closed, not signed', { listen: address });
  }
  logger.info('signer proxy listening', { address, https_interception: forger ? 'on' : 'off' });

  /** Resolves when every upgraded connection has closed, or at `deadline`. */
  const upgradesClosed = (deadline: number): Promise<void> =>
    upgrades.size === 0
      ? Promise.resolve()
      : new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
          upgradesDone = () => {
            clearTimeout(timer);
            resolve();
          };
        });

  let stopped: Promise<void> | undefined;
  const stop = async (deadline: number): Promise<void> => {
    stopping = true;
    // Stop accepting (net.Server's close: http.Server's would also close every idle kept-alive
    // connection at once, resetting a request a client is sending on one at that moment). Every
    // request in flight, and any still to come on an open connection, is answered with
    // `Connection: close`; each connection is closed once it has stayed idle a moment (core's
    // RequestTracker.drain), and open WebSockets run, until the deadline.
    const closed = new Promise<void>((resolve) => net.Server.prototype.close.call(outerServer, () => resolve()));
    await Promise.all([requests.drain(deadline), upgradesClosed(deadline)]);
    outerServer.closeAllConnections();
    innerServer.closeAllConnections();
    tunnels.destroyAll();
    for (const client of upgrades) client.destroy();
    await pools.close(deadline);
    await closed;
    // Nothing is open now: http.Server's close only stops Node's connection-checking timers.
    outerServer.close();
    innerServer.close();
    await removeSocketFile(listenAddress);
    logger.info('signer proxy stopped', { address });
  };

  return {
    address,
    stop(deadline = Date.now() + options.shutdownTimeout) {
      stopped ??= stop(deadline);
      return stopped;
    },
  };
}
