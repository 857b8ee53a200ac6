/**
 * Keys of a JWK set as the verifier takes or refuses them, and how long a set is kept: what a
 * publisher's mistakes (or an attacker who controls an answer) can and cannot make us accept.
 */
import { generateKeyPairSync } from 'node:crypto';
import type { AsymmetricAlgorithm } from '@jwtproxy/core';
import { describe, expect, it } from 'vitest';
import { JwksInvalidError, UnusableJwkError, freshnessLifetime, readKeySet, supportedAlgorithms, verificationKeyFromJwk } from '../src/index.js';
import { makeKey } from './helpers.js';

const all = { algorithms: new Set<AsymmetricAlgorithm>(supportedAlgorithms) };
const only = (...algs: AsymmetricAlgorithm[]) => ({ algorithms: new Set(algs) });

function refusal(jwk: unknown, rules = all): string {
  try {
    verificationKeyFromJwk(jwk, rules);
  } catch (error) {
    expect(error).toBeInstanceOf(UnusableJwkError);
    return (error as UnusableJwkError).problem;
  }
  throw new Error('the key was taken');
}

describe('a key of the set', () => {
  const rsa = makeKey('rsa-1');
  const ec = makeKey('ec-1', 'ec');
  const ed = makeKey('ed-1', 'ed25519');

  it('takes RSA, EC P-256 and Ed25519 keys, with the algorithms of their type', () => {
    expect(verificationKeyFromJwk(rsa.jwk, all).key.algorithms).toEqual(['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512']);
    expect(verificationKeyFromJwk(ec.jwk, all).key.algorithms).toEqual(['ES256']);
    expect(verificationKeyFromJwk(ed.jwk, all).key.algorithms).toEqual(['EdDSA']);
  });

  it("narrows to the JWK's own alg, then to the allowlist", () => {
    expect(verificationKeyFromJwk({ ...rsa.jwk, alg: 'PS384' }, all).key.algorithms).toEqual(['PS384']);
    expect(verificationKeyFromJwk(rsa.jwk, only('RS256', 'ES256')).key.algorithms).toEqual(['RS256']);
    expect(refusal({ ...rsa.jwk, alg: 'PS384' }, only('RS256'))).toMatch(/fit for PS384, none of them in this key server's algorithms/);
    expect(refusal(ec.jwk, only('RS256'))).toMatch(/fit for ES256/);
  });

  it('refuses symmetric keys, other uses, other key_ops, unknown types and algorithms', () => {
    expect(refusal({ kty: 'oct', kid: 'k', k: 'c2VjcmV0' })).toMatch(/symmetric key/);
    expect(refusal({ ...rsa.jwk, use: 'enc' })).toMatch(/"use" is "enc"/);
    expect(refusal({ ...rsa.jwk, key_ops: ['encrypt'] })).toMatch(/key_ops/);
    expect(refusal({ ...rsa.jwk, kty: 'DSA' })).toMatch(/unsupported "kty" "DSA"/);
    expect(refusal({ ...rsa.jwk, alg: 'none' })).toMatch(/"alg" "none" is not one of/);
    expect(refusal({ ...rsa.jwk, alg: 'HS256' })).toMatch(/"alg" "HS256"/);
    expect(refusal({ ...rsa.jwk, alg: 'ES256' })).toMatch(/"alg" ES256 does not fit a RSA key/);
    expect(refusal({ ...ec.jwk, alg: 'ES384' })).toMatch(/does not fit a EC key on P-256/);
  });

  it('refuses keys without a kid, with a non-string one, or one over 1,024 characters', () => {
    const { kid: _kid, ...withoutKid } = rsa.jwk;
    expect(refusal(withoutKid)).toMatch(/no "kid"/);
    expect(refusal({ ...rsa.jwk, kid: 7 })).toMatch(/"kid" is not a string/);
    expect(refusal({ ...rsa.jwk, kid: 'k'.repeat(1025) })).toMatch(/"kid" is not a string of 1 to 1024/);
  });

  it('refuses RSA keys under 2048 or over 8192 bits, and exponents that make any signature verify', () => {
    const small = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ format: 'jwk' });
    expect(refusal({ ...small, kid: 'small' })).toMatch(/RSA key of 1024 bits \(accepted: 2048 to 8192\)/);
    // 8200 bits of modulus, made up (never imported as a key of ours): refused by length before import.
    const huge = Buffer.alloc(1200, 0xff).toString('base64url');
    expect(refusal({ kty: 'RSA', kid: 'huge', n: huge, e: 'AQAB' })).toMatch(/"n" is longer than a supported key's/);
    // OpenSSL imports e = 1: s^1 mod n = s, so any "signature" equal to the padded message would verify.
    expect(refusal({ ...rsa.jwk, e: 'AQ' })).toBe('RSA public exponent 1 (it must be odd and at least 3)');
    expect(refusal({ ...rsa.jwk, e: 'Ag' })).toBe('RSA public exponent 2 (it must be odd and at least 3)');
  });

  it('refuses curves core cannot verify, points off the curve, and malformed members', () => {
    const k1 = generateKeyPairSync('ec', { namedCurve: 'secp256k1' }).publicKey.export({ format: 'jwk' });
    expect(refusal({ ...k1, kid: 'k1' })).toMatch(/curve "secp256k1" is not one of P-256/);
    const x25519 = generateKeyPairSync('x25519').publicKey.export({ format: 'jwk' });
    expect(refusal({ ...x25519, kid: 'x' })).toMatch(/curve "X25519" is not one of Ed25519/);
    const offCurve = { ...ec.jwk, y: Buffer.alloc(32, 7).toString('base64url') };
    expect(refusal(offCurve)).toMatch(/not a valid EC public key/);
    expect(refusal({ ...rsa.jwk, n: 12 })).toMatch(/"n" is missing or not a string/);
    expect(refusal({ ...rsa.jwk, n: '!!!not base64!!!' })).toMatch(/"n" is not base64url/);
    expect(refusal('a string')).toMatch(/not a JSON object/);
  });

  it('reads only the public members: a private key published by mistake is flagged and its d never used', () => {
    const pair = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const privateJwk = { ...pair.privateKey.export({ format: 'jwk' }), kid: 'leaked' };
    const read = verificationKeyFromJwk(privateJwk, all);
    expect(read.hadPrivateMembers).toBe(true);
    expect(read.key.key.type).toBe('public');
  });
});

