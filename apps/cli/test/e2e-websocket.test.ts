/**
 * Issue 3, end to end with the real `jwtproxy` process: a WebSocket echo service behind the
 * verifier. The upgrade is verified like any request, then messages flow both ways.
 */
import { once } from 'node:events';
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { listenOnLoopback, type RunningServer } from '@jwtproxy/testkit';
import { e2eConfig, jwtproxyConfig, mintToken, startCli, tempDir, type RunningCli } from './helpers.js';

const audience = 'http://chat.internal';
let files: Awaited<ReturnType<typeof tempDir>>;
let echo: RunningServer;
let upgradesSeen: http.IncomingHttpHeaders[];
let cli: RunningCli;
let verifierWs: string;

beforeAll(async () => {
  files = await tempDir();
  upgradesSeen = [];
  const server = http.createServer((_req, res) => res.writeHead(426).end());
  const sockets = new WebSocketServer({ server });
  sockets.on('connection', (socket, req) => {
    upgradesSeen.push(req.headers);
    socket.on('message', (data: RawData, isBinary: boolean) => socket.send(data, { binary: isBinary }));
  });
  echo = await listenOnLoopback(server);
  const config = await files.write('ws.yaml', jwtproxyConfig({ verifiers: [e2eConfig.verifier({ upstream: echo.url, audience })] }));
  cli = await startCli(['-config', config]);
  verifierWs = cli.servers['verifier_proxies[0]']!.replace(/^http/, 'ws');
});

afterAll(async () => {
  const stopped = await cli?.stop();
  await echo?.close();
  await files?.cleanup();
  expect(stopped?.code).toBe(0);
});

/** Opens a WebSocket, or resolves with the HTTP status and body of the refusal. */
function connect(url: string, headers: Record<string, string>): Promise<WebSocket | { status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, { headers });
    socket.once('open', () => resolve(socket));
    socket.once('unexpected-response', (_req, res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    socket.once('error', reject);
  });
}

function nextMessage(socket: WebSocket): Promise<{ data: Buffer; isBinary: boolean }> {
  return once(socket, 'message').then(([data, isBinary]) => ({ data: data as Buffer, isBinary: isBinary as boolean }));
}

describe('WebSocket through the verifier', () => {
  it('with a valid token: text and binary messages (1 MiB too) echo back', async () => {
    const token = await mintToken(audience);
    const socket = await connect(`${verifierWs}/chat`, { authorization: `Bearer ${token}` });
    if (!(socket instanceof WebSocket)) throw new Error(`refused: ${socket.status} ${socket.body}`);
    try {
      expect(upgradesSeen.at(-1)?.authorization).toBe(`Bearer ${token}`);
      const text = nextMessage(socket);
      socket.send('hello through jwtproxy');
      expect(await text).toEqual({ data: Buffer.from('hello through jwtproxy'), isBinary: false });

      const big = Buffer.alloc(1024 * 1024, 'abcdefgh');
      big.writeUInt32BE(0xdeadbeef, 12345);
      const binary = nextMessage(socket);
      socket.send(big);
      const answer = await binary;
      expect(answer.isBinary).toBe(true);
      expect(answer.data.equals(big)).toBe(true);
    } finally {
      socket.close();
      await once(socket, 'close');
    }
  });

  it('without a token the upgrade is refused with the Go 403, and never reaches the service', async () => {
    const before = upgradesSeen.length;
    expect(await connect(`${verifierWs}/chat`, {})).toEqual({ status: 403, body: 'jwtproxy: unable to verify request: Could not parse JWT' });
    expect(upgradesSeen.length).toBe(before);
  });

  it('a token already used for one WebSocket is refused for the next', async () => {
    const token = await mintToken(audience);
    const first = await connect(`${verifierWs}/chat`, { authorization: `Bearer ${token}` });
    expect(first).toBeInstanceOf(WebSocket);
    (first as WebSocket).close();
    expect(await connect(`${verifierWs}/chat`, { authorization: `Bearer ${token}` })).toEqual({
      status: 403,
      body: "jwtproxy: unable to verify request: Missing or invalid 'jti' claim",
    });
  });
});
