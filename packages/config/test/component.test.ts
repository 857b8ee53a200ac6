import { describe, expect, it } from 'vitest';
import { ComponentRegistry, ConfigError, schema as s, silentLogger, type ComponentContext } from '@jwtproxy/core';
import { createComponent, expandEnv, parseConfig, placeConfigError } from '../src/index.js';

const context: ComponentContext = { logger: silentLogger, clock: Date.now, baseDir: '/' };

const yaml = [
  'jwtproxy:', // 1
  '  verifier_proxies:', // 2
  '  - verifier:', // 3
  '      upstream: http://127.0.0.1:1', // 4
  '      audience: http://localhost', // 5
  '      key_server:', // 6
  '        type: files', // 7
  '        options:', // 8
  '          public_key_path: /nope.pem', // 9
  '          nested:', // 10
  '            type: mystery', // 11
  '',
].join('\n');

interface Resolver {
  path: string;
}

function registry(): ComponentRegistry<Resolver> {
  const kinds = new ComponentRegistry<Resolver>('key server');
  kinds.register({
    type: 'files',
    options: s.strictObject({ public_key_path: s.string(), nested: s.optional(s.unknown()) }),
    create: (options) => {
      if (options.public_key_path === '/nope.pem') throw new ConfigError('public_key_path', 'cannot read "/nope.pem"');
      return { path: options.public_key_path };
    },
  });
  kinds.register({ type: 'preshared', options: s.strictObject({}), create: () => ({ path: 'preshared' }) });
  return kinds;
}

async function messageOf(promise: Promise<unknown>): Promise<string> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ConfigError);
  return (error as ConfigError).message;
}

describe('createComponent', () => {
  const loaded = parseConfig(yaml, 'config.yaml');
  const keyServer = loaded.verifierProxies[0]!.verifier.keyServer;
  const at = 'verifier_proxies[0].verifier.key_server';

  it('builds a registered type with its options', async () => {
    const built = await createComponent(registry(), { type: 'files', options: { public_key_path: '/k.pem' } }, at, context, loaded);
    expect(built).toEqual({ path: '/k.pem' });
  });

  it("rewrites a factory's relative path to the full key path and its line", async () => {
    expect(await messageOf(createComponent(registry(), keyServer, at, context, loaded))).toBe(
      'verifier_proxies[0].verifier.key_server.options.public_key_path: cannot read "/nope.pem" (config.yaml:9)',
    );
  });

  it('turns an unknown type into an error at <at>.type naming the registered types', async () => {
    expect(await messageOf(createComponent(registry(), { type: 'keyregistyr', options: {} }, at, context, loaded))).toBe(
      'verifier_proxies[0].verifier.key_server.type: unknown key server type "keyregistyr" (registered: files, preshared) (config.yaml:7)',
    );
  });

  it('points an unknown nested component type at its own key', async () => {
    const outer = new ComponentRegistry<Resolver>('private key source');
    const inner = registry();
    outer.register({
      type: 'files',
      options: s.strictObject({ public_key_path: s.string(), nested: s.strictObject({ type: s.string() }) }),
      create: (options, ctx) => inner.create(options.nested, ctx),
    });
    expect(await messageOf(createComponent(outer, keyServer, at, context, loaded))).toBe(
      'verifier_proxies[0].verifier.key_server.options.nested.type: unknown key server type "mystery" (registered: files, preshared) (config.yaml:11)',
    );
  });

  it('turns any other failure into one line at the component', async () => {
    const failing = new ComponentRegistry<Resolver>('nonce storage');
    failing.register({
      type: 'files',
      options: s.record(s.string(), s.unknown()),
      create: async () => {
        throw new Error('connect ECONNREFUSED 127.0.0.1:1');
      },
    });
    expect(await messageOf(createComponent(failing, keyServer, at, context, loaded))).toBe(
      'verifier_proxies[0].verifier.key_server: cannot create nonce storage "files": connect ECONNREFUSED 127.0.0.1:1 (config.yaml:6)',
    );
  });
});

describe('expandEnv (Go os.ExpandEnv rules)', () => {
  const env = { HOME: '/home/me', A: 'x', '1': 'one' };
  it.each([
    ['$HOME/config.yaml', '/home/me/config.yaml'],
    ['${HOME}/config.yaml', '/home/me/config.yaml'],
    ['${A}b $Ab', 'xb '],
    ['$UNSET/c.yaml', '/c.yaml'],
    ['cost$', 'cost$'],
    ['a$%b', 'a$%b'],
    ['${}x', 'x'],
    ['${A', 'A'],
    ['$1st', 'onest'],
    ['plain.yaml', 'plain.yaml'],
  ])('%s → %s', (input, output) => {
    expect(expandEnv(input, env)).toBe(output);
  });
});

describe('placeConfigError', () => {
  const loaded = parseConfig(yaml, 'config.yaml');
  it('puts a relative path under the block, with its line', () => {
    expect(placeConfigError(new ConfigError('upstream', 'cannot connect'), 'verifier_proxies[0].verifier', loaded).message).toBe(
      'verifier_proxies[0].verifier.upstream: cannot connect (config.yaml:4)',
    );
  });
  it('keeps a path already under the block, adding the line', () => {
    expect(placeConfigError(new ConfigError('verifier_proxies[0].verifier.audience', 'bad'), 'verifier_proxies[0]', loaded).message).toBe(
      'verifier_proxies[0].verifier.audience: bad (config.yaml:5)',
    );
  });
  it('leaves an error about another file alone', () => {
    const error = new ConfigError('verifier_proxies[0].crt_file', 'no certificate', { file: '/etc/x.crt' });
    expect(placeConfigError(error, 'verifier_proxies[0]', loaded)).toBe(error);
  });
});
