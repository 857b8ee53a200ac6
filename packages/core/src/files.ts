import { readFile } from 'node:fs';
import { promisify } from 'node:util';

/**
 * node:fs's readFile as a promise, for the files the proxies read at start and on a reload (keys,
 * certificates, the configuration). Not `node:fs/promises`: loading that module at start costs a
 * sidecar idle RSS (issue 19, docs/memory.md).
 */
export const readFileAsync = promisify(readFile);
