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
  VerificationError,
  UpstreamError,
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
import { ResponseRelay, kUpstreamFailed } from './relay.js';
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
  /** Who the request is from, for the access log: the verified token's, or the one the signer made. */
  token?: TokenFacts | undefined;
}

/** What the access log and metrics say of a token (never the token itself). */
export interface TokenFacts {
  iss?: string | undefined;
  kid?: string | undefined;
  sub?: string | undefined;
  aud?: string | undefined;
}

/**
 * One request, upgrade or CONNECT tunnel as it ended: what the access log writes and the metrics
 * count. `verdict` is `passed` (routed to the upstream), `refused` (the client's fault: a 4xx of
 * the proxy's own) or `failed` (a 5xx of the proxy's own: a dependency, the upstream, a bug).
 */
export interface AccessRecord {
  kind: 'request' | 'upgrade' | 'tunnel';
  method: string;
  host: string | undefined;
  /** Path without the query (a query may carry secrets). */
  path: string;
  client: string | undefined;
  /** What the client got; 0 when the connection ended before an answer. */
  status: number;
  upstreamStatus: number | undefined;
  bytesIn: number;
  bytesOut: number;
  durationMs: number;
  /** From the request sent upstream to the upstream's answer head. */
  upstreamMs: number | undefined;
  verdict: 'passed' | 'refused' | 'failed';
  /** The error code of a refusal or failure (core's ErrorCode, `ERR_INVALID_CLAIM`). */
  reason: string | undefined;
  /** The facts of that error (which claim, expected and received audience, skew). */
  facts: Readonly<Record<string, string | number>> | undefined;
  token: TokenFacts | undefined;
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
  /** A CONNECT request; the socket is the engine's to cut at a stop's deadline. Returns the status it answered. */
  connect(req: IncomingMessage, socket: Duplex, head: Buffer): number;
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
  /** Called as each request, upgrade and tunnel ends (access log, metrics). */
  onAccess?: ((record: AccessRecord) => void) | undefined;
}

/** The answer to an upgrade or CONNECT that comes while the proxy is stopping. */
const SHUTTING_DOWN: HttpAnswer = { status: 503, body: 'jwtproxy: shutting down' };

/** An upgrade that comes while the proxy is stopping: answered 503. */
class ShuttingDownError extends UpstreamError {
  constructor() {
    super('shutting down');
  }
}

/** The verdict, reason and facts of an error that ended a request. */
function verdictOf(error: unknown): Pick<AccessRecord, 'verdict' | 'reason' | 'facts'> {
  const status = httpAnswerFor(error).status;
  const typed = error instanceof JwtProxyError ? error : undefined;
  return { verdict: status >= 500 ? 'failed' : 'refused', reason: typed?.code ?? 'ERR_INTERNAL', facts: typed?.facts };
}

/** Path of a request target without its query (an absolute-form target without its scheme and host too). */
function pathOf(url: string | undefined): string {
  if (url === undefined) return '';
  let start = 0;
  if (url.charCodeAt(0) !== 47 /* '/' */) {
    const authority = url.indexOf('://');
    if (authority >= 0) {
      const slash = url.indexOf('/', authority + 3);
      start = slash < 0 ? url.length : slash;
    }
  }
  const question = url.indexOf('?', start);
  return url.slice(start, question < 0 ? url.length : question) || '/';
}

/** The record of an upgrade or tunnel, from its raw socket's counters. */
function rawRecord(kind: 'upgrade' | 'tunnel', req: IncomingMessage, socket: Socket, status: number, started: number): AccessRecord {
  return {
    kind,
    method: req.method ?? '',
    host: kind === 'tunnel' ? req.url : req.headers.host,
    path: kind === 'tunnel' ? '' : pathOf(req.url),
    client: socket.remoteAddress,
    status,
    upstreamStatus: undefined,
    bytesIn: socket.bytesRead ?? 0,
    bytesOut: socket.bytesWritten ?? 0,
    durationMs: performance.now() - started,
    upstreamMs: undefined,
    verdict: status < 400 ? 'passed' : status >= 500 ? 'failed' : 'refused',
    reason: undefined,
    facts: undefined,
    token: undefined,
  };
}

