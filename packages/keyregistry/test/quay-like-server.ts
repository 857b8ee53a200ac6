/**
 * A key registry that answers as Quay's `/keys/` endpoints do (quay/quay endpoints/keyserver):
 * the same routes under the same `/keys` prefix, the same statuses, the same checks of the
 * publishing token (RS256 only, aud = scheme://host, iss = the service, signer chosen by the
 * token's kid), the same max-age. Written for these tests; no Quay code.
 */
import { createPublicKey, verify, type JsonWebKey, type KeyObject } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface StoredKey {
  service: string;
  kid: string;
  jwk: Record<string, unknown>;
  approved: boolean;
  /** Unix seconds, or undefined for never. */
  expiration: number | undefined;
  rotation: string | undefined;
}

export interface SeenRegistryRequest {
  method: string;
  /** Path below the `/keys` prefix, still escaped. */
  path: string;
  query: URLSearchParams;
  authorization: string | undefined;
  contentType: string | undefined;
  body: string;
}

const PREFIX = '/keys';
const BEARER = /^Bearer\s+(\S+)$/i;
const ONE_DAY = 86_400;

export class QuayLikeRegistry {
  readonly keys = new Map<string, StoredKey>();
  readonly seen: SeenRegistryRequest[] = [];
  /** When set, every request gets this status (a fault to inject). */
  failWith: number | undefined;
  /** When set, replaces the computed `Cache-Control` of 200 answers. */
  cacheControl: string | undefined;
  /** Delay before answering, in ms. */
  delay = 0;
  #server: http.Server | undefined;
  #port = 0;

  /** The registry URL a client is configured with (Quay serves the protocol under /keys/). */
  get url(): string {
    return `http://127.0.0.1:${this.#port}${PREFIX}/`;
  }

  /** What Quay checks `aud` against: PREFERRED_URL_SCHEME + "://" + SERVER_HOSTNAME. */
  get audience(): string {
    return `http://127.0.0.1:${this.#port}`;
  }

  get port(): number {
    return this.#port;
  }

  /** Listens on 127.0.0.1: an OS-chosen port the first time, the same port after a stop. */
  async start(): Promise<this> {
    const server = http.createServer((req, res) => void this.#handle(req, res));
    server.listen(this.#port, '127.0.0.1');
    await once(server, 'listening');
    this.#port = (server.address() as AddressInfo).port;
    this.#server = server;
    return this;
  }

  async stop(): Promise<void> {
    const server = this.#server;
    if (!server) return;
    this.#server = undefined;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  }

  /** GET requests seen for one key. */
  lookupsOf(service: string, kid: string): number {
    const path = `/services/${encodeURIComponent(service)}/keys/${encodeURIComponent(kid)}`;
    return this.seen.filter((r) => r.method === 'GET' && r.path === path).length;
  }

  /** What an operator does in Quay's UI. */
  approve(service: string, kid: string): void {
    const key = this.keys.get(mapKey(service, kid));
    if (!key) throw new Error(`no key ${service}/${kid}`);
    key.approved = true;
  }

  /** Adds an approved key directly (a preshared key). */
  addApproved(service: string, kid: string, jwk: Record<string, unknown>, expiration?: number): void {
    this.keys.set(mapKey(service, kid), { service, kid, jwk, approved: true, expiration, rotation: undefined });
  }

  get(service: string, kid: string): StoredKey | undefined {
    return this.keys.get(mapKey(service, kid));
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks).toString('utf8');
    const url = new URL(req.url ?? '/', 'http://registry');
    const path = url.pathname.startsWith(`${PREFIX}/`) ? url.pathname.slice(PREFIX.length) : url.pathname;
    this.seen.push({
      method: req.method ?? '',
      path,
      query: url.searchParams,
      authorization: req.headers.authorization,
      contentType: req.headers['content-type'],
      body,
    });
    if (this.delay > 0) await new Promise((resolve) => setTimeout(resolve, this.delay));
    if (this.failWith !== undefined) return answer(res, this.failWith);
    if (!url.pathname.startsWith(`${PREFIX}/`)) return answer(res, 404);

    const list = /^\/services\/([^/]+)\/keys$/.exec(path);
    if (list && req.method === 'GET') return this.#list(res, decodeURIComponent(list[1]!));
    const one = /^\/services\/([^/]+)\/keys\/([^/]+)$/.exec(path);
    if (!one) return answer(res, 404);
    const service = decodeURIComponent(one[1]!);
    const kid = decodeURIComponent(one[2]!);
    switch (req.method) {
      case 'GET':
        return this.#get(res, service, kid);
      case 'PUT':
        return this.#put(req, res, url.searchParams, body, service, kid);
      case 'DELETE':
        return this.#delete(req, res, service, kid);
      default:
        return answer(res, 405);
    }
  }

  #alive(key: StoredKey): boolean {
    return key.expiration === undefined || key.expiration > Date.now() / 1000;
  }

  #list(res: http.ServerResponse, service: string): void {
    const keys = [...this.keys.values()]
      .filter((key) => key.service === service && key.approved && this.#alive(key))
      .map((key) => ({ ...key.jwk, kid: key.kid }));
    answer(res, 200, JSON.stringify({ keys }));
  }

  #get(res: http.ServerResponse, service: string, kid: string): void {
    const key = this.keys.get(mapKey(service, kid));
    if (!key) return answer(res, 404);
    if (!key.approved) return answer(res, 409);
    if (!this.#alive(key)) return answer(res, 403);
    const lifetime = Math.min(ONE_DAY, (key.expiration ?? Infinity) - Date.now() / 1000);
    const cacheControl = this.cacheControl ?? `max-age=${Math.max(0, Math.floor(lifetime))}`;
    answer(res, 200, JSON.stringify(key.jwk), { 'cache-control': cacheControl });
  }

  #put(req: http.IncomingMessage, res: http.ServerResponse, query: URLSearchParams, body: string, service: string, kid: string): void {
    let expiration: number | undefined;
    const rawExpiration = query.get('expiration');
    if (rawExpiration !== null) {
      expiration = Number(rawExpiration);
      if (rawExpiration.trim() === '' || !Number.isFinite(expiration)) return answer(res, 400);
    }
    let jwk: unknown;
    try {
      jwk = JSON.parse(body);
    } catch {
      return answer(res, 400);
    }
    const token = BEARER.exec(req.headers.authorization ?? '')?.[1];
    if (!token) return answer(res, 400);
    if (!validJwk(jwk)) return answer(res, 400);
    const header = unverifiedHeader(token);
    if (!header) return answer(res, 400);
    const signerKid = typeof header.kid === 'string' && header.kid !== '' ? header.kid : undefined;

    if (signerKid === undefined || signerKid === kid) {
      // Self-signed: a new key, held for approval.
      if (!validToken(token, jwk, service, this.audience)) return answer(res, 400);
      this.keys.set(mapKey(service, kid), { service, kid, jwk, approved: false, expiration, rotation: query.get('rotation') ?? undefined });
      return answer(res, 202);
    }
    // A rotation: the signer must be an approved, unexpired key of the service.
    const signer = this.keys.get(mapKey(service, signerKid));
    if (!signer || !signer.approved || !this.#alive(signer)) return answer(res, 403);
    if (!validToken(token, signer.jwk, service, this.audience)) return answer(res, 400);
    this.keys.delete(mapKey(service, signerKid));
    this.keys.set(mapKey(service, kid), { service, kid, jwk, approved: true, expiration, rotation: signer.rotation });
    return answer(res, 200);
  }

  #delete(req: http.IncomingMessage, res: http.ServerResponse, service: string, kid: string): void {
    const token = BEARER.exec(req.headers.authorization ?? '')?.[1];
    if (!token) return answer(res, 400);
    const header = unverifiedHeader(token);
    if (!header || typeof header.kid !== 'string' || header.kid === '') return answer(res, 400);
    const signerKid = header.kid;
    // Quay looks the signer up among all the service's keys, approved or not, expired or not.
    const signer = this.keys.get(mapKey(service, signerKid));
    if (!signer) return answer(res, 403);
    if (kid !== signerKid && !signer.approved) return answer(res, 403);
    if (!validToken(token, signer.jwk, service, this.audience)) return answer(res, 400);
    if (!this.keys.delete(mapKey(service, kid))) return answer(res, 404);
    return answer(res, 204);
  }
}

