// Sums the vitest JSON reports of every package into one closing line: "Tests: N passed, N failed".
// Exits non-zero when a package that has tests wrote no report, or when any test failed or was skipped.
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
let passed = 0;
let failed = 0;
let skipped = 0;
const missing = [];
for (const group of ['packages', 'apps', 'examples', 'bench']) {
  const dir = path.join(root, group);
  if (!existsSync(dir)) continue;
  const folders = group === 'bench' ? [dir] : readdirSync(dir).map((name) => path.join(dir, name));
  for (const folder of folders) {
    const manifest = path.join(folder, 'package.json');
    if (!existsSync(manifest) || !JSON.parse(readFileSync(manifest, 'utf8')).scripts?.test) continue;
    const report = path.join(folder, '.vitest-results.json');
    if (!existsSync(report)) {
      missing.push(path.relative(root, folder));
      continue;
    }
    const { numPassedTests, numFailedTests, numPendingTests, numTodoTests } = JSON.parse(readFileSync(report, 'utf8'));
    passed += numPassedTests;
    failed += numFailedTests;
    skipped += numPendingTests + numTodoTests;
  }
}
if (missing.length) console.log(`no test report from: ${missing.join(', ')}`);
console.log(`Tests: ${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
process.exit(failed || skipped || missing.length ? 1 : 0);
