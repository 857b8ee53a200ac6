import { readFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { applyServerLimits, httpServerOptions, type ListenAddress, type ServerLimits } from '@jwtproxy/core';

export interface ServerOptions {
  /** As configured, to name it in errors. */
  listenAddr: string;
  tls: { keyFile: string; certFile: string } | undefined;
  limits: ServerLimits;
}

async function readNamedFile(what: string, file: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (error) {
    throw new Error(`cannot read ${what} ${file}: ${(error as Error).message}`, { cause: error });
  }
}

/**
 * The HTTP(S) server, not yet listening (core's `listenOn` binds it), with core's limits: no
 * whole-request deadline (a large upload or a long stream may take longer, as with the Go proxy),
 * but the head, an idle body and an idle connection each have a timeout, and connections a cap.
 */
export async function createServer(options: ServerOptions, address: ListenAddress): Promise<http.Server> {
  const serverOptions = httpServerOptions(options.limits);
  if (!options.tls) return limited(http.createServer(serverOptions), options.limits);
  if (address.kind === 'unix') {
    throw new Error(`TLS (key_file/crt_file) cannot be used on the unix socket listener ${options.listenAddr}`);
  }
  const key = await readNamedFile('TLS key file', options.tls.keyFile);
  const cert = await readNamedFile('TLS certificate file', options.tls.certFile);
  try {
    return limited(https.createServer({ ...serverOptions, key, cert }), options.limits);
  } catch (error) {
    throw new Error(
      `cannot use TLS key ${options.tls.keyFile} with certificate ${options.tls.certFile}: ${(error as Error).message}`,
      { cause: error },
    );
  }
}

function limited<S extends http.Server>(server: S, limits: ServerLimits): S {
  applyServerLimits(server, limits);
  return server;
}