/**
 * One request's account while it runs, for the access record: created only when someone listens
 * (`onAccess`), so that a proxy without access log or metrics pays nothing for it.
 */
const kExchange = Symbol('jwtproxy.exchange');
type ResponseWithExchange = ServerResponse & { [kExchange]?: Exchange };

export class Exchange {
  readonly #started = performance.now();
  readonly #socketBytesRead: number;
  #upstreamStarted = 0;
  upstreamMs: number | undefined;
  upstreamStatus: number | undefined;
  bytesOut = 0;
  token: TokenFacts | undefined;
  #ending: Pick<AccessRecord, 'verdict' | 'reason' | 'facts'> | undefined;

  /** Kept from the start: by the time the response closes, `req.socket` may already be null. */
  readonly #socket: Socket;

  constructor(
    private readonly req: IncomingMessage,
    private readonly res: ServerResponse,
    private readonly onAccess: (record: AccessRecord) => void,
  ) {
    this.#socket = req.socket;
    this.#socketBytesRead = req.socket.bytesRead;
    (res as ResponseWithExchange)[kExchange] = this;
    res.on('close', Exchange.#responseClosed);
  }

  /** One listener function for every response (no closure and no `once` wrapper per request); 'close' comes once. */
  static readonly #responseClosed = function (this: ResponseWithExchange): void {
    const exchange = this[kExchange];
    if (exchange) exchange.#end();
  };

  upstreamStart(): void {
    this.#upstreamStarted = performance.now();
  }

  upstreamAnswered(status: number): void {
    this.upstreamStatus = status;
    this.upstreamMs = performance.now() - this.#upstreamStarted;
  }

  refusedBy(error: unknown): void {
    this.#ending ??= verdictOf(error);
  }

  #end(): void {
    const { req, res } = this;
    const ending = this.#ending;
    // Fields written out, not spread from an object made for the purpose: one object per request.
    const record: AccessRecord = {
      kind: 'request',
      method: req.method ?? '',
      host: req.headers.host,
      path: pathOf(req.url),
      client: this.#socket.remoteAddress,
      status: res.headersSent ? res.statusCode : 0,
      upstreamStatus: this.upstreamStatus,
      bytesIn: Math.max(0, this.#socket.bytesRead - this.#socketBytesRead),
      bytesOut: this.bytesOut,
      durationMs: performance.now() - this.#started,
      upstreamMs: this.upstreamMs,
      verdict: ending === undefined ? 'passed' : ending.verdict,
      reason: ending?.reason,
      facts: ending?.facts,
      token: this.token,
    };
    notify(this.onAccess, record);
  }
}

