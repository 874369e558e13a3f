//! The single node's transport: jobs from the assembler over a bounded channel, results
//! checked, written to the outbox directory (objects, predictions, run record), then
//! recorded with the study's destinations in one database transaction.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use tracing::{info, info_span, warn};

use super::{retry_storage, Finished, JobSource, ResultSink, Taken};
use crate::config::SharedConfig;
use crate::job::{ProcessError, ProcessedStudy, RunRecord, WorkItem};
use crate::store::outbox::Outbox;
use crate::store::state::{OutputRow, State};

/// Jobs the assembler dispatched, in the order it did.
pub struct LocalQueue {
    pub jobs: Receiver<WorkItem>,
    pub state: Arc<State>,
    /// Wakes the assembler when the worker takes a job: the channel has room again.
    pub wake_assembler: Sender<()>,
}

impl JobSource for LocalQueue {
    /// The job's id in the state database.
    type Ticket = i64;

    fn next(&mut self) -> Option<Taken<i64>> {
        let item = self.jobs.recv().ok()?;
        let _ = self.wake_assembler.try_send(());
        let study = item.job.study_instance_uid.clone();
        let span = info_span!("study", study = %study, job = item.job_id);
        // A failed write here would skip the job, leaving it `dispatched` (never run) until
        // a restart; a full disk or a busy database passes, so wait for it.
        span.in_scope(|| {
            retry_storage("mark the job running", || {
                self.state.mark_job_running(item.job_id, &study)
            })
        });
        Some(Taken {
            job: item.job,
            ticket: item.job_id,
            span,
            started: Instant::now(),
        })
    }
}

/// The outbox and the state database.
pub struct LocalOutbox {
    pub state: Arc<State>,
    pub outbox: Outbox,
    pub config: SharedConfig,
    /// Wakes the sender when outputs are queued.
    pub wake_sender: Sender<()>,
    /// Wakes the assembler when a job ends: a re-run may be due (instances arrived while it
    /// ran).
    pub wake_assembler: Sender<()>,
}

impl ResultSink for LocalOutbox {
    type Ticket = i64;
    const PROCESSED: &'static str = "study processed";

    fn finish(
        &mut self,
        taken: Taken<i64>,
        outcome: Result<ProcessedStudy, ProcessError>,
    ) -> Finished {
        let study = &taken.job.study_instance_uid;
        let job_id = taken.ticket;
        // Storage errors are retried with the results kept in memory: a full disk while
        // writing the outputs must not fail the study for good when it only needs the space
        // to come back. Re-running the model is not needed: the outputs are deterministic
        // and every write is atomic and idempotent. The worker waits meanwhile, which is the
        // back-pressure wanted when nothing can be written anyway.
        let kept = outcome.and_then(|p| {
            if let Some(reason) = &p.run.not_analysed {
                // Nothing to send; the run record keeps what was not used, and why.
                return retry_storage("store the run record", || {
                    let run_json = serde_json::to_string_pretty(&p.run).unwrap_or_default();
                    self.outbox
                        .persist_results(study, job_id, "{}", &run_json)
                        .map(|_| Err(ProcessError::Failed(format!("not analysed: {reason}"))))
                });
            }
            retry_storage("store the results", || match finish(self, &taken, &p) {
                Err(FinishError::Invalid(m)) => Ok(Err(ProcessError::Failed(m))),
                Err(FinishError::Storage(m)) => Err(m),
                Ok(n) => Ok(Ok(n)),
            })
        });
        let finished = match kept {
            Ok(n) => Finished::Processed(n),
            Err(e) => {
                retry_storage("record the failure", || {
                    self.state.finish_job_failed(job_id, study, &e.to_string())
                });
                Finished::Failed(e)
            }
        };
        let _ = self.wake_assembler.try_send(());
        finished
    }
}

enum FinishError {
    /// The outputs are unusable: the job fails.
    Invalid(String),
    /// Writing them failed: worth retrying.
    Storage(String),
}

fn finish(ctx: &LocalOutbox, taken: &Taken<i64>, p: &ProcessedStudy) -> Result<usize, FinishError> {
    let study = &taken.job.study_instance_uid;
    let job_id = taken.ticket;
    let io = FinishError::Storage;
    p.check(study)
        .map_err(|e| FinishError::Invalid(e.to_string()))?;
    let mut rows = Vec::new();
    // Outputs are durable before they are queued: a crash after this point re-sends from
    // disk instead of re-running the model.
    let objects: Vec<(&str, &[u8])> = p
        .outputs
        .iter()
        .map(|o| (o.sop_instance_uid.as_str(), o.bytes.as_slice()))
        .collect();
    // The objects and the predictions/run record are independent durability steps (each
    // a round of fdatasyncs and a directory fsync); overlapped, the send waits for one
    // round instead of two, which matters when the disk is busy with reception.
    let run_json = serde_json::to_string_pretty(&p.run).unwrap_or_default();
    let (paths, results) = std::thread::scope(|s| {
        let results = s.spawn(|| {
            ctx.outbox
                .persist_results(study, job_id, &p.predictions_json, &run_json)
        });
        let paths = ctx.outbox.persist_objects(&objects);
        (paths, results.join())
    });
    let paths = paths.map_err(|e| io(format!("cannot persist output: {e}")))?;
    results
        .map_err(|_| io("writing the predictions panicked".into()))?
        .map_err(|e| io(format!("cannot persist predictions: {e}")))?;
    for (o, path) in p.outputs.iter().zip(paths) {
        rows.push(OutputRow {
            sop_uid: o.sop_instance_uid.clone(),
            kind: o.kind.as_str().to_string(),
            sop_class_uid: o.sop_class_uid.clone(),
            series_uid: o.series_instance_uid.clone(),
            path,
        });
    }
    let cfg = ctx.config.get();
    let dests: Vec<String> = cfg.destinations.iter().map(|d| d.key()).collect();
    if dests.is_empty() {
        warn!("no [[destinations]] configured: outputs kept in the outbox directory only");
    }
    let current =
        crate::study::current_input(&ctx.state, study, &cfg).map_err(|e| io(e.to_string()))?;
    let job_hash = hex::encode(taken.job.input_set_hash);
    if hex::encode(current.1) != job_hash {
        info!("instances arrived while processing: the study will be re-run");
    }
    ctx.state
        .finish_job_ok(
            job_id,
            study,
            &rows,
            &dests,
            &job_hash,
            &hex::encode(current.1),
        )
        .map_err(|e| io(e.to_string()))?;
    let _ = ctx.wake_sender.try_send(());
    observe(ctx, study, &p.run);
    Ok(rows.len())
}

/// Stage seconds from the run record, and the time from the study's last instance to its
/// results being queued, into the metrics.
fn observe(ctx: &LocalOutbox, study: &str, run: &RunRecord) {
    let m = crate::metrics::get();
    for (stage, s) in run.timings.stages() {
        m.stage(stage, s);
    }
    if let Ok(Some(row)) = ctx.state.study(study) {
        let s = (crate::store::state::now_ms() - row.last_received_ms) as f64 / 1000.0;
        m.result_latency_seconds.observe(s.max(0.0));
    }
}
