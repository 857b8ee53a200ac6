import type { NonceStore } from '@jwtproxy/core';
import { describe, expect, it } from 'vitest';
import { LocalNonceStore, NoNonceStore } from '../src/index.js';

describe('ping (the readiness probe of /readyz)', () => {
  it('local and none always answer, a full local store too', async () => {
    const local = new LocalNonceStore({ maxEntries: 1 });
    const none: NonceStore = new NoNonceStore();
    try {
      await expect(local.ping()).resolves.toBeUndefined();
      await expect(none.ping!()).resolves.toBeUndefined();
      const expiresAt = Math.floor(Date.now() / 1000) + 60;
      expect(await local.claim('only', expiresAt)).toBe(true);
      await expect(local.claim('one-too-many', expiresAt)).rejects.toThrow();
      await expect(local.ping()).resolves.toBeUndefined();
    } finally {
      await local.stop();
    }
  });
});
