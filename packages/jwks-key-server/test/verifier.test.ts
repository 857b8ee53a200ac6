/**
 * The jwks key server under a real verifier (@jwtproxy/reverse-proxy's startVerifierProxy with
 * core's RequestVerifier) in front of an echo service, against a JWKS publisher on 127.0.0.1:
 * rotation of the set under load, the source going down, and a crowd of unknown-kid tokens.
 */
import { silentLogger, type RunningProxy, type SigningKey } from '@jwtproxy/core';
import { startVerifierProxy, type VerifierProxyOptions } from '@jwtproxy/reverse-proxy';
import { startEchoService } from '@jwtproxy/testkit';
import { Pool } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { JwksKeyServer, type JwksKeyServerOptions } from '../src/index.js';
import { makeKey, recordingLogger, signerFor, sleep, startJwksServer, verifierFor, type JwksServer } from './helpers.js';

/** What the access log writes a line from. */
type AccessRecord = Parameters<NonNullable<VerifierProxyOptions['onAccess']>>[0];

const ISSUER = 'billing';
const NOT_FOUND = 'jwtproxy: unable to verify request: Could not find any matching public key';
const cleanups: Array<() => Promise<unknown>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

interface Setup {
  source: JwksServer;
  keyServer: JwksKeyServer;
  proxy: RunningProxy;
  pool: Pool;
  records: AccessRecord[];
  /** GET / through the verifier with this Authorization; status and body. */
  send(authorization: string): Promise<{ status: number; body: string }>;
}

async function setup(keys: Record<string, unknown>[], cacheControl: string, options: Partial<JwksKeyServerOptions> = {}, connections = 16): Promise<Setup> {
  const source = await startJwksServer(keys, cacheControl);
  cleanups.push(() => source.close());
  const echo = await startEchoService();
  cleanups.push(() => echo.close());
  const keyServer = new JwksKeyServer({ url: source.url, issuers: [ISSUER], ...options });
  cleanups.push(() => keyServer.stop());
  const records: AccessRecord[] = [];
  const proxy = await startVerifierProxy({
    listenAddr: '127.0.0.1:0',
    upstream: echo.url,
    verifier: verifierFor(keyServer),
    shutdownTimeout: 2_000,
    logger: silentLogger,
    onAccess: (record) => records.push(record),
  });
  cleanups.push(() => proxy.stop());
  const pool = new Pool(proxy.address, { connections });
  cleanups.push(() => pool.destroy());
  const send = async (authorization: string) => {
    const response = await pool.request({ method: 'GET', path: '/', headers: { authorization } });
    return { status: response.statusCode, body: await response.body.text() };
  };
  return { source, keyServer, proxy, pool, records, send };
}

