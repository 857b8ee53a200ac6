import https from 'node:https';
import { InvalidClaimError, NonceStoreUnavailableError, SigningError, WrongProxyKindError } from '@jwtproxy/core';
import { freeLoopbackPort, makeServerCertificate } from '@jwtproxy/testkit';
import { afterEach, describe, expect, it } from 'vitest';
import { listenLoopback, rawExchange, runCleanups, send, sleep, startEchoUpstream, startEngine, startUpstream, type Cleanups } from './helpers.js';

const cleanups: Cleanups = [];
afterEach(() => runCleanups(cleanups));

const TOKEN = 'Bearer eyJhbGciOiJSUzI1NiJ9.the-secret-part.sig';

/** Every log line as one string, to look for what must never be logged. */
const everything = (lines: Array<{ message: string; fields: Record<string, unknown> }>): string =>
  lines.map((line) => `${line.message} ${JSON.stringify(line.fields, (_key, value: unknown) => (value instanceof Error ? value.message : value))}`).join('\n');

describe('the answer writer and its log rule', () => {
  it("a typed client error is answered with its status and exact body (text/plain, exact length), logged at debug only, never with the client's token", async () => {
    const upstream = await startEchoUpstream(cleanups);
    const proxy = await startEngine(
      {
        upstream: upstream.origin,
        route: () => {
          throw new InvalidClaimError('aud');
        },
      },
      cleanups,
    );
    const answer = await send(proxy.port, { path: '/x?token=abc', headers: { host: 'svc', authorization: TOKEN } });
    const body = "jwtproxy: unable to verify request: Missing or invalid 'aud' claim";
    expect(answer.status).toBe(403);
    expect(answer.body).toBe(body);
    expect(answer.headers['content-type']).toBe('text/plain; charset=utf-8');
    expect(answer.headers['content-length']).toBe(String(Buffer.byteLength(body)));
    expect(proxy.logger.lines.map((line) => [line.level, line.message])).toEqual([['debug', 'request refused']]);
    expect(proxy.logger.lines[0]!.fields).toMatchObject({ status: 403, reason: body });
    expect(everything(proxy.logger.lines)).not.toContain('the-secret-part');
    expect(upstream.seen).toEqual([]);
  });

  it('a typed 5xx (a dependency down) is answered with its status and logged as a warning, at most once per interval, with how many were held back', async () => {
    const upstream = await startEchoUpstream(cleanups);
    const proxy = await startEngine(
      {
        upstream: upstream.origin,
        repeatedLogIntervalMs: 300,
        route: () => {
          throw new NonceStoreUnavailableError();
        },
      },
      cleanups,
    );
    for (let i = 0; i < 5; i++) {
      const answer = await send(proxy.port, { headers: { host: 'svc', authorization: TOKEN } });
      expect(answer.status).toBe(503);
      expect(answer.body).toBe('jwtproxy: unable to verify request: Nonce storage unavailable');
    }
    expect(proxy.logger.at('warn')).toHaveLength(1);
    expect(proxy.logger.at('warn')[0]).toMatchObject({ message: 'request refused', fields: { status: 503 } });
    await sleep(350);
    expect((await send(proxy.port, { headers: { host: 'svc' } })).status).toBe(503);
    expect(proxy.logger.at('warn')).toHaveLength(2);
    expect(proxy.logger.at('warn')[1]!.fields).toMatchObject({ repeated: 4 });
    expect(proxy.logger.at('error')).toEqual([]);
    expect(everything(proxy.logger.lines)).not.toContain('the-secret-part');
  });

  it("a signing failure is answered 502 with the Go signer's body and a warning 'unable to sign request'", async () => {
    const upstream = await startEchoUpstream(cleanups);
    const proxy = await startEngine(
      {
        upstream: upstream.origin,
        keepConnectionAfterRefusal: false,
        route: async () => {
          throw new SigningError('key source down');
        },
      },
      cleanups,
    );
    const answer = await send(proxy.port, { headers: { host: 'svc' } });
    expect(answer.status).toBe(502);
    expect(answer.body).toBe('jwtproxy: unable to sign request: key source down');
    expect(answer.headers.connection).toBe('close');
    expect(proxy.logger.at('warn').map((line) => line.message)).toEqual(['unable to sign request']);
  });

  it("a typed error with its own 500 (wrong kind of proxy) is the proxy's answer, not a bug: a warning, no error line", async () => {
    const upstream = await startEchoUpstream(cleanups);
    const proxy = await startEngine(
      {
        upstream: upstream.origin,
        route: () => {
          throw new WrongProxyKindError('This is a reverse proxy server. Does not respond to proxy requests.');
        },
      },
      cleanups,
    );
    const answer = await send(proxy.port, { headers: { host: 'svc' } });
    expect(answer.status).toBe(500);
    expect(answer.body).toBe('This is a reverse proxy server. Does not respond to proxy requests.');
    expect(proxy.logger.at('error')).toEqual([]);
  });

  it.each([
    [
      'thrown',
      () => {
        throw new Error('route bug with the-secret-part inside');
      },
    ],
    ['rejected', () => Promise.reject(new TypeError('cannot read properties of undefined'))],
  ])('a plain Error %s by route is answered 500 `jwtproxy: internal error` (its message never reaches the client) and logged as an error', async (_how, route) => {
    const upstream = await startEchoUpstream(cleanups);
    const proxy = await startEngine({ upstream: upstream.origin, route }, cleanups);
    for (let i = 0; i < 2; i++) {
      const answer = await send(proxy.port, { headers: { host: 'svc' } });
      expect(answer.status).toBe(500);
      expect(answer.body).toBe('jwtproxy: internal error');
    }
    const errors = proxy.logger.at('error');
    expect(errors).toHaveLength(2);
    expect(errors[0]).toMatchObject({ message: 'request failed unexpectedly', fields: { method: 'GET' } });
    expect(errors[0]!.fields.error).toBeInstanceOf(Error);
    expect(proxy.logger.at('warn')).toEqual([]);
    // And the engine goes on serving.
    expect(upstream.seen).toEqual([]);
  });

  it('a plain Error thrown by route for an upgrade is answered 500 on the raw socket and logged as an error', async () => {
    const upstream = await startEchoUpstream(cleanups);
    const proxy = await startEngine(
      {
        upstream: upstream.origin,
        route: () => {
          throw new Error('upgrade route bug');
        },
      },
      cleanups,
    );
    const answer = await rawExchange(proxy.port, 'GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
    expect(answer.closed).toBe(true);
    expect(answer.text).toMatch(/^HTTP\/1\.1 500 Internal Server Error\r\n/);
    expect(answer.text.endsWith('\r\n\r\njwtproxy: internal error')).toBe(true);
    expect(proxy.logger.at('error').map((line) => line.message)).toEqual(['request failed unexpectedly']);
  });

  it('an upstream that cannot be asked: 502 with the reason alone (one upstream), or naming it (many upstreams), and a rate-limited warning', async () => {
    // A port reserved for this test that nothing listens on.
    const origin = `http://127.0.0.1:${await freeLoopbackPort()}`;
    const single = await startEngine({ upstream: origin, repeatedLogIntervalMs: 60_000 }, cleanups);
    for (let i = 0; i < 3; i++) {
      const answer = await send(single.port, { headers: { host: 'svc' } });
      expect(answer.status).toBe(502);
      expect(answer.body).toMatch(/^jwtproxy: upstream error: connect ECONNREFUSED 127\.0\.0\.1:\d+$/);
    }
    expect(single.logger.at('warn').map((line) => line.message)).toEqual(['upstream request failed']);
    const named = await startEngine({ upstream: origin, upstreamName: origin }, cleanups);
    const answer = await send(named.port, { headers: { host: 'svc' } });
    expect(answer.body).toBe(`jwtproxy: upstream error: ${origin}: connect ECONNREFUSED 127.0.0.1:${new URL(origin).port}`);
  });

  it('an upstream whose certificate is not trusted: 502 saying so, with the TLS error code', async () => {
    const pem = makeServerCertificate(['127.0.0.1']);
    const upstream = await listenLoopback(https.createServer(pem, (_req, res) => res.end('never')), cleanups);
    const origin = `https://127.0.0.1:${upstream.port}`;
    const proxy = await startEngine({ upstream: origin, upstreamName: origin }, cleanups);
    const answer = await send(proxy.port, { headers: { host: 'svc' } });
    expect(answer.status).toBe(502);
    expect(answer.body).toMatch(new RegExp(`^jwtproxy: upstream error: certificate of ${origin.replace(/\./g, '\\.')} not accepted: .+ \\(DEPTH_ZERO_SELF_SIGNED_CERT\\)$`));
  });

  it("an upstream's own 5xx is relayed as it is (status, body, headers) and is not the proxy's failure: nothing logged", async () => {
    const upstream = await startUpstream((_req, res) => {
      res.writeHead(503, { 'retry-after': '7', 'content-type': 'application/json' });
      res.end('{"upstream":"busy"}');
    }, cleanups);
    const proxy = await startEngine({ upstream: upstream.origin }, cleanups);
    const answer = await send(proxy.port, { headers: { host: 'svc' } });
    expect(answer.status).toBe(503);
    expect(answer.body).toBe('{"upstream":"busy"}');
    expect(answer.headers['retry-after']).toBe('7');
    expect(proxy.logger.lines).toEqual([]);
  });
});
