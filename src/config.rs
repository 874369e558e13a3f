//! Node configuration: the TOML schema, validation with precise messages, and live reload.
//!
//! `conf/prima-node.toml` is the documented example. Only `[[sources]]`, `[[destinations]]`,
//! `[assembly]` and `[outbox]` are applied live; the rest needs a restart (the listener and
//! its TLS, the state directory, the loaded model and the `[http]` status server cannot
//! change under a running node).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dicom_dictionary_std::uids;
use serde::Deserialize;

mod cluster;
pub use cluster::{ClusterRole, ClusterSection};

/// MR Image Storage and Enhanced MR Image Storage: the classes Prima reads.
pub const MR_IMAGE_STORAGE: &str = uids::MR_IMAGE_STORAGE;
pub const ENHANCED_MR_IMAGE_STORAGE: &str = uids::ENHANCED_MR_IMAGE_STORAGE;
pub const MODEL_SOP_CLASSES: [&str; 2] = [MR_IMAGE_STORAGE, ENHANCED_MR_IMAGE_STORAGE];

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

#[derive(Debug, Clone, Deserialize, PartialEq)]
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

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExplainSection {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_explain_samples")]
    pub samples: usize,
    #[serde(default = "default_explain_top_tokens")]
    pub top_tokens: usize,
    #[serde(default = "default_explain_findings")]
    pub findings: usize,
    #[serde(default)]
    pub seed: u32,
    /// Perturbed inputs per model call.
    #[serde(default = "default_explain_batch")]
    pub batch: usize,
    /// Labels under float16 autocast on CUDA, as upstream (no effect on the CPU).
    #[serde(default = "default_true")]
    pub autocast: bool,
    /// Explain also when the model runs on the CPU (off: there it costs minutes per study
    /// with the full-size model; see docs/performance.md).
    #[serde(default)]
    pub on_cpu: bool,
}

fn default_explain_samples() -> usize {
    1000
}
fn default_explain_top_tokens() -> usize {
    3
}
fn default_explain_findings() -> usize {
    1
}
fn default_explain_batch() -> usize {
    crate::explain::ExplainOptions::default().batch
}

impl Default for ExplainSection {
    fn default() -> Self {
        ExplainSection {
            enabled: false,
            samples: default_explain_samples(),
            top_tokens: default_explain_top_tokens(),
            findings: default_explain_findings(),
            seed: 0,
            batch: default_explain_batch(),
            autocast: true,
            on_cpu: false,
        }
    }
}

