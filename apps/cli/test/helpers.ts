/**
 * Running the real `jwtproxy` command in tests: `node apps/cli/dist/main.js …` as a child process.
 * Build the CLI first (`pnpm --filter @jwtproxy/cli build`; turbo's test task does).
 *
 * The CLI prints, after everything started, one logfmt line per server and then `ready`:
 *   level=info msg="listening" server=signer_proxy address=http://127.0.0.1:41234
 *   level=info msg="listening" server="verifier_proxies[0]" address=http://127.0.0.1:41235
 *   level=info msg="ready" servers=2
 * startCli waits for `ready` and hands back the addresses by server name.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Readable } from 'node:stream';
import { RequestSigner } from '@jwtproxy/core';
import { PresharedPrivateKeySource } from '@jwtproxy/key-sources';
import { interop } from '@jwtproxy/testkit';

export const cliMain = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../dist/main.js');

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface CliOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Kill the process and reject after this long (default 20 s). */
  timeoutMs?: number;
  /** The command to run instead of `node apps/cli/dist/main.js`, e.g. `['npx', '--no-install', 'jwtproxy']` in a folder where the packed packages were installed. */
  command?: readonly string[];
  /**
   * Start the command in a process group of its own and send signals to the whole group, as a
   * terminal's Ctrl-C does. For `npx`, which exits on SIGTERM without passing it on to the
   * command it runs (the command would be left running, holding the test's pipes).
   */
  processGroup?: boolean;
  /**
   * Run with the command's own worker count (`auto`: one per core on Node 22.12+). Else a run
   * with `-config` and no `-workers` gets `-workers 1`: the tests that are not about workers see
   * one thread on every machine and Node version, as they were written for.
   */
  defaultWorkers?: boolean;
}

/** Splits one logfmt line (`time=… level=info msg="x y" key=value`) into its fields. */
export function parseLogfmt(line: string): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const match of line.matchAll(/([\w.-]+)=("(?:[^"\\]|\\.)*"|\S*)/g)) {
    const [, key = '', raw = ''] = match;
    fields[key] = raw.startsWith('"') ? (JSON.parse(raw) as string) : raw;
  }
  return fields;
}

/** Whether `args` start the proxies from a file without saying how many workers. */
function leavesWorkersToDefault(args: readonly string[]): boolean {
  return args[0] !== 'keyregistry' && args.some((arg) => /^--?config(=|$)/.test(arg)) && !args.some((arg) => /^--?workers(=|$)/.test(arg));
}

function spawnCli(args: readonly string[], options: CliOptions): ChildProcessWithoutNullStreams {
  const [file = process.execPath, ...leading] = options.command ?? [process.execPath, cliMain];
  const argv = !options.defaultWorkers && leavesWorkersToDefault(args) ? [...args, '-workers', '1'] : args;
  return spawn(file, [...leading, ...argv], {
    cwd: options.cwd ?? process.cwd(),
    env: { ...process.env, ...options.env },
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: options.processGroup ?? false,
  });
}

/** Runs the CLI to its end (for --help, mistakes, "No proxy is enabled"). */
export function runCli(args: readonly string[], options: CliOptions = {}): Promise<CliResult> {
  const child = spawnCli(args, options);
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`jwtproxy ${args.join(' ')} did not exit within ${options.timeoutMs ?? 20_000} ms; stderr:\n${stderr}`));
    }, options.timeoutMs ?? 20_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

export interface RunningCli {
  child: ChildProcessWithoutNullStreams;
  /** Address of each server by its name in the configuration: `signer_proxy`, `verifier_proxies[0]`, `keyregistry`. */
  servers: Record<string, string>;
  /** Everything written to stderr (the log) so far. */
  stderr(): string;
  /** The log lines so far, parsed. */
  logLines(): Array<Record<string, string>>;
  /** Waits until a log line matches (already-written lines count). */
  waitForLog(pattern: RegExp, timeoutMs?: number): Promise<string>;
  /** Sends `signal` (default SIGTERM) and waits for the exit. */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<CliResult>;
}

