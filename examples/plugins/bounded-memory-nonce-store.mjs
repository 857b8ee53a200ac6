// A nonce store plugin: remembers at most `max` unexpired nonces in this process.
//
//   nonce_storage:
//     type: bounded-memory
//     options: {max: 100000}
//
// - a replayed token: `claim` resolves false: 403 `Missing or invalid 'jti' claim`;
// - the store cannot answer (here: full of unexpired nonces; for a remote store: it is down):
//   throw (or reject with) any Error: 503 `jwtproxy: unable to verify request: Nonce storage
//   unavailable`. The verifier fails closed: no token passes while the store cannot answer.
export default function register({ nonceStores, schema: s }) {
  nonceStores.register({
    type: 'bounded-memory',
    options: s.strictObject({
      max: s.optional(s.pipe(s.number(), s.integer(), s.minValue(1), s.description('Most unexpired nonces kept.')), 100_000),
    }),
    create({ max }) {
      /** jti → expiry (unix seconds), in insertion order. */
      const nonces = new Map();
      const forgetExpired = () => {
        const now = Date.now() / 1000;
        for (const [jti, expiresAt] of nonces) if (expiresAt < now) nonces.delete(jti);
      };
      return {
        async claim(jti, expiresAt) {
          if (nonces.has(jti)) return false;
          if (nonces.size >= max) forgetExpired();
          if (nonces.size >= max) throw new Error(`bounded-memory: ${max} unexpired nonces stored, no room for another`);
          nonces.set(jti, expiresAt);
          return true;
        },
      };
    },
  });
}
