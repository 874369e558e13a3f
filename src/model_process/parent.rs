//! The node's side of the model process: [`ModelProcess`] is the [`StudyProcessor`] the
//! worker calls; it starts `prima-node worker` (this binary, re-executed), which loads the
//! model and runs each job ([`super::child`]), and talks to it over a Unix socket
//! ([`super::protocol`]). An abort, a stack overflow, the OOM killer or a libtorch crash
//! ends the child only: the node sees the socket close, reaps the child, reports
//! [`ProcessError::Crashed`] and starts a fresh one for the next try.
//!
//! The child dies with the node (`PR_SET_PDEATHSIG`), so a killed node never leaves a
//! model process behind holding the GPU.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Instant;

use tracing::{debug, info, warn};

use super::protocol::{self, FromWorker, ToWorker};
use super::WORKER_FD;
use crate::job::{ProcessError, ProcessedStudy, ProcessorFactory, StudyJob, StudyProcessor};
use crate::process::marker::Marker;

/// The processor factory of `serve`: the processor runs in a model process started with
/// `config_path`.
pub fn factory(config_path: &Path) -> ProcessorFactory {
    let config_path = config_path.to_owned();
    Box::new(move |cfg| {
        let limits = Limits {
            data_mb: cfg.model.worker_memory_mb,
        };
        let marker = Marker::in_state_dir(&cfg.node.state_dir);
        Ok(Box::new(ModelProcess::start(config_path, limits, marker)?))
    })
}

/// Fresh workers a job is sent to again when the one before died in background preparation
/// of another study (each leaves that series alone, so this is a bound, not a retry loop).
const BACKGROUND_RESTARTS: u32 = 3;

/// Resource limits of the model process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// RLIMIT_DATA in MB.
    pub data_mb: Option<u64>,
}

pub struct ModelProcess {
    config_path: PathBuf,
    limits: Limits,
    marker: Marker,
    running: Option<Running>,
    /// The job sent to the child now, so a crash can be told from a protocol error.
    next_job_id: i64,
}

struct Running {
    child: Child,
    sock: UnixStream,
}

impl ModelProcess {
    /// Starts the model process and waits until it has loaded the model, so that a model
    /// that cannot be loaded stops the node at start as it always did.
    pub fn start(
        config_path: PathBuf,
        limits: Limits,
        marker: Marker,
    ) -> Result<Self, ProcessError> {
        let running = spawn(&config_path, limits).map_err(|e| ProcessError::Load(e.to_string()))?;
        Ok(ModelProcess {
            config_path,
            limits,
            marker,
            running: Some(running),
            next_job_id: 0,
        })
    }

    fn exchange(
        r: &mut Running,
        job_id: i64,
        job: &StudyJob,
    ) -> std::io::Result<Result<ProcessedStudy, ProcessError>> {
        let t0 = Instant::now();
        protocol::send(
            &mut r.sock,
            &ToWorker::Job {
                job_id,
                job: job.clone(),
            },
            &[],
        )?;
        let (msg, blobs) = protocol::receive::<FromWorker>(&mut r.sock)?;
        match msg {
            FromWorker::Done {
                job_id: id,
                outputs,
                predictions_json,
                run,
                seconds,
            } if id == job_id => {
                let boundary_ms = ((t0.elapsed().as_secs_f64() - seconds) * 1000.0).max(0.0);
                debug!(boundary_ms, "job results received from the worker process");
                Ok(protocol::processed(outputs, blobs, predictions_json, run)
                    .map_err(|e| ProcessError::Failed(format!("worker results: {e}"))))
            }
            FromWorker::Failed { job_id: id, reason } if id == job_id => {
                Ok(Err(ProcessError::Failed(reason)))
            }
            other => Err(std::io::Error::other(format!(
                "unexpected message from the worker: {other:?}"
            ))),
        }
    }
}

impl StudyProcessor for ModelProcess {
    fn process(&mut self, job: &StudyJob) -> Result<ProcessedStudy, ProcessError> {
        let mut background_crashes = 0;
        loop {
            let mut r = match self.running.take() {
                Some(r) => r,
                None => spawn(&self.config_path, self.limits)
                    .map_err(|e| ProcessError::Crashed(e.to_string()))?,
            };
            self.next_job_id += 1;
            let io = match Self::exchange(&mut r, self.next_job_id, job) {
                Ok(result) => {
                    self.running = Some(r);
                    return result;
                }
                Err(io) => io,
            };
            let status = reap(&mut r.child);
            debug!(error = %io, "worker connection lost");
            match self.marker.read() {
                Some((study, series))
                    if study != job.study_instance_uid
                        && background_crashes < BACKGROUND_RESTARTS =>
                {
                    background_crashes += 1;
                    warn!(%status, other_study = %study, %series, "worker process died preparing another study in the background: job sent to a fresh one");
                }
                _ => return Err(ProcessError::Crashed(status)),
            }
        }
    }
}

