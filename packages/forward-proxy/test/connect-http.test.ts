/**
 * Issue 20: CONNECT tunnels that carry plain HTTP, as undici's ProxyAgent (and so Node's fetch)
 * opens them even for an `http://` URL. Each request inside is signed for `http://host[:port]`.
 */
import { once } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import { listenOnLoopback } from '@jwtproxy/testkit';
import { ProxyAgent, request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { type SignerProxyOptions } from '../src/index.js';
import { tunnelTarget } from '../src/targets.js';
import { recordingLogger, verifyAsVerifier, startTestEcho, startTestSigner } from './helpers.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
});

const startSigner = (overrides: Partial<SignerProxyOptions> = {}) => startTestSigner(cleanups, overrides);
const echo = () => startTestEcho(cleanups);

/** undici's ProxyAgent with one connection, so that sequential requests share one tunnel. */
function proxyAgent(proxyUrl: string): ProxyAgent {
  const agent = new ProxyAgent({ uri: proxyUrl, connections: 1 });
  cleanups.push(() => agent.close());
  return agent;
}

const tunnelsServed = (logger: ReturnType<typeof recordingLogger>) => logger.lines.filter((line) => line.message === 'serving HTTP from a CONNECT tunnel').length;

describe('CONNECT carrying plain HTTP', () => {
  it("undici's ProxyAgent to an http:// service: 200, aud http://host:port, several requests on one tunnel each with its own jti", async () => {
    const service = await echo();
    const signer = await startSigner();
    const agent = proxyAgent(signer.proxy.address);
    for (let i = 0; i < 5; i++) {
      const response = await request(`${service.url}/item/${i}?q=${i}`, { dispatcher: agent });
      expect(response.statusCode).toBe(200);
      await response.body.text();
    }
    expect(service.seen.map((seen) => seen.url)).toEqual(['/item/0?q=0', '/item/1?q=1', '/item/2?q=2', '/item/3?q=3', '/item/4?q=4']);
    const jtis = new Set<string>();
    for (const seen of service.seen) {
      const verified = await verifyAsVerifier(seen.headers.authorization, service.url);
      expect(verified.claims.aud).toBe(`http://127.0.0.1:${service.port}`);
      jtis.add(verified.claims.jti);
    }
    expect(jtis.size).toBe(5);
    expect(tunnelsServed(signer.logger)).toBe(1);
  });

  it("Node's fetch with a ProxyAgent dispatcher: a POST body and the answer stream through, signed", async () => {
    const received: Array<{ bytes: number; authorization: string | undefined }> = [];
    const upstream = await listenOnLoopback(
      http.createServer((req, res) => {
        let bytes = 0;
        req.on('data', (chunk: Buffer) => (bytes += chunk.length));
        req.on('end', () => {
          received.push({ bytes, authorization: req.headers.authorization });
          res.end(`got ${bytes}`);
        });
      }),
    );
    cleanups.push(() => upstream.close());
    const signer = await startSigner();
    const agent = proxyAgent(signer.proxy.address);
    // Node's own fetch takes an undici dispatcher; its types know another undici's.
    const init = { method: 'POST', body: 'x'.repeat(100_000), headers: { 'content-type': 'text/plain' }, dispatcher: agent } as unknown as RequestInit;
    const response = await fetch(`${upstream.url}/upload`, init);
    expect(response.status).toBe(200);
    expect(await response.text()).toBe('got 100000');
    expect(received).toHaveLength(1);
    expect((await verifyAsVerifier(received[0]!.authorization, upstream.url)).claims.aud).toBe(upstream.url);
  });

  it('the audience leaves out :80 for a plain tunnel (CONNECT host:80 is a URL without a port), and keeps :443 for TLS (as Go)', () => {
    expect(tunnelTarget({ authority: 'svc.test:80', secure: false }, '/a?b', 'svc.test')).toEqual({
      origin: 'http://svc.test:80',
      audience: 'http://svc.test',
      host: 'svc.test',
      path: '/a?b',
    });
    expect(tunnelTarget({ authority: '[::1]:8080', secure: false }, '/', undefined).audience).toBe('http://[::1]:8080');
    expect(tunnelTarget({ authority: 'svc.test:443', secure: true }, '/', 'svc.test').audience).toBe('https://svc.test:443');
  });

  it('keeps the tunnel alive between requests and closes it after idle_timeout', async () => {
    const service = await echo();
    const signer = await startSigner({ limits: { idleTimeoutMs: 300 } });
    const socket = net.connect(signer.port, signer.host);
    socket.write(`CONNECT 127.0.0.1:${service.port} HTTP/1.1\r\nHost: 127.0.0.1:${service.port}\r\n\r\nGET /one HTTP/1.1\r\nHost: 127.0.0.1:${service.port}\r\n\r\n`);
    let text = '';
    socket.setEncoding('latin1').on('data', (d: string) => (text += d));
    await new Promise((resolve) => setTimeout(resolve, 200));
    socket.write(`GET /two HTTP/1.1\r\nHost: 127.0.0.1:${service.port}\r\n\r\n`);
    const started = Date.now();
    await once(socket, 'close');
    expect(text.match(/HTTP\/1\.1 \d{3}/g)).toEqual(['HTTP/1.1 200', 'HTTP/1.1 200', 'HTTP/1.1 200']);
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(service.seen.map((seen) => seen.url)).toEqual(['/one', '/two']);
  });

  it('a tunnel that sends nothing is closed after read_header_timeout', async () => {
    const signer = await startSigner({ limits: { readHeaderTimeoutMs: 300 } });
    const socket = net.connect(signer.port, signer.host);
    socket.write('CONNECT 127.0.0.1:9 HTTP/1.1\r\n\r\n');
    let text = '';
    socket.setEncoding('latin1').on('data', (d: string) => (text += d));
    const started = Date.now();
    await once(socket, 'close');
    expect(text).toBe('HTTP/1.1 200 Connection Established\r\n\r\n');
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  it('at a stop, a request in flight inside a tunnel is answered with connection: close', async () => {
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    const upstream = await listenOnLoopback(
      http.createServer(async (req, res) => {
        await released;
        res.end('finished');
      }),
    );
    cleanups.push(() => upstream.close());
    const signer = await startSigner({ shutdownTimeout: 5_000 });
    const agent = proxyAgent(signer.proxy.address);
    const inFlight = request(`${upstream.url}/slow`, { dispatcher: agent });
    await new Promise((resolve) => setTimeout(resolve, 200));
    const stopped = signer.proxy.stop();
    await new Promise((resolve) => setTimeout(resolve, 50));
    release();
    const response = await inFlight;
    expect(response.statusCode).toBe(200);
    expect(response.headers.connection).toBe('close');
    expect(await response.body.text()).toBe('finished');
    await stopped;
  });
});
