import { ConfigError, DurationParseError, keyCaches, toDuration, type ComponentContext, type KeyCacheComponent } from '@jwtproxy/core';
import { MemoryKeyCache } from './cache.js';
import { parseRegistryUrl } from './endpoint.js';

/** Defaults, in ms unless said otherwise. */
export const keyRegistryDefaults = {
  cacheDuration: 10 * 60_000,
  purgeInterval: 60_000,
  timeout: 5_000,
  maxCachedKeys: 10_000,
  notFoundCacheDuration: 2_000,
  /** 404/409/403 answers remembered at most (apart from keys). */
  maxCachedNotFound: 10_000,
  /** Lookups a second of keys the verifier does not know, per issuer. */
  unknownKidRate: 10,
  /** Largest burst of those lookups per issuer. */
  unknownKidBurst: 100,
  /** Most issuers with a lookup limit of their own. */
  maxTrackedIssuers: 1_000,
  failureLogInterval: 60_000,
  pollInterval: 1_000,
  tokenLifetime: 5 * 60_000,
  maxSkew: 60_000,
} as const;

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

export function registryOption(options: Record<string, unknown>): string {
  const registry = options.registry;
  if (registry === undefined || registry === null || registry === '') throw new ConfigError('registry', 'is required (the base URL of the key registry)');
  if (typeof registry !== 'string' || !parseRegistryUrl(registry)) {
    throw new ConfigError('registry', `must be an absolute http or https URL without credentials, got ${JSON.stringify(registry)}`);
  }
  return registry;
}

export function durationOption(value: unknown, path: string, fallback: number, { allowZero = true } = {}): number {
  if (value === undefined || value === null) return fallback;
  let ms: number;
  try {
    ms = toDuration(value);
  } catch (error) {
    if (error instanceof DurationParseError) throw new ConfigError(path, `must be a duration such as "10m" or "1.5s", got ${JSON.stringify(value)}`);
    throw error;
  }
  if (ms < 0 || (!allowZero && ms === 0)) throw new ConfigError(path, `must be ${allowZero ? 'zero or positive' : 'positive'}, got ${JSON.stringify(value)}`);
  return ms;
}

export function countOption(value: unknown, path: string, fallback: number): number {
  if (value === undefined || value === null) return fallback;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) throw new ConfigError(path, `must be a whole number of at least 1, got ${JSON.stringify(value)}`);
  return value;
}

/** A rate per second: a positive number, fractions allowed (`0.5`: one lookup every 2 s). */
export function rateOption(value: unknown, path: string, fallback: number): number {
  if (value === undefined || value === null) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) throw new ConfigError(path, `must be a positive number (per second), got ${JSON.stringify(value)}`);
  return value;
}

/** Warns about option names we do not know (Go ignores them silently; a typo should not be silent). */
export function warnUnknown(options: Record<string, unknown>, known: readonly string[], prefix: string, context: Pick<ComponentContext, 'logger'>): void {
  for (const name of Object.keys(options)) {
    if (!known.includes(name)) context.logger.warn('ignoring unknown key registry option', { option: `${prefix}${name}` });
  }
}

export interface ReaderSettings {
  registry: string;
  cacheDuration: number;
  purgeInterval: number;
  timeout: number;
  maxCachedKeys: number;
  notFoundCacheDuration: number;
  maxCachedNotFound: number;
  unknownKidRate: number;
  unknownKidBurst: number;
  maxTrackedIssuers: number;
  cache: KeyCacheComponent;
}

/**
 * The verifier's options as written in YAML (`key_server: {type: keyregistry, options: …}`):
 * `registry`, `cache: {duration, purge_interval}` (also accepted in the Go code's component form
 * `cache: {type: memory, options: {duration, purge_interval}}`), `timeout`, `max_cached_keys`,
 * `not_found_cache_duration`, `max_cached_not_found`, `unknown_kid_rate`, `unknown_kid_burst`,
 * `max_tracked_issuers`.
 */
