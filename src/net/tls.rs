//! DICOM TLS (PS3.15 Annex B.1): rustls with the ring provider. The listener presents the
//! node's certificate chain and key from `[tls]` and optionally verifies client
//! certificates against a CA bundle; the sender verifies a destination against its
//! `tls_ca` and presents the node's certificate when `[tls]` exists.
//!
//! dicom-ul brings rustls without a crypto provider, so the provider is named explicitly
//! here instead of relying on a process-wide default.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{Error as PemError, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{TlsCheck, TlsCheckError, TlsSection};

/// Why a TLS context cannot be built. Each cause is part of the message but not a
/// `source`: callers print error chains (`{:#}`), which would repeat it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read PEM certificates: {cause}")]
    Certificates { path: PathBuf, cause: PemError },
    #[error("{path}: no certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: cannot read a PEM private key (PKCS#8, PKCS#1 or SEC1): {cause}")]
    Key { path: PathBuf, cause: PemError },
    #[error("{path}: CA certificate not usable: {cause}")]
    CaCertificate { path: PathBuf, cause: rustls::Error },
    #[error("{path}: CA certificate not usable: {cause}")]
    CaVerifier {
        path: PathBuf,
        cause: VerifierBuilderError,
    },
    #[error("TLS configuration refused: {0}")]
    Protocols(rustls::Error),
    #[error("TLS configuration refused: client certificate and key: {0}")]
    ClientIdentity(rustls::Error),
    #[error("TLS configuration refused: certificate and key: {0}")]
    ServerIdentity(rustls::Error),
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |cause| TlsError::Certificates {
        path: path.to_owned(),
        cause,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c).map_err(|cause| TlsError::CaCertificate {
            path: ca.to_owned(),
            cause,
        })?;
    }
    Ok(Arc::new(roots))
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|cause| TlsError::Key {
        path: path.to_owned(),
        cause,
    })
}

/// Configuration validation that builds the contexts: a file missing, unreadable or refused
/// by rustls is a configuration problem (`Config::load_with(path, &ContextCheck)`).
pub struct ContextCheck;

impl TlsCheck for ContextCheck {
    fn server(&self, tls: &TlsSection) -> Result<(), TlsCheckError> {
        server_config(tls).map(drop).map_err(Into::into)
    }

    fn client(&self, ca: &Path, identity: Option<&TlsSection>) -> Result<(), TlsCheckError> {
        client_config(ca, identity).map(drop).map_err(Into::into)
    }
}

/// The sender's TLS configuration for a destination whose certificate must chain to `ca`.
pub fn client_config(
    ca: &Path,
    identity: Option<&TlsSection>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocols)?
        .with_root_certificates(roots(ca)?);
    let cfg = match identity {
        Some(t) => builder
            .with_client_auth_cert(load_certs(&t.certificate)?, load_key(&t.private_key)?)
            .map_err(TlsError::ClientIdentity)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// The listener's TLS configuration from `[tls]`. Errors name the file at fault.
pub fn server_config(t: &TlsSection) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(&t.certificate)?;
    let key = load_key(&t.private_key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocols)?;
    let builder = match &t.client_ca {
        Some(ca) => {
            let v = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider());
            let v = if t.require_client_certificate.unwrap_or(true) {
                v
            } else {
                v.allow_unauthenticated()
            };
            let v = v.build().map_err(|cause| TlsError::CaVerifier {
                path: ca.clone(),
                cause,
            })?;
            builder.with_client_cert_verifier(v)
        }
        None => builder.with_no_client_auth(),
    };
    let cfg = builder
        .with_single_cert(certs, key)
        .map_err(TlsError::ServerIdentity)?;
    Ok(Arc::new(cfg))
}

/// The same certificate for the HTTPS status page: no client certificate (browsers), and
/// HTTP/1.1 announced by ALPN.
pub fn web_server_config(t: &TlsSection) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocols)?
        .with_no_client_auth()
        .with_single_cert(load_certs(&t.certificate)?, load_key(&t.private_key)?)
        .map_err(TlsError::ServerIdentity)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn client_certificate_settings_without_client_ca_are_errors() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/prima-node.toml");
        let base = std::fs::read_to_string(&example).unwrap()
            + "[tls]\ncertificate = \"/etc/n.crt\"\nprivate_key = \"/etc/n.key\"\n";
        // Server-only TLS stays valid.
        Config::parse(&example, &base).unwrap();
        for v in [true, false] {
            let text = format!("{base}require_client_certificate = {v}\n");
            let e = Config::parse(&example, &text).unwrap_err().to_string();
            assert!(
                e.contains(&format!(
                    "[tls] require_client_certificate = {v} needs client_ca (without it no client certificate is requested)"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn config_problems_name_the_tls_files_only_when_contexts_are_built() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/prima-node.toml");
        let text = std::fs::read_to_string(&example).unwrap()
            + "[tls]\ncertificate = \"/nonexistent/node.crt\"\n\
               private_key = \"/nonexistent/node.key\"\n\
               [[destinations]]\nae_title = \"TLSPACS\"\nhost = \"127.0.0.1\"\nport = 2762\n\
               tls_ca = \"/nonexistent/ca.crt\"\n";
        Config::parse(&example, &text).unwrap();
        let e = Config::parse_with(&example, &text, &ContextCheck)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[tls]: /nonexistent/node.crt"), "{e}");
        assert!(
            e.contains("[[destinations]] #2 tls_ca: /nonexistent/ca.crt"),
            "{e}"
        );
    }
}
