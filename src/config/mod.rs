//! Node configuration: the TOML schema, validation with precise messages, and live reload.
//!
//! `conf/prima-node.toml` is the documented example. Each section checks its own keys, and
//! [`Config::problems`] gathers their problems into one list together with the checks that
//! need several sections. Only `[[sources]]`, `[[destinations]]`, `[assembly]` and
//! `[outbox]` are applied live (by [`SharedConfig::apply`]); the rest needs a restart (the
//! listener and its TLS, the state directory, the loaded model and the `[http]` status
//! server cannot change under a running node).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod assembly;
mod checks;
mod cluster;
mod destinations;
mod explain;
mod http;
mod live;
mod model;
mod node;
mod outbox;
mod sources;
mod storage;
mod tls;

pub use assembly::AssemblySection;
pub use cluster::{ClusterRole, ClusterSection};
pub use destinations::Destination;
pub use explain::ExplainSection;
pub use http::HttpSection;
pub use live::{on_disk, LiveConfig, OnDisk, SharedConfig};
pub use model::{ModelSection, HEARTBEAT_EVERY_S};
pub use node::NodeSection;
pub use outbox::OutboxSection;
pub use sources::{canonical_ip, resolve_host, ResolvedSource, Source};
pub use storage::{
    Retention, StorageSection, ENHANCED_MR_IMAGE_STORAGE, MODEL_SOP_CLASSES, MR_IMAGE_STORAGE,
};
pub use tls::{TlsCheck, TlsCheckError, TlsSection};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: TOML syntax/schema error: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {}", .problems.join("; "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeSection,
    pub model: ModelSection,
    #[serde(default)]
    pub assembly: AssemblySection,
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub outbox: OutboxSection,
    #[serde(default)]
    pub sources: Vec<Source>,
    #[serde(default)]
    pub destinations: Vec<Destination>,
    /// DICOM TLS on the listener; absent = plain TCP.
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// The web status page, JSON API, /metrics and health endpoints; absent = off.
    #[serde(default)]
    pub http: Option<HttpSection>,
    /// LIME explanations of the top finding (restart-only: the worker reads it at start).
    #[serde(default)]
    pub explain: ExplainSection,
    /// Ingest nodes and workers over NATS JetStream; absent = the single node (restart-only).
    #[serde(default)]
    pub cluster: Option<ClusterSection>,
}

fn default_true() -> bool {
    true
}

impl Config {
    /// Load with every check but building the TLS contexts (see [`Config::load_with`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_checked(path, None)
    }

    /// Load and check everything, the TLS contexts with `tls`.
    pub fn load_with(path: &Path, tls: &dyn TlsCheck) -> Result<Config, ConfigError> {
        Self::load_checked(path, Some(tls))
    }

    fn load_checked(path: &Path, tls: Option<&dyn TlsCheck>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_checked(path, &text, tls)
    }

    /// Parse with every check but building the TLS contexts (see [`Config::parse_with`]).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Self::parse_checked(path, text, None)
    }

    /// Parse and check everything, the TLS contexts with `tls`.
    pub fn parse_with(path: &Path, text: &str, tls: &dyn TlsCheck) -> Result<Config, ConfigError> {
        Self::parse_checked(path, text, Some(tls))
    }

    fn parse_checked(
        path: &Path,
        text: &str,
        tls: Option<&dyn TlsCheck>,
    ) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        let problems = cfg.problems(tls);
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// Every problem found, each naming the key it is about; the TLS contexts are built
    /// only when `tls` is given.
    pub fn problems(&self, tls_check: Option<&dyn TlsCheck>) -> Vec<String> {
        let mut p = self.node.problems();
        if let Some(h) = &self.http {
            p.extend(h.problems());
            p.extend(http_tls_problem(h, self.tls.as_ref()));
        }
        p.extend(self.model.problems());
        p.extend(self.explain.problems());
        p.extend(self.assembly.problems());
        p.extend(self.storage.problems());
        p.extend(self.outbox.problems());
        p.extend(sources::problems(&self.sources));
        if let Some(t) = &self.tls {
            p.extend(t.problems(tls_check));
        }
        if let Some(c) = &self.cluster {
            p.extend(c.problems());
        }
        p.extend(destinations::problems(
            &self.destinations,
            self.tls.as_ref(),
            tls_check,
        ));
        p
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.node.listen.parse().expect("validated")
    }

    pub fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.node.read_timeout_s)
    }

    /// All storage SOP classes accepted (model classes first).
    pub fn storage_sop_classes(&self) -> Vec<String> {
        self.storage.sop_classes()
    }

    /// Sources with host names resolved to addresses (resolution failures are dropped:
    /// the config was validated, and a name that stopped resolving must not open access).
    pub fn resolved_sources(&self) -> Vec<ResolvedSource> {
        sources::resolve(&self.sources)
    }

    /// What the reports' device serial number is derived from when `serial_number` is
    /// not given.
    pub fn report_identity_source(&self) -> String {
        match &self.cluster {
            Some(c) => format!("cluster:{}", c.jobs_stream),
            None => self.node.state_dir.to_string_lossy().into_owned(),
        }
    }
}

