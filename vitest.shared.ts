import { defineConfig } from 'vitest/config';

/**
 * One vitest setup for every package: tests beside the package, generous timeouts for tests
 * that start real servers and processes, and a JSON report that .ci/run sums into one line.
 */
export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ['default', 'json'],
    outputFile: { json: '.vitest-results.json' },
  },
});
