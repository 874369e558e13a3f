//! DICOM TLS (PS3.15 Annex B.1) for the listener: rustls with the ring provider, the
//! node's certificate chain and key from `[tls]`, and optional client-certificate
//! verification against a CA bundle.
//!
//! dicom-ul brings rustls without a crypto provider, so the provider is named explicitly
//! here instead of relying on a process-wide default.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::TlsSection;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read PEM certificates: {message}")]
    Certificates { path: PathBuf, message: String },
    #[error("{path}: no certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: cannot read a PEM private key (PKCS#8, PKCS#1 or SEC1): {message}")]
    Key { path: PathBuf, message: String },
    #[error("{path}: CA certificate not usable: {message}")]
    Ca { path: PathBuf, message: String },
    #[error("TLS configuration refused: {0}")]
    Rustls(String),
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |e: rustls::pki_types::pem::Error| TlsError::Certificates {
        path: path.to_owned(),
        message: e.to_string(),
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

/// The listener's TLS configuration from `[tls]`. Errors name the file at fault.
pub fn server_config(t: &TlsSection) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(&t.certificate)?;
    let key = PrivateKeyDer::from_pem_file(&t.private_key).map_err(|e| TlsError::Key {
        path: t.private_key.clone(),
        message: e.to_string(),
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &t.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs(ca)? {
                roots.add(c).map_err(|e| TlsError::Ca {
                    path: ca.clone(),
                    message: e.to_string(),
                })?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let v = if t.require_client_certificate {
                v
            } else {
                v.allow_unauthenticated()
            };
            let v = v.build().map_err(|e| TlsError::Ca {
                path: ca.clone(),
                message: e.to_string(),
            })?;
            builder.with_client_cert_verifier(v)
        }
        None => builder.with_no_client_auth(),
    };
    let cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Rustls(format!("certificate and key: {e}")))?;
    Ok(Arc::new(cfg))
}
