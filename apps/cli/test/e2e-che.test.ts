/**
 * Issue 17, the Eclipse Che fork's verifier options end to end through the real `jwtproxy`
 * process: `excludes` (HTTP and a WebSocket), the token from `?token=` (removed before the
 * service), the cookie flow of a browser (302 to log in → /jwt/auth sets the cookie → back with
 * it), `nonce_storage: {type: void}`, and an open redirect refused.
 */
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { freeLoopbackPort, listenOnLoopback, type RunningServer } from '@jwtproxy/testkit';
import { e2eConfig, httpRequest, jwtproxyConfig, mintToken, startCli, tempDir, type RunningCli } from './helpers.js';

const LOGIN = 'http://login.che.test/auth';
let audience: string;
let files: Awaited<ReturnType<typeof tempDir>>;
let service: RunningServer;
let seen: Array<{ url: string; headers: http.IncomingHttpHeaders }>;
let cli: RunningCli;
let verifier: string;

beforeAll(async () => {
  files = await tempDir();
  seen = [];
  const server = http.createServer((req, res) => {
    seen.push({ url: req.url!, headers: req.headers });
    res.writeHead(200, { 'content-type': 'text/plain' }).end(`service saw ${req.url}`);
  });
  const sockets = new WebSocketServer({ server });
  sockets.on('connection', (socket) => socket.on('message', (data: RawData) => socket.send(data)));
  service = await listenOnLoopback(server);
  const port = await freeLoopbackPort();
  audience = `http://127.0.0.1:${port}`;
  const entry = e2eConfig.verifier({ listenAddr: `127.0.0.1:${port}`, upstream: service.url, audience, nonceStorage: '{type: void}' });
  entry.push(
    '      excludes: ["^/public/", "^/ws-public$"]',
    '      auth_cookies_enabled: true',
    '      cookie_path: /',
    `      auth_redirect_url: ${LOGIN}`,
    '      public_base_path: /',
    '      claims_to_headers: {sub: X-Auth-Subject}',
  );
  const config = await files.write('che.yaml', jwtproxyConfig({ verifiers: [entry] }));
  cli = await startCli(['-config', config]);
  verifier = cli.servers['verifier_proxies[0]']!;
});

afterAll(async () => {
  const stopped = await cli?.stop();
  await service?.close();
  await files?.cleanup();
  expect(stopped?.code).toBe(0);
});

