import { spawn, spawnSync } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '../../..');
const demo = path.join(here, '../demo.mjs');
/** Without the npm_config_* settings that a pnpm/turbo parent passes down. */
const cleanEnv = Object.fromEntries(Object.entries(process.env).filter(([key]) => !/^npm_config_/i.test(key)));

function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1', () => (socket.destroy(), resolve(false)));
    socket.on('error', () => resolve(true));
  });
}

function get(port: number, target: string, host: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: target, headers: { host }, agent: false }, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on('error', reject);
  });
}

it('the README demo (--once) shows a signed request passing and an unsigned one refused', () => {
  const run = spawnSync(process.execPath, [demo, '--once'], { encoding: 'utf8', timeout: 30_000 });
  expect(run.stdout).toMatch(/signed request .*: 200\n  Hello from the web service\. You are jwtproxy \(token for http:\/\/localhost:8081/);
  expect(run.stdout).toContain("unsigned request (curl http://localhost:8081/): 403\n  jwtproxy: unable to verify request: Could not parse JWT");
  expect(run.stderr).toBe('');
  expect(run.status).toBe(0);
});

it('pnpm demo: both answers, then what keeps running, a curl line and how to stop; Ctrl-C stops everything with exit 0 and no pnpm error line', async () => {
  // Through pnpm, as the README runs it, in a process group of its own: Ctrl-C in a terminal sends
  // SIGINT to the whole foreground group (pnpm, the demo), and pnpm passes it on once more.
  const child = spawn('pnpm', ['demo'], { cwd: repoRoot, env: cleanEnv, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let output = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  try {
    const deadline = Date.now() + 30_000;
    while (!output.includes('Press Ctrl-C')) {
      if (child.exitCode !== null) throw new Error(`pnpm demo exited (${child.exitCode}):\n${output}`);
      if (Date.now() > deadline) throw new Error(`pnpm demo did not get ready within 30 s:\n${output}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(output).toMatch(/signed request .*: 200\n/);
    expect(output).toMatch(/unsigned request .*: 403\n/);
    expect(output).toContain('Still running:\n  web service  http://127.0.0.1:8080/');
    expect(output).toContain('  signer       http://127.0.0.1:3128');
    expect(output).toContain('  verifier     http://127.0.0.1:8081');
    expect(output).toContain('curl --proxy http://127.0.0.1:3128 http://localhost:8081/\nPress Ctrl-C to stop all three.');
    // What the curl line does, while the demo runs.
    expect((await get(3128, 'http://localhost:8081/', 'localhost:8081')).status).toBe(200);
  } finally {
    process.kill(-child.pid!, 'SIGINT');
    const timer = setTimeout(() => process.kill(-child.pid!, 'SIGKILL'), 20_000);
    expect(await exited, output).toBe(0);
    clearTimeout(timer);
  }
  expect(output).not.toMatch(/ELIFECYCLE|ERR_|Error|error/);
  for (const port of [8080, 3128, 8081]) expect(await refused(port), `port ${port} is free again`).toBe(true);
}, 60_000);

it('a busy port is one line on stderr and exit 1', async () => {
  const squatter = net.createServer();
  await new Promise<void>((resolve) => squatter.listen(8080, '127.0.0.1', resolve));
  try {
    const run = spawnSync(process.execPath, [demo, '--once'], { encoding: 'utf8', timeout: 30_000 });
    expect(run.stderr).toBe('demo: port 8080 (the web service) is in use by another program: stop it, then run the demo again\n');
    expect(run.stdout).toBe('');
    expect(run.status).toBe(1);
  } finally {
    await new Promise((resolve) => squatter.close(resolve));
  }
});

/** `pnpm -w jwtproxy -config config.yaml` from this example's folder, in a process group of its own, until `ready`. */
async function startDevShortcut(): Promise<{ child: ReturnType<typeof spawn>; output: () => string; exited: Promise<number | null> }> {
  const child = spawn('pnpm', ['-w', 'jwtproxy', '-config', 'config.yaml'], { cwd: path.join(here, '..'), env: cleanEnv, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let output = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const deadline = Date.now() + 30_000;
  while (!output.includes('msg="ready"')) {
    if (child.exitCode !== null) throw new Error(`pnpm jwtproxy exited (${child.exitCode}):\n${output}`);
    if (Date.now() > deadline) {
      process.kill(-child.pid!, 'SIGKILL');
      throw new Error(`pnpm jwtproxy did not get ready within 30 s:\n${output}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return { child, output: () => output, exited };
}

async function jwtproxyStopped(output: () => string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!output().includes('msg="stopped"') && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
  for (const port of [3128, 8081]) {
    for (let i = 0; i < 100 && !(await refused(port)); i++) await new Promise((resolve) => setTimeout(resolve, 50));
    expect(await refused(port), `port ${port} is free again`).toBe(true);
  }
}

it('pnpm jwtproxy (the development shortcut) reads a relative -config from the folder it runs in; Ctrl-C stops it once, gracefully, exit 0', async () => {
  const dev = await startDevShortcut();
  process.kill(-dev.child.pid!, 'SIGINT'); // the terminal's Ctrl-C: pnpm, the launcher and (not) jwtproxy
  expect(await dev.exited, dev.output()).toBe(0);
  await jwtproxyStopped(dev.output);
  expect(dev.output().match(/msg="shutting down"/g), 'one signal reached jwtproxy').toHaveLength(1);
  expect(dev.output()).not.toMatch(/second signal|ELIFECYCLE/);
}, 60_000);

it('pnpm jwtproxy: kill of the pnpm process alone stops jwtproxy too (it is not left running on its ports)', async () => {
  const dev = await startDevShortcut();
  process.kill(dev.child.pid!, 'SIGTERM');
  await jwtproxyStopped(dev.output);
  expect(dev.output()).toMatch(/msg="shutting down" signal=SIGTERM[\s\S]*msg="stopped"/);
  const timer = setTimeout(() => process.kill(-dev.child.pid!, 'SIGKILL'), 10_000);
  await dev.exited;
  clearTimeout(timer);
}, 60_000);
