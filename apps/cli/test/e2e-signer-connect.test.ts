/**
 * Issue 20, through the real `jwtproxy` process: the clients Node services use open a CONNECT
 * tunnel even for an `http://` URL (undici's ProxyAgent, Node's fetch with it as dispatcher). The
 * signer serves plain HTTP inside, signing each request for the verifier behind it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freeLoopbackPort, interop, startEchoService, type RunningServer, type SeenRequest } from '@jwtproxy/testkit';
import { ProxyAgent, request } from 'undici';
import { claimsOf, e2eConfig, jwtproxyConfig, startCli, tempDir, type RunningCli } from './helpers.js';

let files: Awaited<ReturnType<typeof tempDir>>;
let service: RunningServer & { seen: SeenRequest[] };
let cli: RunningCli;
let signer: string;
/** The verifier in front of the service, audience `http://127.0.0.1:<its port>`. */
let verifier: string;

beforeAll(async () => {
  files = await tempDir();
  service = await startEchoService();
  const port = await freeLoopbackPort();
  verifier = `http://127.0.0.1:${port}`;
  const config = await files.write(
    'connect.yaml',
    jwtproxyConfig({
      signer: e2eConfig.signer({ extra: ['read_header_timeout: 2s'] }),
      verifiers: [e2eConfig.verifier({ listenAddr: `127.0.0.1:${port}`, upstream: service.url, audience: verifier })],
    }),
  );
  cli = await startCli(['-config', config, '-log-level', 'debug']);
  signer = cli.servers.signer_proxy!;
});

afterAll(async () => {
  const stopped = await cli?.stop();
  await service?.close();
  await files?.cleanup();
  expect(stopped?.code).toBe(0);
});

const tunnelsServed = () => cli.logLines().filter((line) => line.msg === 'serving HTTP from a CONNECT tunnel').length;

describe('CONNECT tunnels carrying plain HTTP, through the jwtproxy command', () => {
  it("undici's ProxyAgent to the http:// verifier: 200, aud right, several requests on one tunnel each with its own jti", async () => {
    const agent = new ProxyAgent({ uri: signer, connections: 1 });
    try {
      const tunnelsBefore = tunnelsServed();
      const seenBefore = service.seen.length;
      for (let i = 0; i < 5; i++) {
        const response = await request(`${verifier}/orders/${i}`, { dispatcher: agent });
        expect(response.statusCode).toBe(200);
        expect((JSON.parse(await response.body.text()) as SeenRequest).url).toBe(`/orders/${i}`);
      }
      const seen = service.seen.slice(seenBefore);
      expect(seen).toHaveLength(5);
      const claims = seen.map((request) => claimsOf(request.headers.authorization));
      for (const claim of claims) expect(claim).toMatchObject({ iss: interop.issuer, aud: verifier });
      expect(new Set(claims.map((claim) => claim.jti)).size).toBe(5);
      await cli.waitForLog(/msg="serving HTTP from a CONNECT tunnel"/);
      expect(tunnelsServed() - tunnelsBefore).toBe(1);
    } finally {
      await agent.close();
    }
  });

  it("Node's fetch with the ProxyAgent as dispatcher: a POST reaches the service, signed for the verifier", async () => {
    const agent = new ProxyAgent({ uri: signer });
    try {
      // Node's own fetch takes an undici dispatcher; its types know another undici's.
      const init = { method: 'POST', body: JSON.stringify({ amount: 100 }), headers: { 'content-type': 'application/json' }, dispatcher: agent } as unknown as RequestInit;
      const response = await fetch(`${verifier}/transfer`, init);
      expect(response.status).toBe(200);
      const seen = (await response.json()) as SeenRequest;
      expect(seen).toMatchObject({ method: 'POST', url: '/transfer' });
      expect(claimsOf(seen.headers.authorization)).toMatchObject({ iss: interop.issuer, aud: verifier });
    } finally {
      await agent.close();
    }
  });

  it('a verifier refusal inside the tunnel reaches the client as the verifier wrote it', async () => {
    const agent = new ProxyAgent({ uri: signer });
    try {
      // Another name for the same verifier: the token's audience does not match its own.
      const response = await request(`${verifier.replace('127.0.0.1', 'localhost')}/wrong-audience`, { dispatcher: agent });
      expect(response.statusCode).toBe(403);
      expect(await response.body.text()).toBe("jwtproxy: unable to verify request: Missing or invalid 'aud' claim");
    } finally {
      await agent.close();
    }
  });
});
