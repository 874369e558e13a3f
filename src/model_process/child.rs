//! The model process's side: build the processor (load the model), say `Ready`, then
//! answer jobs until the node closes the socket.

use std::io;
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, info_span};

use super::protocol::{self, FromWorker, ToWorker};
use crate::config::{Config, SharedConfig, HEARTBEAT_EVERY_S};
use crate::job::{panic_message, ProcessError, ProcessorFactory};

/// The configuration the node sends first ([`ToWorker::Start`]). `None`: the node is gone.
pub fn receive_config(sock: &mut UnixStream) -> io::Result<Option<Config>> {
    match protocol::receive::<ToWorker>(sock) {
        Ok((ToWorker::Start { config }, _)) => Ok(Some(*config)),
        Ok((ToWorker::Job { .. }, _)) => Err(io::Error::other(
            "the node sent a job before the configuration",
        )),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// Runs jobs from `sock` with the processor `factory` builds, keeping `shared` to the
/// configuration each job comes with. Returns when the node is gone.
pub fn serve(
    mut sock: UnixStream,
    factory: ProcessorFactory,
    shared: &SharedConfig,
) -> io::Result<()> {
    let cfg = shared.get();
    let writer = Arc::new(Mutex::new(sock.try_clone()?));
    heartbeat(writer.clone())?;
    let send = |msg: &FromWorker, blobs: &[Vec<u8>]| -> io::Result<()> {
        let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
        protocol::send(&mut *w, msg, blobs)
    };
    let t0 = Instant::now();
    let built = std::panic::catch_unwind(AssertUnwindSafe(|| factory(shared)))
        .unwrap_or_else(|p| Err(ProcessError::Load(panic_message(p))));
    let mut processor = match built {
        Ok(p) => p,
        Err(e) => {
            let reason = e.to_string();
            return send(&FromWorker::LoadFailed { reason }, &[]);
        }
    };
    info!(device = %cfg.model.device, ms = t0.elapsed().as_millis() as u64, "model loaded");
    let model = cfg.model.dir.display().to_string();
    send(&FromWorker::Ready { model }, &[])?;
    loop {
        let (job_id, job) = match protocol::receive(&mut sock) {
            Ok((
                ToWorker::Job {
                    job_id,
                    job,
                    config,
                },
                _,
            )) => {
                // Only the live sections can differ from what this process started with.
                shared.apply(*config);
                (job_id, job)
            }
            Ok((ToWorker::Start { .. }, _)) => {
                return Err(io::Error::other("the node sent a second configuration"))
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let span = info_span!("study", study = %job.study_instance_uid, job = job_id);
        let _g = span.enter();
        let t0 = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| processor.process(&job)))
            .unwrap_or_else(|p| {
                Err(ProcessError::Failed(format!(
                    "processor panicked: {}",
                    panic_message(p)
                )))
            });
        match result {
            Ok(p) => {
                let (msg, blobs) = FromWorker::done(job_id, p, t0.elapsed().as_secs_f64());
                send(&msg, &blobs)?;
            }
            Err(e) => {
                let reason = match e {
                    ProcessError::Failed(m) | ProcessError::Load(m) | ProcessError::Crashed(m) => m,
                };
                send(&FromWorker::Failed { job_id, reason }, &[])?;
            }
        }
    }
}

/// Says `Alive` every [`HEARTBEAT_EVERY_S`] on its own thread, whatever the job does, until
/// the node is gone. Messages never interleave: every write holds the writer's lock.
fn heartbeat(writer: Arc<Mutex<UnixStream>>) -> io::Result<()> {
    let every = Duration::from_secs_f64(HEARTBEAT_EVERY_S);
    std::thread::Builder::new()
        .name("prima-heartbeat".into())
        .spawn(move || loop {
            let sent = {
                let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                protocol::send(&mut *w, &FromWorker::Alive, &[])
            };
            if sent.is_err() {
                return;
            }
            std::thread::sleep(every);
        })
        .map(drop)
}
