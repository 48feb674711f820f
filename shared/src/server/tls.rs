//! Optional server TLS from PEM files: `TLS_CERT_FILE` (the certificate, intermediates after it)
//! and `TLS_KEY_FILE` (its private key). Both or neither; without them the server speaks
//! plaintext gRPC (h2c), e.g. behind a TLS-terminating proxy or on a private network.

use crate::env::{ConfigError, Env, optional};
use anyhow::Context;
use std::path::PathBuf;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The certificate and key files a server speaks TLS with.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// `TLS_CERT_FILE`: PEM certificate, optionally followed by its chain.
    pub cert: PathBuf,
    /// `TLS_KEY_FILE`: PEM private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// None when neither variable is set; one of them alone is an error naming the other.
    pub fn from_env(env: &dyn Env) -> Result<Option<Self>, ConfigError> {
        let files = match (optional(env, "TLS_CERT_FILE"), optional(env, "TLS_KEY_FILE")) {
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "TLS_KEY_FILE",
                    "is not set but TLS_CERT_FILE is: set both for TLS, or neither",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "TLS_CERT_FILE",
                    "is not set but TLS_KEY_FILE is: set both for TLS, or neither",
                ));
            }
            (Some(cert), Some(key)) => Self { cert: cert.into(), key: key.into() },
        };
        for (var, path) in [("TLS_CERT_FILE", &files.cert), ("TLS_KEY_FILE", &files.key)] {
            if !path.is_file() {
                return Err(ConfigError::new(var, format!("{} is not a readable file", path.display())));
            }
        }
        Ok(Some(files))
    }

    /// The files read into a TLS acceptor: rustls with the ring provider (the one sqlx and tonic
    /// already use, so the binaries carry one crypto library), TLS 1.2 and 1.3, ALPN `h2` and
    /// `http/1.1` (gRPC-Web from browsers may come over either).
    pub fn acceptor(&self) -> anyhow::Result<TlsAcceptor> {
        let cert =
            std::fs::read(&self.cert).with_context(|| format!("TLS_CERT_FILE: reading {}", self.cert.display()))?;
        let key = std::fs::read(&self.key).with_context(|| format!("TLS_KEY_FILE: reading {}", self.key.display()))?;
        for (var, pem, path) in [("TLS_CERT_FILE", &cert, &self.cert), ("TLS_KEY_FILE", &key, &self.key)] {
            if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
                anyhow::bail!("{var}: {} is not a PEM file", path.display());
            }
        }
        let chain = CertificateDer::pem_slice_iter(&cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("TLS_CERT_FILE: {} holds no usable certificate: {e}", self.cert.display()))?;
        if chain.is_empty() {
            anyhow::bail!("TLS_CERT_FILE: {} holds no certificate", self.cert.display());
        }
        let key = PrivateKeyDer::from_pem_slice(&key)
            .map_err(|e| anyhow::anyhow!("TLS_KEY_FILE: {} holds no usable private key: {e}", self.key.display()))?;
        let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS: the ring provider supports the default protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                anyhow::anyhow!("TLS_CERT_FILE / TLS_KEY_FILE: the certificate and key do not go together: {e}")
            })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(std::sync::Arc::new(config)))
    }
}

/// How the `healthcheck` subcommand reaches a server that speaks TLS. It is on when the
/// server's own TLS_CERT_FILE is set (the check runs beside the server, with its environment);
/// the server's certificate is verified against HEALTHCHECK_CA_FILE, by default the certificates
/// in TLS_CERT_FILE itself (right for a self-signed certificate, or a file that ends with its
/// CA), under the name HEALTHCHECK_TLS_NAME (default localhost).
#[derive(Clone, Debug)]
pub struct CheckTls {
    /// The CA certificates (PEM) the health check trusts.
    pub ca_pem: Vec<u8>,
    /// The name expected in the server certificate (`HEALTHCHECK_TLS_NAME`).
    pub server_name: String,
}

impl CheckTls {
    /// The variables `from_env` reads beyond `TLS_CERT_FILE`, for `--help`.
    pub const SETTINGS: &[crate::env::Setting] = &[
        crate::env::Setting {
            var: "HEALTHCHECK_CA_FILE",
            default: "(the certificates in TLS_CERT_FILE)",
            meaning: "what `healthcheck` trusts when TLS is on",
        },
        crate::env::Setting {
            var: "HEALTHCHECK_TLS_NAME",
            default: "localhost",
            meaning: "the name `healthcheck` expects in the server certificate",
        },
    ];

    /// What `healthcheck` needs to reach a TLS server (`HEALTHCHECK_CA_FILE`,
    /// `HEALTHCHECK_TLS_NAME`), or None when TLS is off.
    pub fn from_env(env: &dyn Env) -> Result<Option<Self>, ConfigError> {
        let Some(cert) = optional(env, "TLS_CERT_FILE") else {
            return Ok(None);
        };
        let (var, path) = match optional(env, "HEALTHCHECK_CA_FILE") {
            Some(ca) => ("HEALTHCHECK_CA_FILE", ca),
            None => ("TLS_CERT_FILE", cert),
        };
        let ca_pem = std::fs::read(&path).map_err(|e| ConfigError::new(var, format!("cannot read {path}: {e}")))?;
        let server_name = optional(env, "HEALTHCHECK_TLS_NAME").unwrap_or_else(|| "localhost".into());
        Ok(Some(Self { ca_pem, server_name }))
    }

    /// A tonic client TLS configuration trusting `ca_pem` for `server_name`.
    pub fn client_config(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .domain_name(self.server_name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_or_neither() {
        let env: &[(&str, &str)] = &[];
        assert!(TlsFiles::from_env(&env).unwrap().is_none());
        let env: &[(&str, &str)] = &[("TLS_CERT_FILE", "/etc/hostname")];
        let err = TlsFiles::from_env(&env).unwrap_err();
        assert_eq!(err.var, "TLS_KEY_FILE");
        assert!(err.to_string().contains("TLS_CERT_FILE is"), "{err}");
        let env: &[(&str, &str)] = &[("TLS_KEY_FILE", "/etc/hostname")];
        assert_eq!(TlsFiles::from_env(&env).unwrap_err().var, "TLS_CERT_FILE");
        let env: &[(&str, &str)] = &[("TLS_CERT_FILE", "/etc/hostname"), ("TLS_KEY_FILE", "/nonexistent/key.pem")];
        assert_eq!(TlsFiles::from_env(&env).unwrap_err().var, "TLS_KEY_FILE");
        let env: &[(&str, &str)] = &[("TLS_CERT_FILE", "/etc/hostname"), ("TLS_KEY_FILE", "/etc/hostname")];
        let files = TlsFiles::from_env(&env).unwrap().unwrap();
        assert!(files.acceptor().err().expect("not a PEM file").to_string().starts_with("TLS_CERT_FILE: "));
    }
}
