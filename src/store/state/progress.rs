//! Whether each stage of the pipeline makes progress, from the bookkeeping and the model
//! process's last sign of life: what `/readyz`, the systemd watchdog, the status page and
//! the `stalled{stage}` metric report. A thread that is alive but makes no progress (a
//! wedged model process, a sender that no longer sends, an assembler that no longer
//! queues) is what this catches; each rule leaves room for the deadline that should have
//! ended the wait first, so a stall means that deadline did not work.

use rusqlite::params;

use super::db::{State, StateError};

/// What the rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Facts {
    /// Studies receiving whose quiet period (or force deadline) ended this long ago, the
    /// most overdue one (ms; 0 when none).
    pub assembly_overdue_ms: i64,
    /// Jobs waiting for the worker (queued or handed over, not running).
    pub jobs_waiting: i64,
    /// Since a job last started or finished (ms; `i64::MAX` when none ever did).
    pub since_job_progress_ms: i64,
    /// The model process is being waited on, silent this long (ms; 0 when not waited on).
    pub model_silent_ms: i64,
    /// Deliveries due this long ago and not attempted since, the most overdue (ms).
    pub delivery_overdue_ms: i64,
}

/// The limits the rules derive from the configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// `[model] job_timeout_s`: the longest a job may take.
    pub job_s: f64,
    /// How long the model process may be silent before it counts as stalled.
    pub silent_s: f64,
    /// `[outbox]` connect + transfer timeouts: the longest one delivery round may take.
    pub delivery_s: f64,
}

impl Limits {
    pub fn of(cfg: &crate::config::Config) -> Limits {
        Limits {
            job_s: cfg.model.job_timeout_s,
            // The child says it is alive every HEARTBEAT_EVERY_S; two missed and a half.
            silent_s: 2.5 * crate::config::HEARTBEAT_EVERY_S,
            delivery_s: cfg.outbox.connect_timeout_s + cfg.outbox.transfer_timeout_s,
        }
    }
}

/// Slack on top of each deadline before a stage counts as stalled.
const MARGIN_S: f64 = 60.0;

/// A stage that makes no progress, and what shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Stall {
    pub stage: &'static str,
    pub detail: String,
}

/// The stalled stages.
pub fn stalls(f: &Facts, l: &Limits) -> Vec<Stall> {
    let s = |ms: i64| ms as f64 / 1000.0;
    let mut out = Vec::new();
    if s(f.assembly_overdue_ms) > MARGIN_S {
        out.push(Stall {
            stage: "assembly",
            detail: format!(
                "a study stable for {:.0} s is not queued",
                s(f.assembly_overdue_ms)
            ),
        });
    }
    if f.model_silent_ms as f64 > l.silent_s * 1000.0 {
        out.push(Stall {
            stage: "model",
            detail: format!(
                "the model process has been silent for {:.1} s (it is killed after [model] heartbeat_timeout_s)",
                s(f.model_silent_ms)
            ),
        });
    } else if f.jobs_waiting > 0 && s(f.since_job_progress_ms) > l.job_s + MARGIN_S {
        out.push(Stall {
            stage: "model",
            detail: format!(
                "{} job(s) waiting and none started or finished for {:.0} s",
                f.jobs_waiting,
                s(f.since_job_progress_ms)
            ),
        });
    }
    if s(f.delivery_overdue_ms) > l.delivery_s + MARGIN_S {
        out.push(Stall {
            stage: "delivery",
            detail: format!(
                "a delivery due {:.0} s ago was not attempted",
                s(f.delivery_overdue_ms)
            ),
        });
    }
    out
}

impl State {
    /// [`Facts`] at `now_ms`, the model process's from the process-wide register.
    pub fn progress_facts(
        &self,
        now_ms: i64,
        cfg: &crate::config::Config,
    ) -> Result<Facts, StateError> {
        let c = self.c();
        let (quiet, force) = (
            (cfg.assembly.quiet_period_s * 1000.0) as i64,
            (cfg.assembly.force_complete_s * 1000.0) as i64,
        );
        let assembly_due: Option<i64> = c.query_row(
            "SELECT MIN(MIN(last_received_ms + ?1, opened_ms + ?2)) FROM studies WHERE state = 'receiving'",
            params![quiet, force],
            |r| r.get(0),
        )?;
        let jobs_waiting: i64 = c.query_row(
            "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'dispatched')",
            [],
            |r| r.get(0),
        )?;
        let last_progress: Option<i64> = c.query_row(
            "SELECT MAX(MAX(COALESCE(started_ms, 0), COALESCE(finished_ms, 0), created_ms)) FROM jobs",
            [],
            |r| r.get(0),
        )?;
        let delivery_due: Option<i64> = c.query_row(
            "SELECT MIN(next_attempt_ms) FROM outbox WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )?;
        let m = crate::metrics::get();
        let waited_on = m.model_waited_on.load(std::sync::atomic::Ordering::Relaxed);
        let heard = m.model_heard_ms.load(std::sync::atomic::Ordering::Relaxed);
        // In a cluster the cluster thread decides studies, and a delivery waits for this
        // node's claim, which another node may hold for good: neither is a local stall.
        let single = cfg.cluster.is_none();
        Ok(Facts {
            assembly_overdue_ms: assembly_due
                .filter(|_| single)
                .map_or(0, |d| (now_ms - d).max(0)),
            jobs_waiting,
            since_job_progress_ms: last_progress.map_or(i64::MAX, |t| (now_ms - t).max(0)),
            model_silent_ms: if waited_on {
                (now_ms - heard).max(0)
            } else {
                0
            },
            delivery_overdue_ms: delivery_due
                .filter(|_| single)
                .map_or(0, |d| (now_ms - d).max(0)),
        })
    }

    /// The stalled stages now.
    pub fn stalls(&self, cfg: &crate::config::Config) -> Result<Vec<Stall>, StateError> {
        let f = self.progress_facts(super::db::now_ms(), cfg)?;
        Ok(stalls(&f, &Limits::of(cfg)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        job_s: 600.0,
        silent_s: 2.5,
        delivery_s: 310.0,
    };

    #[test]
    fn a_quiet_node_and_a_busy_one_are_not_stalled() {
        assert!(stalls(&Facts::default(), &L).is_empty());
        let busy = Facts {
            assembly_overdue_ms: 59_000,
            jobs_waiting: 40,
            since_job_progress_ms: 650_000,
            model_silent_ms: 2_000,
            delivery_overdue_ms: 369_000,
        };
        assert!(stalls(&busy, &L).is_empty());
        // Nothing waiting: no job for days is not a stall.
        let idle = Facts {
            since_job_progress_ms: i64::MAX,
            ..Facts::default()
        };
        assert!(stalls(&idle, &L).is_empty());
    }

    #[test]
    fn each_stage_past_its_deadline_and_margin_is_named() {
        let f = Facts {
            assembly_overdue_ms: 61_000,
            jobs_waiting: 2,
            since_job_progress_ms: 661_000,
            model_silent_ms: 0,
            delivery_overdue_ms: 371_000,
        };
        let got: Vec<&str> = stalls(&f, &L).iter().map(|s| s.stage).collect();
        assert_eq!(got, vec!["assembly", "model", "delivery"]);
        let silent = Facts {
            model_silent_ms: 2_600,
            ..Facts::default()
        };
        assert_eq!(
            stalls(&silent, &L),
            vec![Stall {
                stage: "model",
                detail: "the model process has been silent for 2.6 s (it is killed after [model] heartbeat_timeout_s)".into()
            }]
        );
    }
}
