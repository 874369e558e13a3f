//! `[cluster]`: ingest nodes and GPU workers sharing one NATS JetStream (docs/cluster.md).
//! Absent = the single node, exactly as without it. Restart-only.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What this process does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterRole {
    /// DICOM listener, replication, study completeness, delivery, and a model worker.
    All,
    /// DICOM listener, replication, study completeness and delivery; no model.
    Ingest,
    /// The model only: takes jobs from the queue, publishes results.
    Worker,
}

impl ClusterRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterRole::All => "all",
            ClusterRole::Ingest => "ingest",
            ClusterRole::Worker => "worker",
        }
    }
    pub fn ingests(self) -> bool {
        matches!(self, ClusterRole::All | ClusterRole::Ingest)
    }
    pub fn works(self) -> bool {
        matches!(self, ClusterRole::All | ClusterRole::Worker)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub role: ClusterRole,
    /// NATS server URLs, e.g. ["nats://nats1:4222", "nats://nats2:4222"]; the client
    /// reconnects to any of them (and to servers the cluster announces).
    pub servers: Vec<String>,
    /// This node's name in claims, the KV records and logs; default: host name + AE title.
    #[serde(default)]
    pub name: Option<String>,
    /// NATS credentials file (JWT + NKey seed, `nsc`'s `.creds`).
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// PEM CA the servers' certificates must chain to; implies TLS.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key for servers that verify clients (both or neither).
    #[serde(default)]
    pub tls_certificate: Option<PathBuf>,
    #[serde(default)]
    pub tls_private_key: Option<PathBuf>,
    /// The work queue of study jobs.
    #[serde(default = "default_jobs_stream")]
    pub jobs_stream: String,
    /// KV: one record per study (instances across ingest nodes, the published input).
    #[serde(default = "default_studies_bucket")]
    pub studies_bucket: String,
    /// Object store: the received instances.
    #[serde(default = "default_instances_bucket")]
    pub instances_bucket: String,
    /// KV: one record per study run's results (who delivers them, and whether done).
    #[serde(default = "default_results_bucket")]
    pub results_bucket: String,
    /// Object store: the result objects (SR, KOS, card).
    #[serde(default = "default_outputs_bucket")]
    pub outputs_bucket: String,
    /// Replicas of every stream and bucket this node creates (existing ones are used as
    /// they are): 3 survives the loss of any one server.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// Seconds a worker may go silent before its job is given to another; a live worker
    /// reports progress every third of it.
    #[serde(default = "default_ack_wait_s")]
    pub ack_wait_s: f64,
    /// Deliveries of one job (workers that took it) before it is marked failed.
    #[serde(default = "default_max_deliver")]
    pub max_deliver: u32,
    /// Seconds an ingest node's claim on a delivery lasts without renewal.
    #[serde(default = "default_claim_lease_s")]
    pub claim_lease_s: f64,
    /// Days the records and objects are kept (the buckets' max age); 0 = forever.
    #[serde(default = "default_keep_days")]
    pub keep_days: f64,
    /// Seconds after its last announcement an ingest node counts as unreachable (cut off
    /// or dead): the studies it holds or contributed to wait for it. Each node announces
    /// itself every 5 s.
    #[serde(default = "default_node_silent_s")]
    pub node_silent_s: f64,
    /// Longest a study waits for an unreachable ingest node that holds or sent instances
    /// of it; then it is analysed without them (the report says partial, and is amended
    /// when the rest arrives).
    #[serde(default = "default_partition_wait_s")]
    pub partition_wait_s: f64,
    /// Failed delivery attempts (to any destination) after which a node hands its claim
    /// over, so that a node that can reach the destination delivers.
    #[serde(default = "default_handover_after_failures")]
    pub handover_after_failures: u32,
}

