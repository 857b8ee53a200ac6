import { readFileSync } from 'node:fs';
import { maxHeaderSize, type IncomingMessage, type Server, type ServerOptions, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { Server as TlsServer } from 'node:tls';
import { BadRequestError, httpAnswerFor, type HttpAnswer } from './errors.js';
import { writeRawAnswer } from './http.js';

/**
 * What every jwtproxy listener bounds, so that no client can hold the process: slow or silent
 * clients are timed out at each stage, the number of connections is capped, and a request head
 * the next hop would read differently from us is refused.
 */
export interface ServerLimits {
  /** The whole request head must arrive within this, ms (Go's ReadHeaderTimeout). */
  readHeaderTimeoutMs: number;
  /** A kept-alive connection with no request is closed after this, ms (Go's IdleTimeout). */
  idleTimeoutMs: number;
  /** A request body that sends nothing for this long is cut, ms. 0 turns it off. */
  bodyIdleTimeoutMs: number;
  /** Connections open at once; more are closed as they arrive. */
  maxConnections: number;
  /** Header lines in one request; more is answered 431. */
  maxHeaderLines: number;
}

/** Soft limit on open files of this process (Linux), or undefined where it cannot be read. */
function openFileLimit(): number | undefined {
  try {
    const limits = readFileSync('/proc/self/limits', 'utf8');
    const soft = /^Max open files\s+(\d+)/m.exec(limits)?.[1];
    return soft === undefined ? undefined : Number(soft);
  } catch {
    return undefined;
  }
}

/**
 * Default connection cap: each proxied connection may hold two descriptors (the client's and
 * one to the upstream), and the process needs some for itself (listeners, files, Redis), so
 * half of what is left under the open-file limit, between 64 and 16,384.
 */
export function defaultMaxConnections(fileLimit = openFileLimit()): number {
  if (fileLimit === undefined) return 4_096;
  return Math.max(64, Math.min(16_384, Math.floor((fileLimit - 64) / 2)));
}

export const DEFAULT_SERVER_LIMITS: Readonly<ServerLimits> = Object.freeze({
  readHeaderTimeoutMs: 30_000,
  idleTimeoutMs: 30_000,
  bodyIdleTimeoutMs: 60_000,
  maxConnections: defaultMaxConnections(),
  maxHeaderLines: 500,
});

/**
 * Options for `http.createServer` from the limits. No whole-request deadline (`requestTimeout: 0`):
 * long uploads, long polls and streams pass, as through the Go proxy; each stage has its own
 * bound instead. Node checks these timers every `connectionsCheckingInterval`, so that interval
 * is a fraction of the shortest of them.
 */
export function httpServerOptions(limits: ServerLimits): ServerOptions {
  return {
    requestTimeout: 0,
    headersTimeout: limits.readHeaderTimeoutMs,
    // `requestHeadAnswer` checks Host itself, after the header count: Node's own check would
    // answer 400 "no Host" for a head whose Host was among the lines it dropped.
    requireHostHeader: false,
    keepAliveTimeout: limits.idleTimeoutMs,
    connectionsCheckingInterval: Math.max(250, Math.min(30_000, Math.floor(limits.readHeaderTimeoutMs / 4))),
  };
}

/** Applies what `http.createServer` options cannot carry: the connection cap and header count. */
export function applyServerLimits(server: Server, limits: ServerLimits): void {
  server.maxConnections = limits.maxConnections;
  // Node 20 keeps at most this many header lines and drops the rest; one more than allowed lets
  // `requestHeadAnswer` see the excess and refuse it. Node 22 and later refuse the excess in the
  // parser instead (HPE_HEADER_OVERFLOW): `answerClientError` gives that the same answer.
  server.maxHeadersCount = limits.maxHeaderLines + 1;
  if (!server.listeners('clientError').includes(answerClientError)) server.on('clientError', answerClientError);
}

/** Node's own answers to a request it could not parse, as it writes them without a 'clientError' listener. */
const PARSE_ERROR_ANSWERS: Readonly<Record<string, string>> = {
  HPE_HEADER_OVERFLOW: '431 Request Header Fields Too Large',
  HPE_CHUNK_EXTENSIONS_OVERFLOW: '413 Payload Too Large',
  ERR_HTTP_REQUEST_TIMEOUT: '408 Request Timeout',
};

/**
 * A request head Node could not take: too many header lines (Node 22+ counts them against
 * maxHeadersCount in the parser) or too many bytes is answered 431 with the reason, as
 * `checkRequestHead` answers it on Node 20; every other parse error as Node answers it itself.
 */
function answerClientError(this: Server, error: NodeJS.ErrnoException & { bytesParsed?: number }, socket: Socket): void {
  const response = (socket as { _httpMessage?: ServerResponse })._httpMessage;
  if (!socket.writable || (response !== undefined && response.headersSent)) {
    socket.destroy();
    return;
  }
  if (error.code === 'HPE_HEADER_OVERFLOW') {
    // Fewer bytes than the size limit read: the parser stopped at the line count.
    const reason = (error.bytesParsed ?? Infinity) < ((this as { maxHeaderSize?: number }).maxHeaderSize ?? maxHeaderSize) ? 'too many header lines' : 'request head too large';
    writeRawAnswer(socket, httpAnswerFor(new BadRequestError(reason, 431)));
    return;
  }
  socket.end(`HTTP/1.1 ${PARSE_ERROR_ANSWERS[error.code ?? ''] ?? '400 Bad Request'}\r\nConnection: close\r\n\r\n`);
  socket.destroy();
}

/** RFC 9110 §7.2 / RFC 3986 authority: host (reg-name, IPv4, [IPv6]) and an optional port. */
const HOST_VALUE = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::\d{0,5})?$/;

