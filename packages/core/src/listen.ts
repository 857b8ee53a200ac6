import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { ConfigError, JwtProxyError, type ErrorCode } from './errors.js';

/**
 * The listener every jwtproxy server shares (signer, verifier, key registry), with the Go
 * tool's rules: `host:port`, `[v6]:port`, `:port` (every interface) or `unix:/path`; a stale
 * socket file is replaced at start, `socket_permission` is applied, our socket is removed at stop.
 */

/** A listen address as the Go configuration writes it. */
export type ListenAddress = { kind: 'tcp'; host: string | undefined; port: number } | { kind: 'unix'; path: string };

/**
 * Parses `host:port`, `[v6]:port`, `:port` or `unix:/path/to.sock`. Throws a ConfigError naming
 * the value: at `key` when given (`signer_proxy.listen_addr: "x" has no valid port`), else as
 * `listen address "x" has no valid port`.
 */
export function parseListenAddress(listenAddr: string, key?: string): ListenAddress {
  const fail = (problem: string): never => {
    throw new ConfigError(key ?? '', `${key ? '' : 'listen address '}${JSON.stringify(listenAddr)} ${problem}`);
  };
  if (listenAddr.startsWith('unix:')) {
    const path = listenAddr.slice('unix:'.length);
    if (!path) fail('names no socket path (write unix:/path/to.sock)');
    return { kind: 'unix', path };
  }
  const colon = listenAddr.lastIndexOf(':');
  if (colon < 0) fail('is not host:port, :port or unix:/path');
  let host = listenAddr.slice(0, colon);
  const portText = listenAddr.slice(colon + 1);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  // As Go's net.SplitHostPort: `::1:8080` is ambiguous.
  else if (host.includes(':')) fail('has an IPv6 address without brackets (write it as [::1]:8080)');
  const port = Number(portText);
  if (!/^\d{1,5}$/.test(portText) || port > 65535) fail('has no valid port (0 to 65535)');
  return { kind: 'tcp', host: host || undefined, port };
}

/** The address as a user writes it, for error messages: `127.0.0.1:8080`, `:8080`, `[::1]:8080`, `unix:/path`. */
export function formatListenAddress(address: ListenAddress): string {
  if (address.kind === 'unix') return `unix:${address.path}`;
  const host = address.host === undefined ? '' : address.host.includes(':') ? `[${address.host}]` : address.host;
  return `${host}:${address.port}`;
}

export interface ListenOptions {
  /** Mode given to a unix socket once bound (e.g. 0o755, the Go default); left as created when absent. */
  socketPermission?: number;
  /**
   * TCP only: bind with SO_REUSEPORT (Node >= 22.12), so that the worker threads of one process
   * each listen on the same port and the kernel spreads new connections among them.
   */
  reusePort?: boolean;
}

/** True when something accepts connections on the unix socket at `path`. */
async function socketIsLive(path: string): Promise<boolean> {
  const probe = net.connect({ path });
  try {
    await once(probe, 'connect');
    return true;
  } catch {
    return false;
  } finally {
    probe.destroy();
  }
}

/**
 * A server could not listen: `address` as the configuration writes it (`127.0.0.1:8080`,
 * `unix:/run/x.sock`), the system's error code when there is one (`EADDRINUSE`), and the problem
 * in words. The message is `cannot listen on <address>: <problem>`; the system error is the cause.
 */
export class ListenError extends JwtProxyError {
  static override code: ErrorCode = 'ERR_LISTEN';
  override code: ErrorCode = 'ERR_LISTEN';
  readonly address: string;
  readonly systemCode: string | undefined;
  readonly problem: string;
  constructor(address: string, problem: string, options: { systemCode?: string | undefined; cause?: unknown } = {}) {
    super(`cannot listen on ${address}: ${problem}`, 'cause' in options ? { cause: options.cause } : undefined);
    this.address = address;
    this.systemCode = options.systemCode;
    this.problem = problem;
  }

