import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { makeCa, makeServerCertificate, startEchoService, writePemFiles, type SeenRequest } from '@jwtproxy/testkit';
import { ProxyAgent, request } from 'undici';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CertificateForger } from '../src/certificates.js';
import type { SignerProxyOptions } from '../src/index.js';
import { startInterceptingSigner, useInterceptionPki, verifyAsVerifier } from './helpers.js';

const run = promisify(execFile);

const pki = useInterceptionPki();

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
});

const startSigner = (overrides: Partial<SignerProxyOptions> = {}) => startInterceptingSigner(pki, cleanups, overrides);

async function httpsService() {
  const service = await startEchoService({ tls: pki.upstreamCert });
  cleanups.push(() => service.close());
  return service;
}

/** A Node client that goes through the signer with CONNECT and trusts `ca` (the signer's CA by default). */
function clientThrough(proxyUrl: string, ca: string | undefined = pki.mitmCa.cert) {
  // One connection per origin, so sequential requests must share one tunnel (undici may open a
  // second one otherwise while the first is being released).
  const agent = new ProxyAgent({ uri: proxyUrl, connections: 1, requestTls: ca ? { ca } : {} });
  cleanups.push(() => agent.close());
  return async (url: string, options: { headers?: Record<string, string> } = {}) => {
    const response = await request(url, { dispatcher: agent, headers: options.headers });
    return { status: response.statusCode, body: await response.body.text() };
  };
}

function authorizations(seen: SeenRequest): string[] {
  const values: string[] = [];
  for (let i = 0; i < seen.rawHeaders.length; i += 2) if (seen.rawHeaders[i]!.toLowerCase() === 'authorization') values.push(seen.rawHeaders[i + 1]!);
  return values;
}

