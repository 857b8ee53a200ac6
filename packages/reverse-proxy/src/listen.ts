import { once } from 'node:events';
import { chmod, lstat, readFile, unlink } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';

/** A listen address as in the Go configuration: `host:port`, `:port` (all interfaces) or `unix:/path`. */
export type ListenAddress = { kind: 'tcp'; host: string | undefined; port: number } | { kind: 'unix'; path: string };

export function parseListenAddress(listenAddr: string): ListenAddress {
  if (listenAddr.startsWith('unix:')) {
    const path = listenAddr.slice('unix:'.length);
    if (!path) throw new Error(`listen address "${listenAddr}": a unix listener needs a socket path (unix:/path/to.sock)`);
    return { kind: 'unix', path };
  }
  const colon = listenAddr.lastIndexOf(':');
  const host = colon < 0 ? '' : listenAddr.slice(0, colon).replace(/^\[(.*)\]$/, '$1');
  const portText = listenAddr.slice(colon + 1);
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : NaN;
  if (colon < 0 || !(port >= 0 && port <= 65535)) {
    throw new Error(`listen address "${listenAddr}" is not host:port, :port or unix:/path`);
  }
  return { kind: 'tcp', host: host || undefined, port };
}

export interface ListenerOptions {
  listenAddr: string;
  socketPermission: number;
  tls: { keyFile: string; certFile: string } | undefined;
}

async function readNamedFile(what: string, file: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (error) {
    throw new Error(`cannot read ${what} ${file}: ${(error as Error).message}`, { cause: error });
  }
}

/**
 * The HTTP(S) server, not yet listening. Node's five-minute `requestTimeout` is turned off
 * (a large upload or a long stream may take longer, as with the Go proxy); headers must still
 * arrive within `headersTimeout`.
 */
export async function createServer(options: ListenerOptions, address: ListenAddress): Promise<http.Server> {
  const serverOptions: http.ServerOptions = { requestTimeout: 0 };
  if (!options.tls) return http.createServer(serverOptions);
  if (address.kind === 'unix') {
    throw new Error(`TLS (key_file/crt_file) cannot be used on the unix socket listener ${options.listenAddr}`);
  }
  const key = await readNamedFile('TLS key file', options.tls.keyFile);
  const cert = await readNamedFile('TLS certificate file', options.tls.certFile);
  try {
    return https.createServer({ ...serverOptions, key, cert });
  } catch (error) {
    throw new Error(
      `cannot use TLS key ${options.tls.keyFile} with certificate ${options.tls.certFile}: ${(error as Error).message}`,
      { cause: error },
    );
  }
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

/** Starts listening; resolves with the address clients use (`http://host:port`, `https://…`, `unix:/path`). */
export async function listen(server: http.Server, address: ListenAddress, options: ListenerOptions): Promise<string> {
  if (address.kind === 'unix') await removeStaleSocket(address.path);
  // once() rejects when 'error' comes first (port in use, no permission).
  const listening = once(server, 'listening');
  if (address.kind === 'unix') server.listen(address.path);
  else server.listen(address.port, address.host);
  try {
    await listening;
  } catch (error) {
    throw new Error(`cannot listen on ${options.listenAddr}: ${describeListenError(error as NodeJS.ErrnoException)}`, { cause: error });
  }
  if (address.kind === 'unix') {
    try {
      await chmod(address.path, options.socketPermission);
    } catch (error) {
      server.close();
      throw new Error(`cannot set mode ${options.socketPermission.toString(8)} on unix:${address.path}: ${(error as Error).message}`, {
        cause: error,
      });
    }
    return `unix:${address.path}`;
  }
  const bound = server.address() as net.AddressInfo;
  const host = bound.family === 'IPv6' ? `[${bound.address}]` : bound.address;
  return `${options.tls ? 'https' : 'http'}://${host}:${bound.port}`;
}

/** Removes our unix socket file after the server closed (Node usually has; a missing file is fine). */
export async function removeSocketFile(address: ListenAddress): Promise<void> {
  if (address.kind !== 'unix') return;
  try {
    await unlink(address.path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
}
