/**
 * Issue 3, end to end with the real `jwtproxy` process: a client goes through the signer to the
 * verifier to a web service; what passes, what is refused and with which Go body.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freeLoopbackPort, interop, type RunningServer, type SeenRequest, startEchoService } from '@jwtproxy/testkit';
import { claimsOf, e2eConfig, httpRequest, jwtproxyConfig, startCli, tempDir, type RunningCli } from './helpers.js';

let files: Awaited<ReturnType<typeof tempDir>>;
let service: RunningServer & { seen: SeenRequest[] };
let cli: RunningCli;
let signer: string;
/** The verifier in front of the service; its audience is `http://127.0.0.1:<its port>`. */
let verifier: string;
/** A verifier whose upstream is a port where nothing listens. */
let verifierOfDeadService: string;

beforeAll(async () => {
  files = await tempDir();
  service = await startEchoService();
  const [port, deadPort, deadServicePort] = [await freeLoopbackPort(), await freeLoopbackPort(), await freeLoopbackPort()];
  verifier = `http://127.0.0.1:${port}`;
  verifierOfDeadService = `http://127.0.0.1:${deadPort}`;
  const config = await files.write(
    'chain.yaml',
    jwtproxyConfig({
      signer: e2eConfig.signer(),
      verifiers: [
        e2eConfig.verifier({ listenAddr: `127.0.0.1:${port}`, upstream: service.url, audience: verifier }),
        e2eConfig.verifier({ listenAddr: `127.0.0.1:${deadPort}`, upstream: `http://127.0.0.1:${deadServicePort}`, audience: verifierOfDeadService }),
      ],
    }),
  );
  cli = await startCli(['-config', config]);
  signer = cli.servers.signer_proxy!;
});

afterAll(async () => {
  const stopped = await cli?.stop();
  await service?.close();
  await files?.cleanup();
  expect(stopped?.code).toBe(0);
});

describe('signer → verifier → web service, through the jwtproxy command', () => {
  it('a request through the signer reaches the service with a JWT for the verifier: 200', async () => {
    const answer = await httpRequest(`${verifier}/invoices?month=5`, { proxy: signer, method: 'POST', body: 'hello', headers: { 'content-type': 'text/plain' } });
    expect(answer.status).toBe(200);
    const seen = JSON.parse(answer.body) as SeenRequest;
    expect(seen.method).toBe('POST');
    expect(seen.url).toBe('/invoices?month=5');
    const claims = claimsOf(seen.headers.authorization);
    expect(claims).toMatchObject({ iss: interop.issuer, aud: verifier });
    expect(Object.keys(claims).sort()).toEqual(['aud', 'exp', 'iat', 'iss', 'jti', 'nbf']);
  });

  it('no token: 403 with the Go body', async () => {
    const answer = await httpRequest(`${verifier}/invoices`);
    expect(answer.status).toBe(403);
    expect(answer.headers['content-type']).toMatch(/^text\/plain/);
    expect(answer.body).toBe('jwtproxy: unable to verify request: Could not parse JWT');
  });

  it('the same token twice: the second use is refused (403, jti)', async () => {
    const first = await httpRequest(`${verifier}/once`, { proxy: signer });
    expect(first.status).toBe(200);
    const token = (JSON.parse(first.body) as SeenRequest).headers.authorization!;
    const replay = await httpRequest(`${verifier}/once`, { headers: { authorization: token } });
    expect(replay).toMatchObject({ status: 403, body: "jwtproxy: unable to verify request: Missing or invalid 'jti' claim" });
    // The signer makes a fresh token for each request, so a client going through it is never refused.
    expect((await httpRequest(`${verifier}/once`, { proxy: signer })).status).toBe(200);
  });

  it('a token for another audience: 403 aud', async () => {
    // Through the signer to the same verifier by another name: the token says http://localhost:<port>.
    const port = new URL(verifier).port;
    const seenBefore = service.seen.length;
    const answer = await httpRequest(`http://localhost:${port}/invoices`, { proxy: signer });
    expect(answer).toMatchObject({ status: 403, body: "jwtproxy: unable to verify request: Missing or invalid 'aud' claim" });
    expect(service.seen.length).toBe(seenBefore);
  });

  it('the service is down: 502 with the reason, and a warning in the log', async () => {
    const answer = await httpRequest(`${verifierOfDeadService}/invoices`, { proxy: signer });
    expect(answer.status).toBe(502);
    expect(answer.body).toMatch(/^jwtproxy: upstream error: .*ECONNREFUSED 127\.0\.0\.1:\d+/);
    await cli.waitForLog(/level=warn .*ECONNREFUSED/);
    // The verifier is still serving.
    expect((await httpRequest(`${verifier}/after`, { proxy: signer })).status).toBe(200);
  });

  it('a request to the signer that is not a proxy request: 500 with the Go body', async () => {
    const answer = await httpRequest(`${signer}/invoices`);
    expect(answer).toMatchObject({ status: 500, body: 'This is a forward proxy server. Does not respond to non-proxy requests.' });
  });
});
