/**
 * The definitions alone (`@jwtproxy/keyregistry/component`): option schemas, without the client,
 * the publisher and their dependencies (jose, undici), which load when a component is built.
 */
import { defineComponent, UnknownComponentError } from '@jwtproxy/core';
import { keyRegistryReaderOptions, memoryKeyCache, readerSettings } from './config.js';
import type { KeyRegistryClient } from './reader.js';

export { memoryKeyCache };

/**
 * `key_server: {type: keyregistry}`: the verifier's key server. A `cache.type` other than memory
 * is built from the runtime's key caches (a plugin's).
 */
export const keyRegistryKeyServer = defineComponent({
  type: 'keyregistry',
  description: "Public keys from a key registry (Quay's `/keys/` endpoints, or `jwtproxy.keyregistry`), cached in memory.",
  options: keyRegistryReaderOptions,
  create: async (options, context): Promise<KeyRegistryClient> => {
    const settings = await readerSettings(options, context.clock, (type, cacheOptions) => {
      const keyCaches = context.runtime?.keyCaches;
      if (!keyCaches) return Promise.reject(new UnknownComponentError('key cache', type, ['memory']));
      return keyCaches.create({ type, options: cacheOptions }, context);
    });
    // The client (and undici) loads here, not when the definition is registered.
    const { KeyRegistryClient } = await import('./reader.js');
    return new KeyRegistryClient({ ...settings, logger: context.logger, clock: context.clock });
  },
});

