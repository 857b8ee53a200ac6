import http from 'node:http';
import { InvalidSignatureError } from '@jwtproxy/core';
import { afterEach, describe, expect, it } from 'vitest';
import {
  RawClient,
  headerNames,
  rawExchange,
  runCleanups,
  send,
  sleep,
  startEchoUpstream,
  startEngine,
  startRawUpstream,
  startUpstream,
  statuses,
  type Cleanups,
  type Echoed,
} from './helpers.js';

const cleanups: Cleanups = [];
afterEach(() => runCleanups(cleanups));

/** The hop-by-hop headers of RFC 9110 §7.6.1 and the non-standard ones proxies remove as well. */
const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade'];

describe('hop-by-hop request headers', () => {
  it('reach the upstream without any hop-by-hop header or header named by Connection; end-to-end headers pass in order and spelling', async () => {
    const upstream = await startEchoUpstream(cleanups);
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const { text } = await rawExchange(
      proxy.port,
      'POST /hop?x=1 HTTP/1.1\r\n' +
        'Host: svc.test\r\n' +
        'X-First: 1\r\n' +
        'Connection: keep-alive, X-Per-Hop, x-other-hop\r\n' +
        'Keep-Alive: timeout=99\r\n' +
        'Proxy-Connection: keep-alive\r\n' +
        'Proxy-Authorization: Basic dXNlcjpzZWNyZXQ=\r\n' +
        'Proxy-Authenticate: Basic\r\n' +
        'TE: trailers\r\n' +
        'Trailer: X-Checksum\r\n' +
        // Without `Connection: upgrade` this is no upgrade request, but the header still describes this hop only.
        'Upgrade: h2c\r\n' +
        'X-Per-Hop: dropped\r\n' +
        'X-Other-Hop: dropped too\r\n' +
        'x-Mixed-CASE: kept as spelled\r\n' +
        'Transfer-Encoding: chunked\r\n' +
        'Connection: close\r\n' +
        '\r\n' +
        '5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n',
    );
    expect(statuses(text)).toEqual([200]);
    const seen = upstream.seen[0]!;
    expect(seen.body).toBe('hello');
    const names = headerNames(seen.rawHeaders);
    for (const name of [...HOP_BY_HOP, 'x-per-hop', 'x-other-hop']) {
      // The upstream may have its own connection headers from undici (connection: keep-alive, its own framing), never the client's values.
      if (name === 'connection' || name === 'transfer-encoding' || name === 'keep-alive') continue;
      expect(names, name).not.toContain(name);
    }
    const values = seen.rawHeaders.filter((_, i) => i % 2 === 1);
    expect(values).not.toContain('timeout=99');
    expect(values.join('\n')).not.toMatch(/X-Per-Hop|x-other-hop/i);
    // Order and spelling of the end-to-end headers are the client's (undici writes Host itself, in lower case).
    const endToEnd = seen.rawHeaders.filter((_, i) => i % 2 === 0 && /^(x-first|x-mixed-case)$/i.test(seen.rawHeaders[i]!));
    expect(endToEnd).toEqual(['X-First', 'x-Mixed-CASE']);
    expect(seen.rawHeaders[headerNames(seen.rawHeaders).indexOf('host') * 2 + 1]).toBe('svc.test');
  });

  it('route sees the forwarded headers without hop-by-hop ones, and `close`/`keep-alive` in Connection are options, not header names', async () => {
    const upstream = await startEchoUpstream(cleanups);
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const answer = await send(proxy.port, {
      headers: ['Host', 'svc', 'Connection', 'close, keep-alive, X-Named', 'X-Named', 'v', 'Close', 'a field, not the option', 'Keep-Alive', 'timeout=5', 'X-Kept', 'k'],
    });
    expect(answer.status).toBe(200);
    const head = proxy.routed[0]!.head;
    expect(head.headers).toEqual(['Host', 'svc', 'Close', 'a field, not the option', 'X-Kept', 'k']);
    const seen = JSON.parse(answer.body) as Echoed;
    expect(headerNames(seen.rawHeaders)).toEqual(expect.arrayContaining(['host', 'close', 'x-kept']));
    expect(headerNames(seen.rawHeaders)).not.toContain('x-named');
  });

  it('never reach the client from the upstream: hop-by-hop response headers and those its Connection names are removed, the rest relayed', async () => {
    const upstream = await startRawUpstream((_head, socket) => {
      socket.write(
        'HTTP/1.1 200 OK\r\n' +
          'Content-Length: 2\r\n' +
          'Connection: keep-alive, X-Upstream-Hop\r\n' +
          'Keep-Alive: timeout=99, max=7\r\n' +
          'Proxy-Connection: keep-alive\r\n' +
          'Proxy-Authenticate: Basic realm="upstream"\r\n' +
          'Proxy-Authorization: Basic c2VjcmV0\r\n' +
          'TE: trailers\r\n' +
          'Trailer: X-Checksum\r\n' +
          'Upgrade: h2c\r\n' +
          'X-Upstream-Hop: dropped\r\n' +
          'X-End-To-End: relayed\r\n' +
          'Set-Cookie: a=1\r\n' +
          'Set-Cookie: b=2\r\n' +
          '\r\nok',
      );
    }, cleanups);
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const answer = await send(proxy.port, { headers: { host: 'svc' } });
    expect(answer.status).toBe(200);
    expect(answer.body).toBe('ok');
    expect(answer.headers['x-end-to-end']).toBe('relayed');
    expect(answer.headers['set-cookie']).toEqual(['a=1', 'b=2']);
    for (const name of ['x-upstream-hop', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'upgrade']) {
      expect(answer.headers[name], name).toBeUndefined();
    }
    // The client's connection headers are the proxy's own (Node's), not the upstream's.
    expect(answer.headers['keep-alive'] ?? '').not.toContain('timeout=99');
    expect(answer.headers.connection ?? '').not.toMatch(/x-upstream-hop/i);
  });

  it("an upstream's `Connection: close` closes the upstream connection only: the client's connection stays open for its next request", async () => {
    let count = 0;
    const upstream = await startUpstream((_req, res) => {
      count++;
      res.writeHead(200, { connection: 'close', 'content-length': '2' });
      res.end('ok');
    }, cleanups);
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const client = await RawClient.connect(proxy.port);
    cleanups.push(async () => client.destroy());
    client.write('GET /1 HTTP/1.1\r\nHost: svc\r\n\r\n');
    expect(await client.waitFor(/\r\n\r\nok$/)).toBe(true);
    expect(client.text).not.toMatch(/connection: close/i);
    client.write('GET /2 HTTP/1.1\r\nHost: svc\r\n\r\n');
    expect(await client.waitFor(/ok[\s\S]*\r\n\r\nok$/)).toBe(true);
    expect(statuses(client.text)).toEqual([200, 200]);
    expect(client.isClosed).toBe(false);
    expect(count).toBe(2);
  });
});

