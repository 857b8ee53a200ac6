// A claims verifier plugin: lets through only tokens whose issuer is listed.
//
//   claims_verifiers:
//   - type: allowed-issuers
//     options: {issuers: [jwtproxy, billing]}
//
// To refuse a token, throw: the verifier answers 403 `Error verifying claims: <message>` (as the
// Go tool) and logs the refusal at debug. Any Error will do; nothing else is needed. The options
// are declared with the runtime's schema kit: jwtproxy checks them (`issuers: []` or a misspelt
// key stops the start with the key path and line) and hands them to `create` typed.
export default function register({ claimsVerifiers, schema: s }) {
  claimsVerifiers.register({
    type: 'allowed-issuers',
    options: s.strictObject({
      issuers: s.pipe(s.array(s.string()), s.minLength(1), s.description('The issuers whose tokens pass.')),
    }),
    create({ issuers }) {
      const allowed = new Set(issuers);
      return {
        // Synchronous on purpose: it runs on every request, and a plain function costs nothing more.
        verify(claims) {
          if (!allowed.has(claims.iss)) throw new Error(`issuer not allowed: ${claims.iss}`);
        },
      };
    },
  });
}
