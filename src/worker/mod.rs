//! The worker: one OS thread that owns the study processor (the model is loaded once, on
//! that thread) and runs jobs through it, one at a time. Where jobs come from and where
//! results go is its transport: a [`JobSource`] and a [`ResultSink`].
//!
//! - The single node ([`local`]): jobs from the assembler over a bounded channel (so
//!   back-pressure is explicit), results into the outbox and the state database.
//! - A cluster worker (`crate::cluster::worker`): jobs from the NATS queue, results into the
//!   cluster's object store and records.
//!
//! The loop is the same for both: take a job, run it through the processor (in `serve`, a
//! [`crate::model_process::ModelProcess`], so nothing a study does to the model's process
//! takes the node down), hand the outcome to the sink. A crash of the model process is
//! tried again in a fresh one, up to `[model] max_crashes` times, then the job fails with the
//! crash as its reason; a failure (an `Err` or a panic) fails the job with its reason.

pub mod local;

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::config::SharedConfig;
use crate::job::{
    panic_message, ProcessError, ProcessedStudy, ProcessorFactory, StudyJob, StudyProcessor,
};

/// A job taken from a source, with what its transport needs to finish it.
pub struct Taken<T> {
    pub job: StudyJob,
    /// The transport's handle on the job (a database job id, a queue message).
    pub ticket: T,
    /// The job's span: the study and the job's identity in its transport.
    pub span: tracing::Span,
    /// When the work on it began (the time logged with its outcome).
    pub started: Instant,
}

/// Where jobs come from.
pub trait JobSource {
    type Ticket;
    /// The next job; blocks until there is one. `None`: the worker stops.
    fn next(&mut self) -> Option<Taken<Self::Ticket>>;
}

/// Where a job's outcome goes.
pub trait ResultSink {
    type Ticket;
    /// What the log says when a job's results are in the sink.
    const PROCESSED: &'static str;
    /// Makes the outcome durable (or published) and releases the job.
    fn finish(
        &mut self,
        taken: Taken<Self::Ticket>,
        outcome: Result<ProcessedStudy, ProcessError>,
    ) -> Finished;
}

/// What became of a job.
#[derive(Debug)]
pub enum Finished {
    /// Its results are kept: this many outputs.
    Processed(usize),
    /// The study failed, with the processor's reason or the sink's for unusable results.
    Failed(ProcessError),
    /// Neither could be recorded: the transport gives the job out again (the sink said why).
    Returned,
}

/// Builds the processor on a new thread named `name` and, once it is loaded, asks
/// `transport` for the job source and the result sink and serves jobs until the source
/// ends. Returns once the processor is built (or failed to build).
pub fn spawn<S, K>(
    name: &str,
    config: SharedConfig,
    factory: ProcessorFactory,
    transport: impl FnOnce() -> Option<(S, K)> + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, ProcessError>
where
    S: JobSource + 'static,
    K: ResultSink<Ticket = S::Ticket> + 'static,
{
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let cfg = config.get();
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let t0 = Instant::now();
            let built = std::panic::catch_unwind(AssertUnwindSafe(|| factory(&config)))
                .unwrap_or_else(|_| Err(ProcessError::Load("panic while loading".into())));
            match built {
                Ok(p) => {
                    info!(device = %cfg.model.device, ms = t0.elapsed().as_millis() as u64, "model loaded");
                    let _ = ready_tx.send(Ok(()));
                    if let Some((source, sink)) = transport() {
                        run(&config, p, source, sink);
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| ProcessError::Load(format!("cannot start the {name} thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ProcessError::Load(
            "worker thread died while loading".into(),
        )),
    }
}

/// The worker loop.
fn run<S, K>(
    config: &SharedConfig,
    mut processor: Box<dyn StudyProcessor>,
    mut source: S,
    mut sink: K,
) where
    S: JobSource,
    K: ResultSink<Ticket = S::Ticket>,
{
    while let Some(taken) = source.next() {
        let span = taken.span.clone();
        let _g = span.enter();
        let job = &taken.job;
        info!(
            instances = job.instances.len(),
            attempt = job.attempt,
            forced = job.forced_complete,
            predecessors = job.predecessors.len(),
            "processing study"
        );
        let max_crashes = config.get().model.max_crashes;
        let outcome = run_job(processor.as_mut(), job, max_crashes);
        let started = taken.started;
        let finished = sink.finish(taken, outcome);
        let ms = started.elapsed().as_millis() as u64;
        match finished {
            Finished::Processed(n) => {
                info!(ms, outputs = n, "{}", K::PROCESSED);
                crate::metrics::get().study("processed");
            }
            Finished::Failed(e) => {
                error!(ms, error = %e, "study failed");
                crate::metrics::get().study("failed");
            }
            Finished::Returned => {}
        }
    }
}

/// Runs one job, trying again after a crash of the processor's process until `max_crashes`
/// crashes, when the job fails with the last crash as its reason.
pub fn run_job(
    processor: &mut dyn StudyProcessor,
    job: &StudyJob,
    max_crashes: u32,
) -> Result<ProcessedStudy, ProcessError> {
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

/// Retry `f` with backoff (1 s doubling to 30 s) until it succeeds; for writes that fail
/// only while the disk is full or the database is busy.
pub fn retry_storage<T, E: std::fmt::Display>(
    what: &str,
    mut f: impl FnMut() -> Result<T, E>,
) -> T {
    let mut delay = Duration::from_secs(1);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) => {
                warn!(error = %e, retry_in_s = delay.as_secs(), "cannot {what} (disk full?): will retry");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}
