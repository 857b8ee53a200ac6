/**
 * Issue 15, logs: through the real `jwtproxy`, one access line per request (a pass, a refusal
 * with the facts that explain it, an upstream failure, a tunnel), in the text (logfmt) and JSON
 * formats, from the flag or the file, off when `log.access_log` is false, and never a token.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { freeLoopbackPort, startEchoService } from '@jwtproxy/testkit';
import { e2eConfig, httpRequest, mintToken, parseLogfmt, startCli, tempDir, type RunningCli } from './helpers.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

interface Chain {
  cli: RunningCli;
  signer: string;
  verifier: string;
  deadVerifier: string;
}

/** A signer, a verifier in front of an echo service and one in front of nothing, with a `log:` block. */
async function startChain(args: string[] = [], logBlock: string[] = []): Promise<Chain> {
  const files = await tempDir();
  cleanups.push(() => files.cleanup());
  const service = await startEchoService();
  cleanups.push(() => service.close());
  const [port, deadPort, nothingPort] = [await freeLoopbackPort(), await freeLoopbackPort(), await freeLoopbackPort()];
  const verifier = `http://127.0.0.1:${port}`;
  const deadVerifier = `http://127.0.0.1:${deadPort}`;
  const config = await files.write(
    'logs.yaml',
    [
      'jwtproxy:',
      ...logBlock.map((line) => `  ${line}`),
      ...e2eConfig.signer(),
      '  verifier_proxies:',
      ...e2eConfig.verifier({ listenAddr: `127.0.0.1:${port}`, upstream: service.url, audience: verifier }),
      ...e2eConfig.verifier({ listenAddr: `127.0.0.1:${deadPort}`, upstream: `http://127.0.0.1:${nothingPort}`, audience: deadVerifier }),
      '',
    ].join('\n'),
  );
  const cli = await startCli(['-config', config, ...args]);
  cleanups.push(() => cli.stop());
  return { cli, signer: cli.servers.signer_proxy!, verifier, deadVerifier };
}

/** Sends a pass through the signer, a refusal (a token for another audience), a request to a dead upstream; returns the tokens used. */
async function traffic(chain: Chain): Promise<string[]> {
  expect((await httpRequest(`${chain.verifier}/pass?secret=1`, { proxy: chain.signer })).status).toBe(200);
  const wrongAudience = await mintToken('http://billing.internal:9000');
  expect((await httpRequest(`${chain.verifier}/refused`, { headers: { authorization: `Bearer ${wrongAudience}` } })).status).toBe(403);
  expect((await httpRequest(`${chain.verifier}/anonymous`)).status).toBe(403);
  const toDead = await mintToken(chain.deadVerifier);
  expect((await httpRequest(`${chain.deadVerifier}/down`, { headers: { authorization: `Bearer ${toDead}` } })).status).toBe(502);
  return [wrongAudience, toDead];
}

/** Waits until `count` access lines are in the log (a line may be written just after the answer). */
async function accessLines(cli: RunningCli, count: number, parse: (line: string) => Record<string, unknown>): Promise<Array<Record<string, unknown>>> {
  for (let i = 0; i < 50; i++) {
    const lines = cli.stderr().split('\n').filter(Boolean).map(parse).filter((line) => line.msg === 'access');
    if (lines.length >= count) return lines;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`fewer than ${count} access lines:\n${cli.stderr()}`);
}

function expectTheStory(lines: Array<Record<string, unknown>>, chain: Chain): void {
  const verifierPort = new URL(chain.verifier).port;
  const pass = lines.find((line) => line.path === '/pass' && line.component === 'verifier_proxies[0]')!;
  expect(pass).toMatchObject({ method: 'GET', verdict: 'passed', iss: 'jwtproxy' });
  expect(String(pass.status)).toBe('200');
  expect(String(pass.upstream_status)).toBe('200');
  expect(Number(pass.duration_ms)).toBeGreaterThan(0);
  expect(String(pass.kid)).toBeTruthy();
  const signed = lines.find((line) => line.path === '/pass' && line.component === 'signer_proxy')!;
  expect(signed).toMatchObject({ verdict: 'passed', aud: `http://127.0.0.1:${verifierPort}` });

  const refused = lines.find((line) => line.path === '/refused')!;
  expect(refused).toMatchObject({ verdict: 'refused', reason: 'ERR_INVALID_CLAIM', expected_aud: `http://127.0.0.1:${verifierPort}`, received_aud: 'http://billing.internal:9000' });
  expect(String(refused.status)).toBe('403');
  const anonymous = lines.find((line) => line.path === '/anonymous')!;
  expect(anonymous).toMatchObject({ verdict: 'refused', reason: 'ERR_TOKEN_PARSE', problem: 'no Authorization header' });

  const down = lines.find((line) => line.path === '/down')!;
  expect(down).toMatchObject({ verdict: 'failed', reason: 'ERR_UPSTREAM', component: 'verifier_proxies[1]' });
  expect(String(down.status)).toBe('502');
}

