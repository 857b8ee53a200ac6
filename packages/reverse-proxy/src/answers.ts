import { STATUS_CODES, type ServerResponse } from 'node:http';
import type { HttpAnswer } from '@jwtproxy/core';

/** The Go verifier's answer to an absolute-form (forward proxy) request. */
export const PROXY_REQUEST_ANSWER: HttpAnswer = {
  status: 500,
  body: 'This is a reverse proxy server. Does not respond to proxy requests.',
};

const TEXT_PLAIN = 'text/plain; charset=utf-8';

/**
 * Writes a refusal (status + exact body, no trailing newline, as Go's http.Error minus the
 * newline). `keepConnection` is false when the request body was not read and is too large
 * (or of unknown length) to drain: the connection is then closed after the answer instead of
 * reading the body, so a refused upload never stalls either side.
 */
export function writeAnswer(res: ServerResponse, answer: HttpAnswer, keepConnection: boolean): void {
  if (res.destroyed) return;
  if (res.headersSent) {
    // Too late for a status: cut the response so the client sees it is incomplete.
    res.destroy();
    return;
  }
  res.writeHead(
    answer.status,
    keepConnection
      ? { 'content-type': TEXT_PLAIN, 'content-length': Buffer.byteLength(answer.body) }
      : { 'content-type': TEXT_PLAIN, 'content-length': Buffer.byteLength(answer.body), connection: 'close' },
  );
  res.end(answer.body);
}

/** An undici/net error as one line: a failed dual-stack connect is an AggregateError with an empty message. */
export function describeUpstreamError(error: Error): string {
  if (error instanceof AggregateError && error.errors.length > 0) {
    return error.errors.map((inner: unknown) => (inner instanceof Error ? inner.message : String(inner))).join('; ');
  }
  return error.message || (error as NodeJS.ErrnoException).code || error.name;
}
