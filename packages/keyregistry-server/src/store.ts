import { PendingKeyLimitError } from './errors.js';
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

/** Caps on keys awaiting approval, checked by the store in the same atomic step as the write. */
export interface PendingLimits {
  /** Most pending keys one service may have. */
  perService: number;
  /** Most pending keys in the whole registry. */
  total: number;
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
  /**
   * Applies all changes if every condition holds, else none; resolves whether it applied them.
   * With `limits`, a commit that would raise the number of pending keys (state `pending`) of the
   * service or of the registry past them applies nothing and rejects with PendingKeyLimitError.
   */
  commit(service: string, changes: readonly KeyChange[], limits?: PendingLimits): Promise<boolean>;
  /**
   * Records `jti` of `service` until `deadAt` (unix ms). Resolves true the first time, false
   * if it was already recorded and is not yet dead.
   */
  claimTokenId(service: string, jti: string, deadAt: number): Promise<boolean>;
  close(): Promise<void>;
}

/** The persistent shape of the file store's snapshot (version 1: before the journal, no `seq`). */
export interface KeyStoreSnapshot {
  version: 1 | 2;
  /** The last journal entry the snapshot includes (version 2). */
  seq?: number;
  keys: Record<string, Record<string, StoredKey>>;
  /** `<service> <jti>` → unix ms after which it may be forgotten. */
  tokenIds: Record<string, number>;
}

/**
 * One applied change in a form that can be replayed: the records after it (null: deleted), so
 * applying it twice does no harm. The file store journals these; applying the inverse that
 * `applyMutation` returns undoes one.
 */
export type StoreMutation =
  | { type: 'keys'; service: string; records: Array<[kid: string, record: StoredKey | null]> }
  | { type: 'token'; id: string; deadAt: number | null };

const isPending = (key: StoredKey | null | undefined): number => (key?.state === 'pending' ? 1 : 0);

/** Keys in process memory: for tests and development, and the core of FileKeyStore. */
export class MemoryKeyStore implements KeyStore {
  protected keys = new Map<string, Map<string, StoredKey>>();
  protected tokenIds = new Map<string, number>();
  protected readonly now: () => number;
  /** Pending keys per service and in all, kept with every change so that the caps cost nothing to check. */
  #pendingByService = new Map<string, number>();
  #pendingTotal = 0;

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

  /** Checks every condition and cap, then applies all changes, synchronously: nothing can interleave. */
  async commit(service: string, changes: readonly KeyChange[], limits?: PendingLimits): Promise<boolean> {
    const keys = this.keys.get(service);
    let pendingDelta = 0;
    for (const change of changes) {
      const current = keys?.get(change.kid);
      if ((current?.revision ?? null) !== change.expectedRevision) return false;
      pendingDelta += isPending(change.next) - isPending(current);
    }
    if (limits && pendingDelta > 0) {
      if ((this.#pendingByService.get(service) ?? 0) + pendingDelta > limits.perService) throw new PendingKeyLimitError('service', service, limits.perService);
      if (this.#pendingTotal + pendingDelta > limits.total) throw new PendingKeyLimitError('total', service, limits.total);
    }
    const mutation: StoreMutation = { type: 'keys', service, records: changes.map((change) => [change.kid, change.next && structuredClone(change.next)]) };
    const inverse = this.applyMutation(mutation);
    await this.persist(mutation, inverse);
    return true;
  }

  async claimTokenId(service: string, jti: string, deadAt: number): Promise<boolean> {
    const id = `${service} ${jti}`;
    const known = this.tokenIds.get(id);
    if (known !== undefined && known > this.now()) return false;
    const mutation: StoreMutation = { type: 'token', id, deadAt };
    const inverse = this.applyMutation(mutation);
    await this.persist(mutation, inverse);
    return true;
  }

  async close(): Promise<void> {}

  /** Applies one mutation (no checks) and returns the mutation that undoes it. */
  protected applyMutation(mutation: StoreMutation): StoreMutation {
    if (mutation.type === 'token') {
      const before = this.tokenIds.get(mutation.id) ?? null;
      if (mutation.deadAt === null) this.tokenIds.delete(mutation.id);
      else this.tokenIds.set(mutation.id, mutation.deadAt);
      return { type: 'token', id: mutation.id, deadAt: before };
    }
    const { service } = mutation;
    const target = this.keys.get(service) ?? new Map<string, StoredKey>();
    const before: Array<[string, StoredKey | null]> = [];
    let pendingDelta = 0;
    for (const [kid, record] of mutation.records) {
      const current = target.get(kid) ?? null;
      before.unshift([kid, current]);
      pendingDelta += isPending(record) - isPending(current);
      if (record) target.set(kid, record);
      else target.delete(kid);
    }
    if (target.size === 0) this.keys.delete(service);
    else this.keys.set(service, target);
    this.#countPending(service, pendingDelta);
    return { type: 'keys', service, records: before };
  }

  #countPending(service: string, delta: number): void {
    if (delta === 0) return;
    const count = (this.#pendingByService.get(service) ?? 0) + delta;
    if (count > 0) this.#pendingByService.set(service, count);
    else this.#pendingByService.delete(service);
    this.#pendingTotal += delta;
  }

  /** Called after every change, with the change and its undo; the file store journals it here. */
  protected async persist(_mutation: StoreMutation, _inverse: StoreMutation): Promise<void> {}

  /** Everything, for the file store's snapshot; token ids already dead are dropped. */
  protected snapshot(seq: number): KeyStoreSnapshot {
    const now = this.now();
    // Object.fromEntries, not assignment: a service may be called "__proto__".
    const keys = Object.fromEntries([...this.keys].map(([service, byKid]) => [service, Object.fromEntries(byKid)]));
    for (const [id, deadAt] of this.tokenIds) if (deadAt <= now) this.tokenIds.delete(id);
    return { version: 2, seq, keys, tokenIds: Object.fromEntries(this.tokenIds) };
  }

  protected restore(snapshot: KeyStoreSnapshot): void {
    this.keys = new Map(Object.entries(snapshot.keys).map(([service, byKid]) => [service, new Map(Object.entries(byKid))]));
    this.tokenIds = new Map(Object.entries(snapshot.tokenIds));
    this.#pendingByService = new Map();
    this.#pendingTotal = 0;
    for (const [service, byKid] of this.keys) {
      let pending = 0;
      for (const key of byKid.values()) pending += isPending(key);
      this.#countPending(service, pending);
    }
  }
}
