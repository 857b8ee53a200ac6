import { generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  ConfigError,
  KeyNotFoundError,
  createRuntime,
  silentLogger,
  systemClock,
  type ComponentContext,
  type Logger,
  type SigningKey,
  type VerificationKey,
} from '@jwtproxy/core';
import { interop, makeServerCertificate } from '@jwtproxy/testkit';
import { afterAll, describe, expect, it } from 'vitest';
import { PresharedKeyServer, PresharedPrivateKeySource, presharedKeyServer, presharedPrivateKeySource } from '../src/index.js';

/** The registries as the CLI fills them. */
const { privateKeySources, keyServers } = createRuntime();
privateKeySources.register(presharedPrivateKeySource);
keyServers.register(presharedKeyServer);

const dir = mkdtempSync(path.join(tmpdir(), 'jwtproxy-key-sources-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function write(name: string, content: string): string {
  const file = path.join(dir, name);
  writeFileSync(file, content, { mode: 0o600 });
  return file;
}

function contextFor(baseDir: string, logger: Logger = silentLogger): ComponentContext {
  return { logger, clock: systemClock, baseDir };
}

function recordingLogger(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const record = (level: string) => (message: string, fields?: Record<string, unknown>) => {
    lines.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`);
  };
  return { lines, logger: { debug: record('debug'), info: record('info'), warn: record('warn'), error: record('error') } };
}

const base64url = (data: Buffer | string) => Buffer.from(data).toString('base64url');

/** A compact JWS signed with the source's key, as the signer makes it (ES* signatures in JOSE's r||s form). */
function signJws(signingKey: SigningKey, claims: Record<string, unknown>): string {
  const header = base64url(JSON.stringify({ alg: signingKey.alg, kid: signingKey.kid, typ: 'JWT' }));
  const input = `${header}.${base64url(JSON.stringify(claims))}`;
  const signature = sign('sha256', Buffer.from(input), { key: signingKey.privateKey, dsaEncoding: 'ieee-p1363' });
  return `${input}.${base64url(signature)}`;
}

function verifyJws(token: string, key: VerificationKey): boolean {
  const [header = '', payload = '', signature = ''] = token.split('.');
  const { alg } = JSON.parse(Buffer.from(header, 'base64url').toString()) as { alg: string };
  if (!(key.algorithms as readonly string[]).includes(alg)) return false;
  const digest = `sha${alg.slice(2)}`;
  return verify(digest, Buffer.from(`${header}.${payload}`), { key: key.key, dsaEncoding: 'ieee-p1363' }, Buffer.from(signature, 'base64url'));
}

async function configError(promise: Promise<unknown>): Promise<ConfigError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ConfigError);
  return error as ConfigError;
}

describe('registration', () => {
  it('exports the preshared definitions; importing the package registers nothing', async () => {
    expect(createRuntime().privateKeySources.types()).toEqual([]);
    expect(presharedPrivateKeySource.type).toBe('preshared');
    expect(presharedKeyServer.type).toBe('preshared');
    const source = await privateKeySources.create(
      { type: 'preshared', options: { key_id: 'mykey', private_key_path: interop.privateKeyPath } },
      contextFor(dir),
    );
    expect(source.activeKey().kid).toBe('mykey');
  });
});

describe('preshared private key source and key server with the Go key pair (PKCS#1)', () => {
  it('reads relative paths against baseDir, signs RS256 and the preshared key server verifies it', async () => {
    const source = await privateKeySources.create(
      { type: 'preshared', options: { key_id: 'mykey', private_key_path: 'mykey.key' } },
      contextFor(interop.dir),
    );
    const server = await keyServers.create(
      { type: 'preshared', options: { issuer: 'jwtproxy', key_id: 'mykey', public_key_path: './mykey.pub' } },
      contextFor(interop.dir),
    );
    const key = source.activeKey();
    expect(key.alg).toBe('RS256');
    expect(key.kid).toBe('mykey');
    expect(source.activeKey()).toBe(key);

    const token = signJws(key, { iss: 'jwtproxy', jti: 'x' });
    const verificationKey = await server.resolve('jwtproxy', 'mykey');
    expect(verificationKey.algorithms).toEqual(['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512']);
    expect(verifyJws(token, verificationKey)).toBe(true);
    // A token whose payload was changed after signing does not verify.
    const [h, , s] = token.split('.');
    expect(verifyJws(`${h}.${base64url('{"iss":"jwtproxy","jti":"y"}')}.${s}`, verificationKey)).toBe(false);
  });

  it('verifies the tokens the Go jwtproxy signed', async () => {
    const server = PresharedKeyServer.fromFile(interop.issuer, interop.keyId, interop.publicKeyPath);
    const vectors = interop.vectors();
    expect(vectors.length).toBeGreaterThan(0);
    for (const vector of vectors) {
      const token = vector.authorization.replace(/^Bearer /i, '');
      const key = await server.resolve(vector.claims.iss, String(vector.header.kid));
      expect(verifyJws(token, key)).toBe(true);
    }
  });

  it('matches issuer and kid case-insensitively, as the Go tool, and answers with the same cached key', async () => {
    const server = PresharedKeyServer.fromFile('JwtProxy', 'MyKey', interop.publicKeyPath);
    const first = await server.resolve('jwtproxy', 'mykey');
    expect(await server.resolve('JWTPROXY', 'MYKEY')).toBe(first);
    expect(await server.resolve('JwTpRoXy', 'mYkEy')).toBe(first);
  });

  it('rejects an unknown kid or issuer with KeyNotFoundError (403 "Could not find any matching public key")', async () => {
    const server = PresharedKeyServer.fromFile('jwtproxy', 'mykey', interop.publicKeyPath);
    await expect(server.resolve('jwtproxy', 'otherkey')).rejects.toBeInstanceOf(KeyNotFoundError);
    await expect(server.resolve('someone-else', 'mykey')).rejects.toBeInstanceOf(KeyNotFoundError);
    await expect(server.resolve('jwtproxy', 'mykey ')).rejects.toMatchObject({ code: 'ERR_KEY_NOT_FOUND', message: 'Could not find any matching public key' });
  });
});

describe('keys the test makes', () => {
  it('PKCS#8 RSA private key and RSA PUBLIC KEY (PKCS#1) public key', async () => {
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    write('rsa-pkcs8.pem', privateKey.export({ format: 'pem', type: 'pkcs8' }) as string);
    const pubFile = write('rsa-pkcs1.pub', publicKey.export({ format: 'pem', type: 'pkcs1' }) as string);
    const source = await privateKeySources.create({ type: 'preshared', options: { key_id: 'k8', private_key_path: 'rsa-pkcs8.pem' } }, contextFor(dir));
    const server = await keyServers.create({ type: 'preshared', options: { issuer: 'svc', key_id: 'k8', public_key_path: pubFile } }, contextFor('/'));
    expect(source.activeKey().alg).toBe('RS256');
    expect(verifyJws(signJws(source.activeKey(), { a: 1 }), await server.resolve('svc', 'k8'))).toBe(true);
  });

  for (const encoding of ['sec1', 'pkcs8'] as const) {
    it(`EC P-256 private key (${encoding === 'sec1' ? 'EC PRIVATE KEY' : 'PRIVATE KEY'}) signs ES256 and verifies`, async () => {
      const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      write(`ec-${encoding}.pem`, privateKey.export({ format: 'pem', type: encoding }) as string);
      write(`ec-${encoding}.pub`, publicKey.export({ format: 'pem', type: 'spki' }) as string);
      const source = await privateKeySources.create(
        { type: 'preshared', options: { key_id: 'ec', private_key_path: `ec-${encoding}.pem` } },
        contextFor(dir),
      );
      const server = await keyServers.create(
        { type: 'preshared', options: { issuer: 'svc', key_id: 'ec', public_key_path: `ec-${encoding}.pub` } },
        contextFor(dir),
      );
      expect(source.activeKey().alg).toBe('ES256');
      const key = await server.resolve('svc', 'ec');
      expect(key.algorithms).toEqual(['ES256']);
      expect(verifyJws(signJws(source.activeKey(), { a: 1 }), key)).toBe(true);
      // An RS256 header over the same key is refused: the algorithms come from the key.
      const other = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
      expect(verifyJws(signJws({ kid: 'ec', alg: 'ES256', privateKey: other }, { a: 1 }), key)).toBe(false);
    });
  }

  it('the key server reads the public key of a certificate', async () => {
    const pem = makeServerCertificate(['localhost']);
    write('server.crt', pem.cert);
    write('server.key', pem.key);
    const source = await privateKeySources.create({ type: 'preshared', options: { key_id: 'crt', private_key_path: 'server.key' } }, contextFor(dir));
    const server = await keyServers.create({ type: 'preshared', options: { issuer: 'svc', key_id: 'crt', public_key_path: 'server.crt' } }, contextFor(dir));
    expect(verifyJws(signJws(source.activeKey(), { a: 1 }), await server.resolve('SVC', 'CRT'))).toBe(true);
  });

  it('programmatic use with KeyObjects', async () => {
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const source = new PresharedPrivateKeySource({ keyId: 'p', privateKey });
    const server = new PresharedKeyServer({ issuer: 'i', keyId: 'p', publicKey });
    expect(verifyJws(signJws(source.activeKey(), {}), await server.resolve('i', 'p'))).toBe(true);
    expect(() => new PresharedPrivateKeySource({ keyId: 'p', privateKey: publicKey as KeyObject })).toThrow(TypeError);
  });
});

describe('bad configuration is a ConfigError naming the option', () => {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const privatePem = rsa.privateKey.export({ format: 'pem', type: 'pkcs1' }) as string;
  const publicPem = rsa.publicKey.export({ format: 'pem', type: 'spki' }) as string;

  it('a missing private key file', async () => {
    const error = await configError(
      privateKeySources.create({ type: 'preshared', options: { key_id: 'k', private_key_path: 'nope/missing.pem' } }, contextFor(dir)),
    );
    expect(error.path).toBe('private_key_path');
    expect(error.message).toBe(`private_key_path: cannot read ${path.join(dir, 'nope/missing.pem')}: ENOENT`);
  });

  it('a file that is not a key, a public key, or a broken PEM body given as private key', async () => {
    const cases: Array<[string, string, RegExp]> = [
      ['notes.txt', 'just some text\n', /holds no PEM private key .*no PEM block found/],
      ['public-as-private.pem', publicPem, /holds no PEM private key .*found PUBLIC KEY/],
      ['broken.pem', '-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n', /holds no usable private key/],
    ];
    for (const [name, content, message] of cases) {
      write(name, content);
      const error = await configError(
        privateKeySources.create({ type: 'preshared', options: { key_id: 'k', private_key_path: name } }, contextFor(dir)),
      );
      expect(error.path).toBe('private_key_path');
      expect(error.message).toMatch(message);
    }
  });

  it('a private key, a missing file or a non-key given as public_key_path', async () => {
    write('private-as-public.pem', privatePem);
    write('notes2.txt', 'hello');
    const cases: Array<[string, RegExp]> = [
      ['private-as-public.pem', /holds a private key; give the public key/],
      ['notes2.txt', /holds no PEM public key/],
      ['missing.pub', /cannot read .*missing.pub: ENOENT/],
    ];
    for (const [name, message] of cases) {
      const error = await configError(
        keyServers.create({ type: 'preshared', options: { issuer: 'i', key_id: 'k', public_key_path: name } }, contextFor(dir)),
      );
      expect(error.path).toBe('public_key_path');
      expect(error.message).toMatch(message);
    }
  });

  it('missing, empty, non-string and unknown options', async () => {
    const file = write('ok.pem', privatePem);
    const create = (options: Record<string, unknown>) => configError(privateKeySources.create({ type: 'preshared', options }, contextFor(dir)));
    expect(await create({ private_key_path: file })).toMatchObject({ path: 'key_id', message: 'key_id: is required' });
    expect(await create({ key_id: '', private_key_path: file })).toMatchObject({ path: 'key_id' });
    expect(await create({ key_id: 'k' })).toMatchObject({ path: 'private_key_path', message: 'private_key_path: is required' });
    expect(await create({ key_id: 7, private_key_path: file })).toMatchObject({ path: 'key_id', message: 'key_id: must be a string, got number' });
    expect(await create({ key_id: 'k', private_key_path: file, privat_key_path: 'x' })).toMatchObject({ path: 'privat_key_path' });
    const server = (options: Record<string, unknown>) => configError(keyServers.create({ type: 'preshared', options }, contextFor(dir)));
    expect(await server({ key_id: 'k', public_key_path: 'x' })).toMatchObject({ path: 'issuer' });
  });

  it('never logs key material', async () => {
    const { logger, lines } = recordingLogger();
    const file = write('logged.pem', privatePem);
    write('logged.pub', publicPem);
    await privateKeySources.create({ type: 'preshared', options: { key_id: 'k', private_key_path: file } }, contextFor(dir, logger));
    await keyServers.create({ type: 'preshared', options: { issuer: 'i', key_id: 'k', public_key_path: 'logged.pub' } }, contextFor(dir, logger));
    expect(lines.length).toBe(2);
    const body = (pem: string) => pem.split('\n').filter((line) => line && !line.startsWith('-----'));
    for (const line of lines) {
      for (const chunk of [...body(privatePem), ...body(publicPem)]) expect(line).not.toContain(chunk.slice(0, 24));
      expect(line).not.toContain('BEGIN');
    }
  });
});
