#!/usr/bin/env node
// One command, one run, on loopback: the bare upstream, the verifier alone (pre-minted single-use
// tokens), the signer alone, and signer → verifier → upstream, each under the same wrk load.
// Prints req/s, p50 and p99 for each and its ratio to the bare upstream.
//
// Then the verifier on the Redis nonce store, the HTTPS signer over keep-alive CONNECT tunnels
// (driven by https-client.mjs, as wrk speaks no CONNECT), and the first request to 100 new hosts.
//
// Last, the latency each proxy adds at a fixed request rate (open loop, fixed-rate.mjs): wrk's 32
// busy connections measure throughput, and their latency is mostly queueing at saturation.
//
//   pnpm bench [--duration 5] [--connections 32] [--threads 2] [--rate 500] [--baseline OLD/apps/cli/dist/main.js]
//              [--go /opt/go-jwtproxy/jwtproxy] [--pin]
//              [--only upstream,passthrough,passthrough-rs256,verifier,verifier-logged,signer,signer-es256,chain,verifier-redis,https-signer,https-new-hosts,verifier-2w,signer-2w,latency]
//
// Every proxy line ends with its start-up time (spawn to port open) and RSS idle → after the load.
//
// --pin: each proxy on core 0, and wrk, the upstream and the other clients on core 1 (taskset), so
// that a proxy's req/s is what one core of its own gives. `passthrough` is the least a Node.js
// reverse proxy does (node:http in, undici Pool.stream out, nothing checked): the verifier's req/s
// and p99 beside it are the verifier's own cost per request.
import { spawn, spawnSync } from 'node:child_process';
import { createPrivateKey, generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { RequestSigner, signingKeyFromKeyObject } from '@jwtproxy/core';
import { freeLoopbackPort, makeCa, makeServerCertificate } from '@jwtproxy/testkit';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
/**
 * The command users run (`jwtproxy`, what `npx @jwtproxy/cli` starts): `apps/cli/bin/jwtproxy.js`
 * next to a build's `dist/main.js`, when that checkout has one, else `dist/main.js` itself. The
 * bin file is CommonJS and main.js an ES module stub, whose loader costs 0.3-0.5 MB of idle RSS
 * (issue 19), so start-up and RSS figures are those of the installed command. `--baseline` still
 * takes an older checkout's `apps/cli/dist/main.js`, and its bin file is derived from it the same way.
 */
function userCommand(mainJs) {
  const bin = path.join(path.dirname(path.dirname(mainJs)), 'bin/jwtproxy.js');
  return existsSync(bin) ? bin : mainJs;
}
const currentCli = userCommand(path.join(root, 'apps/cli/dist/main.js'));
/** The CLI the proxy cases run: this build's, or the baseline's while a baseline run is on. */
let cli = currentCli;
const interop = path.join(root, 'fixtures/interop');

// `pnpm bench -- --duration 8` passes the `--` on: skip it.
const argv = process.argv.slice(2);
const { values: args } = parseArgs({
  args: argv[0] === '--' ? argv.slice(1) : argv,
  options: {
    duration: { type: 'string', default: '5' },
    connections: { type: 'string', default: '32' },
    threads: { type: 'string', default: '2' },
    only: { type: 'string' },
    json: { type: 'string' },
    rate: { type: 'string', default: '500' },
    // Another build's CLI (apps/cli/dist/main.js of an older checkout; its bin/jwtproxy.js is what
    // runs when it has one, see userCommand): each proxy case runs on it first, then on this one,
    // back to back, and the table gives both with their ratio.
    baseline: { type: 'string' },
    // The sidecar case's load (signer and verifier in one process): long enough for the heap to
    // settle at the size a saturated sidecar keeps (issue 19 measures RSS after 30 s).
    'sidecar-seconds': { type: 'string', default: '30' },
    // The reference Go jwtproxy binary (quay/jwtproxy built from source): the cases it can run
    // (goCases) run on it too, after this build, in the same run, and a summary compares the two.
    go: { type: 'string' },
    // Proxies on core 0, load and upstream on core 1 (taskset).
    pin: { type: 'boolean', default: false },
    // Rounds: each case (with its baseline and Go runs) runs this many times, the order of the
    // builds alternating round by round, and the table gives each one's median run. On a noisy
    // machine one run moves a ratio by ±20 %; the median of interleaved runs far less.
    repeat: { type: 'string', default: '1' },
  },
});
const duration = Number(args.duration);
const connections = Number(args.connections);
const threads = Number(args.threads);
const rate = Number(args.rate);
const repeat = Math.max(1, Math.trunc(Number(args.repeat)) || 1);

if (spawnSync('wrk', ['--version']).error) {
  console.error('bench: wrk is not installed (apt-get install -y wrk)');
  process.exit(1);
}
if (args.pin && spawnSync('taskset', ['-c', '0', 'true']).status !== 0) {
  console.error('bench: --pin needs taskset (util-linux) and at least 2 cores');
  process.exit(1);
}
/** Under --pin: the proxy under test has core 0 to itself; wrk, the upstream and the clients share core 1. */
const PROXY_CORE = '0';
const LOAD_CORE = '1';
/** `command argv` as spawned, on `core` under --pin (taskset execs it: the pid is the command's). */
function pinned(core, command, argv) {
  return args.pin ? ['taskset', ['-c', core, command, ...argv]] : [command, argv];
}
if (args.go && !existsSync(args.go)) {
  console.error(`bench: --go ${args.go}: no such file`);
  process.exit(1);
}
if (!existsSync(currentCli)) {
  console.error('bench: build first (pnpm build)');
  process.exit(1);
}

const work = mkdtempSync(path.join(os.tmpdir(), 'jwtproxy-bench-'));
const children = new Set();
const cleanup = () => {
  for (const child of children) child.kill('SIGKILL');
  rmSync(work, { recursive: true, force: true });
};
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));

