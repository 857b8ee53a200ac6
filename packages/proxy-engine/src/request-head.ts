import type { OutgoingHttpHeaders } from 'node:http';
import { HOP_BY_HOP_HEADERS } from '@jwtproxy/core';

/** Response headers as undici parses them: lower-case names, repeated headers as arrays. */
export type UpstreamHeaders = Record<string, string | string[] | undefined>;

/** Largest refused request body read to the end to keep the client's connection; larger ones close it. */
const DRAINABLE_BODY_BYTES = 64 * 1024;

/** What a proxy needs to know about a request, read from its raw headers in one pass. */
export interface RequestHead {
  /**
   * Headers for the next hop as undici takes them, `[name, value, …]`, in the client's order and
   * spelling: hop-by-hop headers, those `Connection` names, `Expect` and the names in `drop` removed.
   */
  readonly headers: string[];
  /** Every Authorization value in order; an array when there is more than one. */
  readonly authorization: string | string[] | undefined;
  /** The request carries a body (Content-Length > 0 or Transfer-Encoding). */
  readonly hasBody: boolean;
  /** A refused request's body is small enough to read to the end and keep the connection. */
  readonly drainable: boolean;
  /** The protocol named by `Upgrade`, for an upgrade request. */
  readonly upgrade: string | undefined;
}

/** `keep-alive` or `close` alone, in any case: nearly every Connection header, naming no header. */
const CONNECTION_OPTION_ONLY = /^(?:keep-alive|close)$/i;

/**
 * Adds the header names a `Connection` value lists (RFC 9110 §7.6.1) to `into`, made when the
 * first one is found. `close` and `keep-alive` are connection options, not header names; a value
 * that is only one of them is not split (every kept-alive response from the upstream has one).
 */
function addConnectionTokens(value: string, into: Set<string> | undefined): Set<string> | undefined {
  if (CONNECTION_OPTION_ONLY.test(value)) return into;
  for (const token of value.split(',')) {
    const name = token.trim().toLowerCase();
    if (name && name !== 'close' && name !== 'keep-alive') (into ??= new Set()).add(name);
  }
  return into;
}

const NOTHING_DROPPED: ReadonlySet<string> = new Set();

/**
 * Reads `req.rawHeaders` once: the Authorization values, what the body looks like, and the headers
 * to forward. As Go's httputil.ReverseProxy: hop-by-hop headers and those `Connection` names are
 * removed. `Expect` is dropped too: the proxy answers `100 Continue` itself and streams the body
 * without asking the next hop again. `drop` names more headers to leave out (lower case).
 */
export function readRequestHead(rawHeaders: readonly string[], drop: ReadonlySet<string> = NOTHING_DROPPED): RequestHead {
  const headers: string[] = [];
  let authorization: string | string[] | undefined;
  let named: Set<string> | undefined;
  let hasBody = false;
  let drainable = true;
  let upgrade: string | undefined;

  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    const value = rawHeaders[i + 1]!;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP_HEADERS.has(lower)) {
      if (lower === 'connection') named = addConnectionTokens(value, named);
      else if (lower === 'transfer-encoding') {
        hasBody = true;
        drainable = false;
      } else if (lower === 'upgrade') upgrade = value;
      continue;
    }
    switch (lower) {
      case 'authorization':
        authorization = authorization === undefined ? value : typeof authorization === 'string' ? [authorization, value] : (authorization.push(value), authorization);
        break;
      case 'content-length': {
        const length = Number(value);
        if (length > 0) {
          hasBody = true;
          if (length > DRAINABLE_BODY_BYTES) drainable = false;
        }
        break;
      }
      case 'expect':
        continue;
    }
    if (drop.has(lower)) continue;
    headers.push(name, value);
  }

  if (named) {
    // Rare: only when a client names extra per-connection headers in `Connection`.
    let kept = 0;
    for (let i = 0; i < headers.length; i += 2) {
      if (named.has(headers[i]!.toLowerCase())) continue;
      headers[kept++] = headers[i]!;
      headers[kept++] = headers[i + 1]!;
    }
    headers.length = kept;
  }
  return { headers, authorization, hasBody, drainable, upgrade };
}

/** The upstream's response headers without hop-by-hop headers (and those its `Connection` names), for `res.writeHead`. */
export function responseHeaders(upstream: UpstreamHeaders): OutgoingHttpHeaders {
  const connection = upstream.connection;
  const named = connection ? addConnectionTokens(Array.isArray(connection) ? connection.join(',') : connection, undefined) : undefined;
  const headers: OutgoingHttpHeaders = {};
  for (const name in upstream) {
    if (HOP_BY_HOP_HEADERS.has(name) || named?.has(name)) continue;
    const value = upstream[name];
    if (value !== undefined) headers[name] = value;
  }
  return headers;
}

/** The upstream's 101 response headers: hop-by-hop removed except the `Connection`/`Upgrade` pair the switch needs. */
export function switchingProtocolsHeaders(upstream: UpstreamHeaders): OutgoingHttpHeaders {
  const headers = responseHeaders(upstream);
  const upgrade = upstream.upgrade;
  if (upgrade !== undefined) {
    headers.connection = 'Upgrade';
    headers.upgrade = Array.isArray(upgrade) ? upgrade.join(', ') : upgrade;
  }
  return headers;
}

/** Serialises a status line and headers for a raw socket (upgrade answers). Values come from parsers that reject CR/LF. */
export function rawResponseHead(status: number, statusMessage: string, headers: OutgoingHttpHeaders): string {
  let head = `HTTP/1.1 ${status} ${statusMessage}\r\n`;
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined) continue;
    if (Array.isArray(value)) for (const item of value) head += `${name}: ${item}\r\n`;
    else head += `${name}: ${value}\r\n`;
  }
  return head + '\r\n';
}
