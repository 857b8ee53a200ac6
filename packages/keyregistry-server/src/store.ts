import type { PublicJwk } from './jwk.js';

export type KeyState = 'pending' | 'approved';

/** One published key as the registry keeps it. Times are unix milliseconds. */
export interface StoredKey {
  service: string;
  kid: string;
  jwk: PublicJwk;
  state: KeyState;
  /** When the key was first published (or, for a rotated-in key, when the rotation happened). */
  createdAt: number;
  /** When the key stops being served; null: never. */
  expiresAt: number | null;
  approvedAt: number | null;
  /** How the key was approved: `admin`, `auto`, or `rotation:<signer kid>`. */
  approvedBy: string | null;
  /** The publisher's announced rotation interval in seconds (guidance only). */
  rotationSeconds: number | null;
  /** Changes on every write; compare-and-set uses it so that concurrent writers never lose an update. */
  revision: string;
}

/**
 * One conditional write to a service's keys: applied only if the key `kid` currently has
 * `expectedRevision` (null: the kid must be absent). `next` null deletes the key.
 */
export interface KeyChange {
  kid: string;
  expectedRevision: string | null;
  next: StoredKey | null;
}

/**
 * Where keys live. Small on purpose: reads, and one atomic compare-and-set over any number
 * of keys of one service (enough for publish, approve, rotate and delete), plus the replay
 * set for token ids. Implementations: MemoryKeyStore, FileKeyStore, RedisKeyStore.
 * Failures reject with StorageUnavailableError.
 */
export interface KeyStore {
  get(service: string, kid: string): Promise<StoredKey | undefined>;
  /** Every key of one service, in any state. */
  listService(service: string): Promise<StoredKey[]>;
  /** Every key of every service, in any state (for the admin API and purges). */
  listAll(): Promise<StoredKey[]>;
  /** Applies all changes if every condition holds, else none; resolves whether it applied them. */
  commit(service: string, changes: readonly KeyChange[]): Promise<boolean>;
  /**
   * Records `jti` of `service` until `deadAt` (unix ms). Resolves true the first time, false
   * if it was already recorded and is not yet dead.
   */
  claimTokenId(service: string, jti: string, deadAt: number): Promise<boolean>;
  close(): Promise<void>;
}

/** The persistent shape shared by the in-memory and file stores. */
export interface KeyStoreSnapshot {
  version: 1;
  keys: Record<string, Record<string, StoredKey>>;
  /** `<service> <jti>` → unix ms after which it may be forgotten. */
  tokenIds: Record<string, number>;
}

/** Keys in process memory: for tests and development, and the core of FileKeyStore. */
export class MemoryKeyStore implements KeyStore {
  protected keys = new Map<string, Map<string, StoredKey>>();
  protected tokenIds = new Map<string, number>();
  protected readonly now: () => number;

  constructor(options: { clock?: () => number } = {}) {
    this.now = options.clock ?? Date.now;
  }

  async get(service: string, kid: string): Promise<StoredKey | undefined> {
    const key = this.keys.get(service)?.get(kid);
    return key && structuredClone(key);
  }

  async listService(service: string): Promise<StoredKey[]> {
    return [...(this.keys.get(service)?.values() ?? [])].map((key) => structuredClone(key));
  }

  async listAll(): Promise<StoredKey[]> {
    return [...this.keys.values()].flatMap((keys) => [...keys.values()]).map((key) => structuredClone(key));
  }

  async commit(service: string, changes: readonly KeyChange[]): Promise<boolean> {
    if (!this.applyChanges(service, changes)) return false;
    await this.persist();
    return true;
  }

  async claimTokenId(service: string, jti: string, deadAt: number): Promise<boolean> {
    const id = `${service} ${jti}`;
    const known = this.tokenIds.get(id);
    if (known !== undefined && known > this.now()) return false;
    this.tokenIds.set(id, deadAt);
    await this.persist();
    return true;
  }

  async close(): Promise<void> {}

  /** Checks every condition, then applies all changes, synchronously: nothing can interleave. */
  protected applyChanges(service: string, changes: readonly KeyChange[]): boolean {
    const keys = this.keys.get(service);
    for (const change of changes) {
      const current = keys?.get(change.kid);
      if ((current?.revision ?? null) !== change.expectedRevision) return false;
    }
    const target = keys ?? new Map<string, StoredKey>();
    for (const change of changes) {
      if (change.next) target.set(change.kid, structuredClone(change.next));
      else target.delete(change.kid);
    }
    if (target.size === 0) this.keys.delete(service);
    else this.keys.set(service, target);
    return true;
  }

  /** Called after every change; the file store writes its file here. */
  protected async persist(): Promise<void> {}

  protected snapshot(): KeyStoreSnapshot {
    const now = this.now();
    // Object.fromEntries, not assignment: a service may be called "__proto__".
    const keys = Object.fromEntries([...this.keys].map(([service, byKid]) => [service, Object.fromEntries(byKid)]));
    for (const [id, deadAt] of this.tokenIds) if (deadAt <= now) this.tokenIds.delete(id);
    return { version: 1, keys, tokenIds: Object.fromEntries(this.tokenIds) };
  }

  protected restore(snapshot: KeyStoreSnapshot): void {
    this.keys = new Map(Object.entries(snapshot.keys).map(([service, byKid]) => [service, new Map(Object.entries(byKid))]));
    this.tokenIds = new Map(Object.entries(snapshot.tokenIds));
  }
}
