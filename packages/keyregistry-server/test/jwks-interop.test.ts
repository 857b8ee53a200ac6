import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { RequestSigner, signingKeyFromKeyObject } from '@jwtproxy/core';
import { createRemoteJWKSet, errors as joseErrors, jwtVerify } from 'jose';
import { afterEach, describe, expect, it } from 'vitest';
import { KeyRegistryAdminClient, MemoryKeyStore, startKeyRegistryServer, type RunningKeyRegistry } from '../src/index.js';
import { ecKey, putKey, rsaKey, uniqueName, type PublisherKey } from './support.js';

const aud = 'http://registry.test';
const adminToken = 'admin-test-token-0123456789abcdef';
/** Debian's python3 (with python3-jwt, python3-cryptography), not a pyenv one without them. */
const debianPython = '/usr/bin/python3';
const running: RunningKeyRegistry[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((server) => server.stop()));
});

/** Our signer (the forward proxy's RequestSigner) signing with this key, for this audience. */
function signWith(key: PublisherKey, issuer: string, audience: string): Promise<string> {
  const signingKey = signingKeyFromKeyObject(key.kid, key.privateKey);
  const signer = new RequestSigner({ issuer, expirationTime: 300_000, maxSkew: 60_000, nonceLength: 32, keySource: { activeKey: () => signingKey } });
  return signer.sign(audience);
}

/** PyJWT's PyJWKClient fetching the JWK set over HTTP and verifying the token; prints the claims or the error class. */
const pyjwtVerifier = `
import json, socket, sys, jwt
socket.setdefaulttimeout(5)
url, token, audience, issuer = sys.argv[1:5]
try:
    key = jwt.PyJWKClient(url, cache_keys=False).get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key.key, algorithms=["RS256", "ES256"], audience=audience, issuer=issuer)
    print(json.dumps({"ok": True, "claims": claims, "version": jwt.__version__}))
except Exception as error:
    print(json.dumps({"ok": False, "error": type(error).__name__, "message": str(error)}))
`;

function pyjwtVerify(url: string, token: string, audience: string, issuer: string): Promise<{ ok: boolean; claims?: Record<string, unknown>; error?: string }> {
  return new Promise((resolve, reject) => {
    execFile(debianPython, ['-c', pyjwtVerifier, url, token, audience, issuer], { timeout: 20_000 }, (error, stdout, stderr) => {
      if (error) return reject(new Error(`python failed: ${error.message} ${stderr}`));
      resolve(JSON.parse(stdout) as { ok: boolean });
    });
  });
}

describe('JWKS interop: tokens of our signer verified by third-party verifiers fetching our JWK set over HTTP', () => {
  async function setUp() {
    const server = await startKeyRegistryServer({ listenAddr: '127.0.0.1:0', publicUrl: aud, store: new MemoryKeyStore(), adminToken });
    running.push(server);
    const admin = new KeyRegistryAdminClient({ url: server.address, token: adminToken });
    const service = uniqueName('svc');
    const [rsa, ec, pending] = await Promise.all([rsaKey(), ecKey(), ecKey()]);
    for (const key of [rsa, ec, pending]) expect((await putKey(server.address, aud, service, key)).status).toBe(202);
    await admin.approve(service, rsa.kid);
    await admin.approve(service, ec.kid);
    return { server, service, rsa, ec, pending };
  }

  it("jose's createRemoteJWKSet + jwtVerify accepts RS256 and ES256 tokens of approved keys, refuses a pending key's", async () => {
    const { server, service, rsa, ec, pending } = await setUp();
    const audience = 'https://backend.test';
    for (const url of [`${server.address}/services/${service}/jwks.json`, `${server.address}/.well-known/jwks.json?service=${service}`]) {
      const jwks = createRemoteJWKSet(new URL(url));
      for (const key of [rsa, ec]) {
        const { payload, protectedHeader } = await jwtVerify(await signWith(key, service, audience), jwks, { issuer: service, audience });
        expect(protectedHeader).toMatchObject({ kid: key.kid, alg: key.alg });
        expect(payload).toMatchObject({ iss: service, aud: audience });
      }
      await expect(jwtVerify(await signWith(pending, service, audience), jwks, { issuer: service, audience })).rejects.toBeInstanceOf(joseErrors.JWKSNoMatchingKey);
    }
  });

  it("Python PyJWT (Debian's python3-jwt) PyJWKClient verifies them too, and refuses a pending key's", async () => {
    expect(existsSync(debianPython), `${debianPython} is needed (apt-get install -y python3-jwt python3-cryptography)`).toBe(true);
    const { server, service, rsa, ec, pending } = await setUp();
    const audience = 'https://backend.test';
    const url = `${server.address}/services/${service}/jwks.json`;
    for (const key of [rsa, ec]) {
      const answer = await pyjwtVerify(url, await signWith(key, service, audience), audience, service);
      expect(answer, JSON.stringify(answer)).toMatchObject({ ok: true, claims: { iss: service, aud: audience } });
    }
    const refused = await pyjwtVerify(url, await signWith(pending, service, audience), audience, service);
    expect(refused).toMatchObject({ ok: false, error: 'PyJWKClientError' });
    // A token for another audience is refused by the same verifier.
    expect(await pyjwtVerify(url, await signWith(rsa, service, 'https://elsewhere.test'), audience, service)).toMatchObject({ ok: false, error: 'InvalidAudienceError' });
  });
});
