#!/usr/bin/env node
// The `jwtproxy` command. A file of its own rather than dist/main.js, so that it exists in a
// fresh checkout before the first build and `pnpm install` links it without a warning.
// CommonJS (bin/package.json): Node then starts without its ES module loader, which cost
// ~20 ms and 2 MB of a sidecar's start on Node 20 (issue 19).
'use strict';
require('../dist/launch.cjs').runCommand();
