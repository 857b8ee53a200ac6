import { registerKeySources } from './register.js';

export { registerKeySources } from './register.js';
export {
  PresharedPrivateKeySource,
  createPresharedPrivateKeySource,
  type PresharedPrivateKeySourceOptions,
} from './preshared-private-key-source.js';
export { PresharedKeyServer, createPresharedKeyServer, type PresharedKeyServerOptions } from './preshared-key-server.js';
export { readPrivateKeyFile, readPublicKeyFile } from './pem.js';

// `import '@jwtproxy/key-sources'` is enough to make the built-in types known to the registries.
registerKeySources();
