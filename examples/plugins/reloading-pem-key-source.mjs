// A private key source plugin for the signer: signs with the PEM key in `path`, read again every
// `reload_interval`, so that a replaced key is picked up and a removed one is no longer used.
//
//   private_key:
//     type: reloading-pem
//     options: {key_id: mykey, path: mykey.key, reload_interval: 1m}
//
// `activeKey()` runs on every request and must not wait: it returns what the last read found.
// When there is no key to sign with, it throws: the signer answers 502
// `jwtproxy: unable to sign request: <message>` and logs a warning (once per 10 s).
import { createPrivateKey } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';

export default function register({ privateKeySources, schema: s }) {
  privateKeySources.register({
    type: 'reloading-pem',
    options: s.strictObject({
      key_id: s.pipe(s.string(), s.minLength(1), s.description("The `kid` put in every token's header.")),
      path: s.pipe(s.string(), s.minLength(1), s.description('The PEM private key, relative to the configuration file.')),
      reload_interval: s.optional(s.pipe(s.duration('positive'), s.description('How often the file is read again.')), '1m'),
    }),
    async create(options, context) {
      const file = path.resolve(context.baseDir, options.path);
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
      const timer = setInterval(load, options.reload_interval);
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
    },
  });
}
