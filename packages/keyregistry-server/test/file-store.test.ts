import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileKeyStore, KeyRegistryAdminClient, startKeyRegistryServer, type RunningKeyRegistry } from '../src/index.js';
import { call, ecKey, keyUrl, putKey, registryToken, rsaKey, spawnRegistry, uniqueName, type PublisherKey } from './support.js';

const adminToken = 'file-store-admin-token-0123456789';
let directory: string;
let file: string;
const started: RunningKeyRegistry[] = [];

async function start(): Promise<RunningKeyRegistry> {
  const running = await startKeyRegistryServer({ listenAddr: '127.0.0.1:0', publicUrl: 'http://registry.test', storage: { type: 'file', path: file }, adminToken });
  started.push(running);
  return running;
}

beforeEach(async () => {
  directory = await mkdtemp(path.join(os.tmpdir(), 'keyregistry-file-'));
  file = path.join(directory, 'state', 'keys.json');
});

afterEach(async () => {
  await Promise.all(started.splice(0).map((running) => running.stop()));
  await rm(directory, { recursive: true, force: true });
});

const aud = 'http://registry.test';

describe('file store', () => {
  it('a registry restarted on the same file serves every key, in the same state, and still refuses replayed tokens', async () => {
    const first = await start();
    const admin = new KeyRegistryAdminClient({ url: first.address, token: adminToken });
    const service = uniqueName('svc');
    const approved: PublisherKey[] = [];
    const pending: PublisherKey[] = [];
    for (let i = 0; i < 30; i++) {
      const key = await ecKey();
      expect((await putKey(first.address, aud, service, key)).status).toBe(202);
      if (i % 3 === 0) pending.push(key);
      else {
        await admin.approve(service, key.kid);
        approved.push(key);
      }
    }
    const signer = approved.pop()!;
    const rotated = await rsaKey();
    expect((await putKey(first.address, aud, service, rotated, { signer })).status).toBe(200);
    approved.push(rotated);
    const replayable = await registryToken(pending[0]!, { iss: service, aud });
    expect((await putKey(first.address, aud, service, pending[0]!, { token: replayable })).status).toBe(202);
    const before = (await call(`${first.address}/services/${service}/keys`)).json() as { keys: unknown[] };
    await first.stop();

    const second = await start();
    for (const key of approved) {
      const answer = await call(keyUrl(second.address, service, key.kid));
      expect(answer.status).toBe(200);
      expect(answer.json()).toMatchObject(key.alg === 'ES256' ? { x: key.jwk.x, y: key.jwk.y } : { n: key.jwk.n });
    }
    for (const key of pending) expect((await call(keyUrl(second.address, service, key.kid))).status).toBe(409);
    expect((await call(keyUrl(second.address, service, signer.kid))).status).toBe(404);
    expect((await call(`${second.address}/services/${service}/keys`)).json()).toEqual(before);
    expect((await putKey(second.address, aud, service, pending[0]!, { token: replayable })).status).toBe(400);
  });

  it('a registry killed (SIGKILL) right after answering still has the key at the next start: an answer means it is on disk', async () => {
    const service = uniqueName('svc');
    const child = await spawnRegistry({ listenAddr: '127.0.0.1:0', publicUrl: aud, storage: { type: 'file', path: file }, adminToken });
    const keys = await Promise.all(Array.from({ length: 50 }, () => ecKey()));
    const answers = await Promise.all(keys.map((key) => putKey(child.address, aud, service, key)));
    expect(answers.map((a) => a.status)).toEqual(keys.map(() => 202));
    await new KeyRegistryAdminClient({ url: child.address, token: adminToken }).approve(service, keys[0]!.kid);
    await child.kill();

    const restarted = await start();
    expect((await call(keyUrl(restarted.address, service, keys[0]!.kid))).status).toBe(200);
    for (const key of keys.slice(1)) expect((await call(keyUrl(restarted.address, service, key.kid))).status).toBe(409);
  });

  it('keeps a snapshot and a journal, both mode 0600, leaving no temporary files; after a stop the snapshot alone holds everything', async () => {
    const running = await start();
    const service = uniqueName('svc');
    await Promise.all(Array.from({ length: 20 }, async () => putKey(running.address, aud, service, await ecKey())));
    const names = await readdir(path.dirname(file));
    expect(names.sort()).toEqual(['keys.json', 'keys.json.journal', 'keys.json.lock']);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect((await stat(`${file}.journal`)).mode & 0o777).toBe(0o600);
    // Each publication is a line of its own (its token id and its key), not a rewrite of the file.
    const lines = (await readFile(`${file}.journal`, 'utf8')).trimEnd().split('\n').map((line) => JSON.parse(line) as { seq: number; type: string });
    expect(lines.filter((line) => line.type === 'keys')).toHaveLength(20);
    expect(lines.filter((line) => line.type === 'token')).toHaveLength(20);
    expect(lines.map((line) => line.seq)).toEqual(lines.map((_, index) => lines[0]!.seq + index));
    await running.stop();
    expect(await readdir(path.dirname(file))).toEqual(['keys.json']);
    const saved = JSON.parse(await readFile(file, 'utf8')) as { version: number; keys: Record<string, Record<string, unknown>> };
    expect(saved.version).toBe(2);
    expect(Object.keys(saved.keys[service]!)).toHaveLength(20);
  });

  it('refuses to start a second registry on a file another one uses, in this process or another', async () => {
    await start();
    await expect(start()).rejects.toThrow(/already open in this process/);
    await started[0]!.stop();
    started.length = 0;
    const child = await spawnRegistry({ listenAddr: '127.0.0.1:0', storage: { type: 'file', path: file } });
    try {
      await expect(start()).rejects.toThrow(/another key registry \(pid \d+\) uses this file/);
    } finally {
      await child.stop();
    }
    await expect(start()).resolves.toBeDefined();
  });

  it('takes over a lock left by a process that died', async () => {
    file = path.join(directory, 'keys.json');
    await writeFile(`${file}.lock`, '999999999');
    const running = await start();
    expect((await call(`${running.address}/healthz`)).status).toBe(200);
  });

  it('refuses to start on a file that is not a key registry file, and leaves it untouched', async () => {
    file = path.join(directory, 'keys.json');
    await writeFile(file, '{"something": "else"}');
    await expect(start()).rejects.toThrow(/not a key registry file/);
    await writeFile(file, 'garbage');
    await expect(start()).rejects.toThrow(/invalid JSON/);
    expect(await readFile(file, 'utf8')).toBe('garbage');
  });

  it('answers 503 when the file cannot be written, and keeps nothing it could not save', async () => {
    const running = await start();
    const service = uniqueName('svc');
    const saved = await ecKey();
    expect((await putKey(running.address, aud, service, saved)).status).toBe(202);
    // Fault: the directory disappears under the running registry.
    await rm(path.dirname(file), { recursive: true, force: true });
    const lost = await ecKey();
    const answer = await putKey(running.address, aud, service, lost);
    expect(answer.status).toBe(503);
    expect(answer.json()).toMatchObject({ error: 'storage_unavailable' });
    expect((await call(keyUrl(running.address, service, lost.kid))).status).toBe(404);
    expect((await call(keyUrl(running.address, service, saved.kid))).status).toBe(409);
  });

  it('keeps compare-and-set semantics: a stale revision is refused', async () => {
    file = path.join(directory, 'cas.json');
    const store = await FileKeyStore.open(file);
    try {
      const key = await ecKey();
      const record = {
        service: 's', kid: 'k', jwk: { kty: 'EC' as const, crv: 'P-256' as const, x: key.jwk.x!, y: key.jwk.y!, kid: 'k', alg: 'ES256' as const, use: 'sig' as const },
        state: 'pending' as const, createdAt: Date.now(), expiresAt: null, approvedAt: null, approvedBy: null, rotationSeconds: null, revision: 'r1',
      };
      expect(await store.commit('s', [{ kid: 'k', expectedRevision: null, next: record }])).toBe(true);
      expect(await store.commit('s', [{ kid: 'k', expectedRevision: null, next: record }])).toBe(false);
      expect(await store.commit('s', [{ kid: 'k', expectedRevision: 'r0', next: null }])).toBe(false);
      expect(await store.commit('s', [{ kid: 'k', expectedRevision: 'r1', next: { ...record, state: 'approved', revision: 'r2' } }])).toBe(true);
      expect((await store.get('s', 'k'))?.state).toBe('approved');
    } finally {
      await store.close();
    }
  });
});
