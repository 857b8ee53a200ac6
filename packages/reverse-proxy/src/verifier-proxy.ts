import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import net, { type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import {
  DEFAULT_SERVER_LIMITS,
  MultipleCredentialsError,
  RequestTracker,
  VerificationError,
  checkRequestHead,
  httpAnswerFor,
  listenOn,
  parseListenAddress,
  removeSocketFile,
  RepeatedLogLimiter,
  writeRawAnswer,
  type HttpAnswer,
  type ListenAddress,
  type Logger,
  type RequestVerifier,
  type RunningProxy,
  type ServerLimits,
  watchRequestBody,
} from '@jwtproxy/core';
import { PROXY_REQUEST_ANSWER, writeAnswer } from './answers.js';
import { forward } from './forward.js';
import { readRequestHead } from './headers.js';
import { createServer } from './server.js';
import { forwardUpgrade } from './upgrade.js';
import { openUpstream, parseUpstream, type Upstream } from './upstream.js';

export interface VerifierProxyOptions {
  /** `host:port`, `:port` (all interfaces) or `unix:/path`. */
  listenAddr: string;
  /** Mode of a unix socket listener, default 0o755 (as Go). */
  socketPermission?: number;
  /** TLS termination; a start-up error on a unix listener (as Go). */
  tls?: { keyFile: string; certFile: string };
  /** `http://host:port/base`, `https://…` or `unix:/path/to.sock`. */
  upstream: string;
  /** Extra CA (PEM) trusted for an https upstream, on top of Node's trusted roots. */
  upstreamCaFile?: string;
  verifier: RequestVerifier;
  /** How long stop() lets requests in flight finish, in ms. */
  shutdownTimeout: number;
  logger: Logger;
  /** Least time between two log lines about the same recurring failure, ms (default 10 s). */
  repeatedLogIntervalMs?: number;
  /** Timeouts and caps of the listener; core's defaults for what is not given. */
  limits?: Partial<ServerLimits>;
}

/** `*` (OPTIONS *) and origin-form targets are served; anything else is a forward-proxy request. */
function isProxyRequest(target: string): boolean {
  return target.charCodeAt(0) !== 47 /* '/' */ && target !== '*';
}

function ignoreSocketError(): void {
  // A client that resets its connection is not our failure; the socket closes and is forgotten.
}

/**
 * The verifier: listens, verifies each request's token with core's RequestVerifier, and
 * forwards what passes to the upstream. Rejects with a message naming the file or address
 * when it cannot start.
 */
export async function startVerifierProxy(options: VerifierProxyOptions): Promise<RunningProxy> {
  const { verifier, logger } = options;
  const listenAddress = parseListenAddress(options.listenAddr);
  parseUpstream(options.upstream);
  const limits: ServerLimits = { ...DEFAULT_SERVER_LIMITS, ...options.limits };
  const server = await createServer({ listenAddr: options.listenAddr, tls: options.tls, limits }, listenAddress);
  const upstream = await openUpstream(options.upstream, options.upstreamCaFile);
  /** Client connections switched to another protocol: Node no longer tracks them as HTTP. */
  const tunnels = new Set<Duplex>();
  /** Requests in flight, in order per connection; knows when the proxy is stopping. */
  const requests = new RequestTracker();
  requests.watch(server);
  // While a dependency is down every request fails the same way: one line per kind and interval.
  const repeats = new RepeatedLogLimiter(logger, { intervalMs: options.repeatedLogIntervalMs });

  /** The answer to a request that did not verify, with a log line (debug for a client's fault). */
  const refusalFor = (error: unknown): HttpAnswer => {
    const answer = httpAnswerFor(error);
    if (!(error instanceof VerificationError)) logger.error('request verification failed unexpectedly', { error });
    else if (answer.status >= 500) repeats.write('warn', answer.body, 'request refused: verification dependency failed', { status: answer.status, reason: answer.body });
    else logger.debug('request refused', { status: answer.status, reason: answer.body });
    return answer;
  };
  // A bug in handling one request must cost its connection, never the process
  // (an unhandled rejection would end it).
  const failed = (error: unknown, connection: { destroy(): unknown }): void => {
    logger.error('request handling failed', { error });
    connection.destroy();
  };

  /**
   * A refusal. One that closes the connection (a body too large to drain, a client waiting for
   * `100 Continue`, or the proxy stopping) is the last thing that connection carries: a request
   * pipelined behind it is never run (RFC 9112 §9.6).
   */
  const refuse = (res: ServerResponse, answer: HttpAnswer, keepConnection: boolean): void => {
    const keep = keepConnection && !requests.stopping;
    if (!keep) requests.closeAfter(res);
    writeAnswer(res, answer, keep);
  };

  /** The one token a request carries: with more than one Authorization, the service might read another one. */
  const verify = (authorization: string | string[] | undefined): Promise<unknown> =>
    Array.isArray(authorization) ? Promise.reject(new MultipleCredentialsError()) : verifier.verifyRequest(authorization);

  async function handleRequest(req: IncomingMessage, res: ServerResponse, expectsContinue: boolean): Promise<void> {
    try {
      const malformed = checkRequestHead(req, limits);
      if (malformed) return refuse(res, httpAnswerFor(malformed), false);
      const head = readRequestHead(req.rawHeaders);
      // With `Expect: 100-continue` the body has not been sent: a refusal closes instead of waiting for it.
      const keepConnection = !expectsContinue && (req.complete || head.drainable);
      if (isProxyRequest(req.url!)) return refuse(res, PROXY_REQUEST_ANSWER, keepConnection);
      try {
        await verify(head.authorization);
      } catch (error) {
        return refuse(res, refusalFor(error), keepConnection);
      }
      if (res.destroyed) return;
      // Only a verified request is invited to send its body, and must then keep sending it.
      if (expectsContinue) res.writeContinue();
      if (head.hasBody) watchRequestBody(req, limits.bodyIdleTimeoutMs);
      forward(upstream, repeats, req, res, head);
    } catch (error) {
      failed(error, res);
    }
  }

  async function handleUpgrade(req: IncomingMessage, client: Duplex, bodyHead: Buffer): Promise<void> {
    try {
      client.on('error', ignoreSocketError);
      // No longer an HTTP connection: it runs until it ends, or until the stop's deadline.
      requests.release(client as Socket);
      tunnels.add(client);
      client.once('close', () => tunnels.delete(client));
      const malformed = checkRequestHead(req, limits);
      if (malformed) return writeRawAnswer(client, httpAnswerFor(malformed));
      if (isProxyRequest(req.url!)) return writeRawAnswer(client, PROXY_REQUEST_ANSWER);
      const head = readRequestHead(req.rawHeaders);
      try {
        await verify(head.authorization);
      } catch (error) {
        return writeRawAnswer(client, refusalFor(error));
      }
      if (client.destroyed) return;
      forwardUpgrade(upstream, repeats, req, client, bodyHead, head);
    } catch (error) {
      failed(error, client);
    }
  }

  server.on('request', (req: IncomingMessage, res: ServerResponse) => requests.admit(req, res, () => void handleRequest(req, res, false)));
  server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => requests.admit(req, res, () => void handleRequest(req, res, true)));
  server.on('upgrade', (req: IncomingMessage, client: Duplex, bodyHead: Buffer) => void handleUpgrade(req, client, bodyHead));
  server.on('connect', (_req: IncomingMessage, client: Duplex) => {
    client.on('error', ignoreSocketError);
    requests.release(client as Socket);
    writeRawAnswer(client, PROXY_REQUEST_ANSWER);
  });

  let address: string;
  try {
    address = await listenOn(server, listenAddress, { socketPermission: options.socketPermission ?? 0o755 });
  } catch (error) {
    await upstream.pool.destroy();
    throw error;
  }
  server.on('error', (error: Error) => logger.error('verifier listener failed', { listen: address, error: error.message }));
  logger.info('verifier proxy listening', { listen: address, upstream: options.upstream });

  let stopped: Promise<void> | undefined;
  return {
    address,
    stop(deadline = Date.now() + options.shutdownTimeout) {
      stopped ??= shutdown(server, requests, upstream, listenAddress, tunnels, logger, deadline);
      return stopped;
    },
  };
}

