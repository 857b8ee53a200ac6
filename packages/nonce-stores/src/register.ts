import { nonceStores } from '@jwtproxy/core';
import { createLocalNonceStore } from './local.js';
import { createNoNonceStore } from './none.js';

/** Registers `local` and `none` through the same public API a plugin uses. Idempotent. */
export function registerNonceStores(): void {
  nonceStores.register('local', createLocalNonceStore);
  nonceStores.register('none', createNoNonceStore);
}