describe('HTTPS through CONNECT (interception)', () => {
  it('signs a request inside the tunnel: the HTTPS service sees a valid JWT with aud https://host:port', async () => {
    const service = await httpsService();
    const signer = await startSigner();
    const get = clientThrough(signer.url);
    const response = await get(`${service.url}/inside/tunnel?q=1`, { headers: { authorization: 'Basic dXNlcjpwYXNz' } });
    expect(response.status).toBe(200);
    const seen = service.seen[0]!;
    expect(seen.url).toBe('/inside/tunnel?q=1');
    expect(seen.headers.host).toBe(`127.0.0.1:${service.port}`);
    // The signer owns Authorization: the client's own header is replaced by the signed token.
    const values = authorizations(seen);
    expect(values).toHaveLength(1);
    const verified = await verifyAsVerifier(values, service.url);
    expect(verified.claims.aud).toBe(`https://127.0.0.1:${service.port}`);
  });

  it('keeps the tunnel and the upstream connection alive across requests', async () => {
    const service = await httpsService();
    let upstreamConnections = 0;
    service.server.on('secureConnection', () => upstreamConnections++);
    const signer = await startSigner();
    const get = clientThrough(signer.url);
    for (let i = 0; i < 20; i++) expect((await get(`${service.url}/${i}`)).status).toBe(200);
    expect(service.seen).toHaveLength(20);
    expect(signer.logger.lines.filter((line) => line.message === 'intercepting CONNECT')).toHaveLength(1);
    expect(upstreamConnections).toBe(1);
  });

  it('honours the CONNECT port: two services on one host each get their own requests and audience', async () => {
    const first = await httpsService();
    const second = await httpsService();
    const signer = await startSigner();
    const get = clientThrough(signer.url);
    await get(`${first.url}/one`);
    await get(`${second.url}/two`);
    expect(first.seen.map((seen) => seen.url)).toEqual(['/one']);
    expect(second.seen.map((seen) => seen.url)).toEqual(['/two']);
    expect((await verifyAsVerifier(authorizations(second.seen[0]!), second.url)).claims.aud).toBe(`https://127.0.0.1:${second.port}`);
  });

  it('works with curl --proxy … --cacert ca.crt to a DNS name (localhost)', async () => {
    const service = await httpsService();
    const signer = await startSigner();
    const { stdout } = await run('curl', ['-sS', '--fail', '--proxy', signer.url, '--cacert', pki.mitmCaFiles.certFile, `https://localhost:${service.port}/from-curl`], {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
    });
    expect(JSON.parse(stdout).url).toBe('/from-curl');
    const verified = await verifyAsVerifier(authorizations(service.seen[0]!), `https://localhost:${service.port}`);
    expect(verified.claims.aud).toBe(`https://localhost:${service.port}`);
  });

  it('answers 502 with the reason when the upstream certificate is not trusted', async () => {
    const service = await httpsService();
    const signer = await startSigner({ trustedCertificates: [pki.mitmCaFiles.certFile] }); // not the service's CA
    const response = await clientThrough(signer.url)(`${service.url}/`);
    expect(response.status).toBe(502);
    expect(response.body).toMatch(new RegExp(`^jwtproxy: upstream error: certificate of https://127.0.0.1:${service.port} not accepted: .+\\(\\w+\\)$`));
    expect(service.seen).toHaveLength(0);
    expect(signer.logger.lines.some((line) => line.message === 'upstream request failed')).toBe(true);
  });

  it('with system roots only, a service certificate from a private CA is refused (trusted_certificates replaces, not adds)', async () => {
    const service = await httpsService();
    const signer = await startSigner({ trustedCertificates: undefined });
    expect((await clientThrough(signer.url)(`${service.url}/`)).status).toBe(502);
  });

  it('with insecure_skip_verify, the untrusted upstream certificate is accepted', async () => {
    const service = await httpsService();
    const signer = await startSigner({ trustedCertificates: undefined, insecureSkipVerify: true });
    const response = await clientThrough(signer.url)(`${service.url}/`);
    expect(response.status).toBe(200);
    await verifyAsVerifier(authorizations(service.seen[0]!), service.url);
  });

  it('a client that does not trust the signer CA fails its handshake and nothing reaches the service', async () => {
    const service = await httpsService();
    const signer = await startSigner();
    const get = clientThrough(signer.url, pki.upstreamCa.cert); // trusts some other CA only
    await expect(get(`${service.url}/`)).rejects.toThrow(/certificate|self.signed|issuer/i);
    expect(service.seen).toHaveLength(0);
    // The signer keeps serving.
    expect((await clientThrough(signer.url)(`${service.url}/`)).status).toBe(200);
  });

  it('closes a tunnel at once when the client half-closes before finishing its TLS handshake', async () => {
    const { host, port } = await startSigner();
    const cases = [
      // a host seen for the first time: the close arrives while its certificate is being forged
      { target: 'first-a.test:443', partial: Buffer.alloc(0) },
      { target: 'first-b.test:443', partial: Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]) },
      // the same hosts again: the certificate is ready and the TLS layer sees the close
      { target: 'first-a.test:443', partial: Buffer.alloc(0) },
      { target: 'first-b.test:443', partial: Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]) },
    ];
    for (const { target, partial } of cases) {
      const socket = net.connect(port, host);
      socket.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
      const [answer] = (await once(socket, 'data')) as [Buffer];
      expect(answer.toString()).toMatch(/^HTTP\/1\.1 200 /);
      const started = Date.now();
      socket.end(partial); // a ClientHello cut short (or none), then FIN
      socket.resume();
      await once(socket, 'close');
      expect(Date.now() - started).toBeLessThan(1000); // not the 10 s handshake timeout
    }
  });

  it('answers 400 to a CONNECT whose target is not host:port', async () => {
    const signer = await startSigner();
    const socket = net.connect(signer.port, signer.host);
    await once(socket, 'connect');
    socket.write('CONNECT nonsense HTTP/1.1\r\nHost: nonsense\r\n\r\n');
    let text = '';
    socket.setEncoding('utf8').on('data', (d: string) => (text += d));
    await once(socket, 'close');
    expect(text).toMatch(/^HTTP\/1.1 400 /);
    expect(text).toContain('jwtproxy: CONNECT needs a host:port target, got "nonsense"');
  });

  it('still signs plain HTTP when a CA is configured', async () => {
    const service = await startEchoService();
    cleanups.push(() => service.close());
    const signer = await startSigner();
    const response = await new Promise<number>((resolve, reject) =>
      http.get({ host: signer.host, port: signer.port, path: `${service.url}/plain`, agent: false }, (res) => resolve(res.resume().statusCode ?? 0)).on('error', reject),
    );
    expect(response).toBe(200);
    expect((await verifyAsVerifier(authorizations(service.seen[0]!), service.url)).claims.aud).toBe(service.url);
  });
});

