//! Process-wide counters and histograms for `GET /metrics` (Prometheus text format, through
//! the Prometheus project's `prometheus-client`).
//!
//! One registry per process, reached through [`get`]: the events it counts happen in the
//! listener, the worker thread and the sender, and threading a handle through each of them
//! would add a parameter to every call on the hot path for no gain. Counting is a relaxed
//! atomic add, so ingest pays nothing measurable. Gauges that are facts about the state
//! (queue depth, outbox pending, free disk) are read when scraped, not kept up to date.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Delivery {
    pub destination: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Stage {
    pub stage: String,
}

pub struct Metrics {
    registry: Registry,
    pub instances_received: Counter,
    pub instances_refused: Family<Reason, Counter>,
    pub associations: Family<Outcome, Counter>,
    pub studies: Family<Reason, Counter>,
    pub outputs: Family<Delivery, Counter>,
    pub stage_seconds: Family<Stage, Histogram>,
    pub result_latency_seconds: Histogram,
    pub cstore_seconds: Histogram,
    pub queue_depth: Gauge,
    pub outbox_pending: Gauge,
    pub free_disk_bytes: Gauge,
    pub cluster_events: Family<Reason, Counter>,
    pub spool_bytes: Family<StudyHold, Gauge>,
    pub evictions: Family<Reason, Counter>,
    pub evicted_bytes: Counter,
    pub storage_pressure: Gauge,
    pub stalled: Family<Stage, Gauge>,
    pub http_connections: Gauge,
    pub http_connections_closed: Family<Reason, Counter>,
    /// When the model process was last heard from while the node waited on it (ms since
    /// the epoch), and whether it waits now: the pipeline's progress (`store::state::progress`).
    pub model_heard_ms: std::sync::atomic::AtomicI64,
    pub model_waited_on: std::sync::atomic::AtomicBool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StudyHold {
    pub state: String,
}

fn stage_histogram() -> Histogram {
    // 1 ms … ~9 min: a small model's stage on a GPU up to a full study on a slow CPU.
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("prima_node");
        let m = Metrics {
            instances_received: Counter::default(),
            instances_refused: Family::default(),
            associations: Family::default(),
            studies: Family::default(),
            outputs: Family::default(),
            stage_seconds: Family::new_with_constructor(stage_histogram),
            result_latency_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 20)),
            cstore_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 20)),
            queue_depth: Gauge::default(),
            outbox_pending: Gauge::default(),
            free_disk_bytes: Gauge::default(),
            cluster_events: Family::default(),
            spool_bytes: Family::default(),
            evictions: Family::default(),
            evicted_bytes: Counter::default(),
            storage_pressure: Gauge::default(),
            stalled: Family::default(),
            http_connections: Gauge::default(),
            http_connections_closed: Family::default(),
            model_heard_ms: Default::default(),
            model_waited_on: Default::default(),
            registry: Registry::default(),
        };
        registry.register(
            "instances_received",
            "Instances stored and acknowledged with Success",
            m.instances_received.clone(),
        );
        registry.register(
            "instances_refused",
            "C-STORE requests refused, by reason",
            m.instances_refused.clone(),
        );
        registry.register(
            "associations",
            "Associations accepted or rejected, by reason",
            m.associations.clone(),
        );
        registry.register(
            "studies",
            "Studies finished, by outcome (processed, failed, skipped: not qualified for the model)",
            m.studies.clone(),
        );
        registry.register(
            "outputs",
            "Result objects delivered or failed, by destination",
            m.outputs.clone(),
        );
        registry.register(
            "stage_seconds",
            "Seconds per processing stage (from each run record)",
            m.stage_seconds.clone(),
        );
        registry.register(
            "result_latency_seconds",
            "Seconds from a study's last instance to its results being queued for PACS",
            m.result_latency_seconds.clone(),
        );
        registry.register(
            "cstore_seconds",
            "Seconds to handle one C-STORE (data set received to response)",
            m.cstore_seconds.clone(),
        );
        registry.register(
            "queue_depth",
            "Study jobs waiting or running",
            m.queue_depth.clone(),
        );
        registry.register(
            "outbox_pending",
            "Result deliveries not yet done",
            m.outbox_pending.clone(),
        );
        registry.register(
            "free_disk_bytes",
            "Free bytes on the state directory's file system",
            m.free_disk_bytes.clone(),
        );
        registry.register(
            "cluster_events",
            "Cluster faults worked around, by kind (cas_lost: an accepted compare-and-set overwritten; handover: a delivery claim given up; fenced: a send held back by a lapsed claim; partial: a study analysed without an unreachable node's instances)",
            m.cluster_events.clone(),
        );
        registry.register(
            "spool_bytes",
            "Bytes of received instances by where their study stands for retention (pending: unfinished, undelivered or still arriving; done: kept until keep_days, evicted earlier under disk pressure; evictable: past keep_days)",
            m.spool_bytes.clone(),
        );
        registry.register(
            "evictions",
            "Studies whose received instances the retention policy removed, by reason (age, pressure)",
            m.evictions.clone(),
        );
        registry.register(
            "evicted_bytes",
            "Bytes of received instances removed by the retention policy",
            m.evicted_bytes.clone(),
        );
        registry.register(
            "storage_pressure",
            "1 while free space is below evict_below_free_mb and nothing is left to evict",
            m.storage_pressure.clone(),
        );
        registry.register(
            "stalled",
            "1 while a stage of the pipeline makes no progress (assembly, model, delivery)",
            m.stalled.clone(),
        );
        registry.register(
            "http_connections",
            "Open connections to the status page and API",
            m.http_connections.clone(),
        );
        registry.register(
            "http_connections_closed",
            "HTTP connections the node closed or refused, by reason (request_timeout, idle_timeout, replaced, refused)",
            m.http_connections_closed.clone(),
        );
        Metrics { registry, ..m }
    }

    /// One eviction done.
    pub fn evicted(&self, reason: &str, bytes: u64) {
        self.evictions
            .get_or_create(&Reason {
                reason: reason.to_string(),
            })
            .inc();
        self.evicted_bytes.inc_by(bytes);
    }

    /// An HTTP connection closed or refused by `http::limits`.
    pub fn http_closed(&self, reason: &str) {
        self.http_connections_closed
            .get_or_create(&Reason {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Bytes held, by retention state.
    pub fn spool_usage(&self, pending: u64, done: u64, evictable: u64) {
        for (state, bytes) in [
            ("pending", pending),
            ("done", done),
            ("evictable", evictable),
        ] {
            self.spool_bytes
                .get_or_create(&StudyHold {
                    state: state.to_string(),
                })
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    /// The registry in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn refused(&self, reason: &str) {
        self.instances_refused
            .get_or_create(&Reason {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn association(&self, outcome: &str, reason: &str) {
        self.associations
            .get_or_create(&Outcome {
                outcome: outcome.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn study(&self, outcome: &str) {
        self.studies
            .get_or_create(&Reason {
                reason: outcome.to_string(),
            })
            .inc();
    }

    pub fn cluster_event(&self, kind: &str) {
        self.cluster_events
            .get_or_create(&Reason {
                reason: kind.to_string(),
            })
            .inc();
    }

    pub fn output(&self, destination: &str, outcome: &str) {
        self.outputs
            .get_or_create(&Delivery {
                destination: destination.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn stage(&self, stage: &str, seconds: f64) {
        if seconds.is_finite() && seconds >= 0.0 {
            self.stage_seconds
                .get_or_create(&Stage {
                    stage: stage.to_string(),
                })
                .observe(seconds);
        }
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// This process's metrics.
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_names_and_labels() {
        let m = Metrics::new();
        m.instances_received.inc();
        m.refused("0122 sop class");
        m.stage("vqvae", 0.5);
        let text = m.encode();
        assert!(
            text.contains("prima_node_instances_received_total 1"),
            "{text}"
        );
        assert!(
            text.contains("prima_node_instances_refused_total{reason=\"0122 sop class\"} 1"),
            "{text}"
        );
        assert!(text.contains("prima_node_stage_seconds_count{stage=\"vqvae\"} 1"));
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
