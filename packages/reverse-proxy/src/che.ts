/**
 * The options of the Eclipse Che fork of jwtproxy (eclipse-che/che-jwtproxy), for verifiers in
 * front of browser-facing workspaces: public paths (`excludes`), CORS preflights let through, the
 * token from the `token` query parameter or the `access_token` cookie, a redirect to log in and the
 * `/jwt/auth` endpoint that turns a token into that cookie. Wire behaviour as the fork's; where the
 * fork is unsafe this differs, and each place says so ("fork:").
 */
import type { IncomingMessage } from 'node:http';
import { BadRequestError, MultipleCredentialsError, ProxyAnswerError, VerificationError, type RequestVerifier } from '@jwtproxy/core';

export interface CheOptions {
  /** Path regexes (JavaScript syntax) whose requests go to the upstream without a token; matched anywhere in the path, as the fork. */
  excludes?: readonly string[];
  /** Read the token from the `access_token` cookie; `/jwt/auth` sets it. */
  cookiesEnabled?: boolean;
  /** Path of the cookie `/jwt/auth` sets (default `/`). */
  cookiePath?: string;
  /** Where a request without a valid token is sent to log in (302); turns on `/jwt/auth`. */
  authRedirectUrl?: string;
  /** The path prefix a path-rewriting ingress removed: put back in the URL to come back to. */
  publicBasePath?: string;
  /** Read the token from the `token` query parameter (default: on when cookies or the redirect are). */
  queryToken?: boolean;
  /** The verifier's audience: the fork's `workspaceId` parameter of the redirect. */
  audience?: string;
}

/** `CheOptions` prepared once per (re)load. */
export interface CheRules {
  excludes: readonly RegExp[];
  cookiesEnabled: boolean;
  cookiePath: string;
  redirect: URL | undefined;
  authPaths: ReadonlySet<string>;
  queryToken: boolean;
  publicBasePath: string;
  audience: string;
}

const AUTH_PATH = '/jwt/auth';
const MAX_REDIRECT_URL = 4096;

/** Fails with a message naming the bad pattern or URL (start-up or reload refuses the config). */
export function cheRules(options: CheOptions | undefined): CheRules | undefined {
  if (!options) return undefined;
  const excludes = (options.excludes ?? []).map((pattern) => {
    try {
      return new RegExp(pattern);
    } catch (error) {
      throw new Error(`excludes: ${JSON.stringify(pattern)} is not a valid regular expression: ${(error as Error).message}`);
    }
  });
  let redirect: URL | undefined;
  if (options.authRedirectUrl) {
    try {
      redirect = new URL(options.authRedirectUrl);
    } catch {
      throw new Error(`auth_redirect_url: ${JSON.stringify(options.authRedirectUrl)} is not an absolute URL`);
    }
  }
  const cookiesEnabled = options.cookiesEnabled ?? false;
  const publicBasePath = trimSlashes(options.publicBasePath ?? '');
  const rules: CheRules = {
    excludes,
    cookiesEnabled,
    cookiePath: options.cookiePath || '/',
    redirect,
    authPaths: new Set(redirect ? [AUTH_PATH, ...(publicBasePath ? [`/${publicBasePath}${AUTH_PATH}`] : [])] : []),
    queryToken: options.queryToken ?? (cookiesEnabled || redirect !== undefined),
    publicBasePath,
    audience: options.audience ?? '',
  };
  const active = excludes.length > 0 || cookiesEnabled || redirect !== undefined || rules.queryToken;
  return active ? rules : undefined;
}

function trimSlashes(path: string): string {
  return path.replace(/^\/+|\/+$/g, '');
}

/** Splits an origin-form target into its path and raw query (without `?`). */
export function splitTarget(target: string): { path: string; query: string } {
  const mark = target.indexOf('?');
  return mark < 0 ? { path: target, query: '' } : { path: target.slice(0, mark), query: target.slice(mark + 1) };
}

/**
 * Whether a path is public. Fork: Go's `regexp.MatchString` on the decoded path, unanchored. Here the
 * same unanchored match, but a path with a dot segment, an encoded dot, slash or backslash, or a
 * backslash is never public: `^/public/` must not let `/public/..%2fsecret` through when the
 * upstream normalises it to `/secret`.
 */
