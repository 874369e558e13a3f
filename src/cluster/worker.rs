//! A cluster worker (`role = "worker"` or `"all"`): the one worker loop
//! ([`crate::worker`]) with the NATS queue as its job source ([`NatsJobs`]) and the
//! cluster's object store and records as its result sink ([`NatsResults`]): the same
//! processing as the single node (the model process, crashes retried up to
//! `[model] max_crashes`); outputs published before the job is acknowledged.
//!
//! The lease on a job is the queue's ack wait: while the model runs a task reports
//! progress every third of it, so a live worker keeps its job and a killed one loses it to
//! the next worker after `ack_wait_s`. A job is acked only after its results are in the
//! cluster, so a crash before that re-runs it elsewhere; the output UIDs are derived from
//! the input, so the re-run writes the same objects and the result record is created once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, AckKind};
use bytes::Bytes;
use futures_util::StreamExt;
use tracing::{error, info, info_span, warn};

use super::records::{
    output_object, result_key, study_key, JobMessage, OutputEntry, ResultRecord, ResultState,
    StudyRecord,
};
use super::{nats, nats_at, Cluster, ClusterError, WORKERS_CONSUMER};
use crate::config::SharedConfig;
use crate::job::{
    JobInstance, PredecessorRef, ProcessError, ProcessedStudy, ProcessorFactory, StudyJob,
};
use crate::store::state::{now_ms, StudyState};
use crate::worker::{Finished, JobSource, ResultSink, Taken};

/// The cluster's side of a worker.
pub struct WorkerCtx {
    pub config: SharedConfig,
    /// Where a job's instances are fetched to (emptied after each job).
    pub scratch: PathBuf,
    /// When this worker last showed life (ms since the epoch): each wait for a job, each
    /// progress report on a job. `serve` feeds the systemd watchdog only while it is fresh.
    pub heartbeat: Arc<std::sync::atomic::AtomicI64>,
}

