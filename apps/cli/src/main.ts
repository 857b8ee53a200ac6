#!/usr/bin/env node
// The `jwtproxy` command. This entry is kept small on purpose: V8 flags and the compile cache are
// set before the rest of the command is loaded (import() below), so that the cache covers it.
import { applyV8Flags } from './heap-limits.js';
import { enableCompileCache } from './compile-cache.js';

applyV8Flags();
enableCompileCache();
const { main } = await import('./cli.js');

// Exit explicitly: pools and timers of stopped components must not keep the process alive.
main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`jwtproxy: ${(error as Error)?.stack ?? String(error)}\n`);
    process.exit(1);
  },
);
