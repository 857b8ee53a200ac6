#!/usr/bin/env node
// `pnpm jwtproxy …` in a checkout: a development shortcut that runs this checkout's build of the
// command. pnpm runs scripts from the repository root, so jwtproxy starts in the folder pnpm was
// started from (INIT_CWD) and a relative `-config` path is the user's. jwtproxy runs in a process
// group of its own and gets exactly one signal from here: Ctrl-C reaches pnpm, this script and
// jwtproxy at once, and pnpm passes SIGINT on once more, which jwtproxy would take as the second
// signal that exits at once. When pnpm goes away without passing a signal on, jwtproxy is stopped
// too instead of being left running, orphaned, on its ports.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
if (!existsSync(path.join(root, 'apps/cli/dist/main.js'))) {
  process.stderr.write('jwtproxy: this checkout is not built yet: run pnpm build first\n');
  process.exit(1);
}

const child = spawn(process.execPath, [path.join(root, 'apps/cli/bin/jwtproxy.js'), ...process.argv.slice(2)], {
  cwd: process.env.INIT_CWD || process.cwd(),
  stdio: 'inherit',
  detached: true,
});

/** Signals closer together than this are one (the terminal's and pnpm's copy of one Ctrl-C). */
const SAME_SIGNAL_MS = 500;
let lastForwarded = 0;
const forward = (signal) => {
  const now = Date.now();
  if (now - lastForwarded < SAME_SIGNAL_MS) return;
  lastForwarded = now;
  if (child.exitCode === null && child.signalCode === null) child.kill(signal);
};
process.on('SIGINT', () => forward('SIGINT'));
process.on('SIGTERM', () => forward('SIGTERM'));
process.on('SIGHUP', () => forward('SIGTERM'));

const launcher = process.ppid;
const watch = setInterval(() => {
  if (process.ppid === launcher) return;
  clearInterval(watch);
  forward('SIGTERM');
}, 500);
watch.unref();

child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
