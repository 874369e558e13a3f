//! `[[destinations]]`: where the results are sent, each over plain TCP or DICOM TLS.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::checks::ae_title_problem;
use super::tls::{TlsCheck, TlsSection};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub ae_title: String,
    pub host: String,
    pub port: u16,
    /// PEM CA certificate(s) the destination's certificate must chain to (and name
    /// `host`). Present = DICOM TLS to this destination; the node presents `[tls]`'s
    /// certificate as its client certificate when that section exists.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
}

impl Destination {
    /// Stable key of a destination in the outbox (AE@host:port).
    pub fn key(&self) -> String {
        format!("{}@{}:{}", self.ae_title, self.host, self.port)
    }

    /// The problems of the `n`th entry (from 1, as the messages count). `identity` is the
    /// client certificate the sender's TLS context presents; the context is built only when
    /// `check` is given.
    pub fn problems(
        &self,
        n: usize,
        identity: Option<&TlsSection>,
        check: Option<&dyn TlsCheck>,
    ) -> Vec<String> {
        let mut p = Vec::new();
        let what = format!("[[destinations]] #{n} ae_title");
        if let Some(m) = ae_title_problem(&what, &self.ae_title) {
            p.push(m);
        }
        if self.host.trim().is_empty() {
            p.push(format!("[[destinations]] #{n} host: empty"));
        }
        if let Some(ca) = &self.tls_ca {
            if !ca.is_absolute() {
                p.push(format!(
                    "[[destinations]] #{n} tls_ca: {ca:?} must be an absolute path"
                ));
            } else if let Some(Err(e)) = check.map(|c| c.client(ca, identity)) {
                p.push(format!("[[destinations]] #{n} tls_ca: {e}"));
            }
        }
        if self.port == 0 {
            p.push(format!("[[destinations]] #{n} port: 0 is not a port"));
        }
        p
    }
}

/// The list's problems: each entry's, each followed by whether it repeats an earlier one.
pub(super) fn problems(
    destinations: &[Destination],
    identity: Option<&TlsSection>,
    check: Option<&dyn TlsCheck>,
) -> Vec<String> {
    let mut p = Vec::new();
    let mut keys = HashSet::new();
    for (i, d) in destinations.iter().enumerate() {
        p.extend(d.problems(i + 1, identity, check));
        if !keys.insert(d.key()) {
            p.push(format!(
                "[[destinations]] #{}: duplicate of an earlier entry ({})",
                i + 1,
                d.key()
            ));
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tls::FailingTlsForTests;

    fn destination(ae_title: &str, host: &str, port: u16, tls_ca: Option<&str>) -> Destination {
        Destination {
            ae_title: ae_title.into(),
            host: host.into(),
            port,
            tls_ca: tls_ca.map(Into::into),
        }
    }

    #[test]
    fn good_destinations_pass_and_have_keys() {
        let list = [
            destination("PACS", "pacs", 104, None),
            destination("PACS", "pacs", 2762, Some("/ca.pem")),
        ];
        assert_eq!(problems(&list, None, None), Vec::<String>::new());
        assert_eq!(list[1].key(), "PACS@pacs:2762");
    }

    #[test]
    fn each_bad_entry_is_named_by_its_number() {
        let list = [
            destination("PACS", "pacs", 104, None),
            destination("THIS_AE_TITLE_IS_TOO_LONG", "", 0, Some("ca.pem")),
            destination("PACS", "pacs", 104, Some("/ca.pem")),
        ];
        assert_eq!(
            problems(&list, None, Some(&FailingTlsForTests)),
            vec![
                "[[destinations]] #2 ae_title: AE title \"THIS_AE_TITLE_IS_TOO_LONG\" is 25 characters long (maximum 16)",
                "[[destinations]] #2 host: empty",
                "[[destinations]] #2 tls_ca: \"ca.pem\" must be an absolute path",
                "[[destinations]] #2 port: 0 is not a port",
                "[[destinations]] #3 tls_ca: client context for /ca.pem refused",
                "[[destinations]] #3: duplicate of an earlier entry (PACS@pacs:104)",
            ]
        );
    }
}
