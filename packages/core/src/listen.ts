import { once } from 'node:events';
import { chmod, lstat, unlink } from 'node:fs/promises';
import net from 'node:net';
import tls from 'node:tls';
import { ConfigError } from './errors.js';

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

/** Removes a socket file left by a process that died; refuses to touch a live socket or any other file. */
async function removeStaleSocket(path: string): Promise<void> {
  let stats;
  try {
    stats = await lstat(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new Error(`cannot listen on unix:${path}: ${(error as Error).message}`, { cause: error });
  }
  if (!stats.isSocket()) throw new Error(`cannot listen on unix:${path}: the path exists and is not a socket`);
  if (await socketIsLive(path)) throw new Error(`cannot listen on unix:${path}: another process is listening on it`);
  await unlink(path);
}

function describeListenError(error: NodeJS.ErrnoException): string {
  switch (error.code) {
    case 'EADDRINUSE':
      return 'address already in use';
    case 'EACCES':
      return 'permission denied';
    case 'EADDRNOTAVAIL':
      return 'address not available on this machine';
    default:
      return error.message;
  }
}

/**
 * Binds `server` (an http, https or net server) and resolves with the address clients use:
 * `http://host:port` (`https://` for a TLS server) with the bound port, or `unix:/path`.
 * Rejects with an Error naming the address (`cannot listen on 127.0.0.1:8080: address already in
 * use`) whose `cause` is the system error, so that callers can tell a bind failure by its code.
 */
export async function listenOn(server: net.Server, address: ListenAddress, options: ListenOptions = {}): Promise<string> {
  if (address.kind === 'unix') await removeStaleSocket(address.path);
  // once() rejects when 'error' comes first (port in use, no permission) and removes its listener either way.
  const listening = once(server, 'listening');
  if (address.kind === 'unix') server.listen(address.path);
  else server.listen(address.port, address.host);
  try {
    await listening;
  } catch (error) {
    throw new Error(`cannot listen on ${formatListenAddress(address)}: ${describeListenError(error as NodeJS.ErrnoException)}`, { cause: error });
  }
  if (address.kind === 'unix') {
    const mode = options.socketPermission;
    if (mode !== undefined) {
      try {
        await chmod(address.path, mode);
      } catch (error) {
        server.close();
        throw new Error(`cannot set mode ${mode.toString(8)} on unix:${address.path}: ${(error as Error).message}`, { cause: error });
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
  try {
    const stats = await lstat(address.path);
    if (!stats.isSocket() || (await socketIsLive(address.path))) return;
    await unlink(address.path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
}
