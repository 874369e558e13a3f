//! The open-file budget, checked at start: the DICOM listener's slots and its connections
//! not yet associated, the status page's connections and a reserve for the node's own files
//! must fit under `RLIMIT_NOFILE`, or a flood ends in "Too many open files" for everyone
//! (accept fails on every listener at once). The soft limit is raised towards the hard one
//! when it is too low, as servers conventionally do; below the hard one the node refuses to
//! start and says which settings to change.

use super::AppError;
use crate::config::Config;
use crate::net::admission::Pending;

/// Descriptors the node may need at most, by what holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Associations' sockets and the spool file each writes (with `[tls]`, the loopback
    /// pair that relays each association to dicom-ul too).
    pub associations: u64,
    /// Connections accepted and not yet associated.
    pub pending: u64,
    /// The status page's connections (with those closed to make room, still winding down).
    pub http: u64,
    /// The state database, logs, the model process, senders, NATS and the runtime.
    pub reserve: u64,
}

/// What the node keeps for its own files beyond the listeners, plus four per destination
/// (a sender's socket, the loopback pair relaying it to dicom-ul, the file it reads).
const RESERVE: u64 = 128;

impl Budget {
    pub fn of(cfg: &Config) -> Budget {
        let slots = cfg.node.max_associations as u64;
        Budget {
            associations: if cfg.tls.is_some() { 4 } else { 2 } * slots,
            pending: Pending::most(cfg.node.max_associations) as u64,
            http: cfg
                .http
                .as_ref()
                .map_or(0, |h| super::listeners::http_limits(h).descriptors() as u64),
            reserve: RESERVE + 4 * cfg.destinations.len() as u64,
        }
    }

    pub fn total(&self) -> u64 {
        self.associations + self.pending + self.http + self.reserve
    }
}

/// What to do with the limits (`soft`, `hard`) for a budget of `need`: `Ok(None)` fits,
/// `Ok(Some(n))` fits once the soft limit is raised to `n`, `Err(())` cannot fit.
pub fn plan(need: u64, soft: u64, hard: u64) -> Result<Option<u64>, ()> {
    if soft >= need {
        Ok(None)
    } else if hard >= need {
        // As far as the hard limit allows, within reason (an unlimited hard limit).
        Ok(Some(hard.min(need.max(65_536))))
    } else {
        Err(())
    }
}

/// Checks the budget against this process's limit, raising the soft limit if needed.
pub fn ensure(cfg: &Config) -> Result<(), AppError> {
    let budget = Budget::of(cfg);
    let need = budget.total();
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(AppError::Io {
            what: "cannot read the open-file limit".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    let (soft, hard): (u64, u64) = (lim.rlim_cur, lim.rlim_max);
    match plan(need, soft, hard) {
        Ok(None) => Ok(()),
        Ok(Some(raised)) => {
            lim.rlim_cur = raised as libc::rlim_t;
            // SAFETY: setrlimit reads the struct it is given.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
                return Err(AppError::Io {
                    what: format!("cannot raise the open-file limit from {soft} to {raised}"),
                    source: std::io::Error::last_os_error(),
                });
            }
            tracing::info!(from = soft, to = raised, need, "open-file limit raised");
            Ok(())
        }
        Err(()) => Err(AppError::Descriptors {
            limit: hard,
            need,
            budget,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_low_soft_limit_is_raised_and_a_low_hard_one_refused() {
        assert_eq!(plan(600, 1024, 1024), Ok(None));
        assert_eq!(plan(600, 256, 1024), Ok(Some(1024)));
        assert_eq!(plan(600, 256, u64::MAX), Ok(Some(65_536)));
        assert_eq!(plan(100_000, 256, u64::MAX), Ok(Some(100_000)));
        assert_eq!(plan(2000, 1024, 1024), Err(()));
    }
}
