import type { ServerResponse } from 'node:http';
import { UpstreamError, type HttpAnswer } from '@jwtproxy/core';

const TEXT_PLAIN = 'text/plain; charset=utf-8';

/**
 * Writes one of the proxy's own answers: status and exact body (text/plain, no trailing newline,
 * as Go's http.Error minus the newline). With `close`, the answer says `Connection: close` and is
 * the last thing its connection carries. Too late for a status (the upstream's answer has started):
 * the response is cut, so the client sees it is incomplete.
 */
export function writeAnswer(res: ServerResponse, answer: HttpAnswer, close: boolean): void {
  if (res.destroyed) return;
  if (res.headersSent) {
    res.destroy();
    return;
  }
  if (close) res.shouldKeepAlive = false;
  res.writeHead(answer.status, { ...answer.headers, 'content-type': TEXT_PLAIN, 'content-length': Buffer.byteLength(answer.body) });
  res.end(answer.body);
}

/** An undici/net error as one line: a failed dual-stack connect is an AggregateError with an empty message. */
function describe(error: Error): string {
  if (error instanceof AggregateError && error.errors.length > 0) {
    return error.errors.map((inner: unknown) => (inner instanceof Error ? inner.message : String(inner))).join('; ');
  }
  return error.message || (error as NodeJS.ErrnoException).code || error.name;
}

/** Certificate problems get their own wording: the operator's fix is a trusted CA. */
const CERTIFICATE_ERROR = /CERT|SIGNATURE|ALTNAME|ISSUER/;

/**
 * The upstream could not be asked or failed: an UpstreamError (answered 502). A proxy with many
 * upstreams (the signer) passes `upstreamName`, and the message names it and says when its
 * certificate was not accepted; a proxy with one upstream (the verifier) gives the reason alone.
 */
export function upstreamFailure(error: Error, upstreamName: string | undefined): UpstreamError {
  const reason = describe(error);
  if (upstreamName === undefined) return new UpstreamError(reason, { cause: error });
  const code = (error as NodeJS.ErrnoException).code;
  if (code && CERTIFICATE_ERROR.test(code)) {
    return new UpstreamError(`certificate of ${upstreamName} not accepted: ${reason} (${code})`, { cause: error });
  }
  return new UpstreamError(`${upstreamName}: ${reason}`, { cause: error });
}
