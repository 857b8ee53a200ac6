import { BadRequestError, audienceOf } from '@jwtproxy/core';

/** Where one request goes and what its token says. */
export interface RequestTarget {
  /** `scheme://authority` the upstream connection pool is keyed by. */
  origin: string;
  /** The JWT `aud`: `scheme://host[:port]` as the client wrote it (see core's audienceOf). */
  audience: string;
  /** The Host header the upstream receives. */
  host: string;
  /** Path and query, origin-form. */
  path: string;
}

const ABSOLUTE_FORM = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\/([^/?#]*)([^#]*)/;
const AUTHORITY = /^(?:[a-zA-Z0-9._-]+|\[[0-9a-fA-F:.]+\])(?::\d{1,5})?$/;

/** True when the request line carries an absolute URL (a forward-proxy request). */
export function isAbsoluteForm(url: string): boolean {
  return ABSOLUTE_FORM.test(url);
}

/** The target of an absolute-form request (`GET http://host:port/path?q HTTP/1.1`). */
export function absoluteTarget(url: string): RequestTarget {
  const match = ABSOLUTE_FORM.exec(url);
  if (!match) throw new BadRequestError(`not an absolute URL: ${url}`);
  const scheme = match[1]!.toLowerCase();
  if (scheme !== 'http' && scheme !== 'https') throw new BadRequestError(`unsupported scheme ${scheme}: only http and https are proxied`);
  const authority = match[2]!.slice(match[2]!.lastIndexOf('@') + 1);
  if (!AUTHORITY.test(authority) || !validPort(authority)) throw new BadRequestError(`invalid host in ${url}`);
  return { origin: `${scheme}://${authority}`, audience: audienceOf(url), host: authority, path: originForm(match[3]!) };
}

/** A CONNECT tunnel the signer serves requests from. */
export interface Tunnel {
  /** The CONNECT `host:port` as the client wrote it. */
  readonly authority: string;
  /** TLS inside (intercepted): its requests go to `https://`; plain HTTP inside: `http://`. */
  readonly secure: boolean;
}

/**
 * The target of a request inside a CONNECT tunnel: the tunnel's `host:port` as written in the
 * CONNECT line, with the Host header the client sent inside the tunnel. An intercepted TLS tunnel
 * is `https://` + CONNECT authority, as the Go signer builds it (an explicit `:443` stays in the
 * audience). A plain HTTP tunnel is `http://` + authority with `:80` left out of the audience:
 * a client that opens a tunnel for `http://service/` (undici's ProxyAgent, Node's fetch) writes
 * `CONNECT service:80`, and that service's verifier has the audience `http://service`.
 */
export function tunnelTarget(tunnel: Tunnel, url: string, hostHeader: string | undefined): RequestTarget {
  if (isAbsoluteForm(url)) return absoluteTarget(url);
  const { authority, secure } = tunnel;
  const origin = `${secure ? 'https' : 'http'}://${authority}`;
  const audience = !secure && authority.endsWith(':80') ? audienceOf(origin.slice(0, -3)) : audienceOf(origin);
  return { origin, audience, host: hostHeader ?? authority, path: originForm(url) };
}

/** The port of `host[:port]`, when written, is 1 to 65535 (the pattern allows any five digits). */
function validPort(authority: string): boolean {
  const port = /:(\d+)$/.exec(authority)?.[1];
  return port === undefined || (Number(port) >= 1 && Number(port) <= 65535);
}

function originForm(pathAndQuery: string): string {
  if (pathAndQuery.startsWith('/')) return pathAndQuery;
  return `/${pathAndQuery}`;
}

/** Splits a CONNECT target `host:port` / `[v6]:port`; undefined when it is not one. */
export function parseConnectAuthority(authority: string): { host: string; port: number } | undefined {
  if (!AUTHORITY.test(authority)) return undefined;
  const colon = authority.lastIndexOf(':');
  if (colon < 0 || authority.endsWith(']')) return undefined;
  const port = Number(authority.slice(colon + 1));
  if (!Number.isInteger(port) || port < 1 || port > 65535) return undefined;
  let host = authority.slice(0, colon);
  if (host.startsWith('[')) host = host.slice(1, -1);
  return { host: host.toLowerCase(), port };
}
