/**
 * Issue 3, end to end with the real `jwtproxy` process: SIGTERM while a slow request is on its way
 * through the signer and the verifier. The request finishes within `shutdown_timeout`, new
 * connections are refused meanwhile, and the process exits 0; what outlives the timeout is cut.
 */
import http from 'node:http';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { freeLoopbackPort, listenOnLoopback, type RunningServer } from '@jwtproxy/testkit';
import { e2eConfig, httpRequest, jwtproxyConfig, startCli, tempDir, type CliResult, type RunningCli } from './helpers.js';

type SlowService = RunningServer & { arrived: Promise<void> };

/** An upstream that answers each request `delayMs` after it arrived (never, with Infinity). */
async function slowService(delayMs: number): Promise<SlowService> {
  let arrive: () => void = () => {};
  const arrived = new Promise<void>((resolve) => (arrive = resolve));
  const server = await listenOnLoopback(
    http.createServer((req, res) => {
      req.resume();
      arrive();
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('started ');
      if (Number.isFinite(delayMs)) setTimeout(() => res.end('done'), delayMs);
    }),
  );
  return { ...server, arrived };
}

/** Resolves with the error code of a TCP connection attempt ('connected' if it was accepted). */
function tryConnect(address: string): Promise<string> {
  const { hostname, port } = new URL(address);
  return new Promise((resolve) => {
    const socket = net.connect(Number(port), hostname);
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
  });
}

/** Tries the addresses until every connection is refused or `withinMs` passed; the last outcome per address. */
async function refusedSoon(addresses: string[], withinMs: number): Promise<string[]> {
  const deadline = Date.now() + withinMs;
  for (;;) {
    const outcomes = await Promise.all(addresses.map(tryConnect));
    if (outcomes.every((o) => o === 'ECONNREFUSED') || Date.now() > deadline) return outcomes;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

let files: Awaited<ReturnType<typeof tempDir>> | undefined;
let cli: RunningCli | undefined;
let service: SlowService | undefined;
afterEach(async () => {
  await cli?.stop('SIGKILL');
  await service?.close();
  await files?.cleanup();
  cli = service = files = undefined;
});

/** Signer and verifier in one process, both with `shutdownTimeout`, in front of `upstream`. */
async function startChain(upstream: string, shutdownTimeout: string): Promise<{ cli: RunningCli; signer: string; verifier: string }> {
  files = await tempDir();
  const port = await freeLoopbackPort();
  const verifier = `http://127.0.0.1:${port}`;
  const config = await files.write(
    'shutdown.yaml',
    jwtproxyConfig({
      signer: e2eConfig.signer({ shutdownTimeout }),
      verifiers: [e2eConfig.verifier({ listenAddr: `127.0.0.1:${port}`, upstream, audience: verifier, shutdownTimeout })],
    }),
  );
  cli = await startCli(['-config', config]);
  return { cli, signer: cli.servers.signer_proxy!, verifier };
}

describe('SIGTERM with a request in flight', () => {
  it('the request finishes, new connections are refused meanwhile, and the process exits 0 within shutdown_timeout', async () => {
    service = await slowService(1_500);
    const chain = await startChain(service.url, '5s');
    const inFlight = httpRequest(`${chain.verifier}/slow`, { proxy: chain.signer });
    await service.arrived;

    const signalledAt = Date.now();
    const exit: Promise<CliResult> = chain.cli.stop('SIGTERM');
    let answered = false;
    inFlight.then(
      () => (answered = true),
      () => (answered = true),
    );
    await chain.cli.waitForLog(/msg="shutting down" signal=SIGTERM/);
    // While the request is still running, neither proxy accepts a new connection. (The kernel may
    // still complete a handshake in the microseconds between the log line and the listeners'
    // close, hence the short wait for the first refusal.)
    const refused = await refusedSoon([chain.signer, chain.verifier], 1_000);
    const refusedAfterMs = Date.now() - signalledAt;
    expect(refused).toEqual(['ECONNREFUSED', 'ECONNREFUSED']);
    expect(answered).toBe(false);

    expect(await inFlight).toMatchObject({ status: 200, body: 'started done' });
    const answeredAfterMs = Date.now() - signalledAt;
    const result = await exit;
    const exitedAfterMs = Date.now() - signalledAt;
    console.log(`SIGTERM → new connections refused after ${refusedAfterMs} ms, request answered after ${answeredAfterMs} ms, exit after ${exitedAfterMs} ms (shutdown_timeout 5s)`);
    expect(result.code).toBe(0);
    expect(result.stderr).toMatch(/msg="stopped"\n$/);
    expect(answeredAfterMs).toBeGreaterThanOrEqual(1_000);
    // It exits as soon as the request is done, not at the end of shutdown_timeout.
    expect(exitedAfterMs).toBeLessThan(4_000);
  });

  it('a request that outlives shutdown_timeout is cut at the deadline, and the process still exits 0', async () => {
    service = await slowService(Infinity);
    const chain = await startChain(service.url, '1s');
    const inFlight = httpRequest(`${chain.verifier}/forever`, { proxy: chain.signer }).then(
      (answer) => answer,
      (error: Error) => error,
    );
    await service.arrived;

    const signalledAt = Date.now();
    const result = await chain.cli.stop('SIGTERM');
    const exitedAfterMs = Date.now() - signalledAt;
    console.log(`SIGTERM with a request that never ends → exit after ${exitedAfterMs} ms (shutdown_timeout 1s)`);
    expect(result.code).toBe(0);
    expect(exitedAfterMs).toBeGreaterThanOrEqual(900);
    expect(exitedAfterMs).toBeLessThan(3_000);
    // The client sees a cut connection, never a response that looks complete.
    expect(await inFlight).toBeInstanceOf(Error);
  });
});
