#!/usr/bin/env node
// First: V8 heap settings for a sidecar, before the rest loads (see heap-limits.ts).
import './heap-limits.js';
import { main } from './cli.js';

// Exit explicitly: pools and timers of stopped components must not keep the process alive.
main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`jwtproxy: ${(error as Error)?.stack ?? String(error)}\n`);
    process.exit(1);
  },
);
