import { describe, expect, it } from 'vitest';
import { ComponentRegistry, UnknownComponentError, claimsVerifiers, silentLogger, systemClock } from '../src/index.js';

const context = { logger: silentLogger, clock: systemClock, baseDir: process.cwd() };

describe('component registry', () => {
  it('creates a registered type with its options', async () => {
    const registry = new ComponentRegistry<{ greeting: string }>('greeter');
    registry.register('hello', (options) => ({ greeting: `hello ${String(options.name)}` }));
    await expect(registry.create({ type: 'hello', options: { name: 'world' } }, context)).resolves.toEqual({ greeting: 'hello world' });
  });

  it('names the unknown type and the registered ones', async () => {
    const registry = new ComponentRegistry<unknown>('nonce storage');
    registry.register('local', () => ({}));
    registry.register('redis', () => ({}));
    const error = await registry.create({ type: 'memcached' }, context).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UnknownComponentError);
    expect((error as Error).message).toBe('unknown nonce storage type "memcached" (registered: local, redis)');
  });

  it('has the static claims verifier built in, registered through the public API', () => {
    expect(claimsVerifiers.types()).toContain('static');
  });
});
