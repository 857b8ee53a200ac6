/**
 * WebSocket through the signer, with the `ws` client and the proxy agents Node services use:
 * `ws://` as an absolute-form upgrade (http-proxy-agent) and `wss://` inside an intercepted
 * CONNECT tunnel (https-proxy-agent). The upgrade request is signed like any request.
 */
import { once } from 'node:events';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Pem } from '@jwtproxy/testkit';
import { HttpProxyAgent } from 'http-proxy-agent';
import { HttpsProxyAgent } from 'https-proxy-agent';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import type { SignerProxyOptions } from '../src/index.js';
import { interopKeySource, makeSigner, startInterceptingSigner, useInterceptionPki, verifyAsVerifier } from './helpers.js';

const pki = useInterceptionPki();

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!().catch(() => undefined);
});

interface EchoSocketService {
  url: string;
  /** The headers of each upgrade request the service accepted or refused. */
  upgrades: http.IncomingHttpHeaders[];
}

/** A WebSocket echo service on loopback; with `refuse`, it answers every upgrade with 403. */
async function wsEchoService(options: { tls?: Pem; refuse?: boolean } = {}): Promise<EchoSocketService> {
  const server = options.tls ? https.createServer({ key: options.tls.key, cert: options.tls.cert }) : http.createServer();
  const upgrades: http.IncomingHttpHeaders[] = [];
  const sockets = new WebSocketServer({
    server,
    verifyClient: (info: { req: http.IncomingMessage }, done: (ok: boolean, code?: number, message?: string) => void) => {
      upgrades.push(info.req.headers);
      if (options.refuse) done(false, 403, 'Forbidden');
      else done(true);
    },
  });
  sockets.on('connection', (socket) => socket.on('message', (data: RawData, isBinary: boolean) => socket.send(data, { binary: isBinary })));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  cleanups.push(async () => {
    for (const client of sockets.clients) client.terminate();
    sockets.close();
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });
  const scheme = options.tls ? 'wss' : 'ws';
  return { url: `${scheme}://127.0.0.1:${(server.address() as AddressInfo).port}`, upgrades };
}

const startSigner = (overrides: Partial<SignerProxyOptions> = {}) => startInterceptingSigner(pki, cleanups, overrides);

type Outcome = { socket: WebSocket } | { status: number; body: string };

/**
 * Opens a WebSocket through the signer: absolute-form for ws://, CONNECT for wss:// (trusting the
 * signer's CA); with `tunnel`, CONNECT for ws:// too (plain HTTP inside the tunnel).
 */
