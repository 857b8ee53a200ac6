import { createPublicKey, verify } from 'node:crypto';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  KeyPublishRejectedError,
  KeyRegistryClient,
  KeyRegistryPublisher,
  KeyRegistryUnavailableError,
  PublishedKeyExpiredError,
  PublishedKeyNotFoundError,
  keyRegistryPublisherFromConfig,
} from '../src/index.js';
import { recordingLogger, rsaKey, signAndVerify, type TestKey } from './helpers.js';
import { startQuayLikeRegistry, type QuayLikeRegistry } from '@jwtproxy/testkit';

const ISSUER = 'billing';
let first: TestKey;
let second: TestKey;
let registry: QuayLikeRegistry;
const stoppables: { stop(): Promise<void> }[] = [];

function publisher(options: Partial<ConstructorParameters<typeof KeyRegistryPublisher>[0]> = {}): KeyRegistryPublisher {
  const made = new KeyRegistryPublisher({ registry: registry.url, issuer: ISSUER, pollInterval: 20, ...options });
  stoppables.push(made);
  return made;
}

function decode(token: string): { header: Record<string, unknown>; claims: Record<string, unknown>; input: string; signature: Buffer } {
  const [h, c, s] = token.split('.') as [string, string, string];
  return {
    header: JSON.parse(Buffer.from(h, 'base64url').toString()) as Record<string, unknown>,
    claims: JSON.parse(Buffer.from(c, 'base64url').toString()) as Record<string, unknown>,
    input: `${h}.${c}`,
    signature: Buffer.from(s, 'base64url'),
  };
}

const bearerOf = (authorization: string | undefined): string => /^Bearer (.+)$/.exec(authorization ?? '')![1]!;
const until = async (condition: () => boolean): Promise<void> => {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 5));
};

beforeAll(() => {
  first = rsaKey('first-key');
  second = rsaKey('second-key');
});

beforeEach(async () => {
  registry = await startQuayLikeRegistry();
});

afterEach(async () => {
  await Promise.all(stoppables.splice(0).map((s) => s.stop()));
  await registry.stop();
});