/** An observer's failure (access log, metrics) must never reach the process: it is dropped. */
function notify(onAccess: (record: AccessRecord) => void, record: AccessRecord): void {
  try {
    onAccess(record);
  } catch {
    // Observability must not take the proxy down; a broken observer loses its record.
  }
}

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
  #limits: ServerLimits;
  readonly #hooks: ProxyHooks;
  readonly #logger: Logger;
  /** While a dependency is down every request fails the same way: one line per kind and interval. */
  readonly #repeats: RepeatedLogLimiter;
  readonly #requests = new RequestTracker();
  #onAccess: ((record: AccessRecord) => void) | undefined;
  readonly #servers: Server[] = [];
  readonly #listening: Server[] = [];
  /** Connections switched to another protocol (upgrades) or tunnelled (CONNECT): cut at the deadline. */
  readonly #raw = new Set<Duplex>();
  #rawClosed: (() => void) | undefined;
  #stopping = false;

  constructor(options: ProxyEngineOptions) {
    this.#hooks = options.hooks;
    this.#logger = options.logger;
    this.#limits = serverLimits(options.limits);
    this.#repeats = new RepeatedLogLimiter(options.logger, { intervalMs: options.repeatedLogIntervalMs });
    this.#onAccess = options.onAccess;
  }

  /** The limits in force (a reload may change them). */
  get limits(): ServerLimits {
    return this.#limits;
  }

  /**
   * New limits for every server of the engine, in force for the next connections and requests
   * (a reload): Node reads its timeouts and caps from the server object as it goes.
   */
  updateLimits(limits: Partial<ServerLimits> | undefined): void {
    this.#limits = serverLimits(limits);
    for (const server of this.#servers) {
      server.headersTimeout = this.#limits.readHeaderTimeoutMs;
      server.keepAliveTimeout = this.#limits.idleTimeoutMs;
      applyServerLimits(server, this.#limits);
    }
  }

  /** Who is told as each request ends, from now on (a reload may turn the access log on or off). */
  setOnAccess(onAccess: ((record: AccessRecord) => void) | undefined): void {
    this.#onAccess = onAccess;
  }

  get stopping(): boolean {
    return this.#stopping;
  }

  /** HTTP connections open now: the listeners' and those handed to an unbound server (inside CONNECT tunnels). */
  get openConnections(): number {
    return this.#requests.openConnections;
  }

  /** Connections switched to another protocol (WebSocket upgrades) or tunnelled (CONNECT) open now. */
  get openTunnels(): number {
    return this.#raw.size;
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
    server.on('request', (req: IncomingMessage, res: ServerResponse) => this.#requests.admit(req, res, this.#runRequest));
    server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => this.#requests.admit(req, res, this.#runExpectingContinue));
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, bodyHead: Buffer) => void this.#handleUpgrade(req, socket, bodyHead));
    server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      this.adoptRaw(socket);
      const started = performance.now();
      let status = SHUTTING_DOWN.status;
      if (this.#stopping) writeRawAnswer(socket, SHUTTING_DOWN);
      else status = this.#hooks.connect(req, socket, head);
      if (this.#onAccess) {
        const onAccess = this.#onAccess;
        socket.once('close', () => notify(onAccess, rawRecord('tunnel', req, socket as Socket, status, started)));
      }
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
    else if (answer.status >= 500 || (error instanceof VerificationError && error.dependencyFailure)) {
      // A dependency failed (a key server answers 403 with the Go body, yet it is an outage): warn.
      const message = error instanceof SigningError ? 'unable to sign request' : 'request refused';
      const cause = error.cause instanceof Error ? error.cause.message : undefined;
      this.#repeats.write('warn', `${answer.body} ${cause ?? ''}`, message, { ...context, status: answer.status, reason: answer.body, cause });
    }
    else this.#logger.debug('request refused', { ...context, status: answer.status, reason: answer.body });
    return answer;
  }

  // One function each for every request (no closure per request), handed to the tracker's admit.
  readonly #runRequest = (req: IncomingMessage, res: ServerResponse): void => this.#handle(req, res, false);
  readonly #runExpectingContinue = (req: IncomingMessage, res: ServerResponse): void => this.#handle(req, res, true);

  /**
   * Check the head, read it, route (verify or sign), then relay. Without `async`: a hook that
   * answers at once is relayed at once, and one that answers later costs one `then`, not the
   * async function's own promise and hops on top.
   */
  #handle(req: IncomingMessage, res: ServerResponse, expectsContinue: boolean): void {
    const exchange = this.#onAccess ? new Exchange(req, res, this.#onAccess) : undefined;
    let head: RequestHead | undefined;
    let routed: Outbound | Promise<Outbound>;
    try {
      const malformed = checkRequestHead(req, this.#limits);
      if (malformed) throw malformed;
      head = readRequestHead(req.rawHeaders, this.#hooks.droppedRequestHeaders);
      routed = this.#hooks.route(req, head);
    } catch (error) {
      this.#refused(req, res, head, expectsContinue, exchange, error);
      return;
    }
    const routedHead = head;
    if (routed instanceof Promise) {
      routed.then(
        (outbound) => this.#relay(req, res, routedHead, expectsContinue, exchange, outbound),
        (error: unknown) => this.#refused(req, res, routedHead, expectsContinue, exchange, error),
      );
    } else this.#relay(req, res, routedHead, expectsContinue, exchange, routed);
  }

  /** A routed request: sent to its upstream, the answer relayed back. */
  #relay(req: IncomingMessage, res: ServerResponse, head: RequestHead, expectsContinue: boolean, exchange: Exchange | undefined, outbound: Outbound): void {
    try {
      if (exchange) exchange.token = outbound.token;
      if (res.destroyed) return;
      // Only a routed request is invited to send its body, and must then keep sending it.
      if (expectsContinue) res.writeContinue();
      if (head.hasBody) watchRequestBody(req, this.#limits.bodyIdleTimeoutMs);
      this.#dispatch(outbound, req, head, new ResponseRelay(res, this, req, head, outbound, exchange));
    } catch (error) {
      this.#refused(req, res, head, expectsContinue, exchange, error);
    }
  }

  /**
   * A request refused (the client's fault) or failed before it was sent. A body not read yet is
   * drained when small; else (or when the client waits for `100 Continue`, or the proxy is
   * stopping) the connection closes and nothing behind it runs.
   */
  #refused(req: IncomingMessage, res: ServerResponse, head: RequestHead | undefined, expectsContinue: boolean, exchange: Exchange | undefined, error: unknown): void {
    exchange?.refusedBy(error);
    const keep = this.#hooks.keepConnectionAfterRefusal && head !== undefined && !expectsContinue && !this.#stopping && (req.complete || head.drainable);
    this.#refuse(res, this.answerFor(error, { method: req.method }), keep);
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
    };
    if (upgrade !== undefined) options.upgrade = upgrade;
    try {
      (handler as { exchange?: Exchange | undefined }).exchange?.upstreamStart();
      outbound.dispatcher.dispatch(options, handler);
    } catch (error) {
      // undici refused the request outright (a header it cannot send, say).
      handler.onResponseError?.(undefined as never, error as Error);
    }
  }

  /** The upstream could not answer before the response started (ResponseRelay's failure): 502, logged. */
  [kUpstreamFailed](req: IncomingMessage, res: ServerResponse, error: Error, outbound: Outbound, head: RequestHead, exchange: Exchange | undefined): void {
    const failure = upstreamFailure(error, outbound.upstreamName);
    exchange?.refusedBy(failure);
    this.#repeats.write('warn', failure.message, 'upstream request failed', { upstream: outbound.upstreamName, method: req.method, error: failure.message });
    const keep = this.#hooks.keepConnectionAfterRefusal && !this.#stopping && (req.complete || head.drainable);
    this.#refuse(res, httpAnswerFor(failure), keep);
  }

  async #handleUpgrade(req: IncomingMessage, socket: Duplex, bodyHead: Buffer): Promise<void> {
    this.adoptRaw(socket);
    const started = performance.now();
    let status = 101;
    let failure: unknown;
    let token: TokenFacts | undefined;
    if (this.#onAccess) {
      socket.once('close', () => {
        const record = rawRecord('upgrade', req, socket as Socket, status, started);
        record.token = token;
        if (failure !== undefined) Object.assign(record, verdictOf(failure));
        if (this.#onAccess) notify(this.#onAccess, record);
      });
    }
    const refuse = (error: unknown): void => {
      failure = error;
      const answer = this.answerFor(error, { method: req.method, upgrade: true });
      status = answer.status;
      writeRawAnswer(socket, answer);
    };
    if (this.#stopping) {
      // The engine's own 503, as for a CONNECT: through httpAnswerFor an UpstreamError is a 502.
      failure = new ShuttingDownError();
      status = SHUTTING_DOWN.status;
      return writeRawAnswer(socket, SHUTTING_DOWN);
    }
    try {
      const malformed = checkRequestHead(req, this.limits);
      if (malformed) throw malformed;
      const head = readRequestHead(req.rawHeaders, this.#hooks.droppedRequestHeaders);
      const outbound = await this.#hooks.route(req, head);
      token = outbound.token;
      if (socket.destroyed) return;
      const relay = new UpgradeRelay(socket, bodyHead, (error) => {
        const upstreamError = upstreamFailure(error, outbound.upstreamName);
        this.#repeats.write('warn', upstreamError.message, 'upstream upgrade failed', { upstream: outbound.upstreamName, error: upstreamError.message });
        failure = upstreamError;
        status = httpAnswerFor(upstreamError).status;
        writeRawAnswer(socket, httpAnswerFor(upstreamError));
      });
      this.#dispatch(outbound, req, head, relay, head.upgrade ?? 'websocket');
    } catch (error) {
      refuse(error);
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