/// Builds the processor and serves the cluster's jobs with it until `stop`. Returns once
/// the processor is built (or failed to build).
pub fn spawn(
    ctx: WorkerCtx,
    factory: ProcessorFactory,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, ProcessError> {
    // What a killed worker left in its scratch spool: the job is redelivered anyway.
    let _ = std::fs::remove_dir_all(&ctx.scratch);
    let config = ctx.config.clone();
    crate::worker::spawn("prima-cluster-worker", config, factory, move || {
        let cfg = ctx.config.get();
        let (rt, cl) = super::start(&cfg, &stop, "no jobs are taken")?;
        info!(node = %cl.node, "cluster worker waiting for jobs");
        let link = Arc::new(Link { rt, cl });
        Some((
            NatsJobs {
                link: link.clone(),
                ctx,
                stop,
                failing: false,
            },
            NatsResults { link },
        ))
    })
}

/// The runtime and the connection a worker's source and sink share.
struct Link {
    rt: tokio::runtime::Runtime,
    cl: Cluster,
}

/// A job taken from the queue: its message, kept alive by progress reports while it is
/// held.
pub struct Lease {
    msg: Arc<jetstream::Message>,
    job: JobMessage,
    delivered: u32,
    progress: tokio::task::JoinHandle<()>,
    /// The scratch directory its instances were fetched into.
    dir: PathBuf,
}

/// The job queue as the worker's source: each job's instances are fetched into the
/// scratch spool before it is handed on (fetching is part of the job, under its lease).
pub struct NatsJobs {
    link: Arc<Link>,
    ctx: WorkerCtx,
    stop: Arc<AtomicBool>,
    /// The last try to take a job failed (logged once until one succeeds).
    failing: bool,
}

impl JobSource for NatsJobs {
    type Ticket = Lease;

    fn next(&mut self) -> Option<Taken<Lease>> {
        while !self.stop.load(Ordering::SeqCst) {
            self.ctx.heartbeat.store(now_ms(), Ordering::Relaxed);
            let msg = match self.link.rt.block_on(next_job(&self.link.cl)) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    self.failing = false;
                    continue;
                }
                Err(e) => {
                    if !self.failing {
                        warn!(error = %e, "cannot take jobs from the cluster: retrying");
                    }
                    self.failing = true;
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            self.failing = false;
            let msg = Arc::new(msg);
            match self.take(msg.clone()) {
                Ok(Some(taken)) => return Some(taken),
                Ok(None) => {}
                Err(e) => {
                    // The job stays unacknowledged: it is delivered again (here or elsewhere).
                    warn!(error = %e, "job not finished: it will be delivered again");
                    nak(&self.link.rt, &msg);
                }
            }
        }
        None
    }
}

impl NatsJobs {
    /// A delivered job made ready to run: claimed in its study record, its instances
    /// fetched. `None` when there is nothing to run (unreadable, already done, given up).
    fn take(&mut self, msg: Arc<jetstream::Message>) -> Result<Option<Taken<Lease>>, ClusterError> {
        let (rt, cl) = (&self.link.rt, &self.link.cl);
        let started = Instant::now();
        let delivered = msg.info().map(|i| i.delivered).unwrap_or(1).max(1) as u32;
        let job: JobMessage = match serde_json::from_slice(&msg.payload) {
            Ok(j) => j,
            Err(e) => {
                error!(error = %e, "unreadable job message: dropped");
                let _ = rt.block_on(msg.ack_with(AckKind::Term));
                return Ok(None);
            }
        };
        let span = info_span!("study", study = %job.study_uid, input = %&job.input_hash[..job.input_hash.len().min(16)]);
        let _g = span.enter();
        // Held from the start: the result record's read and the claim wait on the cluster
        // as the fetch does (a rejoining server's JetStream answers 503 until it has caught
        // up), and each redelivery would spend one of the job's deliveries.
        let progress = keep_lease(rt, cl, &msg, self.ctx.heartbeat.clone());
        let dir = self.ctx.scratch.join(&job.input_hash);
        let prepared = rt.block_on(take_patiently(&self.stop, || {
            prepare(cl, &job, &dir, delivered)
        }));
        let study_job = match prepared {
            Ok(Some(j)) => j,
            Ok(None) => {
                progress.abort();
                info!(
                    delivered,
                    "results of this job are already in the cluster: acknowledged"
                );
                rt.block_on(msg.double_ack())
                    .map_err(nats_at("acknowledging the job"))?;
                return Ok(None);
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                progress.abort();
                give_up_or_retry(rt, cl, &msg, &job, delivered, e)?;
                return Ok(None);
            }
        };
        drop(_g);
        Ok(Some(Taken {
            job: study_job,
            ticket: Lease {
                msg,
                job,
                delivered,
                progress,
                dir,
            },
            span,
            started,
        }))
    }
}

/// The cluster's object store and records as the worker's sink: outputs and the result
/// record published, then the job acknowledged.
pub struct NatsResults {
    link: Arc<Link>,
}

impl ResultSink for NatsResults {
    type Ticket = Lease;
    const PROCESSED: &'static str = "study processed: results in the cluster";

    fn finish(
        &mut self,
        taken: Taken<Lease>,
        outcome: Result<ProcessedStudy, ProcessError>,
    ) -> Finished {
        let (rt, cl) = (&self.link.rt, &self.link.cl);
        let lease = taken.ticket;
        let _ = std::fs::remove_dir_all(&lease.dir);
        // Unusable results fail the study, as on the single node.
        // A study the model did not run on (too few usable series) fails with its reasons.
        let outcome =
            outcome.and_then(
                |p| match (&p.run.not_analysed, p.check(&lease.job.study_uid)) {
                    (Some(why), _) => Err(ProcessError::Failed(format!("not analysed: {why}"))),
                    (None, Ok(())) => Ok(p),
                    (None, Err(e)) => Err(ProcessError::Failed(e.to_string())),
                },
            );
        let recorded = match &outcome {
            Ok(p) => rt.block_on(publish(cl, &lease.job, p)),
            Err(e) => rt
                .block_on(record_failure(cl, &lease.job, &e.to_string()))
                .map(|()| 0),
        };
        lease.progress.abort();
        let acked = recorded.and_then(|n| {
            rt.block_on(lease.msg.double_ack())
                .map_err(nats_at("acknowledging the job"))?;
            Ok(n)
        });
        match (acked, outcome) {
            (Ok(n), Ok(_)) => Finished::Processed(n),
            (Ok(_), Err(e)) => Finished::Failed(e),
            (Err(e), _) => {
                warn!(error = %e, delivered = lease.delivered, "job not finished: it will be delivered again");
                nak(rt, &lease.msg);
                Finished::Returned
            }
        }
    }
}

/// Hand a job back for another delivery a little later.
fn nak(rt: &tokio::runtime::Runtime, msg: &jetstream::Message) {
    let _ = rt.block_on(msg.ack_with(AckKind::Nak(Some(Duration::from_secs(2)))));
}

async fn next_job(cl: &Cluster) -> Result<Option<jetstream::Message>, ClusterError> {
    let stream = cl
        .js
        .get_stream(&cl.section.jobs_stream)
        .await
        .map_err(nats_at("job stream info"))?;
    let consumer: consumer::PullConsumer = stream
        .get_consumer(WORKERS_CONSUMER)
        .await
        .map_err(nats_at("job consumer info"))?;
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .map_err(nats_at("fetching a job"))?;
    match batch.next().await {
        Some(Ok(m)) => Ok(Some(m)),
        Some(Err(e)) => Err(nats(e)),
        None => Ok(None),
    }
}

/// The study record names this node as the one processing the job's input.
async fn claim(cl: &Cluster, job: &JobMessage) -> Result<(), ClusterError> {
    let me = cl.node.clone();
    cl.modify(
        &cl.studies,
        &study_key(&job.study_uid),
        |cur: Option<StudyRecord>| {
            let mut r = cur?;
            // PROCESSING: a redelivery after the previous worker died or lost its lease.
            if r.published_input.as_deref() != Some(job.input_hash.as_str())
                || !(r.state == StudyState::Queued || r.state == StudyState::Processing)
                || r.worker.as_deref() == Some(me.as_str())
            {
                return None;
            }
            r.state = StudyState::Processing;
            r.worker = Some(me.clone());
            r.updated_ms = now_ms();
            Some(r)
        },
    )
    .await?;
    Ok(())
}

/// Keeps the lease on a job while it is held: a progress report every third of the ack
/// wait, so a live worker keeps its job and a killed one loses it after `ack_wait_s`.
fn keep_lease(
    rt: &tokio::runtime::Runtime,
    cl: &Cluster,
    msg: &Arc<jetstream::Message>,
    heartbeat: Arc<std::sync::atomic::AtomicI64>,
) -> tokio::task::JoinHandle<()> {
    let every = Duration::from_secs_f64((cl.section.ack_wait_s / 3.0).max(0.3));
    let msg = msg.clone();
    rt.spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match msg.ack_with(AckKind::Progress).await {
                Ok(()) => heartbeat.store(now_ms(), Ordering::Relaxed),
                Err(e) => warn!(error = %e, "cannot report progress on the job"),
            }
        }
    })
}