describe('KeyRegistryPublisher against a registry that answers as Quay does', () => {
  it('publishes a new key (202 pending), waits while the registry answers 409, and resolves once approved', async () => {
    const keys = publisher();
    const expiration = new Date(Date.now() + 3_600_000);
    expect(await keys.publish({ kid: first.kid, privateKey: first.privateKey }, { expiration, rotation: 1800 })).toBe('pending');

    const put = registry.seen.at(-1)!;
    expect(put.method).toBe('PUT');
    expect(put.path).toBe(`/services/${ISSUER}/keys/${first.kid}`);
    expect(put.query.get('expiration')).toBe(String(Math.floor(expiration.getTime() / 1000)));
    expect(put.query.get('rotation')).toBe('1800');
    expect(put.contentType).toBe('application/json');
    const body = JSON.parse(put.body) as Record<string, unknown>;
    expect(body).toEqual({ ...first.jwk, kid: first.kid, use: 'sig', alg: 'RS256' });
    expect(registry.get(ISSUER, first.kid)).toMatchObject({ approved: false, rotation: '1800' });
    expect(await keys.getKeyStatus(ISSUER, first.kid)).toBe('pending');

    const approval = keys.waitForApproval(ISSUER, first.kid);
    await until(() => registry.lookupsOf(ISSUER, first.kid) >= 4);
    registry.approve(ISSUER, first.kid);
    expect(await approval).toBe('approved');

    // The approved key is what verifiers now find.
    const reader = new KeyRegistryClient({ registry: registry.url });
    stoppables.push(reader);
    await signAndVerify(reader, ISSUER, first.signing);
  });

  it('signs the publishing token RS256 with the new key: kid, iss, aud = registry scheme://host, short life, 32-char jti', async () => {
    const keys = publisher();
    const before = Math.floor(Date.now() / 1000);
    await keys.publish({ kid: first.kid, privateKey: first.privateKey, publicJwk: first.jwk });
    const token = decode(bearerOf(registry.seen.at(-1)!.authorization));
    expect(token.header).toEqual({ alg: 'RS256', kid: first.kid, typ: 'JWT' });
    expect(verify('sha256', Buffer.from(token.input), first.publicKey, token.signature)).toBe(true);
    const { iss, aud, iat, nbf, exp, jti } = token.claims as Record<string, number | string>;
    expect(iss).toBe(ISSUER);
    expect(aud).toBe(registry.audience);
    expect(aud).toBe(`http://127.0.0.1:${registry.port}`);
    expect(iat).toBeGreaterThanOrEqual(before);
    expect(nbf).toBe((iat as number) - 60);
    expect(exp).toBe((iat as number) + 300);
    expect(jti).toMatch(/^[A-Za-z0-9+/]{32}$/);
  });

  it('rotates: a new key signed by the approved key is approved at once (200) and the registry drops the old key', async () => {
    const keys = publisher();
    await keys.publish({ kid: first.kid, privateKey: first.privateKey });
    registry.approve(ISSUER, first.kid);
    expect(await keys.publish({ kid: second.kid, privateKey: second.privateKey }, { signWith: first.signing, rotation: 60 })).toBe('approved');

    const token = decode(bearerOf(registry.seen.at(-1)!.authorization));
    expect(token.header.kid).toBe(first.kid);
    expect(verify('sha256', Buffer.from(token.input), first.publicKey, token.signature)).toBe(true);
    expect(await keys.getKeyStatus(ISSUER, first.kid)).toBe('not-found');
    expect(await keys.getKeyStatus(ISSUER, second.kid)).toBe('approved');
  });

  it('is refused (403) when a rotation is signed by a key that is not approved', async () => {
    const keys = publisher();
    await keys.publish({ kid: first.kid, privateKey: first.privateKey });
    const error = await keys.publish({ kid: second.kid, privateKey: second.privateKey }, { signWith: first.signing }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KeyPublishRejectedError);
    expect(error).toMatchObject({ code: 'ERR_KEY_REGISTRY_REJECTED', status: 403, operation: 'publish' });
  });

  it('is refused (400) when the token is not signed by the published key', async () => {
    const keys = publisher();
    const error = await keys
      .publish({ kid: first.kid, privateKey: first.privateKey, publicJwk: second.jwk })
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'ERR_KEY_REGISTRY_REJECTED', status: 400 });
    expect(registry.get(ISSUER, first.kid)).toBeUndefined();
  });

  it('never sends a JWK with private members', async () => {
    const keys = publisher();
    const privateJwk = first.privateKey.export({ format: 'jwk' });
    await expect(keys.publish({ kid: first.kid, privateKey: first.privateKey, publicJwk: privateJwk })).rejects.toThrow(/private member "d"/);
    expect(registry.seen).toHaveLength(0);
  });

  it('deletes a key with a token signed by that key (204)', async () => {
    const keys = publisher();
    await keys.publish({ kid: first.kid, privateKey: first.privateKey });
    await keys.delete(ISSUER, first.kid, first.signing); // a pending key, as at shutdown
    const del = registry.seen.at(-1)!;
    expect(del.method).toBe('DELETE');
    expect(decode(bearerOf(del.authorization)).claims).toMatchObject({ iss: ISSUER, aud: registry.audience });
    expect(await keys.getKeyStatus(ISSUER, first.kid)).toBe('not-found');
    // A key the registry does not know cannot sign: Quay answers 403.
    await expect(keys.delete(ISSUER, first.kid, first.signing)).rejects.toMatchObject({ code: 'ERR_KEY_REGISTRY_REJECTED', status: 403, operation: 'delete' });
  });

  it('reports each status: approved, pending, expired, not-found', async () => {
    const keys = publisher();
    registry.addApproved(ISSUER, 'ok', first.jwk);
    registry.addApproved(ISSUER, 'old', first.jwk, Math.floor(Date.now() / 1000) - 1);
    await keys.publish({ kid: first.kid, privateKey: first.privateKey });
    expect(await keys.getKeyStatus(ISSUER, 'ok')).toBe('approved');
    expect(await keys.getKeyStatus(ISSUER, first.kid)).toBe('pending');
    expect(await keys.getKeyStatus(ISSUER, 'old')).toBe('expired');
    expect(await keys.getKeyStatus(ISSUER, 'none')).toBe('not-found');
    registry.failWith = 503;
    await expect(keys.getKeyStatus(ISSUER, 'ok')).rejects.toMatchObject({ code: 'ERR_KEY_REGISTRY_UNAVAILABLE', status: 503 });
  });
});

