import { readFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import type { ListenAddress } from '@jwtproxy/core';

export interface ServerOptions {
  /** As configured, to name it in errors. */
  listenAddr: string;
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
 * The HTTP(S) server, not yet listening (core's `listenOn` binds it). Node's five-minute
 * `requestTimeout` is turned off (a large upload or a long stream may take longer, as with the
 * Go proxy); headers must still arrive within `headersTimeout`.
 */
export async function createServer(options: ServerOptions, address: ListenAddress): Promise<http.Server> {
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
