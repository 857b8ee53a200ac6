import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { ConfigError } from '@jwtproxy/core';

/** The PEM labels in a file, e.g. `RSA PRIVATE KEY`; never the key material itself. */
function pemLabels(text: string): string[] {
  return [...text.matchAll(/-----BEGIN ([A-Z0-9 ]+)-----/g)].map((match) => match[1] ?? '');
}

function readKeyFile(option: string, file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new ConfigError(option, `cannot read ${file}: ${code ?? (error as Error).message}`);
  }
}

/** Why node:crypto refused the key, without echoing anything from the file. */
function reasonOf(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.split('\n')[0] ?? message;
}

const privateKeyLabels = ['RSA PRIVATE KEY', 'PRIVATE KEY', 'EC PRIVATE KEY'];

/**
 * Reads a PEM private key as the Go tool does: PKCS#1 `RSA PRIVATE KEY`, PKCS#8 `PRIVATE KEY`
 * or SEC 1 `EC PRIVATE KEY`. Any failure is a ConfigError naming `option`.
 */
export function readPrivateKeyFile(option: string, file: string): KeyObject {
  const text = readKeyFile(option, file);
  const labels = pemLabels(text);
  if (!labels.some((label) => privateKeyLabels.includes(label))) {
    const found = labels.length ? `found ${labels.join(', ')}` : 'no PEM block found';
    throw new ConfigError(option, `${file} holds no PEM private key (expected ${privateKeyLabels.join(', ')}; ${found})`);
  }
  try {
    return createPrivateKey({ key: text, format: 'pem' });
  } catch (error) {
    throw new ConfigError(option, `${file} holds no usable private key: ${reasonOf(error)}`);
  }
}

const publicKeyLabels = ['PUBLIC KEY', 'RSA PUBLIC KEY', 'CERTIFICATE'];

/**
 * Reads a PEM public key: SPKI `PUBLIC KEY`, PKCS#1 `RSA PUBLIC KEY`, or the public key of a
 * `CERTIFICATE`. A private key is refused even though its public half could be derived: a
 * verifier has no business holding the signer's private key.
 */
export function readPublicKeyFile(option: string, file: string): KeyObject {
  const text = readKeyFile(option, file);
  const labels = pemLabels(text);
  if (labels.some((label) => label.endsWith('PRIVATE KEY'))) {
    throw new ConfigError(option, `${file} holds a private key; give the public key (PEM PUBLIC KEY) instead`);
  }
  if (!labels.some((label) => publicKeyLabels.includes(label))) {
    const found = labels.length ? `found ${labels.join(', ')}` : 'no PEM block found';
    throw new ConfigError(option, `${file} holds no PEM public key (expected ${publicKeyLabels.join(', ')}; ${found})`);
  }
  try {
    return createPublicKey({ key: text, format: 'pem' });
  } catch (error) {
    throw new ConfigError(option, `${file} holds no usable public key: ${reasonOf(error)}`);
  }
}