impl ExplainSection {
    /// The explanation's options when enabled.
    pub fn options(&self) -> Option<crate::explain::ExplainOptions> {
        self.enabled.then_some(crate::explain::ExplainOptions {
            samples: self.samples,
            top_tokens: self.top_tokens,
            findings: self.findings,
            seed: self.seed,
            batch: self.batch,
            autocast: self.autocast,
        })
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
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
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
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

#[derive(Debug, Clone, Deserialize, PartialEq)]
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

impl Config {
    /// What the reports' device serial number is derived from when `serial_number` is
    /// not given.
    pub fn report_identity_source(&self) -> String {
        match &self.cluster {
            Some(c) => format!("cluster:{}", c.jobs_stream),
            None => self.node.state_dir.to_string_lossy().into_owned(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub dir: PathBuf,
    #[serde(default = "default_device")]
    pub device: String,
    /// Crashes of the worker process on one study before the study is marked failed.
    #[serde(default = "default_max_crashes")]
    pub max_crashes: u32,
    /// Data memory the worker process may use (RLIMIT_DATA), so that one study cannot
    /// take the host's memory: beyond it the worker fails its allocation and ends, as under
    /// the OOM killer, and the node carries on. None: no limit of ours.
    #[serde(default)]
    pub worker_memory_mb: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AssemblySection {
    #[serde(default = "default_quiet_period_s")]
    pub quiet_period_s: f64,
    #[serde(default = "default_force_complete_s")]
    pub force_complete_s: f64,
    #[serde(default = "default_min_series")]
    pub min_series: usize,
    #[serde(default = "default_modalities")]
    pub modalities: Vec<String>,
    /// Prepare (decode, resample, tokenise) a study's series in the background while the
    /// study is still arriving, once a series has been idle for a while, so the job after
    /// the quiet period starts at the model. Results are used only when the input files
    /// are exactly those prepared; otherwise the job prepares afresh.
    #[serde(default = "default_true")]
    pub speculative_prepare: bool,
}

impl Default for AssemblySection {
    fn default() -> Self {
        AssemblySection {
            quiet_period_s: default_quiet_period_s(),
            force_complete_s: default_force_complete_s(),
            min_series: default_min_series(),
            modalities: default_modalities(),
            speculative_prepare: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    #[serde(default = "default_min_free_mb")]
    pub min_free_mb: u64,
    /// Storage SOP classes accepted and stored but not given to the model.
    #[serde(default)]
    pub extra_sop_classes: Vec<String>,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            min_free_mb: default_min_free_mb(),
            extra_sop_classes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutboxSection {
    #[serde(default = "default_retry_initial_s")]
    pub retry_initial_s: f64,
    #[serde(default = "default_retry_max_s")]
    pub retry_max_s: f64,
    /// Attempts allowed when the destination answers (rejection, failure status); an
    /// unreachable destination is retried without limit.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_connect_timeout_s")]
    pub connect_timeout_s: f64,
}

impl Default for OutboxSection {
    fn default() -> Self {
        OutboxSection {
            retry_initial_s: default_retry_initial_s(),
            retry_max_s: default_retry_max_s(),
            max_attempts: default_max_attempts(),
            connect_timeout_s: default_connect_timeout_s(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub ae_title: String,
    /// IP address or host name; absent = any address.
    pub host: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
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

impl HttpSection {
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.listen.parse::<SocketAddr>().is_err() {
            p.push(format!(
                "[http] listen: {:?} is not an address:port such as \"127.0.0.1:8080\"",
                self.listen
            ));
        }
        if let Some(f) = &self.token_file {
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

impl Destination {
    /// Stable key of a destination in the outbox (AE@host:port).
    pub fn key(&self) -> String {
        format!("{}@{}:{}", self.ae_title, self.host, self.port)
    }
}

fn default_true() -> bool {
    true
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
fn default_device() -> String {
    "cpu".into()
}
fn default_max_crashes() -> u32 {
    2
}
fn default_quiet_period_s() -> f64 {
    30.0
}
fn default_force_complete_s() -> f64 {
    900.0
}
fn default_min_series() -> usize {
    2
}
fn default_modalities() -> Vec<String> {
    vec!["MR".into()]
}
fn default_min_free_mb() -> u64 {
    1024
}
fn default_retry_initial_s() -> f64 {
    5.0
}
fn default_retry_max_s() -> f64 {
    600.0
}
fn default_max_attempts() -> u32 {
    8
}
fn default_connect_timeout_s() -> f64 {
    10.0
}

/// An AE title per PS3.5: 1–16 characters of the default repertoire, no backslash or
/// control characters, not only spaces.
fn ae_title_problem(what: &str, ae: &str) -> Option<String> {
    if ae.trim().is_empty() {
        return Some(format!("{what}: AE title is empty"));
    }
    if ae.len() > 16 {
        return Some(format!(
            "{what}: AE title {ae:?} is {} characters long (maximum 16)",
            ae.len()
        ));
    }
    if ae.chars().any(|c| !(' '..='~').contains(&c) || c == '\\') {
        return Some(format!(
            "{what}: AE title {ae:?} contains a character outside printable ASCII or a backslash"
        ));
    }
    None
}

fn is_uid(s: &str) -> bool {
    crate::uid::is_valid(s)
}

fn finite_nonneg(v: f64) -> bool {
    v.is_finite() && v >= 0.0
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
        let mut p = Vec::new();
        if let Some(m) = ae_title_problem("[node] ae_title", &self.node.ae_title) {
            p.push(m);
        }
        if self.node.listen.parse::<SocketAddr>().is_err() {
            p.push(format!(
                "[node] listen: {:?} is not an address:port such as \"0.0.0.0:11112\"",
                self.node.listen
            ));
        }
        if self.node.state_dir.as_os_str().is_empty() {
            p.push("[node] state_dir: empty path".into());
        } else if !self.node.state_dir.is_absolute() {
            p.push(format!(
                "[node] state_dir: {:?} must be an absolute path",
                self.node.state_dir
            ));
        }
        if self.node.max_associations == 0 {
            p.push("[node] max_associations: must be at least 1".into());
        }
        if self.node.read_timeout_s == 0 {
            p.push("[node] read_timeout_s: must be at least 1".into());
        }
        if !(4096..=16 * 1024 * 1024).contains(&self.node.max_pdu_length) {
            p.push(format!(
                "[node] max_pdu_length: {} is outside 4096..=16777216",
                self.node.max_pdu_length
            ));
        }
        if let Some(sn) = &self.node.serial_number {
            if sn.trim().is_empty()
                || sn.len() > 64
                || sn.chars().any(|c| c.is_control() || c == '\\')
            {
                p.push(format!(
                    "[node] serial_number: {sn:?} must be 1 to 64 characters, no backslash or control characters (a DICOM LO)"
                ));
            }
        }
        if let Some(h) = &self.http {
            p.extend(h.problems());
            if h.tls && self.tls.is_none() {
                p.push("[http] tls: true needs the [tls] section's certificate and key".into());
            }
        }
        if self.model.dir.as_os_str().is_empty() {
            p.push("[model] dir: empty path".into());
        }
        if self.model.max_crashes == 0 {
            p.push("[model] max_crashes: must be at least 1".into());
        }
        if self.model.worker_memory_mb.is_some_and(|m| m < 256) {
            p.push(
                "[model] worker_memory_mb: at least 256 (the model and libtorch need it)".into(),
            );
        }
        let dev = self.model.device.as_str();
        let dev_ok = dev == "cpu"
            || dev == "cuda"
            || dev
                .strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<u32>().is_ok());
        if !dev_ok {
            p.push(format!(
                "[model] device: {dev:?} is not \"cpu\", \"cuda\" or \"cuda:N\""
            ));
        }
        let x = &self.explain;
        if x.samples < 2 {
            p.push(format!(
                "[explain] samples: {} must be at least 2",
                x.samples
            ));
        }
        if x.top_tokens == 0 || x.findings == 0 || x.batch == 0 {
            p.push("[explain] top_tokens, findings and batch: at least 1".into());
        }
        let a = &self.assembly;
        if !finite_nonneg(a.quiet_period_s) || a.quiet_period_s <= 0.0 {
            p.push(format!(
                "[assembly] quiet_period_s: {} must be a positive number of seconds",
                a.quiet_period_s
            ));
        }
        if !finite_nonneg(a.force_complete_s) || a.force_complete_s < a.quiet_period_s {
            p.push(format!(
                "[assembly] force_complete_s: {} must be a number of seconds >= quiet_period_s ({})",
                a.force_complete_s, a.quiet_period_s
            ));
        }
        if a.min_series == 0 {
            p.push("[assembly] min_series: must be at least 1".into());
        }
        if a.modalities.is_empty() {
            p.push("[assembly] modalities: empty list (no study would ever qualify)".into());
        }
        for m in &a.modalities {
            if m.is_empty() || m.len() > 16 || !m.chars().all(|c| c.is_ascii_alphanumeric()) {
                p.push(format!(
                    "[assembly] modalities: {m:?} is not a modality code"
                ));
            }
        }
        for (i, uid) in self.storage.extra_sop_classes.iter().enumerate() {
            if !is_uid(uid) {
                p.push(format!(
                    "[storage] extra_sop_classes[{i}]: {uid:?} is not a UID (digits and dots, at most 64)"
                ));
            }
        }
        let o = &self.outbox;
        if !finite_nonneg(o.retry_initial_s) || o.retry_initial_s <= 0.0 {
            p.push("[outbox] retry_initial_s: must be a positive number of seconds".into());
        }
        if !finite_nonneg(o.retry_max_s) || o.retry_max_s < o.retry_initial_s {
            p.push("[outbox] retry_max_s: must be >= retry_initial_s".into());
        }
        if o.max_attempts == 0 {
            p.push("[outbox] max_attempts: must be at least 1".into());
        }
        if !finite_nonneg(o.connect_timeout_s) || o.connect_timeout_s <= 0.0 {
            p.push("[outbox] connect_timeout_s: must be a positive number of seconds".into());
        }
        if self.sources.is_empty() {
            p.push("[[sources]]: none configured (every association would be rejected)".into());
        }
        for (i, s) in self.sources.iter().enumerate() {
            let what = format!("[[sources]] #{} ae_title", i + 1);
            if let Some(m) = ae_title_problem(&what, &s.ae_title) {
                p.push(m);
            }
            if let Some(h) = &s.host {
                if resolve_host(h).is_err() {
                    p.push(format!(
                        "[[sources]] #{} host: {h:?} is not an IP address or a resolvable host name",
                        i + 1
                    ));
                }
            }
        }
        if let Some(t) = &self.tls {
            if let (None, Some(v)) = (&t.client_ca, t.require_client_certificate) {
                // Either way the writer expected client verification, which without a CA
                // is silently off: no certificate would be requested.
                p.push(format!(
                    "[tls] require_client_certificate = {v} needs client_ca (without it no client certificate is requested)"
                ));
            }
            for (k, path) in [
                ("certificate", Some(&t.certificate)),
                ("private_key", Some(&t.private_key)),
                ("client_ca", t.client_ca.as_ref()),
            ] {
                if let Some(path) = path {
                    if !path.is_absolute() {
                        p.push(format!("[tls] {k}: {path:?} must be an absolute path"));
                    }
                }
            }
            if let Some(Err(e)) = tls_check.map(|c| c.server(t)) {
                p.push(format!("[tls]: {e}"));
            }
        }
        if let Some(c) = &self.cluster {
            p.extend(c.problems());
        }
        let mut keys = HashSet::new();
        for (i, d) in self.destinations.iter().enumerate() {
            let what = format!("[[destinations]] #{} ae_title", i + 1);
            if let Some(m) = ae_title_problem(&what, &d.ae_title) {
                p.push(m);
            }
            if d.host.trim().is_empty() {
                p.push(format!("[[destinations]] #{} host: empty", i + 1));
            }
            if let Some(ca) = &d.tls_ca {
                if !ca.is_absolute() {
                    p.push(format!(
                        "[[destinations]] #{} tls_ca: {ca:?} must be an absolute path",
                        i + 1
                    ));
                } else if let Some(Err(e)) = tls_check.map(|c| c.client(ca, self.tls.as_ref())) {
                    p.push(format!("[[destinations]] #{} tls_ca: {e}", i + 1));
                }
            }
            if d.port == 0 {
                p.push(format!("[[destinations]] #{} port: 0 is not a port", i + 1));
            }
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

    pub fn listen_addr(&self) -> SocketAddr {
        self.node.listen.parse().expect("validated")
    }

    pub fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.node.read_timeout_s)
    }

    /// All storage SOP classes accepted (model classes first).
    pub fn storage_sop_classes(&self) -> Vec<String> {
        let mut v: Vec<String> = MODEL_SOP_CLASSES.iter().map(|s| s.to_string()).collect();
        for s in &self.storage.extra_sop_classes {
            if !v.contains(s) {
                v.push(s.clone());
            }
        }
        v
    }

    /// Sources with host names resolved to addresses (resolution failures are dropped:
    /// the config was validated, and a name that stopped resolving must not open access).
    pub fn resolved_sources(&self) -> Vec<ResolvedSource> {
        self.sources
            .iter()
            .map(|s| ResolvedSource {
                ae_title: s.ae_title.clone(),
                addrs: s.host.as_ref().map(|h| resolve_host(h).unwrap_or_default()),
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct ResolvedSource {
    pub ae_title: String,
    /// `None` = any address.
    pub addrs: Option<Vec<IpAddr>>,
}

pub fn resolve_host(h: &str) -> Result<Vec<IpAddr>, std::io::Error> {
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let addrs: Vec<IpAddr> = (h, 0u16).to_socket_addrs()?.map(|a| a.ip()).collect();
    if addrs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no addresses",
        ));
    }
    Ok(addrs)
}

/// Treat ::ffff:a.b.c.d like a.b.c.d so an IPv4 allowlist works on a dual-stack socket.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The live part of the configuration, swapped atomically on reload.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub config: Arc<Config>,
    pub sources: Arc<Vec<ResolvedSource>>,
}

/// Shared handle: readers take a snapshot, the watcher replaces it.
#[derive(Clone)]
pub struct SharedConfig(Arc<RwLock<LiveConfig>>);

impl SharedConfig {
    pub fn new(cfg: Config) -> Self {
        let sources = Arc::new(cfg.resolved_sources());
        SharedConfig(Arc::new(RwLock::new(LiveConfig {
            config: Arc::new(cfg),
            sources,
        })))
    }

    pub fn snapshot(&self) -> LiveConfig {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn get(&self) -> Arc<Config> {
        self.snapshot().config
    }

    /// Apply the reloadable parts of `new`; returns what was ignored (restart-only keys).
    pub fn apply(&self, new: Config) -> Vec<String> {
        let mut guard = self.0.write().unwrap_or_else(|e| e.into_inner());
        let old = guard.config.clone();
        let mut ignored = Vec::new();
        if new.node != old.node {
            ignored.push("[node]".to_string());
        }
        if new.model != old.model {
            ignored.push("[model]".to_string());
        }
        if new.storage != old.storage {
            ignored.push("[storage]".to_string());
        }
        if new.tls != old.tls {
            ignored.push("[tls]".to_string());
        }
        if new.http != old.http {
            ignored.push("[http]".to_string());
        }
        if new.explain != old.explain {
            ignored.push("[explain]".to_string());
        }
        if new.cluster != old.cluster {
            ignored.push("[cluster]".to_string());
        }
        let merged = Config {
            node: old.node.clone(),
            model: old.model.clone(),
            storage: old.storage.clone(),
            tls: old.tls.clone(),
            http: old.http.clone(),
            explain: old.explain.clone(),
            cluster: old.cluster.clone(),
            assembly: new.assembly,
            outbox: new.outbox,
            sources: new.sources,
            destinations: new.destinations,
        };
        let sources = Arc::new(merged.resolved_sources());
        *guard = LiveConfig {
            config: Arc::new(merged),
            sources,
        };
        ignored
    }
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

    const GOOD: &str = r#"
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
        assert_eq!(c.storage_sop_classes().len(), 2);
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
    fn reload_keeps_node_section() {
        let c = Config::parse(Path::new("x.toml"), GOOD).unwrap();
        let shared = SharedConfig::new(c.clone());
        let mut n = c.clone();
        n.node.listen = "127.0.0.1:1".into();
        n.sources.pop();
        let ignored = shared.apply(n);
        assert_eq!(ignored, vec!["[node]".to_string()]);
        assert_eq!(shared.get().node.listen, "127.0.0.1:11112");
        assert_eq!(shared.get().sources.len(), 1);
    }
}
