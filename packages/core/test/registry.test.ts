import { describe, expect, it } from 'vitest';
import {
  ComponentRegistry,
  ConfigError,
  UnknownComponentError,
  adoptLegacyRegistrations,
  createRuntime,
  defineComponent,
  keyServers,
  schema as s,
  silentLogger,
  staticClaimsVerifier,
  systemClock,
  type Logger,
} from '../src/index.js';

const context = { logger: silentLogger, clock: systemClock, baseDir: process.cwd() };

function recordingLogger(): Logger & { warnings: Array<[string, Record<string, unknown> | undefined]> } {
  const warnings: Array<[string, Record<string, unknown> | undefined]> = [];
  return { debug() {}, info() {}, warn: (message, fields) => void warnings.push([message, fields]), error() {}, warnings };
}

const greeter = defineComponent({
  type: 'hello',
  options: s.strictObject({ name: s.string(), pause: s.optional(s.duration('positive'), '1s') }),
  create: (options) => ({ greeting: `hello ${options.name}`, pauseMs: options.pause }),
});

describe('component registry', () => {
  it('creates a registered type from options read with its schema', async () => {
    const registry = new ComponentRegistry<{ greeting: string; pauseMs: number }>('greeter');
    registry.register(greeter);
    await expect(registry.create({ type: 'hello', options: { name: 'world' } }, context)).resolves.toEqual({ greeting: 'hello world', pauseMs: 1000 });
    await expect(registry.create({ type: 'hello', options: { name: 'world', pause: '250ms' } }, context)).resolves.toMatchObject({ pauseMs: 250 });
  });

  it('refuses options the schema refuses with a ConfigError relative to the options, before create runs', async () => {
    const registry = new ComponentRegistry<unknown>('greeter');
    let created = 0;
    registry.register({ ...greeter, create: () => ++created });
    const error = (await registry.create({ type: 'hello', options: { name: 'x', paus: '1s' } }, context).catch((e: unknown) => e)) as ConfigError;
    expect(error).toBeInstanceOf(ConfigError);
    expect(error).toMatchObject({ path: 'paus', problem: 'unknown option: did you mean pause? (known: name, pause)', location: undefined });
    expect(error.message).toBe('paus: unknown option: did you mean pause? (known: name, pause)');
    expect(await registry.create({ type: 'hello', options: { pause: '1s' } }, context).catch((e: unknown) => e)).toMatchObject({ path: 'name', problem: 'is required' });
    expect(created).toBe(0);
  });

  it('names the unknown type and the registered ones', async () => {
    const registry = new ComponentRegistry<unknown>('nonce storage');
    registry.register({ type: 'local', options: s.strictObject({}), create: () => ({}) });
    registry.register({ type: 'redis', options: s.strictObject({}), create: () => ({}) });
    const error = await registry.create({ type: 'memcached' }, context).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UnknownComponentError);
    expect((error as Error).message).toBe('unknown nonce storage type "memcached" (registered: local, redis)');
  });

  it('refuses a schema with a plain object, which would drop unknown options silently', () => {
    const registry = new ComponentRegistry<unknown>('nonce storage');
    expect(() => registry.register({ type: 'lax', options: s.object({ a: s.string() }), create: () => ({}) })).toThrow(
      'nonce storage "lax": options is a plain object schema, which drops unknown options; use strictObject',
    );
    expect(() => registry.register({ type: 'lax', options: s.strictObject({ tls: s.optional(s.object({})) }), create: () => ({}) })).toThrow(/options\.tls is a plain object/);
    expect(() => registry.register({ type: 'nothing', options: {} as never, create: () => ({}) })).toThrow(/options must be a schema/);
  });
});

describe('runtime', () => {
  it('has its own registries: nothing is registered in a new runtime, and two runtimes share nothing', async () => {
    const first = createRuntime();
    const second = createRuntime();
    for (const name of ['privateKeySources', 'keyServers', 'keyCaches', 'nonceStores', 'claimsVerifiers'] as const) expect(first[name].types()).toEqual([]);
    first.claimsVerifiers.register(staticClaimsVerifier);
    expect(first.claimsVerifiers.types()).toEqual(['static']);
    expect(second.claimsVerifiers.types()).toEqual([]);
    const verifier = await first.claimsVerifiers.create({ type: 'static', options: { sub: 'billing' } }, context);
    expect(() => verifier.verify({ sub: 'payroll' } as never)).toThrow('Claim did not have the required value: sub');
    await expect(first.claimsVerifiers.create({ type: 'static', options: {} }, context)).rejects.toMatchObject({ path: '', problem: 'the static claims verifier needs at least one claim' });
  });

  it('hands itself to create, for components that build others', async () => {
    const runtime = createRuntime();
    let seen: unknown;
    runtime.nonceStores.register({ type: 'x', options: s.strictObject({}), create: (_options, ctx) => ((seen = ctx.runtime), { claim: async () => true }) });
    await runtime.nonceStores.create({ type: 'x' }, context);
    expect(seen).toBe(runtime);
  });

  it('still takes register(type, factory), options unchecked, with a deprecation warning', async () => {
    const logger = recordingLogger();
    const runtime = createRuntime({ logger });
    runtime.nonceStores.register('old', (options) => ({ claim: async () => options.yes === true }));
    const store = await runtime.nonceStores.create({ type: 'old', options: { yes: true, anything: 1 } }, context);
    expect(await store.claim('j', 0)).toBe(true);
    expect(logger.warnings).toEqual([[expect.stringContaining('deprecated registration'), { kind: 'nonce storage', type: 'old' }]]);
  });

  it("moves types registered in core's deprecated module-level registries into a runtime", async () => {
    keyServers.register('legacy', () => ({ resolve: () => Promise.reject(new Error('no')) }));
    const runtime = createRuntime();
    const moved: string[] = [];
    expect(adoptLegacyRegistrations(runtime, (kind, type) => moved.push(`${kind}:${type}`))).toBe(1);
    expect(moved).toEqual(['key server:legacy']);
    expect(runtime.keyServers.types()).toEqual(['legacy']);
    expect(keyServers.types()).toEqual([]);
  });
});
