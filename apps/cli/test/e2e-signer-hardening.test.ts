/**
 * Issue 12 through the real `jwtproxy` process, as an attacker meets the signer: a client's own
 * Authorization header (the example web service behind a real verifier), slow and silent clients
 * under a 1,024 file-descriptor limit, a request pipelined behind a refusal, malformed Host
 * headers and too many header lines, and a graceful stop under keep-alive load.
 */
import { readdirSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { freeLoopbackPort, repoRoot, startEchoService, rawExchange, responseStatuses } from '@jwtproxy/testkit';
import { cliMain, e2eConfig, httpRequest, jwtproxyConfig, startCli, tempDir, type RunningCli } from './helpers.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** Starts a CLI with a signer (extra lines in its signer_proxy block) and, optionally, verifiers. */
async function startSigner(extra: string[] = [], verifiers: string[][] = [], command?: readonly string[]): Promise<{ cli: RunningCli; signer: string }> {
  const dir = await tempDir();
  cleanups.push(() => dir.cleanup());
  const config = await dir.write('signer.yaml', jwtproxyConfig({ signer: e2eConfig.signer({ extra }), verifiers }));
  const cli = await startCli(['-config', config], command ? { command } : {});
  cleanups.push(() => cli.stop());
  return { cli, signer: cli.servers.signer_proxy! };
}

async function echo() {
  const service = await startEchoService();
  cleanups.push(() => service.close());
  return service;
}

const openFds = (pid: number): number => readdirSync(`/proc/${pid}/fd`).length;

describe('the upstream sees only the signed token (the example web service behind a real verifier)', () => {
  it('a client behind the signer adding Authorization: Bearer <alg none, iss=admin> is not seen as admin', async () => {
    const { startWebService } = (await import(path.join(repoRoot, 'examples/httpserver/server.mjs'))) as {
      startWebService(port: number): Promise<http.Server>;
    };
    const servicePort = await freeLoopbackPort();
    const service = await startWebService(servicePort);
    cleanups.push(() => new Promise((resolve) => service.close(resolve)));
    const verifierPort = await freeLoopbackPort();
    const verifier = `http://127.0.0.1:${verifierPort}`;
    const { signer } = await startSigner([], [e2eConfig.verifier({ listenAddr: `127.0.0.1:${verifierPort}`, upstream: `http://127.0.0.1:${servicePort}`, audience: verifier })]);
    const forgedClaims = Buffer.from(JSON.stringify({ iss: 'admin', aud: verifier, jti: 'forged-jti', exp: 4_000_000_000 })).toString('base64url');
    const forged = `Bearer ${Buffer.from('{"alg":"none","kid":"mykey"}').toString('base64url')}.${forgedClaims}.`;
    for (const headers of [{ authorization: forged }, { Authorization: forged, 'X-Other': 'a' }]) {
      const answer = await httpRequest(`${verifier}/whoami`, { proxy: signer, headers });
      expect(answer.status).toBe(200);
      expect(answer.body).toMatch(/^Hello from the web service\. You are jwtproxy \(token for http:\/\/127\.0\.0\.1:\d+, jti [A-Za-z0-9+/]{32}\)\.\n$/);
      expect(answer.body).not.toContain('admin');
    }
    // Two Authorization headers of the client's, one of them Basic: still only the signer's arrives.
    const raw = await rawExchange(
      signer,
      `GET ${verifier}/twice HTTP/1.1\r\nHost: 127.0.0.1:${verifierPort}\r\nAuthorization: ${forged}\r\nAuthorization: Basic YWRtaW46YWRtaW4=\r\nConnection: close\r\n\r\n`,
    );
    expect(responseStatuses(raw)).toEqual([200]);
    expect(raw).toContain('You are jwtproxy');
  });
});

describe('slow and silent clients', () => {
  it('500 slowloris and 300 silent connections under a 1,024 fd limit: closed after read_header_timeout, fds back to baseline, a request then passes', async () => {
    const service = await echo();
    // The signer runs with the open-file limit the attacker met (ulimit -n 1024).
    const command = ['/bin/sh', '-c', `ulimit -n 1024 && exec "${process.execPath}" "${cliMain}" "$@"`, 'jwtproxy'];
    const { cli, signer } = await startSigner(['read_header_timeout: 2s'], [], command);
    const pid = cli.child.pid!;
    expect((await httpRequest(`${service.url}/before`, { proxy: signer })).status).toBe(200);
    const baseline = openFds(pid);

    const { port } = new URL(signer);
    const attackers: net.Socket[] = [];
    for (let i = 0; i < 800; i++) {
      const socket = net.connect({ host: '127.0.0.1', port: Number(port) });
      socket.on('error', () => undefined);
      socket.resume();
      if (i < 500) socket.write(`GET ${service.url}/slow HTTP/1.1\r\nHost: 127.0.0.1:${service.port}\r\nX-Slow: `);
      attackers.push(socket);
    }
    const drip = setInterval(() => {
      for (const socket of attackers.slice(0, 500)) if (!socket.destroyed) socket.write('a');
    }, 500);
    cleanups.push(async () => {
      clearInterval(drip);
      for (const socket of attackers) socket.destroy();
    });
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    const during = openFds(pid);
    const started = Date.now();
    // 'close' whether or not an 'error' came first: the signer closing one while the drip writes to it resets it (seen on Node 24).
    await Promise.all(attackers.map((socket) => (socket.destroyed ? undefined : new Promise((resolve) => socket.once('close', resolve)))));
    const closedAfter = Date.now() - started + 1_000;
    clearInterval(drip);
    await new Promise((resolve) => setTimeout(resolve, 300));
    const after = openFds(pid);
    console.log(`signer fds: baseline ${baseline}, during the attack ${during}, after ${after}; every attacker closed ${closedAfter} ms after connecting`);
    expect(during).toBeGreaterThan(baseline + 300);
    expect(closedAfter).toBeLessThan(8_000);
    expect(after).toBeLessThanOrEqual(baseline + 2);
    expect((await httpRequest(`${service.url}/after`, { proxy: signer })).status).toBe(200);
    expect(service.seen.map((seen) => seen.url)).toEqual(['/before', '/after']);
  });
});

describe('pipelining', () => {
  it('a valid request pipelined behind a refused one is never forwarded (40 tries, warm pool)', async () => {
    const service = await echo();
    const { signer } = await startSigner();
    expect((await httpRequest(`${service.url}/warm`, { proxy: signer })).status).toBe(200);
    const transfer = `POST ${service.url}/transfer?amount=100 HTTP/1.1\r\nHost: 127.0.0.1:${service.port}\r\nContent-Length: 0\r\n\r\n`;
    const refusals: Array<[string, number]> = [
      ['GET /not-a-proxy-request HTTP/1.1\r\nHost: svc\r\n\r\n', 500],
      [`POST ${service.url}/refused HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 5\r\n\r\nhello`, 400],
    ];
    for (let i = 0; i < 40; i++) {
      const [refused, status] = refusals[i % 2]!;
      expect(responseStatuses(await rawExchange(signer, refused + transfer))).toEqual([status]);
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(service.seen.map((seen) => seen.url)).toEqual(['/warm']);
  });
});

describe('malformed heads', () => {
  it('two Hosts, an empty Host and "Host: a b" are 400; 1,100 header lines are 431 (not a request without its token); none is forwarded', async () => {
    const service = await echo();
    const { signer } = await startSigner();
    for (const hostLines of ['Host: a\r\nHost: b\r\n', 'Host:\r\n', 'Host: a b\r\n']) {
      expect(responseStatuses(await rawExchange(signer, `GET ${service.url}/host HTTP/1.1\r\n${hostLines}\r\n`))).toEqual([400]);
    }
    const filler = Array.from({ length: 1_100 }, (_, i) => `X-${i}: ${i}\r\n`).join('');
    const answer = await rawExchange(signer, `GET ${service.url}/many HTTP/1.1\r\nHost: 127.0.0.1:${service.port}\r\n${filler}\r\n`);
    expect(responseStatuses(answer)).toEqual([431]);
    expect(answer).toMatch(/jwtproxy: bad request: too many header lines$/);
    expect(service.seen).toHaveLength(0);
  });
});

describe('graceful stop', () => {
  it('16 keep-alive clients in a loop through the signer, then SIGTERM: every request it forwarded is answered, none is cut', async () => {
    const service = await echo();
    const { cli, signer } = await startSigner(['shutdown_timeout: 5s']);
    const { hostname, port } = new URL(signer);
    const outcomes = { ok: 0, refusedConnection: 0, reset: 0, other: [] as string[] };
    /** Paths whose request was cut (reset) rather than answered. */
    const cut: string[] = [];
    const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
    cleanups.push(async () => agent.destroy());
    let running = true;
    const get = (path: string): Promise<number> =>
      new Promise((resolve, reject) => {
        http
          .get({ host: hostname, port, path: `${service.url}${path}`, headers: { host: `127.0.0.1:${service.port}` }, agent }, (res) => {
            res.resume();
            res.on('end', () => resolve(res.statusCode ?? 0));
          })
          .on('error', reject);
      });
    const client = async (c: number): Promise<void> => {
      for (let i = 0; running && i < 2_000; i++) {
        try {
          const status = await get(`/${c}/${i}`);
          if (status === 200) outcomes.ok++;
          else outcomes.other.push(String(status));
        } catch (error) {
          const code = (error as NodeJS.ErrnoException).code;
          if (code === 'ECONNREFUSED') {
            outcomes.refusedConnection++;
            return;
          }
          if (code === 'ECONNRESET' || (error as Error).message === 'socket hang up') {
            outcomes.reset++;
            cut.push(`/${c}/${i}`);
          } else outcomes.other.push(code ?? (error as Error).message);
        }
      }
    };
    const clients = Array.from({ length: 16 }, (_, c) => client(c));
    // Under load, not after a fixed time: on a busy machine 700 ms gave as few as 17 answers (Node 20 and 24 alike).
    for (const started = Date.now(); outcomes.ok < 60 && Date.now() - started < 15_000; ) await new Promise((resolve) => setTimeout(resolve, 20));
    const result = await cli.stop('SIGTERM');
    running = false;
    await Promise.all(clients);
    console.log(`signer graceful stop under load: ${JSON.stringify(outcomes)}`);
    expect(result.code).toBe(0);
    expect(outcomes.ok).toBeGreaterThan(50);
    expect(outcomes.other).toEqual([]);
    // No request the signer forwarded was cut. (A request sent on a connection the stop closed
    // after it had stayed idle 250 ms never reached the service; none in a quiet run.)
    const forwarded = new Set(service.seen.map((seen) => seen.url));
    expect(cut.filter((path) => forwarded.has(path))).toEqual([]);
  });
});
