/**
 * Ports for servers a test must name before they start: a verifier's audience, a port written into
 * a config file, a Redis restarted on the same port.
 *
 * Asking the OS for port 0 and closing the probe is racy. The OS may hand the same port to the
 * next probe, and CI saw exactly that: the signer and the key registry of one config were given
 * one port. It may also give it to another test process, or use it as the source port of an
 * outgoing connection. So ports come from a range below the OS's ephemeral range (32768–60999 on
 * Linux), which it never hands out by itself. Each port is also reserved across all test
 * processes on the machine by a lock file created exclusively.
 */
import { mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

const FIRST_PORT = 20_000;
const PORT_COUNT = 10_000;
/** A lock older than this is left over from a run that did not clean up, whatever its pid says (pids are reused). */
const STALE_LOCK_MS = 60 * 60_000;
const lockDir = path.join(tmpdir(), 'jwtproxy-test-ports');
const reservedHere: string[] = [];
let sweptStaleLocks = false;

process.once('exit', () => {
  for (const lock of reservedHere) rmSync(lock, { force: true });
});

/** Whether a process is still running (signal 0 checks without sending anything). */
export function isProcessAlive(pid: number | undefined): boolean {
  if (pid === undefined) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** True when the lock's owner has exited, or the lock is too old to trust. */
function isStale(lock: string): boolean {
  try {
    const owner = Number(readFileSync(lock, 'utf8'));
    return !Number.isInteger(owner) || !isProcessAlive(owner) || Date.now() - statSync(lock).mtimeMs > STALE_LOCK_MS;
  } catch {
    return false; // just created by someone else and not written yet, or just removed: not ours to take
  }
}

/** Creates the lock file for `port` unless another process holds it. */
function reserve(port: number): boolean {
  const lock = path.join(lockDir, String(port));
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeFileSync(lock, String(process.pid), { flag: 'wx' });
      reservedHere.push(lock);
      return true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST' || !isStale(lock)) return false;
      rmSync(lock, { force: true });
    }
  }
  return false;
}

/** True when nothing listens on 127.0.0.1:`port` (a service of the machine may, whatever our locks say). */
function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.createServer();
    probe.once('error', () => resolve(false));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(true)));
  });
}

/**
 * Removes the locks of processes that have gone. vitest ends its workers with SIGTERM, so their
 * 'exit' handlers never run and the locks of every test run would otherwise pile up.
 */
function sweepStaleLocks(): void {
  mkdirSync(lockDir, { recursive: true });
  for (const name of readdirSync(lockDir)) {
    const lock = path.join(lockDir, name);
    if (isStale(lock)) rmSync(lock, { force: true });
  }
  sweptStaleLocks = true;
}

/** A port on 127.0.0.1 that is free, and that no other test in any process on this machine will be given while this process runs. */
export async function freeLoopbackPort(): Promise<number> {
  if (!sweptStaleLocks) sweepStaleLocks();
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = FIRST_PORT + Math.floor(Math.random() * PORT_COUNT);
    if (!reserve(port)) continue;
    if (await canListen(port)) return port;
  }
  throw new Error(`no free port in ${FIRST_PORT}-${FIRST_PORT + PORT_COUNT - 1} after 200 tries (locks in ${lockDir})`);
}