describe('a verifier with a jwks key server', () => {
  it('rotation of the set under load: add a key, sign with it at once, remove the old one; zero failures', async () => {
    const k1 = makeKey('k1');
    const k2 = makeKey('k2', 'ec');
    const { source, keyServer, send } = await setup([k1.jwk], 'max-age=1', { minCacheDuration: 1_000, unknownKidRefetchInterval: 1_000 });
    let current: SigningKey = k1.signing;
    const signer = signerFor(ISSUER, () => current);
    const byKid = new Map<string, number>();
    const failures: string[] = [];
    let running = true;
    const worker = async (): Promise<void> => {
      while (running) {
        const signedWith = current.kid;
        const answer = await send(await signer.authorizationFor('http://verifier.test:8082'));
        if (answer.status === 200) byKid.set(signedWith, (byKid.get(signedWith) ?? 0) + 1);
        else failures.push(`${signedWith}: ${answer.status} ${answer.body}`);
      }
    };
    const workers = Array.from({ length: 8 }, worker);
    /** Waits until `kid` has had `count` more requests passed (bounded: 20 s). */
    const passedMore = async (kid: string, count: number): Promise<void> => {
      const target = (byKid.get(kid) ?? 0) + count;
      const end = Date.now() + 20_000;
      while ((byKid.get(kid) ?? 0) < target && Date.now() < end && failures.length === 0) await sleep(20);
    };
    await passedMore('k1', 100);
    // Publish k2 and sign with it at once: the first k2 token makes the verifier read the set again.
    source.keys = [k1.jwk, k2.jwk];
    current = k2.signing;
    await passedMore('k2', 100);
    // Retire k1: the verifier drops it at its next background read (max-age=1).
    source.keys = [k2.jwk];
    const retireBy = Date.now() + 10_000;
    while (keyServer.status().kids.join() !== 'k2' && Date.now() < retireBy) await sleep(20);
    await passedMore('k2', 100);
    running = false;
    await Promise.all(workers);

    expect(failures).toEqual([]);
    expect(keyServer.status().kids).toEqual(['k2']);
    expect(byKid.get('k1')).toBeGreaterThanOrEqual(100);
    expect(byKid.get('k2')).toBeGreaterThanOrEqual(200);
    console.log(`rotation: ${byKid.get('k1')} requests with k1, ${byKid.get('k2')} with k2, 0 failures, ${source.setGets} GETs of the set`);
  });

  it('source down: a cached key keeps working; an unknown kid gets 403, and the access record says why', async () => {
    const k1 = makeKey('k1');
    const rogue = makeKey('rogue');
    const logger = recordingLogger();
    const { source, keyServer, records, send } = await setup([k1.jwk], 'max-age=1', { minCacheDuration: 1_000, unknownKidRefetchInterval: 1_000, logger });
    expect((await send(await signerFor(ISSUER, () => k1.signing).authorizationFor('http://verifier.test:8082'))).status).toBe(200);
    await source.close();
    // Past the set's expiry, with its source gone.
    await sleep(1_500);
    expect(Date.now()).toBeGreaterThan(keyServer.status().expiresAt!);
    for (let i = 0; i < 20; i++) {
      expect((await send(await signerFor(ISSUER, () => k1.signing).authorizationFor('http://verifier.test:8082'))).status).toBe(200);
    }
    const refused = await send(await signerFor(ISSUER, () => rogue.signing).authorizationFor('http://verifier.test:8082'));
    expect(refused).toEqual({ status: 403, body: NOT_FOUND });
    const record = records.at(-1)!;
    expect(record.verdict).toBe('refused');
    expect(record.reason).toBe('ERR_KEY_NOT_FOUND');
    expect(record.facts).toMatchObject({ key_server: 'jwks', jwks: source.url, problem: 'kid not in the JWK set', kid: 'rogue', keys: 1 });
    expect(String(record.facts!.last_error)).toMatch(/^ERR_JWKS_UNAVAILABLE: no answer: ECONNREFUSED$/);
    expect(logger.lines.some((line) => line.level === 'warn' && line.fields.code === 'ERR_JWKS_UNAVAILABLE')).toBe(true);
  });

  it('1,000 concurrent requests at a verifier that has read no set yet cause one read; 1,000 with one unknown kid one more', async () => {
    const k1 = makeKey('k1', 'ec');
    const rogue = makeKey('rogue', 'ec');
    const { source, send } = await setup([k1.jwk], 'max-age=300', {}, 1_000);
    // A slow source: every request arrives while the read is under way.
    source.delayMs = 500;
    const sign = (key: { signing: SigningKey }) =>
      Promise.all(Array.from({ length: 1_000 }, () => signerFor(ISSUER, () => key.signing).authorizationFor('http://verifier.test:8082')));

    const good = await sign(k1);
    const passed = await Promise.all(good.map(send));
    expect(passed.filter((answer) => answer.status === 200)).toHaveLength(1_000);
    expect(source.setGets).toBe(1);

    const unknown = await sign(rogue);
    const refused = await Promise.all(unknown.map(send));
    expect(refused.filter((answer) => answer.status === 403 && answer.body === NOT_FOUND)).toHaveLength(1_000);
    expect(source.setGets).toBe(2);
  });
});
