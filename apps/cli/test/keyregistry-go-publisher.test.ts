/**
 * Issue 13: a Go jwtproxy signer publishing to our key registry. The requests are the Go
 * publisher's, byte for byte (fixtures/go-publisher.ts): JWK members padded, a padded kid
 * percent-encoded in the path, its headers and JWT. The registry (a real `jwtproxy -config`
 * process, with a verifier reading keys from it) must answer as the Go client expects: publish
 * 202, approval, the key served (to go-jose, go-oidc and our verifier), rotation 200, delete 204;
 * and `jwtproxy keyregistry list|approve|revoke` work with the padded kids.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freeLoopbackPort, startEchoService } from '@jwtproxy/testkit';
import {
  goDeleteRequest,
  goGetKeyRequest,
  goJoseDecode,
  goJwt,
  goKey,
  goOidcDecode,
  goPublishRequest,
  roundTrip,
  type GoKey,
} from './fixtures/go-publisher.js';
import { httpRequest, runCli, startCli, tempDir, type CliResult, type RunningCli } from './helpers.js';

const adminToken = 'go-publisher-admin-token-4b1f0e9c';
const service = 'go-svc';

let files: Awaited<ReturnType<typeof tempDir>>;
let echo: Awaited<ReturnType<typeof startEchoService>>;
let cli: RunningCli;
let registry: string;
let verifier: string;

beforeAll(async () => {
  files = await tempDir();
  echo = await startEchoService();
  const [registryPort, verifierPort] = [await freeLoopbackPort(), await freeLoopbackPort()];
  registry = `http://127.0.0.1:${registryPort}`;
  verifier = `http://127.0.0.1:${verifierPort}`;
  const config = await files.write(
    'go.yaml',
    [
      'jwtproxy:',
      '  keyregistry:',
      `    listen_addr: 127.0.0.1:${registryPort}`,
      `    public_url: ${registry}`,
      `    storage: {type: file, options: {path: keys.json}}`,
      `    admin_token: ${adminToken}`,
      '  verifier_proxies:',
      `  - listen_addr: 127.0.0.1:${verifierPort}`,
      '    verifier:',
      `      upstream: ${echo.url}`,
      `      audience: ${verifier}`,
      `      key_server: {type: keyregistry, options: {registry: ${registry}/}}`,
      '',
    ].join('\n'),
  );
  cli = await startCli(['-config', config]);
});
afterAll(async () => {
  const stopped = await cli?.stop();
  await echo?.close();
  await files?.cleanup();
  expect(stopped?.code).toBe(0);
});

function admin(...args: string[]): Promise<CliResult> {
  return runCli(['keyregistry', '--url', registry, ...args], { env: { JWTPROXY_REGISTRY_TOKEN: adminToken } });
}

const expiresIn = (seconds: number) => ({ expiration: Math.floor(Date.now() / 1000) + seconds, rotation: Math.floor(seconds / 2) });

/** A request through the verifier with a token the Go signer would make for it. */
function throughVerifier(signer: GoKey): Promise<{ status: number; body: string }> {
  return httpRequest(`${verifier}/orders`, { headers: { authorization: `Bearer ${goJwt(signer, { iss: service, aud: verifier })}` } });
}

