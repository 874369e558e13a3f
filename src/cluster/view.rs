//! What the cluster looks like from here (for `prima-node status` and the status page),
//! and the watcher that fails jobs no worker could finish.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use serde::Serialize;
use tracing::warn;

use super::records::{JobMessage, ResultRecord, StudyRecord};
use super::tracked::Bucket;
use super::{nats, nats_at, Cluster, ClusterError, WORKERS_CONSUMER};

/// The latest view an ingest node took (every few seconds), for the status page.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub view: Option<ClusterView>,
    /// When it was taken (ms since the epoch).
    pub taken_ms: i64,
    /// Why the last attempt failed, when it did (the view is then the one before).
    pub error: Option<String>,
}

pub type SharedSnapshot = std::sync::Arc<std::sync::Mutex<Snapshot>>;

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

/// The view read afresh (for `prima-node status`): every record once.
pub async fn view(cl: &Cluster) -> Result<ClusterView, ClusterError> {
    let mut studies = Bucket::<StudyRecord>::new(&cl.section.studies_bucket);
    studies.refresh(cl).await?;
    let mut results = Bucket::<ResultRecord>::new(&cl.section.results_bucket);
    results.refresh(cl).await?;
    view_known(cl, &studies, &results).await
}

/// The view from what an ingest node keeps current ([`Bucket`]): one request (the job
/// queue's consumer) instead of reading every record.
pub async fn view_known(
    cl: &Cluster,
    studies: &Bucket<StudyRecord>,
    results: &Bucket<ResultRecord>,
) -> Result<ClusterView, ClusterError> {
    let (jobs_waiting, jobs_running, workers_idle) = queue(cl).await?;
    Ok(ClusterView {
        node: cl.node.clone(),
        role: cl.section.role.as_str().into(),
        server: cl.client.server_info().host.clone(),
        studies: studies.counts(),
        results: results.counts(),
        jobs_waiting,
        jobs_running,
        workers_idle,
        failures: latest_failures(studies, results, 10),
    })
}

/// The latest failures of studies and of jobs, newest first, a study once: (study, why).
fn latest_failures(
    studies: &Bucket<StudyRecord>,
    results: &Bucket<ResultRecord>,
    n: usize,
) -> Vec<(String, String)> {
    let mut v: Vec<&(i64, String, String)> = studies.failures().chain(results.failures()).collect();
    v.sort_by_key(|f| std::cmp::Reverse(f.0));
    let mut seen = std::collections::HashSet::new();
    v.into_iter()
        .filter(|(_, s, _)| seen.insert(s.clone()))
        .take(n)
        .map(|(_, s, r)| (s.clone(), r.clone()))
        .collect()
}

/// Jobs waiting, jobs held by a worker, workers waiting for a job.
async fn queue(cl: &Cluster) -> Result<(u64, u64, usize), ClusterError> {
    let stream = cl
        .js
        .get_stream(&cl.section.jobs_stream)
        .await
        .map_err(nats_at("job stream info"))?;
    let info = stream
        .consumer_info(WORKERS_CONSUMER)
        .await
        .map_err(nats_at("job consumer info"))?;
    Ok((
        info.num_pending,
        info.num_ack_pending as u64,
        info.num_waiting,
    ))
}

/// "done 3, failed 1", or "none".
pub fn counts_text(m: &BTreeMap<String, usize>) -> String {
    if m.is_empty() {
        return "none".to_string();
    }
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ClusterView {
    pub fn text(&self) -> String {
        let fmt = counts_text;
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
