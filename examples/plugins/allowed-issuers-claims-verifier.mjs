// A claims verifier plugin: lets through only tokens whose issuer is listed.
//
//   claims_verifiers:
//   - type: allowed-issuers
//     options: {issuers: [jwtproxy, billing]}
//
// To refuse a token, throw: the verifier answers 403 `Error verifying claims: <message>` (as the
// Go tool) and logs the refusal at debug. Any Error will do; nothing else is needed.
export function register({ claimsVerifiers }) {
  claimsVerifiers.register('allowed-issuers', (options) => {
    const issuers = new Set(Array.isArray(options.issuers) ? options.issuers.map(String) : []);
    if (issuers.size === 0) throw new Error('allowed-issuers: options.issuers must list at least one issuer');
    return {
      // Synchronous on purpose: it runs on every request, and a plain function costs nothing more.
      verify(claims) {
        if (!issuers.has(claims.iss)) throw new Error(`issuer not allowed: ${claims.iss}`);
      },
    };
  });
}