async function waitForPort(port, child, name) {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${name} exited with ${child.exitCode}`);
    const open = await new Promise((resolve) => {
      const socket = net.connect(port, '127.0.0.1', () => (socket.destroy(), resolve(true)));
      socket.on('error', () => resolve(false));
    });
    if (open) return;
    // 5 ms: the start-up figure is this loop's; at 50 ms it read up to 50 ms late.
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`${name} did not listen on ${port}`);
}

/** Resident set size of a process, MB (from /proc; undefined where there is none). */
function rssOf(pid) {
  try {
    const kb = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
    return Number.isFinite(kb) ? kb / 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Proxy processes of the current case: their RSS right after start and after the load. */
let caseProcesses = [];

/** Set while a case runs on the Go jwtproxy: the cases' `node CLI -config …` starts run this binary instead. */
let goBinary;
/** The cases whose configs the Go jwtproxy understands (no Redis, no EC keys, no access-log count). */
const goCases = new Set(['verifier', 'signer', 'chain']);

async function start(name, command, argv, port, { logFile } = {}) {
  // The Go binary takes the same `-config FILE -log-level LEVEL` flags as our CLI.
  const onGo = goBinary !== undefined && command === process.execPath && argv[0] === cli;
  if (onGo) [command, argv] = [goBinary, argv.slice(1)];
  // This build runs one worker thread unless a case asks (`-workers 2`, the *-2w cases): its default,
  // one per core, would make every case a multi-core one under a Node with listen({ reusePort }).
  else if (argv[0] === currentCli && !argv.includes('-workers')) argv = [...argv, '-workers', '1'];
  const started = performance.now();
  const stderrTarget = logFile ? openSync(logFile, 'a') : 'pipe';
  // One scheduler thread for Go when the proxies are pinned to one core (`--pin`, where this bench has it).
  const goEnv = onGo && args.pin && !process.env.GOMAXPROCS ? { GOMAXPROCS: '1' } : {};
  const child = spawn(...pinned(argv[0] === path.join(here, 'upstream.mjs') ? LOAD_CORE : PROXY_CORE, command, argv), { stdio: ['ignore', 'ignore', stderrTarget], env: { ...process.env, UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? '4', ...goEnv } });
  let stderr = '';
  child.stderr?.on('data', (d) => (stderr = (stderr + d).slice(-4000)));
  children.add(child);
  try {
    await waitForPort(port, child, name);
  } catch (error) {
    console.error(stderr);
    throw error;
  }
  const process_ = { name, pid: child.pid, startMs: performance.now() - started, idleRss: undefined, loadedRss: undefined };
  // Idle: once start-up garbage has been collected or not, a moment after it listens.
  await new Promise((resolve) => setTimeout(resolve, 300));
  process_.idleRss = rssOf(child.pid);
  if (onGo || (command === process.execPath && argv[0] !== path.join(here, 'upstream.mjs'))) caseProcesses.push(process_);
  return {
    async stop() {
      process_.loadedRss = rssOf(child.pid);
      child.kill('SIGTERM');
      await new Promise((resolve) => (child.exitCode !== null ? resolve() : child.once('exit', resolve)));
      children.delete(child);
    },
  };
}

function yamlConfig(body) {
  const file = path.join(work, `config-${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(file, body);
  return file;
}

const keyOptions = `key_id: mykey`;
function verifierConfig(port, upstream, audience, nonceStorage = 'type: local', extraTop = '') {
  // Go's jwtproxy starts a signer on :8080 unless the config turns it off.
  const goTop = goBinary ? '  signer_proxy:\n    enabled: false\n' : '';
  return yamlConfig(`jwtproxy:
${goTop}${extraTop}  verifier_proxies:
  - listen_addr: 127.0.0.1:${port}
    verifier:
      upstream: ${upstream}
      audience: ${audience}
      max_ttl: 2h
      key_server:
        type: preshared
        options:
          issuer: jwtproxy
          ${keyOptions}
          public_key_path: ${path.join(interop, 'mykey.pub')}
      nonce_storage:
        ${nonceStorage}
`);
}
function signerConfig(port, tls = '', keyFile = path.join(interop, 'mykey.key')) {
  return yamlConfig(`jwtproxy:
  signer_proxy:
    listen_addr: 127.0.0.1:${port}
${tls}    signer:
      issuer: jwtproxy
      private_key:
        type: preshared
        options:
          ${keyOptions}
          private_key_path: ${keyFile}
`);
}

/** Single-use tokens for the verifier case, minted on the thread pool, cached for reuse within the hour. */
async function mintTokens(audience, count) {
  const file = path.join(os.tmpdir(), `jwtproxy-bench-tokens-${Buffer.from(audience).toString('hex')}-${count}.txt`);
  if (existsSync(file) && Date.now() - statSync(file).mtimeMs < 50 * 60_000) return file;
  const key = signingKeyFromKeyObject('mykey', createPrivateKey(readFileSync(path.join(interop, 'mykey.key'))));
  const signer = new RequestSigner({ issuer: 'jwtproxy', expirationTime: 3600_000, maxSkew: 60_000, nonceLength: 32, keySource: { activeKey: () => key } });
  const tokens = [];
  const started = Date.now();
  while (tokens.length < count) {
    const batch = await Promise.all(Array.from({ length: Math.min(256, count - tokens.length) }, () => signer.sign(audience)));
    tokens.push(...batch);
  }
  writeFileSync(file, tokens.join('\n') + '\n');
  console.error(`bench: minted ${count} tokens in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return file;
}

function parseLatency(text) {
  const match = /^([\d.]+)(us|ms|s)$/.exec(text);
  if (!match) return NaN;
  return Number(match[1]) * { us: 0.001, ms: 1, s: 1000 }[match[2]];
}

function wrk(url, { script, env = {}, seconds = duration } = {}) {
  const argv = [`-t${threads}`, `-c${connections}`, `-d${seconds}s`, '--latency', ...(script ? ['-s', path.join(here, script)] : []), url];
  const result = spawnSync(...pinned(LOAD_CORE, 'wrk', argv), { encoding: 'utf8', env: { ...process.env, THREADS: String(threads), ...env } });
  const out = result.stdout;
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? NaN);
  const p50 = parseLatency(/^\s+50%\s+(\S+)/m.exec(out)?.[1] ?? '');
  const p99 = parseLatency(/^\s+99%\s+(\S+)/m.exec(out)?.[1] ?? '');
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(out)?.[1] ?? 0);
  const errors = /Socket errors:.*/.exec(out)?.[0];
  const total = Number(/(\d+) requests in/.exec(out)?.[1] ?? 0);
  return { rps, p50, p99, non2xx, errors, total };
}

/** Enough single-use tokens for a 1 s warm-up and the measured run, at up to 30,000 req/s. */
const TOKENS_PER_RUN = 30_000 * (duration + 2);

/**
 * wrk with a fresh token per request: 1 s of warm-up (JIT, upstream pool), as the other cases
 * have, on the file's last 30,000 tokens, then the measured run from its first token.
 */
function wrkWithTokens(url, tokens) {
  wrk(url, { script: 'tokens.lua', env: { TOKENS: tokens, OFFSET: String(TOKENS_PER_RUN - 30_000) }, seconds: 1 });
  return wrk(url, { script: 'tokens.lua', env: { TOKENS: tokens } });
}

/** The bench's verifier audience: the tokens minted for it are shared by every verifier case. */
const VERIFIER_AUDIENCE = 'http://verifier.bench';

/**
 * A verifier case: `startProxy(port)` starts the process under test, which is loaded with single-use
 * tokens; `after(result)` may add to the result while the process still runs.
 */
async function underTokens(startProxy, after = (result) => result) {
  const port = await freeLoopbackPort();
  const tokens = await mintTokens(VERIFIER_AUDIENCE, TOKENS_PER_RUN);
  const proxy = await startProxy(port);
  try {
    return after(wrkWithTokens(`http://127.0.0.1:${port}/`, tokens));
  } finally {
    await proxy.stop();
  }
}

/** A signer case: `startProxy(port)` starts it; absolute-form requests to the upstream go through it. */
async function signing(startProxy) {
  const port = await freeLoopbackPort();
  const proxy = await startProxy(port);
  try {
    wrk(`http://127.0.0.1:${port}/`, { script: 'absolute.lua', env: { TARGET: `${upstreamUrl}/` }, seconds: 1 });
    return wrk(`http://127.0.0.1:${port}/`, { script: 'absolute.lua', env: { TARGET: `${upstreamUrl}/` } });
  } finally {
    await proxy.stop();
  }
}

const upstreamPort = await freeLoopbackPort();
const upstreamUrl = `http://127.0.0.1:${upstreamPort}`;
await start('upstream', process.execPath, [path.join(here, 'upstream.mjs'), String(upstreamPort)], upstreamPort);

const cases = [
  {
    name: 'upstream',
    label: 'bare upstream',
    async run() {
      wrk(`${upstreamUrl}/`, { seconds: 1 });
      return wrk(`${upstreamUrl}/`);
    },
  },
  {
    name: 'passthrough',
    label: 'bare pass-through (undici Pool.stream)',
    // Not this build's: runs once, also with --baseline.
    ownProcess: true,
    // The verifier case's requests (a token in Authorization), passed on unread.
    run: () => underTokens((port) => start('passthrough', process.execPath, [path.join(here, 'passthrough.mjs'), String(port), upstreamUrl], port)),
  },
  {
    name: 'passthrough-rs256',
    label: 'pass-through + RS256 verify, nothing else',
    ownProcess: true,
    // The floor under any verifier here: the pass-through plus the token's signature check alone.
    run: () => underTokens((port) => start('passthrough', process.execPath, [path.join(here, 'passthrough.mjs'), String(port), upstreamUrl, path.join(interop, 'mykey.pub')], port)),
  },
  {
    name: 'verifier',
    label: 'verifier (RS256, local nonces)',
    run: () => underTokens((port) => start('verifier', process.execPath, [cli, '-config', verifierConfig(port, upstreamUrl, VERIFIER_AUDIENCE), '-log-level', 'warn'], port)),
  },
  {
    name: 'verifier-logged',
    label: 'verifier, access log (+ metrics)',
    async run() {
      // One access line per request at info, to a file as a sidecar's log collector reads it;
      // with an admin listener (metrics) where this build has one.
      const adminPort = await freeLoopbackPort();
      const admin = cli === currentCli && existsSync(path.join(root, 'packages/admin/dist/index.js')) ? `  admin:\n    listen_addr: 127.0.0.1:${adminPort}\n` : '';
      const logFile = path.join(work, `access-${Date.now()}.log`);
      return underTokens(
        (port) => start('verifier', process.execPath, [cli, '-config', verifierConfig(port, upstreamUrl, VERIFIER_AUDIENCE, 'type: local', admin), '-log-level', 'info'], port, { logFile }),
        (result) => {
          const lines = readFileSync(logFile, 'utf8').split('\n').filter((line) => line.includes('msg="access"')).length;
          return { ...result, note: `${lines} access lines${admin ? ', metrics on' : ''}` };
        },
      );
    },
  },
  {
    name: 'signer',
    label: 'signer (RS256)',
    run: () => signing((port) => start('signer', process.execPath, [cli, '-config', signerConfig(port), '-log-level', 'warn'], port)),
  },
  {
    name: 'signer-es256',
    label: 'signer (ES256, EC P-256 key)',
    async run() {
      const keyFile = path.join(work, 'ec-p256.key');
      const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      writeFileSync(keyFile, privateKey.export({ type: 'sec1', format: 'pem' }));
      return signing((port) => start('signer', process.execPath, [cli, '-config', signerConfig(port, '', keyFile), '-log-level', 'warn'], port));
    },
  },
  {
    name: 'chain',
    label: 'signer → verifier → upstream',
    async run() {
      const [signerPort, verifierPort] = [await freeLoopbackPort(), await freeLoopbackPort()];
      const target = `http://127.0.0.1:${verifierPort}`;
      const verifier = await start('verifier', process.execPath, [cli, '-config', verifierConfig(verifierPort, upstreamUrl, target), '-log-level', 'warn'], verifierPort);
      const signer = await start('signer', process.execPath, [cli, '-config', signerConfig(signerPort), '-log-level', 'warn'], signerPort);
      try {
        wrk(`http://127.0.0.1:${signerPort}/`, { script: 'absolute.lua', env: { TARGET: `${target}/` }, seconds: 1 });
        return wrk(`http://127.0.0.1:${signerPort}/`, { script: 'absolute.lua', env: { TARGET: `${target}/` } });
      } finally {
        await signer.stop();
        await verifier.stop();
      }
    },
  },
];

// The sidecar shape (the seed's example, Eclipse Che's jwtproxy): one process runs the signer and
// the verifier, preshared keys; the load goes signer → verifier (same process) → upstream for
// --sidecar-seconds. Its start-up and RSS are compared with issue 19's targets and Go's figures below.
const sidecarSeconds = Number(args['sidecar-seconds']);
function sidecarConfig(signerPort, verifierPort, upstream) {
  return yamlConfig(`jwtproxy:
  signer_proxy:
    listen_addr: 127.0.0.1:${signerPort}
    signer:
      issuer: jwtproxy
      private_key:
        type: preshared
        options:
          ${keyOptions}
          private_key_path: ${path.join(interop, 'mykey.key')}
  verifier_proxies:
  - listen_addr: 127.0.0.1:${verifierPort}
    verifier:
      upstream: ${upstream}
      audience: http://127.0.0.1:${verifierPort}
      key_server:
        type: preshared
        options:
          issuer: jwtproxy
          ${keyOptions}
          public_key_path: ${path.join(interop, 'mykey.pub')}
`);
}
cases.push({
  name: 'sidecar',
  label: 'sidecar: signer + verifier, one process',
  async run() {
    const [signerPort, verifierPort] = [await freeLoopbackPort(), await freeLoopbackPort()];
    const target = `http://127.0.0.1:${verifierPort}/`;
    // Listening means both ports: the verifier's is opened last.
    const proxy = await start('sidecar', process.execPath, [cli, '-config', sidecarConfig(signerPort, verifierPort, upstreamUrl), '-log-level', 'warn'], verifierPort);
    try {
      wrk(`http://127.0.0.1:${signerPort}/`, { script: 'absolute.lua', env: { TARGET: target }, seconds: 1 });
      return { ...wrk(`http://127.0.0.1:${signerPort}/`, { script: 'absolute.lua', env: { TARGET: target }, seconds: sidecarSeconds }), note: `${sidecarSeconds} s load` };
    } finally {
      await proxy.stop();
    }
  },
});
goCases.add('sidecar');

// HTTPS: a CA for the signer and an upstream certificate for 127.0.0.1 … 127.0.0.101.
const newHosts = Array.from({ length: 100 }, (_, i) => `127.0.0.${i + 2}`);
let https;
async function httpsSetup() {
  if (https) return https;
  const ca = makeCa('jwtproxy bench CA');
  const upstreamCert = makeServerCertificate(['127.0.0.1', ...newHosts]);
  const files = {};
  for (const [name, value] of Object.entries({ caKey: ca.key, caCert: ca.cert, key: upstreamCert.key, cert: upstreamCert.cert })) {
    files[name] = path.join(work, `${name}.pem`);
    writeFileSync(files[name], value);
  }
  const port = await freeLoopbackPort();
  await start('https upstream', process.execPath, [path.join(here, 'upstream.mjs'), String(port), files.key, files.cert, '127.0.0.1', ...newHosts], port);
  const tls = `    ca_key_file: ${files.caKey}\n    ca_crt_file: ${files.caCert}\n    trusted_certificates: [${files.cert}]\n`;
  https = { port, files, tls };
  return https;
}

function httpsClient(argv) {
  const result = spawnSync(...pinned(LOAD_CORE, process.execPath, [path.join(here, 'https-client.mjs'), ...argv]), { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`https client failed: ${result.stderr}`);
  return JSON.parse(result.stdout);
}

cases.push(
  {
    name: 'verifier-redis',
    label: 'verifier (RS256, redis nonces)',
    async run() {
      const prefix = `jwtproxy-bench:${process.pid}:${Date.now()}:`;
      const storage = `type: redis\n        options: {url: "redis://127.0.0.1:6379", key_prefix: "${prefix}"}`;
      try {
        return await underTokens((port) => start('verifier', process.execPath, [cli, '-config', verifierConfig(port, upstreamUrl, VERIFIER_AUDIENCE, storage), '-log-level', 'warn'], port));
      } finally {
        spawnSync('sh', ['-c', `redis-cli -h 127.0.0.1 --scan --pattern '${prefix}*' | xargs -r -n 1000 redis-cli -h 127.0.0.1 unlink >/dev/null`]);
      }
    },
  },
  {
    name: 'https-signer',
    label: 'HTTPS signer (CONNECT, RS256)',
    async run() {
      const { port: upstreamTlsPort, files, tls } = await httpsSetup();
      const port = await freeLoopbackPort();
      const proxy = await start('signer', process.execPath, [cli, '-config', signerConfig(port, tls), '-log-level', 'warn'], port);
      try {
        const r = httpsClient(['--proxy', `http://127.0.0.1:${port}`, '--ca', files.caCert, '--target', `https://127.0.0.1:${upstreamTlsPort}/`, '--connections', String(connections), '--duration', String(duration)]);
        return { ...r, non2xx: r.failed };
      } finally {
        await proxy.stop();
      }
    },
  },
  {
    name: 'https-new-hosts',
    label: 'HTTPS first request, 100 new hosts',
    async run() {
      const { port: upstreamTlsPort, files, tls } = await httpsSetup();
      const port = await freeLoopbackPort();
      const proxy = await start('signer', process.execPath, [cli, '-config', signerConfig(port, tls), '-log-level', 'warn'], port);
      try {
        const r = httpsClient(['--proxy', `http://127.0.0.1:${port}`, '--ca', files.caCert, '--first-hosts', newHosts.join(','), '--port', String(upstreamTlsPort)]);
        return { rps: NaN, p50: r.firstP50, p99: r.firstP99, non2xx: r.failed, total: r.hosts * 2, note: `new host max ${r.firstMax.toFixed(1)} ms; new tunnel to a known host p50 ${r.knownP50.toFixed(2)} ms, p99 ${r.knownP99.toFixed(2)} ms` };
      } finally {
        await proxy.stop();
      }
    },
  },
);

// Two worker threads against one (the cases above), same tokens, same load: the ratio is what a second core buys.
// Needs a Node with listen({ reusePort }) (22.12+): run the bench itself with it, as the proxies run on process.execPath.
/** Starts this build's CLI with `-workers 2` and waits until the second worker listens too (the port opens with the first). */
async function startTwoWorkers(name, config, port) {
  const proxy = await start(name, process.execPath, [cli, '-config', config, '-log-level', 'warn', '-workers', '2'], port);
  await new Promise((resolve) => setTimeout(resolve, 1_500));
  return proxy;
}
cases.push(
  {
    name: 'verifier-2w',
    label: 'verifier (RS256, local nonces), 2 workers',
    run: () => underTokens((port) => startTwoWorkers('verifier', verifierConfig(port, upstreamUrl, VERIFIER_AUDIENCE), port)),
  },
  {
    name: 'signer-2w',
    label: 'signer (RS256), 2 workers',
    run: () => signing((port) => startTwoWorkers('signer', signerConfig(port), port)),
  },
);

const only = args.only ? new Set(args.only.split(',')) : undefined;
console.log(`wrk -t${threads} -c${connections} -d${duration}s on loopback, ${os.cpus().length} cores, node ${process.version}`);
console.log(`this build: ${path.relative(root, currentCli)}`);
if (args.baseline) console.log(`baseline: ${userCommand(path.resolve(args.baseline))} (each proxy case runs on it first, then on this build)`);
const mb = (value) => (value === undefined ? '-' : value.toFixed(0));
const mb1 = (value) => (value === undefined ? '-' : value.toFixed(1));
/** Each run of a case, by `name|which`, in the order they ran. */
const runs = new Map();
async function runCase(c, which) {
  caseProcesses = [];
  const r = await c.run();
  const memory = caseProcesses.map((p) => `${p.name} start ${p.startMs.toFixed(0)} ms, RSS ${mb(p.idleRss)} → ${mb(p.loadedRss)} MB`).join('; ');
  const key = `${c.name}|${which ?? ''}`;
  if (!runs.has(key)) runs.set(key, []);
  runs.get(key).push({ name: c.name, label: which ? `${c.label} [${which}]` : c.label, which, ...r, memory, processes: caseProcesses });
}
/** The run of median req/s (the lower middle one of an even count), with every run's req/s in a note. */
function medianRun(list) {
  if (list.length === 1) return list[0];
  const sorted = [...list].sort((a, b) => (Number.isNaN(a.rps) ? -1 : Number.isNaN(b.rps) ? 1 : a.rps - b.rps));
  const median = sorted[Math.floor((sorted.length - 1) / 2)];
  const all = list.map((r) => (Number.isNaN(r.rps) ? '-' : r.rps.toFixed(0))).join('/');
  return { ...median, note: [`median of ${list.length}: ${all}`, median.note].filter(Boolean).join('; '), allRuns: list };
}
if (repeat > 1) console.log(`each case ${repeat} times, builds in alternating order; the table gives the median run`);
for (const c of cases) {
  if (only && !only.has(c.name) && c.name !== 'upstream') continue;
  const builds = [];
  if (args.baseline && c.name !== 'upstream' && !c.ownProcess && !c.name.endsWith('-2w')) builds.push('baseline', 'this build');
  else builds.push(undefined);
  if (args.go && goCases.has(c.name)) builds.push('go');
  for (let round = 0; round < repeat; round++) {
    // Alternating order, so that a machine slowing down or warming up over the run favours none.
    for (const which of round % 2 === 0 ? builds : [...builds].reverse()) {
      cli = which === 'baseline' ? userCommand(path.resolve(args.baseline)) : currentCli;
      if (which === 'go') goBinary = path.resolve(args.go);
      try {
        await runCase(c, which);
      } finally {
        goBinary = undefined;
        cli = currentCli;
      }
    }
  }
}
const results = [...runs.values()].map(medianRun);
const base = results.find((r) => r.name === 'upstream');
/**
 * This build's req/s over the baseline's: with --repeat, the median of each round's ratio (the two
 * ran back to back, so a round's ratio is free of the machine's drift across the run).
 */
function pairedRatio(r, baselineRun) {
  const ours = r.allRuns ?? [r];
  const theirs = baselineRun.allRuns ?? [baselineRun];
  const ratios = ours.map((o, i) => o.rps / theirs[i].rps).filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  return ratios.length ? ratios[Math.floor((ratios.length - 1) / 2)] : NaN;
}
const pad = (s, n) => String(s).padEnd(n);
console.log(`${pad('case', 48)}${pad('req/s', 10)}${pad('p50 ms', 9)}${pad('p99 ms', 9)}${pad('vs upstream', 13)}${pad('vs baseline', 13)}notes`);
for (const r of results) {
  const ratio = base && r !== base && !Number.isNaN(r.rps) ? `${((r.rps / base.rps) * 100).toFixed(0)} %` : '';
  const baselineRun = r.which === 'this build' ? results.find((o) => o.name === r.name && o.which === 'baseline') : undefined;
  const vsBaseline = baselineRun && !Number.isNaN(r.rps) ? `${pairedRatio(r, baselineRun).toFixed(2)}×` : '';
  const notes = [r.non2xx ? `${r.non2xx} non-2xx of ${r.total}` : '', r.errors ?? '', r.note ?? '', r.memory ?? ''].filter(Boolean).join('; ');
  console.log(`${pad(r.label, 48)}${pad(Number.isNaN(r.rps) ? '-' : r.rps.toFixed(0), 10)}${pad(r.p50.toFixed(2), 9)}${pad(r.p99.toFixed(2), 9)}${pad(ratio, 13)}${pad(vsBaseline, 13)}${notes}`);
}

for (const r of results.filter((o) => o.name.endsWith('-2w'))) {
  const one = results.find((o) => o.name === r.name.slice(0, -3) && (o.which === undefined || o.which === 'this build'));
  if (one) console.log(`${r.name}: 2 workers / 1 worker = ${(r.rps / one.rps).toFixed(2)}× req/s (p99 ${one.p99.toFixed(2)} → ${r.p99.toFixed(2)} ms)`);
}

// The access log and metrics (issue 15: at most 10 % of the verifier's throughput).
const plainVerifier = results.find((r) => r.name === 'verifier' && (r.which === undefined || r.which === 'this build'));
const loggedVerifier = results.find((r) => r.name === 'verifier-logged' && (r.which === undefined || r.which === 'this build'));
if (plainVerifier && loggedVerifier) {
  console.log(`verifier with access log and metrics / without: ${(loggedVerifier.rps / plainVerifier.rps).toFixed(2)}× req/s; p99 ${loggedVerifier.p99.toFixed(2)} vs ${plainVerifier.p99.toFixed(2)} ms`);
}

// The verifier against the bare pass-through, same requests, same run: its own cost per request.
const passthrough = results.find((r) => r.name === 'passthrough');
for (const r of passthrough ? results.filter((o) => o.name === 'verifier' || o.name === 'passthrough-rs256') : []) {
  console.log(
    `${r.label} / pass-through${args.pin ? ' (one core each)' : ''}: ${(r.rps / passthrough.rps).toFixed(2)}× req/s; ` +
      `p99 ${r.p99.toFixed(2)} vs ${passthrough.p99.toFixed(2)} ms (${(r.p99 / passthrough.p99).toFixed(2)}×)`,
  );
}

/** Latency at `rate` req/s through each of: the bare upstream, the verifier, the signer, the chain. */
function fixedRate(url, options = {}) {
  const argv = [path.join(here, 'fixed-rate.mjs'), '--url', url, '--rate', String(rate), '--duration', String(options.seconds ?? duration)];
  if (options.target) argv.push('--target', options.target);
  if (options.tokens) argv.push('--tokens', options.tokens, '--offset', String(options.offset ?? 0));
  const result = spawnSync(...pinned(LOAD_CORE, process.execPath, argv), { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`fixed-rate client failed: ${result.stderr}`);
  return JSON.parse(result.stdout);
}

if (args.go) {
  // Same run, same load: this build against the Go jwtproxy, case by case.
  console.log(`\nthis build vs Go jwtproxy (${args.go})`);
  const each = (p, f) => p.map(f).join(' + ');
  for (const g of results.filter((r) => r.which === 'go')) {
    const ours = results.find((r) => r.name === g.name && (r.which === undefined || r.which === 'this build'));
    if (!ours) continue;
    const startUp = (r) => each(r.processes, (p) => p.startMs.toFixed(0));
    const rss = (r) => each(r.processes, (p) => `${mb(p.idleRss)} → ${mb(p.loadedRss)}`);
    console.log(
      `${pad(ours.label, 48)}req/s ${ours.rps.toFixed(0)} vs ${g.rps.toFixed(0)} (${(ours.rps / g.rps).toFixed(2)}×); ` +
        `p99 ${ours.p99.toFixed(2)} vs ${g.p99.toFixed(2)} ms; start ${startUp(ours)} vs ${startUp(g)} ms; RSS ${rss(ours)} vs ${rss(g)} MB`,
    );
  }
}

const latencies = [];
if (!only || only.has('latency')) {
  const audience = VERIFIER_AUDIENCE;
  const tokens = await mintTokens(audience, 30_000 * (duration + 1));
  const [verifierPort, signerPort, chainVerifierPort] = [await freeLoopbackPort(), await freeLoopbackPort(), await freeLoopbackPort()];
  const chainTarget = `http://127.0.0.1:${chainVerifierPort}`;
  const verifier = await start('verifier', process.execPath, [cli, '-config', verifierConfig(verifierPort, upstreamUrl, audience), '-log-level', 'warn'], verifierPort);
  const chainVerifier = await start('verifier', process.execPath, [cli, '-config', verifierConfig(chainVerifierPort, upstreamUrl, chainTarget), '-log-level', 'warn'], chainVerifierPort);
  const signer = await start('signer', process.execPath, [cli, '-config', signerConfig(signerPort), '-log-level', 'warn'], signerPort);
  try {
    const runs = [
      ['bare upstream', (o) => fixedRate(`${upstreamUrl}/`, o)],
      // Tokens are single-use: the measured run starts after those the warm-up sent.
      ['verifier (RS256, local nonces)', (o) => fixedRate(`http://127.0.0.1:${verifierPort}/`, { ...o, tokens, offset: o.seconds ? 0 : rate })],
      ['signer (RS256)', (o) => fixedRate(`http://127.0.0.1:${signerPort}/`, { ...o, target: `${upstreamUrl}/` })],
      ['signer → verifier → upstream', (o) => fixedRate(`http://127.0.0.1:${signerPort}/`, { ...o, target: `${chainTarget}/` })],
    ];
    for (const [label, run] of runs) {
      run({ seconds: 1 }); // warms the processes up (JIT, connection pools), as wrk's 1 s run does above
      latencies.push({ label, ...run({}) });
    }
  } finally {
    await signer.stop();
    await chainVerifier.stop();
    await verifier.stop();
  }
  const bare = latencies[0];
  console.log(`\nlatency at a fixed ${rate} req/s for ${duration} s (open loop: from when each request was due)`);
  console.log(`${pad('case', 34)}${pad('p50 ms', 9)}${pad('p99 ms', 9)}${pad('max ms', 9)}${pad('added p50', 11)}${pad('added p99', 11)}notes`);
  for (const r of latencies) {
    const added = (value, baseline) => (r === bare ? '' : (value - baseline).toFixed(2));
    const notes = r.failed ? `${r.failed} failed of ${r.sent}` : '';
    console.log(`${pad(r.label, 34)}${pad(r.p50.toFixed(2), 9)}${pad(r.p99.toFixed(2), 9)}${pad(r.max.toFixed(1), 9)}${pad(added(r.p50, bare.p50), 11)}${pad(added(r.p99, bare.p99), 11)}${notes}`);
  }
}
// Start-up and memory, case by case, beside issue 19's targets for the sidecar shape and the Go
// jwtproxy's figures from the issue (same machine, when --go did not measure them in this run).
const GO_REFERENCE = { startMs: 14, idleRss: 7.5, loadedRss: 15 };
const SIDECAR_TARGETS = { startMs: 150, idleRss: 50, loadedRss: 96 };
const withProcesses = results.filter((r) => r.processes?.length);
if (withProcesses.length) {
  console.log(`\nstart-up (spawn to port open) and RSS (idle 300 ms after listening → right after the load), MB`);
  console.log(`${pad('case', 56)}${pad('start ms', 10)}${pad('RSS idle', 10)}${pad('RSS loaded', 12)}`);
  for (const r of withProcesses) {
    for (const p of r.processes) console.log(`${pad(`${r.label}: ${p.name}`, 56)}${pad(p.startMs.toFixed(0), 10)}${pad(mb1(p.idleRss), 10)}${pad(mb1(p.loadedRss), 12)}`);
  }
  console.log(`${pad('Go jwtproxy (issue 19 reference, signer + verifier)', 56)}${pad(GO_REFERENCE.startMs, 10)}${pad(GO_REFERENCE.idleRss, 10)}${pad(GO_REFERENCE.loadedRss, 12)}`);
  for (const r of withProcesses.filter((o) => o.name === 'sidecar' && o.which !== 'baseline' && o.which !== 'go')) {
    const p = r.processes[0];
    const mark = (value, target) => (value === undefined ? '?' : value <= target ? 'within' : 'OVER');
    console.log(
      `sidecar targets: start ≤ ${SIDECAR_TARGETS.startMs} ms: ${mark(p.startMs, SIDECAR_TARGETS.startMs)}; RSS idle ≤ ${SIDECAR_TARGETS.idleRss} MB: ${mark(p.idleRss, SIDECAR_TARGETS.idleRss)}; ` +
        `RSS after ${sidecarSeconds} s ≤ ${SIDECAR_TARGETS.loadedRss} MB: ${mark(p.loadedRss, SIDECAR_TARGETS.loadedRss)} (node ${process.version})`,
    );
  }
}

if (args.json) writeFileSync(args.json, JSON.stringify({ duration, connections, threads, rate, results, latencies }, null, 2));
cleanup();
process.exit(0);
