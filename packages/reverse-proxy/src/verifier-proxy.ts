import {
  MultipleCredentialsError,
  WrongProxyKindError,
  httpAnswerFor,
  parseListenAddress,
  removeSocketFile,
  writeRawAnswer,
  type Logger,
  type RequestVerifier,
  type RunningProxy,
  type ServerLimits,
} from '@jwtproxy/core';
import type { IncomingMessage } from 'node:http';
import type https from 'node:https';
import { ProxyEngine, type AccessRecord, type Outbound, type ProxyHooks, type RequestHead } from '@jwtproxy/proxy-engine';
import { accessTokenCookie, authEndpoint, cheRules, isCorsPreflight, isExcluded, loginRedirect, splitTarget, takeQueryToken, type CheOptions, type CheRules } from './che.js';
import { readListenerTls } from './server.js';
import { openUpstream, parseUpstream, type Upstream } from './upstream.js';

export interface VerifierProxyOptions {
  /** `host:port`, `:port` (all interfaces) or `unix:/path`. */
  listenAddr: string;
  /** Mode of a unix socket listener, default 0o755 (as Go). */
  socketPermission?: number;
  /** Bind with SO_REUSEPORT: worker threads of one process listen on the same port (Node >= 22.12). */
  reusePort?: boolean;
  /** TLS termination; a start-up error on a unix listener (as Go). */
  tls?: { keyFile: string; certFile: string };
  /** `http://host:port/base`, `https://…` or `unix:/path/to.sock`. */
  upstream: string;
  /** Extra CA (PEM) trusted for an https upstream, on top of Node's trusted roots. */
  upstreamCaFile?: string;
  verifier: RequestVerifier;
  /** How long stop() lets requests in flight finish, in ms. */
  shutdownTimeout: number;
  logger: Logger;
  /** Least time between two log lines about the same recurring failure, ms (default 10 s). */
  repeatedLogIntervalMs?: number;
  /** Timeouts and caps of the listener; core's defaults for what is not given. */
  limits?: Partial<ServerLimits>;
  /** Called as each request ends (access log, metrics). */
  onAccess?: (record: AccessRecord) => void;
  /** Claim name → request header the service receives its value in; a client's own header of that name is dropped. */
  claimsToHeaders?: Record<string, string>;
  /** The verified token is not forwarded (the service trusts the claims headers instead). */
  stripToken?: boolean;
  /** The Che fork's options (`excludes`, cookies, query token, redirect to log in): see che.ts. */
  che?: CheOptions;
}

/** The Go verifier's answer to an absolute-form (forward proxy) request or a CONNECT. */
const NOT_A_PROXY = 'This is a reverse proxy server. Does not respond to proxy requests.';

/** `*` (OPTIONS *) and origin-form targets are served; anything else is a forward-proxy request. */
function isProxyRequest(target: string): boolean {
  return target.charCodeAt(0) !== 47 /* '/' */ && target !== '*';
}

/** What a reload may swap in a running verifier: everything but where it listens. */
export interface VerifierProxyUpdate {
  verifier: RequestVerifier;
  upstream: string;
  upstreamCaFile?: string;
  tls?: { keyFile: string; certFile: string };
  limits?: Partial<ServerLimits>;
  onAccess?: (record: AccessRecord) => void;
  claimsToHeaders?: Record<string, string>;
  stripToken?: boolean;
  che?: CheOptions;
}

/** A running verifier, which a reload can update in place. */
export interface RunningVerifierProxy extends RunningProxy {
  update(next: VerifierProxyUpdate): Promise<void>;
}

/** What the hooks read on every request: swapped whole by a reload. */
interface VerifierState {
  verifier: RequestVerifier;
  upstream: Upstream;
  claims: ClaimHeaders | undefined;
  che: CheRules | undefined;
}

/** `claims_to_headers` and `strip_token`, prepared once: what leaves the request and what is added. */
interface ClaimHeaders {
  /** Lower-case names of the headers a client may not send itself (the mapped ones, and Authorization when stripped). */
  dropped: ReadonlySet<string>;
  mapping: ReadonlyArray<readonly [claim: string, header: string]>;
}

function claimHeaders(mapping: Record<string, string> | undefined, stripToken: boolean | undefined): ClaimHeaders | undefined {
  const entries = Object.entries(mapping ?? {});
  if (entries.length === 0 && !stripToken) return undefined;
  const dropped = new Set(entries.map(([, header]) => header.toLowerCase()));
  if (stripToken) dropped.add('authorization');
  return { dropped, mapping: entries };
}