/**
 * Stops accepting at once; every request in flight, and every one still to come on an open
 * connection, is answered with `Connection: close`, and each connection is closed once idle
 * (core's RequestTracker.drain). Upgraded connections run until `deadline`; then what is left is
 * cut and the upstream pool closed.
 */
async function shutdown(
  server: Server,
  requests: RequestTracker,
  upstream: Upstream,
  listenAddress: ListenAddress,
  tunnels: Set<Duplex>,
  logger: Logger,
  deadline: number,
): Promise<void> {
  // net.Server's close stops accepting and leaves open connections alone. http.Server's own close
  // would also close every idle keep-alive connection at once, resetting the requests clients are
  // sending on them at that moment; the tracker closes each once it has stayed idle instead.
  const closed = new Promise<void>((resolve) => net.Server.prototype.close.call(server, () => resolve()));
  let deadlineTimer: NodeJS.Timeout | undefined;
  const deadlineReached = new Promise<true>((resolve) => {
    deadlineTimer = setTimeout(() => resolve(true), Math.max(0, deadline - Date.now()));
  });
  const drained = await requests.drain(deadline);
  const timedOut = !drained || (await Promise.race([closed.then(() => false as const), deadlineReached]));
  if (timedOut) {
    logger.warn('shutdown deadline reached: closing the connections left', { requests: requests.inFlight, tunnels: tunnels.size });
    server.closeAllConnections();
    for (const tunnel of tunnels) tunnel.destroy();
    await closed;
    await upstream.pool.destroy();
  } else {
    const poolClosed = upstream.pool.close().then(() => false as const);
    if (await Promise.race([poolClosed, deadlineReached])) await upstream.pool.destroy();
  }
  clearTimeout(deadlineTimer);
  // Now that nothing is open, http.Server's close stops its connection-checking timer.
  server.close();
  await removeSocketFile(listenAddress);
}
