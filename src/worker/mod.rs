//! The inference worker: one OS thread that owns the study processor (the model is loaded
//! once, on that thread, by the factory given to [`crate::node::serve`]) and receives jobs
//! over a bounded `crossbeam-channel`, so back-pressure is explicit.
//!
//! The worker does not know the model: it calls a [`StudyProcessor`]; in `serve` that is
//! [`isolated::ChildProcessor`], which runs the model in a child process, so that nothing
//! a study does to the model's process takes the node down. A failure (an `Err` or a
//! panic) marks the job failed with its reason; a crash of the child is tried again in a
//! fresh one, up to `[model] max_crashes` times, then the job fails with the crash as its
//! reason. What a job produced is made durable and queued for sending by [`results`].

pub mod child;
pub mod isolated;
pub mod marker;
pub mod protocol;
mod results;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use tracing::{error, info, info_span, warn};

use crate::config::SharedConfig;
use crate::job::{ProcessError, ProcessorFactory, StudyProcessor, WorkItem};
use crate::store::outbox::Outbox;
use crate::store::state::State;
use results::{finish, FinishError};

pub struct WorkerCtx {
    pub state: Arc<State>,
    pub outbox: Outbox,
    pub config: SharedConfig,
    /// Wakes the sender when outputs are queued.
    pub wake_sender: Sender<()>,
    /// Wakes the assembler when the worker takes a job: the channel has room again.
    pub wake_assembler: Sender<()>,
}

/// The running worker.
pub struct Spawned {
    pub sender: Sender<WorkItem>,
    pub handle: std::thread::JoinHandle<()>,
}

/// Start the worker thread. Returns once the processor is built (or failed to build).
pub fn spawn(
    ctx: WorkerCtx,
    factory: ProcessorFactory,
    capacity: usize,
) -> Result<Spawned, ProcessError> {
    let (tx, rx) = crossbeam_channel::bounded::<WorkItem>(capacity);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let cfg = ctx.config.get();
    let handle = std::thread::Builder::new()
        .name("prima-worker".into())
        .spawn(move || {
            let t0 = Instant::now();
            let built = std::panic::catch_unwind(AssertUnwindSafe(|| factory(cfg.as_ref())))
                .unwrap_or_else(|_| Err(ProcessError::Load("panic while loading".into())));
            match built {
                Ok(p) => {
                    info!(device = %cfg.model.device, ms = t0.elapsed().as_millis() as u64, "model loaded");
                    let _ = ready_tx.send(Ok(()));
                    run(ctx, p, rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| ProcessError::Load(format!("cannot start worker thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(Spawned { sender: tx, handle }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ProcessError::Load(
            "worker thread died while loading".into(),
        )),
    }
}

fn run(ctx: WorkerCtx, mut processor: Box<dyn StudyProcessor>, rx: Receiver<WorkItem>) {
    for item in rx {
        let _ = ctx.wake_assembler.try_send(());
        let study = item.job.study_instance_uid.clone();
        let span = info_span!("study", study = %study, job = item.job_id);
        let _g = span.enter();
        // A failed write here used to skip the job, leaving it `dispatched` (never run)
        // until a restart; a full disk or a busy database passes, so wait for it.
        retry_storage("mark the job running", || {
            ctx.state.mark_job_running(item.job_id, &study)
        });
        info!(
            instances = item.job.instances.len(),
            attempt = item.job.attempt,
            forced = item.job.forced_complete,
            predecessors = item.job.predecessors.len(),
            "processing study"
        );
        let t0 = Instant::now();
        let max_crashes = ctx.config.get().model.max_crashes;
        let result = run_job(processor.as_mut(), &item.job, max_crashes);
        let ms = t0.elapsed().as_millis() as u64;
        let outcome = result.and_then(|p| {
            // Storage errors are retried with the results kept in memory: found by the
            // disk-full test, a full disk while writing the outputs marked the study
            // `failed` for good (or, when the database was full too, left it `processing`
            // until a restart), although it only needed the space to come back. Re-running
            // the model is not needed: the outputs are deterministic and every write is
            // atomic and idempotent. The worker waits meanwhile, which is the back-pressure
            // wanted when nothing can be written anyway.
            retry_storage("store the results", || match finish(&ctx, &item, &p) {
                Err(FinishError::Invalid(m)) => Ok(Err(ProcessError::Failed(m))),
                Err(FinishError::Storage(m)) => Err(m),
                Ok(n) => Ok(Ok(n)),
            })
        });
        match outcome {
            Ok(n) => {
                info!(ms, outputs = n, "study processed");
                crate::metrics::get().study("processed");
            }
            Err(e) => {
                error!(ms, error = %e, "study failed");
                crate::metrics::get().study("failed");
                retry_storage("record the failure", || {
                    ctx.state
                        .finish_job_failed(item.job_id, &study, &e.to_string())
                });
            }
        }
        // A re-run may be due now (instances arrived while it ran).
        let _ = ctx.wake_assembler.try_send(());
    }
}

/// Runs one job, trying again after a crash of the processor's process until `max_crashes`
/// crashes, when the job fails with the last crash as its reason.
pub(crate) fn run_job(
    processor: &mut dyn StudyProcessor,
    job: &crate::job::StudyJob,
    max_crashes: u32,
) -> Result<crate::job::ProcessedStudy, ProcessError> {
    let mut crashes = 0;
    loop {
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| processor.process(job)))
            .unwrap_or_else(|p| {
                Err(ProcessError::Failed(format!(
                    "processor panicked: {}",
                    panic_message(p)
                )))
            });
        match r {
            Err(ProcessError::Crashed(why)) => {
                crashes += 1;
                error!(crashes, max_crashes, reason = %why, "worker process crashed on this study");
                if crashes >= max_crashes.max(1) {
                    return Err(ProcessError::Failed(format!(
                        "the worker process crashed {crashes} time(s) on this study (last: {why})"
                    )));
                }
            }
            other => return other,
        }
    }
}

/// The message of a caught panic.
pub(crate) fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// Retry `f` with backoff (1 s doubling to 30 s) until it succeeds; for writes that fail
/// only while the disk is full or the database is busy.
fn retry_storage<T, E: std::fmt::Display>(what: &str, mut f: impl FnMut() -> Result<T, E>) -> T {
    let mut delay = std::time::Duration::from_secs(1);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) => {
                warn!(error = %e, retry_in_s = delay.as_secs(), "cannot {what} (disk full?): will retry");
                std::thread::sleep(delay);
                delay = (delay * 2).min(std::time::Duration::from_secs(30));
            }
        }
    }
}