/** A claim as a header value: strings and numbers as they are, anything else as JSON; nothing that could split a header. */
function headerValue(value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  const text = typeof value === 'string' ? value : typeof value === 'number' || typeof value === 'boolean' ? String(value) : JSON.stringify(value);
  return /[\u0000-\u001f\u007f]/.test(text) || text.length > 4096 ? undefined : text;
}

/**
 * The headers for the service with the verified claims in theirs: a client's own header of a mapped
 * name never reaches the service (it could claim to be anyone), whatever its case.
 */
function withClaimHeaders(headers: string[], claims: Record<string, unknown>, rules: ClaimHeaders): string[] {
  const out: string[] = [];
  for (let i = 0; i < headers.length; i += 2) if (!rules.dropped.has(headers[i]!.toLowerCase())) out.push(headers[i]!, headers[i + 1]!);
  for (const [claim, header] of rules.mapping) {
    const value = headerValue(claims[claim]);
    if (value !== undefined) out.push(header, value);
  }
  return out;
}

/** The verifier's hooks into the engine: a request passes only with exactly one valid token. */
function verifierHooks(state: { current: VerifierState }): ProxyHooks {
  return {
    keepConnectionAfterRefusal: true,
    async route(req, head) {
      if (isProxyRequest(req.url!)) throw new WrongProxyKindError(NOT_A_PROXY);
      // With more than one Authorization header, the service might read another one than the one verified.
      if (Array.isArray(head.authorization)) throw new MultipleCredentialsError();
      const { verifier, upstream, claims: rules, che } = state.current;
      if (che) return cheRoute(req, head, state.current, che);
      const { header, claims } = await verifier.verifyRequest(head.authorization);
      // The client's Host and Authorization go on as sent (as Go's verifier): the token verified is the one the service gets.
      return {
        dispatcher: upstream.pool,
        path: upstream.targetFor(req.url!),
        headers: rules ? withClaimHeaders(head.headers, claims, rules) : head.headers,
        servername: upstream.servername,
        token: { iss: claims.iss, kid: header.kid, sub: typeof claims.sub === 'string' ? claims.sub : undefined },
      };
    },
    connect(_req, socket) {
      const answer = httpAnswerFor(new WrongProxyKindError(NOT_A_PROXY));
      writeRawAnswer(socket, answer);
      return answer.status;
    },
    closeUpstreams: (deadline) => closePool(state.current.upstream, deadline),
  };
}

/**
 * A request to a verifier with the Che fork's options. Order as the fork: `/jwt/auth`, then CORS
 * preflights and excluded paths straight to the upstream, then the token from the `token` query
 * parameter, else the Authorization header, else the `access_token` cookie. A `token` parameter
 * never reaches the service (fork: it was forwarded); both a query token and an Authorization
 * header is refused 400 (fork: the query one was verified and the header passed on unverified).
 */
async function cheRoute(req: IncomingMessage, head: RequestHead, current: VerifierState, che: CheRules): Promise<Outbound> {
  const { verifier, upstream, claims: rules } = current;
  const { path, query } = splitTarget(req.url!);
  const { rest, tokens } = che.queryToken ? takeQueryToken(query) : { rest: query, tokens: [] };
  const forwardTarget = rest ? `${path}?${rest}` : path;
  if (che.authPaths.has(path)) await authEndpoint(req, che, verifier, head.authorization, query);
  if (isCorsPreflight(req) || isExcluded(che, path)) {
    // No token, no claims: a client's own header of a mapped name is still dropped (it could claim to be anyone).
    return { dispatcher: upstream.pool, path: upstream.targetFor(forwardTarget), headers: rules ? withClaimHeaders(head.headers, {}, rules) : head.headers, servername: upstream.servername };
  }
  let verified;
  try {
    if (tokens.length > 1 || (tokens.length === 1 && head.authorization !== undefined)) throw new MultipleCredentialsError();
    const cookie = tokens.length === 0 && head.authorization === undefined && che.cookiesEnabled ? accessTokenCookie(head.headers) : undefined;
    verified = tokens.length === 1 ? await verifier.verifyToken(tokens[0]!) : cookie !== undefined ? await verifier.verifyToken(cookie) : await verifier.verifyRequest(head.authorization);
  } catch (error) {
    throw loginRedirect(error, req, che, path, rest);
  }
  const { header, claims } = verified;
  return {
    dispatcher: upstream.pool,
    path: upstream.targetFor(forwardTarget),
    headers: rules ? withClaimHeaders(head.headers, claims, rules) : head.headers,
    servername: upstream.servername,
    token: { iss: claims.iss, kid: header.kid, sub: typeof claims.sub === 'string' ? claims.sub : undefined },
  };
}

