import { generateKeyPairSync } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { RequestSigner } from '@jwtproxy/core';
import { createRemoteJWKSet, jwtVerify } from 'jose';
import { describe, expect, it } from 'vitest';
import { PresharedPrivateKeySource } from '../src/index.js';

describe('preshared private key source: its public key as a JWK set', () => {
  it('exposes only public members with kid = key_id, alg and use; tokens of the signer verify against it over HTTP (jose)', async () => {
    for (const [type, options, alg] of [
      ['rsa', { modulusLength: 2048 }, 'RS256'],
      ['ec', { namedCurve: 'P-256' }, 'ES256'],
    ] as const) {
      const { privateKey } = generateKeyPairSync(type as 'rsa', options as { modulusLength: number });
      const source = new PresharedPrivateKeySource({ keyId: `preshared-${type}`, privateKey });
      const [jwk] = source.publicJwks();
      expect(jwk).toMatchObject({ kid: `preshared-${type}`, alg, use: 'sig', kty: type.toUpperCase() });
      for (const secret of ['d', 'p', 'q', 'dp', 'dq', 'qi']) expect(jwk).not.toHaveProperty(secret);
      for (const value of Object.values(jwk!)) expect(value).not.toMatch(/[=+/]/);

      const server = http.createServer((_req, res) => res.end(JSON.stringify({ keys: source.publicJwks() })));
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      try {
        const signer = new RequestSigner({ issuer: 'preshared-signer', expirationTime: 300_000, maxSkew: 60_000, nonceLength: 32, keySource: source });
        const token = await signer.sign('https://backend.test');
        const jwks = createRemoteJWKSet(new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}/.well-known/jwks.json`));
        const { protectedHeader } = await jwtVerify(token, jwks, { issuer: 'preshared-signer', audience: 'https://backend.test' });
        expect(protectedHeader).toMatchObject({ kid: `preshared-${type}`, alg });
      } finally {
        server.closeAllConnections();
        await new Promise((resolve) => server.close(resolve));
      }
    }
  });
});
