//! What the cluster looks like from here (for `prima-node status` and the status page),
//! and the watcher that fails jobs no worker could finish.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use serde::Serialize;
use tracing::warn;

use super::records::{JobMessage, ResultRecord, StudyRecord};
use super::{nats, Cluster, ClusterError, WORKERS_CONSUMER};

#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    pub node: String,
    pub role: String,
    pub server: String,
    pub studies: BTreeMap<String, usize>,
    pub results: BTreeMap<String, usize>,
    /// Jobs in the queue no worker has taken.
    pub jobs_waiting: u64,
    /// Jobs a worker holds.
    pub jobs_running: u64,
    /// Pull requests open now: workers waiting for a job.
    pub workers_idle: usize,
    /// The latest failures (study, reason).
    pub failures: Vec<(String, String)>,
}

pub async fn view(cl: &Cluster) -> Result<ClusterView, ClusterError> {
    let mut studies = BTreeMap::new();
    let mut failures = Vec::new();
    for k in cl.keys(&cl.studies).await? {
        if let Some((r, _)) = cl.read::<StudyRecord>(&cl.studies, &k).await? {
            *studies.entry(r.state.clone()).or_insert(0) += 1;
            if r.state == super::records::state::FAILED {
                failures.push((r.updated_ms, r.study_uid, r.reason.unwrap_or_default()));
            }
        }
    }
    failures.sort();
    let failures = failures
        .into_iter()
        .rev()
        .take(10)
        .map(|(_, s, r)| (s, r))
        .collect();
    let mut results = BTreeMap::new();
    for k in cl.keys(&cl.results).await? {
        if let Some((r, _)) = cl.read::<ResultRecord>(&cl.results, &k).await? {
            *results.entry(r.state).or_insert(0) += 1;
        }
    }
    let stream = cl
        .js
        .get_stream(&cl.section.jobs_stream)
        .await
        .map_err(nats)?;
    let info = stream.consumer_info(WORKERS_CONSUMER).await.map_err(nats)?;
    Ok(ClusterView {
        node: cl.node.clone(),
        role: cl.section.role.as_str().into(),
        server: cl.client.server_info().host.clone(),
        studies,
        results,
        jobs_waiting: info.num_pending,
        jobs_running: info.num_ack_pending as u64,
        workers_idle: info.num_waiting,
        failures,
    })
}

impl ClusterView {
    pub fn text(&self) -> String {
        let fmt = |m: &BTreeMap<String, usize>| {
            if m.is_empty() {
                "none".to_string()
            } else {
                m.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let mut s = format!(
            "cluster: node {} (role {}), connected to {}\n  studies: {}\n  results: {}\n  jobs: {} waiting, {} running; {} worker(s) idle\n",
            self.node,
            self.role,
            self.server,
            fmt(&self.studies),
            fmt(&self.results),
            self.jobs_waiting,
            self.jobs_running,
            self.workers_idle
        );
        for (study, why) in &self.failures {
            s.push_str(&format!("  failed: {study}: {why}\n"));
        }
        s
    }
}

/// JetStream announces a job that reached `max_deliver` without an ack (its workers died
/// on it): fail its study with that reason, so it does not wait forever.
pub async fn watch_max_deliveries(cl: Cluster) {
    let subject = format!(
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
        cl.section.jobs_stream, WORKERS_CONSUMER
    );
    let mut sub = match cl.client.subscribe(subject).await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot watch for abandoned jobs");
            return;
        }
    };
    while let Some(m) = sub.next().await {
        #[derive(serde::Deserialize)]
        struct Advisory {
            stream_seq: u64,
            deliveries: u64,
        }
        let Ok(a) = serde_json::from_slice::<Advisory>(&m.payload) else {
            continue;
        };
        if let Err(e) = abandon(&cl, a.stream_seq, a.deliveries).await {
            warn!(error = %e, seq = a.stream_seq, "cannot fail an abandoned job");
        }
    }
}

async fn abandon(cl: &Cluster, seq: u64, deliveries: u64) -> Result<(), ClusterError> {
    let stream = cl
        .js
        .get_stream(&cl.section.jobs_stream)
        .await
        .map_err(nats)?;
    let Ok(raw) = stream.get_raw_message(seq).await else {
        return Ok(());
    };
    let Ok(job) = serde_json::from_slice::<JobMessage>(&raw.payload) else {
        return Ok(());
    };
    let reason = format!(
        "no worker finished it in {deliveries} deliveries (each worker died or lost its lease)"
    );
    super::worker::fail_abandoned(cl, &job, &reason).await?;
    let _ = stream.delete_message(seq).await;
    Ok(())
}
