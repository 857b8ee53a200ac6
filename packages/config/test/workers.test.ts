import { describe, expect, it } from 'vitest';
import { parseConfig } from '../src/index.js';
import { configErrorOf, verifierBlock } from './helpers.js';

const verifier = verifierBlock;
const errorOf = configErrorOf;

describe('jwtproxy.workers', () => {
  it('reads a whole number of worker threads; absent, it is left to the command (one per core)', () => {
    expect(parseConfig(`jwtproxy:\n  workers: 4\n${verifier}`, 'c.yaml').workers).toBe(4);
    expect(parseConfig(`jwtproxy:\n  workers: 1\n${verifier}`, 'c.yaml').workers).toBe(1);
    expect(parseConfig(`jwtproxy:\n  workers: auto\n${verifier}`, 'c.yaml').workers).toBe('auto');
    expect(parseConfig(`jwtproxy:\n${verifier}`, 'c.yaml').workers).toBeUndefined();
  });

  it.each([
    ['0', 'workers: must be from 1 to 256 or auto (one per available core), got 0'],
    ['-2', 'workers: must be from 1 to 256 or auto (one per available core), got -2'],
    ['257', 'workers: must be from 1 to 256 or auto (one per available core), got 257'],
    ['1.5', 'workers: must be an integer, got number 1.5'],
    ['many', 'workers: must be an integer, got "many"'],
  ])('refuses workers: %s with the key and file:line', (value, problem) => {
    const error = errorOf(`jwtproxy:\n${verifier}  workers: ${value}\n`);
    expect(error.message).toContain(problem);
    expect(error.message).toContain('config.yaml:10');
  });
});
