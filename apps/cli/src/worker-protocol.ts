/**
 * The messages between the primary (supervisor.ts) and its worker threads (worker-main.ts), over
 * the Worker's own port. Plain data only (structured clone): a KeyObject and a SharedArrayBuffer
 * cross as they are; a configuration crosses as its file's text, which each side parses the same.
 */
import type { LogFormat, LogLevel, SigningKey } from '@jwtproxy/core';
import type { MetricSnapshot, ReadinessReport } from '@jwtproxy/admin';

/** What a worker starts from. */
export interface WorkerData {
  /** 1-based, as it appears in log lines (`worker=2`). */
  worker: number;
  /** The configuration file's text as the primary validated it, and its name (for messages and relative paths). */
  source: ConfigSource;
  /** Key path → the address to listen on instead of the file's (a port 0 the first worker bound). */
  listenAddrs: Record<string, string>;
  logLevel: LogLevel;
  logFormat: LogFormat;
  plugins: string[];
  /** The primary runs an admin listener: count metrics and keep readiness checks for it. */
  admin: boolean;
  /** The signer's key now (undefined: none active yet, or no signer), or why there is none. */
  signerKey: SigningKey | undefined;
  signerKeyProblem?: KeyProblem;
  /** Fault injection for tests (JWTPROXY_FAULT_WORKER_CRASH): throw an uncaught error this long after starting. */
  crashAfterMs?: number;
}

/** Why the primary's key source gives no key: its error's code (ERR_NO_ACTIVE_KEY: awaiting approval) and message. */
export interface KeyProblem {
  code: string | undefined;
  message: string;
}

export interface ConfigSource {
  text: string;
  file: string;
}

export interface StartedServerInfo {
  name: string;
  address: string;
}

/** Primary → worker. */
export type ToWorker =
  | { type: 'reload'; id: number; source: ConfigSource; listenAddrs: Record<string, string> }
  /** A stop's first step: close the listening sockets, keep serving open connections (see worker-main.ts' Listeners). */
  | { type: 'close-listeners'; id: number }
  /** Drain and exit (each proxy within its shutdown_timeout). */
  | { type: 'stop' }
  | { type: 'signer-key'; key: SigningKey | undefined; problem?: KeyProblem }
  | { type: 'metrics'; id: number }
  | { type: 'readiness'; id: number }
  | { type: 'reply'; id: number; buffer?: SharedArrayBuffer | undefined; certificate?: { key: string; cert: string }; error?: string };

/** Worker → primary. */
export type FromWorker =
  | { type: 'started'; servers: StartedServerInfo[]; checks: string[] }
  | { type: 'start-failed'; error: string; configError: boolean }
  | { type: 'reloaded'; id: number; servers: StartedServerInfo[]; checks: string[] }
  | { type: 'reload-failed'; id: number; error: string }
  | { type: 'listeners-closed'; id: number; count: number }
  | { type: 'stopped' }
  | { type: 'metrics'; id: number; snapshot: MetricSnapshot }
  | { type: 'readiness'; id: number; report: ReadinessReport }
  | { type: 'nonce-table'; id: number; key: string; maxEntries: number }
  | { type: 'certificate'; id: number; host: string };
