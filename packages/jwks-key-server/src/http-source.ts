import { Agent, request } from 'undici';
import { JwksAnswerTooLargeError, JwksUnavailableError } from './errors.js';

export interface HttpSourceOptions {
  /** Whole-request timeout in ms: connect, headers and the last byte of the body. */
  timeout: number;
  /** Largest body read, in bytes. */
  maxBytes: number;
  /** Extra CA certificates (PEM) trusted for https sources, instead of Node's roots. */
  ca?: string;
}

/** What a source answered with 200. */
export interface HttpAnswer {
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

const USER_AGENT = 'jwtproxy-jwks/0.1 (@jwtproxy/jwks-key-server)';

/** Is `value` an absolute http(s) URL without credentials? The parsed URL or undefined. */
export function parseSourceUrl(value: string | URL): URL | undefined {
  let url: URL;
  try {
    url = new URL(String(value));
  } catch {
    return undefined;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return undefined;
  if (url.username || url.password) return undefined;
  url.hash = '';
  return url;
}

/** A URL for log lines and facts: without its query, which may carry a secret. */
export function urlForLogs(url: URL): string {
  return `${url.origin}${url.pathname}`;
}

/** Is the URL's host a loopback address or `localhost`? */
export function isLoopback(url: URL): boolean {
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/**
 * GETs of JWK sets and discovery documents, each bounded: one timeout for the whole exchange
 * (a source that drips its answer is cut at the same deadline as a silent one), a body cap
 * (by Content-Length before a byte is read, then while reading), no redirects followed, no
 * compression asked for. Connections are kept alive across refreshes.
 */
export class HttpSource {
  readonly #agent: Agent;
  readonly #timeout: number;
  readonly #maxBytes: number;

  constructor(options: HttpSourceOptions) {
    this.#timeout = options.timeout;
    this.#maxBytes = options.maxBytes;
    this.#agent = new Agent({
      connections: 4,
      keepAliveTimeout: 30_000,
      headersTimeout: options.timeout,
      bodyTimeout: options.timeout,
      connect: { timeout: options.timeout, ...(options.ca ? { ca: options.ca } : {}) },
    });
  }

  /** The body of a 200 answer; JwksUnavailableError for any other answer or none, JwksAnswerTooLargeError over the cap. */
  async get(url: URL, signal?: AbortSignal): Promise<HttpAnswer> {
    const timeout = AbortSignal.timeout(this.#timeout);
    const both = signal ? AbortSignal.any([signal, timeout]) : timeout;
    try {
      const response = await request(url, {
        method: 'GET',
        dispatcher: this.#agent,
        headers: { accept: 'application/jwk-set+json, application/json', 'accept-encoding': 'identity', 'user-agent': USER_AGENT },
        signal: both,
      });
      if (response.statusCode !== 200) {
        // Not read: whatever a failing source sends is not worth buffering.
        response.body.on('error', () => {});
        response.body.destroy();
        const redirect = response.statusCode >= 300 && response.statusCode < 400 ? ' (redirects are not followed: configure the address it redirects to)' : '';
        throw new JwksUnavailableError(`HTTP ${response.statusCode}${redirect}`, { status: response.statusCode });
      }
      const declared = Number(response.headers['content-length']);
      if (declared > this.#maxBytes) {
        response.body.on('error', () => {});
        response.body.destroy();
        throw new JwksAnswerTooLargeError(this.#maxBytes);
      }
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const chunk of response.body as AsyncIterable<Buffer>) {
        size += chunk.length;
        if (size > this.#maxBytes) {
          response.body.destroy();
          throw new JwksAnswerTooLargeError(this.#maxBytes);
        }
        chunks.push(chunk);
      }
      return { headers: response.headers, body: Buffer.concat(chunks).toString('utf8') };
    } catch (error) {
      if (error instanceof JwksUnavailableError || error instanceof JwksAnswerTooLargeError) throw error;
      if (timeout.aborted && !signal?.aborted) throw new JwksUnavailableError(`no complete answer within ${this.#timeout} ms`, { cause: error });
      if (signal?.aborted) throw new JwksUnavailableError('stopped', { cause: error });
      const code = (error as { code?: unknown }).code;
      throw new JwksUnavailableError(`no answer: ${typeof code === 'string' ? code : (error as Error).message}`, { cause: error });
    }
  }

  /** Closes the connections; requests still running are dropped. */
  async close(): Promise<void> {
    if (!this.#agent.closed && !this.#agent.destroyed) await this.#agent.destroy();
  }
}
