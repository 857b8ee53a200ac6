import { readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RequestSigner } from '@jwtproxy/core';
import { PresharedPrivateKeySource } from '@jwtproxy/key-sources';
import { interop, listenOnLoopback, readBody, startEchoService } from '@jwtproxy/testkit';
import { runCli, startCli, tempDir, type RunningCli } from './helpers.js';

const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures');
const cliVersion = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;

let files: Awaited<ReturnType<typeof tempDir>>;
beforeAll(async () => {
  files = await tempDir();
});
afterAll(() => files.cleanup());

/** The one line a failed start prints, and its exit code. */
async function failure(args: string[], env?: NodeJS.ProcessEnv): Promise<{ code: number | null; lines: string[] }> {
  const result = await runCli(args, { cwd: files.dir, ...(env ? { env } : {}) });
  expect(result.stdout).toBe('');
  // Log lines (`time=… level=info …`) written while starting may come before the one error line.
  return { code: result.code, lines: result.stderr.split('\n').filter((line) => line && !line.startsWith('time=')) };
}

/** A complete verifier configuration; `replace` edits it to make one mistake. */
function verifierConfig(upstream = 'http://127.0.0.1:9', keyServer = 'type: preshared\n        options:\n          issuer: jwtproxy\n          key_id: mykey\n          public_key_path: ' + interop.publicKeyPath): string {
  return [
    'jwtproxy:', // 1
    '  verifier_proxies:', // 2
    '  - listen_addr: 127.0.0.1:0', // 3
    '    verifier:', // 4
    `      upstream: ${upstream}`, // 5
    '      audience: http://localhost', // 6
    '      key_server:', // 7
    `        ${keyServer}`, // 8…
    '',
  ].join('\n');
}

describe('jwtproxy --help and --version', () => {
  it('--help prints the usage and exits 0', async () => {
    for (const flag of ['--help', '-help', '-h']) {
      const result = await runCli([flag]);
      expect(result.code).toBe(0);
      expect(result.stdout).toContain('Usage: jwtproxy -config FILE [-log-level LEVEL] [-log-format text|json] [--plugin MODULE]...');
      expect(result.stdout).toContain('--plugin MODULE');
    }
  });

  it('--version prints the version of the package', async () => {
    const result = await runCli(['--version']);
    expect(result).toMatchObject({ code: 0, stdout: `jwtproxy ${cliVersion}\n`, stderr: '' });
  });

  it('a missing -config, an unknown flag or a bad log level is a usage error (exit 2)', async () => {
    expect(await failure([])).toEqual({ code: 2, lines: ['jwtproxy: -config FILE is required (see jwtproxy --help)'] });
    expect(await failure(['-config', 'x.yaml', '--listen', ':1'])).toEqual({ code: 2, lines: ['jwtproxy: unknown flag "--listen" (see jwtproxy --help)'] });
    expect(await failure(['-config=x.yaml', '-log-level', 'loud'])).toEqual({
      code: 2,
      lines: ['jwtproxy: -log-level must be one of debug, info, warn, error (got "loud") (see jwtproxy --help)'],
    });
  });
});