/// A job that could not be run here (the cluster or the scratch disk failed): try again
/// elsewhere, or, on its last delivery, fail it with the reason.
fn give_up_or_retry(
    rt: &tokio::runtime::Runtime,
    cl: &Cluster,
    msg: &jetstream::Message,
    job: &JobMessage,
    delivered: u32,
    why: ClusterError,
) -> Result<(), ClusterError> {
    if delivered >= cl.section.max_deliver {
        let reason = format!("failed on {delivered} deliveries (last: {why})");
        error!(%reason, "study failed");
        rt.block_on(record_failure(cl, job, &reason))?;
        rt.block_on(msg.double_ack())
            .map_err(nats_at("acknowledging the job"))?;
        return Ok(());
    }
    Err(why)
}

/// How long a worker keeps trying to make a job ready ([`prepare`]) while the cluster does
/// not answer (a partition, a leader election, a replica catching up), holding the job by
/// its progress reports, before the delivery counts as failed.
const TAKE_PATIENCE: Duration = Duration::from_secs(120);

/// `step` ([`prepare`]), tried again while the failure is the cluster's availability rather
/// than the job's: a redelivery would spend one of the job's `max_deliver` deliveries on a
/// fault that has nothing to do with the study (a study failed for good by a healing
/// server).
async fn take_patiently<T, F, Fut>(stop: &AtomicBool, mut step: F) -> Result<T, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClusterError>>,
{
    let started = Instant::now();
    let mut wait = Duration::from_millis(500);
    loop {
        match step().await {
            Err(ClusterError::Nats(e))
                if started.elapsed() < TAKE_PATIENCE && !stop.load(Ordering::SeqCst) =>
            {
                warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot make the job ready from the cluster: trying again (the job stays held)");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(8));
            }
            other => return other,
        }
    }
}

