#!/usr/bin/env node
// `pnpm demo`: the web service on 127.0.0.1:8080, then `jwtproxy -config config.yaml` (signer on
// 127.0.0.1:3128, verifier on 127.0.0.1:8081), then a signed request through the signer and an
// unsigned one straight to the verifier. Everything keeps running for you to try with curl until
// Ctrl-C, which stops it cleanly (exit 0). `pnpm demo --once` stops after the two requests,
// exit 0 if the signed one passed and the unsigned one was refused.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startWebService } from './server.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const cli = path.resolve(here, '../../apps/cli/bin/jwtproxy.js');
const once = process.argv.includes('--once');
const WEB_PORT = 8080;
const SIGNER_PORT = 3128;
const VERIFIER_PORT = 8081;

/** One line on stderr and exit 1: what went wrong and what to do, never a stack trace. */
function fail(message) {
  process.stderr.write(`demo: ${message}\n`);
  process.exit(1);
}

function get(options) {
  return new Promise((resolve, reject) => {
    http
      .get({ agent: false, timeout: 10_000, ...options }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode, body }));
      })
      .on('timeout', function () {
        this.destroy(new Error('no answer within 10 s'));
      })
      .on('error', reject);
  });
}

function portInUse(port) {
  return new Promise((resolve) => {
    const probe = net.createServer();
    probe.once('error', () => resolve(true));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(false)));
  });
}

if (!existsSync(path.resolve(here, '../../apps/cli/dist/main.js'))) fail('jwtproxy is not built yet: run pnpm build first');
for (const [port, what] of [
  [WEB_PORT, 'the web service'],
  [SIGNER_PORT, 'the signer'],
  [VERIFIER_PORT, 'the verifier'],
]) {
  if (await portInUse(port)) fail(`port ${port} (${what}) is in use by another program: stop it, then run the demo again`);
}

let web;
try {
  web = await startWebService(WEB_PORT);
} catch (error) {
  fail(`cannot start the web service on 127.0.0.1:${WEB_PORT}: ${error.message}`);
}

// jwtproxy in a process group of its own: a Ctrl-C reaches only this script (and pnpm, which
// passes it on once more), and jwtproxy gets exactly one SIGTERM from here.
const proxy = spawn(process.execPath, [cli, '-config', path.join(here, 'config.yaml'), '-log-level', 'warn'], {
  cwd: here,
  stdio: ['ignore', 'inherit', 'pipe'],
  detached: true,
});
let proxyLog = '';
let ready = false;
// jwtproxy's start lines (a warning that the demo's signer has no CA) are kept back, and shown only
// if it fails; what it logs once the demo has shown its two answers is passed on. Not from the
// moment its ports answer: with worker threads, one worker serves while another may still log its
// start.
let passLogOn = false;
proxy.stderr.setEncoding('utf8').on('data', (chunk) => {
  if (passLogOn) process.stderr.write(chunk);
  else proxyLog += chunk;
});

let stopping = false;
async function stop(code) {
  if (stopping) return;
  stopping = true;
  if (proxy.exitCode === null && proxy.signalCode === null) {
    const exited = new Promise((resolve) => proxy.once('exit', resolve));
    proxy.kill('SIGTERM');
    await exited;
  }
  const closed = new Promise((resolve) => web.close(resolve));
  web.closeAllConnections();
  await closed;
  process.exit(code);
}

proxy.once('exit', (code) => {
  if (stopping) return;
  // jwtproxy could not start (its one-line error says why) or stopped by itself.
  process.stderr.write(proxyLog);
  if (ready) process.stderr.write(`demo: jwtproxy stopped unexpectedly (exit ${code})\n`);
  web.close();
  process.exit(1);
});
process.on('SIGINT', () => stop(0));
process.on('SIGTERM', () => stop(0));

async function waitForPort(port) {
  for (let i = 0; i < 200; i++) {
    if (await portInUse(port)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  proxy.kill('SIGTERM');
  fail(`jwtproxy did not start listening on ${port} within 10 s`);
}
await Promise.all([waitForPort(SIGNER_PORT), waitForPort(VERIFIER_PORT)]);
ready = true;

// Through the signer: an absolute-form request to the verifier's address, as curl --proxy sends it.
const signed = await get({ host: '127.0.0.1', port: SIGNER_PORT, path: `http://localhost:${VERIFIER_PORT}/`, headers: { host: `localhost:${VERIFIER_PORT}` } });
const unsigned = await get({ host: '127.0.0.1', port: VERIFIER_PORT, path: '/', headers: { host: `localhost:${VERIFIER_PORT}` } });
console.log(`
signed request   (curl --proxy http://127.0.0.1:${SIGNER_PORT} http://localhost:${VERIFIER_PORT}/): ${signed.status}
  ${signed.body.trim()}
unsigned request (curl http://localhost:${VERIFIER_PORT}/): ${unsigned.status}
  ${unsigned.body.trim()}
`);
const ok = signed.status === 200 && unsigned.status === 403;
if (!ok) process.stderr.write('demo: expected 200 for the signed request and 403 for the unsigned one\n');
if (once) await stop(ok ? 0 : 1);
passLogOn = true;

console.log(`Still running:
  web service  http://127.0.0.1:${WEB_PORT}/   (examples/httpserver/server.mjs)
  signer       http://127.0.0.1:${SIGNER_PORT}   (forward proxy: signs every request sent through it)
  verifier     http://127.0.0.1:${VERIFIER_PORT}   (reverse proxy in front of the web service)
Try it:
  curl --proxy http://127.0.0.1:${SIGNER_PORT} http://localhost:${VERIFIER_PORT}/
Press Ctrl-C to stop all three.`);