export function isExcluded(rules: CheRules, path: string): boolean {
  if (rules.excludes.length === 0) return false;
  if (/%2e|%2f|%5c|\\/i.test(path) || /(^|\/)\.\.?(\/|$)/.test(path)) return false;
  for (const pattern of rules.excludes) if (pattern.test(path)) return true;
  return false;
}

/** A CORS preflight: OPTIONS with Origin and Access-Control-Request-Method (fork: any Access-Control-Request-* header). */
export function isCorsPreflight(req: IncomingMessage): boolean {
  return req.method === 'OPTIONS' && req.headers.origin !== undefined && req.headers['access-control-request-method'] !== undefined;
}

/** The raw query without any `token` parameter, and the token values found. */
export function takeQueryToken(query: string): { rest: string; tokens: string[] } {
  if (!query.includes('token')) return { rest: query, tokens: [] };
  const kept: string[] = [];
  const tokens: string[] = [];
  for (const part of query.split('&')) {
    const eq = part.indexOf('=');
    const name = decodeComponent(eq < 0 ? part : part.slice(0, eq));
    if (name === 'token') tokens.push(decodeComponent(eq < 0 ? '' : part.slice(eq + 1)));
    else kept.push(part);
  }
  return { rest: kept.join('&'), tokens };
}

function decodeComponent(text: string): string {
  try {
    return decodeURIComponent(text.replace(/\+/g, ' '));
  } catch {
    return text;
  }
}

/** The value of one query parameter, or undefined; a repeated one is a bad request. */
function queryParam(query: string, wanted: string): string | undefined {
  let found: string | undefined;
  for (const part of query.split('&')) {
    const eq = part.indexOf('=');
    if (decodeComponent(eq < 0 ? part : part.slice(0, eq)) !== wanted) continue;
    if (found !== undefined) throw new BadRequestError(`more than one ${wanted} parameter`);
    found = decodeComponent(eq < 0 ? '' : part.slice(eq + 1));
  }
  return found;
}

/** The first `access_token` cookie (as Go's Request.Cookie, which the fork used). */
export function accessTokenCookie(headers: readonly string[]): string | undefined {
  for (let i = 0; i < headers.length; i += 2) {
    if (headers[i]!.toLowerCase() !== 'cookie') continue;
    for (const pair of headers[i + 1]!.split(';')) {
      const eq = pair.indexOf('=');
      if (eq > 0 && pair.slice(0, eq).trim() === 'access_token') return pair.slice(eq + 1).trim().replace(/^"(.*)"$/, '$1');
    }
  }
  return undefined;
}

/** Whether the client reached us over https: TLS here, or an `X-Forwarded-Proto: https` ingress (as the fork). */
function isHttps(req: IncomingMessage): boolean {
  if ((req.socket as { encrypted?: boolean }).encrypted) return true;
  const forwarded = req.headers['x-forwarded-proto'];
  return typeof forwarded === 'string' && forwarded.split(',')[0]!.trim().toLowerCase() === 'https';
}

/** The URL the browser asked for, as it saw it (public base path put back, token parameter removed). */
function publicUrl(req: IncomingMessage, rules: CheRules, path: string, query: string): string {
  const base = rules.publicBasePath ? `/${rules.publicBasePath}` : '';
  const joined = base && path.startsWith('/') ? base + path : base + (path.startsWith('/') ? path : `/${path}`);
  return `${isHttps(req) ? 'https' : 'http'}://${req.headers.host ?? ''}${joined}${query ? `?${query}` : ''}`;
}

/**
 * A refusal as the fork answers it with `auth_redirect_url`: 302 to log in, with `workspaceId` (the
 * audience) and `redirectUrl` (where to come back). Fork: the URL kept a `token` parameter; not here.
 * Only refusals of the token (403) redirect; a failed dependency (503) or a bad request (400) stays.
 */
export function loginRedirect(error: unknown, req: IncomingMessage, rules: CheRules, path: string, query: string): unknown {
  if (!rules.redirect || !(error instanceof VerificationError) || error.status !== 403) return error;
  const target = new URL(rules.redirect.href);
  target.searchParams.set('workspaceId', rules.audience);
  target.searchParams.set('redirectUrl', publicUrl(req, rules, path, query));
  return new ProxyAnswerError({ status: 302, body: '', headers: { location: target.href } }, error.code);
}