/** Closes an upstream's pool: requests in flight finish until `deadline`, then it is cut. */
async function closePool(upstream: Upstream, deadline: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<true>((resolve) => (timer = setTimeout(() => resolve(true), Math.max(0, deadline - Date.now()))));
  if (await Promise.race([upstream.pool.close().then(() => false as const), late])) await upstream.pool.destroy();
  clearTimeout(timer);
}

/**
 * The verifier: listens, verifies each request's token with core's RequestVerifier, and forwards
 * what passes to the upstream (the proxy engine does the rest). Rejects with a message naming the
 * file or address when it cannot start.
 */
export async function startVerifierProxy(options: VerifierProxyOptions): Promise<RunningVerifierProxy> {
  const { logger } = options;
  const listenAddress = parseListenAddress(options.listenAddr);
  parseUpstream(options.upstream);
  const tls = await readListenerTls(options.tls, options.listenAddr, listenAddress);
  const upstream = await openUpstream(options.upstream, options.upstreamCaFile);
  let che;
  try {
    che = cheRules(options.che);
  } catch (error) {
    await upstream.pool.destroy();
    throw error;
  }
  const state = { current: { verifier: options.verifier, upstream, claims: claimHeaders(options.claimsToHeaders, options.stripToken), che } };
  const engine = new ProxyEngine({
    hooks: verifierHooks(state),
    limits: options.limits,
    logger,
    repeatedLogIntervalMs: options.repeatedLogIntervalMs,
    onAccess: options.onAccess,
  });
  let server;
  try {
    server = engine.createServer(tls);
  } catch (error) {
    await upstream.pool.destroy();
    throw new Error(`cannot use TLS key ${options.tls?.keyFile} with certificate ${options.tls?.certFile}: ${(error as Error).message}`, { cause: error });
  }

  let address: string;
  try {
    address = await engine.listen(server, listenAddress, { socketPermission: options.socketPermission ?? 0o755, ...(options.reusePort ? { reusePort: true } : {}) });
  } catch (error) {
    await upstream.pool.destroy();
    throw error;
  }
  server.on('error', (error: Error) => logger.error('verifier listener failed', { listen: address, error: error.message }));
  logger.info('verifier proxy listening', { listen: address, upstream: options.upstream });
  for (const pattern of options.che?.excludes ?? []) {
    // The fork matches anywhere in the path: `healthz` also makes `/private/healthz` public.
    if (!pattern.startsWith('^')) logger.warn('excludes pattern is not anchored with ^: it matches anywhere in the path', { pattern });
  }

  let stopped: Promise<void> | undefined;
  return {
    address,
    get openConnections() {
      return engine.openConnections;
    },
    get openTunnels() {
      return engine.openTunnels;
    },
    stop(deadline = Date.now() + options.shutdownTimeout) {
      stopped ??= engine.stop(deadline).then(() => removeSocketFile(listenAddress));
      return stopped;
    },
    /**
     * Swaps the verifier, upstream, TLS certificate, limits and access observer without closing a
     * connection: requests already routed finish on what they started with; the old upstream pool
     * is closed once its requests are done. Rejects (changing nothing) when a new file cannot be read.
     */
    async update(next: VerifierProxyUpdate) {
      const che = cheRules(next.che);
      const tls = await readListenerTls(next.tls, options.listenAddr, listenAddress);
      if (Boolean(tls) !== Boolean(options.tls)) throw new Error('TLS cannot be turned on or off by a reload: the listener must be restarted');
      const previous = state.current.upstream;
      const upstreamChanged = next.upstream !== options.upstream || next.upstreamCaFile !== options.upstreamCaFile;
      const upstream = upstreamChanged ? await openUpstream(next.upstream, next.upstreamCaFile) : previous;
      if (tls) (server as https.Server).setSecureContext(tls);
      state.current = { verifier: next.verifier, upstream, claims: claimHeaders(next.claimsToHeaders, next.stripToken), che };
      engine.updateLimits(next.limits);
      engine.setOnAccess(next.onAccess);
      Object.assign(options, { upstream: next.upstream, upstreamCaFile: next.upstreamCaFile, tls: next.tls });
      if (upstreamChanged) void closePool(previous, Date.now() + options.shutdownTimeout);
    },
  };
}