/**
 * Refuses a request head that the next hop might read differently from us (RFC 9112 §3.2): an
 * HTTP/1.1 request needs exactly one Host, a valid authority; and more header lines than allowed
 * are refused (431) rather than silently cut (Node drops lines past its limit, which can drop the
 * very header a proxy added). Returns the error, or undefined when the head is acceptable.
 */
export function checkRequestHead(req: IncomingMessage, limits: ServerLimits): BadRequestError | undefined {
  const raw = req.rawHeaders;
  if (raw.length > limits.maxHeaderLines * 2) return new BadRequestError('too many header lines', 431);
  let hosts = 0;
  let host = '';
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length === 4 && name.toLowerCase() === 'host') {
      hosts++;
      host = raw[i + 1]!;
    }
  }
  if (hosts > 1) return new BadRequestError('more than one Host header');
  if (hosts === 0) return req.httpVersionMajor === 1 && req.httpVersionMinor >= 1 ? new BadRequestError('no Host header') : undefined;
  if (!HOST_VALUE.test(host)) return new BadRequestError('invalid Host header');
  return undefined;
}

/** `checkRequestHead` as the answer to write, or undefined when the head is acceptable. */
export function requestHeadAnswer(req: IncomingMessage, limits: ServerLimits): HttpAnswer | undefined {
  const error = checkRequestHead(req, limits);
  return error && httpAnswerFor(error);
}

/**
 * Cuts a request body that stops sending: the socket's idle timer runs while the body is read and
 * is cleared once it has all arrived (after that the upstream may take as long as it likes).
 */
export function watchRequestBody(req: IncomingMessage, idleTimeoutMs: number): void {
  if (idleTimeoutMs <= 0 || req.complete) return;
  const socket = req.socket;
  const cut = (): void => void socket.destroy();
  socket.setTimeout(idleTimeoutMs, cut);
  // Given the callback, setTimeout(0) removes it too: else each body on a kept-alive connection
  // would leave one more 'timeout' listener behind (a leak, and Node's MaxListenersExceededWarning).
  req.once('end', () => socket.setTimeout(0, cut));
}

/** An answer written with its own `Connection: close` header (Node then closes without clearing shouldKeepAlive). */
function saysClose(res: ServerResponse): boolean {
  const connection = res.getHeader('connection');
  return typeof connection === 'string' && connection.toLowerCase().includes('close');
}

const kConnectionState = Symbol('jwtproxy.connectionState');