/** Starts the CLI and waits for its `ready` line; rejects with its stderr if it exits first. */
export async function startCli(args: readonly string[], options: CliOptions = {}): Promise<RunningCli> {
  const child = spawnCli(args, options);
  let stdout = '';
  let stderr = '';
  const waiters = new Set<() => void>();
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
    for (const wake of waiters) wake();
  });
  const exited = new Promise<CliResult>((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
  let hasExited = false;
  void exited.then(() => {
    hasExited = true;
    for (const wake of waiters) wake();
  });

  const waitForLog = (pattern: RegExp, timeoutMs = options.timeoutMs ?? 20_000): Promise<string> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        const line = stderr.split('\n').find((l) => pattern.test(l));
        if (line !== undefined) return finish(() => resolve(line));
        if (hasExited) return finish(() => reject(new Error(`jwtproxy exited before logging ${pattern}; stderr:\n${stderr}`)));
      };
      const timer = setTimeout(() => finish(() => reject(new Error(`no log line ${pattern} within ${timeoutMs} ms; stderr:\n${stderr}`))), timeoutMs);
      const finish = (settle: () => void): void => {
        clearTimeout(timer);
        waiters.delete(check);
        settle();
      };
      waiters.add(check);
      check();
    });

  // Lines are logfmt, or JSON with -log-format json.
  const logLines = (): Array<Record<string, string>> =>
    stderr
      .split('\n')
      .filter(Boolean)
      .map((line) => (line.startsWith('{') ? (JSON.parse(line) as Record<string, string>) : parseLogfmt(line)));
  const signalCli = (signal: NodeJS.Signals): void => {
    if (!options.processGroup || child.pid === undefined) {
      child.kill(signal);
      return;
    }
    try {
      process.kill(-child.pid, signal);
    } catch {
      // The group is gone already.
    }
  };
  const stop = async (signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 20_000): Promise<CliResult> => {
    if (!hasExited) signalCli(signal);
    const timer = setTimeout(() => hasExited || signalCli('SIGKILL'), timeoutMs);
    try {
      return await exited;
    } finally {
      clearTimeout(timer);
    }
  };

  try {
    await waitForLog(/msg="ready"|"msg":"ready"/);
  } catch (error) {
    await stop('SIGKILL');
    throw error;
  }
  const servers: Record<string, string> = {};
  for (const fields of logLines()) if (fields.msg === 'listening' && fields.server && fields.address) servers[fields.server] = fields.address;
  return { child, servers, stderr: () => stderr, logLines, waitForLog, stop };
}

