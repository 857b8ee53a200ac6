import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, truncate, unlink } from 'node:fs/promises';
import path from 'node:path';
import { StorageUnavailableError } from './errors.js';
import { MemoryKeyStore, type KeyStoreSnapshot, type StoreMutation } from './store.js';

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

/** Makes a rename or a new file in `directory` durable; not every platform can fsync a directory. */
async function syncDirectory(directory: string): Promise<void> {
  const handle = await open(directory, 'r').catch(() => undefined);
  await handle?.sync().catch(() => undefined);
  await handle?.close();
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
  await syncDirectory(path.dirname(file));
}

/** Appends `text` to `file` and fsyncs it. Opened for each batch, so a file removed under us is noticed. */
async function appendDurably(file: string, text: string): Promise<void> {
  const handle = await open(file, 'a', 0o600);
  try {
    await handle.writeFile(text);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function isSnapshot(value: unknown): value is KeyStoreSnapshot {
  if (typeof value !== 'object' || value === null) return false;
  const candidate = value as Partial<KeyStoreSnapshot>;
  return (
    (candidate.version === 1 || (candidate.version === 2 && Number.isSafeInteger(candidate.seq))) &&
    typeof candidate.keys === 'object' && candidate.keys !== null && typeof candidate.tokenIds === 'object' && candidate.tokenIds !== null
  );
}

/** One journal line: a mutation and its sequence number. */
type JournalEntry = StoreMutation & { seq: number };

function isJournalEntry(value: unknown): value is JournalEntry {
  if (typeof value !== 'object' || value === null) return false;
  const entry = value as Partial<JournalEntry> & { records?: unknown; id?: unknown; service?: unknown };
  if (!Number.isSafeInteger(entry.seq)) return false;
  if (entry.type === 'keys') return typeof entry.service === 'string' && Array.isArray(entry.records);
  return entry.type === 'token' && typeof entry.id === 'string';
}

interface Queued {
  seq: number;
  mutation: StoreMutation;
  inverse: StoreMutation;
  resolve(): void;
  reject(error: unknown): void;
}

/** The journal is folded into the snapshot once it is larger than this and than the last snapshot. */
const minCompactionBytes = 1024 * 1024;

/**
 * The embedded default store: state in memory; on disk a snapshot (`<path>`) and a journal
 * (`<path>.journal`, one JSON line per change). A change is checked and applied in memory at
 * once (so nothing interleaves), then appended to the journal by group commit: every change made
 * while an append is in flight goes into the next one, fsynced; a caller is answered only once its
 * change is on disk. So a write costs the size of the change, not of the registry. When the
 * journal outgrows the snapshot, the whole state is written as a new snapshot (temporary file,
 * fsync, rename) and the journal starts again: amortised, each change is written about twice.
 *
 * Crash safety: an answered change is in the journal or the snapshot. A crash can leave only the
 * journal's last line torn; it was never answered, and loading ignores and truncates it. Every
 * line carries a sequence number and the snapshot the last one it includes, so a crash between
 * a new snapshot and the journal's reset replays nothing twice (and lines hold the records after
 * the change, so replaying one again would do no harm either). A damaged line before the end
 * stops the start instead of losing what follows. A lock file keeps a second process away.
 */
export class FileKeyStore extends MemoryKeyStore {
  readonly path: string;
  readonly journalPath: string;
  readonly #lockPath: string;
  /** Sequence number of the last change applied in memory. */
  #seq = 0;
  /** Changes applied in memory, not yet on disk, oldest first. */
  #queue: Queued[] = [];
  #flushing: Promise<void> | undefined;
  /** Length of the journal's intact lines; a failed append may leave bytes past it, cut before the next. */
  #journalBytes = 0;
  #journalTorn = false;
  #snapshotBytes = 0;
  /** Compaction waits until the journal is this long (raised after a failed compaction). */
  #compactAtBytes = minCompactionBytes;
  #closed = false;

  private constructor(file: string, options: { clock?: () => number }) {
    super(options);
    this.path = file;
    this.journalPath = `${file}.journal`;
    this.#lockPath = `${file}.lock`;
  }

  /** Opens (or creates) the store and loads every key in its snapshot and journal. */
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

  /** Bytes of journal not yet folded into the snapshot. */
  get journalBytes(): number {
    return this.#journalBytes;
  }

  async #load(): Promise<void> {
    let text: string | undefined;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
    let snapshotSeq = 0;
    let version: number | undefined;
    if (text !== undefined) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        throw new Error(`${this.path}: not a key registry file (invalid JSON); refusing to overwrite it`);
      }
      if (!isSnapshot(parsed)) throw new Error(`${this.path}: not a key registry file (unknown format); refusing to overwrite it`);
      this.restore(parsed);
      snapshotSeq = parsed.seq ?? 0;
      version = parsed.version;
      this.#snapshotBytes = Buffer.byteLength(text);
    }
    this.#seq = snapshotSeq;
    await this.#replayJournal(snapshotSeq);
    if (version !== 2) {
      // A new store gets its snapshot at once; a version 1 file is rewritten so that an older
      // registry, which would not read the journal, refuses it instead of losing changes.
      await this.#compact();
    }
  }

  async #replayJournal(snapshotSeq: number): Promise<void> {
    let journal: Buffer;
    try {
      journal = await readFile(this.journalPath);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw error;
    }
    const intact = journal.lastIndexOf(0x0a) + 1;
    const lines = journal.subarray(0, intact).toString('utf8').split('\n');
    lines.pop();
    let previous = snapshotSeq;
    const now = this.now();
    lines.forEach((line, index) => {
      let entry: unknown;
      try {
        entry = JSON.parse(line);
      } catch {
        entry = undefined;
      }
      if (!isJournalEntry(entry)) throw new Error(`${this.journalPath}: line ${index + 1} is damaged; refusing to start (restore the file or remove the line)`);
      if (entry.seq <= snapshotSeq) return;
      if (entry.seq <= previous) throw new Error(`${this.journalPath}: line ${index + 1} is out of order; refusing to start`);
      previous = entry.seq;
      const { seq: _seq, ...mutation } = entry;
      if (mutation.type === 'token' && mutation.deadAt !== null && mutation.deadAt <= now) return;
      this.applyMutation(mutation);
    });
    this.#seq = previous;
    this.#journalBytes = intact;
    // A torn last line was never answered: cut it so that the next append starts on a fresh line.
    if (intact < journal.length) await truncate(this.journalPath, intact);
  }

  protected override persist(mutation: StoreMutation, inverse: StoreMutation): Promise<void> {
    if (this.#closed) {
      this.applyMutation(inverse);
      return Promise.reject(new StorageUnavailableError('key storage is closed'));
    }
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({ seq: ++this.#seq, mutation, inverse, resolve, reject });
      // Wait one turn of the event loop so that concurrent requests share one write.
      this.#flushing ??= new Promise<void>((done) => setImmediate(done)).then(() => this.#flushAll());
    });
  }

  async #flushAll(): Promise<void> {
    while (this.#queue.length > 0) {
      if (this.#journalBytes >= Math.max(this.#compactAtBytes, this.#snapshotBytes)) {
        // The snapshot holds every change applied so far, those still queued included.
        const covered = this.#queue.splice(0);
        try {
          await this.#compact();
          for (const queued of covered) queued.resolve();
          continue;
        } catch {
          // The journal still holds everything; try again once it has grown as much again.
          this.#compactAtBytes = Math.max(minCompactionBytes, this.#journalBytes * 2);
          this.#queue.unshift(...covered);
        }
      }
      const batch = this.#queue.splice(0);
      const text = batch.map(({ seq, mutation }) => `${JSON.stringify({ seq, ...mutation })}\n`).join('');
      try {
        if (this.#journalTorn) {
          await truncate(this.journalPath, this.#journalBytes);
          this.#journalTorn = false;
        }
        await appendDurably(this.journalPath, text);
        if (this.#journalBytes === 0) await syncDirectory(path.dirname(this.journalPath));
        this.#journalBytes += Buffer.byteLength(text);
        for (const queued of batch) queued.resolve();
      } catch (error) {
        // Nothing unsaved may be reported as done: undo every change not yet on disk, newest
        // first, and fail all of them. A partial append is cut before the next one.
        this.#journalTorn = true;
        const failed = batch.concat(this.#queue.splice(0));
        for (const queued of [...failed].reverse()) this.applyMutation(queued.inverse);
        this.#seq = failed[0]!.seq - 1;
        const reason = new StorageUnavailableError(`could not save key storage file: ${(error as Error).message}`, { cause: error });
        for (const queued of failed) queued.reject(reason);
      }
    }
    this.#flushing = undefined;
  }

  /** Writes the whole state as the snapshot and empties the journal; rejects when the snapshot could not be written. */
  async #compact(): Promise<void> {
    const text = JSON.stringify(this.snapshot(this.#seq));
    await writeAtomically(this.path, text);
    this.#snapshotBytes = Buffer.byteLength(text);
    this.#compactAtBytes = minCompactionBytes;
    // Lines up to the snapshot's seq are skipped when loading, so a failure here loses nothing.
    try {
      await truncate(this.journalPath, 0);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
        // Appending after the stale lines is still correct; do not retry before it has doubled.
        this.#compactAtBytes = Math.max(minCompactionBytes, this.#journalBytes * 2);
        return;
      }
    }
    this.#journalBytes = 0;
    this.#journalTorn = false;
  }

  /** Waits for every change to be on disk, folds the journal into the snapshot, and releases the lock. */
  override async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#flushing;
    // After a clean stop the snapshot alone holds everything; if it cannot be written the journal stays.
    const folded = this.#journalBytes === 0 || (await this.#compact().then(() => true, () => false));
    if (folded) await unlink(this.journalPath).catch(() => undefined);
    heldLocks.delete(this.#lockPath);
    await unlink(this.#lockPath).catch(() => undefined);
  }
}
