// A nonce store plugin with typed options: nonces are kept in a file, so a token seen before a
// restart of the verifier is still refused as a replay after it (the built-in `local` store
// forgets them). One verifier process per file; replicas want `redis`.
//
//   nonce_storage:
//     type: file
//     options:
//       path: nonces.jsonl     # relative to the configuration file
//       max_entries: 100000    # optional
//       sync_interval: 1s      # optional; 0: flushed to disk before each token is let through
//
// The options are declared once, with the schema kit the runtime hands over (valibot, plus
// `duration`): jwtproxy checks them before `create` runs, so a misspelt option, a duration
// without a unit or a negative interval stops the start with the key path and file:line, and
// `create` receives them typed (`sync_interval` in milliseconds). It imports nothing from jwtproxy.
import { open, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';

/** One line per claimed nonce: `[expiresAt, jti]` as JSON (a jti may hold any character). */
const lineOf = (jti, expiresAt) => `${JSON.stringify([expiresAt, jti])}\n`;

/** Most bytes a line may take when the file is read back (a jti longer than this was not ours). */
const MAX_LINE_BYTES = 1024;

class FileNonceStore {
  #nonces;
  #handle;
  #maxEntries;
  #syncEachClaim;
  #timer;

  constructor(nonces, handle, options) {
    this.#nonces = nonces;
    this.#handle = handle;
    this.#maxEntries = options.max_entries;
    this.#syncEachClaim = options.sync_interval === 0;
    if (!this.#syncEachClaim) {
      this.#timer = setInterval(() => void this.#handle.datasync().catch(() => undefined), options.sync_interval);
      this.#timer.unref();
    }
  }

  /** Reads the unexpired nonces back (bounded by max_entries), rewrites the file with them only, and opens it for appending. */
  static async open(file, options, logger) {
    const now = Date.now() / 1000;
    const nonces = new Map();
    let text = '';
    try {
      text = await readFile(file, 'utf8');
    } catch (error) {
      if (error.code !== 'ENOENT') throw error;
    }
    if (text.length > options.max_entries * MAX_LINE_BYTES) throw new Error(`${file} is larger than ${options.max_entries} nonces can be`);
    for (const line of text.split('\n')) {
      if (!line) continue;
      let entry;
      try {
        entry = JSON.parse(line);
      } catch {
        continue; // a line cut short by a crash
      }
      const [expiresAt, jti] = Array.isArray(entry) ? entry : [];
      if (typeof jti === 'string' && typeof expiresAt === 'number' && expiresAt >= now) nonces.set(jti, expiresAt);
    }
    await writeFile(`${file}.tmp`, [...nonces].map(([jti, expiresAt]) => lineOf(jti, expiresAt)).join(''), { mode: 0o600 });
    await rename(`${file}.tmp`, file);
    const handle = await open(file, 'a', 0o600);
    logger.info('file nonce store opened', { path: file, nonces: nonces.size });
    return new FileNonceStore(nonces, handle, options);
  }

  /** True once per unexpired jti; false for a replay; throws (503, fail closed) when it cannot remember one. */
  async claim(jti, expiresAt) {
    const now = Date.now() / 1000;
    const known = this.#nonces.get(jti);
    if (known !== undefined && known >= now) return false;
    if (this.#nonces.size >= this.#maxEntries) {
      for (const [seen, until] of this.#nonces) if (until < now) this.#nonces.delete(seen);
    }
    if (this.#nonces.size >= this.#maxEntries) throw new Error(`file nonce store: ${this.#maxEntries} unexpired nonces, no room for another`);
    // Taken before the write, in the same turn as the check: a concurrent replay is refused.
    this.#nonces.set(jti, expiresAt);
    try {
      await this.#handle.appendFile(lineOf(jti, expiresAt));
      if (this.#syncEachClaim) await this.#handle.datasync();
    } catch (error) {
      this.#nonces.delete(jti);
      throw error;
    }
    return true;
  }

  async stop() {
    clearInterval(this.#timer);
    await this.#handle.datasync().catch(() => undefined);
    await this.#handle.close();
  }
}

/** jwtproxy calls this with its runtime (`--plugin ./file-nonce-store.mjs`). */
export default function register({ nonceStores, schema: s }) {
  nonceStores.register({
    type: 'file',
    description: 'Nonces in a file, so that a token stays refused as a replay across restarts (one verifier process per file).',
    options: s.strictObject({
      path: s.pipe(s.string(), s.minLength(1), s.description('The file, relative to the configuration file.')),
      max_entries: s.optional(
        s.pipe(s.number(), s.integer(), s.minValue(1), s.description('Most unexpired nonces kept; beyond, tokens are refused (503) rather than one forgotten.')),
        100_000,
      ),
      sync_interval: s.optional(s.pipe(s.duration('non-negative'), s.description('How often the file is flushed to disk; 0: before each token is let through.')), '1s'),
    }),
    create: (options, context) => FileNonceStore.open(path.resolve(context.baseDir, options.path), options, context.logger),
  });
}
