import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import {
  claimsVerifiers,
  keyCaches,
  keyServers,
  nonceStores,
  privateKeySources,
  type Logger,
} from '@jwtproxy/core';

/**
 * What a plugin's `register` (or default) export receives: the very registries the CLI builds
 * from. A plugin may instead import '@jwtproxy/core' and register on import, which works when
 * it resolves the same copy of core as the CLI (installed beside it).
 */
export interface PluginApi {
  privateKeySources: typeof privateKeySources;
  keyServers: typeof keyServers;
  keyCaches: typeof keyCaches;
  nonceStores: typeof nonceStores;
  claimsVerifiers: typeof claimsVerifiers;
  logger: Logger;
}

export class PluginError extends Error {
  override name = 'PluginError';
}

/** A path (`./x.mjs`, `/abs/x.js`) is taken from the working directory; a package name is resolved from there too. */
function moduleUrl(specifier: string, cwd: string): string {
  const looksLikePath = specifier.startsWith('.') || path.isAbsolute(specifier) || /\.[cm]?js$/.test(specifier);
  if (looksLikePath) return pathToFileURL(path.resolve(cwd, specifier)).href;
  try {
    return pathToFileURL(createRequire(path.join(cwd, 'noop.js')).resolve(specifier)).href;
  } catch {
    // ESM-only packages have no `require` entry: let import() resolve it from beside the CLI.
    return specifier;
  }
}

export async function loadPlugins(specifiers: readonly string[], logger: Logger, cwd = process.cwd()): Promise<void> {
  const api: PluginApi = { privateKeySources, keyServers, keyCaches, nonceStores, claimsVerifiers, logger };
  for (const specifier of specifiers) {
    let loaded: Record<string, unknown>;
    try {
      loaded = (await import(moduleUrl(specifier, cwd))) as Record<string, unknown>;
    } catch (error) {
      throw new PluginError(`cannot load plugin ${JSON.stringify(specifier)}: ${(error as Error)?.message ?? String(error)}`);
    }
    const register = typeof loaded.register === 'function' ? loaded.register : loaded.default;
    try {
      if (typeof register === 'function') await (register as (api: PluginApi) => unknown)(api);
    } catch (error) {
      throw new PluginError(`plugin ${JSON.stringify(specifier)} failed to register: ${(error as Error)?.message ?? String(error)}`);
    }
    logger.debug('plugin loaded', { plugin: specifier });
  }
}