describe('droppedRequestHeaders', () => {
  it('leaves the named headers (any case) out of what is forwarded, while route still sees every Authorization value', async () => {
    const upstream = await startEchoUpstream(cleanups);
    const proxy = await startEngine(
      {
        upstream: upstream.origin,
        droppedRequestHeaders: new Set(['authorization', 'x-client-secret']),
        route: (_req, head, pass) => ({ ...pass(), headers: [...head.headers, 'authorization', 'Bearer the-proxy-s-own'] }),
      },
      cleanups,
    );
    const answer = await send(proxy.port, {
      headers: ['Host', 'svc', 'Authorization', 'Bearer client-one', 'X-CLIENT-SECRET', 's', 'authorization', 'Bearer client-two', 'X-Other', 'o'],
    });
    const seen = JSON.parse(answer.body) as Echoed;
    const authorizations = seen.rawHeaders.filter((_, i) => i % 2 === 1 && seen.rawHeaders[i - 1]!.toLowerCase() === 'authorization');
    expect(authorizations).toEqual(['Bearer the-proxy-s-own']);
    expect(headerNames(seen.rawHeaders)).not.toContain('x-client-secret');
    expect(headerNames(seen.rawHeaders)).toContain('x-other');
    expect(proxy.routed[0]!.head.authorization).toEqual(['Bearer client-one', 'Bearer client-two']);
  });
});

describe('Expect: 100-continue', () => {
  it('is answered only once route has succeeded, the body then streams, and no Expect and no second 100 reach either side', async () => {
    const upstream = await startEchoUpstream(cleanups);
    let routedAt = 0;
    const proxy = await startEngine(
      {
        upstream: upstream.origin,
        route: async (_req, _head, pass) => {
          await sleep(300);
          routedAt = Date.now();
          return pass();
        },
      },
      cleanups,
    );
    const client = await RawClient.connect(proxy.port);
    cleanups.push(async () => client.destroy());
    client.write('PUT /upload HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n');
    expect(await client.waitFor('100 Continue', 3_000)).toBe(true);
    const continuedAt = Date.now();
    expect(routedAt).toBeGreaterThan(0);
    expect(continuedAt).toBeGreaterThanOrEqual(routedAt);
    client.write('hello');
    expect(await client.waitFor(/HTTP\/1\.1 200[\s\S]*\r\n0\r\n\r\n$/)).toBe(true);
    expect(statuses(client.text)).toEqual([100, 200]);
    const seen = upstream.seen[0]!;
    expect(seen.body).toBe('hello');
    expect(headerNames(seen.rawHeaders)).not.toContain('expect');
  });

  it.each([true, false])('a refusal (keepConnectionAfterRefusal %s) is answered without 100 Continue and closes without reading the body', async (keep) => {
    const upstream = await startEchoUpstream(cleanups);
    const proxy = await startEngine(
      {
        upstream: upstream.origin,
        keepConnectionAfterRefusal: keep,
        route: () => {
          throw new InvalidSignatureError();
        },
      },
      cleanups,
    );
    const client = await RawClient.connect(proxy.port);
    cleanups.push(async () => client.destroy());
    const sentAt = Date.now();
    // A large body is announced and never sent: the proxy must neither invite it nor wait for it.
    client.write('POST /upload HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\nContent-Length: 50000000\r\n\r\n');
    expect(await client.waitClosed(3_000)).toBe(true);
    expect(client.closedAt! - sentAt).toBeLessThan(1_500);
    expect(statuses(client.text)).toEqual([403]);
    expect(client.text).toMatch(/connection: close/i);
    expect(client.text.endsWith('jwtproxy: unable to verify request: Invalid JWT signature')).toBe(true);
    expect(upstream.seen).toHaveLength(0);
  });
});

describe('the same head through an HTTP client', () => {
  it('a kept-alive agent reuses the client connection across proxied requests', async () => {
    const upstream = await startEchoUpstream(cleanups);
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    cleanups.push(async () => agent.destroy());
    const sockets = new Set<unknown>();
    proxy.server.on('connection', (socket) => sockets.add(socket));
    for (let i = 0; i < 5; i++) expect((await send(proxy.port, { path: `/${i}`, agent })).status).toBe(200);
    expect(sockets.size).toBe(1);
    expect(upstream.seen.map((s) => s.url)).toEqual(['/0', '/1', '/2', '/3', '/4']);
  });
});
