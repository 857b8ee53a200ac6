/** How long answers are kept, in ms. */
export interface LifetimeRules {
  /** When the answer says nothing (no max-age, no Expires). */
  fallback: number;
  /** Least time kept, whatever the answer says (also for `no-cache`, `no-store`, `max-age=0`). */
  min: number;
  /** Longest time kept, whatever the answer says. */
  max: number;
}

type HeaderValue = string | string[] | undefined;

const first = (value: HeaderValue): string | undefined => (Array.isArray(value) ? value[0] : value);

/**
 * How long a JWK set (or discovery document) is fresh, in ms: its `Cache-Control: max-age` less
 * its `Age`, else `Expires` less `Date` (an invalid Expires is 0), else `rules.fallback`; then held within
 * [rules.min, rules.max]. `no-cache` and `no-store` count as 0, i.e. `rules.min`: a verifier
 * that asked for the set on every request would hand its source's load to its clients. A
 * malformed max-age is 0 too (RFC 9111 §4.2.1).
 */
export function freshnessLifetime(headers: Record<string, HeaderValue>, rules: LifetimeRules): number {
  let seconds: number | undefined;
  const cacheControl = headers['cache-control'];
  if (cacheControl !== undefined) {
    for (const directive of (Array.isArray(cacheControl) ? cacheControl.join(',') : cacheControl).split(',')) {
      const [rawName = '', rawValue] = directive.split('=', 2);
      const name = rawName.trim().toLowerCase();
      if (name === 'no-store' || name === 'no-cache') {
        seconds = 0;
        break;
      }
      if (name === 'max-age' && rawValue !== undefined) {
        const value = Number(rawValue.trim().replace(/^"(.*)"$/, '$1'));
        seconds = Number.isFinite(value) && value >= 0 ? Math.floor(value) : 0;
      }
    }
  }
  if (seconds !== undefined) {
    const age = Number(first(headers.age));
    if (Number.isFinite(age) && age > 0) seconds = Math.max(0, seconds - age);
  } else {
    const expiresHeader = first(headers.expires);
    if (expiresHeader !== undefined) {
      // An Expires that is not a date ("0") means already expired (RFC 9111 §5.3).
      const expires = Date.parse(expiresHeader);
      const date = Date.parse(first(headers.date) ?? '');
      seconds = Number.isFinite(expires) ? Math.max(0, (expires - (Number.isFinite(date) ? date : Date.now())) / 1000) : 0;
    }
  }
  const ms = seconds === undefined ? rules.fallback : seconds * 1000;
  return Math.min(rules.max, Math.max(rules.min, ms));
}
