import { isValidName } from './names.js';
import type { KeyInfo, LiveState } from './registry.js';

/** An admin request the registry refused, or one that could not be made. */
export class KeyRegistryAdminError extends Error {
  /** HTTP status; undefined when the registry could not be reached. */
  readonly status: number | undefined;
  /** The registry's error code (`unauthorized`, `key_not_found`, …) when it gave one. */
  readonly code: string | undefined;
  constructor(message: string, status?: number, code?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'KeyRegistryAdminError';
    this.status = status;
    this.code = code;
  }
}

export interface KeyRegistryAdminClientOptions {
  /** The registry's base URL, e.g. `https://keys.example.com`. */
  url: string;
  token: string;
  /** Per-request timeout; default 10 s. */
  timeoutMs?: number;
}

/** Talks to a registry's admin API (`/admin/…`, Bearer admin token): what `jwtproxy keyregistry list|approve|revoke` use. */
export class KeyRegistryAdminClient {
  readonly #base: string;
  readonly #token: string;
  readonly #timeoutMs: number;

  constructor(options: KeyRegistryAdminClientOptions) {
    let base: URL;
    try {
      base = new URL(options.url);
    } catch {
      throw new KeyRegistryAdminError(`${JSON.stringify(options.url)} is not a URL`);
    }
    if (base.protocol !== 'http:' && base.protocol !== 'https:') throw new KeyRegistryAdminError(`${JSON.stringify(options.url)} is not an http(s) URL`);
    this.#base = base.href.replace(/\/+$/, '');
    this.#token = options.token;
    this.#timeoutMs = options.timeoutMs ?? 10_000;
  }

  async #call(method: string, pathname: string): Promise<unknown> {
    let response: Response;
    try {
      response = await fetch(`${this.#base}${pathname}`, {
        method,
        headers: { authorization: `Bearer ${this.#token}`, accept: 'application/json' },
        signal: AbortSignal.timeout(this.#timeoutMs),
      });
    } catch (error) {
      const cause = (error as { cause?: { message?: string } }).cause?.message ?? (error as Error).message;
      throw new KeyRegistryAdminError(`cannot reach the key registry at ${this.#base}: ${cause}`, undefined, undefined, { cause: error });
    }
    const text = await response.text();
    let body: unknown;
    try {
      body = text ? JSON.parse(text) : undefined;
    } catch {
      body = undefined;
    }
    if (!response.ok) {
      const detail = body as { error?: string; message?: string } | undefined;
      throw new KeyRegistryAdminError(detail?.message ?? `the key registry answered ${response.status}`, response.status, detail?.error);
    }
    return body;
  }

  /** The path of one key; refuses names the registry would refuse (and that URL normalisation would mangle, like `..`). */
  #keyPath(service: string, kid: string): string {
    for (const [what, value] of [['service name', service], ['key id', kid]] as const) {
      if (!isValidName(value)) throw new KeyRegistryAdminError(`invalid ${what} ${JSON.stringify(value)}`, undefined, 'invalid_name');
    }
    return `/admin/services/${encodeURIComponent(service)}/keys/${encodeURIComponent(kid)}`;
  }

  /** Every key (not purged), optionally of one service and in one state. */
  async list(filter: { service?: string; state?: LiveState } = {}): Promise<KeyInfo[]> {
    const query = new URLSearchParams();
    if (filter.service) query.set('service', filter.service);
    if (filter.state) query.set('state', filter.state);
    const body = (await this.#call('GET', `/admin/keys${query.size ? `?${query}` : ''}`)) as { keys?: KeyInfo[] } | undefined;
    return body?.keys ?? [];
  }

  async get(service: string, kid: string): Promise<KeyInfo> {
    return (await this.#call('GET', this.#keyPath(service, kid))) as KeyInfo;
  }

  async approve(service: string, kid: string): Promise<KeyInfo> {
    return (await this.#call('POST', `${this.#keyPath(service, kid)}/approve`)) as KeyInfo;
  }

  async revoke(service: string, kid: string): Promise<void> {
    await this.#call('DELETE', this.#keyPath(service, kid));
  }
}
