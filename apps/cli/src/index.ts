export { main, version } from './cli.js';
export { parseArguments, usage, UsageError, type CliArguments } from './args.js';
export { loadPlugins, PluginError, type PluginApi } from './plugins.js';
export { createJwtProxyRuntime, registerBuiltins } from './builtins.js';
export { componentReference } from './component-docs.js';
export { startJwtProxy, type RunningJwtProxy, type StartedServer, type StartOptions } from './run.js';
export { runKeyRegistryCommand, startKeyRegistryFromConfig, keyRegistryUsage, type CommandIo } from './keyregistry-command.js';
