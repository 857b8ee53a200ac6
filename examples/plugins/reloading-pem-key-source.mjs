// A private key source plugin for the signer: signs with the PEM key in `path`, read again every
// `reload_seconds`, so that a replaced key is picked up and a removed one is no longer used.
//
//   private_key:
//     type: reloading-pem
//     options: {key_id: mykey, path: mykey.key, reload_seconds: 60}
//
// `activeKey()` runs on every request and must not wait: it returns what the last read found.
// When there is no key to sign with, it throws: the signer answers 502
// `jwtproxy: unable to sign request: <message>` and logs a warning (once per 10 s).
import { createPrivateKey } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';

export function register({ privateKeySources }) {
  privateKeySources.register('reloading-pem', async (options, context) => {
    if (typeof options.key_id !== 'string' || typeof options.path !== 'string') throw new Error('reloading-pem: options.key_id and options.path are required');
    const file = path.resolve(context.baseDir, options.path);
    const reloadMs = Number(options.reload_seconds ?? 60) * 1000;
    let key;
    let problem = 'no key read yet';
    const load = async () => {
      try {
        const privateKey = createPrivateKey(await readFile(file, 'utf8'));
        const alg = privateKey.asymmetricKeyType === 'rsa' ? 'RS256' : privateKey.asymmetricKeyType === 'ec' ? 'ES256' : 'EdDSA';
        key = { kid: options.key_id, alg, privateKey };
      } catch (error) {
        key = undefined;
        problem = `cannot read the signing key ${file}: ${error.code ?? error.message}`;
      }
    };
    await load();
    if (!key) throw new Error(problem); // at start: stop with the reason
    const timer = setInterval(load, reloadMs);
    timer.unref();
    return {
      activeKey() {
        if (!key) throw new Error(problem);
        return key;
      },
      async stop() {
        clearInterval(timer);
      },
    };
  });
}