function expectNoToken(stderr: string, tokens: string[]): void {
  for (const token of tokens) {
    expect(stderr).not.toContain(token);
    // Not even its signature or payload alone.
    for (const part of token.split('.').slice(1)) expect(stderr).not.toContain(part);
  }
  expect(stderr).not.toMatch(/Bearer /);
}

describe('access log', () => {
  it('text (logfmt) by default: a pass at both proxies, a refusal with its facts, an upstream failure; no token anywhere', async () => {
    const chain = await startChain();
    const tokens = await traffic(chain);
    const lines = await accessLines(chain.cli, 5, (line) => parseLogfmt(line));
    expectTheStory(lines, chain);
    expect(lines.every((line) => !String(line.path).includes('?'))).toBe(true);
    expectNoToken(chain.cli.stderr(), tokens);
  });

  it('JSON with -log-format json: every line is a JSON object, the same story', async () => {
    const chain = await startChain(['-log-format', 'json']);
    const tokens = await traffic(chain);
    const lines = await accessLines(chain.cli, 5, (line) => JSON.parse(line) as Record<string, unknown>);
    expectTheStory(lines, chain);
    for (const line of chain.cli.stderr().split('\n').filter(Boolean)) expect(() => JSON.parse(line)).not.toThrow();
    expectNoToken(chain.cli.stderr(), tokens);
  });

  it('JSON from the file (log.format), and no access lines with log.access_log: false', async () => {
    const chain = await startChain([], ['log:', '  format: json', '  access_log: false']);
    await traffic(chain);
    await new Promise((resolve) => setTimeout(resolve, 200));
    const lines = chain.cli.stderr().split('\n').filter(Boolean).map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(lines.some((line) => line.msg === 'ready')).toBe(true);
    expect(lines.filter((line) => line.msg === 'access')).toEqual([]);
  });
});

describe('access log at a graceful stop', () => {
  it('a burst of passes and refusals answered just before SIGTERM: every request has its access line', async () => {
    const chain = await startChain();
    const passes = 40;
    const refusals = 300;
    const answers = await Promise.all([
      ...Array.from({ length: passes }, (_, i) => httpRequest(`${chain.verifier}/burst/pass/${i}`, { proxy: chain.signer })),
      ...Array.from({ length: refusals }, (_, i) => httpRequest(`${chain.verifier}/burst/refused/${i}`)),
    ]);
    expect(answers.filter((answer) => answer.status === 200)).toHaveLength(passes);
    expect(answers.filter((answer) => answer.status === 403)).toHaveLength(refusals);
    // At once: lines of the last requests may still be waiting to be written.
    const result = await chain.cli.stop('SIGTERM');
    expect(result.code).toBe(0);
    const lines = result.stderr.split('\n').filter(Boolean).map((line) => parseLogfmt(line));
    const burst = lines.filter((line) => line.msg === 'access' && line.path?.startsWith('/burst/'));
    const verifierPaths = new Set(burst.filter((line) => line.component === 'verifier_proxies[0]').map((line) => line.path));
    const signerPaths = new Set(burst.filter((line) => line.component === 'signer_proxy').map((line) => line.path));
    expect(verifierPaths.size).toBe(passes + refusals);
    expect(signerPaths.size).toBe(passes);
    expect(burst).toHaveLength(passes * 2 + refusals);
    expect(lines.at(-1)?.msg).toBe('stopped');
  });
});
