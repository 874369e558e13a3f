//! A cluster worker (`role = "worker"` or `"all"`): takes study jobs from the queue, runs
//! the same processing as the single node (the processor in its child process, crashes
//! retried up to `[model] max_crashes`), publishes the outputs, then acknowledges.
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
    output_object, result_key, result_state, state as study_state, study_key, JobMessage,
    OutputEntry, ResultRecord, StudyRecord,
};
use super::{nats, nats_at, Cluster, ClusterError, WORKERS_CONSUMER};
use crate::config::SharedConfig;
use crate::job::{
    JobInstance, PredecessorRef, ProcessError, ProcessedStudy, ProcessorFactory, StudyJob,
    StudyProcessor,
};
use crate::store::state::now_ms;

pub struct WorkerCtx {
    pub config: SharedConfig,
    /// Where a job's instances are fetched to (emptied after each job).
    pub scratch: PathBuf,
    /// When this worker last showed life (ms since the epoch): each wait for a job, each
    /// progress report on a job. `serve` feeds the systemd watchdog only while it is fresh.
    pub heartbeat: Arc<std::sync::atomic::AtomicI64>,
}

/// Build the processor on a new thread and serve jobs there until `stop`. Returns once the
/// processor is built (or failed to build).
pub fn spawn(
    ctx: WorkerCtx,
    factory: ProcessorFactory,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, ProcessError> {
    // What a killed worker left in its scratch spool: the job is redelivered anyway.
    let _ = std::fs::remove_dir_all(&ctx.scratch);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let cfg = ctx.config.get();
    let handle = std::thread::Builder::new()
        .name("prima-cluster-worker".into())
        .spawn(move || {
            let t0 = Instant::now();
            let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                factory(cfg.as_ref())
            }))
            .unwrap_or_else(|_| Err(ProcessError::Load("panic while loading".into())));
            match built {
                Ok(p) => {
                    info!(device = %cfg.model.device, ms = t0.elapsed().as_millis() as u64, "model loaded");
                    let _ = ready_tx.send(Ok(()));
                    run(ctx, p, stop);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| ProcessError::Load(format!("cannot start the cluster worker thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ProcessError::Load(
            "worker thread died while loading".into(),
        )),
    }
}

fn run(ctx: WorkerCtx, mut processor: Box<dyn StudyProcessor>, stop: Arc<AtomicBool>) {
    let cfg = ctx.config.get();
    let Some((rt, cl)) = super::start(&cfg, &stop, "no jobs are taken") else {
        return;
    };
    info!(node = %cl.node, "cluster worker waiting for jobs");
    let mut failing = false;
    while !stop.load(Ordering::SeqCst) {
        ctx.heartbeat.store(now_ms(), Ordering::Relaxed);
        let next = rt.block_on(next_job(&cl));
        let msg = match next {
            Ok(Some(m)) => {
                failing = false;
                m
            }
            Ok(None) => {
                failing = false;
                continue;
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "cannot take jobs from the cluster: retrying");
                }
                failing = true;
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let msg = Arc::new(msg);
        if let Err(e) = handle(&rt, &ctx, &cl, processor.as_mut(), msg.clone()) {
            // The job stays unacknowledged: it is delivered again (here or elsewhere).
            warn!(error = %e, "job not finished: it will be delivered again");
            let _ = rt.block_on(msg.ack_with(AckKind::Nak(Some(Duration::from_secs(2)))));
        }
    }
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

fn handle(
    rt: &tokio::runtime::Runtime,
    ctx: &WorkerCtx,
    cl: &Cluster,
    processor: &mut dyn StudyProcessor,
    msg: Arc<jetstream::Message>,
) -> Result<(), ClusterError> {
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1).max(1) as u32;
    let job: JobMessage = match serde_json::from_slice(&msg.payload) {
        Ok(j) => j,
        Err(e) => {
            error!(error = %e, "unreadable job message: dropped");
            let _ = rt.block_on(msg.ack_with(AckKind::Term));
            return Ok(());
        }
    };
    let span = info_span!("study", study = %job.study_uid, input = %&job.input_hash[..job.input_hash.len().min(16)]);
    let _g = span.enter();
    let rkey = result_key(&job.study_uid, &job.input_hash);
    if rt
        .block_on(cl.read::<ResultRecord>(&cl.results, &rkey))?
        .is_some()
    {
        info!(
            delivered,
            "results of this job are already in the cluster: acknowledged"
        );
        rt.block_on(msg.double_ack())
            .map_err(nats_at("acknowledging the job"))?;
        return Ok(());
    }
    let me = cl.node.clone();
    rt.block_on(cl.modify(
        &cl.studies,
        &study_key(&job.study_uid),
        |cur: Option<StudyRecord>| {
            let mut r = cur?;
            // PROCESSING: a redelivery after the previous worker died or lost its lease.
            if r.published_input.as_deref() != Some(job.input_hash.as_str())
                || !(r.state == study_state::QUEUED || r.state == study_state::PROCESSING)
                || r.worker.as_deref() == Some(me.as_str())
            {
                return None;
            }
            r.state = study_state::PROCESSING.into();
            r.worker = Some(me.clone());
            r.updated_ms = now_ms();
            Some(r)
        },
    ))?;

    // Keep the lease while anything below runs (fetching is part of the job).
    let every = Duration::from_secs_f64((cl.section.ack_wait_s / 3.0).max(0.3));
    let progress = {
        let msg = msg.clone();
        let heartbeat = ctx.heartbeat.clone();
        rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match msg.ack_with(AckKind::Progress).await {
                    Ok(()) => heartbeat.store(now_ms(), Ordering::Relaxed),
                    Err(e) => warn!(error = %e, "cannot report progress on the job"),
                }
            }
        })
    };
    let t0 = Instant::now();
    let dir = ctx.scratch.join(&job.input_hash);
    let result = (|| {
        let study_job = rt.block_on(fetch(cl, &job, &dir, delivered))?;
        info!(
            instances = study_job.instances.len(),
            delivered,
            predecessors = study_job.predecessors.len(),
            forced = study_job.forced_complete,
            "processing study"
        );
        let max_crashes = ctx.config.get().model.max_crashes;
        Ok::<_, ClusterError>(crate::worker::run_job(processor, &study_job, max_crashes))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let outcome = match result {
        Ok(r) => r,
        Err(e) => {
            progress.abort();
            return give_up_or_retry(rt, cl, &msg, &job, delivered, e);
        }
    };
    let ms = t0.elapsed().as_millis() as u64;
    let published = match outcome {
        Ok(p) => rt.block_on(publish(cl, &job, &p)).map(|n| {
            info!(ms, outputs = n, "study processed: results in the cluster");
            crate::metrics::get().study("processed");
        }),
        Err(e) => {
            error!(ms, error = %e, "study failed");
            crate::metrics::get().study("failed");
            rt.block_on(record_failure(cl, &job, &e.to_string()))
        }
    };
    progress.abort();
    published?;
    rt.block_on(msg.double_ack())
        .map_err(nats_at("acknowledging the job"))?;
    Ok(())
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
        if o.study_instance_uid != job.study_uid || !crate::uid::is_valid(&o.sop_instance_uid) {
            return record_failure(cl, job, &format!("output {} is not of this study", o.kind))
                .await
                .map(|_| 0);
        }
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
    cl.outputs.put(&run, p.run_json.as_bytes()).await?;
    let rec = ResultRecord {
        study_uid: job.study_uid.clone(),
        input_hash: job.input_hash.clone(),
        state: result_state::READY.into(),
        outputs: outputs.clone(),
        predictions_object: Some(pred),
        run_object: Some(run),
        worker: cl.node.clone(),
        finished_ms: now_ms(),
        error: None,
        claimed_by: None,
        lease_until_ms: 0,
        delivered_ms: None,
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
                && (r.state == study_state::PROCESSING || r.state == study_state::QUEUED)
            {
                r.state = study_state::DONE.into();
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
        state: result_state::FAILED.into(),
        outputs: Vec::new(),
        predictions_object: None,
        run_object: None,
        worker: cl.node.clone(),
        finished_ms: now_ms(),
        error: Some(reason.to_string()),
        claimed_by: None,
        lease_until_ms: 0,
        delivered_ms: None,
    };
    create_result(cl, &rec).await?;
    cl.modify(
        &cl.studies,
        &study_key(&job.study_uid),
        |cur: Option<StudyRecord>| {
            let mut r = cur?;
            if r.published_input.as_deref() != Some(job.input_hash.as_str())
                || r.state == study_state::FAILED
            {
                return None;
            }
            r.state = study_state::FAILED.into();
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
