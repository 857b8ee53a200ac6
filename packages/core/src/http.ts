import type { Duplex } from 'node:stream';

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
