import { readFileSync } from 'node:fs';
import path from 'node:path';
import { ConfigError, defineComponent, schema as s, type Clock, type InferOutput, type Logger } from '@jwtproxy/core';
import { parseSourceUrl } from './http-source.js';
import { supportedAlgorithms } from './jwk.js';
import { JwksKeyServer, jwksDefaults } from './jwks-key-server.js';

const sourceUrl = (description: string) =>
  s.pipe(
    s.string(),
    s.check((url) => parseSourceUrl(url) !== undefined, (issue) => `must be an absolute http or https URL without credentials, got ${JSON.stringify(issue.input)}`),
    s.description(description),
  );
const count = (fallback: number, min: number, max: number, description: string) =>
  s.optional(s.pipe(s.number(), s.integer(), s.minValue(min), s.maxValue(max), s.description(description)), fallback);
/** A duration of at least a second: shorter ones would let tokens drive the source's load. */
const atLeastASecond = (fallback: string, description: string) =>
  s.optional(
    s.pipe(
      s.duration('positive'),
      s.check((ms) => ms >= 1_000, 'must be 1s or more'),
      s.description(description),
    ),
    fallback,
  );

/** `key_server: {type: jwks, options}` of a verifier. */
export const jwksKeyServerOptions = s.strictObject({
  url: s.optional(sourceUrl('The JWK set (`https://idp.example.com/.well-known/jwks.json`). Without it, `issuer` must be an OIDC issuer, whose discovery document gives the set.')),
  issuer: s.optional(
    s.pipe(
      s.string(),
      s.minLength(1),
      s.description(
        'The only `iss` accepted. Without `url`, also an OIDC issuer URL: the set is the `jwks_uri` of `{issuer}/.well-known/openid-configuration`, whose `issuer` must be exactly this.',
      ),
    ),
  ),
  issuers: s.optional(
    s.pipe(s.array(s.pipe(s.string(), s.minLength(1))), s.minLength(1), s.description('The `iss` values accepted (instead of `issuer`), compared exactly.')),
  ),
  algorithms: s.optional(
    s.pipe(
      s.array(s.picklist(supportedAlgorithms, `must be one of ${supportedAlgorithms.join(', ')}`)),
      s.minLength(1),
      s.description("Algorithms accepted (default: all of them); a key's own `alg`, or its type's algorithms, are narrowed to these."),
    ),
  ),
  timeout: s.optional(s.pipe(s.duration('positive'), s.description('Whole-request timeout of a read of the set (or discovery document).')), '5s'),
  cache_duration: s.optional(s.pipe(s.duration('positive'), s.description('How long a set is kept when its answer has no max-age (nor Expires).')), '10m'),
  min_cache_duration: atLeastASecond('1m', 'Least time a set is kept, whatever its answer says (also for `no-cache`); at least 1s.'),
  max_cache_duration: s.optional(s.pipe(s.duration('positive'), s.description('Longest time a set is kept, whatever its answer says.')), '24h'),
  max_stale: s.optional(
    s.pipe(s.duration('non-negative'), s.description('How long past its expiry a set keeps verifying while its source cannot be read; 0: not at all.')),
    '1h',
  ),
  unknown_kid_refetch_interval: atLeastASecond('10s', 'Least time between two reads of the set caused by tokens naming a kid it does not hold; at least 1s.'),
  max_answer_bytes: count(jwksDefaults.maxAnswerBytes, 1_024, 4 * 1024 * 1024, 'Largest answer read, in bytes.'),
  max_keys: count(jwksDefaults.maxKeys, 1, 1_000, 'Most keys a set may list; a longer one is refused as a whole.'),
  ca_file: s.optional(s.pipe(s.string(), s.minLength(1), s.description('PEM CA certificates trusted for an https source instead of the system ones, relative to the configuration file.'))),
});

export type JwksKeyServerConfig = InferOutput<typeof jwksKeyServerOptions>;

/** The key server from checked options; ConfigError naming the option for what the schema cannot say. */
export function jwksKeyServerFromConfig(options: JwksKeyServerConfig, context: { baseDir: string; logger: Logger; clock?: Clock }): JwksKeyServer {
  if (options.issuer !== undefined && options.issuers !== undefined) throw new ConfigError('issuers', 'give issuer or issuers, not both');
  if (options.url === undefined) {
    if (options.issuer === undefined) {
      throw new ConfigError('url', 'is required (the JWK set), unless issuer names an OIDC issuer whose discovery document gives it');
    }
    if (!parseSourceUrl(options.issuer) || new URL(options.issuer).search) {
      throw new ConfigError('issuer', `without url, must be an OIDC issuer URL (http or https) whose discovery document names the JWK set, got ${JSON.stringify(options.issuer)}`);
    }
  } else if (options.issuer === undefined && options.issuers === undefined) {
    // A JWK set says nothing about issuers: without this, any iss would do for its keys.
    throw new ConfigError('issuers', 'name the issuers whose tokens this JWK set verifies (issuer: one, issuers: several)');
  }
  if (options.min_cache_duration > options.max_cache_duration) throw new ConfigError('min_cache_duration', 'must not be longer than max_cache_duration');
  let ca: string | undefined;
  if (options.ca_file !== undefined) {
    const file = path.resolve(context.baseDir, options.ca_file);
    try {
      ca = readFileSync(file, 'utf8');
    } catch (error) {
      throw new ConfigError('ca_file', `cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
    }
    if (!ca.includes('-----BEGIN CERTIFICATE-----')) throw new ConfigError('ca_file', `${file} holds no PEM certificate`);
  }
  return new JwksKeyServer({
    ...(options.url !== undefined ? { url: options.url } : { discoveryIssuer: options.issuer! }),
    issuers: options.issuers ?? [options.issuer!],
    ...(options.algorithms ? { algorithms: options.algorithms } : {}),
    timeout: options.timeout,
    cacheDuration: options.cache_duration,
    minCacheDuration: options.min_cache_duration,
    maxCacheDuration: options.max_cache_duration,
    maxStale: options.max_stale,
    unknownKidRefetchInterval: options.unknown_kid_refetch_interval,
    maxAnswerBytes: options.max_answer_bytes,
    maxKeys: options.max_keys,
    ...(ca ? { ca } : {}),
    logger: context.logger,
    ...(context.clock ? { clock: context.clock } : {}),
  });
}

/**
 * `key_server: {type: jwks, options: {url | issuer, issuers, algorithms, …}}`. The set is first
 * read at once, in the background: a source that is down at start-up does not stop the verifier
 * (its requests are refused until the set can be read).
 */
export const jwksKeyServer = defineComponent({
  type: 'jwks',
  description: "Public keys from a JWK set over HTTP(S), or from an OIDC issuer's discovery document; cached by its Cache-Control, refreshed in the background.",
  options: jwksKeyServerOptions,
  create(options, context): JwksKeyServer {
    const server = jwksKeyServerFromConfig(options, context);
    server.refresh().catch(() => {
      // Logged by the key server; requests read it again when they need it.
    });
    return server;
  },
});
