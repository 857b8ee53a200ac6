import { createPrivateKey, generateKeyPair, randomBytes, sign, X509Certificate, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';
import { createSecureContext, type SecureContext } from 'node:tls';
import { promisify } from 'node:util';
import { ConfigError, readFileAsync } from '@jwtproxy/core';
import { LRUCache } from 'lru-cache';
import type Forge from 'node-forge';

/**
 * node-forge (~40 ms and several MB to load) is loaded by the first CertificateForger.load: a
 * signer without a CA, and every verifier, never load it.
 */
let forge: typeof Forge;
async function loadForge(): Promise<void> {
  forge ??= (await import('node-forge')).default;
}

const generateKeyPairAsync = promisify(generateKeyPair);
const signAsync = promisify(sign);

export interface CertificateAuthorityFiles {
  caKeyFile: string;
  caCertFile: string;
}

/** node-forge has this function; its type definitions do not list it. */
interface ForgeTbs {
  getTBSCertificate(cert: Forge.pki.Certificate): Forge.asn1.Asn1;
}

/** Told of each certificate forged (metrics): how long it took, whether it failed, the cache's size after it. */
export interface CertificateForgingObserver {
  forged(event: { durationMs: number; failed: boolean; cachedHosts: number }): void;
}

/** Where an intercepted tunnel's TLS context comes from: a CertificateForger, or SharedCertificates in a worker thread. */
export interface SecureContextSource {
  secureContextFor(host: string): Promise<SecureContext>;
  readonly cachedHosts: number;
}

/** A forged certificate and its key, as PEM: what a primary thread hands its workers. */
export interface ForgedCertificate {
  key: string;
  cert: string;
}

/** Gives the forged certificate for a host (lower-case DNS name or IP address), forging it once. */
export type ForgedCertificateSource = (host: string) => Promise<ForgedCertificate>;

const DAY = 24 * 3600_000;
/** Forged certificates live a year at most (and never beyond the CA's own expiry). */
const LEAF_LIFETIME = 365 * DAY;

async function readConfigFile(file: string, key: string, what: string): Promise<string> {
  try {
    return await readFileAsync(file, 'utf8');
  } catch (error) {
    throw new ConfigError(key, `cannot read the ${what}: ${(error as Error).message}`, { file });
  }
}

/**
 * Forges TLS server certificates for intercepted CONNECT tunnels, signed by the operator's CA.
 *
 * Speed: one leaf key pair is made at start (async, off the event loop) and shared by every
 * forged certificate, as mitmproxy does; per host only the certificate is built (node-forge,
 * about a millisecond of ASN.1) and signed by the CA key with async crypto.sign on the libuv
 * thread pool. Forged contexts are cached in a bounded LRU, and concurrent tunnels to a new
 * host share one forging.
 */
export class CertificateForger implements SecureContextSource {
  readonly #caKey: KeyObject;
  readonly #issuer: Forge.pki.CertificateField[];
  readonly #caNotAfter: number;
  readonly #signatureOid: string;
  readonly #leafPublicKey: Forge.pki.PublicKey;
  readonly #leafKeyPem: string;
  readonly #contexts: LRUCache<string, Promise<SecureContext>>;
  readonly #observer: CertificateForgingObserver | undefined;
  /** PEMs handed out by `forgedFor` (to worker threads), by host; made on first use. */
  #pems: LRUCache<string, Promise<ForgedCertificate>> | undefined;
  readonly #cacheSize: number;

  private constructor(
    caKey: KeyObject,
    caCert: Forge.pki.Certificate,
    caNotAfter: number,
    leafPublicKey: Forge.pki.PublicKey,
    leafKeyPem: string,
    cacheSize: number,
    observer: CertificateForgingObserver | undefined,
  ) {
    this.#observer = observer;
    this.#caKey = caKey;
    this.#issuer = caCert.subject.attributes;
    this.#caNotAfter = caNotAfter;
    this.#signatureOid = forge.pki.oids.sha256WithRSAEncryption!;
    this.#leafPublicKey = leafPublicKey;
    this.#leafKeyPem = leafKeyPem;
    this.#contexts = new LRUCache({ max: cacheSize });
    this.#cacheSize = cacheSize;
  }

  /**
   * Reads and checks the CA key and certificate; every problem is a ConfigError naming the file.
   * Then makes the shared leaf key pair.
   */
  static async load(
    files: CertificateAuthorityFiles,
    options: { cacheSize?: number; observer?: CertificateForgingObserver | undefined } = {},
  ): Promise<CertificateForger> {
    await loadForge();
    const keyKey = 'signer_proxy.ca_key_file';
    const certKey = 'signer_proxy.ca_crt_file';
    const [keyPem, certPem] = await Promise.all([
      readConfigFile(files.caKeyFile, keyKey, 'CA private key'),
      readConfigFile(files.caCertFile, certKey, 'CA certificate'),
    ]);
    let caKey: KeyObject;
    try {
      caKey = createPrivateKey(keyPem);
    } catch (error) {
      const reason = /passphrase/i.test((error as Error).message) ? 'it is encrypted; use a key without a passphrase (openssl -nodes)' : (error as Error).message;
      throw new ConfigError(keyKey, `not a usable PEM private key: ${reason}`, { file: files.caKeyFile });
    }
    if (caKey.asymmetricKeyType !== 'rsa') {
      throw new ConfigError(keyKey, `the CA key is ${caKey.asymmetricKeyType ?? 'of an unknown type'}; an RSA key is needed (openssl req -newkey rsa:2048)`, { file: files.caKeyFile });
    }
    let x509: X509Certificate;
    let caCert: Forge.pki.Certificate;
    try {
      x509 = new X509Certificate(certPem);
      caCert = forge.pki.certificateFromPem(certPem);
    } catch (error) {
      throw new ConfigError(certKey, `not a usable PEM RSA certificate: ${(error as Error).message}`, { file: files.caCertFile });
    }
    // A v1 certificate has no extensions at all; TLS clients (OpenSSL's, Go's) take a self-signed one
    // as a root, and `openssl x509 -req -signkey` still makes one, so it is accepted as the Go tool does.
    const isV1 = caCert.version === 0;
    if (!x509.ca && !isV1) throw new ConfigError(certKey, 'the certificate is not a CA certificate (basicConstraints CA:TRUE is missing)', { file: files.caCertFile });
    if (!x509.checkPrivateKey(caKey)) {
      throw new ConfigError(keyKey, `the private key does not match the CA certificate ${files.caCertFile}`, { file: files.caKeyFile });
    }
    const caNotAfter = Date.parse(x509.validTo);
    if (caNotAfter <= Date.now()) throw new ConfigError(certKey, `the CA certificate expired on ${x509.validTo}`, { file: files.caCertFile });

    const leaf = await generateKeyPairAsync('rsa', { modulusLength: 2048 });
    const leafPublicKey = forge.pki.publicKeyFromPem(leaf.publicKey.export({ type: 'spki', format: 'pem' }) as string);
    const leafKeyPem = leaf.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    return new CertificateForger(caKey, caCert, caNotAfter, leafPublicKey, leafKeyPem, options.cacheSize ?? 1000, options.observer);
  }

  /** How many hosts have a forged certificate cached. */
  get cachedHosts(): number {
    return this.#contexts.size;
  }

  /** A TLS context presenting a certificate for `host` (DNS name or IP address). */
  secureContextFor(host: string): Promise<SecureContext> {
    return cachedUntilFailed(this.#contexts, host.toLowerCase(), (name) => this.#forge(name), this.#tell(this.#contexts));
  }

  /**
   * The certificate for `host` and the leaf key, as PEM, forged once per host while cached (and
   * once for concurrent asks): a primary thread answers its workers with it, so that N workers
   * do not forge a host's certificate N times.
   */
  forgedFor(host: string): Promise<ForgedCertificate> {
    const pems = (this.#pems ??= new LRUCache({ max: this.#cacheSize }));
    return cachedUntilFailed(pems, host.toLowerCase(), async (name) => ({ key: this.#leafKeyPem, cert: (await this.#forgeCertificate(name)).pem }), this.#tell(pems));
  }

  /** Tells the observer how long a forging took and how many hosts `cache` holds after it. */
  #tell(cache: { readonly size: number }): (durationMs: number, failed: boolean) => void {
    return (durationMs, failed) => this.#observer?.forged({ durationMs, failed, cachedHosts: cache.size });
  }

  /** The PEM certificate forged for `host` (for tests and diagnostics). */
  async certificateFor(host: string): Promise<string> {
    return (await this.#forgeCertificate(host.toLowerCase())).pem;
  }

  async #forge(host: string): Promise<SecureContext> {
    const { pem } = await this.#forgeCertificate(host);
    return createSecureContext({ key: this.#leafKeyPem, cert: pem });
  }

  async #forgeCertificate(host: string): Promise<{ pem: string }> {
    const cert = forge.pki.createCertificate();
    cert.publicKey = this.#leafPublicKey;
    // A positive serial in minimal DER: the first byte in 0x40–0x7f (top bit clear, so not
    // negative; never zero, which would be an illegal leading pad byte that OpenSSL refuses).
    const serial = randomBytes(16);
    serial[0] = (serial[0]! & 0x3f) | 0x40;
    cert.serialNumber = serial.toString('hex');
    const now = Date.now();
    cert.validity.notBefore = new Date(now - DAY);
    cert.validity.notAfter = new Date(Math.min(now + LEAF_LIFETIME, this.#caNotAfter));
    cert.setSubject([{ name: 'commonName', value: host.slice(0, 64) }]);
    cert.setIssuer(this.#issuer);
    const ipVersion = isIP(host);
    cert.setExtensions([
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', critical: true, digitalSignature: true, keyEncipherment: true },
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectAltName', altNames: [ipVersion ? { type: 7, ip: host } : { type: 2, value: host }] },
    ]);
    // Sign with node:crypto on the thread pool instead of forge's synchronous RSA in JavaScript.
    cert.signatureOid = this.#signatureOid;
    cert.siginfo.algorithmOid = this.#signatureOid;
    cert.tbsCertificate = (forge.pki as unknown as ForgeTbs).getTBSCertificate(cert);
    const tbsDer = Buffer.from(forge.asn1.toDer(cert.tbsCertificate).getBytes(), 'binary');
    const signature = await signAsync('sha256', tbsDer, this.#caKey);
    cert.signature = signature.toString('binary');
    return { pem: forge.pki.certificateToPem(cert) };
  }
}

/**
 * The TLS contexts of a worker thread's signer: certificates come from `source` (the primary's
 * CertificateForger.forgedFor, one forging per host for the process); the contexts made from
 * them are cached here, bounded as the forger's are.
 */
export class SharedCertificates implements SecureContextSource {
  readonly #source: ForgedCertificateSource;
  readonly #contexts: LRUCache<string, Promise<SecureContext>>;

  constructor(source: ForgedCertificateSource, options: { cacheSize?: number } = {}) {
    this.#source = source;
    this.#contexts = new LRUCache({ max: options.cacheSize ?? 1000 });
  }

  get cachedHosts(): number {
    return this.#contexts.size;
  }

  secureContextFor(host: string): Promise<SecureContext> {
    return cachedUntilFailed(this.#contexts, host.toLowerCase(), async (name) => {
      const { key, cert } = await this.#source(name);
      return createSecureContext({ key, cert });
    });
  }
}

/**
 * The promise `cache` holds for `key`, or a new one from `make`, cached at once so that concurrent
 * asks for a host share one forging, and dropped again if it fails so that the next ask tries
 * again instead of getting the failure for as long as it stays cached. `settled` hears how long
 * a new one took and whether it failed.
 */
function cachedUntilFailed<T>(
  cache: LRUCache<string, Promise<T>>,
  key: string,
  make: (key: string) => Promise<T>,
  settled?: (durationMs: number, failed: boolean) => void,
): Promise<T> {
  const cached = cache.get(key);
  if (cached) return cached;
  const started = performance.now();
  const made = make(key);
  cache.set(key, made);
  made.then(
    () => settled?.(performance.now() - started, false),
    () => {
      if (cache.get(key) === made) cache.delete(key);
      settled?.(performance.now() - started, true);
    },
  );
  return made;
}
