//! What the node tells systemd and hears from it: readiness, the watchdog, the status
//! line, and the signals that start the drain.

use std::path::Path;
use std::time::{Duration, Instant};

use tracing::{error, info};

use super::AppError;
use crate::store::durable::create_durable_dir;
use crate::store::state::{Counts, OutboxState, StudyState};

/// The state directory, made durable and readable by the node's user only (it holds
/// patient data).
pub fn prepare_state_dir(state_dir: &Path) -> Result<(), AppError> {
    use std::os::unix::fs::PermissionsExt;
    create_durable_dir(state_dir).map_err(|source| AppError::Io {
        what: format!("cannot create state directory {}", state_dir.display()),
        source,
    })?;
    let _ = std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700));
    Ok(())
}

pub fn notify_ready() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
}

pub fn notify_stopping() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}

pub fn notify_status(line: &str) {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(line)]);
}

/// systemd's watchdog, when the unit has one: pet at half its timeout.
pub struct Watchdog {
    every: Duration,
    last: Option<Instant>,
}

impl Watchdog {
    /// The unit's watchdog (`WatchdogSec`), if it is on.
    pub fn from_systemd() -> Option<Watchdog> {
        let mut usec = 0u64;
        sd_notify::watchdog_enabled(false, &mut usec).then(|| Watchdog {
            every: Duration::from_micros(usec / 2),
            last: None,
        })
    }

    /// How often it wants to be petted.
    pub fn every(&self) -> Duration {
        self.every
    }

    pub fn pet(&mut self) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        self.last = Some(Instant::now());
    }

    /// Pet it if half its timeout has passed since the last time.
    pub fn pet_if_due(&mut self) {
        if self.last.is_none_or(|t| t.elapsed() >= self.every) {
            self.pet();
        }
    }
}

/// The line `systemctl status` shows.
pub fn status_line(c: &Counts) -> String {
    format!(
        "studies receiving {}, queued {}, processing {}, done {}, failed {}; outbox pending {}, failed {}",
        c.studies_in(StudyState::Receiving),
        c.studies_in(StudyState::Queued),
        c.studies_in(StudyState::Processing),
        c.studies_in(StudyState::Done),
        c.studies_in(StudyState::Failed),
        c.outbox_in(OutboxState::Pending),
        c.outbox_in(OutboxState::Failed),
    )
}

/// Waits for SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot install the SIGTERM handler");
            return std::future::pending().await;
        }
    };
    let mut int = signal(SignalKind::interrupt()).ok();
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = async { match int.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending::<()>().await } } => info!("SIGINT received"),
    }
}