/// Why a model process could not be started and made ready.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot find our own binary: {0}")]
    OwnBinary(std::io::Error),
    #[error("cannot create the worker socket: {0}")]
    Socket(std::io::Error),
    #[error("cannot share stderr with the worker: {0}")]
    Stderr(std::io::Error),
    #[error("cannot start the worker process: {0}")]
    Start(std::io::Error),
    /// The model process's own words: the model could not be loaded.
    #[error("{0}")]
    LoadFailed(String),
    #[error("worker process said {message} before Ready ({status})")]
    Unexpected { message: String, status: String },
    #[error("worker process died while loading the model: {0}")]
    DiedLoading(String),
}

/// Starts `prima-node worker` and waits for its `Ready`.
fn spawn(config_path: &Path, limits: Limits) -> Result<Running, SpawnError> {
    let exe = std::env::current_exe().map_err(SpawnError::OwnBinary)?;
    let (mut ours, theirs) = UnixStream::pair().map_err(SpawnError::Socket)?;
    let fd = theirs.as_raw_fd();
    let parent = std::process::id() as libc::pid_t;
    let data = limits.data_mb.map(|mb| libc::rlimit {
        rlim_cur: (mb << 20) as libc::rlim_t,
        rlim_max: (mb << 20) as libc::rlim_t,
    });
    // Stray prints of native libraries go to the log, never into the protocol.
    let stdout = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(SpawnError::Stderr)?;
    let mut cmd = Command::new(exe);
    cmd.arg("worker")
        .arg("--config")
        .arg(config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout));
    // SAFETY: only async-signal-safe calls between fork and exec (dup2, fcntl, prctl,
    // setrlimit, getppid, _exit), on descriptors this process owns.
    unsafe {
        cmd.pre_exec(move || {
            if fd == WORKER_FD {
                // dup2 onto itself keeps close-on-exec: clear it instead.
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, WORKER_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(l) = &data {
                if libc::setrlimit(libc::RLIMIT_DATA, l) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // The node died between fork and prctl: nobody will ever talk to us.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let t0 = Instant::now();
    let mut child = cmd.spawn().map_err(SpawnError::Start)?;
    drop(theirs);
    match protocol::receive::<FromWorker>(&mut ours) {
        Ok((FromWorker::Ready { model }, _)) => {
            info!(
                pid = child.id(),
                ms = t0.elapsed().as_millis() as u64,
                %model,
                "worker process ready"
            );
            Ok(Running { child, sock: ours })
        }
        Ok((FromWorker::LoadFailed { reason }, _)) => {
            let _ = child.wait();
            Err(SpawnError::LoadFailed(reason))
        }
        Ok((other, _)) => Err(SpawnError::Unexpected {
            message: format!("{other:?}"),
            status: reap(&mut child),
        }),
        Err(_) => Err(SpawnError::DiedLoading(reap(&mut child))),
    }
}

/// Ends the child (if it lingers) and says how it ended.
fn reap(child: &mut Child) -> String {
    let status = match child.try_wait() {
        Ok(Some(s)) => Ok(s),
        _ => {
            let _ = child.kill();
            child.wait()
        }
    };
    match status {
        Ok(s) => describe(s),
        Err(e) => format!("cannot reap the worker process: {e}"),
    }
}

fn describe(s: ExitStatus) -> String {
    if let Some(sig) = s.signal() {
        let name = match sig {
            libc::SIGABRT => " (SIGABRT: abort, e.g. a failed allocation or a stack overflow)",
            libc::SIGSEGV => " (SIGSEGV)",
            libc::SIGBUS => " (SIGBUS)",
            libc::SIGILL => " (SIGILL)",
            libc::SIGFPE => " (SIGFPE)",
            libc::SIGKILL => " (SIGKILL: e.g. the OOM killer)",
            libc::SIGTERM => " (SIGTERM)",
            _ => "",
        };
        format!("killed by signal {sig}{name}")
    } else {
        format!("exited with {s}")
    }
}