describe('forged certificates', () => {
  let forger: CertificateForger;
  beforeAll(async () => {
    forger = await CertificateForger.load({ caKeyFile: pki.mitmCaFiles.keyFile, caCertFile: pki.mitmCaFiles.certFile });
  });

  it('issues a certificate for a DNS name with a DNS subject alternative name, signed by the CA', async () => {
    const cert = new X509Certificate(await forger.certificateFor('Service.Example.test'));
    const ca = new X509Certificate(pki.mitmCa.cert);
    expect(cert.subjectAltName).toBe('DNS:service.example.test');
    expect(cert.checkIssued(ca)).toBe(true);
    expect(cert.verify(ca.publicKey)).toBe(true);
    expect(cert.checkHost('service.example.test')).toBe('service.example.test');
    expect(cert.ca).toBe(false);
  });

  it('issues a certificate for an IP address with an IP subject alternative name (v4 and v6)', async () => {
    expect(new X509Certificate(await forger.certificateFor('127.0.0.1')).checkIP('127.0.0.1')).toBe('127.0.0.1');
    expect(new X509Certificate(await forger.certificateFor('::1')).subjectAltName).toBe('IP Address:0:0:0:0:0:0:0:1');
  });

  it('caches per host and shares one forging between concurrent tunnels to a new host', async () => {
    const concurrent = [forger.secureContextFor('shared.test'), forger.secureContextFor('SHARED.test')];
    expect(concurrent[0]).toBe(concurrent[1]);
    const first = await concurrent[0];
    expect(await forger.secureContextFor('shared.test')).toBe(first);
  });

  it('forges for a new host in well under 50 ms, and a known host costs nothing', async () => {
    const newHost: number[] = [];
    const knownHost: number[] = [];
    for (let i = 0; i < 5; i++) {
      let started = performance.now();
      await forger.secureContextFor(`timing-${i}.test`);
      newHost.push(performance.now() - started);
      started = performance.now();
      await forger.secureContextFor(`timing-${i}.test`);
      knownHost.push(performance.now() - started);
    }
    const median = (values: number[]) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
    expect(median(newHost)).toBeLessThan(50);
    expect(median(knownHost)).toBeLessThan(1);
  });

  it('keeps the cache bounded', async () => {
    const small = await CertificateForger.load({ caKeyFile: pki.mitmCaFiles.keyFile, caCertFile: pki.mitmCaFiles.certFile }, { cacheSize: 3 });
    await Promise.all(['a.test', 'b.test', 'c.test', 'd.test', 'e.test'].map((host) => small.secureContextFor(host)));
    expect(small.cachedHosts).toBe(3);
  });
});

describe('CA configuration errors at start', () => {
  it('names a missing CA key file', async () => {
    const missing = path.join(pki.dir, 'missing.key');
    await expect(startSigner({ caKeyFile: missing })).rejects.toThrow(`signer_proxy.ca_key_file: cannot read the CA private key`);
    await expect(startSigner({ caKeyFile: missing })).rejects.toThrow(missing);
  });

  it('names a missing CA certificate file', async () => {
    const missing = path.join(pki.dir, 'missing.crt');
    await expect(startSigner({ caCertFile: missing })).rejects.toThrow(new RegExp(`signer_proxy.ca_crt_file: cannot read the CA certificate.*${missing}`));
  });

  it('names a key that does not match the certificate', async () => {
    const other = await writePemFiles(makeCa('another CA'), pki.dir, 'other');
    await expect(startSigner({ caKeyFile: other.keyFile })).rejects.toThrow(
      `signer_proxy.ca_key_file: the private key does not match the CA certificate ${pki.mitmCaFiles.certFile} (${other.keyFile})`,
    );
  });

  it('names a file that is not PEM', async () => {
    const garbage = path.join(pki.dir, 'garbage.crt');
    await writeFile(garbage, 'not a certificate');
    await expect(startSigner({ caCertFile: garbage })).rejects.toThrow(new RegExp(`signer_proxy.ca_crt_file: not a usable PEM RSA certificate.*${garbage}`));
  });

  it('refuses a certificate that is not a CA', async () => {
    const leaf = await writePemFiles(makeServerCertificate(['localhost']), pki.dir, 'leaf');
    await expect(startSigner({ caKeyFile: leaf.keyFile, caCertFile: leaf.certFile })).rejects.toThrow(/not a CA certificate/);
  });

  it('accepts a v1 CA certificate (openssl x509 -req -signkey), and curl trusts what it forges', async () => {
    const dir = pki.dir;
    await run('openssl', ['genrsa', '-out', path.join(dir, 'v1.key'), '2048']);
    await run('openssl', ['req', '-new', '-key', path.join(dir, 'v1.key'), '-subj', '/CN=v1 test CA', '-out', path.join(dir, 'v1.csr')]);
    await run('openssl', ['x509', '-req', '-days', '2', '-in', path.join(dir, 'v1.csr'), '-signkey', path.join(dir, 'v1.key'), '-out', path.join(dir, 'v1.crt')]);
    expect(new X509Certificate(await readFile(path.join(dir, 'v1.crt'))).ca).toBe(false); // no basicConstraints: a v1 certificate
    const service = await httpsService();
    const signer = await startSigner({ caKeyFile: path.join(dir, 'v1.key'), caCertFile: path.join(dir, 'v1.crt') });
    const { stdout } = await run('curl', ['-sS', '--fail', '--proxy', signer.url, '--cacert', path.join(dir, 'v1.crt'), `https://localhost:${service.port}/v1`], {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
    });
    expect(JSON.parse(stdout)).toMatchObject({ url: '/v1' });
    expect(service.seen[0]!.headers.authorization).toMatch(/^Bearer /);
  });

  it('needs both files', async () => {
    await expect(startSigner({ caCertFile: undefined })).rejects.toThrow(/ca_key_file and ca_crt_file must be given together/);
  });

  it('names an unreadable trusted certificate file', async () => {
    const missing = path.join(pki.dir, 'nope.pem');
    await expect(startSigner({ trustedCertificates: [missing] })).rejects.toThrow(new RegExp(`signer_proxy.trusted_certificates: .*${missing}`));
  });
});
