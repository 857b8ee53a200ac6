/**
 * Issue 4, end to end with the real `jwtproxy` process: the whole HTTPS chain. A client sends
 * CONNECT to the signer, which intercepts with a CA made in the test (ca_key_file/ca_crt_file),
 * signs each request inside the tunnel and sends it to a verifier terminating TLS with a
 * certificate made in the test, trusted by the signer through `trusted_certificates`, which
 * forwards to the web service.
 */
import http from 'node:http';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freeLoopbackPort, interop, makeCa, makeServerCertificate, type Pem, type RunningServer, type SeenRequest, startEchoService, writePemFiles } from '@jwtproxy/testkit';
import { claimsOf, e2eConfig, jwtproxyConfig, startCli, tempDir, type RunningCli } from './helpers.js';

let files: Awaited<ReturnType<typeof tempDir>>;
let service: RunningServer & { seen: SeenRequest[] };
let signerCa: Pem;
let signerCaFiles: { keyFile: string; certFile: string };
let verifierPem: Pem;
let verifierFiles: { keyFile: string; certFile: string };
let verifierCli: RunningCli;
let verifierPort: number;

beforeAll(async () => {
  files = await tempDir();
  service = await startEchoService();
  signerCa = makeCa('jwtproxy e2e signer CA');
  signerCaFiles = await writePemFiles(signerCa, files.dir, 'signer-ca');
  verifierPem = makeServerCertificate(['127.0.0.1', 'localhost']); // self-signed, as `openssl req -x509` makes it
  verifierFiles = await writePemFiles(verifierPem, files.dir, 'verifier');
  verifierPort = await freeLoopbackPort();
  const config = await files.write(
    'verifier.yaml',
    jwtproxyConfig({
      verifiers: [
        e2eConfig.verifier({
          listenAddr: `127.0.0.1:${verifierPort}`,
          upstream: service.url,
          audience: `https://127.0.0.1:${verifierPort}`,
          tls: verifierFiles,
        }),
      ],
    }),
  );
  verifierCli = await startCli(['-config', config]);
});

afterAll(async () => {
  const stopped = await verifierCli?.stop();
  await service?.close();
  await files?.cleanup();
  expect(stopped?.code).toBe(0);
});

/** A signer process with the test CA; `trustVerifier` lists the verifier's certificate in trusted_certificates. */
async function startSigner(trustVerifier: boolean): Promise<RunningCli> {
  const extra = [`ca_key_file: ${JSON.stringify(signerCaFiles.keyFile)}`, `ca_crt_file: ${JSON.stringify(signerCaFiles.certFile)}`];
  if (trustVerifier) extra.push('trusted_certificates:', `- ${JSON.stringify(verifierFiles.certFile)}`);
  const config = await files.write(`signer-${trustVerifier}.yaml`, jwtproxyConfig({ signer: e2eConfig.signer({ extra }) }));
  return startCli(['-config', config]);
}

/** CONNECT through the signer, then TLS inside the tunnel trusting `ca` (as `curl --proxy … --cacert ca.crt https://…` does). */
async function openTunnel(signer: string, target: string, ca: string | undefined): Promise<tls.TLSSocket> {
  const proxy = new URL(signer);
  const raw = await new Promise<import('node:net').Socket>((resolve, reject) => {
    http
      .request({ method: 'CONNECT', host: proxy.hostname, port: proxy.port, path: target, agent: false })
      .on('connect', (res, socket) => (res.statusCode === 200 ? resolve(socket) : reject(new Error(`CONNECT answered ${res.statusCode}`))))
      .on('error', reject)
      .end();
  });
  return new Promise((resolve, reject) => {
    const secure = tls.connect({ socket: raw, ...(ca ? { ca } : {}), host: target.split(':')[0] }, () => resolve(secure));
    secure.once('error', reject);
  });
}

/** An agent whose one connection is the tunnel, kept alive between requests. */
const tunnelAgents = new WeakMap<tls.TLSSocket, http.Agent>();
function agentFor(tunnel: tls.TLSSocket): http.Agent {
  let agent = tunnelAgents.get(tunnel);
  if (!agent) {
    agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    agent.createConnection = () => tunnel;
    tunnelAgents.set(tunnel, agent);
  }
  return agent;
}

/** One HTTP/1.1 request over an open TLS tunnel (kept alive for the next one). */
function requestInTunnel(tunnel: tls.TLSSocket, host: string, path: string): Promise<{ status: number; body: string }> {
  const [hostname, port] = host.split(':');
  return new Promise((resolve, reject) => {
    http
      .get({ host: hostname, port, path, agent: agentFor(tunnel) }, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on('error', reject);
  });
}

describe('client → signer (CONNECT, CA made in the test) → verifier (TLS) → service', () => {
  it('signs each request inside the tunnel for https://host:port; the service answers 200', async () => {
    const signer = await startSigner(true);
    try {
      const target = `127.0.0.1:${verifierPort}`;
      const tunnel = await openTunnel(signer.servers.signer_proxy!, target, signerCa.cert);
      try {
        // The client sees a certificate forged by the signer's CA, for the host it asked for.
        const presented = tunnel.getPeerCertificate();
        expect(presented.issuer.CN).toBe('jwtproxy e2e signer CA');
        expect(presented.subjectaltname).toContain('IP Address:127.0.0.1');

        const first = await requestInTunnel(tunnel, target, '/secure/items?x=1');
        expect(first.status).toBe(200);
        const seen = JSON.parse(first.body) as SeenRequest;
        expect(seen.url).toBe('/secure/items?x=1');
        const claims = claimsOf(seen.headers.authorization);
        expect(claims).toMatchObject({ iss: interop.issuer, aud: `https://${target}` });

        // The tunnel stays open for more requests, each with a token of its own.
        const second = await requestInTunnel(tunnel, target, '/secure/again');
        expect(second.status).toBe(200);
        expect(claimsOf((JSON.parse(second.body) as SeenRequest).headers.authorization).jti).not.toBe(claims.jti);
      } finally {
        tunnel.destroy();
      }
    } finally {
      expect((await signer.stop()).code).toBe(0);
    }
  });

  it('a client that does not trust the signer CA fails its handshake; nothing reaches the service', async () => {
    const signer = await startSigner(true);
    try {
      const before = service.seen.length;
      await expect(openTunnel(signer.servers.signer_proxy!, `127.0.0.1:${verifierPort}`, undefined)).rejects.toThrow(/certificate/);
      expect(service.seen.length).toBe(before);
    } finally {
      expect((await signer.stop()).code).toBe(0);
    }
  });

  it('without trusted_certificates the signer does not accept the self-signed verifier: 502 with the reason', async () => {
    const signer = await startSigner(false);
    try {
      const target = `127.0.0.1:${verifierPort}`;
      const tunnel = await openTunnel(signer.servers.signer_proxy!, target, signerCa.cert);
      try {
        const answer = await requestInTunnel(tunnel, target, '/secure');
        expect(answer.status).toBe(502);
        expect(answer.body).toMatch(/^jwtproxy: upstream error: .*self-signed certificate/);
      } finally {
        tunnel.destroy();
      }
      await signer.waitForLog(/level=warn .*self-signed certificate/);
    } finally {
      expect((await signer.stop()).code).toBe(0);
    }
  });
});
