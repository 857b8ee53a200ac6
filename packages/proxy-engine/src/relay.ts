import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';
import type { Exchange, Outbound } from './engine.js';
import { responseHeaders, type RequestHead, type UpstreamHeaders } from './request-head.js';

/** Passed to undici when the client went away, so the upstream request is cancelled. */
export const CLIENT_GONE = new Error('client closed the connection');

/** What the engine does when an upgrade's upstream cannot answer. */
export type UpstreamFailed = (error: Error) => void;

/** The engine's method a relay calls when the upstream failed (a symbol: not part of the engine's public surface). */
export const kUpstreamFailed = Symbol('jwtproxy.upstreamFailed');

/** Who answers an upstream failure: the engine (a reference, not a closure per request). */
export interface UpstreamFailureSink {
  [kUpstreamFailed](req: IncomingMessage, res: ServerResponse, error: Error, outbound: Outbound, head: RequestHead, exchange: Exchange | undefined): void;
}

/**
 * A status text Node writes as it came: printable ASCII. Node throws on others (undici decodes the
 * text as UTF-8), and RFC 9112 §4 lets a client ignore it: they get the status code's standard one.
 */
const RELAYED_STATUS_TEXT = /^[\t\x20-\x7e]+$/;

const kRelay = Symbol('jwtproxy.relay');
type RelayedResponse = ServerResponse & { [kRelay]?: ResponseRelay };

// Listeners shared by every response (no closure per request): they find their relay on `this`.
function onClientClose(this: RelayedResponse): void {
  this[kRelay]?.clientClosed();
}
function onClientDrain(this: RelayedResponse): void {
  this[kRelay]?.clientDrained();
}

/**
 * One request's way back: undici calls these as the upstream answers, and they write straight into
 * the client's response (no intermediate stream), pausing the upstream socket while the client is
 * slow to read (backpressure) and cancelling the upstream request when the client goes away.
 * 1xx answers are not relayed (the proxy answered `100 Continue` itself); the status text is kept.
 */
export class ResponseRelay implements Dispatcher.DispatchHandler {
  #controller: Dispatcher.DispatchController | undefined;
  #clientGone = false;

  constructor(
    private readonly res: ServerResponse,
    private readonly sink: UpstreamFailureSink,
    private readonly req: IncomingMessage,
    private readonly head: RequestHead,
    private readonly outbound: Outbound,
    /** The access record's account, when someone listens. */
    readonly exchange?: Exchange | undefined,
  ) {
    (res as RelayedResponse)[kRelay] = this;
    res.once('close', onClientClose);
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller;
    if (this.#clientGone) controller.abort(CLIENT_GONE);
  }

  onResponseStart(_controller: Dispatcher.DispatchController, statusCode: number, headers: UpstreamHeaders, statusMessage?: string): void {
    if (statusCode < 200 || this.#clientGone) return;
    this.exchange?.upstreamAnswered(statusCode);
    if (statusMessage && RELAYED_STATUS_TEXT.test(statusMessage)) this.res.writeHead(statusCode, statusMessage, responseHeaders(headers));
    else this.res.writeHead(statusCode, responseHeaders(headers));
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.exchange) this.exchange.bytesOut += chunk.length;
    if (!this.res.write(chunk) && !controller.paused) {
      controller.pause();
      this.res.once('drain', onClientDrain);
    }
  }

  onResponseEnd(): void {
    this.res.end();
  }

  onResponseError(_controller: Dispatcher.DispatchController | undefined, error: Error): void {
    if (this.#clientGone || error === CLIENT_GONE) return;
    // Logged either way; once the answer has started, the engine cuts it (the client must see a
    // broken response, not a short one), else it answers 502.
    this.sink[kUpstreamFailed](this.req, this.res, error, this.outbound, this.head, this.exchange);
  }

  clientClosed(): void {
    if (this.res.writableFinished) return;
    this.#clientGone = true;
    this.#controller?.abort(CLIENT_GONE);
  }

  clientDrained(): void {
    this.#controller?.resume();
  }
}

