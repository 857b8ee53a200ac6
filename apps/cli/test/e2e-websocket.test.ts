/**
 * Issue 3, end to end with the real `jwtproxy` process: a WebSocket echo service behind the
 * verifier. The upgrade is verified like any request, then messages flow both ways. A client
 * that goes through the signer (ws:// through an HTTP proxy) gets its upgrade signed.
 */
import { once } from 'node:events';
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HttpProxyAgent } from 'http-proxy-agent';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { freeLoopbackPort, listenOnLoopback, type RunningServer } from '@jwtproxy/testkit';
import { claimsOf, e2eConfig, jwtproxyConfig, mintToken, startCli, tempDir, type RunningCli } from './helpers.js';

let audience: string;
let files: Awaited<ReturnType<typeof tempDir>>;
let echo: RunningServer;
let upgradesSeen: http.IncomingHttpHeaders[];
let cli: RunningCli;
let verifierWs: string;
let signer: string;

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
  // The verifier's audience is its own address, as the signer signs for the URL it is given.
  const port = await freeLoopbackPort();
  audience = `http://127.0.0.1:${port}`;
  const config = await files.write(
    'ws.yaml',
    jwtproxyConfig({ signer: e2eConfig.signer(), verifiers: [e2eConfig.verifier({ listenAddr: `127.0.0.1:${port}`, upstream: echo.url, audience })] }),
  );
  cli = await startCli(['-config', config]);
  verifierWs = cli.servers['verifier_proxies[0]']!.replace(/^http/, 'ws');
  signer = cli.servers.signer_proxy!;
});

afterAll(async () => {
  const stopped = await cli?.stop();
  await echo?.close();
  await files?.cleanup();
  expect(stopped?.code).toBe(0);
});

/** Opens a WebSocket, or resolves with the HTTP status and body of the refusal. */
function connect(url: string, headers: Record<string, string>, proxy?: string): Promise<WebSocket | { status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, { headers, ...(proxy ? { agent: new HttpProxyAgent(proxy) } : {}) });
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

  it('through the signer: the upgrade is signed for the verifier, passes, and echoes; each WebSocket gets its own token', async () => {
    const before = upgradesSeen.length;
    const sockets: WebSocket[] = [];
    for (let i = 0; i < 2; i++) {
      const socket = await connect(`${verifierWs}/chat`, {}, signer);
      if (!(socket instanceof WebSocket)) throw new Error(`refused: ${socket.status} ${socket.body}`);
      sockets.push(socket);
    }
    try {
      const reply = nextMessage(sockets[1]!);
      sockets[1]!.send('signed and verified');
      expect(await reply).toEqual({ data: Buffer.from('signed and verified'), isBinary: false });
      const seen = upgradesSeen.slice(before);
      expect(seen).toHaveLength(2);
      const claims = seen.map((headers) => claimsOf(headers.authorization));
      expect(claims[0]).toMatchObject({ aud: audience });
      expect(claims[0]!.jti).not.toBe(claims[1]!.jti);
    } finally {
      for (const socket of sockets) socket.close();
    }
  });
});