describe('a bad configuration: one line on stderr, exit 1, nothing listens', () => {
  it.each([
    ['a bad duration', (c: string) => c.replace('      audience', '      max_ttl: 5x\n      audience'), 'jwtproxy: verifier_proxies[0].verifier.max_ttl: "5x" is not a duration (config.yaml:6)'],
    ['a YAML syntax error', (c: string) => c.replace('127.0.0.1:0', '[127.0.0.1:0'), /^jwtproxy: invalid YAML: .* \(config\.yaml:\d+\)$/],
    ['no jwtproxy key', (c: string) => c.replace('jwtproxy:', 'jwt_proxy:'), 'jwtproxy: jwtproxy: is missing: the configuration goes under a top-level "jwtproxy:" key (config.yaml)'],
    ['a bad upstream', (c: string) => c.replace('http://127.0.0.1:9', 'tcp://127.0.0.1:9'), 'jwtproxy: verifier_proxies[0].verifier.upstream: "tcp://127.0.0.1:9" is not an upstream (expected http://host[:port][/path], https://… or unix:/path/to.sock) (config.yaml:5)'],
    ['TLS on a unix socket', (c: string) => c.replace('listen_addr: 127.0.0.1:0', 'listen_addr: unix:/tmp/jwtproxy-test.sock\n    key_file: a.key\n    crt_file: a.crt'), 'jwtproxy: verifier_proxies[0].key_file: TLS on a unix socket listener is not supported (config.yaml:4)'],
    ['a missing audience', (c: string) => c.replace('      audience: http://localhost\n', ''), 'jwtproxy: verifier_proxies[0].verifier.audience: is required (config.yaml:4)'],
    ['an unreadable key file, from the component factory', (c: string) => c.replace(interop.publicKeyPath, 'missing.pub'), /^jwtproxy: verifier_proxies\[0\]\.verifier\.key_server\.options\.public_key_path: cannot read .*missing\.pub.* \(config\.yaml:12\)$/],
    ['an unknown component type, naming the registered ones', (c: string) => c.replace('type: preshared', 'type: keyregistyr'), /^jwtproxy: verifier_proxies\[0\]\.verifier\.key_server\.type: unknown key server type "keyregistyr" \(registered: (?=.*keyregistry)(?=.*preshared)[\w, -]+\) \(config\.yaml:8\)$/],
    ['an unknown nonce storage type', (c: string) => `${c}      nonce_storage:\n        type: memcached\n`, /^jwtproxy: verifier_proxies\[0\]\.verifier\.nonce_storage\.type: unknown nonce storage type "memcached" \(registered: (?=.*local)(?=.*redis)[\w, -]+\) \(config\.yaml:14\)$/],
  ])('%s', async (_name, edit, expected) => {
    const file = await files.write('config.yaml', edit(verifierConfig()));
    const { code, lines } = await failure(['-config', 'config.yaml']);
    expect(code).toBe(1);
    expect(lines).toHaveLength(1);
    if (typeof expected === 'string') expect(lines[0]).toBe(expected);
    else expect(lines[0]).toMatch(expected);
    expect(file).toBe(path.join(files.dir, 'config.yaml'));
  });

  it('a signer without a private key', async () => {
    await files.write('signer.yaml', 'jwtproxy:\n  signer_proxy:\n    listen_addr: 127.0.0.1:0\n    signer:\n      issuer: billing\n');
    expect(await failure(['--config', 'signer.yaml'])).toEqual({
      code: 1,
      lines: ['jwtproxy: signer_proxy.signer.private_key.type: no private key provider specified (signer.yaml:4)'],
    });
  });

  it("an autogenerated key source's nested mistake names its full key path", async () => {
    await files.write(
      'autogen.yaml',
      'jwtproxy:\n  signer_proxy:\n    signer:\n      private_key:\n        type: autogenerated\n        options:\n          key_server:\n            type: preshared\n',
    );
    const { code, lines } = await failure(['-config', 'autogen.yaml']);
    expect(code).toBe(1);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^jwtproxy: signer_proxy\.signer\.private_key\.options\.key_server\.type: must be "keyregistry".* \(autogen\.yaml:8\)$/);
  });

  it('a configuration file that does not exist, its path expanded from the environment', async () => {
    const { code, lines } = await failure(['-config', '$CONF_DIR/${NAME}.yaml'], { CONF_DIR: files.dir, NAME: 'absent' });
    expect(code).toBe(1);
    expect(lines).toEqual([`jwtproxy: cannot read configuration file "${path.join(files.dir, 'absent.yaml')}": no such file`]);
  });

  it('a port in use names the listen_addr and stops what already started', async () => {
    const occupied = await listenOnLoopback(http.createServer());
    try {
      await files.write(
        'busy.yaml',
        [
          'jwtproxy:',
          '  signer_proxy:',
          '    listen_addr: 127.0.0.1:0',
          '    signer:',
          '      private_key:',
          '        type: preshared',
          `        options: {key_id: mykey, private_key_path: ${interop.privateKeyPath}}`,
          verifierConfig().replace('jwtproxy:\n', '').replace('127.0.0.1:0', `127.0.0.1:${occupied.port}`),
        ].join('\n'),
      );
      const result = await runCli(['-config', 'busy.yaml'], { cwd: files.dir });
      expect(result.code).toBe(1);
      const errors = result.stderr.split('\n').filter((l) => l.startsWith('jwtproxy: '));
      expect(errors).toEqual([
        `jwtproxy: verifier_proxies[0].listen_addr: cannot listen on 127.0.0.1:${occupied.port}: address already in use (busy.yaml:9)`,
      ]);
      // The signer had started; it was stopped before the exit.
      expect(result.stderr).toMatch(/msg="signer proxy stopped"/);
      expect(result.stderr).not.toMatch(/msg="ready"/);
    } finally {
      await occupied.close();
    }
  });
});

describe('nothing to run', () => {
  it('logs "No proxy is enabled" and exits 1 (a service manager must see the failure)', async () => {
    await files.write('none.yaml', 'jwtproxy:\n  verifier_proxies:\n  - enabled: false\n    listen_addr: 127.0.0.1:0\nother_tool:\n  x: 1\n');
    const result = await runCli(['-config', 'none.yaml'], { cwd: files.dir });
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/^time=\S+ level=error msg="No proxy is enabled" config=\S*none\.yaml\n$/);
  });
});

describe('warnings', () => {
  it('an unknown key is logged with its key path, line and a suggestion, and does not stop the start', async () => {
    await files.write('typo.yaml', 'jwtproxy:\n  verifier_proxies:\n  - enabled: false\n    listen_adr: 127.0.0.1:0\n');
    const result = await runCli(['-config', 'typo.yaml'], { cwd: files.dir });
    expect(result.stderr).toMatch(
      /level=warn msg="unknown configuration key, ignored" key="verifier_proxies\[0\]\.listen_adr" at=typo\.yaml:4 suggestion=listen_addr\n/,
    );
    expect(result.stderr).toMatch(/msg="No proxy is enabled"/);
  });
});