const CORS_ALLOW_HEADERS = 'authorization,origin,access-control-allow-origin,access-control-request-headers,content-type,access-control-request-method,accept';

/**
 * `/jwt/auth`: verifies the token (Authorization: Bearer, as the fork, or `?token=`), sets it as the
 * HttpOnly `access_token` cookie and answers 204 (fork) or, with `redirect_url`, 302 there.
 * Always thrown as an answer. Fork differences, all for safety:
 * - the token is verified here (the fork set any string as the cookie once the request passed);
 * - `redirect_url` must be same-origin with the request (a relative path, or the same scheme and
 *   host): anything else is refused 400, so a crafted link cannot send a logged-in user elsewhere;
 * - the cookie is `SameSite=Lax` always (fork: `None` when the login page is https, which sends it
 *   on cross-site requests: CSRF) and `Secure` when the request came over https (fork: when the
 *   login page was https); it expires with the token (fork: a session cookie).
 */
export async function authEndpoint(req: IncomingMessage, rules: CheRules, verifier: RequestVerifier, authorization: string | string[] | undefined, query: string): Promise<never> {
  const cors: Record<string, string> = { 'access-control-allow-origin': rules.redirect!.origin, 'access-control-allow-credentials': 'true' };
  if (req.method === 'OPTIONS') {
    throw new ProxyAnswerError({ status: 200, body: '', headers: { ...cors, 'access-control-allow-headers': CORS_ALLOW_HEADERS, 'access-control-allow-methods': 'GET' } });
  }
  if (!rules.cookiesEnabled) {
    throw new ProxyAnswerError({ status: 403, body: 'Cookies are disabled for this endpoint. You need to provide the access token on your own.', headers: cors }, 'ERR_CLAIMS_VERIFICATION');
  }
  if (Array.isArray(authorization)) throw new MultipleCredentialsError();
  const fromQuery = queryParam(query, 'token');
  if (fromQuery !== undefined && authorization !== undefined) throw new MultipleCredentialsError();
  const redirectTo = queryParam(query, 'redirect_url');
  const location = redirectTo === undefined ? undefined : sameOriginTarget(req, redirectTo);
  if (redirectTo !== undefined && location === undefined) throw new BadRequestError('redirect_url must be a path or a URL of this origin');
  const { claims } = fromQuery !== undefined ? await verifier.verifyToken(fromQuery) : await verifier.verifyRequest(authorization);
  const token = fromQuery ?? /^\s*bearer\s+(\S+)/i.exec(authorization ?? '')![1]!;
  const maxAge = typeof claims.exp === 'number' ? Math.max(0, Math.floor(claims.exp - Date.now() / 1000)) : undefined;
  const cookie =
    `access_token=${token}; Path=${rules.cookiePath}; HttpOnly; SameSite=Lax` + (isHttps(req) ? '; Secure' : '') + (maxAge !== undefined ? `; Max-Age=${maxAge}` : '');
  throw new ProxyAnswerError({
    status: location ? 302 : 204,
    body: '',
    headers: { ...cors, 'set-cookie': cookie, 'cache-control': 'no-store', ...(location ? { location } : {}) },
  });
}

/** `redirect_url` as a Location when it stays on the request's origin; undefined when it would leave it. */
function sameOriginTarget(req: IncomingMessage, redirectTo: string): string | undefined {
  if (redirectTo.length > MAX_REDIRECT_URL || /[\u0000-\u001f\u007f\\]/.test(redirectTo)) return undefined;
  const own = `${isHttps(req) ? 'https' : 'http'}://${req.headers.host ?? ''}`;
  let resolved: URL;
  try {
    resolved = new URL(redirectTo, `${own}/`);
  } catch {
    return undefined;
  }
  // A relative target that resolves elsewhere (`//evil.example`) is caught here too.
  try {
    return resolved.origin === new URL(`${own}/`).origin ? resolved.href : undefined;
  } catch {
    return undefined;
  }
}
