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
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::protocol::{self, FromWorker, ToWorker};
use super::WORKER_FD;
use crate::config::{Config, SharedConfig};
use crate::job::{ProcessError, ProcessedStudy, ProcessorFactory, StudyJob, StudyProcessor};
use crate::process::marker::Marker;

/// The processor factory of `serve`: the processor runs in a model process. It is given
/// the node's configuration over its socket; `config_path` only names the node's file on
/// its command line (for `ps`).
pub fn factory(config_path: &Path) -> ProcessorFactory {
    let config_path = config_path.to_owned();
    Box::new(move |shared| {
        let cfg = shared.get();
        let limits = Limits {
            data_mb: cfg.model.worker_memory_mb,
            heartbeat: Duration::from_secs_f64(cfg.model.heartbeat_timeout_s),
            job_ceiling: Duration::from_secs_f64(cfg.model.job_timeout_s),
        };
        let marker = Marker::in_state_dir(&cfg.node.state_dir);
        Ok(Box::new(ModelProcess::start(
            config_path,
            shared.clone(),
            limits,
            marker,
        )?))
    })
}

/// Fresh workers a job is sent to again when the one before died in background preparation
/// of another study (each leaves that series alone, so this is a bound, not a retry loop).
const BACKGROUND_RESTARTS: u32 = 3;

/// Resource limits of the model process.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// RLIMIT_DATA in MB.
    pub data_mb: Option<u64>,
    /// Silence after which the process is taken for stopped or wedged, and killed.
    pub heartbeat: Duration,
    /// The most one job may take ([`job_deadline`]).
    pub job_ceiling: Duration,
}

/// A job's deadline: twenty times what this machine has needed per instance at worst so
/// far, and at least two minutes; the ceiling while nothing has been measured; never more
/// than the ceiling.
pub fn job_deadline(instances: usize, per_instance_s: Option<f64>, ceiling: Duration) -> Duration {
    match per_instance_s {
        Some(s) if s.is_finite() => {
            Duration::from_secs_f64((s * instances.max(1) as f64 * 20.0).clamp(120.0, 1e9))
                .min(ceiling)
        }
        _ => ceiling,
    }
}

/// Why an answer to a job never came.
#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the worker process gave no sign of life for {:.0} s (stopped or hung) and was killed", .0.as_secs_f64())]
    Silent(Duration),
    #[error("the worker process did not finish the job within its deadline of {:.0} s and was killed", .0.as_secs_f64())]
    Deadline(Duration),
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// The next message that is not a heartbeat, waiting at most `heartbeat` for any message
/// and in all until `until`.
fn receive_until(
    sock: &mut UnixStream,
    heartbeat: Duration,
    until: Instant,
) -> Result<(FromWorker, Vec<Vec<u8>>), Lost> {
    let m = crate::metrics::get();
    m.model_heard_ms
        .store(crate::store::state::now_ms(), Ordering::Relaxed);
    m.model_waited_on.store(true, Ordering::Relaxed);
    let r = receive_heard(sock, heartbeat, until);
    m.model_waited_on.store(false, Ordering::Relaxed);
    r
}

/// [`receive_until`]'s loop, noting each message heard for the pipeline's progress.
fn receive_heard(
    sock: &mut UnixStream,
    heartbeat: Duration,
    until: Instant,
) -> Result<(FromWorker, Vec<Vec<u8>>), Lost> {
    loop {
        let now = Instant::now();
        let Some(left) = until.checked_duration_since(now).filter(|d| !d.is_zero()) else {
            return Err(Lost::Deadline(Duration::ZERO));
        };
        sock.set_read_timeout(Some(left.min(heartbeat)))?;
        let got = protocol::receive::<FromWorker>(sock);
        if got.is_ok() {
            crate::metrics::get()
                .model_heard_ms
                .store(crate::store::state::now_ms(), Ordering::Relaxed);
        }
        match got {
            Ok((FromWorker::Alive, _)) => continue,
            Ok(m) => return Ok(m),
            Err(e) if timed_out(&e) && Instant::now() >= until => {
                return Err(Lost::Deadline(Duration::ZERO))
            }
            Err(e) if timed_out(&e) => return Err(Lost::Silent(heartbeat)),
            Err(e) => return Err(Lost::Io(e)),
        }
    }
}

