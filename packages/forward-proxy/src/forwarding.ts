import type { IncomingMessage, ServerResponse } from 'node:http';
import { pipeline } from 'node:stream';
import { httpAnswerFor, UpstreamError, type HttpAnswer, type Logger, type RequestSigner } from '@jwtproxy/core';
import { forwardedRequestHeaders, forwardedResponseHeaders } from './headers.js';
import type { RequestTarget } from './targets.js';
import type { UpstreamPools } from './upstreams.js';

/** Writes one of the proxy's own answers (text/plain, no trailing newline, as the Go tool). */
export function answer(res: ServerResponse, { status, body }: HttpAnswer): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

/** Certificate problems get their own wording: the operator's fix is trusted_certificates. */
const CERTIFICATE_ERROR = /CERT|SIGNATURE|ALTNAME|ISSUER/;

function upstreamFailure(origin: string, error: unknown): UpstreamError {
  const { message, code } = error as { message?: string; code?: string };
  const reason = message ?? String(error);
  if (code && CERTIFICATE_ERROR.test(code)) {
    return new UpstreamError(`certificate of ${origin} not accepted: ${reason} (${code})`, { cause: error });
  }
  return new UpstreamError(`${origin}: ${reason}`, { cause: error });
}

function hasBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  return (length !== undefined && length !== '0') || req.headers['transfer-encoding'] !== undefined;
}

export interface Forwarder {
  /** Signs `req` for `target` and streams it to the upstream and the answer back. Never throws. */
  forward(req: IncomingMessage, res: ServerResponse, target: RequestTarget): Promise<void>;
}

/**
 * The signer's hot path: one async signature (libuv thread pool), then the request streamed to a
 * pooled keep-alive connection and the response streamed back; bodies are never buffered.
 */
export function createForwarder(signer: RequestSigner, pools: UpstreamPools, logger: Logger): Forwarder {
  return {
    async forward(req, res, target) {
      let authorization: string;
      try {
        authorization = await signer.authorizationFor(target.audience);
      } catch (error) {
        logger.error('unable to sign request', { audience: target.audience, error });
        answer(res, httpAnswerFor(error));
        req.resume();
        return;
      }
      if (res.destroyed) return; // the client went away while we signed

      let upstream;
      try {
        upstream = await pools.poolFor(target.origin).request({
          method: req.method!,
          path: target.path,
          headers: forwardedRequestHeaders(req.rawHeaders, target.host, authorization),
          body: hasBody(req) ? req : null,
        });
      } catch (error) {
        if (res.destroyed) return; // aborted by the client mid-upload: nothing to answer
        const failure = upstreamFailure(target.origin, error);
        logger.warn('upstream request failed', { upstream: target.origin, error: failure.message });
        answer(res, httpAnswerFor(failure));
        req.resume();
        return;
      }
      res.writeHead(upstream.statusCode, forwardedResponseHeaders(upstream.headers));
      pipeline(upstream.body, res, (error) => {
        if (error && !res.destroyed) res.destroy();
        if (error) logger.debug('response stream ended early', { upstream: target.origin, error: error.message });
      });
    },
  };
}
