import { audienceOf } from '@jwtproxy/core';
import { Pool, type Dispatcher } from 'undici';
import { RegistryAnswerTooLargeError } from './errors.js';

type ResponseHeaders = Dispatcher.ResponseData['headers'];

/** A JWK is a few hundred bytes; anything much larger is not an answer we want to buffer. */
const MAX_BODY_BYTES = 64 * 1024;

export interface RegistryResponse {
  status: number;
  headers: ResponseHeaders;
  /** The body, read only when asked for (`readBody`), else discarded. */
  body: string | undefined;
}

export interface RegistryRequest {
  method: 'GET' | 'PUT' | 'DELETE';
  path: string;
  headers?: Record<string, string>;
  body?: string;
  /** Read the body of answers with these statuses; others are discarded unread. */
  readBodyOf?: readonly number[];
  /** Largest body read (default 64 KiB); a larger one rejects with RegistryAnswerTooLargeError. */
  maxBodyBytes?: number;
  signal?: AbortSignal;
}

export interface RegistryEndpointOptions {
  /** Whole-request timeout in ms (connect, headers and body). */
  timeout: number;
  /** Most sockets kept open to the registry. */
  connections?: number;
  userAgent?: string;
}

/** Is `value` an absolute http(s) URL? Returns the parsed URL or undefined. */
export function parseRegistryUrl(value: string | URL): URL | undefined {
  let url: URL;
  try {
    url = new URL(String(value));
  } catch {
    return undefined;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return undefined;
  if (url.username || url.password) return undefined;
  return url;
}

/**
 * One registry: builds the protocol's URLs under the registry's base path and sends requests
 * over a keep-alive undici Pool, so that verifiers and signers reuse connections.
 */
export class RegistryEndpoint {
  /** The base URL, always ending in `/`. */
  readonly base: URL;
  /** `scheme://host[:port]` of the registry: the `aud` of publishing tokens. */
  readonly audience: string;
  readonly #basePath: string;
  readonly #pool: Pool;
  readonly #timeout: number;
  readonly #userAgent: string;

  constructor(registry: string | URL, options: RegistryEndpointOptions) {
    const url = parseRegistryUrl(registry);
    if (!url) throw new TypeError(`the registry must be an absolute http or https URL: ${String(registry)}`);
    url.search = '';
    url.hash = '';
    if (!url.pathname.endsWith('/')) url.pathname += '/';
    this.base = url;
    this.#basePath = url.pathname;
    this.audience = audienceOf(String(registry));
    this.#timeout = options.timeout;
    // The Go client's product token first, so that a registry or proxy rule written for the Go
    // tool (Quay logs it, some front proxies match it) sees the same client; then who we are.
    this.#userAgent = options.userAgent ?? 'KeyRegistryClient/0.1.0 (@jwtproxy/keyregistry)';
    this.#pool = new Pool(url.origin, {
      connections: options.connections ?? 32,
      keepAliveTimeout: 30_000,
      headersTimeout: options.timeout,
      bodyTimeout: options.timeout,
      connectTimeout: options.timeout,
    });
  }

  /**
   * `{base}services/{service}/keys/{kid}?query`, path segments escaped so that an issuer or
   * key ID with `/`, `?`, `%` or spaces cannot reach another route. `=` is `%3D`, as the Go
   * client writes the padded kids it makes. A segment `.` or `..` cannot be escaped (servers
   * resolve `%2E` as a dot too): the reader refuses such names before asking.
   */
  pathFor(service: string, kid?: string, query?: Record<string, string>): string {
    let path = `${this.#basePath}services/${encodeURIComponent(service)}/keys`;
    if (kid !== undefined) path += `/${encodeURIComponent(kid)}`;
    if (query && Object.keys(query).length > 0) path += `?${new URLSearchParams(query).toString()}`;
    return path;
  }

  /** The full URL of a path, for log lines. */
  urlOf(path: string): string {
    return `${this.base.origin}${path}`;
  }

  async send(request: RegistryRequest): Promise<RegistryResponse> {
    const timeout = AbortSignal.timeout(this.#timeout);
    const signal = request.signal ? AbortSignal.any([request.signal, timeout]) : timeout;
    try {
      const response = await this.#pool.request({
        method: request.method,
        path: request.path,
        headers: { 'user-agent': this.#userAgent, ...request.headers },
        body: request.body ?? null,
        signal,
      });
      let body: string | undefined;
      if (request.readBodyOf?.includes(response.statusCode)) {
        const limit = request.maxBodyBytes ?? MAX_BODY_BYTES;
        // A declared length over the limit is refused before a byte is read.
        const declared = Number(response.headers['content-length']);
        if (declared > limit) {
          // Closes the connection instead of reading the body; the abort is expected, not an error to report.
          response.body.on('error', () => {});
          response.body.destroy();
          throw new RegistryAnswerTooLargeError(limit);
        }
        const chunks: Buffer[] = [];
        let size = 0;
        for await (const chunk of response.body as AsyncIterable<Buffer>) {
          size += chunk.length;
          if (size > limit) {
            response.body.destroy();
            throw new RegistryAnswerTooLargeError(limit);
          }
          chunks.push(chunk);
        }
        body = Buffer.concat(chunks).toString('utf8');
      } else {
        await response.body.dump();
      }
      return { status: response.statusCode, headers: response.headers, body };
    } catch (error) {
      // A timeout surfaces as an abort; say what happened rather than "This operation was aborted".
      if (timeout.aborted && !request.signal?.aborted) throw new Error(`no answer within ${this.#timeout} ms`, { cause: error });
      throw error;
    }
  }

  /** Closes idle connections; waits for requests in flight until `deadline`, then drops them. */
  async close(deadline?: number): Promise<void> {
    if (this.#pool.closed || this.#pool.destroyed) return;
    const closing = this.#pool.close();
    if (deadline === undefined) return closing;
    const wait = Math.max(0, deadline - Date.now());
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => {
      timer = setTimeout(() => resolve('late'), wait);
      timer.unref();
    });
    const outcome = await Promise.race([closing.then(() => 'closed' as const), late]);
    clearTimeout(timer);
    if (outcome === 'late') await this.#pool.destroy();
  }
}