describe('Che fork options through the CLI', () => {
  it('nonce_storage {type: void} loads (alias of none) and warns that replay protection is off', () => {
    expect(cli.stderr()).toContain('replay protection is OFF');
  });

  it('an excluded path passes without a token; a non-excluded one is sent to log in', async () => {
    const open = await httpRequest(`${verifier}/public/app.js`, { headers: { 'x-auth-subject': 'admin' } });
    expect(open.status).toBe(200);
    expect(open.body).toBe('service saw /public/app.js');
    // claims_to_headers still holds on a public path: a forged claim header never reaches the service.
    expect(seen.at(-1)!.headers['x-auth-subject']).toBeUndefined();
    const closed = await httpRequest(`${verifier}/private/data?x=1`);
    expect(closed.status).toBe(302);
    const location = new URL(closed.headers.location!);
    expect(location.origin + location.pathname).toBe(LOGIN);
    expect(location.searchParams.get('workspaceId')).toBe(audience);
    expect(location.searchParams.get('redirectUrl')).toBe(`${audience}/private/data?x=1`);
    // A traversal out of the public prefix is not public.
    const traversal = await httpRequest(`${verifier}/public/..%2fprivate/data`);
    expect(traversal.status).toBe(302);
  });

  it('a CORS preflight passes without a token', async () => {
    const preflight = await httpRequest(`${verifier}/private/data`, {
      method: 'OPTIONS',
      headers: { origin: 'http://ide.che.test', 'access-control-request-method': 'POST' },
    });
    expect(preflight.status).toBe(200);
    expect(seen.at(-1)?.url).toBe('/private/data');
  });

  it('a WebSocket under an excluded path opens without a token and echoes', async () => {
    const socket = new WebSocket(`${verifier.replace(/^http/, 'ws')}/ws-public`);
    await new Promise<void>((resolve, reject) => {
      socket.once('open', () => resolve());
      socket.once('error', reject);
      socket.once('unexpected-response', (_req, res) => reject(new Error(`refused ${res.statusCode}`)));
    });
    const echoed = new Promise<string>((resolve) => socket.once('message', (data: RawData) => resolve(String(data))));
    socket.send('hello che');
    expect(await echoed).toBe('hello che');
    socket.close();
  });

  it('?token= is accepted and the service sees the URL without it', async () => {
    const token = await mintToken(audience);
    const answer = await httpRequest(`${verifier}/private/data?a=1&token=${token}&b=2`);
    expect(answer.status).toBe(200);
    expect(seen.at(-1)!.url).toBe('/private/data?a=1&b=2');
    expect(JSON.stringify(seen.at(-1)!.headers)).not.toContain(token);
    expect(cli.stderr()).not.toContain(token);
  });

  it('cookie flow: 302 to log in → /jwt/auth sets the HttpOnly cookie and redirects back → 200 with the cookie', async () => {
    const jar = new Map<string, string>();
    const cookieHeader = () => [...jar].map(([name, value]) => `${name}=${value}`).join('; ');
    const first = await httpRequest(`${verifier}/ide/index.html`);
    expect(first.status).toBe(302);
    const back = new URL(first.headers.location!).searchParams.get('redirectUrl')!;
    // The login page hands the browser to /jwt/auth with a token and where to go back.
    const token = await mintToken(audience, { expirationMs: 60_000 });
    const auth = await httpRequest(`${verifier}/jwt/auth?token=${token}&redirect_url=${encodeURIComponent(back)}`);
    expect(auth.status).toBe(302);
    expect(auth.headers.location).toBe(back);
    const setCookie = auth.headers['set-cookie']![0]!;
    expect(setCookie).toMatch(/^access_token=[\w-]+\.[\w-]+\.[\w-]+; Path=\/; HttpOnly; SameSite=Lax; Max-Age=\d+$/);
    for (const line of auth.headers['set-cookie']!) {
      const [pair] = line.split(';');
      const eq = pair!.indexOf('=');
      jar.set(pair!.slice(0, eq), pair!.slice(eq + 1));
    }
    const again = await httpRequest(back, { headers: { cookie: cookieHeader() } });
    expect(again.status).toBe(200);
    expect(again.body).toBe('service saw /ide/index.html');
    // Over an https ingress the cookie is Secure.
    const secure = await httpRequest(`${verifier}/jwt/auth?token=${await mintToken(audience)}`, { headers: { 'x-forwarded-proto': 'https' } });
    expect(secure.status).toBe(204);
    expect(secure.headers['set-cookie']![0]).toContain('; Secure');
  });

  it('/jwt/auth refuses an open redirect and an invalid token', async () => {
    for (const target of ['https://evil.example/', '//evil.example/x', 'http://127.0.0.1:1/']) {
      const answer = await httpRequest(`${verifier}/jwt/auth?token=${await mintToken(audience)}&redirect_url=${encodeURIComponent(target)}`);
      expect(answer.status, target).toBe(400);
      expect(answer.headers.location).toBeUndefined();
      expect(answer.headers['set-cookie']).toBeUndefined();
    }
    const forged = await httpRequest(`${verifier}/jwt/auth?token=not.a.jwt&redirect_url=/ide/`);
    expect(forged.status).toBe(403);
    expect(forged.headers['set-cookie']).toBeUndefined();
  });

  it('no token taken from a URL or set as a cookie ever reaches the log', async () => {
    // Access lines are written in batches (up to 20 ms later): wait for the last requests' lines.
    await expect.poll(() => cli.stderr(), { timeout: 2_000 }).toContain('/jwt/auth');
    expect(cli.stderr()).not.toMatch(/eyJ[\w-]+\.eyJ/);
    expect(cli.stderr()).not.toContain('not.a.jwt');
  });
});
