/**
 * Our requests next to the Go tool's (quay/jwtproxy jwt/keyserver/keyregistry): what a registry
 * that knows the Go client sees. The Go client sends `User-Agent: KeyRegistryClient/0.1.0` on
 * every request, `Content-Type: application/json` on PUT only, the kid percent-encoded (`=` as
 * `%3D`), and `aud` = the registry's `scheme://host:port` without a path or trailing slash.
 */
import { createHash, generateKeyPairSync } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { signingKeyFromKeyObject } from '@jwtproxy/core';
import { afterEach, describe, expect, it } from 'vitest';
import { KeyRegistryClient, KeyRegistryPublisher } from '../src/index.js';

interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

const stoppables: { stop(): Promise<void> }[] = [];
let server: http.Server | undefined;

afterEach(async () => {
  await Promise.all(stoppables.splice(0).map((s) => s.stop()));
  server?.closeAllConnections();
  server?.close();
  server = undefined;
});

/** A registry under /keys/ that records every request and answers by method. */
async function recordingRegistry(answer: (seen: Seen) => { status: number; body?: string; headers?: Record<string, string> }): Promise<{ url: string; origin: string; seen: Seen[] }> {
  const seen: Seen[] = [];
  server = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
    req.on('end', () => {
      const request = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body };
      seen.push(request);
      const { status, body: answerBody, headers } = answer(request);
      res.writeHead(status, headers);
      res.end(answerBody);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { url: `${origin}/keys/`, origin, seen };
}

function claimsAndHeaderOf(authorization: string | undefined): { header: Record<string, unknown>; claims: Record<string, unknown> } {
  const [header = '', claims = ''] = (/^Bearer (.+)$/.exec(authorization ?? '')?.[1] ?? '').split('.');
  const decode = (segment: string) => JSON.parse(Buffer.from(segment, 'base64url').toString('utf8')) as Record<string, unknown>;
  return { header: decode(header), claims: decode(claims) };
}

/** An RSA key with the kid the Go tool makes: its RFC 7638 thumbprint, base64url with `=` padding. */
function goStyleKey() {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = publicKey.export({ format: 'jwk' }) as { e: string; kty: string; n: string };
  const kid = createHash('sha256').update(JSON.stringify({ e: jwk.e, kty: jwk.kty, n: jwk.n })).digest('base64').replaceAll('+', '-').replaceAll('/', '_');
  return { kid, privateKey, publicKey, jwk };
}

describe('request shapes next to the Go key registry client', () => {
  it('publish, rotate and delete a padded kid: user-agent, %3D in the path, content-type on PUT only, aud without a trailing slash', async () => {
    const registry = await recordingRegistry((r) => ({ status: r.method === 'DELETE' ? 204 : r.url.includes('rotated') ? 200 : 202 }));
    const publisher = new KeyRegistryPublisher({ registry: registry.url, issuer: 'go-svc' });
    stoppables.push(publisher);
    const first = goStyleKey();
    expect(first.kid).toMatch(/=$/);
    const escapedKid = first.kid.replaceAll('=', '%3D');

    expect(await publisher.publish({ kid: first.kid, privateKey: first.privateKey }, { expiration: 1_795_947_191, rotation: 3600 })).toBe('pending');
    const put = registry.seen.at(-1)!;
    expect(put.method).toBe('PUT');
    expect(put.url).toBe(`/keys/services/go-svc/keys/${escapedKid}?expiration=1795947191&rotation=3600`);
    expect(put.headers['user-agent']).toMatch(/^KeyRegistryClient\/0\.1\.0\b/);
    expect(put.headers['content-type']).toBe('application/json');
    const token = claimsAndHeaderOf(put.headers.authorization);
    expect(token.header).toEqual({ alg: 'RS256', kid: first.kid, typ: 'JWT' });
    expect(token.claims).toMatchObject({ iss: 'go-svc', aud: registry.origin });
    expect(JSON.parse(put.body)).toMatchObject({ kid: first.kid, kty: 'RSA', alg: 'RS256', use: 'sig', e: first.jwk.e, n: first.jwk.n });

    // Rotation: signed by the approved key (its kid in the token header), the new kid in the URL.
    const second = goStyleKey();
    const rotatedKid = `rotated-${second.kid}`;
    const active = signingKeyFromKeyObject(first.kid, first.privateKey);
    expect(await publisher.publish({ kid: rotatedKid, privateKey: second.privateKey }, { signWith: active })).toBe('approved');
    const rotation = registry.seen.at(-1)!;
    expect(rotation.url).toBe(`/keys/services/go-svc/keys/${encodeURIComponent(rotatedKid)}`);
    expect(claimsAndHeaderOf(rotation.headers.authorization).header.kid).toBe(first.kid);

    await publisher.delete('go-svc', first.kid, active);
    const deletion = registry.seen.at(-1)!;
    expect(deletion.method).toBe('DELETE');
    expect(deletion.url).toBe(`/keys/services/go-svc/keys/${escapedKid}`);
    expect(deletion.headers['user-agent']).toMatch(/^KeyRegistryClient\/0\.1\.0\b/);
    expect(deletion.headers['content-type']).toBeUndefined();
    expect(deletion.body).toBe('');
    expect(claimsAndHeaderOf(deletion.headers.authorization).claims).toMatchObject({ iss: 'go-svc', aud: registry.origin });
  });

  it('the verifier asks for a padded kid as %3D with the same user-agent', async () => {
    const key = goStyleKey();
    const registry = await recordingRegistry(() => ({ status: 200, body: JSON.stringify({ ...key.jwk, kid: key.kid }), headers: { 'cache-control': 'max-age=60' } }));
    const reader = new KeyRegistryClient({ registry: registry.url });
    stoppables.push(reader);
    await reader.resolve('go-svc', key.kid);
    expect(registry.seen.map((r) => [r.method, r.url, r.headers['user-agent']?.split(' ')[0]])).toEqual([
      ['GET', `/keys/services/go-svc/keys/${key.kid.replaceAll('=', '%3D')}`, 'KeyRegistryClient/0.1.0'],
    ]);
  });
});
