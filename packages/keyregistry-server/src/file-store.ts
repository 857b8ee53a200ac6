import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, unlink } from 'node:fs/promises';
import path from 'node:path';
import { StorageUnavailableError } from './errors.js';
import { MemoryKeyStore, type KeyStoreSnapshot } from './store.js';

/** Lock files this process holds, so that two stores in one process cannot share a file either. */
const heldLocks = new Set<string>();

function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function takeLock(lockPath: string): Promise<void> {
  if (heldLocks.has(lockPath)) throw new Error(`${lockPath}: this key registry file is already open in this process`);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const handle = await open(lockPath, 'wx', 0o600);
      await handle.writeFile(String(process.pid));
      await handle.close();
      heldLocks.add(lockPath);
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const owner = Number((await readFile(lockPath, 'utf8').catch(() => '')).trim());
    // Our own pid without holding it means a stale lock from an earlier process (e.g. pid 1 in a container).
    if (Number.isInteger(owner) && owner > 0 && owner !== process.pid && isProcessAlive(owner)) {
      throw new Error(`${lockPath}: another key registry (pid ${owner}) uses this file; run replicas on Redis storage instead`);
    }
    await unlink(lockPath).catch(() => undefined);
  }
  throw new Error(`${lockPath}: could not take the lock`);
}

/** Writes `text` to `file` so that a reader (or a crash) sees the old or the new content, never a mix. */
async function writeAtomically(file: string, text: string): Promise<void> {
  const temporary = `${file}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  const handle = await open(temporary, 'wx', 0o600);
  try {
    await handle.writeFile(text);
    await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    await rename(temporary, file);
  } catch (error) {
    await unlink(temporary).catch(() => undefined);
    throw error;
  }
  // Make the rename itself durable; not every platform can fsync a directory.
  const directory = await open(path.dirname(file), 'r').catch(() => undefined);
  await directory?.sync().catch(() => undefined);
  await directory?.close();
}

function isSnapshot(value: unknown): value is KeyStoreSnapshot {
  if (typeof value !== 'object' || value === null) return false;
  const candidate = value as Partial<KeyStoreSnapshot>;
  return candidate.version === 1 && typeof candidate.keys === 'object' && candidate.keys !== null && typeof candidate.tokenIds === 'object' && candidate.tokenIds !== null;
}

interface Waiter {
  resolve(): void;
  reject(error: unknown): void;
}

/**
 * The embedded default store: state in memory, saved to one JSON file after every change.
 * Changes are checked and applied synchronously (so nothing interleaves), then saved by group
 * commit: every change made while a write is in flight goes into the next write, each written
 * to a temporary file, fsynced and renamed over the old one. A caller is answered only once its
 * change is on disk. A lock file next to it keeps a second registry process away.
 */
export class FileKeyStore extends MemoryKeyStore {
  readonly path: string;
  readonly #lockPath: string;
  #durable = '';
  #waiters: Waiter[] = [];
  #flushing: Promise<void> | undefined;
  #closed = false;

  private constructor(file: string, options: { clock?: () => number }) {
    super(options);
    this.path = file;
    this.#lockPath = `${file}.lock`;
  }

  /** Opens (or creates) the file and loads every key in it. */
  static async open(file: string, options: { clock?: () => number } = {}): Promise<FileKeyStore> {
    const store = new FileKeyStore(path.resolve(file), options);
    await mkdir(path.dirname(store.path), { recursive: true, mode: 0o700 });
    await takeLock(store.#lockPath);
    try {
      await store.#load();
    } catch (error) {
      heldLocks.delete(store.#lockPath);
      await unlink(store.#lockPath).catch(() => undefined);
      throw error;
    }
    return store;
  }

  async #load(): Promise<void> {
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      this.#durable = JSON.stringify(this.snapshot());
      return;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new Error(`${this.path}: not a key registry file (invalid JSON); refusing to overwrite it`);
    }
    if (!isSnapshot(parsed)) throw new Error(`${this.path}: not a key registry file (unknown format); refusing to overwrite it`);
    this.restore(parsed);
    this.#durable = text;
  }

  protected override persist(): Promise<void> {
    if (this.#closed) return Promise.reject(new StorageUnavailableError('key storage is closed'));
    return new Promise<void>((resolve, reject) => {
      this.#waiters.push({ resolve, reject });
      // Wait one turn of the event loop so that concurrent requests share one write.
      this.#flushing ??= new Promise<void>((done) => setImmediate(done)).then(() => this.#flushAll());
    });
  }

  async #flushAll(): Promise<void> {
    while (this.#waiters.length > 0) {
      const batch = this.#waiters.splice(0);
      const text = JSON.stringify(this.snapshot());
      try {
        await writeAtomically(this.path, text);
        this.#durable = text;
        for (const waiter of batch) waiter.resolve();
      } catch (error) {
        // Nothing unsaved may be reported as done: undo every change not yet on disk and fail all of them.
        const failed = batch.concat(this.#waiters.splice(0));
        this.restore(JSON.parse(this.#durable) as KeyStoreSnapshot);
        const reason = new StorageUnavailableError(`could not save key storage file: ${(error as Error).message}`, { cause: error });
        for (const waiter of failed) waiter.reject(reason);
      }
    }
    this.#flushing = undefined;
  }

  override async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#flushing;
    heldLocks.delete(this.#lockPath);
    await unlink(this.#lockPath).catch(() => undefined);
  }
}