/// HTTPS serves `[tls]`'s certificate and key, so it needs that section.
fn http_tls_problem(http: &HttpSection, tls: Option<&TlsSection>) -> Option<String> {
    (http.tls && tls.is_none())
        .then(|| "[http] tls: true needs the [tls] section's certificate and key".into())
}

/// The smallest valid configuration, for the tests of the sections that extend it.
#[cfg(test)]
pub(crate) const MINIMAL_FOR_TESTS: &str = r#"
[node]
ae_title = "PRIMA"
listen = "127.0.0.1:11112"
state_dir = "/tmp/x"
[model]
dir = "/m"
[[sources]]
ae_title = "SCU"
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tls::FailingTlsForTests;

    pub(super) const GOOD: &str = r#"
[node]
ae_title = "PRIMA"
listen = "127.0.0.1:11112"
state_dir = "/var/lib/prima-node"
[model]
dir = "/var/lib/prima-node/model"
device = "cpu"
[assembly]
quiet_period_s = 30
force_complete_s = 600
min_series = 2
[storage]
min_free_mb = 100
[[sources]]
ae_title = "PACS"
host = "127.0.0.1"
[[sources]]
ae_title = "MODALITY"
[[destinations]]
ae_title = "PACS"
host = "127.0.0.1"
port = 104
"#;

    #[test]
    fn good_config_parses() {
        let c = Config::parse(Path::new("x.toml"), GOOD).unwrap();
        assert_eq!(c.sources.len(), 2);
        assert_eq!(c.assembly.quiet_period_s, 30.0);
        assert!(c.assembly.speculative_prepare, "on unless turned off");
        assert_eq!(c.storage_sop_classes().len(), 3);
    }

    #[test]
    fn the_example_file_is_valid() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/prima-node.toml");
        Config::load(&p).unwrap();
    }

    #[test]
    fn precise_messages() {
        let bad = GOOD
            .replace("\"PRIMA\"", "\"THIS_AE_TITLE_IS_TOO_LONG\"")
            .replace("127.0.0.1:11112", "nope")
            .replace("min_series = 2", "min_series = 0");
        let e = Config::parse(Path::new("x.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[node] ae_title"), "{e}");
        assert!(e.contains("[node] listen"), "{e}");
        assert!(e.contains("[assembly] min_series"), "{e}");
        let e = Config::parse(
            Path::new("x.toml"),
            &GOOD.replace("port = 104", "port = 104\nfoo = 1"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("foo"), "{e}");
    }

    #[test]
    fn https_needs_the_tls_section() {
        let mut h: HttpSection = toml::from_str("listen = \"127.0.0.1:8080\"").unwrap();
        let t: TlsSection =
            toml::from_str("certificate = \"/c.pem\"\nprivate_key = \"/k.pem\"").unwrap();
        assert_eq!(http_tls_problem(&h, None), None);
        h.tls = true;
        assert_eq!(http_tls_problem(&h, Some(&t)), None);
        assert_eq!(
            http_tls_problem(&h, None).as_deref(),
            Some("[http] tls: true needs the [tls] section's certificate and key")
        );
    }

    fn all_problems(text: &str) -> Vec<String> {
        let cfg: Config = toml::from_str(text).unwrap();
        cfg.problems(Some(&FailingTlsForTests))
    }

    #[test]
    fn problems_come_section_by_section_in_key_order() {
        let p = all_problems(
            r#"
[node]
ae_title = ""
listen = "nope"
state_dir = "relative"
max_associations = 0
read_timeout_s = 0
max_pdu_length = 10
serial_number = " "
[http]
listen = "x"
token_file = "/nonexistent/token"
tls = true
[model]
dir = ""
device = "gpu"
max_crashes = 0
worker_memory_mb = 10
[explain]
samples = 1
batch = 0
[assembly]
quiet_period_s = 0
force_complete_s = -1
min_series = 0
modalities = []
[storage]
extra_sop_classes = ["1.2", "x"]
[outbox]
retry_initial_s = 0
retry_max_s = -1
max_attempts = 0
connect_timeout_s = 0
[cluster]
role = "all"
servers = []
"#,
        );
        assert_eq!(
            p,
            vec![
                "[node] ae_title: AE title is empty",
                "[node] listen: \"nope\" is not an address:port such as \"0.0.0.0:11112\"",
                "[node] state_dir: \"relative\" must be an absolute path",
                "[node] max_associations: must be at least 1",
                "[node] read_timeout_s: must be at least 1",
                "[node] max_pdu_length: 10 is outside 4096..=16777216",
                "[node] serial_number: \" \" must be 1 to 64 characters, no backslash or control characters (a DICOM LO)",
                "[http] listen: \"x\" is not an address:port such as \"127.0.0.1:8080\"",
                "[http] token_file: cannot read /nonexistent/token: No such file or directory (os error 2)",
                "[http] tls: true needs the [tls] section's certificate and key",
                "[model] dir: empty path",
                "[model] max_crashes: must be at least 1",
                "[model] worker_memory_mb: at least 256 (the model and libtorch need it)",
                "[model] device: \"gpu\" is not \"cpu\", \"cuda\" or \"cuda:N\"",
                "[explain] samples: 1 must be at least 2",
                "[explain] top_tokens, findings and batch: at least 1",
                "[assembly] quiet_period_s: 0 must be a positive number of seconds",
                "[assembly] force_complete_s: -1 must be a number of seconds >= quiet_period_s (0)",
                "[assembly] min_series: must be at least 1",
                "[assembly] modalities: empty list (no study would ever qualify)",
                "[storage] extra_sop_classes[1]: \"x\" is not a UID (digits and dots, at most 64)",
                "[outbox] retry_initial_s: must be a positive number of seconds",
                "[outbox] retry_max_s: must be >= retry_initial_s",
                "[outbox] max_attempts: must be at least 1",
                "[outbox] connect_timeout_s: must be a positive number of seconds",
                "[[sources]]: none configured (every association would be rejected)",
                "[cluster] servers: at least one NATS URL",
            ]
        );
    }

    #[test]
    fn tls_sources_and_destinations_come_last_in_key_order() {
        let p = all_problems(
            r#"
[node]
ae_title = "PRIMA"
listen = "127.0.0.1:11112"
state_dir = "/tmp/x"
[model]
dir = "/m"
[assembly]
modalities = ["M R", "MR"]
[[sources]]
ae_title = "A\\B"
[[sources]]
ae_title = "SOURCE_AE_TITLE_TOO_LONG"
[tls]
certificate = "c.pem"
private_key = "/k.pem"
require_client_certificate = false
[cluster]
role = "worker"
servers = ["nats1"]
[[destinations]]
ae_title = ""
host = " "
port = 0
tls_ca = "ca.pem"
[[destinations]]
ae_title = "PACS"
host = "pacs"
port = 104
tls_ca = "/ca.pem"
[[destinations]]
ae_title = "PACS"
host = "pacs"
port = 104
"#,
        );
        assert_eq!(
            p,
            vec![
                "[assembly] modalities: \"M R\" is not a modality code",
                "[[sources]] #1 ae_title: AE title \"A\\\\B\" contains a character outside printable ASCII or a backslash",
                "[[sources]] #2 ae_title: AE title \"SOURCE_AE_TITLE_TOO_LONG\" is 24 characters long (maximum 16)",
                "[tls] require_client_certificate = false needs client_ca (without it no client certificate is requested)",
                "[tls] certificate: \"c.pem\" must be an absolute path",
                "[tls]: server context refused",
                "[cluster] servers: \"nats1\" is not a NATS URL such as \"nats://nats1:4222\"",
                "[[destinations]] #1 ae_title: AE title is empty",
                "[[destinations]] #1 host: empty",
                "[[destinations]] #1 tls_ca: \"ca.pem\" must be an absolute path",
                "[[destinations]] #1 port: 0 is not a port",
                "[[destinations]] #2 tls_ca: client context for /ca.pem refused",
                "[[destinations]] #3: duplicate of an earlier entry (PACS@pacs:104)",
            ]
        );
    }
}