interface ConnectionState {
  /** The tracker of the server the connection came to. */
  readonly tracker: RequestTracker;
  /** Response to the request before this one, until it has been written out. */
  pending: ServerResponse | undefined;
  /** An answer on this connection said `Connection: close`: nothing after it is run. */
  closing: boolean;
  /** When the connection last had no request in flight (Date.now()). */
  idleSince: number;
}

const kPrevious = Symbol('jwtproxy.previous');
const kNext = Symbol('jwtproxy.next');
const kList = Symbol('jwtproxy.list');
type Member<T> = T & { [kPrevious]?: Member<T> | undefined; [kNext]?: Member<T> | undefined; [kList]?: object | undefined };

/**
 * A set of objects that come and go on every request or connection, linked through the objects
 * themselves; each object is in one such set at a time.
 *
 * Why not a Set: V8 moves a Set's entries to a new table as they are added and deleted, and the
 * table it leaves behind still points at the objects it held. A long-lived Set's tables live in
 * the old generation, and the young-generation GC takes every pointer from there into the young
 * generation as a live reference, dead table or not: so every response (and all it holds: the
 * request, its headers, the upstream's answer) lived through two scavenges, was promoted, and
 * waited for a full GC. Measured on the verifier: 2.5-3 MB promoted per scavenge and scavenges of
 * 10-25 ms, against none and ~1 ms with this list (issue 16's p99).
 */
class LinkedSet<T extends object> implements Iterable<T> {
  #first: Member<T> | undefined;
  #size = 0;

  get size(): number {
    return this.#size;
  }

  add(item: T): void {
    const member = item as Member<T>;
    if (member[kList] !== undefined) return;
    member[kList] = this;
    member[kPrevious] = undefined;
    member[kNext] = this.#first;
    if (this.#first) this.#first[kPrevious] = member;
    this.#first = member;
    this.#size++;
  }

  /** Removes `item`; false when it was not in this set. */
  delete(item: T): boolean {
    const member = item as Member<T>;
    if (member[kList] !== this) return false;
    const previous = member[kPrevious];
    const next = member[kNext];
    if (previous) previous[kNext] = next;
    else this.#first = next;
    if (next) next[kPrevious] = previous;
    // Cleared, so that a member that did reach the old generation keeps no neighbour alive.
    member[kPrevious] = undefined;
    member[kNext] = undefined;
    member[kList] = undefined;
    this.#size--;
    return true;
  }

  *[Symbol.iterator](): Iterator<T> {
    // The next one is read first: the caller may delete the member it was given.
    for (let member = this.#first; member !== undefined; ) {
      const next: Member<T> | undefined = member[kNext];
      yield member;
      member = next;
    }
  }
}

/** How long a connection must have been idle before a graceful stop closes it (see `drain`). */
const STOP_IDLE_GRACE_MS = 250;

type TrackedSocket = Socket & { [kConnectionState]?: ConnectionState };
/** A response in flight knows its connection's state: one listener shared by all responses finds it there. */
type TrackedResponse = ServerResponse & { [kConnectionState]?: ConnectionState };

/**
 * Requests of every connection of one server, for the rules that hold across requests:
 *  - in order: a request pipelined behind another one is not started before that one's answer is
 *    written, so that a refusal which closes the connection is never followed by a request that
 *    ran anyway (RFC 9112 §9.6: nothing after a `close` is processed);
 *  - in flight: counted, so that a graceful stop can tell every one of them `Connection: close`
 *    and wait until they are done.
 */
export class RequestTracker {
  readonly #inFlight = new LinkedSet<ServerResponse>();
  /** Open HTTP connections of the watched servers (upgraded and tunnelled ones are let go). */
  readonly #connections = new LinkedSet<TrackedSocket>();
  #stopping = false;
  #drained: (() => void) | undefined;

