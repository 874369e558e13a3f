//! `[node]`: the DICOM listener's identity, address and limits, and the state directory.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::checks::ae_title_problem;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub ae_title: String,
    pub listen: String,
    pub state_dir: PathBuf,
    #[serde(default = "default_max_associations")]
    pub max_associations: usize,
    /// Per-PDU read timeout; a peer silent for longer loses its association.
    #[serde(default = "default_read_timeout_s")]
    pub read_timeout_s: u64,
    #[serde(default = "default_max_pdu_length")]
    pub max_pdu_length: u32,
    /// Device Serial Number written into the reports (and part of the Device Observer UID).
    /// Default: derived from `state_dir` on a single node, from the cluster's job stream
    /// with `[cluster]`, so every worker of one cluster writes the same identity.
    #[serde(default)]
    pub serial_number: Option<String>,
}

fn default_max_associations() -> usize {
    16
}
fn default_read_timeout_s() -> u64 {
    60
}
fn default_max_pdu_length() -> u32 {
    65536
}

impl NodeSection {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(m) = ae_title_problem("[node] ae_title", &self.ae_title) {
            p.push(m);
        }
        if self.listen.parse::<SocketAddr>().is_err() {
            p.push(format!(
                "[node] listen: {:?} is not an address:port such as \"0.0.0.0:11112\"",
                self.listen
            ));
        }
        if self.state_dir.as_os_str().is_empty() {
            p.push("[node] state_dir: empty path".into());
        } else if !self.state_dir.is_absolute() {
            p.push(format!(
                "[node] state_dir: {:?} must be an absolute path",
                self.state_dir
            ));
        }
        if self.max_associations == 0 {
            p.push("[node] max_associations: must be at least 1".into());
        }
        if self.read_timeout_s == 0 {
            p.push("[node] read_timeout_s: must be at least 1".into());
        }
        if !(4096..=16 * 1024 * 1024).contains(&self.max_pdu_length) {
            p.push(format!(
                "[node] max_pdu_length: {} is outside 4096..=16777216",
                self.max_pdu_length
            ));
        }
        if let Some(sn) = &self.serial_number {
            if !serial_number_ok(sn) {
                p.push(format!(
                    "[node] serial_number: {sn:?} must be 1 to 64 characters, no backslash or control characters (a DICOM LO)"
                ));
            }
        }
        p
    }
}

/// The serial number goes into a DICOM LO element.
fn serial_number_ok(sn: &str) -> bool {
    !(sn.trim().is_empty() || sn.len() > 64 || sn.chars().any(|c| c.is_control() || c == '\\'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(extra: &str) -> NodeSection {
        toml::from_str(&format!(
            "ae_title = \"PRIMA\"\nlisten = \"127.0.0.1:11112\"\nstate_dir = \"/tmp/x\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn defaults_pass() {
        let n = node("");
        assert_eq!(
            (n.max_associations, n.read_timeout_s, n.max_pdu_length),
            (16, 60, 65536)
        );
        assert_eq!(n.problems(), Vec::<String>::new());
    }

    #[test]
    fn each_bad_value_is_named() {
        let mut n = node("max_associations = 0\nread_timeout_s = 0\nmax_pdu_length = 4095\n");
        n.ae_title = "THIS_AE_TITLE_IS_TOO_LONG".into();
        n.listen = "nope".into();
        n.state_dir = "relative".into();
        n.serial_number = Some("a\\b".into());
        assert_eq!(
            n.problems(),
            vec![
                "[node] ae_title: AE title \"THIS_AE_TITLE_IS_TOO_LONG\" is 25 characters long (maximum 16)",
                "[node] listen: \"nope\" is not an address:port such as \"0.0.0.0:11112\"",
                "[node] state_dir: \"relative\" must be an absolute path",
                "[node] max_associations: must be at least 1",
                "[node] read_timeout_s: must be at least 1",
                "[node] max_pdu_length: 4095 is outside 4096..=16777216",
                "[node] serial_number: \"a\\\\b\" must be 1 to 64 characters, no backslash or control characters (a DICOM LO)",
            ]
        );
        n.state_dir = PathBuf::new();
        assert!(n
            .problems()
            .contains(&"[node] state_dir: empty path".to_string()));
    }

    #[test]
    fn serial_numbers() {
        assert!(serial_number_ok("PRIMA-0001"));
        assert!(serial_number_ok(&"x".repeat(64)));
        assert!(!serial_number_ok(&"x".repeat(65)));
        assert!(!serial_number_ok(" "));
        assert!(!serial_number_ok("a\nb"));
        assert!(!serial_number_ok("a\\b"));
    }
}
