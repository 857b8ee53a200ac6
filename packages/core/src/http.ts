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