fn default_jobs_stream() -> String {
    "PRIMA_JOBS".into()
}
fn default_studies_bucket() -> String {
    "prima-studies".into()
}
fn default_instances_bucket() -> String {
    "prima-instances".into()
}
fn default_results_bucket() -> String {
    "prima-results".into()
}
fn default_outputs_bucket() -> String {
    "prima-outputs".into()
}
fn default_replicas() -> usize {
    3
}
fn default_ack_wait_s() -> f64 {
    30.0
}
fn default_max_deliver() -> u32 {
    3
}
fn default_claim_lease_s() -> f64 {
    120.0
}
fn default_keep_days() -> f64 {
    14.0
}
fn default_node_silent_s() -> f64 {
    15.0
}
fn default_partition_wait_s() -> f64 {
    300.0
}
fn default_handover_after_failures() -> u32 {
    3
}

/// NATS stream and bucket names: letters, digits, `-` and `_`.
fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ClusterSection {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.servers.is_empty() {
            p.push("[cluster] servers: at least one NATS URL".into());
        }
        for s in &self.servers {
            let rest = s
                .strip_prefix("nats://")
                .or_else(|| s.strip_prefix("tls://"))
                .unwrap_or(s);
            let hostport = rest.rsplit('@').next().unwrap_or(rest);
            let ok = hostport
                .rsplit_once(':')
                .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                p.push(format!(
                    "[cluster] servers: {s:?} is not a NATS URL such as \"nats://nats1:4222\""
                ));
            }
        }
        if let Some(n) = &self.name {
            if !name_ok(n) {
                p.push(format!(
                    "[cluster] name: {n:?} may hold only letters, digits, '-' and '_' (at most 64)"
                ));
            }
        }
        for (k, v) in [
            ("jobs_stream", &self.jobs_stream),
            ("studies_bucket", &self.studies_bucket),
            ("studies_bucket + \"-nodes\"", &self.nodes_bucket()),
            ("instances_bucket", &self.instances_bucket),
            ("results_bucket", &self.results_bucket),
            ("outputs_bucket", &self.outputs_bucket),
        ] {
            if !name_ok(v) {
                p.push(format!(
                    "[cluster] {k}: {v:?} may hold only letters, digits, '-' and '_' (at most 64)"
                ));
            }
        }
        let names = [
            &self.studies_bucket,
            &self.instances_bucket,
            &self.results_bucket,
            &self.outputs_bucket,
        ];
        for (i, a) in names.iter().enumerate() {
            if names[i + 1..].contains(a) {
                p.push(format!("[cluster] bucket name {a:?} is used twice"));
            }
        }
        if !(1..=5).contains(&self.replicas) {
            p.push(format!(
                "[cluster] replicas: {} is outside 1..=5 (JetStream's limit)",
                self.replicas
            ));
        }
        if !(self.ack_wait_s.is_finite() && self.ack_wait_s >= 1.0) {
            p.push("[cluster] ack_wait_s: at least 1 second".into());
        }
        if self.max_deliver == 0 {
            p.push("[cluster] max_deliver: at least 1".into());
        }
        if !(self.claim_lease_s.is_finite() && self.claim_lease_s >= 1.0) {
            p.push("[cluster] claim_lease_s: at least 1 second".into());
        }
        if !(self.node_silent_s.is_finite() && self.node_silent_s >= 1.0) {
            p.push("[cluster] node_silent_s: at least 1 second".into());
        }
        if !(self.partition_wait_s.is_finite() && self.partition_wait_s >= 0.0) {
            p.push("[cluster] partition_wait_s: seconds, 0 or more".into());
        }
        if self.handover_after_failures == 0 {
            p.push("[cluster] handover_after_failures: at least 1".into());
        }
        if !(self.keep_days.is_finite() && self.keep_days >= 0.0) {
            p.push("[cluster] keep_days: a number of days, 0 for forever".into());
        }
        for (k, v) in [
            ("credentials", &self.credentials),
            ("tls_ca", &self.tls_ca),
            ("tls_certificate", &self.tls_certificate),
            ("tls_private_key", &self.tls_private_key),
        ] {
            if let Some(path) = v {
                if !path.is_absolute() {
                    p.push(format!("[cluster] {k}: {path:?} must be an absolute path"));
                } else if !path.is_file() {
                    p.push(format!(
                        "[cluster] {k}: {} is not a readable file",
                        path.display()
                    ));
                }
            }
        }
        if self.tls_certificate.is_some() != self.tls_private_key.is_some() {
            p.push("[cluster] tls_certificate and tls_private_key: give both or neither".into());
        }
        p
    }

    /// The ingest nodes' announcements of what they have not replicated yet.
    pub fn nodes_bucket(&self) -> String {
        format!("{}-nodes", self.studies_bucket)
    }

    /// This node's name: `name`, or host name + AE title.
    pub fn node_name(&self, ae_title: &str) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "node".into());
        let raw = format!("{host}-{}", ae_title.trim());
        raw.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{ClusterRole, Config};

    use crate::config::MINIMAL_FOR_TESTS as BASE;

    fn problems(cluster: &str) -> Vec<String> {
        let cfg = Config::parse(std::path::Path::new("t.toml"), &format!("{BASE}{cluster}"));
        match cfg {
            Ok(c) => c.problems(None),
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn a_good_section_passes_and_defaults_are_the_documented_ones() {
        let text =
            "[cluster]\nrole = \"worker\"\nservers = [\"nats://a:4222\", \"tls://b:4223\"]\n";
        assert_eq!(problems(text), Vec::<String>::new());
        let c = Config::parse(std::path::Path::new("t.toml"), &format!("{BASE}{text}")).unwrap();
        let s = c.cluster.unwrap();
        assert_eq!(s.role, ClusterRole::Worker);
        assert!(s.role.works() && !s.role.ingests());
        assert_eq!((s.replicas, s.max_deliver), (3, 3));
        assert_eq!(s.jobs_stream, "PRIMA_JOBS");
        assert_eq!(
            (
                s.node_silent_s,
                s.partition_wait_s,
                s.handover_after_failures
            ),
            (15.0, 300.0, 3)
        );
    }

    #[test]
    fn each_mistake_is_named() {
        let p = problems(
            "[cluster]\nrole = \"ingest\"\nservers = [\"nats1\", \"nats://:4222\"]\nname = \"a b\"\n\
             replicas = 7\nack_wait_s = 0.1\nmax_deliver = 0\nclaim_lease_s = 0\nkeep_days = -1\n\
             node_silent_s = 0\npartition_wait_s = -1\nhandover_after_failures = 0\n\
             studies_bucket = \"x\"\nresults_bucket = \"x\"\njobs_stream = \"a.b\"\n\
             credentials = \"relative.creds\"\ntls_certificate = \"/nonexistent/c.pem\"\n",
        )
        .join("\n");
        for want in [
            "servers: \"nats1\" is not a NATS URL",
            "servers: \"nats://:4222\" is not a NATS URL",
            "name: \"a b\"",
            "replicas: 7",
            "ack_wait_s",
            "max_deliver",
            "claim_lease_s",
            "keep_days",
            "node_silent_s",
            "partition_wait_s",
            "handover_after_failures",
            "bucket name \"x\" is used twice",
            "jobs_stream: \"a.b\"",
            "credentials: \"relative.creds\" must be an absolute path",
            "tls_certificate: /nonexistent/c.pem is not a readable file",
            "tls_certificate and tls_private_key: give both or neither",
        ] {
            assert!(p.contains(want), "{want:?} missing from:\n{p}");
        }
        let p = problems("[cluster]\nrole = \"boss\"\nservers = []\n").join("\n");
        assert!(p.contains("boss"), "{p}");
        let p = problems("[cluster]\nrole = \"all\"\nservers = []\n").join("\n");
        assert!(p.contains("at least one NATS URL"), "{p}");
    }
}