  /** A ListenError for a system error met while binding `address`. */
  static fromSystemError(address: string, error: NodeJS.ErrnoException): ListenError {
    return new ListenError(address, listenProblem(error.code, error.message), { systemCode: error.code, cause: error });
  }
}

/** The problem in words for a system error code met while binding. */
export function listenProblem(systemCode: string | undefined, fallback = 'cannot bind'): string {
  switch (systemCode) {
    case 'EADDRINUSE':
      return 'address already in use';
    case 'EACCES':
      return 'permission denied';
    case 'EADDRNOTAVAIL':
      return 'address not available on this machine';
    default:
      return fallback;
  }
}

/**
 * `node:fs/promises`, loaded only for a unix socket address: loading it at start costs ~0.7 MB of
 * idle RSS (issue 19), and TCP listeners, the usual case, need no file operation. Through
 * `fs.promises`, a getter that loads it on first use, read at the call: the command's bundle
 * compiles its files with vm.Script, which cannot run `import()` on Node 20.
 */
function fsPromises(): typeof fs.promises {
  return fs.promises;
}

/** Removes a socket file left by a process that died; refuses to touch a live socket or any other file. */
async function removeStaleSocket(path: string): Promise<void> {
  const address = `unix:${path}`;
  const { lstat, unlink } = fsPromises();
  let stats;
  try {
    stats = await lstat(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw ListenError.fromSystemError(address, error as NodeJS.ErrnoException);
  }
  if (!stats.isSocket()) throw new ListenError(address, 'the path exists and is not a socket');
  if (await socketIsLive(path)) throw new ListenError(address, 'another process is listening on it');
  await unlink(path);
}

/**
 * Binds `server` (an http, https or net server) and resolves with the address clients use:
 * `http://host:port` (`https://` for a TLS server) with the bound port, or `unix:/path`.
 * Rejects with a ListenError (`cannot listen on 127.0.0.1:8080: address already in use`) carrying
 * the address and the system error code as fields, the system error as its cause.
 */
export async function listenOn(server: net.Server, address: ListenAddress, options: ListenOptions = {}): Promise<string> {
  if (address.kind === 'unix') await removeStaleSocket(address.path);
  // once() rejects when 'error' comes first (port in use, no permission) and removes its listener either way.
  const listening = once(server, 'listening');
  if (address.kind === 'unix') server.listen(address.path);
  else if (options.reusePort) server.listen({ port: address.port, host: address.host, reusePort: true } as net.ListenOptions);
  else server.listen(address.port, address.host);
  try {
    await listening;
  } catch (error) {
    throw ListenError.fromSystemError(formatListenAddress(address), error as NodeJS.ErrnoException);
  }
  if (address.kind === 'unix') {
    const mode = options.socketPermission;
    if (mode !== undefined) {
      try {
        await fsPromises().chmod(address.path, mode);
      } catch (error) {
        server.close();
        const systemError = error as NodeJS.ErrnoException;
        throw new ListenError(`unix:${address.path}`, `cannot set mode ${mode.toString(8)}: ${systemError.message}`, { systemCode: systemError.code, cause: error });
      }
    }
    return `unix:${address.path}`;
  }
  const bound = server.address() as net.AddressInfo;
  const host = bound.family === 'IPv6' || bound.address.includes(':') ? `[${bound.address}]` : bound.address;
  return `${server instanceof tls.Server ? 'https' : 'http'}://${host}:${bound.port}`;
}

/**
 * Removes our unix socket file once the server has closed (Node usually has already; a missing
 * file is fine). Leaves the path alone when it is no longer a socket, or when another process
 * listens on it: it has been replaced since we bound it. Nothing to do for a TCP address.
 */
export async function removeSocketFile(address: ListenAddress): Promise<void> {
  if (address.kind !== 'unix') return;
  const { lstat, unlink } = fsPromises();
  try {
    const stats = await lstat(address.path);
    if (!stats.isSocket() || (await socketIsLive(address.path))) return;
    await unlink(address.path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
}