describe('the Go publisher against jwtproxy keyregistry', () => {
  it('publishes a padded JWK (202), is approved with `jwtproxy keyregistry approve`, is served to go-jose, go-oidc and the verifier, rotates (200) and is deleted (204)', async () => {
    const first = goKey();
    expect(first.kid).toMatch(/^[\w-]{43}=$/);
    expect(JSON.parse(first.body)).toMatchObject({ n: expect.stringMatching(/==$/), e: 'AQAB' });
    const publish = goPublishRequest(registry, service, first, first, expiresIn(7200));
    expect(publish).toMatch(/^PUT \/services\/go-svc\/keys\/[\w-]{43}%3D\?expiration=\d+&rotation=3600 HTTP\/1\.1\r\nHost: 127\.0\.0\.1:\d+\r\nUser-Agent: KeyRegistryClient\/0\.1\.0\r\n/);

    const published = await roundTrip(registry, publish);
    expect(published.status, published.body).toBe(202);
    // The Go publisher polls: 409 while the key waits, with nothing that would let its HTTP cache keep the answer.
    const waiting = await roundTrip(registry, goGetKeyRequest(registry, service, first.kid));
    expect(waiting.status).toBe(409);
    expect(waiting.headers['cache-control']).toBeUndefined();

    // The operator sees and approves the padded kid.
    const listed = await admin('list', '--service', service, '--json');
    expect(listed.code, listed.stderr).toBe(0);
    expect(JSON.parse(listed.stdout)).toEqual([expect.objectContaining({ service, kid: first.kid, state: 'pending', alg: 'RS256' })]);
    const table = await admin('list', '--state', 'pending');
    expect(table.stdout).toMatch(new RegExp(`^${service}\\s+${first.kid.replace(/[-=]/g, '\\$&')}\\s+pending\\s+RS256\\s`, 'm'));
    const approved = await admin('approve', service, first.kid);
    expect(approved.code, approved.stderr).toBe(0);
    expect(approved.stdout).toMatch(new RegExp(`^approved ${service}/${first.kid.replace(/[-=]/g, '\\$&')} \\(expires `));

    const fetched = await roundTrip(registry, goGetKeyRequest(registry, service, first.kid));
    expect(fetched.status).toBe(200);
    const maxAge = Number(/^max-age=(\d+)$/.exec(fetched.headers['cache-control'] ?? '')?.[1]);
    expect(maxAge).toBeGreaterThan(7200 - 60);
    expect(maxAge).toBeLessThanOrEqual(7200);
    const served = JSON.parse(fetched.body) as Record<string, string>;
    expect(served).toMatchObject({ kid: first.kid, kty: 'RSA', alg: 'RS256', use: 'sig' });
    // Served without padding: go-jose (no padding allowed) and go-oidc (padding optional) both read the published key.
    for (const decode of [goJoseDecode, goOidcDecode]) {
      expect(decode(served.n!)).toEqual(Buffer.from(first.n, 'base64url'));
      expect(decode(served.e!)).toEqual(Buffer.from(first.e, 'base64url'));
    }
    expect(() => goJoseDecode(JSON.parse(first.body).n)).toThrow(/illegal base64/);

    // Our verifier fetches it (kid with "=") and lets a request signed with it through.
    const passed = await throughVerifier(first);
    expect(passed.status, passed.body).toBe(200);
    expect(echo.seen.at(-1)?.url).toBe('/orders');

    // Rotation, as the Go signer does it every rotate_every: the new key signed by the active one.
    const second = goKey();
    const rotated = await roundTrip(registry, goPublishRequest(registry, service, second, first, expiresIn(7200)));
    expect(rotated.status, rotated.body).toBe(200);
    expect((await roundTrip(registry, goGetKeyRequest(registry, service, first.kid))).status).toBe(404);
    expect((await roundTrip(registry, goGetKeyRequest(registry, service, second.kid))).status).toBe(200);
    expect((await throughVerifier(second)).status).toBe(200);
    const afterRotation = JSON.parse((await admin('list', '--service', service, '--json')).stdout) as Array<{ kid: string; approvedBy: string }>;
    expect(afterRotation).toEqual([expect.objectContaining({ kid: second.kid, approvedBy: `rotation:${first.kid}` })]);

    // DELETE, signed by the key itself.
    const deleted = await roundTrip(registry, goDeleteRequest(registry, service, second));
    expect(deleted.status, deleted.body).toBe(204);
    expect((await roundTrip(registry, goGetKeyRequest(registry, service, second.kid))).status).toBe(404);
  });

  it('at stop the Go signer deletes its unapproved key: 204; an expired key answers 403 (the Go signer then stops with "Public key has expired")', async () => {
    const pending = goKey();
    expect((await roundTrip(registry, goPublishRequest(registry, service, pending, pending, expiresIn(3600)))).status).toBe(202);
    expect((await roundTrip(registry, goDeleteRequest(registry, service, pending))).status).toBe(204);
    expect((await roundTrip(registry, goGetKeyRequest(registry, service, pending.kid))).status).toBe(404);

    const shortLived = goKey();
    const expiration = Math.floor(Date.now() / 1000) + 3;
    expect((await roundTrip(registry, goPublishRequest(registry, service, shortLived, shortLived, { expiration, rotation: 1 }))).status).toBe(202);
    // Approved through the admin API directly: a CLI process may take longer to start than this key lives.
    const approval = await fetch(`${registry}/admin/services/${service}/keys/${encodeURIComponent(shortLived.kid)}/approve`, {
      method: 'POST', headers: { authorization: `Bearer ${adminToken}` },
    });
    expect(approval.status).toBe(200);
    await new Promise((resolve) => setTimeout(resolve, expiration * 1000 - Date.now() + 300));
    expect((await roundTrip(registry, goGetKeyRequest(registry, service, shortLived.kid))).status).toBe(403);
  });

  it('`jwtproxy keyregistry approve|revoke` take a padded kid as listed, as copied from a URL (%3D), and after -- when it starts with "-"', async () => {
    const keys = [goKey(), goKey()];
    for (const key of keys) expect((await roundTrip(registry, goPublishRequest(registry, service, key, key, expiresIn(3600)))).status).toBe(202);

    const fromUrl = await admin('approve', service, keys[0]!.kid.replace(/=$/, '%3D'));
    expect(fromUrl.code, fromUrl.stderr).toBe(0);
    expect((await roundTrip(registry, goGetKeyRequest(registry, service, keys[0]!.kid))).status).toBe(200);
    expect((await admin('revoke', service, keys[0]!.kid)).code).toBe(0);
    expect((await roundTrip(registry, goGetKeyRequest(registry, service, keys[0]!.kid))).status).toBe(404);

    // A thumbprint may start with "-" (and one like "-json=" would read as a flag): after -- it is a kid.
    const dashKid = `-${keys[1]!.kid.slice(1)}`;
    const renamed: GoKey = { ...keys[1]!, kid: dashKid, body: keys[1]!.body.replace(keys[1]!.kid, dashKid) };
    expect((await roundTrip(registry, goPublishRequest(registry, service, renamed, renamed, expiresIn(3600)))).status).toBe(202);
    const afterDashes = await admin('approve', service, '--', dashKid);
    expect(afterDashes.code, afterDashes.stderr).toBe(0);
    expect((await roundTrip(registry, goGetKeyRequest(registry, service, dashKid))).status).toBe(200);
  });
});
