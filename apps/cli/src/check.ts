/**
 * `jwtproxy -check -config FILE`: everything that can be verified without listening, connecting
 * or publishing. The file is read strictly (an unknown key anywhere is an error), each component's
 * options go through its schema and its own check (key files readable and of the right kind), the
 * signer's CA key must match its certificate, TLS key pairs must match, CA files must hold
 * certificates. The first mistake is thrown as a ConfigError with its key path and `file:line`.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import { systemClock, type ComponentContext, type Logger, type Runtime } from '@jwtproxy/core';
import { checkComponent, type LoadedConfig } from '@jwtproxy/config';

/** Reads `file` for the key at `at`, or throws a ConfigError there. */
function read(config: LoadedConfig, at: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (error) {
    throw config.errorAt(at, `cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
}

function certificate(config: LoadedConfig, at: string, file: string): X509Certificate {
  try {
    return new X509Certificate(read(config, at, file));
  } catch (error) {
    if ((error as { code?: string }).code === 'ERR_CONFIG') throw error;
    throw config.errorAt(at, `${file} holds no PEM certificate: ${(error as Error).message}`);
  }
}

export async function checkConfiguration(config: LoadedConfig, runtime: Runtime, logger: Logger): Promise<void> {
  const enabled = (config.signerProxy?.enabled ? 1 : 0) + config.verifierProxies.filter((p) => p.enabled).length + (config.keyregistry?.enabled ? 1 : 0);
  if (enabled === 0) throw config.errorAt('', 'enables nothing: no signer_proxy, verifier_proxies entry or keyregistry is enabled');
  const context: ComponentContext = { logger, clock: systemClock, baseDir: config.baseDir, runtime };

  const signer = config.signerProxy?.enabled ? config.signerProxy : undefined;
  if (signer) {
    await checkComponent(runtime.privateKeySources, signer.signer.privateKey, `${signer.path}.signer.private_key`, { ...context, issuer: signer.signer.issuer }, config);
    if (signer.caKeyFile && signer.caCrtFile) {
      const ca = certificate(config, `${signer.path}.ca_crt_file`, signer.caCrtFile);
      let key;
      try {
        key = createPrivateKey(read(config, `${signer.path}.ca_key_file`, signer.caKeyFile));
      } catch (error) {
        if ((error as { code?: string }).code === 'ERR_CONFIG') throw error;
        throw config.errorAt(`${signer.path}.ca_key_file`, `${signer.caKeyFile} holds no PEM private key: ${(error as Error).message}`);
      }
      if (!ca.checkPrivateKey(key)) throw config.errorAt(`${signer.path}.ca_key_file`, `${signer.caKeyFile} is not the key of the CA certificate ${signer.caCrtFile}`);
    }
    for (const [i, file] of signer.trustedCertificates.entries()) certificate(config, `${signer.path}.trusted_certificates[${i}]`, file);
  }

  for (const proxy of config.verifierProxies.filter((p) => p.enabled)) {
    const at = `${proxy.path}.verifier`;
    const settings = proxy.verifier;
    await checkComponent(runtime.keyServers, settings.keyServer, `${at}.key_server`, context, config);
    await checkComponent(runtime.nonceStores, settings.nonceStorage, `${at}.nonce_storage`, context, config);
    for (const [i, claimsVerifier] of settings.claimsVerifiers.entries()) {
      await checkComponent(runtime.claimsVerifiers, claimsVerifier, `${at}.claims_verifiers[${i}]`, context, config);
    }
    if (settings.upstreamCaFile) certificate(config, `${at}.upstream_ca_file`, settings.upstreamCaFile);
    if (proxy.keyFile && proxy.crtFile) {
      const key = read(config, `${proxy.path}.key_file`, proxy.keyFile);
      const cert = read(config, `${proxy.path}.crt_file`, proxy.crtFile);
      try {
        createSecureContext({ key, cert });
      } catch (error) {
        throw config.errorAt(`${proxy.path}.key_file`, `${proxy.keyFile} and ${proxy.crtFile} are not a TLS key pair: ${(error as Error).message}`);
      }
    }
  }

  if (config.keyregistry?.enabled) {
    const { keyRegistryOptionsFrom } = await import('@jwtproxy/keyregistry-server');
    try {
      keyRegistryOptionsFrom(config.keyregistry.options, config.baseDir);
    } catch (error) {
      if ((error as { code?: string }).code === 'ERR_CONFIG') {
        const { path, problem } = error as { path: string; problem: string };
        throw config.errorAt(path ? `${config.keyregistry.path}.${path}` : config.keyregistry.path, problem);
      }
      throw error;
    }
  }
}
