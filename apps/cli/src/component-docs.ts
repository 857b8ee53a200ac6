import { componentDocs, optionsTable, silentLogger } from '@jwtproxy/core';
import { keyRegistryBlockOptions } from '@jwtproxy/keyregistry-server';
import { createJwtProxyRuntime } from './builtins.js';

/**
 * docs/components.md: the option tables of every built-in component type and of the
 * `jwtproxy.keyregistry` block, printed from the schemas the configuration is checked with
 * (`node scripts/component-docs.mjs` writes it; a test checks that it is up to date).
 */
export function componentReference(): string {
  return [
    '# Components and their options',
    '',
    '<!-- Generated from the option schemas by `node scripts/component-docs.mjs`; do not edit by hand. -->',
    '',
    'Each component is `{type, options}` in the configuration. Every component, built in or from a',
    'plugin, follows the same rules: an unknown option stops the start with its key path, `file:line`',
    'and the closest known option; a duration is a Go duration string (`300ms`, `1m30s`) or `0`, and',
    'each duration option says whether 0 (`≥ 0`) or negative values (`may be negative`) are allowed;',
    'an empty value (`key:` alone) is the same as leaving the option out.',
    '',
    componentDocs(createJwtProxyRuntime(silentLogger)).trimEnd(),
    '',
    '## The key registry (`jwtproxy.keyregistry`)',
    '',
    optionsTable({ type: 'keyregistry', options: keyRegistryBlockOptions, create: () => undefined }),
    '',
  ].join('\n');
}
