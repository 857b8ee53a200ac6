#!/usr/bin/env node
// Writes docs/components.md from the option schemas of the built-in components (run after
// `pnpm build`). apps/cli/test/component-docs.test.ts fails while the file is out of date.
import { writeFileSync } from 'node:fs';
import { componentReference } from '../apps/cli/dist/index.js';

const target = new URL('../docs/components.md', import.meta.url);
writeFileSync(target, componentReference());
process.stdout.write(`wrote ${target.pathname}\n`);
