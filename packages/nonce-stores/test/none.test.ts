import { ConfigError, createRuntime, type Logger } from '@jwtproxy/core';
import { describe, expect, it } from 'vitest';
import { NoNonceStore, noNonceStore } from '../src/index.js';

const { nonceStores } = createRuntime();
nonceStores.register(noNonceStore);

describe('none nonce store', () => {
  it('accepts every jti, replays included, and warns at start-up that replay protection is off', async () => {
    const warnings: string[] = [];
    const logger: Logger = { debug() {}, info() {}, warn: (message) => warnings.push(message), error() {} };
    const store = await nonceStores.create({ type: 'none' }, { logger, clock: Date.now, baseDir: '.' });
    expect(store).toBeInstanceOf(NoNonceStore);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/replay protection is OFF/);
    const exp = Math.floor(Date.now() / 1000) + 300;
    expect(await store.claim('same', exp)).toBe(true);
    expect(await store.claim('same', exp)).toBe(true);
    expect(await Promise.all(Array.from({ length: 100 }, () => store.claim('same', exp)))).toEqual(Array(100).fill(true));
    expect(warnings).toHaveLength(1);
  });

  it('takes no options', async () => {
    const error = await nonceStores
      .create({ type: 'none', options: { purge_interval: '1m' } }, { logger: { debug() {}, info() {}, warn() {}, error() {} }, clock: Date.now, baseDir: '.' })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigError);
    expect(error).toMatchObject({ path: 'purge_interval' });
  });
});
