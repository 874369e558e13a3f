//! `[http]`: the web status page, JSON API, /metrics and health endpoints; absent = off.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// address:port of the HTTP listener, e.g. "127.0.0.1:8080".
    pub listen: String,
    /// File holding the bearer token the actions (retry a delivery, re-run a study) need;
    /// without it the actions are refused and the pages stay read-only.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Show patient name and ID on the pages and in the API (default: accession number
    /// and study date only).
    #[serde(default)]
    pub show_patient_identifiers: bool,
    /// HTTPS with `[tls]`'s certificate and key (no client certificate is asked for).
    #[serde(default)]
    pub tls: bool,
    /// Pages and API readable without the token: only for a trusted, loopback-only setup
    /// (refused on another address; `check-config` warns).
    #[serde(default)]
    pub open_reads: bool,
    /// Open connections at most; beyond it a newcomer replaces the connection waiting
    /// longest for its request (`http::limits`).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds a client has to send a whole request (headers and body) once it begins.
    #[serde(default = "default_request_timeout_s")]
    pub request_timeout_s: u64,
    /// Seconds a connection may stay idle between requests, or stalled mid-response.
    #[serde(default = "default_idle_timeout_s")]
    pub idle_timeout_s: u64,
}

fn default_max_connections() -> usize {
    256
}
fn default_request_timeout_s() -> u64 {
    10
}
fn default_idle_timeout_s() -> u64 {
    60
}

impl HttpSection {
    /// The section's own problems; whether `tls` has a `[tls]` to use is the whole
    /// configuration's question.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.listen.parse::<SocketAddr>().is_err() {
            p.push(format!(
                "[http] listen: {:?} is not an address:port such as \"127.0.0.1:8080\"",
                self.listen
            ));
        }
        if self.open_reads
            && !self
                .listen
                .parse::<SocketAddr>()
                .is_ok_and(|a| a.ip().is_loopback())
        {
            p.push(format!(
                "[http] open_reads: only on a loopback address; {} is reachable from other hosts (set token_file instead)",
                self.listen
            ));
        }
        if self.max_connections < 8 {
            p.push("[http] max_connections: at least 8".into());
        }
        if self.request_timeout_s == 0 || self.idle_timeout_s == 0 {
            p.push("[http] request_timeout_s and idle_timeout_s: at least 1".into());
        }
        if let Some(f) = &self.token_file {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = std::fs::metadata(f) {
                let mode = m.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    p.push(format!(
                        "[http] token_file: {} may be read by other users (mode {mode:04o}): chmod 600 it",
                        f.display()
                    ));
                }
            }
            match std::fs::read_to_string(f) {
                Ok(t) if t.trim().len() >= 16 => {}
                Ok(_) => p.push(format!(
                    "[http] token_file: {} holds fewer than 16 characters",
                    f.display()
                )),
                Err(e) => p.push(format!(
                    "[http] token_file: cannot read {}: {e}",
                    f.display()
                )),
            }
        }
        p
    }

    /// The bearer token, trimmed; `None` without a token file.
    pub fn token(&self) -> Option<String> {
        let f = self.token_file.as_ref()?;
        std::fs::read_to_string(f)
            .ok()
            .map(|t| t.trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(listen: &str, token_file: Option<PathBuf>) -> HttpSection {
        HttpSection {
            listen: listen.into(),
            token_file,
            show_patient_identifiers: false,
            tls: false,
            open_reads: false,
            max_connections: default_max_connections(),
            request_timeout_s: default_request_timeout_s(),
            idle_timeout_s: default_idle_timeout_s(),
        }
    }

    fn write_private(f: &std::path::Path, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(f, text).unwrap();
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn a_good_section_passes_and_its_token_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        write_private(&f, "  0123456789abcdef\n");
        let h = http("127.0.0.1:8080", Some(f));
        assert_eq!(h.problems(), Vec::<String>::new());
        assert_eq!(h.token().as_deref(), Some("0123456789abcdef"));
        assert_eq!(http("127.0.0.1:8080", None).token(), None);
    }

    #[test]
    fn each_bad_value_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        write_private(&short, "0123456789abcde\n");
        assert_eq!(
            http("localhost:8080", Some(short.clone())).problems(),
            vec![
                "[http] listen: \"localhost:8080\" is not an address:port such as \"127.0.0.1:8080\"".to_string(),
                format!("[http] token_file: {} holds fewer than 16 characters", short.display()),
            ]
        );
        let missing = dir.path().join("missing");
        assert_eq!(
            http("127.0.0.1:8080", Some(missing.clone())).problems(),
            vec![format!(
                "[http] token_file: cannot read {}: No such file or directory (os error 2)",
                missing.display()
            )]
        );
        let open = dir.path().join("open");
        write_private(&open, "0123456789abcdef\n");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            http("127.0.0.1:8080", Some(open.clone())).problems(),
            vec![format!(
                "[http] token_file: {} may be read by other users (mode 0644): chmod 600 it",
                open.display()
            )]
        );
    }
}
