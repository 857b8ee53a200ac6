/**
 * Issue 3, end to end with the real `jwtproxy` process: unix-socket listeners and upstreams, and
 * a verifier terminating TLS with a certificate made in the test.
 */
import { existsSync, statSync } from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freeLoopbackPort, makeServerCertificate, readBody, type SeenRequest, startEchoService, writePemFiles } from '@jwtproxy/testkit';
import { claimsOf, e2eConfig, httpRequest, jwtproxyConfig, mintToken, startCli, tempDir } from './helpers.js';

let files: Awaited<ReturnType<typeof tempDir>>;
beforeAll(async () => {
  files = await tempDir();
});
afterAll(() => files.cleanup());

describe('unix sockets', () => {
  it('signer and verifier on unix sockets, the service on a unix socket: signed requests pass, unsigned ones do not', async () => {
    const serviceSocket = path.join(files.dir, 'service.sock');
    const signerSocket = path.join(files.dir, 'signer.sock');
    const verifierSocket = path.join(files.dir, 'verifier.sock');
    const service = await startEchoService({ socketPath: serviceSocket });
    const tcpPort = await freeLoopbackPort();
    const tcpVerifier = `http://127.0.0.1:${tcpPort}`;
    const config = await files.write(
      'unix.yaml',
      jwtproxyConfig({
        signer: e2eConfig.signer({ listenAddr: `unix:${signerSocket}` }),
        verifiers: [
          // Reached through the signer (which connects over TCP), forwarding to the unix-socket service.
          e2eConfig.verifier({ listenAddr: `127.0.0.1:${tcpPort}`, upstream: `unix:${serviceSocket}`, audience: tcpVerifier }),
          // Listening on a unix socket itself.
          e2eConfig.verifier({ listenAddr: `unix:${verifierSocket}`, upstream: `unix:${serviceSocket}`, audience: 'http://billing.internal' }),
        ],
      }),
    );
    const cli = await startCli(['-config', config]);
    try {
      expect(cli.servers).toMatchObject({ signer_proxy: `unix:${signerSocket}`, 'verifier_proxies[1]': `unix:${verifierSocket}` });
      expect(statSync(signerSocket).isSocket()).toBe(true);
      expect(statSync(verifierSocket).mode & 0o777).toBe(0o755); // the Go default socket_permission

      // client → signer (unix socket) → verifier (TCP) → service (unix socket)
      const throughSigner = await httpRequest(`${tcpVerifier}/items`, { socketPath: signerSocket, proxy: tcpVerifier });
      expect(throughSigner.status).toBe(200);
      expect(claimsOf((JSON.parse(throughSigner.body) as SeenRequest).headers.authorization)).toMatchObject({ aud: tcpVerifier });

      // client → verifier (unix socket) → service (unix socket)
      const token = await mintToken('http://billing.internal');
      const signed = await httpRequest('http://billing.internal/items?x=1', { socketPath: verifierSocket, headers: { authorization: `Bearer ${token}` } });
      expect(signed.status).toBe(200);
      expect((JSON.parse(signed.body) as SeenRequest).url).toBe('/items?x=1');
      const unsigned = await httpRequest('http://billing.internal/items', { socketPath: verifierSocket });
      expect(unsigned).toMatchObject({ status: 403, body: 'jwtproxy: unable to verify request: Could not parse JWT' });
    } finally {
      const stopped = await cli.stop();
      await service.close();
      expect(stopped.code).toBe(0);
    }
    // The proxies remove their own sockets when they stop.
    expect(existsSync(signerSocket)).toBe(false);
    expect(existsSync(verifierSocket)).toBe(false);
  });
});

describe('TLS termination on the verifier', () => {
  it('serves https with its key_file/crt_file; a signed request passes, an unsigned one gets the Go 403', async () => {
    const pem = makeServerCertificate(['127.0.0.1', 'verifier.internal']);
    const { keyFile, certFile } = await writePemFiles(pem, files.dir, 'verifier');
    const service = await startEchoService();
    const config = await files.write(
      'tls.yaml',
      jwtproxyConfig({
        verifiers: [e2eConfig.verifier({ upstream: service.url, audience: 'https://verifier.internal', tls: { keyFile, certFile } })],
      }),
    );
    const cli = await startCli(['-config', config]);
    try {
      const address = new URL(cli.servers['verifier_proxies[0]']!);
      expect(address.protocol).toBe('https:');
      const get = (headers: Record<string, string>, trustTheCertificate = true) =>
        new Promise<{ status: number; body: string; peer: string }>((resolve, reject) => {
          https
            .get({ host: '127.0.0.1', port: address.port, path: '/secure', servername: 'verifier.internal', ...(trustTheCertificate ? { ca: pem.cert } : {}), headers, agent: false }, (res) => {
              const peer = res.socket && 'getPeerCertificate' in res.socket ? (res.socket as import('node:tls').TLSSocket).getPeerCertificate().subject.CN : '';
              readBody(res).then((body) => resolve({ status: res.statusCode ?? 0, body, peer: String(peer) }), reject);
            })
            .on('error', reject);
        });

      const token = await mintToken('https://verifier.internal');
      const signed = await get({ authorization: `Bearer ${token}` });
      expect(signed.status).toBe(200);
      expect(signed.peer).toBe('127.0.0.1');
      expect((JSON.parse(signed.body) as SeenRequest).url).toBe('/secure');

      expect(await get({})).toMatchObject({ status: 403, body: 'jwtproxy: unable to verify request: Could not parse JWT' });
      // A client that does not trust the certificate cannot talk to it at all.
      await expect(get({ authorization: `Bearer ${await mintToken('https://verifier.internal')}` }, false)).rejects.toThrow(/self-signed certificate/);
      // Nor can a plain HTTP client on the TLS port.
      await expect(httpRequest(`http://127.0.0.1:${address.port}/secure`)).rejects.toThrow();
    } finally {
      const stopped = await cli.stop();
      await service.close();
      expect(stopped.code).toBe(0);
    }
  });
});
