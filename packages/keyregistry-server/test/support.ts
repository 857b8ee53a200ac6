import { constants, createHash, generateKeyPair, randomBytes, sign, type KeyObject } from 'node:crypto';
import http from 'node:http';
import { promisify } from 'node:util';

const generate = promisify(generateKeyPair);

/** A key pair as a publisher holds it. */
export interface PublisherKey {
  kid: string;
  alg: 'RS256' | 'ES256';
  privateKey: KeyObject;
  /** The public JWK to PUT (no kid: the URL names it). */
  jwk: Record<string, string>;
}

let counter = 0;
export function uniqueName(prefix: string): string {
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${(counter++).toString(36)}-${randomBytes(3).toString('hex')}`;
}

export async function rsaKey(bits = 2048, kid = uniqueName('rsa')): Promise<PublisherKey> {
  const { privateKey, publicKey } = await generate('rsa', { modulusLength: bits });
  return { kid, alg: 'RS256', privateKey, jwk: publicKey.export({ format: 'jwk' }) as Record<string, string> };
}

export async function ecKey(curve: 'P-256' | 'P-384' = 'P-256', kid = uniqueName('ec')): Promise<PublisherKey> {
  const { privateKey, publicKey } = await generate('ec', { namedCurve: curve });
  return { kid, alg: 'ES256', privateKey, jwk: publicKey.export({ format: 'jwk' }) as Record<string, string> };
}

/** base64url with `=` padding, as Go's base64.URLEncoding (the Go tool's JWK members and kids) writes it. */
export function withPadding(unpadded: string): string {
  return unpadded + '='.repeat((4 - (unpadded.length % 4)) % 4);
}

/** The Go tool's kid for an RSA key: base64.URLEncoding (padded) of the RFC 7638 SHA-256 thumbprint. */
export function goKid(jwk: Record<string, string>): string {
  const canonical = JSON.stringify({ e: jwk.e, kty: 'RSA', n: jwk.n });
  return createHash('sha256').update(canonical).digest('base64url') + '=';
}

/** The same RSA key as the Go tool publishes it: members in its order, `n` and `e` padded, kid padded. */
export function goStyle(key: PublisherKey): PublisherKey {
  const kid = goKid(key.jwk);
  return { ...key, kid, jwk: { kid, kty: 'RSA', alg: 'RS256', use: 'sig', e: withPadding(key.jwk.e!), n: withPadding(key.jwk.n!) } };
}

/**
 * Decodes a JWK member as go-jose does (Go's base64.RawURLEncoding: no padding allowed), or
 * throws. go-oidc, the Go jwtproxy verifier, also accepts padding; go-jose does not.
 */
export function goJoseDecode(value: string): Buffer {
  if (!/^[A-Za-z0-9_-]*$/.test(value) || value.length % 4 === 1) throw new Error(`go-jose refuses ${JSON.stringify(value.slice(-6))}: not RawURLEncoding`);
  return Buffer.from(value, 'base64url');
}

export interface TokenOptions {
  iss: string;
  aud: string;
  /** Header kid; default the signer's kid; null leaves it out. */
  kid?: string | null;
  alg?: string;
  jti?: string | null;
  iat?: number | null;
  nbf?: number | null;
  exp?: number | null;
  extra?: Record<string, unknown>;
}

/** A publishing JWT as the Go tool makes it: iss, aud, iat, nbf = now − 1 min, exp = now + 5 min, jti. */
export async function registryToken(signer: PublisherKey, options: TokenOptions): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  const claims: Record<string, unknown> = { iss: options.iss, aud: options.aud, ...options.extra };
  const put = (name: string, value: number | string | null | undefined, fallback: number | string) => {
    if (value === null) return;
    claims[name] = value ?? fallback;
  };
  put('iat', options.iat, now);
  put('nbf', options.nbf, now - 60);
  put('exp', options.exp, now + 300);
  put('jti', options.jti, randomBytes(24).toString('base64url'));
  const header: Record<string, unknown> = { alg: options.alg ?? signer.alg, typ: 'JWT' };
  if (options.kid !== null) header.kid = options.kid ?? signer.kid;
  // Signed by hand rather than with jose, which (rightly) refuses to sign with the weak keys some tests need.
  const signingInput = `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`;
  const alg = String(header.alg);
  const key =
    alg === 'ES256' ? { key: signer.privateKey, dsaEncoding: 'ieee-p1363' as const }
    : alg === 'PS256' ? { key: signer.privateKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }
    : signer.privateKey;
  const signature = sign('sha256', Buffer.from(signingInput), key);
  return `${signingInput}.${signature.toString('base64url')}`;
}

/** A request with the path sent exactly as given (fetch would normalise `%2E%2E` and `..`). */
export function rawCall(baseUrl: string, method: string, path: string, headers: Record<string, string> = {}, body?: string | Buffer): Promise<Answer> {
  return send(baseUrl, method, path, headers, body, false);
}

function send(baseUrl: string, method: string, path: string, headers: Record<string, string>, body: string | Buffer | undefined, via: http.Agent | false): Promise<Answer> {
  const url = new URL(baseUrl);
  return new Promise((resolve, reject) => {
    const request = http.request({ host: url.hostname, port: url.port, method, path, headers, agent: via }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        const responseHeaders = new Headers();
        for (const [name, value] of Object.entries(response.headers)) if (typeof value === 'string') responseHeaders.set(name, value);
        resolve({ status: response.statusCode ?? 0, headers: responseHeaders, text, json: () => JSON.parse(text) as unknown });
      });
      response.on('error', reject);
    });
    request.on('error', reject);
    request.end(body);
  });
}

export interface Answer {
  status: number;
  headers: Headers;
  text: string;
  json(): unknown;
}

/** Keep-alive connections for the tests' requests (node:http is several times cheaper than fetch here). */
const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });

export interface CallInit {
  method?: string;
  headers?: Record<string, string>;
  body?: string | Buffer;
}

export async function call(url: string, init: CallInit = {}): Promise<Answer> {
  const target = new URL(url);
  return send(target.origin, init.method ?? 'GET', `${target.pathname}${target.search}`, init.headers ?? {}, init.body, agent);
}

export function keyUrl(baseUrl: string, service: string, kid: string, query: Record<string, string | number> = {}): string {
  const search = new URLSearchParams(Object.entries(query).map(([k, v]): [string, string] => [k, String(v)]));
  return `${baseUrl}/services/${encodeURIComponent(service)}/keys/${encodeURIComponent(kid)}${search.size ? `?${search}` : ''}`;
}

/** PUT a public key, signed by `signer` (the key itself by default). */
export async function putKey(
  baseUrl: string,
  aud: string,
  service: string,
  key: PublisherKey,
  options: { signer?: PublisherKey; token?: string; query?: Record<string, string | number>; body?: string } = {},
): Promise<Answer> {
  const token = options.token ?? (await registryToken(options.signer ?? key, { iss: service, aud }));
  return call(keyUrl(baseUrl, service, key.kid, options.query ?? { expiration: Math.floor(Date.now() / 1000) + 3600, rotation: 1800 }), {
    method: 'PUT',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: options.body ?? JSON.stringify(key.jwk),
  });
}

export async function deleteKey(baseUrl: string, aud: string, service: string, kid: string, signer: PublisherKey, token?: string): Promise<Answer> {
  return call(keyUrl(baseUrl, service, kid), {
    method: 'DELETE',
    headers: { authorization: `Bearer ${token ?? (await registryToken(signer, { iss: service, aud }))}` },
  });
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export interface RegistryProcess {
  address: string;
  child: import('node:child_process').ChildProcess;
  stderr(): string;
  stop(): Promise<void>;
  kill(): Promise<void>;
}

/** Starts a registry in a child process from the package's dist (build first). */
export async function spawnRegistry(options: Record<string, unknown>): Promise<RegistryProcess> {
  const { spawn } = await import('node:child_process');
  const { fileURLToPath } = await import('node:url');
  const script = fileURLToPath(new URL('./fixtures/registry-process.mjs', import.meta.url));
  const child = spawn(process.execPath, [script, JSON.stringify(options)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let errors = '';
  child.stderr!.on('data', (chunk: Buffer) => (errors += chunk.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const address = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const line = out.split('\n')[0];
      if (out.includes('\n') && line) resolve((JSON.parse(line) as { address: string }).address);
    });
    child.once('exit', (code) => reject(new Error(`registry process exited (${code}): ${errors}`)));
  });
  return {
    address,
    child,
    stderr: () => errors,
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
    kill: async () => {
      if (child.exitCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}
