#!/usr/bin/env node
// The `jwtproxy` command. A file of its own rather than dist/main.js, so that it exists in a
// fresh checkout before the first build and `pnpm install` links it without a warning.
import '../dist/main.js';
