/** `jwtproxy keyregistry list|approve|revoke` against a real registry, in-process and as real processes. */
import { execFile } from 'node:child_process';
import { generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { PassThrough } from 'node:stream';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { MemoryKeyStore, startKeyRegistryServer, type RunningKeyRegistry } from '@jwtproxy/keyregistry-server';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runKeyRegistryCommand, startKeyRegistryFromConfig } from '../src/keyregistry-command.js';
import { startCli, tempDir } from './helpers.js';

const adminToken = 'cli-admin-token-0123456789abcdef';
let registry: RunningKeyRegistry;

beforeAll(async () => {
  registry = await startKeyRegistryServer({ listenAddr: '127.0.0.1:0', store: new MemoryKeyStore(), adminToken });
});
afterAll(() => registry?.stop());

/** Publishes a fresh self-signed P-256 key as a signer would; resolves its kid. */
async function publish(baseUrl: string, aud: string, service: string): Promise<string> {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const kid = `k-${randomBytes(6).toString('hex')}`;
  const now = Math.floor(Date.now() / 1000);
  const part = (value: object) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const input = `${part({ alg: 'ES256', kid, typ: 'JWT' })}.${part({ iss: service, aud, iat: now, nbf: now - 60, exp: now + 300, jti: randomBytes(16).toString('hex') })}`;
  const token = `${input}.${sign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`;
  const response = await fetch(`${baseUrl}/services/${service}/keys/${kid}?expiration=${now + 3600}`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify(publicKey.export({ format: 'jwk' })),
  });
  expect(response.status).toBe(202);
  return kid;
}

async function run(argv: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
  stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
  const code = await runKeyRegistryCommand(argv, { stdout, stderr, env });
  return { code, stdout: out, stderr: err };
}

describe('jwtproxy keyregistry (admin commands)', () => {
  it('lists pending keys as a table, approves one, and revokes it', async () => {
    const service = `svc-${randomBytes(4).toString('hex')}`;
    const kid = await publish(registry.address, registry.publicUrl, service);
    const flags = ['--url', registry.address, '--token', adminToken];

    const listed = await run(['list', ...flags, '--service', service]);
    expect(listed.code).toBe(0);
    expect(listed.stdout.split('\n')[0]).toMatch(/^SERVICE\s+KID\s+STATE\s+ALG\s+CREATED\s+EXPIRES\s+APPROVED BY$/);
    expect(listed.stdout).toMatch(new RegExp(`${service}\\s+${kid}\\s+pending\\s+ES256`));

    const approved = await run(['approve', service, kid, `--url=${registry.address}`], { JWTPROXY_REGISTRY_TOKEN: adminToken });
    expect(approved).toMatchObject({ code: 0, stderr: '' });
    expect(approved.stdout).toMatch(new RegExp(`^approved ${service}/${kid} \\(expires `));
    expect((await fetch(`${registry.address}/services/${service}/keys/${kid}`)).status).toBe(200);

    const json = await run(['list', ...flags, '--state', 'approved', '--json', '--service', service]);
    expect(JSON.parse(json.stdout)).toMatchObject([{ service, kid, state: 'approved', approvedBy: 'admin' }]);

    expect((await run(['revoke', service, kid, ...flags])).code).toBe(0);
    expect((await fetch(`${registry.address}/services/${service}/keys/${kid}`)).status).toBe(404);
    expect((await run(['list', ...flags, '--service', service])).stdout).toBe('no keys\n');
  });

  it('exits 1 with the registry\'s reason when it refuses or cannot be reached', async () => {
    const wrongToken = await run(['list', '--url', registry.address, '--token', 'wrong-token-wrong-token']);
    expect(wrongToken.code).toBe(1);
    expect(wrongToken.stderr).toMatch(/^jwtproxy keyregistry: a valid admin token is required/);
    const unknown = await run(['approve', 'svc', 'nosuchkey', '--url', registry.address, '--token', adminToken]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/no key "nosuchkey" for service "svc"/);
    const unreachable = await run(['list', '--url', 'http://127.0.0.1:1', '--token', adminToken]);
    expect(unreachable.code).toBe(1);
    expect(unreachable.stderr).toMatch(/cannot reach the key registry at http:\/\/127\.0\.0\.1:1/);
  });

  it('exits 2 on usage mistakes, and prints help', async () => {
    const url = ['--url', registry.address];
    expect((await run(['list'])).stderr).toMatch(/no registry URL/);
    expect((await run(['list', ...url])).stderr).toMatch(/no admin token/);
    expect((await run(['frobnicate'])).code).toBe(2);
    expect((await run(['approve', 'only-service', ...url, '--token', adminToken])).code).toBe(2);
    expect((await run(['list', '--bogus'])).code).toBe(2);
    expect((await run(['list', ...url, '--token', adminToken, '--state', 'sleeping'])).code).toBe(2);
    expect((await run(['approve', '..', 'k', ...url, '--token', adminToken])).code).toBe(2);
    const help = await run(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/jwtproxy keyregistry approve SERVICE KID/);
  });

  it('startKeyRegistryFromConfig starts a registry from the raw YAML block, and skips a disabled one', async () => {
    const dir = await tempDir();
    try {
      const logger = { debug() {}, info() {}, warn() {}, error() {} };
      expect(await startKeyRegistryFromConfig({ enabled: false }, dir.dir, logger)).toBeUndefined();
      const running = await startKeyRegistryFromConfig({ listen_addr: '127.0.0.1:0', storage: { type: 'file', options: { path: 'keys.json' } }, admin_token: adminToken }, dir.dir, logger);
      try {
        await publish(running!.address, running!.publicUrl, 'from-config');
        expect((await run(['list', '--url', running!.address, '--token', adminToken])).stdout).toMatch(/from-config/);
      } finally {
        await running!.stop();
      }
    } finally {
      await dir.cleanup();
    }
  });

  it('works as real processes: a registry run by `jwtproxy -config` from the YAML, administered from another process', async () => {
    const dir = await tempDir();
    await dir.write('admin.token', `${adminToken}\n`);
    const config = await dir.write(
      'config.yaml',
      ['jwtproxy:', '  keyregistry:', '    listen_addr: 127.0.0.1:0', '    storage:', '      type: file', '      options:', '        path: state/keys.json', '    admin_token_file: admin.token', ''].join('\n'),
    );
    const cli = await startCli(['-config', config]);
    try {
      const address = cli.servers.keyregistry!;
      expect(address).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      const kid = await publish(address, address, 'processes');
      const command = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../dist/keyregistry-command.js');
      const script = `import(${JSON.stringify(command)}).then((m) => m.runKeyRegistryCommand(process.argv.slice(1))).then((code) => process.exit(code))`;
      const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script, 'approve', 'processes', kid, '--url', address], {
        env: { ...process.env, JWTPROXY_REGISTRY_TOKEN: adminToken },
      });
      expect(stdout).toMatch(new RegExp(`^approved processes/${kid}`));
      expect((await fetch(`${address}/services/processes/keys/${kid}`)).status).toBe(200);
    } finally {
      await cli.stop();
      await dir.cleanup();
    }
  });
});
