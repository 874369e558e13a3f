//! The retention thread: applies `crate::store::retention` to the running node. Free
//! space is looked at every second (a `statvfs`), so a burst of arrivals meets eviction
//! well before `min_free_mb`; the studies are looked at when it is low, and for age every
//! twentieth of `keep_days` (1 s to 30 s: a study is evicted within 5% of its horizon);
//! records and audit rows are pruned on the same rule with their horizons (up to hourly).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, info_span, warn};

use crate::config::SharedConfig;
use crate::store::durable::free_mb;
use crate::store::retention::{self, plan, usage, window_ms};
use crate::store::spool::Spool;
use crate::store::state::{now_ms, EvictReason, State, StateError};

const POLL: Duration = Duration::from_secs(1);
/// While the disk stays low with nothing to evict, look again this often (not every poll).
const PRESSURED_PASS_EVERY: Duration = Duration::from_secs(5);

/// A twentieth of `horizon_ms`, within `lo..=hi`.
fn period(horizon_ms: i64, lo: Duration, hi: Duration) -> Duration {
    Duration::from_millis((horizon_ms / 20).max(0) as u64).clamp(lo, hi)
}
/// Studies whose records one prune pass removes (the rest wait for the next).
const PRUNE_BATCH: usize = 500;

pub struct RetentionCtx {
    pub state: Arc<State>,
    pub spool: Spool,
    pub state_dir: PathBuf,
    pub config: SharedConfig,
}

/// Runs until `stop`.
pub fn run(ctx: RetentionCtx, stop: Arc<AtomicBool>) {
    let mut last_pass: Option<Instant> = None;
    let mut last_prune: Option<Instant> = None;
    let mut pressured = false;
    while !stop.load(Ordering::SeqCst) {
        let cfg = ctx.config.get();
        let r = cfg.storage.retention();
        let free = free_mb(&ctx.state_dir).unwrap_or(u64::MAX);
        let low = free < r.evict_below_free_mb;
        let every = if low && !pressured {
            Duration::ZERO
        } else if low {
            PRESSURED_PASS_EVERY
        } else {
            period(r.keep_ms(), POLL, Duration::from_secs(30))
        };
        if last_pass.is_none_or(|t| t.elapsed() >= every) {
            last_pass = Some(Instant::now());
            match pass(&ctx, &cfg) {
                Ok(Some(why)) if !pressured => {
                    warn!(
                        free_mb = why.free_mb,
                        evict_below_free_mb = r.evict_below_free_mb,
                        min_free_mb = cfg.storage.min_free_mb,
                        pending_studies = why.usage.pending_studies,
                        pending_mb = why.usage.pending_bytes / (1024 * 1024),
                        "disk space low and nothing left to evict: every study held is unfinished, undelivered or still arriving (C-STORE is refused below min_free_mb)"
                    );
                    pressured = true;
                }
                Ok(None) if pressured => {
                    info!("disk space above evict_below_free_mb again");
                    pressured = false;
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "retention pass failed (retried)"),
            }
            crate::metrics::get()
                .storage_pressure
                .set(i64::from(pressured));
        }
        let prune_every = period(
            r.keep_records_ms().min(r.keep_audit_ms()),
            POLL,
            Duration::from_secs(3600),
        );
        // The first prune waits its period: a node starting after a long stop evicts first.
        match last_prune {
            None => last_prune = Some(Instant::now()),
            Some(t) if t.elapsed() >= prune_every => {
                prune(&ctx, &cfg);
                last_prune = Some(Instant::now());
            }
            Some(_) => {}
        }
        std::thread::sleep(POLL);
    }
}

/// Why the disk stays low after a pass.
struct Stuck {
    free_mb: u64,
    usage: retention::Usage,
}

/// One pass: evict what the plan says, then publish usage. `Some` when free space is still
/// below `evict_below_free_mb` and nothing more can be evicted.
fn pass(ctx: &RetentionCtx, cfg: &crate::config::Config) -> Result<Option<Stuck>, StateError> {
    let r = cfg.storage.retention();
    let window = window_ms(cfg);
    let free = free_mb(&ctx.state_dir)?;
    let holdings = ctx.state.holdings()?;
    for (study, reason) in plan(&holdings, now_ms(), free, &r, window) {
        // The plan counts recorded sizes; the file system has the last word.
        if reason == EvictReason::Pressure && free_mb(&ctx.state_dir)? >= r.evict_until_free_mb {
            break;
        }
        let _span = info_span!("evict", study = %study).entered();
        let Some(done) = retention::evict(&ctx.spool, &ctx.state, &study, reason)? else {
            info!("eviction skipped: the study is active again");
            continue;
        };
        let m = crate::metrics::get();
        m.evicted(reason.as_str(), done.bytes);
        info!(
            %reason,
            instances = done.instances,
            bytes = done.bytes,
            "study's received instances removed by the retention policy"
        );
    }
    let now = now_ms();
    let u = usage(&ctx.state.holdings()?, now, r.keep_ms(), window);
    crate::metrics::get().spool_usage(u.pending_bytes, u.done_bytes, u.evictable_bytes);
    let free = free_mb(&ctx.state_dir)?;
    Ok((free < r.evict_below_free_mb).then_some(Stuck {
        free_mb: free,
        usage: u,
    }))
}

fn prune(ctx: &RetentionCtx, cfg: &crate::config::Config) {
    let r = cfg.storage.retention();
    let now = now_ms();
    match retention::prune_records(
        &ctx.state,
        &ctx.state_dir,
        now,
        r.keep_records_ms(),
        PRUNE_BATCH,
    ) {
        Ok(0) => {}
        Ok(n) => info!(studies = n, "records past keep_records_days pruned"),
        Err(e) => warn!(error = %e, "pruning records failed (retried)"),
    }
    match ctx.state.fold_audit(now.saturating_sub(r.keep_audit_ms())) {
        Ok(0) => {}
        Ok(n) => info!(
            rows = n,
            "audit rows past keep_audit_days folded into daily counts"
        ),
        Err(e) => warn!(error = %e, "folding audit rows failed (retried)"),
    }
}
