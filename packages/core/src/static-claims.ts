import { ClaimsVerificationError } from './errors.js';
import { schema as s } from './options.js';
import { defineComponent } from './registry.js';
import type { ClaimsVerifier, JwtClaims } from './types.js';

/** Deep equality of a YAML value with a JSON claim value (both plain data). */
function sameValue(expected: unknown, actual: unknown): boolean {
  if (expected === actual) return true;
  if (expected === null || actual === null || typeof expected !== 'object' || typeof actual !== 'object') return false;
  if (Array.isArray(expected) !== Array.isArray(actual)) return false;
  if (Array.isArray(expected) && Array.isArray(actual)) {
    return expected.length === actual.length && expected.every((item, i) => sameValue(item, actual[i]));
  }
  const e = expected as Record<string, unknown>;
  const a = actual as Record<string, unknown>;
  const keys = Object.keys(e);
  return keys.length === Object.keys(a).length && keys.every((k) => Object.hasOwn(a, k) && sameValue(e[k], a[k]));
}

/**
 * The Go `static` claims verifier: every listed claim must be present with exactly the
 * configured value. Options are the required claims themselves: `{options: {sub: billing}}`.
 */
export class StaticClaimsVerifier implements ClaimsVerifier {
  readonly #required: ReadonlyArray<[string, unknown]>;

  constructor(requiredClaims: Record<string, unknown>) {
    this.#required = Object.entries(requiredClaims);
  }

  verify(claims: Readonly<JwtClaims>): void {
    for (const [name, value] of this.#required) {
      if (!Object.hasOwn(claims, name)) throw new ClaimsVerificationError(`Required claim not found: ${name}`);
      if (!sameValue(value, claims[name])) throw new ClaimsVerificationError(`Claim did not have the required value: ${name}`);
    }
  }
}

/** `claims_verifiers: [{type: static, options: {<claim>: <value>, …}}]`: at least one claim. */
export const staticClaimsVerifier = defineComponent({
  type: 'static',
  description: 'Every listed claim must be present with exactly the configured value (the Go `static` verifier).',
  options: s.pipe(
    s.record(s.string(), s.unknown()),
    s.check((claims) => Object.keys(claims).length > 0, 'the static claims verifier needs at least one claim'),
    s.description('The required claims themselves: `{sub: billing}` requires a `sub` claim equal to "billing" (any YAML value; at least one).'),
  ),
  create: (claims) => new StaticClaimsVerifier(claims),
});