  /**
   * Follows the connections of `server` (an http or https server; the socket requests arrive on),
   * so that a graceful stop can close each one once it is idle instead of all idle ones at once.
   */
  watch(server: Server): void {
    const event = server instanceof TlsServer ? 'secureConnection' : 'connection';
    server.on(event, (socket: TrackedSocket) => {
      socket[kConnectionState] ??= this.#newState();
      this.#connections.add(socket);
      socket.once('close', () => this.#connections.delete(socket));
    });
  }

  /** The connection now carries another protocol (an upgrade, a CONNECT tunnel): its owner closes it. */
  release(socket: Socket): void {
    this.#connections.delete(socket);
  }

  get inFlight(): number {
    return this.#inFlight.size;
  }

  /** HTTP connections of the watched servers open now (upgraded and tunnelled ones are let go). */
  get openConnections(): number {
    return this.#connections.size;
  }

  get stopping(): boolean {
    return this.#stopping;
  }

  #newState(): ConnectionState {
    return { tracker: this, pending: undefined, closing: false, idleSince: Date.now() };
  }

  /**
   * A response's 'close', one function for every response (no closure per request): 'close' is
   * emitted once, and a second call would find the request already counted done.
   */
  static readonly #responseClosed = function (this: TrackedResponse): void {
    const state = this[kConnectionState];
    if (state) state.tracker.#done(this, state);
  };

  /**
   * Runs `handle(req, res)` for this request once the requests before it on its connection are
   * answered; drops it (and the connection) when one of them closed the connection.
   */
  admit(req: IncomingMessage, res: ServerResponse, handle: (req: IncomingMessage, res: ServerResponse) => void): void {
    const socket = req.socket as TrackedSocket;
    const state = (socket[kConnectionState] ??= this.#newState());
    if (state.closing) {
      socket.destroy();
      return;
    }
    this.#inFlight.add(res);
    (res as TrackedResponse)[kConnectionState] = state;
    res.on('close', RequestTracker.#responseClosed);
    if (this.#stopping) res.shouldKeepAlive = false;
    const previous = state.pending;
    state.pending = res;
    if (previous === undefined || previous.writableFinished || previous.destroyed) {
      handle(req, res);
      return;
    }
    previous.once('close', () => {
      if (state.closing || res.destroyed) {
        socket.destroy();
        // A response still queued behind another one never emits 'close': count it done here,
        // or it stays in flight for good (and a stop waits for it until its deadline).
        this.#done(res, state);
        return;
      }
      handle(req, res);
    });
  }

  /** This answer closes the connection: requests pipelined behind it are never run. */
  closeAfter(res: ServerResponse): void {
    res.shouldKeepAlive = false;
    const state = (res.socket as TrackedSocket | null)?.[kConnectionState];
    if (state) state.closing = true;
  }

  #done(res: ServerResponse, state: ConnectionState): void {
    this.#inFlight.delete(res);
    if (state.pending === res) {
      state.pending = undefined;
      state.idleSince = Date.now();
    }
    if (!res.shouldKeepAlive || !res.writableFinished || saysClose(res)) state.closing = true;
    if (this.#inFlight.size === 0) this.#drained?.();
  }

  /**
   * Starts a graceful stop: every request in flight whose answer has not started is answered with
   * `Connection: close`, and so is every request still to come on an open connection. A watched
   * connection is closed once it has been idle for a moment: a client that reuses its connection
   * at once gets its request served (with `Connection: close`) instead of a reset, which closing
   * every idle connection at once would give the ones racing it. Resolves when no request is in
   * flight and no watched connection is open, or at `deadline`; true when all finished.
   */
  async drain(deadline: number): Promise<boolean> {
    this.#stopping = true;
    for (const res of this.#inFlight) if (!res.headersSent) res.shouldKeepAlive = false;
    const finished = (): boolean => this.#inFlight.size === 0 && this.#connections.size === 0;
    if (finished()) return true;
    return new Promise<boolean>((resolve) => {
      const settle = (done: boolean): void => {
        clearInterval(sweeper);
        clearTimeout(timer);
        this.#drained = undefined;
        resolve(done);
      };
      const sweep = (): void => {
        const idleBefore = Date.now() - STOP_IDLE_GRACE_MS;
        for (const socket of this.#connections) {
          const state = socket[kConnectionState];
          if (state && state.pending === undefined && state.idleSince <= idleBefore) socket.destroy();
        }
        if (finished()) settle(true);
      };
      const sweeper = setInterval(sweep, 50);
      const timer = setTimeout(() => settle(false), Math.max(0, deadline - Date.now()));
      this.#drained = () => {
        if (finished()) settle(true);
      };
    });
  }
}
