import { once } from 'node:events';
import net from 'node:net';

export interface RawExchangeOptions {
  /** Give up (and close) after this long, ms (default 5 s): a proxy that never closes does not hang the test. */
  waitMs?: number;
  /** Half-close after writing: "nothing more is coming", so the server answers what it has and closes. */
  halfClose?: boolean;
}

/**
 * Writes `bytes` on one new connection to `url`'s host and port and collects everything that comes
 * back until the server closes the connection (or `waitMs` passes). For what an HTTP client cannot
 * send: malformed heads, pipelined requests, slow or hostile framing.
 */
export async function rawExchange(url: string, bytes: string | Buffer, options: RawExchangeOptions = {}): Promise<string> {
  const { hostname, port } = new URL(url);
  const socket = net.connect({ host: hostname, port: Number(port) });
  socket.on('error', () => undefined);
  if (options.halfClose) socket.end(bytes);
  else socket.write(bytes);
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  const timer = setTimeout(() => socket.destroy(), options.waitMs ?? 5_000);
  await once(socket, 'close');
  clearTimeout(timer);
  return Buffer.concat(chunks).toString('latin1');
}

/** The status codes of every response in a raw exchange's bytes, in order. */
export function responseStatuses(answer: string): number[] {
  return [...answer.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((match) => Number(match[1]));
}
