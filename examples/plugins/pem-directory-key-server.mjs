// A key server plugin: the public key of (issuer, kid) is the PEM file <dir>/<issuer>/<kid>.pem.
//
//   key_server:
//     type: pem-directory
//     options: {dir: keys}          # relative to the configuration file
//
// Two ways a key server says no:
// - the key is unknown: throw an error whose `code` is 'ERR_KEY_NOT_FOUND' (what @jwtproxy/core's
//   KeyNotFoundError carries): 403 `jwtproxy: unable to verify request: Could not find any matching public key`;
// - it cannot answer (unreadable directory, a broken file...): throw any other Error: 403
//   `jwtproxy: unable to verify request: Unexpected key server error`, fail closed, as the Go tool.
import { createPublicKey } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';

/** Names that cannot leave the directory. */
const SAFE_NAME = /^[A-Za-z0-9_.-]{1,128}$/;

function keyNotFound(issuer, kid) {
  return Object.assign(new Error(`no key ${kid} for ${issuer}`), { code: 'ERR_KEY_NOT_FOUND' });
}

export default function register({ keyServers, schema: s }) {
  keyServers.register({
    type: 'pem-directory',
    options: s.strictObject({
      dir: s.pipe(s.string(), s.minLength(1), s.description('The directory of <issuer>/<kid>.pem files, relative to the configuration file.')),
    }),
    create(options, context) {
      const dir = path.resolve(context.baseDir, options.dir);
      return {
        async resolve(issuer, kid) {
          if (!SAFE_NAME.test(issuer) || !SAFE_NAME.test(kid) || issuer.startsWith('.') || kid.startsWith('.')) throw keyNotFound(issuer, kid);
          let pem;
          try {
            pem = await readFile(path.join(dir, issuer, `${kid}.pem`), 'utf8');
          } catch (error) {
            if (error.code === 'ENOENT') throw keyNotFound(issuer, kid);
            throw error; // EACCES, ENOTDIR...: the key server is broken, not the token
          }
          const key = createPublicKey(pem);
          // The algorithms this key may verify: decided by the key, never by the token.
          const algorithms = key.asymmetricKeyType === 'rsa' ? ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512'] : key.asymmetricKeyType === 'ec' ? ['ES256', 'ES384', 'ES512'] : ['EdDSA'];
          return { key, algorithms };
        },
      };
    },
  });
}