function mapKey(service: string, kid: string): string {
  return JSON.stringify([service, kid]);
}

function answer(res: http.ServerResponse, status: number, body = '', headers: Record<string, string> = {}): void {
  const withBody = status !== 204 && body !== '';
  res.writeHead(status, withBody ? { 'content-type': 'application/json', ...headers } : headers);
  res.end(withBody ? body : undefined);
}

function validJwk(jwk: unknown): jwk is Record<string, unknown> {
  if (typeof jwk !== 'object' || jwk === null || Array.isArray(jwk)) return false;
  const fields = jwk as Record<string, unknown>;
  if (fields.kty === 'EC') return 'x' in fields && 'y' in fields;
  if (fields.kty === 'RSA') return 'e' in fields && 'n' in fields;
  return false;
}

function decodeSegment(segment: string | undefined): Record<string, unknown> | undefined {
  if (segment === undefined) return undefined;
  try {
    const value: unknown = JSON.parse(Buffer.from(segment, 'base64url').toString('utf8'));
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

function unverifiedHeader(token: string): Record<string, unknown> | undefined {
  return decodeSegment(token.split('.')[0]);
}

/** PyJWT's decode(..., algorithms=["RS256"], audience=…, issuer=…) with no leeway. */
function validToken(token: string, jwk: Record<string, unknown>, service: string, audience: string): boolean {
  const parts = token.split('.');
  if (parts.length !== 3) return false;
  const [encodedHeader, encodedClaims, encodedSignature] = parts as [string, string, string];
  const header = decodeSegment(encodedHeader);
  const claims = decodeSegment(encodedClaims);
  if (!header || !claims || header.alg !== 'RS256') return false;
  let publicKey: KeyObject;
  try {
    publicKey = createPublicKey({ key: jwk as JsonWebKey, format: 'jwk' });
  } catch {
    return false;
  }
  if (publicKey.asymmetricKeyType !== 'rsa') return false;
  const signatureOk = verify('sha256', Buffer.from(`${encodedHeader}.${encodedClaims}`), publicKey, Buffer.from(encodedSignature, 'base64url'));
  if (!signatureOk) return false;
  const now = Date.now() / 1000;
  if (claims.iss !== service) return false;
  const aud = claims.aud;
  if (!(aud === audience || (Array.isArray(aud) && aud.includes(audience)))) return false;
  if (claims.exp !== undefined && !(typeof claims.exp === 'number' && claims.exp > now)) return false;
  if (claims.nbf !== undefined && !(typeof claims.nbf === 'number' && claims.nbf <= now)) return false;
  if (claims.iat !== undefined && !(typeof claims.iat === 'number' && claims.iat <= now)) return false;
  return true;
}

export async function startQuayLikeRegistry(): Promise<QuayLikeRegistry> {
  return new QuayLikeRegistry().start();
}
