import { UnknownComponentError } from './errors.js';
import type { Clock, ClaimsVerifier, Logger, NonceStore, PrivateKeySource, PublicKeyResolver } from './types.js';

/** `{type, options}` as written in the YAML configuration. */
export interface ComponentConfig {
  type: string;
  options?: Record<string, unknown>;
}

/** What a factory receives besides its own options. */
export interface ComponentContext {
  logger: Logger;
  clock: Clock;
  /** Directory of the configuration file, to resolve relative paths; the cwd when there is none. */
  baseDir: string;
}

export type ComponentFactory<T> = (options: Record<string, unknown>, context: ComponentContext) => T | Promise<T>;

/** One registry per kind of component, as in the Go tool. Built-ins register here like any plugin. */
export class ComponentRegistry<T> {
  readonly kind: string;
  readonly #factories = new Map<string, ComponentFactory<T>>();

  constructor(kind: string) {
    this.kind = kind;
  }

  /** Registers (or replaces) the factory for `type`. */
  register(type: string, factory: ComponentFactory<T>): void {
    this.#factories.set(type, factory);
  }

  has(type: string): boolean {
    return this.#factories.has(type);
  }

  types(): string[] {
    return [...this.#factories.keys()].sort();
  }

  /** Builds a component; an unknown type is an UnknownComponentError naming it and the known types. */
  async create(config: ComponentConfig, context: ComponentContext): Promise<T> {
    const factory = this.#factories.get(config.type);
    if (!factory) throw new UnknownComponentError(this.kind, config.type, this.types());
    return factory(config.options ?? {}, context);
  }
}

/** A cache for public keys, used by key servers that fetch keys (keyregistry). */
export interface KeyCacheComponent {
  get(key: string): unknown;
  set(key: string, value: unknown, ttlMs: number): void;
  delete(key: string): void;
}

export const privateKeySources = new ComponentRegistry<PrivateKeySource>('private key source');
export const keyServers = new ComponentRegistry<PublicKeyResolver>('key server');
export const keyCaches = new ComponentRegistry<KeyCacheComponent>('key cache');
export const nonceStores = new ComponentRegistry<NonceStore>('nonce storage');
export const claimsVerifiers = new ComponentRegistry<ClaimsVerifier>('claims verifier');
