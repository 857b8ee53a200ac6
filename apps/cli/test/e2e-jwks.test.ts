/**
 * Issue 17, first bullet, end to end: the real `jwtproxy` command with a verifier whose
 * `key_server` is `{type: jwks}`, against a JWK set served by the test on 127.0.0.1. A token
 * signed by a key of the set passes (200); one naming a kid the set lacks gets 403, and the
 * access line says why; a mistake in the options stops the command with the option's path.
 */
import { generateKeyPairSync } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { RequestSigner, signingKeyFromKeyObject, type SigningKey } from '@jwtproxy/core';
import { freeLoopbackPort, startEchoService } from '@jwtproxy/testkit';
import { afterEach, describe, expect, it } from 'vitest';
import { httpRequest, runCli, startCli, tempDir, type RunningCli } from './helpers.js';

const ISSUER = 'https://idp.test/';
const cleanups: Array<() => Promise<unknown>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function ecKey(kid: string): { jwk: Record<string, unknown>; signing: SigningKey } {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { jwk: { ...(publicKey.export({ format: 'jwk' }) as Record<string, unknown>), kid, use: 'sig', alg: 'ES256' }, signing: signingKeyFromKeyObject(kid, privateKey) };
}

/** A JWKS publisher: serves `keys` at /jwks.json with max-age=300 and counts the GETs. */
async function startJwks(keys: Record<string, unknown>[]): Promise<{ url: string; gets: () => number }> {
  let gets = 0;
  const server = http.createServer((req, res) => {
    if (req.url !== '/jwks.json') return void res.writeHead(404).end();
    gets++;
    res.writeHead(200, { 'content-type': 'application/jwk-set+json', 'cache-control': 'public, max-age=300' }).end(JSON.stringify({ keys }));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks.json`, gets: () => gets };
}

function verifierYaml(port: number, upstream: string, options: string[]): string {
  return [
    'jwtproxy:',
    '  verifier_proxies:',
    `  - listen_addr: 127.0.0.1:${port}`,
    '    verifier:',
    `      upstream: ${upstream}`,
    `      audience: http://127.0.0.1:${port}`,
    '      key_server:',
    '        type: jwks',
    '        options:',
    ...options.map((line) => `          ${line}`),
    '',
  ].join('\n');
}

const bearer = (signing: SigningKey, audience: string, issuer = ISSUER): Promise<string> =>
  new RequestSigner({ issuer, expirationTime: 60_000, maxSkew: 10_000, nonceLength: 32, keySource: { activeKey: () => signing } }).authorizationFor(audience);

/** The access lines of the verifier so far (JSON log). */
async function accessLines(cli: RunningCli, count: number): Promise<Array<Record<string, unknown>>> {
  for (let i = 0; i < 100; i++) {
    const lines = cli.logLines().filter((line) => line.msg === 'access') as Array<Record<string, unknown>>;
    if (lines.length >= count) return lines;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`fewer than ${count} access lines:\n${cli.stderr()}`);
}

describe('jwtproxy with key_server type jwks', () => {
  it('passes a token signed by a key of the served set (200) and refuses an unknown kid (403, the access line says why)', async () => {
    const known = ecKey('2026-01');
    const unknown = ecKey('rotated-in');
    const jwks = await startJwks([known.jwk]);
    const echo = await startEchoService();
    cleanups.push(() => echo.close());
    const files = await tempDir();
    cleanups.push(() => files.cleanup());
    const port = await freeLoopbackPort();
    const verifier = `http://127.0.0.1:${port}`;
    const config = await files.write('jwks.yaml', verifierYaml(port, echo.url, [`url: ${jwks.url}`, `issuer: ${ISSUER}`, 'algorithms: [ES256]']));
    const cli = await startCli(['-config', config, '-log-format', 'json']);
    cleanups.push(() => cli.stop());
    await cli.waitForLog(/"msg":"JWK set read"/);

    const passed = await httpRequest(`${verifier}/orders`, { headers: { authorization: await bearer(known.signing, verifier) } });
    expect(passed.status).toBe(200);
    expect(echo.seen.at(-1)?.url).toBe('/orders');

    const refused = await httpRequest(`${verifier}/orders`, { headers: { authorization: await bearer(unknown.signing, verifier) } });
    expect(refused).toMatchObject({ status: 403, body: 'jwtproxy: unable to verify request: Could not find any matching public key' });
    const otherIssuer = await httpRequest(`${verifier}/orders`, { headers: { authorization: await bearer(known.signing, verifier, 'https://evil.test/') } });
    expect(otherIssuer).toMatchObject({ status: 403, body: 'jwtproxy: unable to verify request: Could not find any matching public key' });
    expect(echo.seen).toHaveLength(1);

    const lines = await accessLines(cli, 3);
    expect(lines.find((line) => String(line.status) === '200')).toMatchObject({ verdict: 'passed', iss: ISSUER, kid: '2026-01' });
    expect(lines.find((line) => line.kid === 'rotated-in')).toMatchObject({
      verdict: 'refused',
      reason: 'ERR_KEY_NOT_FOUND',
      key_server: 'jwks',
      jwks: jwks.url,
      problem: 'kid not in the JWK set',
      refetch: 'read again: not in it',
    });
    expect(lines.find((line) => line.iss === 'https://evil.test/')).toMatchObject({ problem: 'iss is not one of the issuers of this key server' });
    // The set read at start, and once more for the unknown kid.
    expect(jwks.gets()).toBe(2);
    expect(cli.stderr()).not.toContain((await bearer(known.signing, verifier)).slice(7, 40));
  });

  it('a mistake in the options stops jwtproxy with the option path and line', async () => {
    const files = await tempDir();
    cleanups.push(() => files.cleanup());
    const port = await freeLoopbackPort();
    const badDuration = await files.write('bad.yaml', verifierYaml(port, 'http://127.0.0.1:1', ['url: http://127.0.0.1:1/jwks.json', 'issuer: a', 'max_stale: forever']));
    const first = await runCli(['-config', badDuration]);
    expect(first.code).toBe(1);
    expect(first.stderr).toContain('verifier_proxies[0].verifier.key_server.options.max_stale: "forever" is not a duration (');
    // A JWK set says nothing about issuers: naming none is a mistake, not "any issuer".
    const noIssuer = await files.write('no-issuer.yaml', verifierYaml(port, 'http://127.0.0.1:1', ['url: http://127.0.0.1:1/jwks.json']));
    const second = await runCli(['-config', noIssuer]);
    expect(second.code).toBe(1);
    expect(second.stderr).toContain('verifier_proxies[0].verifier.key_server.options.issuers: name the issuers whose tokens this JWK set verifies');
  });
});
