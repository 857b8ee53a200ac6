import type { IncomingMessage, ServerResponse } from 'node:http';
import { UpstreamError, httpAnswerFor, type RepeatedLogLimiter } from '@jwtproxy/core';
import type { Dispatcher } from 'undici';
import { describeUpstreamError, writeAnswer } from './answers.js';
import { responseHeaders, type RequestHead, type UpstreamHeaders } from './headers.js';
import type { Upstream } from './upstream.js';

/** undici takes `servername` per request although its types do not list it (see upstream.ts). */
export type UpstreamDispatchOptions = Dispatcher.DispatchOptions & { servername?: string | undefined };

/** Passed to undici when the client went away, so the upstream request is cancelled. */
export const CLIENT_GONE = new Error('client closed the connection');

const kForwarding = Symbol('jwtproxy.forwarding');
type ForwardedResponse = ServerResponse & { [kForwarding]?: Forwarding };

// Listeners shared by every response (no closure per request): they find their Forwarding on `this`.
function onClientClose(this: ForwardedResponse): void {
  this[kForwarding]?.clientClosed();
}
function onClientDrain(this: ForwardedResponse): void {
  this[kForwarding]?.clientDrained();
}

/**
 * One verified request on its way upstream: an undici dispatch handler that streams the
 * upstream's answer into the client's response with backpressure (a slow client pauses the
 * upstream socket), and cancels the upstream request when the client leaves.
 */
class Forwarding implements Dispatcher.DispatchHandler {
  #controller: Dispatcher.DispatchController | undefined;
  #clientGone = false;

  constructor(
    private readonly upstream: Upstream,
    private readonly log: RepeatedLogLimiter,
    private readonly req: IncomingMessage,
    private readonly res: ServerResponse,
    private readonly drainable: boolean,
  ) {}

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller;
    if (this.#clientGone) controller.abort(CLIENT_GONE);
  }

  onResponseStart(_controller: Dispatcher.DispatchController, statusCode: number, headers: UpstreamHeaders): void {
    // 1xx informational answers (103 Early Hints) are not relayed; the final one follows.
    if (statusCode < 200 || this.#clientGone) return;
    this.res.writeHead(statusCode, responseHeaders(headers));
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (!this.res.write(chunk) && !controller.paused) {
      controller.pause();
      this.res.once('drain', onClientDrain);
    }
  }

  onResponseEnd(): void {
    this.res.end();
  }

  onResponseError(_controller: Dispatcher.DispatchController | undefined, error: Error): void {
    if (this.#clientGone) return;
    const reason = describeUpstreamError(error);
    this.log.write('warn', reason, 'upstream request failed', { upstream: this.upstream.description, method: this.req.method, error: reason });
    if (this.res.headersSent) {
      // The upstream died mid-response: the client must see a broken response, not a short one.
      this.res.destroy();
      return;
    }
    writeAnswer(this.res, httpAnswerFor(new UpstreamError(reason, { cause: error })), this.req.complete || this.drainable);
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

/** Sends a verified request upstream; the answer (or a 502) goes to `res`. */
export function forward(upstream: Upstream, log: RepeatedLogLimiter, req: IncomingMessage, res: ServerResponse, head: RequestHead): void {
  const forwarding = new Forwarding(upstream, log, req, res, head.drainable);
  (res as ForwardedResponse)[kForwarding] = forwarding;
  res.once('close', onClientClose);
  const options: UpstreamDispatchOptions = {
    path: upstream.targetFor(req.url!),
    method: req.method as Dispatcher.HttpMethod,
    headers: head.headers,
    // The request stream itself: undici reads it as the upstream socket drains (backpressure both ways).
    body: head.hasBody ? req : null,
    servername: upstream.servername,
  };
  upstream.pool.dispatch(options, forwarding);
}
