/**
 * Issue 12, item 6: the file store writes what changed, not the whole registry. A change is a
 * journal line; the journal is folded into the snapshot now and then. These tests check that a
 * write does not grow with the number of keys, and what a crash can leave behind.
 */
import { appendFile, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileKeyStore, type StoredKey } from '../src/index.js';
import { ecKey, putKey, spawnRegistry } from './support.js';

let directory: string;
let file: string;
const open: FileKeyStore[] = [];

beforeEach(async () => {
  directory = await mkdtemp(path.join(os.tmpdir(), 'keyregistry-journal-'));
  file = path.join(directory, 'keys.json');
});
afterEach(async () => {
  await Promise.all(open.splice(0).map((store) => store.close()));
  await rm(directory, { recursive: true, force: true });
});

async function openStore(): Promise<FileKeyStore> {
  const store = await FileKeyStore.open(file);
  open.push(store);
  return store;
}

async function closeStore(store: FileKeyStore): Promise<void> {
  open.splice(open.indexOf(store), 1);
  await store.close();
}

// A real P-256 point is not needed here: the store keeps records, it does not parse keys.
function record(service: string, kid: string, state: 'pending' | 'approved' = 'pending', revision = `r-${kid}`): StoredKey {
  return {
    service, kid, state, createdAt: 1_700_000_000_000, expiresAt: null, approvedAt: null, approvedBy: null, rotationSeconds: null, revision,
    jwk: { kty: 'EC', crv: 'P-256', x: 'x'.repeat(43), y: 'y'.repeat(43), kid, alg: 'ES256', use: 'sig' },
  };
}

const put = (store: FileKeyStore, service: string, kid: string) => store.commit(service, [{ kid, expectedRevision: null, next: record(service, kid) }]);

describe('file store journal', () => {
  it('a change appends about its own size whatever the number of keys; compaction keeps the journal bounded', async () => {
    const store = await openStore();
    const journalGrowth = async (kid: string): Promise<number> => {
      const before = store.journalBytes;
      await put(store, 'measured', kid);
      return store.journalBytes - before;
    };
    const first = await journalGrowth('first');
    // 3,000 keys in 30 services (concurrent commits share appends).
    for (let batch = 0; batch < 30; batch++) {
      await Promise.all(Array.from({ length: 100 }, (_, i) => put(store, `svc-${batch}`, `k-${i}`)));
    }
    const snapshotBytes = (await stat(file)).size;
    const later = await journalGrowth('later');
    // The same bytes but for the sequence number's digits.
    expect(Math.abs(later - first)).toBeLessThanOrEqual(6);
    expect(first).toBeLessThan(1024);
    // The state on disk (1 MB of snapshot and journal here) is never rewritten for one change.
    expect(snapshotBytes + store.journalBytes).toBeGreaterThan(500 * 1024);
    // Folding happens: the journal never holds more than about a snapshot's worth (or 1 MiB).
    expect(store.journalBytes).toBeLessThanOrEqual(Math.max(1024 * 1024, snapshotBytes) + 64 * 1024);

    await closeStore(store);
    const reopened = await openStore();
    expect(await reopened.listAll()).toHaveLength(3002);
  });

  it('after a kill, replays the journal; a torn last line (never answered) is ignored and cut, and appends go on after it', async () => {
    const aud = 'http://registry.test';
    const child = await spawnRegistry({ listenAddr: '127.0.0.1:0', publicUrl: aud, storage: { type: 'file', path: file } });
    const keys = await Promise.all(Array.from({ length: 3 }, () => ecKey()));
    for (const key of keys) expect((await putKey(child.address, aud, 'svc', key)).status).toBe(202);
    await child.kill();
    const intact = (await readFile(`${file}.journal`)).length;
    expect(intact).toBeGreaterThan(0);
    await appendFile(`${file}.journal`, '{"seq":99,"type":"keys","service":"svc","records":[["lost",{"serv');

    const store = await openStore();
    expect((await store.listAll()).map((key) => key.kid).sort()).toEqual(keys.map((key) => key.kid).sort());
    expect((await readFile(`${file}.journal`)).length).toBe(intact);
    await put(store, 'svc', 'after');
    await closeStore(store);
    const reopened = await openStore();
    expect(await reopened.listAll()).toHaveLength(4);
  });

  it('refuses to start on a damaged line before the end of the journal, and leaves the files as they are', async () => {
    await writeFile(file, JSON.stringify({ version: 2, seq: 0, keys: {}, tokenIds: {} }));
    const line = (seq: number, kid: string) => `${JSON.stringify({ seq, type: 'keys', service: 's', records: [[kid, record('s', kid)]] })}\n`;
    const journal = `${line(1, 'a')}{"seq":2,"type":"ke\n${line(3, 'c')}`;
    await writeFile(`${file}.journal`, journal);
    await expect(FileKeyStore.open(file)).rejects.toThrow(/keys\.json\.journal: line 2 is damaged; refusing to start/);
    expect(await readFile(`${file}.journal`, 'utf8')).toBe(journal);
  });

  it('does not replay lines the snapshot already holds (a crash between a new snapshot and the journal reset)', async () => {
    const line = (seq: number, kid: string, next: StoredKey | null) => `${JSON.stringify({ seq, type: 'keys', service: 's', records: [[kid, next]] })}\n`;
    // The snapshot (seq 5) already has "revoked" deleted (at seq 5); the stale journal still has its publication (seq 4).
    await writeFile(file, JSON.stringify({ version: 2, seq: 5, keys: { s: { kept: record('s', 'kept') } }, tokenIds: {} }));
    await writeFile(`${file}.journal`, line(4, 'revoked', record('s', 'revoked')) + line(5, 'revoked', null) + line(6, 'newer', record('s', 'newer')));
    const store = await openStore();
    expect((await store.listAll()).map((key) => key.kid).sort()).toEqual(['kept', 'newer']);
  });

  it('reads a version 1 file (written before the journal) and rewrites it as version 2, which older registries refuse', async () => {
    await writeFile(file, JSON.stringify({ version: 1, keys: { s: { old: record('s', 'old', 'approved') } }, tokenIds: {} }));
    const store = await openStore();
    expect((await store.get('s', 'old'))?.state).toBe('approved');
    expect(JSON.parse(await readFile(file, 'utf8'))).toMatchObject({ version: 2, seq: 0 });
  });
});
