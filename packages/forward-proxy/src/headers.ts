import type { IncomingHttpHeaders } from 'node:http';
import { HOP_BY_HOP_HEADERS } from '@jwtproxy/core';

/**
 * Not forwarded with a request besides the hop-by-hop headers: `expect` (Node already answered
 * `100 Continue` to the client), `host` (set first from the target) and `authorization`: the
 * signer owns that header. A client's own credentials would reach the upstream beside the
 * signer's token, and a service that reads the first Authorization header (Node's
 * `req.headers.authorization`, Go's `Header.Get`) would trust them instead of the verified token.
 */
const REQUEST_ONLY_DROPPED: ReadonlySet<string> = new Set(['expect', 'host', 'authorization']);

/** The header names a `Connection` header lists as hop-by-hop for this message. */
function namedByConnection(values: Iterable<string>): Set<string> | undefined {
  let named: Set<string> | undefined;
  for (const value of values) {
    for (const token of value.split(',')) {
      const name = token.trim().toLowerCase();
      if (name && name !== 'close' && name !== 'keep-alive') (named ??= new Set()).add(name);
    }
  }
  return named;
}

/**
 * The request headers for the next hop, as a flat [name, value, …] list that keeps the client's
 * order, spelling and repeated headers: `host` first, hop-by-hop headers gone, every
 * Authorization header of the client removed and the signer's own appended: the upstream sees
 * exactly one, the signed token. (The Go signer appends its token after the client's header.)
 */
export function forwardedRequestHeaders(rawHeaders: readonly string[], host: string, authorization: string): string[] {
  const connectionValues: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i]!.length === 10 && rawHeaders[i]!.toLowerCase() === 'connection') connectionValues.push(rawHeaders[i + 1]!);
  }
  const named = connectionValues.length ? namedByConnection(connectionValues) : undefined;
  const headers = ['host', host];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP_HEADERS.has(lower) || REQUEST_ONLY_DROPPED.has(lower) || named?.has(lower)) continue;
    headers.push(name, rawHeaders[i + 1]!);
  }
  headers.push('authorization', authorization);
  return headers;
}

/** Response headers from the upstream with the hop-by-hop ones removed (mutates and returns `headers`). */
export function forwardedResponseHeaders(headers: IncomingHttpHeaders | Record<string, string | string[] | undefined>): Record<string, string | string[] | undefined> {
  const connection = headers.connection;
  const named = connection === undefined ? undefined : namedByConnection(Array.isArray(connection) ? connection : [connection]);
  for (const name of Object.keys(headers)) {
    if (HOP_BY_HOP_HEADERS.has(name) || named?.has(name)) delete headers[name];
  }
  return headers;
}
