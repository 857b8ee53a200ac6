import { keyServers, privateKeySources } from '@jwtproxy/core';
import { createPresharedKeyServer } from './preshared-key-server.js';
import { createPresharedPrivateKeySource } from './preshared-private-key-source.js';

/**
 * Registers the built-in private key sources and key servers through the same public API a
 * plugin uses. Idempotent: registering again replaces a factory with itself.
 */
export function registerKeySources(): void {
  privateKeySources.register('preshared', createPresharedPrivateKeySource);
  keyServers.register('preshared', createPresharedKeyServer);
}
