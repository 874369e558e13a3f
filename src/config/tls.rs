//! `[tls]`: DICOM TLS on the listener (absent = plain TCP), and the check that builds the
//! TLS contexts from the files named in the configuration.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The checks that read the `[tls]` and `tls_ca` files and build TLS contexts from them.
/// `net::tls` implements it; taking it as a parameter keeps this module free of the network
/// layer while the problems still come out in one list, in key order. Each method returns
/// the error that stops the context from being built.
pub trait TlsCheck {
    /// The listener's context from `[tls]`.
    fn server(&self, tls: &TlsSection) -> Result<(), TlsCheckError>;
    /// The sender's context for a destination whose certificate must chain to `ca`.
    fn client(&self, ca: &Path, identity: Option<&TlsSection>) -> Result<(), TlsCheckError>;
}

/// Why a TLS context cannot be built: the network layer's own error, kept whole.
pub type TlsCheckError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain the listener presents (leaf first).
    pub certificate: PathBuf,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1), unencrypted.
    pub private_key: PathBuf,
    /// PEM CA certificate(s) that client certificates must chain to; absent = clients
    /// are not asked for a certificate.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: refuse clients without a certificate (false = verify one when
    /// presented, accept none); absent = true. Given without `client_ca`: an error.
    #[serde(default)]
    pub require_client_certificate: Option<bool>,
}

impl TlsSection {
    /// The section's problems; the listener's context is built only when `check` is given.
    pub fn problems(&self, check: Option<&dyn TlsCheck>) -> Vec<String> {
        let mut p = Vec::new();
        if let (None, Some(v)) = (&self.client_ca, self.require_client_certificate) {
            // Either way the writer expected client verification, which without a CA
            // is silently off: no certificate would be requested.
            p.push(format!(
                "[tls] require_client_certificate = {v} needs client_ca (without it no client certificate is requested)"
            ));
        }
        for (k, path) in [
            ("certificate", Some(&self.certificate)),
            ("private_key", Some(&self.private_key)),
            ("client_ca", self.client_ca.as_ref()),
        ] {
            if let Some(path) = path {
                if !path.is_absolute() {
                    p.push(format!("[tls] {k}: {path:?} must be an absolute path"));
                }
            }
        }
        if let Some(Err(e)) = check.map(|c| c.server(self)) {
            p.push(format!("[tls]: {e}"));
        }
        p
    }
}

/// Fails every context, naming what it was asked to build, so tests see where the
/// contexts' errors land in the list.
#[cfg(test)]
pub(crate) struct FailingTlsForTests;

#[cfg(test)]
impl TlsCheck for FailingTlsForTests {
    fn server(&self, _: &TlsSection) -> Result<(), TlsCheckError> {
        Err("server context refused".into())
    }
    fn client(&self, ca: &Path, _: Option<&TlsSection>) -> Result<(), TlsCheckError> {
        Err(format!("client context for {} refused", ca.display()).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(text: &str) -> TlsSection {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_good_section_passes_and_asks_for_the_server_context() {
        let t = tls("certificate = \"/c.pem\"\nprivate_key = \"/k.pem\"\nclient_ca = \"/ca.pem\"\nrequire_client_certificate = false\n");
        assert_eq!(t.problems(None), Vec::<String>::new());
        assert_eq!(
            t.problems(Some(&FailingTlsForTests)),
            vec!["[tls]: server context refused"]
        );
    }

    #[test]
    fn each_bad_value_is_named() {
        let t = tls(
            "certificate = \"c.pem\"\nprivate_key = \"k.pem\"\nrequire_client_certificate = true\n",
        );
        assert_eq!(
            t.problems(None),
            vec![
                "[tls] require_client_certificate = true needs client_ca (without it no client certificate is requested)",
                "[tls] certificate: \"c.pem\" must be an absolute path",
                "[tls] private_key: \"k.pem\" must be an absolute path",
            ]
        );
        let t = tls("certificate = \"/c.pem\"\nprivate_key = \"/k.pem\"\nclient_ca = \"ca.pem\"\n");
        assert_eq!(
            t.problems(None),
            vec!["[tls] client_ca: \"ca.pem\" must be an absolute path"]
        );
    }
}
