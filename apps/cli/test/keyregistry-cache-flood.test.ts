/**
 * Issue 12, item 4, end to end: tokens with made-up `kid`s must neither flood the key registry
 * with GETs nor push the verifier's cached keys out. A real `jwtproxy` verifier reads keys from
 * a Quay-like registry; it caches the real key (max-age=3600), then gets 12,000 tokens with
 * random kids and random signatures, then the registry stops: the real key must still verify.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import http from 'node:http';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RequestSigner, signingKeyFromKeyObject } from '@jwtproxy/core';
import { freeLoopbackPort, startEchoService, startQuayLikeRegistry, type QuayLikeRegistry } from '@jwtproxy/testkit';
import { httpRequest, keyRegistryConfig, startCli, tempDir, type RunningCli } from './helpers.js';

const issuer = 'billing';
const realKid = 'real-key';
const floodSize = 12_000;
const concurrency = 32;
const notFound = { status: 403, body: 'jwtproxy: unable to verify request: Could not find any matching public key' };

let files: Awaited<ReturnType<typeof tempDir>>;
let echo: Awaited<ReturnType<typeof startEchoService>>;
let registry: QuayLikeRegistry;
let verifier: RunningCli | undefined;

beforeEach(async () => {
  files = await tempDir();
  echo = await startEchoService();
  registry = await startQuayLikeRegistry();
});
afterEach(async () => {
  await verifier?.stop();
  verifier = undefined;
  await registry.stop();
  await echo.close();
  await files.cleanup();
});

const segment = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');

/** A well-formed, fresh token of `issuer` with a random kid and a random (so wrong) signature. */
function tokenWithMadeUpKid(audience: string): string {
  const now = Math.floor(Date.now() / 1000);
  const header = { alg: 'RS256', kid: randomBytes(12).toString('base64url'), typ: 'JWT' };
  const claims = { aud: audience, exp: now + 60, iat: now, iss: issuer, jti: randomBytes(16).toString('hex'), nbf: now - 10 };
  return `${segment(header)}.${segment(claims)}.${randomBytes(256).toString('base64url')}`;
}

describe('keyregistry cache under a flood of made-up kids', () => {
  it('asks the registry a bounded number of times and keeps verifying the cached key after the registry stops', async () => {
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    registry.addApproved(issuer, realKid, publicKey.export({ format: 'jwk' }) as Record<string, unknown>);
    registry.cacheControl = 'max-age=3600';

    const port = await freeLoopbackPort();
    const audience = `http://127.0.0.1:${port}`;
    const yaml = keyRegistryConfig.verifier({ port, upstream: echo.url, registry: registry.url });
    verifier = await startCli(['-config', await files.write('verifier.yaml', yaml)]);

    const signer = new RequestSigner({
      issuer,
      expirationTime: 60_000,
      maxSkew: 10_000,
      nonceLength: 32,
      keySource: { activeKey: () => signingKeyFromKeyObject(realKid, privateKey) },
    });
    const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
    const send = async (token: string) => httpRequest(`${audience}/orders`, { headers: { authorization: `Bearer ${token}` }, agent });
    try {
      // The verifier fetches the real key once and caches it.
      expect((await send(await signer.sign(audience))).status).toBe(200);
      expect(registry.lookupsOf(issuer, realKid)).toBe(1);

      // The flood: 12,000 tokens with random kids, `concurrency` at a time.
      const registryGetsBefore = registry.seen.filter((r) => r.method === 'GET').length;
      const answers = new Map<string, number>();
      const started = performance.now();
      let next = 0;
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          while (next < floodSize) {
            next++;
            const answer = await send(tokenWithMadeUpKid(audience));
            const label = `${answer.status} ${answer.body}`;
            answers.set(label, (answers.get(label) ?? 0) + 1);
          }
        }),
      );
      const floodMs = performance.now() - started;
      const registryGets = registry.seen.filter((r) => r.method === 'GET').length - registryGetsBefore;
      console.info(`${floodSize} tokens with random kids in ${floodMs.toFixed(0)} ms: ${registryGets} registry GETs`);

      // Every made-up kid is refused as an unknown key, whether the registry was asked or not.
      expect(answers).toEqual(new Map([[`${notFound.status} ${notFound.body}`, floodSize]]));
      // Bounded: the per-issuer burst (100) plus 10 a second, not one GET per token (soft, so
      // that the outage check below runs and reports too).
      expect.soft(registryGets).toBeLessThanOrEqual(100 + Math.ceil((floodMs / 1000) * 10) + 5);
      expect(echo.seen).toHaveLength(1);

      // The registry goes away; the real key (max-age=3600) is still in the verifier's cache.
      await registry.stop();
      const afterOutage = await send(await signer.sign(audience));
      expect(afterOutage.status, afterOutage.body).toBe(200);
      expect(registry.lookupsOf(issuer, realKid)).toBe(1);
      expect(echo.seen).toHaveLength(2);
    } finally {
      agent.destroy();
    }
  });
});
