/**
 * Issue 17, JWKS out of a preshared signer: with `admin.serve_jwks`, the admin listener serves the
 * signer's public key as a JWK set, and a verifier outside jwtproxy that only fetches that set
 * (here node:crypto, importing the JWK) checks the tokens the signer adds.
 */
import { createPublicKey, verify } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freeLoopbackPort, interop, startEchoService, type RunningServer, type SeenRequest } from '@jwtproxy/testkit';
import { e2eConfig, httpRequest, startCli, tempDir, type RunningCli } from './helpers.js';

let files: Awaited<ReturnType<typeof tempDir>>;
let service: RunningServer & { seen: SeenRequest[] };
let cli: RunningCli;
let admin: string;

beforeAll(async () => {
  files = await tempDir();
  service = await startEchoService();
  const adminPort = await freeLoopbackPort();
  admin = `http://127.0.0.1:${adminPort}`;
  const config = await files.write('jwks.yaml', ['jwtproxy:', '  admin:', `    listen_addr: 127.0.0.1:${adminPort}`, '    serve_jwks: true', ...e2eConfig.signer(), ''].join('\n'));
  cli = await startCli(['-config', config]);
});

afterAll(async () => {
  await cli?.stop();
  await service?.close();
  await files?.cleanup();
});

describe('admin.serve_jwks', () => {
  it("serves the preshared signer's public key as a JWK set that verifies the signer's tokens", async () => {
    const answer = await httpRequest(`${admin}/.well-known/jwks.json`);
    expect(answer.status).toBe(200);
    expect(answer.headers['content-type']).toBe('application/jwk-set+json');
    expect(answer.headers['cache-control']).toMatch(/^max-age=\d+$/);
    const { keys } = JSON.parse(answer.body) as { keys: Array<Record<string, string>> };
    expect(keys).toHaveLength(1);
    expect(keys[0]).toMatchObject({ kty: 'RSA', kid: interop.keyId, alg: 'RS256', use: 'sig' });
    expect(keys[0]!.d).toBeUndefined(); // no private member, ever

    const signed = await httpRequest(`${service.url}/x`, { proxy: cli.servers.signer_proxy! });
    const token = (JSON.parse(signed.body) as SeenRequest).headers.authorization!.slice('Bearer '.length);
    const [header, payload, signature] = token.split('.');
    const key = createPublicKey({ key: keys[0] as never, format: 'jwk' });
    expect(verify('sha256', Buffer.from(`${header}.${payload}`), key, Buffer.from(signature!, 'base64url'))).toBe(true);
  });
});