describe('a JWK set', () => {
  const a = makeKey('a');
  const b = makeKey('b', 'ec');
  const text = (keys: unknown[]) => JSON.stringify({ keys });

  it('keeps its usable keys and says why the others were refused', () => {
    const set = readKeySet(text([a.jwk, b.jwk, { kty: 'oct', kid: 'hmac', k: 'AAAA' }, { kty: 'RSA' }]), all, 100);
    expect([...set.keys.keys()]).toEqual(['a', 'b']);
    expect(set.refused.get('hmac')?.problem).toMatch(/symmetric/);
    expect(set.refusedWithoutKid).toHaveLength(1);
  });

  it('refuses a kid shared by two different keys, and merges one key listed once per alg', () => {
    const other = makeKey('a');
    const set = readKeySet(text([a.jwk, other.jwk, b.jwk]), all, 100);
    expect(set.keys.has('a')).toBe(false);
    expect(set.refused.get('a')?.problem).toBe('two different keys have this kid');
    const merged = readKeySet(text([{ ...a.jwk, alg: 'RS256' }, { ...a.jwk, alg: 'PS256' }]), all, 100);
    expect(merged.keys.get('a')?.key.algorithms).toEqual(['RS256', 'PS256']);
    // One kid for "enc" and "sig": the "sig" key is used.
    const mixed = readKeySet(text([{ ...a.jwk, use: 'enc' }, a.jwk]), all, 100);
    expect(mixed.keys.has('a')).toBe(true);
  });

  it('refuses as a whole: not JSON, not a set, too many keys, no usable key; takes an empty list', () => {
    expect(() => readKeySet('{"keys": [', all, 100)).toThrow(JwksInvalidError);
    expect(() => readKeySet('<html>', all, 100)).toThrow(/not JSON/);
    expect(() => readKeySet('{"keys": {}}', all, 100)).toThrow(/not a JWK set/);
    expect(() => readKeySet('[]', all, 100)).toThrow(/not a JWK set/);
    expect(() => readKeySet(text([a.jwk, b.jwk, a.jwk]), all, 2)).toThrow(/3 keys, more than max_keys \(2\)/);
    expect(() => readKeySet(text([{ kty: 'oct', kid: 'x', k: 'AA' }]), all, 100)).toThrow(/none of the 1 keys is usable \(key "x": a symmetric key/);
    expect(readKeySet(text([]), all, 100).keys.size).toBe(0);
  });
});

describe('how long a set is kept', () => {
  const rules = { fallback: 600_000, min: 60_000, max: 86_400_000 };

  it("by max-age less Age, within min and max; no-cache and no-store are min; nothing said is the fallback", () => {
    expect(freshnessLifetime({ 'cache-control': 'public, max-age=3600' }, rules)).toBe(3_600_000);
    expect(freshnessLifetime({ 'cache-control': 'max-age=3600', age: '600' }, rules)).toBe(3_000_000);
    expect(freshnessLifetime({ 'cache-control': 'max-age=5' }, rules)).toBe(60_000);
    expect(freshnessLifetime({ 'cache-control': 'max-age=999999999' }, rules)).toBe(86_400_000);
    expect(freshnessLifetime({ 'cache-control': 'no-cache' }, rules)).toBe(60_000);
    expect(freshnessLifetime({ 'cache-control': 'no-store, max-age=3600' }, rules)).toBe(60_000);
    expect(freshnessLifetime({ 'cache-control': 'max-age=banana' }, rules)).toBe(60_000);
    expect(freshnessLifetime({}, rules)).toBe(600_000);
  });

  it('by Expires less Date when there is no max-age; an invalid Expires is already expired', () => {
    const date = new Date('2026-01-01T00:00:00Z');
    const expires = new Date(date.getTime() + 7_200_000);
    expect(freshnessLifetime({ date: date.toUTCString(), expires: expires.toUTCString() }, rules)).toBe(7_200_000);
    expect(freshnessLifetime({ expires: '0' }, rules)).toBe(60_000);
  });
});