export async function readerSettingsFromConfig(options: Record<string, unknown>, context: ComponentContext): Promise<ReaderSettings> {
  warnUnknown(
    options,
    ['registry', 'cache', 'timeout', 'max_cached_keys', 'not_found_cache_duration', 'max_cached_not_found', 'unknown_kid_rate', 'unknown_kid_burst', 'max_tracked_issuers'],
    '',
    context,
  );
  const registry = registryOption(options);
  const timeout = durationOption(options.timeout, 'timeout', keyRegistryDefaults.timeout, { allowZero: false });
  const maxCachedKeys = countOption(options.max_cached_keys, 'max_cached_keys', keyRegistryDefaults.maxCachedKeys);

  const cacheOption = options.cache ?? {};
  if (!isRecord(cacheOption)) throw new ConfigError('cache', 'must be a mapping such as {duration: 10m, purge_interval: 1m}');
  const componentForm = cacheOption.type !== undefined;
  const cacheType = componentForm ? cacheOption.type : 'memory';
  if (typeof cacheType !== 'string' || cacheType === '') throw new ConfigError('cache.type', 'must be a cache type name');
  const cacheSettings = componentForm ? (cacheOption.options ?? {}) : cacheOption;
  const prefix = componentForm ? 'cache.options.' : 'cache.';
  if (!isRecord(cacheSettings)) throw new ConfigError('cache.options', 'must be a mapping');
  if (componentForm) warnUnknown(cacheOption, ['type', 'options'], 'cache.', context);
  if (cacheType === 'memory') warnUnknown(cacheSettings, ['duration', 'purge_interval'], prefix, context);
  const cacheDuration = durationOption(cacheSettings.duration, `${prefix}duration`, keyRegistryDefaults.cacheDuration);
  const purgeInterval = durationOption(cacheSettings.purge_interval, `${prefix}purge_interval`, keyRegistryDefaults.purgeInterval);
  const notFoundCacheDuration = durationOption(options.not_found_cache_duration, 'not_found_cache_duration', keyRegistryDefaults.notFoundCacheDuration);
  const maxCachedNotFound = countOption(options.max_cached_not_found, 'max_cached_not_found', keyRegistryDefaults.maxCachedNotFound);
  const unknownKidRate = rateOption(options.unknown_kid_rate, 'unknown_kid_rate', keyRegistryDefaults.unknownKidRate);
  const unknownKidBurst = countOption(options.unknown_kid_burst, 'unknown_kid_burst', keyRegistryDefaults.unknownKidBurst);
  const maxTrackedIssuers = countOption(options.max_tracked_issuers, 'max_tracked_issuers', keyRegistryDefaults.maxTrackedIssuers);

  const cache =
    cacheType === 'memory'
      ? new MemoryKeyCache({ maxEntries: maxCachedKeys, purgeInterval, clock: context.clock })
      : await keyCaches.create({ type: cacheType, options: cacheSettings }, context);
  return {
    registry,
    cacheDuration,
    purgeInterval,
    timeout,
    maxCachedKeys,
    notFoundCacheDuration,
    maxCachedNotFound,
    unknownKidRate,
    unknownKidBurst,
    maxTrackedIssuers,
    cache,
  };
}

export interface PublisherSettings {
  registry: string;
  timeout: number;
  pollInterval: number;
}

/** The signer's key server options (`private_key.options.key_server.options`): `registry`, `timeout`, `poll_interval`. */
export function publisherSettingsFromConfig(options: Record<string, unknown>, context: Pick<ComponentContext, 'logger'>): PublisherSettings {
  warnUnknown(options, ['registry', 'timeout', 'poll_interval'], '', context);
  return {
    registry: registryOption(options),
    timeout: durationOption(options.timeout, 'timeout', keyRegistryDefaults.timeout, { allowZero: false }),
    pollInterval: durationOption(options.poll_interval, 'poll_interval', keyRegistryDefaults.pollInterval, { allowZero: false }),
  };
}
