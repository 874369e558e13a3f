//! The model process's side: build the processor (load the model), say `Ready`, then
//! answer jobs until the node closes the socket.

use std::io;
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use tracing::{info, info_span};

use super::protocol::{self, FromWorker, ToWorker};
use crate::config::Config;
use crate::job::{panic_message, ProcessError, ProcessorFactory};

/// Runs jobs from `sock` with the processor `factory` builds. Returns when the node is gone.
pub fn serve(mut sock: UnixStream, factory: ProcessorFactory, cfg: &Config) -> io::Result<()> {
    let t0 = Instant::now();
    let built = std::panic::catch_unwind(AssertUnwindSafe(|| factory(cfg)))
        .unwrap_or_else(|p| Err(ProcessError::Load(panic_message(p))));
    let mut processor = match built {
        Ok(p) => p,
        Err(e) => {
            let reason = e.to_string();
            return protocol::send(&mut sock, &FromWorker::LoadFailed { reason }, &[]);
        }
    };
    info!(device = %cfg.model.device, ms = t0.elapsed().as_millis() as u64, "model loaded");
    let model = cfg.model.dir.display().to_string();
    protocol::send(&mut sock, &FromWorker::Ready { model }, &[])?;
    loop {
        let (ToWorker::Job { job_id, job }, _) = match protocol::receive(&mut sock) {
            Ok(m) => m,
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
                protocol::send(&mut sock, &msg, &blobs)?;
            }
            Err(e) => {
                let reason = match e {
                    ProcessError::Failed(m) | ProcessError::Load(m) | ProcessError::Crashed(m) => m,
                };
                protocol::send(&mut sock, &FromWorker::Failed { job_id, reason }, &[])?;
            }
        }
    }
}