describe('jwtproxy keyregistry', () => {
  it('is the key registry admin command', async () => {
    const result = await runCli(['keyregistry', '--help']);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/jwtproxy keyregistry approve SERVICE KID/);
  });
});

describe('--plugin', () => {
  it('registers a key server type and a nonce storage type that the configuration then uses, end to end', async () => {
    const upstream = await startEchoService();
    let cli: RunningCli | undefined;
    try {
      const config = await files.write(
        'plugin.yaml',
        [
          'jwtproxy:',
          '  verifier_proxies:',
          '  - listen_addr: 127.0.0.1:0',
          '    verifier:',
          `      upstream: ${upstream.url}`,
          '      audience: http://billing.internal',
          '      key_server:',
          '        type: test-keys',
          `        options: {public_key_path: ${interop.publicKeyPath}}`,
          '      nonce_storage:',
          '        type: test-counting',
          '        options: {label: from-yaml}',
          '',
        ].join('\n'),
      );
      cli = await startCli([
        '-config',
        config,
        '--plugin',
        path.join(fixtures, 'test-keys-plugin.mjs'),
        `--plugin=${path.join(fixtures, 'register-api-plugin.mjs')}`,
      ]);
      expect(cli.stderr()).toMatch(/msg="test-keys plugin: key server created"/);
      expect(cli.stderr()).toMatch(/msg="register-api plugin: nonce store created" label=from-yaml/);
      // The old form (registering in core's module-level registries on import) still works, with a warning.
      expect(cli.stderr()).toMatch(/level=warn msg="deprecated plugin form: .*" plugin=\S*test-keys-plugin\.mjs kind="key server" type=test-keys\n/);
      expect(cli.stderr()).not.toMatch(/deprecated.*register-api-plugin/);
      expect(Object.keys(cli.servers)).toEqual(['verifier_proxies[0]']);

      // A token signed with the interop key: only the plugin's key server knows its public half.
      const signer = new RequestSigner({
        issuer: 'billing',
        expirationTime: 60_000,
        maxSkew: 10_000,
        nonceLength: 32,
        keySource: PresharedPrivateKeySource.fromFile(interop.keyId, interop.privateKeyPath),
      });
      const token = await signer.sign('http://billing.internal');
      const verifier = new URL(cli.servers['verifier_proxies[0]']!);
      const send = () =>
        new Promise<{ status: number | undefined; body: string }>((resolve, reject) => {
          http
            .get({ host: verifier.hostname, port: verifier.port, path: '/hello', headers: { authorization: `Bearer ${token}` } }, (res) => {
              readBody(res).then((body) => resolve({ status: res.statusCode, body }), reject);
            })
            .on('error', reject);
        });
      const first = await send();
      expect(first.status).toBe(200);
      expect((JSON.parse(first.body) as { url: string }).url).toBe('/hello');
      await cli.waitForLog(/msg="test-keys plugin: key resolved" issuer=billing kid=mykey/);
      // The plugin's nonce store saw the jti: the same token again is a replay.
      expect(await send()).toEqual({ status: 403, body: "jwtproxy: unable to verify request: Missing or invalid 'jti' claim" });

      const stopped = await cli.stop('SIGTERM');
      expect(stopped.code).toBe(0);
      expect(stopped.stderr).toMatch(/msg="shutting down" signal=SIGTERM\n/);
      expect(stopped.stderr).toMatch(/msg="stopped"\n$/);
    } finally {
      await cli?.stop('SIGKILL');
      await upstream.close();
    }
  });

  it('without the plugin, the same type is unknown and the registered types are named', async () => {
    await files.write('plugin-missing.yaml', verifierConfig(undefined, 'type: test-keys'));
    const { code, lines } = await failure(['-config', 'plugin-missing.yaml']);
    expect(code).toBe(1);
    expect(lines[0]).toMatch(/^jwtproxy: verifier_proxies\[0\]\.verifier\.key_server\.type: unknown key server type "test-keys" \(registered: .*preshared.*\) \(config\.yaml:8\)$|plugin-missing\.yaml:8\)$/);
    expect(lines[0]).not.toMatch(/registered: .*test-keys/);
  });

  it("passes a plugin factory's option error on with the full key path and line", async () => {
    await files.write('plugin-bad.yaml', verifierConfig(undefined, 'type: test-keys\n        options: {public_key: x}'));
    const { code, lines } = await failure(['-config', 'plugin-bad.yaml', '--plugin', path.join(fixtures, 'test-keys-plugin.mjs')]);
    expect(code).toBe(1);
    expect(lines).toEqual(['jwtproxy: verifier_proxies[0].verifier.key_server.options.public_key_path: is required by the test-keys plugin (plugin-bad.yaml:9)']);
  });

  it('a plugin that cannot be loaded is one line and exit 1', async () => {
    const { code, lines } = await failure(['-config', 'config.yaml', '--plugin', './no-such-plugin.mjs']);
    expect(code).toBe(1);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^jwtproxy: cannot load plugin "\.\/no-such-plugin\.mjs": /);
  });
});
