import http, { type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import https from 'node:https';
import net, { type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import {
  DEFAULT_SERVER_LIMITS,
  JwtProxyError,
  RepeatedLogLimiter,
  RequestTracker,
  SigningError,
  applyServerLimits,
  checkRequestHead,
  httpAnswerFor,
  httpServerOptions,
  listenOn,
  watchRequestBody,
  writeRawAnswer,
  type HttpAnswer,
  type ListenAddress,
  type ListenOptions,
  type Logger,
  type ServerLimits,
} from '@jwtproxy/core';
import type { Dispatcher } from 'undici';
import { upstreamFailure, writeAnswer } from './answers.js';
import { ResponseRelay } from './relay.js';
import { readRequestHead, type RequestHead } from './request-head.js';
import { UpgradeRelay } from './upgrade.js';

/** Where a routed request goes, and the request that is sent there. */
export interface Outbound {
  /** The pool (or any undici dispatcher) to the upstream. */
  dispatcher: Dispatcher;
  /** Origin-form target: path and query. */
  path: string;
  /** Headers for the upstream, `[name, value, …]`. */
  headers: string[];
  /** TLS server name for an https upstream, when it is not the Host header's. */
  servername?: string | undefined;
  /** Names the upstream in logs and in a 502 body (the signer's origin); absent, the error alone. */
  upstreamName?: string | undefined;
}

/**
 * What makes a proxy of the engine, as Go's httputil.ReverseProxy's hooks do: `route` is its
 * Rewrite (and the place to verify or sign), `closeUpstreams` its Transport's end, `connect` what
 * it does with CONNECT. Everything else (listeners and their limits, request order per
 * connection, hop-by-hop headers, streaming both ways with backpressure, upgrades, the answer to
 * every error, graceful stop) is the engine's, the same for every proxy.
 */
export interface ProxyHooks {
  /**
   * Where the request goes, or why not: throw a typed error (core's JwtProxyError family) and the
   * engine answers it through `httpAnswerFor`. Called for plain and upgrade requests alike.
   */
  route(req: IncomingMessage, head: RequestHead): Outbound | Promise<Outbound>;
  /** A CONNECT request; the socket is the engine's to cut at a stop's deadline. */
  connect(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  /** At a stop, once no request is in flight (or at `deadline`): close the upstream pools. */
  closeUpstreams(deadline: number): Promise<void>;
  /** Lower-case request header names `readRequestHead` leaves out besides the hop-by-hop ones. */
  readonly droppedRequestHeaders?: ReadonlySet<string>;
  /**
   * Whether a refused request whose body is read (or small enough to drain) leaves its
   * connection open for the next request. The verifier keeps it (a client without a token is
   * answered 403 and may try again on the same connection, as with the Go verifier); the signer's
   * refusals are rare failures and close it. Any refusal closes when the body is too large to
   * drain, when the client waits for `100 Continue`, or while stopping.
   */
  readonly keepConnectionAfterRefusal: boolean;
}

export interface ProxyEngineOptions {
  hooks: ProxyHooks;
  /** Timeouts and caps of every server; each field left out is core's DEFAULT_SERVER_LIMITS'. */
  limits?: Partial<ServerLimits> | undefined;
  logger: Logger;
  /** Least time between two log lines about the same recurring failure, ms (default 10 s). */
  repeatedLogIntervalMs?: number | undefined;
}

/** The answer to an upgrade or CONNECT that comes while the proxy is stopping. */
const SHUTTING_DOWN: HttpAnswer = { status: 503, body: 'jwtproxy: shutting down' };

function ignoreSocketError(): void {
  // A client that resets its connection is not our failure; the socket closes and is forgotten.
}

/** DEFAULT_SERVER_LIMITS with the fields `limits` gives (a field left undefined keeps the default). */
export function serverLimits(limits: Partial<ServerLimits> | undefined): ServerLimits {
  const merged: ServerLimits = { ...DEFAULT_SERVER_LIMITS };
  if (limits) for (const key of Object.keys(merged) as Array<keyof ServerLimits>) if (limits[key] !== undefined) merged[key] = limits[key];
  return merged;
}

/**
 * One proxy engine: the servers it creates or is given run every request through
 * listen → check the head → `route` (verify or sign) → relay to the upstream and back.
 */
export class ProxyEngine {
  readonly limits: ServerLimits;
  readonly #hooks: ProxyHooks;
  readonly #logger: Logger;
  /** While a dependency is down every request fails the same way: one line per kind and interval. */
  readonly #repeats: RepeatedLogLimiter;
  readonly #requests = new RequestTracker();
  readonly #servers: Server[] = [];
  readonly #listening: Server[] = [];
  /** Connections switched to another protocol (upgrades) or tunnelled (CONNECT): cut at the deadline. */
  readonly #raw = new Set<Duplex>();
  #rawClosed: (() => void) | undefined;
  #stopping = false;

  constructor(options: ProxyEngineOptions) {
    this.#hooks = options.hooks;
    this.#logger = options.logger;
    this.limits = serverLimits(options.limits);
    this.#repeats = new RepeatedLogLimiter(options.logger, { intervalMs: options.repeatedLogIntervalMs });
  }

  get stopping(): boolean {
    return this.#stopping;
  }

  /** An HTTP server, or HTTPS with `tls`, with the engine's limits and handlers (not yet listening). */
  createServer(tls?: { key: Buffer | string; cert: Buffer | string }): Server {
    const options = httpServerOptions(this.limits);
    const server = tls ? https.createServer({ ...options, ...tls }) : http.createServer(options);
    this.serve(server);
    return server;
  }

  /**
   * Serves the requests of `server`: one the engine listens with, or one that is never bound and
   * is handed connections (the signer's server for requests inside CONNECT tunnels).
   */
  serve(server: Server): void {
    applyServerLimits(server, this.limits);
    this.#servers.push(server);
    this.#requests.watch(server);
    server.on('request', (req: IncomingMessage, res: ServerResponse) => this.#requests.admit(req, res, () => void this.#handle(req, res, false)));
    server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => this.#requests.admit(req, res, () => void this.#handle(req, res, true)));
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, bodyHead: Buffer) => void this.#handleUpgrade(req, socket, bodyHead));
    server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      this.adoptRaw(socket);
      if (this.#stopping) return writeRawAnswer(socket, SHUTTING_DOWN);
      this.#hooks.connect(req, socket, head);
    });
  }

  /**
   * An HTTP server that is handed connections and never listens (the signer's server for the
   * requests inside CONNECT tunnels), with the same limits and handlers. Node starts tracking a
   * server's connections, which its header timeout and idle handling need, when it starts
   * listening: without the event, a connection handed to it could hold a half-sent head for ever.
   */
  createUnboundServer(): Server {
    const server = http.createServer(httpServerOptions(this.limits));
    this.serve(server);
    server.emit('listening');
    return server;
  }

  /** Binds `server` (created or served by this engine) and resolves with the address clients use. */
  async listen(server: Server, address: ListenAddress, options: ListenOptions = {}): Promise<string> {
    const bound = await listenOn(server, address, options);
    this.#listening.push(server);
    return bound;
  }

  /** A raw connection (CONNECT tunnel, upgrade) that is no longer HTTP: kept until it ends or the stop's deadline. */
  adoptRaw(socket: Duplex): void {
    socket.on('error', ignoreSocketError);
    this.#requests.release(socket as Socket);
    this.#raw.add(socket);
    socket.once('close', () => {
      this.#raw.delete(socket);
      if (this.#raw.size === 0) this.#rawClosed?.();
    });
  }

  /**
   * The answer to a refusal or failure, with a log line: debug for a client's fault, a warning
   * (at most one per kind and interval) when a dependency failed, an error for a bug of ours.
   */
  answerFor(error: unknown, context: Record<string, unknown> = {}): HttpAnswer {
    const answer = httpAnswerFor(error);
    if (!(error instanceof JwtProxyError)) this.#logger.error('request failed unexpectedly', { ...context, error });
    else if (answer.status >= 500) {
      const message = error instanceof SigningError ? 'unable to sign request' : 'request refused';
      this.#repeats.write('warn', answer.body, message, { ...context, status: answer.status, reason: answer.body });
    }
    else this.#logger.debug('request refused', { ...context, status: answer.status, reason: answer.body });
    return answer;
  }

  async #handle(req: IncomingMessage, res: ServerResponse, expectsContinue: boolean): Promise<void> {
    let head: RequestHead | undefined;
    try {
      const malformed = checkRequestHead(req, this.limits);
      if (malformed) throw malformed;
      head = readRequestHead(req.rawHeaders, this.#hooks.droppedRequestHeaders);
      const outbound = await this.#hooks.route(req, head);
      if (res.destroyed) return;
      // Only a routed request is invited to send its body, and must then keep sending it.
      if (expectsContinue) res.writeContinue();
      if (head.hasBody) watchRequestBody(req, this.limits.bodyIdleTimeoutMs);
      const relay = new ResponseRelay(res, (error) => this.#upstreamFailed(req, res, error, outbound, head!));
      this.#dispatch(outbound, req, head, relay);
    } catch (error) {
      // A body not read yet is drained when small; else (or when the client waits for `100
      // Continue`, or the proxy is stopping) the connection closes and nothing behind it runs.
      const keep = this.#hooks.keepConnectionAfterRefusal && head !== undefined && !expectsContinue && !this.#stopping && (req.complete || head.drainable);
      this.#refuse(res, this.answerFor(error, { method: req.method }), keep);
    }
  }

  #refuse(res: ServerResponse, answer: HttpAnswer, keep: boolean): void {
    if (!keep) this.#requests.closeAfter(res);
    writeAnswer(res, answer, !keep);
  }

  #dispatch(outbound: Outbound, req: IncomingMessage, head: RequestHead, handler: Dispatcher.DispatchHandler, upgrade?: string): void {
    const options: Dispatcher.DispatchOptions & { servername?: string | undefined } = {
      path: outbound.path,
      method: req.method as Dispatcher.HttpMethod,
      headers: outbound.headers,
      // The request stream itself: undici reads it as the upstream socket drains (backpressure both ways).
      body: upgrade === undefined && head.hasBody ? req : null,
      // undici takes `servername` per request although its types do not list it.
      servername: outbound.servername,
      ...(upgrade !== undefined ? { upgrade } : {}),
    };
    try {
      outbound.dispatcher.dispatch(options, handler);
    } catch (error) {
      // undici refused the request outright (a header it cannot send, say).
      handler.onResponseError?.(undefined as never, error as Error);
    }
  }

  #upstreamFailed(req: IncomingMessage, res: ServerResponse, error: Error, outbound: Outbound, head: RequestHead): void {
    const failure = upstreamFailure(error, outbound.upstreamName);
    this.#repeats.write('warn', failure.message, 'upstream request failed', { upstream: outbound.upstreamName, method: req.method, error: failure.message });
    const keep = this.#hooks.keepConnectionAfterRefusal && !this.#stopping && (req.complete || head.drainable);
    this.#refuse(res, httpAnswerFor(failure), keep);
  }

  async #handleUpgrade(req: IncomingMessage, socket: Duplex, bodyHead: Buffer): Promise<void> {
    this.adoptRaw(socket);
    if (this.#stopping) return writeRawAnswer(socket, SHUTTING_DOWN);
    try {
      const malformed = checkRequestHead(req, this.limits);
      if (malformed) throw malformed;
      const head = readRequestHead(req.rawHeaders, this.#hooks.droppedRequestHeaders);
      const outbound = await this.#hooks.route(req, head);
      if (socket.destroyed) return;
      const relay = new UpgradeRelay(socket, bodyHead, (error) => {
        const failure = upstreamFailure(error, outbound.upstreamName);
        this.#repeats.write('warn', failure.message, 'upstream upgrade failed', { upstream: outbound.upstreamName, error: failure.message });
        writeRawAnswer(socket, httpAnswerFor(failure));
      });
      this.#dispatch(outbound, req, head, relay, head.upgrade ?? 'websocket');
    } catch (error) {
      writeRawAnswer(socket, this.answerFor(error, { method: req.method, upgrade: true }));
    }
  }

  /**
   * Graceful stop: no new connections; every request in flight, and each still to come on an open
   * connection, is answered with `Connection: close`; each connection is closed once idle (core's
   * RequestTracker.drain); upgraded and tunnelled connections run until `deadline`; then what is
   * left is cut and the upstreams closed. `beforeDrain` runs once listeners are closed.
   */
  async stop(deadline: number, beforeDrain?: () => void): Promise<void> {
    this.#stopping = true;
    // net.Server's close stops accepting and leaves open connections alone. http.Server's own close
    // would also close every idle keep-alive connection at once, resetting the requests clients are
    // sending on them at that moment; the tracker closes each once it has stayed idle instead.
    const closed = Promise.all(this.#listening.map((server) => new Promise<void>((resolve) => net.Server.prototype.close.call(server, () => resolve()))));
    beforeDrain?.();
    const drained = await this.#requests.drain(deadline);
    const rawDone = drained && (await this.#rawClosedBy(deadline));
    if (!drained || !rawDone) {
      this.#logger.warn('shutdown deadline reached: closing the connections left', { requests: this.#requests.inFlight, tunnels: this.#raw.size });
    }
    for (const server of this.#servers) server.closeAllConnections();
    for (const socket of this.#raw) socket.destroy();
    await this.#hooks.closeUpstreams(deadline);
    await closed;
    // Now that nothing is open, http.Server's close stops its connection-checking timer.
    for (const server of this.#servers) server.close();
  }

  /** Resolves true when every raw connection has closed, false at `deadline`. */
  #rawClosedBy(deadline: number): Promise<boolean> {
    if (this.#raw.size === 0) return Promise.resolve(true);
    return new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), Math.max(0, deadline - Date.now()));
      this.#rawClosed = () => {
        clearTimeout(timer);
        resolve(true);
      };
    });
  }
}