function openThrough(proxyUrl: string, url: string, options: { headers?: Record<string, string>; protocols?: string[]; tunnel?: boolean } = {}): Promise<Outcome> {
  const agent = url.startsWith('wss:') || options.tunnel ? new HttpsProxyAgent(proxyUrl) : new HttpProxyAgent(proxyUrl);
  const socket = new WebSocket(url, options.protocols ?? [], { agent, headers: options.headers, ca: pki.mitmCa.cert });
  cleanups.push(async () => socket.terminate());
  return new Promise((resolve, reject) => {
    socket.once('open', () => resolve({ socket }));
    socket.once('unexpected-response', (_req, res: http.IncomingMessage) => {
      let body = '';
      res.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    socket.once('error', reject);
  });
}

function opened(outcome: Outcome): WebSocket {
  if ('socket' in outcome) return outcome.socket;
  throw new Error(`upgrade refused: ${outcome.status} ${outcome.body}`);
}

async function echoOf(socket: WebSocket, data: string | Buffer): Promise<{ data: Buffer; isBinary: boolean }> {
  const reply = once(socket, 'message') as Promise<[Buffer, boolean]>;
  socket.send(data);
  const [received, isBinary] = await reply;
  return { data: received, isBinary };
}

describe('WebSocket through the signer', () => {
  it('signs a ws:// upgrade (aud http://host:port), keeps the client headers, and echoes text and binary both ways', async () => {
    const service = await wsEchoService();
    const signer = await startSigner();
    const socket = opened(await openThrough(signer.url, `${service.url}/chat?room=1`, { protocols: ['chat'], headers: { 'x-caller': 'a' } }));
    expect(socket.protocol).toBe('chat');

    expect(String((await echoOf(socket, 'hello')).data)).toBe('hello');
    const binary = Buffer.from([0, 1, 2, 255]);
    const echoed = await echoOf(socket, binary);
    expect(echoed.isBinary).toBe(true);
    expect(echoed.data.equals(binary)).toBe(true);

    const [seen] = service.upgrades;
    expect(seen!['x-caller']).toBe('a');
    expect(seen!['proxy-connection']).toBeUndefined();
    const audience = service.url.replace(/^ws:/, 'http:');
    const verified = await verifyAsVerifier(seen!.authorization, audience);
    expect(verified.claims.aud).toBe(audience);
  });

  it('signs a wss:// upgrade inside an intercepted CONNECT tunnel (aud https://host:port)', async () => {
    const service = await wsEchoService({ tls: pki.upstreamCert });
    const signer = await startSigner();
    // By name: https-proxy-agent checks an IP address target's certificate against "localhost".
    const url = service.url.replace('127.0.0.1', 'localhost');
    const socket = opened(await openThrough(signer.url, `${url}/secure`));
    expect(String((await echoOf(socket, 'over tls')).data)).toBe('over tls');
    const audience = url.replace(/^wss:/, 'https:');
    const verified = await verifyAsVerifier(service.upgrades[0]!.authorization, audience);
    expect(verified.claims.aud).toBe(audience);
  });

  it('signs a ws:// upgrade inside a CONNECT tunnel that carries plain HTTP (aud http://host:port)', async () => {
    const service = await wsEchoService();
    const signer = await startSigner();
    const socket = opened(await openThrough(signer.url, `${service.url}/plain-tunnel`, { tunnel: true }));
    expect(String((await echoOf(socket, 'in a tunnel')).data)).toBe('in a tunnel');
    const audience = service.url.replace(/^ws:/, 'http:');
    const verified = await verifyAsVerifier(service.upgrades[0]!.authorization, audience);
    expect(verified.claims.aud).toBe(audience);
  });

  it('gives each upgrade its own token', async () => {
    const service = await wsEchoService();
    const signer = await startSigner();
    opened(await openThrough(signer.url, `${service.url}/a`));
    opened(await openThrough(signer.url, `${service.url}/b`));
    const tokens = service.upgrades.map((headers) => headers.authorization);
    expect(tokens).toHaveLength(2);
    expect(tokens[0]).not.toBe(tokens[1]);
  });

  it("relays the service's refusal of the switch to the client", async () => {
    const service = await wsEchoService({ refuse: true });
    const signer = await startSigner();
    const outcome = await openThrough(signer.url, `${service.url}/`);
    expect(outcome).toMatchObject({ status: 403 });
    expect(service.upgrades).toHaveLength(1);
  });

  it('answers 502 naming the upstream when it is down, and logs it', async () => {
    const service = await wsEchoService();
    const signer = await startSigner();
    const url = service.url;
    await cleanups.shift()!(); // the service stops; its port is now closed
    const outcome = await openThrough(signer.url, `${url}/`);
    expect(outcome).toMatchObject({ status: 502 });
    expect((outcome as { body: string }).body).toContain(url.replace(/^ws:/, 'http:'));
    expect(signer.logger.lines.some((line) => line.level === 'warn' && line.message === 'upstream upgrade failed')).toBe(true);
  });

  it('answers 502 with the Go body when no key is active, and sends nothing upstream', async () => {
    const service = await wsEchoService();
    const signer = await startSigner({ signer: makeSigner(interopKeySource(false)) });
    const outcome = await openThrough(signer.url, `${service.url}/`);
    expect(outcome).toEqual({ status: 502, body: 'jwtproxy: unable to sign request: No key is yet active' });
    expect(service.upgrades).toHaveLength(0);
  });

  it('lets an open WebSocket run until the shutdown deadline, then cuts it', async () => {
    const service = await wsEchoService();
    const signer = await startSigner();
    const socket = opened(await openThrough(signer.url, `${service.url}/`));
    const closed = once(socket, 'close');
    const started = Date.now();
    const stopped = signer.proxy.stop(Date.now() + 400);
    // Still usable during the grace period.
    expect(String((await echoOf(socket, 'still here')).data)).toBe('still here');
    await stopped;
    await closed;
    expect(Date.now() - started).toBeGreaterThanOrEqual(350);
  });
});