describe('waitForApproval', () => {
  it('rejects with PublishedKeyExpiredError when the key expires while waiting (403)', async () => {
    const keys = publisher();
    await keys.publish({ kid: first.kid, privateKey: first.privateKey });
    registry.get(ISSUER, first.kid)!.approved = true;
    registry.get(ISSUER, first.kid)!.expiration = Math.floor(Date.now() / 1000) - 1;
    const error = await keys.waitForApproval(ISSUER, first.kid).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PublishedKeyExpiredError);
    expect((error as Error).message).toBe('Public key has expired; delete or renew it');
  });

  it('rejects with PublishedKeyNotFoundError when the key is rejected or deleted while waiting (404)', async () => {
    const keys = publisher();
    await keys.publish({ kid: first.kid, privateKey: first.privateKey });
    const approval = keys.waitForApproval(ISSUER, first.kid);
    await until(() => registry.lookupsOf(ISSUER, first.kid) >= 2);
    registry.keys.clear();
    await expect(approval).rejects.toBeInstanceOf(PublishedKeyNotFoundError);
  });

  it('keeps waiting through a registry outage, logging it once, and resolves after approval', async () => {
    const logger = recordingLogger();
    const keys = publisher({ logger });
    await keys.publish({ kid: first.kid, privateKey: first.privateKey });
    registry.failWith = 500;
    const approval = keys.waitForApproval(ISSUER, first.kid);
    await until(() => registry.lookupsOf(ISSUER, first.kid) >= 5);
    registry.failWith = undefined;
    registry.approve(ISSUER, first.kid);
    expect(await approval).toBe('approved');
    expect(logger.lines.filter((l) => l.level === 'warn')).toHaveLength(1);
  });

  it('stops promptly with the signal reason when aborted, and when the publisher stops', async () => {
    const keys = publisher({ pollInterval: 60_000 });
    await keys.publish({ kid: first.kid, privateKey: first.privateKey });
    const controller = new AbortController();
    const approval = keys.waitForApproval(ISSUER, first.kid, { signal: controller.signal });
    await until(() => registry.lookupsOf(ISSUER, first.kid) >= 1);
    const reason = new Error('shutting down');
    controller.abort(reason);
    await expect(approval).rejects.toBe(reason);

    const other = keys.waitForApproval(ISSUER, first.kid).catch((e: unknown) => e);
    await until(() => registry.lookupsOf(ISSUER, first.kid) >= 2);
    await keys.stop();
    expect(await other).toMatchObject({ message: 'key registry publisher stopped' });
  });
});

describe('failures and configuration', () => {
  it('rejects with KeyRegistryUnavailableError when the registry cannot be reached', async () => {
    const keys = publisher();
    await registry.stop();
    const error = await keys.publish({ kid: first.kid, privateKey: first.privateKey }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KeyRegistryUnavailableError);
    expect((error as Error).message).toContain('key registry unavailable (publish)');
  });

  it('is built from the signer key_server options with the signer issuer', async () => {
    const keys = keyRegistryPublisherFromConfig({ registry: registry.url, timeout: '2s', poll_interval: '10ms' }, { issuer: ISSUER, logger: recordingLogger() });
    stoppables.push(keys);
    expect(keys.issuer).toBe(ISSUER);
    expect(await keys.publish({ kid: first.kid, privateKey: first.privateKey })).toBe('pending');
    expect(() => keyRegistryPublisherFromConfig({ registry: registry.url, poll_interval: 'often' }, { issuer: ISSUER, logger: recordingLogger() })).toThrow(
      /poll_interval/,
    );
  });

  it('signs with an EC key as ES256 for registries that accept it (Quay does not: 400)', async () => {
    const { generateKeyPairSync } = await import('node:crypto');
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const keys = publisher();
    await expect(keys.publish({ kid: 'ec', privateKey })).rejects.toMatchObject({ status: 400 });
    const token = decode(bearerOf(registry.seen.at(-1)!.authorization));
    expect(token.header.alg).toBe('ES256');
    expect(verify('sha256', Buffer.from(token.input), { key: createPublicKey(privateKey), dsaEncoding: 'ieee-p1363' }, token.signature)).toBe(true);
  });
});
