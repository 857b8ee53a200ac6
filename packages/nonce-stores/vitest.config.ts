import { defineConfig, mergeConfig } from 'vitest/config';
import shared from '../../vitest.shared.ts';

// --expose-gc: the memory test measures the heap after a full collection.
export default mergeConfig(shared, defineConfig({ test: { execArgv: ['--expose-gc'] } }));
