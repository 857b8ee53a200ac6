import { describe, expect, it } from 'vitest';
import { ConfigError, createRuntime, defineComponent, schema as s, silentLogger, type ComponentContext, type NonceStore } from '@jwtproxy/core';
import { createComponent, parseConfig } from '../src/index.js';

/**
 * The rules every component's options follow, whoever wrote the component: an unknown option is
 * an error naming its key path and line with a suggestion, and durations are read one way.
 */

const context: ComponentContext = { logger: silentLogger, clock: Date.now, baseDir: '/' };

/** A nonce store as a plugin would declare it: one option per duration rule, a nested mapping, a list. */
const probe = defineComponent({
  type: 'probe',
  options: s.strictObject({
    ttl: s.optional(s.duration('positive'), '1m'),
    purge_interval: s.optional(s.duration('non-negative'), '30s'),
    rotate_every: s.optional(s.duration('any'), '12h'),
    tls: s.optional(s.union([s.boolean(), s.strictObject({ ca_file: s.optional(s.string()), server_name: s.optional(s.string()) })])),
    replicas: s.optional(s.array(s.strictObject({ host: s.string(), port: s.optional(s.pipe(s.number(), s.integer(), s.minValue(1)), 6379) }))),
  }),
  create: (options): NonceStore & { options: typeof options } => ({ options, claim: async () => true }),
});

function verifierWithNonceStorage(options: string[]): string {
  return [
    'jwtproxy:', // 1
    '  verifier_proxies:', // 2
    '  - verifier:', // 3
    '      upstream: http://127.0.0.1:1', // 4
    '      audience: http://localhost', // 5
    '      key_server: {type: preshared}', // 6
    '      nonce_storage:', // 7
    '        type: probe', // 8
    '        options:', // 9
    ...options.map((line) => `          ${line}`), // 10…
    '',
  ].join('\n');
}

async function build(options: string[]) {
  const runtime = createRuntime();
  runtime.nonceStores.register(probe);
  const loaded = parseConfig(verifierWithNonceStorage(options), 'config.yaml');
  return createComponent(runtime.nonceStores, loaded.verifierProxies[0]!.verifier.nonceStorage, 'verifier_proxies[0].verifier.nonce_storage', context, loaded) as Promise<
    NonceStore & { options: { ttl: number; purge_interval: number; rotate_every: number; tls?: unknown; replicas?: Array<{ host: string; port: number }> } }
  >;
}

async function failure(options: string[]): Promise<ConfigError> {
  const error = await build(options).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ConfigError);
  return error as ConfigError;
}

const at = 'verifier_proxies[0].verifier.nonce_storage.options';

describe('unknown options', () => {
  it('are an error naming the key path and file:line, with the closest known option', async () => {
    const error = await failure(['ttl: 2m', 'purge_intervall: 1m']);
    expect(error.message).toBe(
      `${at}.purge_intervall: unknown option: did you mean purge_interval? (known: ttl, purge_interval, rotate_every, tls, replicas) (config.yaml:11)`,
    );
    // The facts are fields, so that nothing has to take the message apart.
    expect(error).toMatchObject({
      path: `${at}.purge_intervall`,
      problem: 'unknown option: did you mean purge_interval? (known: ttl, purge_interval, rotate_every, tls, replicas)',
      location: { file: 'config.yaml', line: 11 },
    });
  });

  it('have no suggestion when nothing is close', async () => {
    expect((await failure(['colour: blue'])).problem).toBe('unknown option (known: ttl, purge_interval, rotate_every, tls, replicas)');
  });

  it('inside a nested mapping or a list item are named by their full path and their own line', async () => {
    expect((await failure(['tls:', '  ca_file: ca.pem', '  servername: redis.internal'])).message).toBe(
      `${at}.tls.servername: unknown option: did you mean server_name? (known: ca_file, server_name) (config.yaml:12)`,
    );
    expect((await failure(['replicas:', '  - host: a', '  - hots: b'])).message).toBe(
      `${at}.replicas[1].hots: unknown option: did you mean host? (known: host, port) (config.yaml:12)`,
    );
  });

  it('are reported before the required option they were probably meant to be', async () => {
    expect((await failure(['replicas:', '  - hots: b'])).path).toBe(`${at}.replicas[0].hots`);
  });
});

describe('durations', () => {
  it('are Go duration strings (or 0), in milliseconds, with the defaults of the schema', async () => {
    expect((await build(['ttl: 1m30s', 'purge_interval: 0', 'rotate_every: 1.5h'])).options).toEqual({ ttl: 90_000, purge_interval: 0, rotate_every: 5_400_000 });
    expect((await build(['ttl: 300ms'])).options).toMatchObject({ ttl: 300, purge_interval: 30_000, rotate_every: 43_200_000 });
  });

  it('refuse what Go refuses, with the same words as the proxies\' own durations', async () => {
    expect((await failure(['ttl: 5x'])).message).toBe(`${at}.ttl: "5x" is not a duration (config.yaml:10)`);
    expect((await failure(['ttl: 30'])).message).toBe(`${at}.ttl: 30 is not a duration (give a unit, as in "30s") (config.yaml:10)`);
    expect((await failure(['ttl: [1m]'])).problem).toBe('must be a duration such as "5m", got a list');
    // A proxy's own max_ttl and a component's ttl: the same rule, the same words.
    const proxyError = (() => {
      try {
        parseConfig(verifierWithNonceStorage([]).replace('      audience', '      max_ttl: 5x\n      audience'), 'config.yaml');
      } catch (error) {
        return error as ConfigError;
      }
      throw new Error('accepted');
    })();
    expect(proxyError.problem).toBe('"5x" is not a duration');
  });

  it('say per option whether 0 and negative values are allowed', async () => {
    // positive: neither
    expect((await failure(['ttl: 0s'])).problem).toBe('must be greater than 0, got "0s"');
    expect((await failure(['ttl: -1m'])).problem).toBe('must be greater than 0, got "-1m"');
    // non-negative: 0 (off) but not below
    expect((await build(['purge_interval: 0s'])).options.purge_interval).toBe(0);
    expect((await failure(['purge_interval: -1s'])).message).toBe(`${at}.purge_interval: must be 0 or more, got "-1s" (config.yaml:10)`);
    // any: a negative value has a meaning (Go's), so it is kept
    expect((await build(['rotate_every: -1h'])).options.rotate_every).toBe(-3_600_000);
  });
});

describe('other values', () => {
  it('name the type expected and what was found, never echoing a number that may be a secret', async () => {
    expect((await failure(['tls: "yes"'])).problem).toBe('must be boolean or mapping, got "yes"');
    expect((await failure(['replicas: {host: a}'])).problem).toBe('must be a list, got a mapping');
    expect((await failure(['replicas:', '  - host: 1234'])).problem).toBe('must be a string, got number');
    expect((await failure(['replicas:', '  - {host: a, port: 0}'])).message).toBe(`${at}.replicas[0].port: must be 1 or more, got 0 (config.yaml:11)`);
    expect((await failure(['replicas:', '  - {host: a, port: 1.5}'])).problem).toBe('must be a whole number, got 1.5');
  });

  it('an empty value counts as absent', async () => {
    expect((await build(['ttl:', 'tls:'])).options).toMatchObject({ ttl: 60_000 });
  });
});