/// A delivered job made ready: `None` when its results are in the cluster already, else
/// claimed and its instances fetched into `dir`. Each step may be run again.
async fn prepare(
    cl: &Cluster,
    job: &JobMessage,
    dir: &Path,
    attempt: u32,
) -> Result<Option<StudyJob>, ClusterError> {
    let rkey = result_key(&job.study_uid, &job.input_hash);
    if cl.read::<ResultRecord>(&cl.results, &rkey).await?.is_some() {
        return Ok(None);
    }
    claim(cl, job).await?;
    fetch(cl, job, dir, attempt).await.map(Some)
}

/// The job's instances into `dir`, as a [`StudyJob`].
async fn fetch(
    cl: &Cluster,
    job: &JobMessage,
    dir: &Path,
    attempt: u32,
) -> Result<StudyJob, ClusterError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let _ = std::fs::remove_dir_all(dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mut instances = Vec::new();
    for (n, (sop, e)) in job.instances.iter().enumerate() {
        let path = dir.join(format!("{n:06}.dcm"));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let mut w = std::io::BufWriter::new(f);
        cl.instances.get_into(&e.object, &mut w).await?;
        std::io::Write::flush(&mut w)?;
        instances.push(JobInstance {
            path,
            sop_class_uid: e.sop_class_uid.clone(),
            sop_instance_uid: sop.clone(),
            series_instance_uid: e.series_uid.clone(),
            modality: e.modality.clone(),
            content_hash: e.content_hash.clone(),
        });
    }
    let mut input_set_hash = [0u8; 32];
    hex::decode_to_slice(&job.input_hash, &mut input_set_hash).map_err(|e| {
        ClusterError::Record {
            key: job.msg_id(),
            message: format!("input hash: {e}"),
        }
    })?;
    Ok(StudyJob {
        study_instance_uid: job.study_uid.clone(),
        instances,
        input_set_hash,
        predecessors: job.predecessors.clone(),
        forced_complete: job.forced,
        attempt,
        set_aside: Vec::new(),
    })
}

