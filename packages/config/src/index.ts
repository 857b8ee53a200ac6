export { loadConfig, readConfigFile, parseConfig, defaults, MAX_WORKERS, type LoadConfigOptions } from './load.js';
export { checkComponent, createComponent, placeConfigError } from './component.js';
export { expandEnv } from './expand-env.js';
export type {
  AdminConfig,
  LoadedConfig,
  SignerProxyConfig,
  SignerConfig,
  VerifierProxyConfig,
  VerifierConfig,
  CheConfig,
  KeyRegistryConfig,
} from './types.js';
