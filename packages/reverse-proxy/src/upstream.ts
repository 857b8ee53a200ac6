import { isIP } from 'node:net';
import { rootCertificates } from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { Pool, buildConnector } from 'undici';
import { readFileAsync } from '@jwtproxy/core';

/** Where verified requests go, parsed once at start-up. */
export interface Upstream {
  /** As configured, for messages. */
  readonly description: string;
  /** Connection pool to the upstream; also opens the raw connections of upgrades. */
  readonly pool: Pool;
  /** SNI and certificate name for an https upstream, passed with every request (see `servername` below). */
  readonly servername: string | undefined;
  /** The request target to send upstream for a client's origin-form target. */
  targetFor(requestTarget: string): string;
}

/** An upstream as written in the configuration: `http://host:port/base?q`, `https://…` or `unix:/path`. */
interface UpstreamAddress {
  origin: string;
  hostname: string;
  socketPath: string | undefined;
  basePath: string;
  baseQuery: string;
}

const ABSOLUTE_HTTP = /^(https?):\/\/([^/?#]*)([^?#]*)(?:\?([^#]*))?/i;

export function parseUpstream(upstream: string): UpstreamAddress {
  if (upstream.startsWith('unix:')) {
    const socketPath = upstream.slice('unix:'.length);
    if (!socketPath) throw new Error(`upstream "${upstream}": a unix upstream needs a socket path (unix:/path/to.sock)`);
    // The Host header the client sent is forwarded; this origin only names the pool.
    return { origin: 'http://localhost', hostname: 'localhost', socketPath, basePath: '', baseQuery: '' };
  }
  const match = ABSOLUTE_HTTP.exec(upstream);
  let url: URL | undefined;
  try {
    url = match ? new URL(upstream) : undefined;
  } catch {
    url = undefined;
  }
  if (!match || !url || !url.hostname) {
    throw new Error(`upstream "${upstream}" is not an http://, https:// or unix:/path address`);
  }
  return {
    origin: url.origin,
    hostname: url.hostname.replace(/^\[|\]$/g, ''),
    socketPath: undefined,
    // The path and query exactly as written: Go joins the escaped forms.
    basePath: match[3] ?? '',
    baseQuery: match[4] ?? '',
  };
}

/** Go's singleJoiningSlash: exactly one slash between the upstream's path and the request's. */
export function singleJoiningSlash(a: string, b: string): string {
  const aSlash = a.endsWith('/');
  const bSlash = b.startsWith('/');
  if (aSlash && bSlash) return a + b.slice(1);
  if (!aSlash && !bSlash) return `${a}/${b}`;
  return a + b;
}

/**
 * The target httputil.NewSingleHostReverseProxy sends: request path joined onto the upstream's
 * path, the upstream's query first (`upstream&request` when both are non-empty), and a bare `?`
 * kept when the client sent one (Go's ForceQuery).
 */
export function joinTarget(basePath: string, baseQuery: string, requestTarget: string): string {
  const questionMark = requestTarget.indexOf('?');
  const path = questionMark < 0 ? requestTarget : requestTarget.slice(0, questionMark);
  const query = questionMark < 0 ? '' : requestTarget.slice(questionMark + 1);
  const joinedPath = singleJoiningSlash(basePath, path);
  const joinedQuery = baseQuery === '' || query === '' ? baseQuery + query : `${baseQuery}&${query}`;
  return joinedQuery !== '' || questionMark >= 0 ? `${joinedPath}?${joinedQuery}` : joinedPath;
}

export async function readCaFile(file: string): Promise<string> {
  let pem: string;
  try {
    pem = await readFileAsync(file, 'utf8');
  } catch (error) {
    throw new Error(`cannot read upstream CA file ${file}: ${(error as Error).message}`, { cause: error });
  }
  try {
    new X509Certificate(pem);
  } catch (error) {
    throw new Error(`upstream CA file ${file} holds no PEM certificate: ${(error as Error).message}`, { cause: error });
  }
  return pem;
}

/**
 * Opens the pool to the upstream. Connections are kept alive and reused (undici's Pool is
 * measurably faster than node:http's Agent); no timeouts on headers or body, as the Go proxy
 * has none, so long polls and streams pass.
 */
export async function openUpstream(upstream: string, caFile: string | undefined): Promise<Upstream> {
  const address = parseUpstream(upstream);
  const https = address.origin.startsWith('https:');
  const extraCa = caFile === undefined ? undefined : await readCaFile(caFile);

  const baseConnector = buildConnector({
    ...(address.socketPath ? { socketPath: address.socketPath } : {}),
    // Node's trusted roots plus the configured CA (a `ca` option alone would replace the roots).
    ...(extraCa ? { ca: [...rootCertificates, extraCa] } : {}),
  });
  // undici derives the TLS server name from each request's Host header, which here is the
  // client's (kept, as Go does). Go checks the upstream's certificate against the upstream's
  // host, so every request carries that name and the connector puts it on the TLS socket
  // (none for an IP address: SNI names hosts, and the address is checked against the certificate).
  const servername = https ? address.hostname : undefined;
  const tlsServername = servername && !isIP(servername) ? servername : undefined;
  const connect: buildConnector.connector = (options, callback) =>
    baseConnector({ ...options, ...(https ? { servername: tlsServername } : {}) } as buildConnector.Options, callback);

  const pool = new Pool(address.origin, { connect, headersTimeout: 0, bodyTimeout: 0 });
  const { basePath, baseQuery } = address;
  const plain = basePath === '' && baseQuery === '';
  return {
    description: upstream,
    pool,
    servername,
    targetFor: (requestTarget) => (plain && requestTarget.charCodeAt(0) === 47 ? requestTarget : joinTarget(basePath, baseQuery, requestTarget)),
  };
}