/// Outputs into the object store, then the result record (created once), then the study
/// record. Returns the number of outputs.
async fn publish(
    cl: &Cluster,
    job: &JobMessage,
    p: &ProcessedStudy,
) -> Result<usize, ClusterError> {
    let mut outputs = Vec::new();
    for o in &p.outputs {
        let object = output_object(&job.study_uid, &job.input_hash, &o.sop_instance_uid);
        cl.outputs.put(&object, &o.bytes).await?;
        outputs.push(OutputEntry {
            kind: o.kind,
            sop_class_uid: o.sop_class_uid.clone(),
            sop_instance_uid: o.sop_instance_uid.clone(),
            series_instance_uid: o.series_instance_uid.clone(),
            object,
        });
    }
    let pred = output_object(&job.study_uid, &job.input_hash, "predictions.json");
    cl.outputs.put(&pred, p.predictions_json.as_bytes()).await?;
    let run = output_object(&job.study_uid, &job.input_hash, "run.json");
    let run_json = serde_json::to_string_pretty(&p.run).map_err(nats)?;
    cl.outputs.put(&run, run_json.as_bytes()).await?;
    let rec = ResultRecord {
        study_uid: job.study_uid.clone(),
        input_hash: job.input_hash.clone(),
        state: ResultState::Ready,
        outputs: outputs.clone(),
        predictions_object: Some(pred),
        run_object: Some(run),
        worker: cl.node.clone(),
        finished_ms: now_ms(),
        error: None,
        claimed_by: None,
        lease_until_ms: 0,
        delivered_ms: None,
        declined: Default::default(),
        delivered_to: Default::default(),
    };
    create_result(cl, &rec).await?;
    let refs: Vec<PredecessorRef> = outputs
        .iter()
        .map(|o| PredecessorRef {
            sop_class_uid: o.sop_class_uid.clone(),
            sop_instance_uid: o.sop_instance_uid.clone(),
            series_instance_uid: o.series_instance_uid.clone(),
        })
        .collect();
    cl.modify(
        &cl.studies,
        &study_key(&job.study_uid),
        |cur: Option<StudyRecord>| {
            let mut r = cur?;
            if refs.iter().all(|x| r.outputs.contains(x)) {
                return None;
            }
            r.outputs.extend(refs.iter().cloned());
            r.runs += 1;
            if r.published_input.as_deref() == Some(job.input_hash.as_str())
                && (r.state == StudyState::Processing || r.state == StudyState::Queued)
            {
                r.state = StudyState::Done;
                r.worker = None;
            }
            r.updated_ms = now_ms();
            Some(r)
        },
    )
    .await?;
    Ok(outputs.len())
}

async fn create_result(cl: &Cluster, rec: &ResultRecord) -> Result<(), ClusterError> {
    let key = result_key(&rec.study_uid, &rec.input_hash);
    let bytes = Bytes::from(serde_json::to_vec(rec).map_err(nats)?);
    cl.fits(&key, bytes.len())?;
    match cl.results.create(&key, bytes).await {
        Ok(_) => Ok(()),
        // A worker that finished it before and died before its ack: the same objects.
        Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(nats(e)),
    }
}

async fn record_failure(cl: &Cluster, job: &JobMessage, reason: &str) -> Result<(), ClusterError> {
    let rec = ResultRecord {
        study_uid: job.study_uid.clone(),
        input_hash: job.input_hash.clone(),
        state: ResultState::Failed,
        outputs: Vec::new(),
        predictions_object: None,
        run_object: None,
        worker: cl.node.clone(),
        finished_ms: now_ms(),
        error: Some(reason.to_string()),
        claimed_by: None,
        lease_until_ms: 0,
        delivered_ms: None,
        declined: Default::default(),
        delivered_to: Default::default(),
    };
    create_result(cl, &rec).await?;
    cl.modify(
        &cl.studies,
        &study_key(&job.study_uid),
        |cur: Option<StudyRecord>| {
            let mut r = cur?;
            if r.published_input.as_deref() != Some(job.input_hash.as_str())
                || r.state == StudyState::Failed
            {
                return None;
            }
            r.state = StudyState::Failed;
            r.reason = Some(reason.to_string());
            r.worker = None;
            r.updated_ms = now_ms();
            Some(r)
        },
    )
    .await?;
    Ok(())
}

/// For the advisory watcher: fail a job no worker finished in `max_deliver` deliveries.
pub(crate) async fn fail_abandoned(
    cl: &Cluster,
    job: &JobMessage,
    reason: &str,
) -> Result<(), ClusterError> {
    if cl
        .read::<ResultRecord>(&cl.results, &result_key(&job.study_uid, &job.input_hash))
        .await?
        .is_some()
    {
        return Ok(());
    }
    error!(study = %job.study_uid, %reason, "study failed");
    record_failure(cl, job, reason).await
}
