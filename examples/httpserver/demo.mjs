#!/usr/bin/env node
// Runs the example: the web service on :8080, then `jwtproxy -config config.yaml` (signer on
// :3128, verifier on :8081), then shows a signed request passing and an unsigned one refused.
// Stays up for you to try with curl until Ctrl-C; `--once` stops after the two requests.
import { spawn } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startWebService } from './server.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const cli = path.resolve(here, '../../apps/cli/dist/main.js');
const once = process.argv.includes('--once');

function get(options) {
  return new Promise((resolve, reject) => {
    http
      .get({ agent: false, ...options }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode, body }));
      })
      .on('error', reject);
  });
}

async function waitForPort(port) {
  for (let i = 0; i < 200; i++) {
    const open = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => (s.destroy(), resolve(true)));
      s.on('error', () => resolve(false));
    });
    if (open) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listens on ${port}`);
}

const web = await startWebService(8080);
const proxy = spawn(process.execPath, [cli, '-config', path.join(here, 'config.yaml')], { cwd: here, stdio: ['ignore', 'inherit', 'inherit'] });
const stop = async (code) => {
  proxy.kill('SIGTERM');
  await new Promise((r) => (proxy.exitCode !== null ? r() : proxy.once('exit', r)));
  web.close();
  process.exit(code);
};
process.on('SIGINT', () => stop(0));
proxy.once('exit', (code) => {
  console.error(`jwtproxy exited (${code})`);
  process.exit(1);
});
await Promise.all([waitForPort(3128), waitForPort(8081)]);

// Through the signer: an absolute-form request to the verifier's address.
const signed = await get({ host: '127.0.0.1', port: 3128, path: 'http://localhost:8081/', headers: { host: 'localhost:8081' } });
console.log(`\nsigned request   (curl --proxy http://127.0.0.1:3128 http://localhost:8081/): ${signed.status}\n  ${signed.body.trim()}`);
const unsigned = await get({ host: '127.0.0.1', port: 8081, path: '/', headers: { host: 'localhost:8081' } });
console.log(`unsigned request (curl http://localhost:8081/): ${unsigned.status}\n  ${unsigned.body.trim()}\n`);
const ok = signed.status === 200 && unsigned.status === 403;
if (once) {
  proxy.removeAllListeners('exit');
  await stop(ok ? 0 : 1);
} else {
  console.log('Try them yourself; Ctrl-C stops the example.');
}
