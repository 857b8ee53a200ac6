import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { Dispatcher } from 'undici';
import { httpAnswerFor, RepeatedLogLimiter, UpstreamError, type HttpAnswer, type Logger, type RequestSigner } from '@jwtproxy/core';
import { forwardedRequestHeaders, forwardedResponseHeaders } from './headers.js';
import type { RequestTarget } from './targets.js';
import type { UpstreamPools } from './upstreams.js';

/**
 * Writes one of the proxy's own answers (text/plain, no trailing newline, as the Go tool). Each
 * is a refusal or a failure, and closes the connection (`Connection: close`): a request pipelined
 * behind it is never run (RFC 9112 §9.6).
 */
export function answer(res: ServerResponse, { status, body }: HttpAnswer): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  res.shouldKeepAlive = false;
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

/** Certificate problems get their own wording: the operator's fix is trusted_certificates. */
const CERTIFICATE_ERROR = /CERT|SIGNATURE|ALTNAME|ISSUER/;

export function upstreamFailure(origin: string, error: unknown): UpstreamError {
  const { message, code } = error as { message?: string; code?: string };
  const reason = message ?? String(error);
  if (code && CERTIFICATE_ERROR.test(code)) {
    return new UpstreamError(`certificate of ${origin} not accepted: ${reason} (${code})`, { cause: error });
  }
  return new UpstreamError(`${origin}: ${reason}`, { cause: error });
}

/** Whether the request has a body to stream (Content-Length other than 0, or Transfer-Encoding). */
export function hasBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  return (length !== undefined && length !== '0') || req.headers['transfer-encoding'] !== undefined;
}

export interface Forwarder {
  /** Signs `req` for `target` and streams it to the upstream and the answer back. Never throws. */
  forward(req: IncomingMessage, res: ServerResponse, target: RequestTarget): Promise<void>;
}

/**
 * One request's way back: undici calls these as the upstream answers, and they write straight
 * into the client's response (no intermediate stream), pausing the upstream while the client
 * is slow to read (backpressure) and aborting it when the client goes away.
 */
class ResponseRelay implements Dispatcher.DispatchHandler {
  readonly #res: ServerResponse;
  readonly #req: IncomingMessage;
  readonly #origin: string;
  readonly #log: RepeatedLogLimiter;
  #finished = false;

  constructor(req: IncomingMessage, res: ServerResponse, origin: string, log: RepeatedLogLimiter) {
    this.#req = req;
    this.#res = res;
    this.#origin = origin;
    this.#log = log;
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    if (this.#res.destroyed) return controller.abort(new Error('client went away'));
    this.#res.once('close', () => {
      if (!this.#finished) controller.abort(new Error('client went away'));
    });
  }

  onResponseStart(controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders, statusMessage?: string): void {
    if (statusCode < 200) return; // 1xx: Node already answered 100-continue to the client
    const forwarded = forwardedResponseHeaders(headers);
    if (statusMessage) this.#res.writeHead(statusCode, statusMessage, forwarded);
    else this.#res.writeHead(statusCode, forwarded);
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (!this.#res.write(chunk)) {
      controller.pause();
      this.#res.once('drain', () => controller.resume());
    }
  }

  onResponseEnd(): void {
    this.#finished = true;
    this.#res.end();
  }

  onResponseError(_controller: Dispatcher.DispatchController, error: Error): void {
    this.fail(error);
  }

  /** The upstream could not be asked, or failed while answering. */
  fail(error: Error): void {
    this.#finished = true;
    if (this.#res.destroyed) return; // the client left first: nothing to tell
    if (this.#res.headersSent) {
      this.#log.write('debug', `${this.#origin} ${error.message}`, 'response stream ended early', { upstream: this.#origin, error: error.message });
      this.#res.destroy();
      return;
    }
    const failure = upstreamFailure(this.#origin, error);
    this.#log.write('warn', failure.message, 'upstream request failed', { upstream: this.#origin, error: failure.message });
    answer(this.#res, httpAnswerFor(failure));
    this.#req.resume();
  }
}

/**
 * The signer's hot path: one async signature (libuv thread pool), then the request streamed to a
 * pooled keep-alive connection and the response relayed back as it arrives; bodies are never buffered.
 */
export function createForwarder(signer: RequestSigner, pools: UpstreamPools, logger: Logger, repeatedLogIntervalMs?: number): Forwarder {
  // While the key source or an upstream is down every request fails the same way: one line per kind and interval.
  const log = new RepeatedLogLimiter(logger, { intervalMs: repeatedLogIntervalMs });
  return {
    async forward(req, res, target) {
      let authorization: string;
      try {
        authorization = await signer.authorizationFor(target.audience);
      } catch (error) {
        // The key source is a dependency (a plugin, a key registry): its failure is a warning.
        log.write('warn', error instanceof Error ? error.message : String(error), 'unable to sign request', { audience: target.audience, error });
        answer(res, httpAnswerFor(error));
        req.resume();
        return;
      }
      if (res.destroyed) return; // the client went away while we signed
      const relay = new ResponseRelay(req, res, target.origin, log);
      try {
        pools.poolFor(target.origin).dispatch(
          {
            method: req.method!,
            path: target.path,
            headers: forwardedRequestHeaders(req.rawHeaders, target.host, authorization),
            body: hasBody(req) ? req : null,
          },
          relay,
        );
      } catch (error) {
        relay.fail(error as Error); // undici refused the request outright (e.g. a header it cannot send)
      }
    },
  };
}
