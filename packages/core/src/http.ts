import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import type { HttpAnswer } from './errors.js';

/**
 * Hop-by-hop headers (RFC 9110 §7.6.1, plus the non-standard ones Go's httputil removes), in
 * lower case: they describe one connection and never travel to the next hop, in either
 * direction. The headers a `Connection` header names are hop-by-hop too; each proxy removes those.
 */
export const HOP_BY_HOP_HEADERS: ReadonlySet<string> = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

/**
 * Joins two raw connections (an upgraded WebSocket, say) byte for byte. Either side's end or
 * failure closes the other: a tunnel has no half-open state worth keeping.
 */
export function spliceSockets(client: Duplex, upstream: Duplex): void {
  const closeBoth = (): void => {
    client.destroy();
    upstream.destroy();
  };
  client.on('error', closeBoth).on('close', closeBoth);
  upstream.on('error', closeBoth).on('close', closeBoth);
  upstream.pipe(client);
  client.pipe(upstream);
}

/** How long a raw connection that got its last answer may stay open waiting for the client to close. */
export const RAW_CLOSE_LINGER_MS = 5_000;

/**
 * Ends a raw connection (one handed over by an `upgrade` or `connect` event) after writing `last`.
 * Such a socket is paused: unless its incoming bytes are read, the client's FIN is never seen and
 * the half-closed socket stays open for good (a leak of one file descriptor per refusal). So the
 * rest of the input is read and dropped, and a client that never closes is cut after the linger.
 */
export function endRawConnection(socket: Duplex, last?: string): void {
  if (socket.destroyed) return;
  socket.resume();
  if (last === undefined) socket.end();
  else socket.end(last);
  setTimeout(() => socket.destroy(), RAW_CLOSE_LINGER_MS).unref();
}

/**
 * One of the proxies' own answers (status, text/plain body without a trailing newline, as the Go
 * tool) on a raw connection, which has no ServerResponse (an upgrade or CONNECT request); then
 * the connection is closed.
 */
export function writeRawAnswer(socket: Duplex, { status, body, headers }: HttpAnswer): void {
  let extra = '';
  for (const [name, value] of Object.entries(headers ?? {})) extra += `${name}: ${value}\r\n`;
  endRawConnection(
    socket,
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\n` +
      `Content-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n${extra}Connection: close\r\n\r\n` +
      body,
  );
}