pub struct ModelProcess {
    config_path: PathBuf,
    /// The configuration in force, sent to every process and with every job.
    config: SharedConfig,
    limits: Limits,
    marker: Marker,
    running: Option<Running>,
    /// The job sent to the child now, so a crash can be told from a protocol error.
    next_job_id: i64,
    /// The most seconds per instance a job has taken here (for [`job_deadline`]).
    per_instance_s: Option<f64>,
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
        config: SharedConfig,
        limits: Limits,
        marker: Marker,
    ) -> Result<Self, ProcessError> {
        let running = spawn(&config_path, &config.get(), limits)
            .map_err(|e| ProcessError::Load(e.to_string()))?;
        Ok(ModelProcess {
            config_path,
            config,
            limits,
            marker,
            running: Some(running),
            next_job_id: 0,
            per_instance_s: None,
        })
    }

    fn exchange(
        &mut self,
        r: &mut Running,
        job: &StudyJob,
    ) -> Result<Result<ProcessedStudy, ProcessError>, Lost> {
        let job_id = self.next_job_id;
        let deadline = job_deadline(
            job.instances.len(),
            self.per_instance_s,
            self.limits.job_ceiling,
        );
        let t0 = Instant::now();
        // A job naming thousands of instances outgrows the socket's buffer: a stopped
        // process that never reads it must not hold the worker in this write.
        r.sock.set_write_timeout(Some(self.limits.heartbeat))?;
        let job_msg = ToWorker::Job {
            job_id,
            job: job.clone(),
            config: Box::new(self.config.get().as_ref().clone()),
        };
        protocol::send(&mut r.sock, &job_msg, &[]).map_err(|e| {
            if timed_out(&e) {
                Lost::Silent(self.limits.heartbeat)
            } else {
                Lost::Io(e)
            }
        })?;
        let (msg, blobs) = receive_until(&mut r.sock, self.limits.heartbeat, t0 + deadline)
            .map_err(|e| match e {
                Lost::Deadline(_) => Lost::Deadline(deadline),
                other => other,
            })?;
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
                let per_instance = seconds / job.instances.len().max(1) as f64;
                self.per_instance_s = Some(self.per_instance_s.unwrap_or(0.0).max(per_instance));
                Ok(protocol::processed(outputs, blobs, predictions_json, run)
                    .map_err(|e| ProcessError::Failed(format!("worker results: {e}"))))
            }
            FromWorker::Failed { job_id: id, reason } if id == job_id => {
                Ok(Err(ProcessError::Failed(reason)))
            }
            other => Err(Lost::Io(std::io::Error::other(format!(
                "unexpected message from the worker: {other:?}"
            )))),
        }
    }
}

impl StudyProcessor for ModelProcess {
    fn process(&mut self, job: &StudyJob) -> Result<ProcessedStudy, ProcessError> {
        let mut background_crashes = 0;
        loop {
            let mut r = match self.running.take() {
                Some(r) => r,
                None => spawn(&self.config_path, &self.config.get(), self.limits)
                    .map_err(|e| ProcessError::Crashed(e.to_string()))?,
            };
            self.next_job_id += 1;
            let io = match self.exchange(&mut r, job) {
                Ok(result) => {
                    self.running = Some(r);
                    return result;
                }
                Err(io) => io,
            };
            let status = reap(&mut r.child);
            if matches!(io, Lost::Silent(_) | Lost::Deadline(_)) {
                warn!(reason = %io, %status, "worker process stalled on this study");
                return Err(ProcessError::Crashed(io.to_string()));
            }
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
    #[error("worker process gave no sign of life for {:.0} s while loading the model: killed", .0.as_secs_f64())]
    Silent(Duration),
}

/// Starts `prima-node worker` and waits for its `Ready`.
fn spawn(config_path: &Path, config: &Config, limits: Limits) -> Result<Running, SpawnError> {
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
    let start = ToWorker::Start {
        config: Box::new(config.clone()),
    };
    if let Err(e) = protocol::send(&mut ours, &start, &[]) {
        return Err(SpawnError::DiedLoading(format!(
            "{e} ({})",
            reap(&mut child)
        )));
    }
    // Loading has no deadline of its own (a full-size model on a slow disk), only the
    // heartbeat.
    let loading = receive_until(
        &mut ours,
        limits.heartbeat,
        t0 + Duration::from_secs(86_400),
    );
    if let Err(Lost::Silent(d)) = &loading {
        let _ = reap(&mut child);
        return Err(SpawnError::Silent(*d));
    }
    match loading {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_follows_the_measured_speed_within_the_ceiling() {
        let ceiling = Duration::from_secs(3600);
        assert_eq!(job_deadline(500, None, ceiling), ceiling);
        // 0.1 s per instance: 20 × 50 s.
        assert_eq!(
            job_deadline(500, Some(0.1), ceiling),
            Duration::from_secs(1000)
        );
        // Small jobs still get two minutes.
        assert_eq!(
            job_deadline(3, Some(0.1), ceiling),
            Duration::from_secs(120)
        );
        assert_eq!(job_deadline(100_000, Some(1.0), ceiling), ceiling);
        assert_eq!(job_deadline(10, Some(f64::NAN), ceiling), ceiling);
    }

    #[test]
    fn a_silent_peer_is_lost_and_a_chatty_one_meets_its_deadline() {
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        let beat = Duration::from_millis(300);
        // Nothing at all: silent after one heartbeat period.
        let t0 = Instant::now();
        let r = receive_until(&mut ours, beat, t0 + Duration::from_secs(10));
        assert!(matches!(r, Err(Lost::Silent(_))), "{r:?}");
        assert!(t0.elapsed() < Duration::from_secs(2));
        // Heartbeats but no answer: the deadline, not the heartbeat, ends the wait.
        let beating = std::thread::spawn(move || {
            for _ in 0..20 {
                if protocol::send(&mut theirs, &FromWorker::Alive, &[]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = protocol::send(&mut theirs, &FromWorker::Ready { model: "m".into() }, &[]);
        });
        let t0 = Instant::now();
        let r = receive_until(&mut ours, beat, t0 + Duration::from_millis(800));
        assert!(matches!(r, Err(Lost::Deadline(_))), "{r:?}");
        // Heartbeats are skipped on the way to the answer.
        let r = receive_until(&mut ours, beat, Instant::now() + Duration::from_secs(10));
        assert!(matches!(r, Ok((FromWorker::Ready { .. }, _))), "{r:?}");
        beating.join().unwrap();
    }
}
