/**
 * A readiness check: resolves (or returns) when its part is ready; throws or rejects with an
 * error whose message says what is not (`No key is yet active`, `Nonce storage unavailable`).
 */
export type ReadinessCheck = () => unknown;

export interface CheckResult {
  name: string;
  ready: boolean;
  /** Why not, when not ready: the check's error message (at most 300 characters). */
  problem?: string;
}

export interface ReadinessReport {
  ready: boolean;
  /** Set while the process is stopping: every probe is then not ready. */
  stopping?: boolean;
  checks: CheckResult[];
}

export interface ReadinessOptions {
  /** A check that has not answered within this is not ready, ms (default 2 s). */
  timeoutMs?: number;
}

/** Longest problem text in an answer: a check's error may be long (a Redis cluster's). */
const MAX_PROBLEM_LENGTH = 300;

function problemOf(error: unknown): string {
  const text = error instanceof Error ? error.message || error.name : String(error);
  return text.length > MAX_PROBLEM_LENGTH ? `${text.slice(0, MAX_PROBLEM_LENGTH - 1)}…` : text;
}

/**
 * The named checks behind `/readyz`. All run at once, each within the timeout; probes that come
 * while an evaluation runs share it, so a flood of probes costs one round of checks (one Redis
 * PING), not one per probe.
 */
export class Readiness {
  readonly #checks = new Map<string, ReadinessCheck>();
  readonly #timeoutMs: number;
  #running: Promise<ReadinessReport> | undefined;
  /** Checks called and not yet settled. */
  readonly #calls = new Map<string, Promise<unknown>>();
  #stopping = false;

  constructor(options: ReadinessOptions = {}) {
    this.#timeoutMs = options.timeoutMs ?? 2_000;
  }

  /** Adds a check under `name` (`signer_proxy: active key`); returns a function that removes it. */
  register(name: string, check: ReadinessCheck): () => void {
    if (this.#checks.has(name)) throw new Error(`a readiness check named ${JSON.stringify(name)} is registered already`);
    this.#checks.set(name, check);
    return () => {
      if (this.#checks.get(name) === check) this.#checks.delete(name);
    };
  }

  /** The names registered, in order. */
  get names(): string[] {
    return [...this.#checks.keys()];
  }

  /** From now on not ready (a graceful stop began): load balancers stop sending while requests drain. */
  markStopping(): void {
    this.#stopping = true;
  }

  /** Runs every check (or joins the round in progress). */
  evaluate(): Promise<ReadinessReport> {
    this.#running ??= this.#evaluate().finally(() => (this.#running = undefined));
    return this.#running;
  }

  async #evaluate(): Promise<ReadinessReport> {
    const checks = await Promise.all([...this.#checks].map(([name, check]) => this.#run(name, check)));
    if (this.#stopping) return { ready: false, stopping: true, checks };
    return { ready: checks.every((check) => check.ready), checks };
  }

  async #run(name: string, check: ReadinessCheck): Promise<CheckResult> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${this.#timeoutMs} ms`)), this.#timeoutMs);
    });
    // A check still running from an earlier round (one that hangs past its timeout) is joined,
    // not called again: a hung dependency cannot pile up calls, one per probe.
    let call = this.#calls.get(name);
    if (!call) {
      // A synchronous throw becomes a rejection of the async function around it.
      const started = (async () => check())();
      call = started;
      this.#calls.set(name, started);
      started.then(
        () => this.#calls.delete(name),
        () => this.#calls.delete(name),
      );
    }
    try {
      await Promise.race([call, late]);
      return { name, ready: true };
    } catch (error) {
      return { name, ready: false, problem: problemOf(error) };
    } finally {
      clearTimeout(timer);
    }
  }
}
