//! The assembler thread of an ingest node: on the single node it runs the assembler
//! ([`crate::study::assembler`]) whenever a study may have become due; in a cluster the
//! cluster thread decides instead and this thread only keeps systemd informed. Either way
//! it feeds the watchdog and the status line, so a wedged node is restarted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tracing::{error, info, warn};

use super::lifecycle::{notify_status, status_line, Watchdog};
use crate::config::SharedConfig;
use crate::job::WorkItem;
use crate::store::state::{now_ms, State};
use crate::study::assembler;

/// Longest the assembler sleeps without being woken: for the watchdog, the status line, and
/// changes nothing announces (a configuration reload).
const MAX_NAP: Duration = Duration::from_secs(1);
/// How often the status line is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// What wakes the thread.
pub struct Wakes {
    /// An instance was recorded.
    pub arrivals: Receiver<()>,
    /// The worker took or finished a job: a queued job may be dispatched.
    pub room: Receiver<()>,
}

/// Runs until `stop`. `jobs`: the worker's channel on the single node; `None` in a cluster.
pub fn run(
    state: &State,
    shared: &SharedConfig,
    jobs: Option<&Sender<WorkItem>>,
    wakes: &Wakes,
    stop: &AtomicBool,
) {
    let mut watchdog = Watchdog::from_systemd();
    let mut last_status: Option<Instant> = None;
    let mut last_error: Option<String> = None;
    let mut progress = Progress::default();
    while !stop.load(Ordering::SeqCst) {
        let cfg = shared.get();
        progress.look(state, &cfg);
        // A stalled stage stops the petting: systemd restarts a node that no longer makes
        // progress, not only one whose threads are gone.
        if let Some(w) = watchdog.as_mut().filter(|_| progress.stalled.is_empty()) {
            w.pet_if_due();
        }
        let Some(jobs) = jobs else {
            let _ = wakes.room.recv_timeout(MAX_NAP);
            continue;
        };
        match assembler::tick(state, &cfg, jobs) {
            Ok(()) => last_error = None,
            Err(e) => {
                let m = e.to_string();
                if last_error.as_deref() != Some(m.as_str()) {
                    error!(error = %m, "assembler pass failed");
                }
                last_error = Some(m);
            }
        }
        if last_status.is_none_or(|t| t.elapsed() >= STATUS_EVERY) {
            if let Ok(c) = state.counts() {
                notify_status(&status_line(&c));
            }
            last_status = Some(Instant::now());
        }
        let now = now_ms();
        let nap = match assembler::next_due_ms(state, &cfg, now) {
            Ok(Some(due)) => {
                Duration::from_millis((due - now).clamp(2, MAX_NAP.as_millis() as i64) as u64)
            }
            _ => MAX_NAP,
        };
        let soonest = Duration::from_secs_f64(
            cfg.assembly
                .quiet_period_s
                .min(cfg.assembly.force_complete_s)
                .max(0.0),
        );
        wait_for_work(wakes, Instant::now() + nap, soonest);
    }
}

/// The pipeline's stalled stages, looked at every `STATUS_EVERY`: the `stalled{stage}`
/// metric, a warning when a stage stalls and a line when it moves again.
#[derive(Default)]
struct Progress {
    stalled: Vec<crate::store::state::Stall>,
    last: Option<Instant>,
}

impl Progress {
    fn look(&mut self, state: &State, cfg: &crate::config::Config) {
        if self.last.is_some_and(|t| t.elapsed() < STATUS_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let Ok(now) = state.stalls(cfg) else {
            return;
        };
        let m = crate::metrics::get();
        for stage in ["assembly", "model", "delivery"] {
            let s = now.iter().find(|s| s.stage == stage);
            let was = self.stalled.iter().any(|s| s.stage == stage);
            match s {
                Some(s) if !was => warn!(stage, detail = %s.detail, "pipeline stage stalled"),
                None if was => info!(stage, "pipeline stage moves again"),
                _ => {}
            }
            m.stalled
                .get_or_create(&crate::metrics::Stage {
                    stage: stage.to_string(),
                })
                .set(i64::from(s.is_some()));
        }
        self.stalled = now;
    }
}

/// Sleep until `deadline` (the next quiet-period end). An arrival never makes a study due
/// sooner than `soonest` from now (a new study's quiet period), so it only brings the
/// deadline forward to that; the worker taking or finishing a job ends the sleep (a queued
/// job can be dispatched).
fn wait_for_work(wakes: &Wakes, mut deadline: Instant, soonest: Duration) {
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return;
        };
        crossbeam_channel::select! {
            recv(wakes.arrivals) -> r => match r {
                Ok(()) => deadline = deadline.min(Instant::now() + soonest),
                Err(_) => return,
            },
            recv(wakes.room) -> _ => return,
            default(left) => return,
        }
    }
}

/// The sender half of each wake-up, for the parts that wake the thread.
pub struct Wakers {
    pub arrivals: Sender<()>,
    pub room: Sender<()>,
}

/// A fresh pair of wake-up channels (one pending wake-up each is enough).
pub fn wakes() -> (Wakers, Wakes) {
    let (arrivals_tx, arrivals) = crossbeam_channel::bounded(1);
    let (room_tx, room) = crossbeam_channel::bounded(1);
    (
        Wakers {
            arrivals: arrivals_tx,
            room: room_tx,
        },
        Wakes { arrivals, room },
    )
}
