import { BadRequestError } from './errors.js';

/**
 * Service names and key ids travel in URL paths and become storage keys, so only a
 * conservative alphabet is allowed: letters, digits and `. _ ~ = - : @ +`. `=` is needed
 * for the Go tool's padded base64url key ids. No `/`, no `..`, no leading dot, no control
 * or non-ASCII characters.
 */
const allowed = /^[A-Za-z0-9._~=:@+-]{1,200}$/;

export function checkName(what: 'service' | 'kid', value: string): string {
  if (!allowed.test(value) || value.startsWith('.') || value.includes('..')) {
    throw new BadRequestError(
      `invalid ${what === 'kid' ? 'key id' : 'service name'}: use 1 to 200 of the characters A-Z a-z 0-9 . _ ~ = - : @ +, without a leading dot or ".."`,
      'invalid_name',
    );
  }
  return value;
}

export function isValidName(value: string): boolean {
  return allowed.test(value) && !value.startsWith('.') && !value.includes('..');
}
