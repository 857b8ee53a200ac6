/**
 * Issue 17, claims to the service: a verifier with `claims_to_headers` hands the verified claims to
 * the service in headers; a client's own header of that name (any case, repeated) never reaches
 * it; with `strip_token` the token itself stays behind.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freeLoopbackPort, interop, startEchoService, type RunningServer, type SeenRequest } from '@jwtproxy/testkit';
import { e2eConfig, httpRequest, jwtproxyConfig, startCli, tempDir, type RunningCli } from './helpers.js';

let files: Awaited<ReturnType<typeof tempDir>>;
let service: RunningServer & { seen: SeenRequest[] };
let cli: RunningCli;
let signer: string;
let mapped: string;
let stripped: string;

beforeAll(async () => {
  files = await tempDir();
  service = await startEchoService();
  const [mappedPort, strippedPort] = [await freeLoopbackPort(), await freeLoopbackPort()];
  mapped = `http://127.0.0.1:${mappedPort}`;
  stripped = `http://127.0.0.1:${strippedPort}`;
  const withClaims = (port: number, audience: string, extra: string[]) => {
    const entry = e2eConfig.verifier({ listenAddr: `127.0.0.1:${port}`, upstream: service.url, audience });
    return [...entry, ...extra.map((line) => `      ${line}`)];
  };
  const config = await files.write(
    'claims.yaml',
    jwtproxyConfig({
      signer: e2eConfig.signer(),
      verifiers: [
        withClaims(mappedPort, mapped, ['claims_to_headers: {iss: X-Auth-Issuer, aud: X-Auth-Audience, sub: X-Auth-Subject}']),
        withClaims(strippedPort, stripped, ['claims_to_headers: {iss: X-Auth-Issuer}', 'strip_token: true']),
      ],
    }),
  );
  cli = await startCli(['-config', config]);
  signer = cli.servers.signer_proxy!;
});

afterAll(async () => {
  await cli?.stop();
  await service?.close();
  await files?.cleanup();
});

const seenOf = (body: string): SeenRequest => JSON.parse(body) as SeenRequest;

describe('claims_to_headers', () => {
  it('gives the service the verified claims; forged X-Auth-* headers of the client (any case, repeated) never reach it', async () => {
    const answer = await httpRequest(`${mapped}/whoami`, {
      proxy: signer,
      headers: { 'X-Auth-Subject': 'admin', 'x-auth-issuer': 'admin', 'X-AUTH-AUDIENCE': ['https://evil', 'https://evil2'] },
    });
    expect(answer.status).toBe(200);
    const seen = seenOf(answer.body);
    const values = (name: string) => seen.rawHeaders.filter((_, i) => i % 2 === 1 && seen.rawHeaders[i - 1]!.toLowerCase() === name);
    expect(values('x-auth-issuer')).toEqual([interop.issuer]);
    expect(values('x-auth-audience')).toEqual([mapped]);
    // The signer's tokens carry no `sub`: no header at all rather than the client's.
    expect(values('x-auth-subject')).toEqual([]);
    expect(seen.headers.authorization).toMatch(/^Bearer /);
    expect(answer.body).not.toContain('admin');
  });

  it('with strip_token the service gets the claims headers and no Authorization', async () => {
    const answer = await httpRequest(`${stripped}/whoami`, { proxy: signer, headers: { 'X-Auth-Issuer': 'admin' } });
    expect(answer.status).toBe(200);
    const seen = seenOf(answer.body);
    expect(seen.headers['x-auth-issuer']).toBe(interop.issuer);
    expect(seen.headers.authorization).toBeUndefined();
  });

  it('a refused request adds nothing and reaches nothing', async () => {
    const before = service.seen.length;
    const answer = await httpRequest(`${mapped}/whoami`, { headers: { 'X-Auth-Subject': 'admin' } });
    expect(answer.status).toBe(403);
    expect(service.seen.length).toBe(before);
  });
});
