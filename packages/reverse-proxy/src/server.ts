import { readFileAsync, type ListenAddress } from '@jwtproxy/core';

async function readNamedFile(what: string, file: string): Promise<Buffer> {
  try {
    return await readFileAsync(file);
  } catch (error) {
    throw new Error(`cannot read ${what} ${file}: ${(error as Error).message}`, { cause: error });
  }
}

/** The TLS key and certificate of the listener, read at start; undefined for plain HTTP. */
export async function readListenerTls(
  tls: { keyFile: string; certFile: string } | undefined,
  listenAddr: string,
  address: ListenAddress,
): Promise<{ key: Buffer; cert: Buffer } | undefined> {
  if (!tls) return undefined;
  if (address.kind === 'unix') throw new Error(`TLS (key_file/crt_file) cannot be used on the unix socket listener ${listenAddr}`);
  return { key: await readNamedFile('TLS key file', tls.keyFile), cert: await readNamedFile('TLS certificate file', tls.certFile) };
}