/** A temporary directory for configuration files; `cleanup` removes it. */
export async function tempDir(): Promise<{ dir: string; write(name: string, text: string): Promise<string>; cleanup(): Promise<void> }> {
  const dir = await mkdtemp(path.join(tmpdir(), 'jwtproxy-cli-'));
  return {
    dir,
    async write(name, text) {
      const file = path.join(dir, name);
      await writeFile(file, text);
      return file;
    },
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}

export interface HttpAnswer {
  status: number;
  body: string;
}

/**
 * GET `url`, straight or through the forward proxy (the signer) at `proxy` (`http://host:port`),
 * as `curl --proxy` does: the request line carries the absolute URL. Rejects on a connection error.
 */
export async function httpGet(url: string, options: { proxy?: string; agent?: http.Agent; headers?: http.OutgoingHttpHeaders } = {}): Promise<HttpAnswer> {
  const { status, body } = await httpRequest(url, options);
  return { status, body };
}

/**
 * YAML blocks for the key registry flow run as separate `jwtproxy -config` processes: a registry,
 * a signer with autogenerated keys, a verifier reading keys from the registry. Each returns the
 * lines of one whole configuration file.
 */
export const keyRegistryConfig = {
  registry(options: { port: number; storagePath: string; adminTokenFile?: string; autoApprove?: string[] }): string {
    return [
      'jwtproxy:',
      '  keyregistry:',
      `    listen_addr: 127.0.0.1:${options.port}`,
      `    public_url: http://127.0.0.1:${options.port}`,
      `    storage: {type: file, options: {path: ${JSON.stringify(options.storagePath)}}}`,
      ...(options.adminTokenFile ? [`    admin_token_file: ${JSON.stringify(options.adminTokenFile)}`] : []),
      ...(options.autoApprove ? [`    auto_approve: ${JSON.stringify(options.autoApprove)}`] : []),
      '',
    ].join('\n');
  },
  signer(options: { issuer: string; registry: string; keyFolder: string; rotateEvery?: string; port?: number }): string {
    return [
      'jwtproxy:',
      '  signer_proxy:',
      `    listen_addr: 127.0.0.1:${options.port ?? 0}`,
      '    signer:',
      `      issuer: ${options.issuer}`,
      '      private_key:',
      '        type: autogenerated',
      '        options:',
      ...(options.rotateEvery ? [`          rotate_every: ${options.rotateEvery}`] : []),
      `          key_folder: ${JSON.stringify(options.keyFolder)}`,
      '          key_server:',
      '            type: keyregistry',
      `            options: {registry: ${options.registry}}`,
      '',
    ].join('\n');
  },
  verifier(options: { port: number; upstream: string; registry: string }): string {
    return [
      'jwtproxy:',
      '  verifier_proxies:',
      `  - listen_addr: 127.0.0.1:${options.port}`,
      '    verifier:',
      `      upstream: ${options.upstream}`,
      `      audience: http://127.0.0.1:${options.port}`,
      '      key_server:',
      '        type: keyregistry',
      `        options: {registry: ${options.registry}}`,
      '',
    ].join('\n');
  },
};

/** The `kid` in the header of the JWT of an `Authorization: Bearer …` value (not verified: for counting keys in tests). */
export function kidOf(authorization: string | undefined): string | undefined {
  const header = /^Bearer ([\w-]+)\./.exec(authorization ?? '')?.[1];
  return header ? (JSON.parse(Buffer.from(header, 'base64url').toString('utf8')) as { kid?: string }).kid : undefined;
}

/**
 * YAML for the end-to-end tests: a signer and verifiers with the Go interop key pair (preshared),
 * as the Go examples/httpserver configures them. `jwtproxyConfig` joins the blocks into one file.
 */
export const e2eConfig = {
  signer(options: { listenAddr?: string; shutdownTimeout?: string; extra?: string[] } = {}): string[] {
    return [
      '  signer_proxy:',
      `    listen_addr: ${options.listenAddr ?? '127.0.0.1:0'}`,
      ...(options.shutdownTimeout ? [`    shutdown_timeout: ${options.shutdownTimeout}`] : []),
      ...(options.extra ?? []).map((line) => `    ${line}`),
      '    signer:',
      `      issuer: ${interop.issuer}`,
      '      private_key:',
      '        type: preshared',
      `        options: {key_id: ${interop.keyId}, private_key_path: ${JSON.stringify(interop.privateKeyPath)}}`,
    ];
  },
  /** One entry of `verifier_proxies`; `nonceStorage` is a YAML flow mapping such as `{type: none}`. */
  verifier(options: {
    listenAddr?: string;
    upstream: string;
    audience: string;
    shutdownTimeout?: string;
    tls?: { keyFile: string; certFile: string };
    nonceStorage?: string;
  }): string[] {
    return [
      `  - listen_addr: ${options.listenAddr ?? '127.0.0.1:0'}`,
      ...(options.shutdownTimeout ? [`    shutdown_timeout: ${options.shutdownTimeout}`] : []),
      ...(options.tls ? [`    key_file: ${JSON.stringify(options.tls.keyFile)}`, `    crt_file: ${JSON.stringify(options.tls.certFile)}`] : []),
      '    verifier:',
      `      upstream: ${options.upstream}`,
      `      audience: ${options.audience}`,
      '      key_server:',
      '        type: preshared',
      `        options: {issuer: ${interop.issuer}, key_id: ${interop.keyId}, public_key_path: ${JSON.stringify(interop.publicKeyPath)}}`,
      ...(options.nonceStorage ? [`      nonce_storage: ${options.nonceStorage}`] : []),
    ];
  },
};

/** A whole configuration file from a signer block and verifier entries (either may be absent). */
export function jwtproxyConfig(parts: { signer?: string[]; verifiers?: string[][] }): string {
  return [
    'jwtproxy:',
    ...(parts.signer ?? []),
    ...(parts.verifiers?.length ? ['  verifier_proxies:', ...parts.verifiers.flat()] : []),
    '',
  ].join('\n');
}

/** A token signed in the test with the interop key, as a signer would make it for `audience`. */
export async function mintToken(audience: string, options: { expirationMs?: number } = {}): Promise<string> {
  const signer = new RequestSigner({
    issuer: interop.issuer,
    expirationTime: options.expirationMs ?? 60_000,
    maxSkew: 10_000,
    nonceLength: 32,
    keySource: PresharedPrivateKeySource.fromFile(interop.keyId, interop.privateKeyPath),
  });
  return signer.sign(audience);
}

/** The claims of a JWT (not verified: for assertions on what a proxy sent). */
export function claimsOf(authorization: string | undefined): Record<string, unknown> {
  const payload = /^Bearer [\w-]+\.([\w-]+)\./.exec(authorization ?? '')?.[1];
  if (!payload) throw new Error(`not a Bearer JWT: ${authorization}`);
  return JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as Record<string, unknown>;
}

export interface FullAnswer extends HttpAnswer {
  headers: http.IncomingHttpHeaders;
}

/**
 * One HTTP request with the usual knobs of these tests: straight to `url`, through the signer
 * (`proxy`, absolute-form request line), or over a unix socket (`socketPath`); a body as a
 * string, a buffer or a stream. Resolves with the status, headers and body text.
 */
export function httpRequest(
  url: string,
  options: {
    method?: string;
    proxy?: string;
    socketPath?: string;
    headers?: http.OutgoingHttpHeaders;
    body?: string | Buffer | Readable;
    agent?: http.Agent | false;
  } = {},
): Promise<FullAnswer> {
  const target = new URL(url);
  const via = options.proxy ? new URL(options.proxy) : target;
  return new Promise((resolve, reject) => {
    const request = http.request(
      {
        method: options.method ?? 'GET',
        ...(options.socketPath ? { socketPath: options.socketPath } : { host: via.hostname, port: via.port }),
        path: options.proxy ? target.href : `${target.pathname}${target.search}`,
        headers: { host: target.host, ...options.headers },
        agent: options.agent ?? false,
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (body += chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
        res.on('error', reject);
      },
    );
    request.on('error', reject);
    const body = options.body;
    if (body === undefined || typeof body === 'string' || Buffer.isBuffer(body)) request.end(body);
    else body.on('error', (error) => request.destroy(error)).pipe(request);
  });
}
