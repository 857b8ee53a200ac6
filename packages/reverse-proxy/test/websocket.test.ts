import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import { listenOnLoopback, listenOnUnixSocket, makeCa, makeServerCertificate, type RunningServer } from '@jwtproxy/testkit';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { bearer, refusal, runCleanups, startProxy, temporaryDirectory } from './helpers.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(() => runCleanups(cleanups));

/** A WebSocket echo service that also records the Host and Authorization of each upgrade. */
async function startWebSocketEcho(listen: (server: http.Server) => Promise<RunningServer>, server: http.Server = http.createServer()) {
  const handshakes: Array<{ url: string; host: string | undefined; authorization: string | undefined }> = [];
  const wss = new WebSocketServer({ server });
  wss.on('connection', (socket, req) => {
    handshakes.push({ url: req.url ?? '', host: req.headers.host, authorization: req.headers.authorization });
    socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }));
  });
  const running = await listen(server);
  cleanups.push(async () => {
    for (const client of wss.clients) client.terminate();
    wss.close();
    await running.close();
  });
  return { ...running, handshakes };
}

function wsAddress(proxyAddress: string, pathAndQuery: string): string {
  return proxyAddress.replace(/^http/, 'ws') + pathAndQuery;
}

async function echoThrough(socket: WebSocket, messages: string[]): Promise<string[]> {
  await once(socket, 'open');
  const received: string[] = [];
  for (const message of messages) {
    socket.send(message);
    const [data] = (await once(socket, 'message')) as [Buffer];
    received.push(data.toString());
  }
  socket.close();
  await once(socket, 'close');
  return received;
}

describe('WebSocket upgrades', () => {
  it('are verified, then piped to the upstream with Host and path kept', async () => {
    const upstream = await startWebSocketEcho((server) => listenOnLoopback(server));
    const proxy = await startProxy({ upstream: `${upstream.url}/ws-base` }, cleanups);
    const token = await bearer();
    const socket = new WebSocket(wsAddress(proxy.address, '/chat?room=1'), { headers: { authorization: token, host: 'chat.internal' } });
    expect(await echoThrough(socket, ['hello', 'again', 'x'.repeat(100_000)])).toEqual(['hello', 'again', 'x'.repeat(100_000)]);
    expect(upstream.handshakes).toEqual([{ url: '/ws-base/chat?room=1', host: 'chat.internal', authorization: token }]);
  });

  it('without a valid token get the normal 403 answer and never reach the upstream', async () => {
    const upstream = await startWebSocketEcho((server) => listenOnLoopback(server));
    const proxy = await startProxy({ upstream: upstream.url }, cleanups);
    const socket = new WebSocket(wsAddress(proxy.address, '/chat'));
    socket.on('error', () => undefined);
    const [, res] = (await once(socket, 'unexpected-response')) as [unknown, http.IncomingMessage];
    expect(res.statusCode).toBe(403);
    expect(res.headers['content-type']).toBe('text/plain; charset=utf-8');
    const chunks: Buffer[] = [];
    for await (const chunk of res) chunks.push(chunk as Buffer);
    expect(Buffer.concat(chunks).toString()).toBe(refusal('Could not parse JWT'));
    expect(upstream.handshakes).toHaveLength(0);
  });

  it('relay an upstream that declines the switch, then close the connection', async () => {
    const upstream = await listenOnLoopback(
      http.createServer((req, res) => {
        res.writeHead(426, { 'content-type': 'text/plain' });
        res.end('no upgrade here');
      }),
    );
    cleanups.push(() => upstream.close());
    const proxy = await startProxy({ upstream: upstream.url }, cleanups);
    const socket = new WebSocket(wsAddress(proxy.address, '/'), { headers: { authorization: await bearer() } });
    socket.on('error', () => undefined);
    const [, res] = (await once(socket, 'unexpected-response')) as [unknown, http.IncomingMessage];
    expect(res.statusCode).toBe(426);
    expect(res.headers.connection).toBe('close');
  });

  it('reach an https upstream and a unix socket upstream', async () => {
    const ca = makeCa();
    const dir = temporaryDirectory(cleanups);
    writeFileSync(path.join(dir, 'ca.pem'), ca.cert);
    const tlsUpstream = await startWebSocketEcho(
      (server) => listenOnLoopback(server, 'https'),
      https.createServer(makeServerCertificate(['127.0.0.1'], ca)) as unknown as http.Server,
    );
    const tlsProxy = await startProxy({ upstream: tlsUpstream.url, upstreamCaFile: path.join(dir, 'ca.pem') }, cleanups);
    expect(await echoThrough(new WebSocket(wsAddress(tlsProxy.address, '/tls'), { headers: { authorization: await bearer() } }), ['over tls'])).toEqual(['over tls']);

    const unixUpstream = await startWebSocketEcho((server) => listenOnUnixSocket(server, path.join(dir, 'ws.sock')));
    const unixProxy = await startProxy({ upstream: unixUpstream.url }, cleanups);
    expect(await echoThrough(new WebSocket(wsAddress(unixProxy.address, '/unix'), { headers: { authorization: await bearer() } }), ['over unix'])).toEqual(['over unix']);
  });
});
