import { lstat, unlink, chmod, stat } from 'node:fs/promises';
import type { AddressInfo, Server } from 'node:net';
import { ConfigError } from '@jwtproxy/core';

/** Where a proxy listens, parsed from the Go `listen_addr` forms. */
export type ListenTarget =
  | { kind: 'tcp'; host: string | undefined; port: number }
  | { kind: 'unix'; path: string };

/**
 * `host:port`, `[v6]:port`, `:port` (every interface, as Go) or `unix:/path/to.sock`.
 * Throws ConfigError naming the bad value.
 */
export function parseListenAddress(listenAddr: string, key = 'signer_proxy.listen_addr'): ListenTarget {
  if (listenAddr.startsWith('unix:')) {
    const path = listenAddr.slice('unix:'.length);
    if (!path) throw new ConfigError(key, `"${listenAddr}" names no socket path`);
    return { kind: 'unix', path };
  }
  const colon = listenAddr.lastIndexOf(':');
  if (colon < 0) throw new ConfigError(key, `"${listenAddr}" is not host:port, :port or unix:/path`);
  let host = listenAddr.slice(0, colon);
  const portText = listenAddr.slice(colon + 1);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  else if (host.includes(':')) throw new ConfigError(key, `"${listenAddr}": write an IPv6 address in brackets, e.g. [::1]:8080`);
  const port = Number(portText);
  if (!/^\d{1,5}$/.test(portText) || port > 65535) throw new ConfigError(key, `"${listenAddr}" has no valid port`);
  return { kind: 'tcp', host: host || undefined, port };
}

function waitForListening(server: Server, listen: () => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: Error) => {
      server.off('listening', onListening);
      reject(error);
    };
    const onListening = () => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    listen();
  });
}

/** A listening server's address and how to clean up after it closed. */
export interface BoundAddress {
  /** `http://127.0.0.1:8080`, `http://[::]:8080` or `unix:/path`. */
  address: string;
  /** Removes our own unix socket file (and nothing else). */
  cleanUp(): Promise<void>;
}

/**
 * Binds `server`. A unix socket left over by a previous run is removed first (a file that is
 * not a socket is never touched), gets `socketPermission` once bound, and is removed at stop.
 */
export async function listenOn(server: Server, target: ListenTarget, socketPermission: number, key = 'signer_proxy.listen_addr'): Promise<BoundAddress> {
  if (target.kind === 'unix') {
    const existing = await lstat(target.path).catch(() => undefined);
    if (existing && !existing.isSocket()) throw new ConfigError(key, `${target.path} exists and is not a socket; refusing to replace it`);
    if (existing) await unlink(target.path);
    try {
      await waitForListening(server, () => server.listen(target.path));
    } catch (error) {
      throw new ConfigError(key, `cannot listen on unix:${target.path}: ${(error as Error).message}`);
    }
    await chmod(target.path, socketPermission);
    const ours = await stat(target.path);
    return {
      address: `unix:${target.path}`,
      async cleanUp() {
        // Only remove the socket we made: another process may have replaced it since.
        const now = await stat(target.path).catch(() => undefined);
        if (now && now.ino === ours.ino && now.dev === ours.dev) await unlink(target.path).catch(() => undefined);
      },
    };
  }
  try {
    await waitForListening(server, () => server.listen({ host: target.host, port: target.port }));
  } catch (error) {
    throw new ConfigError(key, `cannot listen on ${target.host ?? ''}:${target.port}: ${(error as Error).message}`);
  }
  const bound = server.address() as AddressInfo;
  const host = bound.family === 'IPv6' || bound.address.includes(':') ? `[${bound.address}]` : bound.address;
  return { address: `http://${host}:${bound.port}`, cleanUp: async () => undefined };
}
