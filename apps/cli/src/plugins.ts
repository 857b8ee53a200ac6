import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { adoptLegacyRegistrations, type Runtime } from '@jwtproxy/core';

/**
 * What a plugin's default export (or `register` export) receives: the runtime the CLI builds
 * from, with its registries (`nonceStores`, `keyServers`, …), `schema` (valibot and `duration`)
 * and `logger`. A plugin registers `{type, options: schema, create}` there, as the built-ins are.
 */
export type PluginApi = Runtime;

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

/**
 * Imports each plugin and calls its `export default function register(runtime)` (or its
 * `register` export). The old form, registering in @jwtproxy/core's module-level registries on
 * import, still works for now: what it registered is moved into `runtime`, with a deprecation warning.
 */
export async function loadPlugins(specifiers: readonly string[], runtime: Runtime, cwd = process.cwd()): Promise<void> {
  const { logger } = runtime;
  for (const specifier of specifiers) {
    let loaded: Record<string, unknown>;
    try {
      loaded = (await import(moduleUrl(specifier, cwd))) as Record<string, unknown>;
    } catch (error) {
      throw new PluginError(`cannot load plugin ${JSON.stringify(specifier)}: ${(error as Error)?.message ?? String(error)}`);
    }
    const register = typeof loaded.default === 'function' ? loaded.default : loaded.register;
    try {
      if (typeof register === 'function') await (register as (runtime: Runtime) => unknown)(runtime);
      adoptLegacyRegistrations(runtime, (kind, type) =>
        logger.warn("deprecated plugin form: registered in @jwtproxy/core's module-level registries on import; export default function register(runtime) instead", {
          plugin: specifier,
          kind,
          type,
        }),
      );
    } catch (error) {
      throw new PluginError(`plugin ${JSON.stringify(specifier)} failed to register: ${(error as Error)?.message ?? String(error)}`);
    }
    logger.debug('plugin loaded', { plugin: specifier });
  }
}
