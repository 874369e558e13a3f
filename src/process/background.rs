//! Background preparation: the work between "study stable" and the model, done while the
//! study is still arriving.
//!
//! Preparing a study (reading headers, decoding, resampling, orienting, tokenising,
//! selecting tokens) would otherwise start only when the quiet period ends, adding directly
//! to the time between the last instance and the result. Here one background thread at low
//! priority prepares each series of a study as soon as that series has been idle for a
//! while (a quarter of the quiet period, at most 2 s), and keeps the result in a small
//! bounded cache ([`PrepareCache`]). When the job runs, the processor computes the same key
//! for every series and takes a cached result only on an exact match; everything else is
//! prepared as before.
//!
//! Background work never changes an output: it is either used whole or dropped. Errors
//! and panics drop it (logged at debug). New instances for a series stop its background
//! work between stages; a job starting for the study stops it too.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::cache::{prepared_bytes, series_key, PrepareCache, Prepared};
use super::marker::Marker;
use super::series::prepare_series_budgeted;
use crate::config::{Config, SharedConfig};
use crate::imaging::series::{group_by_series_uid, read_slice_headers};
use crate::store::state::{now_ms, State, StateError, StoredInstance, StudyRow, StudyState};

/// Nice value of the background thread (Linux nice is per thread): it should take the CPU
/// that reception and the model leave idle, not compete with them.
const NICE: i32 = 10;

/// What the background thread needs.
pub struct BackgroundCtx {
    pub state: Arc<State>,
    pub config: SharedConfig,
    pub cache: Arc<PrepareCache>,
    /// Names the series being prepared while it is ([`Marker`]), so that a crash it causes
    /// is known for what it is after the process is gone.
    pub marker: Option<Marker>,
}

/// Start the background thread; it returns when `stop` is set.
pub fn spawn(
    ctx: BackgroundCtx,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("prima-prepare".into())
        .spawn(move || run(ctx, stop))
}

/// How long a series must be idle before it is prepared, and how often to look.
fn timing(cfg: &Config) -> (i64, Duration) {
    let idle_ms = ((cfg.assembly.quiet_period_s * 1000.0 / 4.0) as i64).clamp(50, 2000);
    let poll = Duration::from_millis((idle_ms / 2).clamp(25, 250) as u64);
    (idle_ms, poll)
}

fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread, no pointers.
    let r = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, NICE)
    };
    if r != 0 {
        debug!(
            "cannot lower the background preparation's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// What the thread knows of a study being received.
struct StudyTrack {
    last_received_ms: i64,
    series: BTreeMap<String, SeriesTrack>,
}

struct SeriesTrack {
    /// Hash of the series' (SOP Instance UID, content hash) pairs: changes when it changes.
    db_key: [u8; 32],
    /// When it was last seen changing (the study's latest reception then).
    changed_ms: i64,
    instances: Vec<StoredInstance>,
    /// The `db_key` last prepared (or tried): not tried again.
    tried: Option<[u8; 32]>,
}

struct Work {
    study: String,
    series_uid: String,
    db_key: [u8; 32],
    last_received_ms: i64,
    instances: Vec<StoredInstance>,
}

fn db_key(instances: &[StoredInstance]) -> [u8; 32] {
    crate::study::policy::input_set_hash(instances)
}

fn run(ctx: BackgroundCtx, stop: Arc<AtomicBool>) {
    lower_priority();
    let mut tracks: HashMap<String, StudyTrack> = HashMap::new();
    // A series whose background preparation ended the previous worker process.
    let never = ctx.marker.as_ref().and_then(|m| {
        let s = m.read();
        m.clear();
        s
    });
    if let Some((study, series)) = &never {
        warn!(%study, %series, "background preparation of this series ended the previous worker process: left to its job");
    }
    while !stop.load(Ordering::SeqCst) {
        let cfg = ctx.config.get();
        if !cfg.assembly.speculative_prepare {
            ctx.cache.clear();
            tracks.clear();
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        let (_, poll) = timing(&cfg);
        let work = match plan(&ctx, &cfg, &mut tracks, now_ms(), never.as_ref()) {
            Ok(w) => w,
            Err(e) => {
                debug!(error = %e, "background preparation: cannot read the state");
                None
            }
        };
        let Some(w) = work else {
            std::thread::sleep(poll);
            continue;
        };
        if let Some(s) = tracks
            .get_mut(&w.study)
            .and_then(|t| t.series.get_mut(&w.series_uid))
        {
            s.tried = Some(w.db_key);
        }
        let flag = Arc::new(AtomicBool::new(false));
        ctx.cache.set_busy(Some((w.study.clone(), flag.clone())));
        if let Some(m) = &ctx.marker {
            m.set(&w.study, &w.series_uid);
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            speculate(&ctx, &cfg, &w, &flag, &stop)
        }));
        if let Some(m) = &ctx.marker {
            m.clear();
        }
        ctx.cache.set_busy(None);
        match outcome {
            Ok(Ok(Some(p))) => {
                let (n, s) = (p.series.len(), p.seconds);
                if ctx.cache.insert(p) {
                    debug!(study = %w.study, series = %w.series_uid, candidates = n, seconds = s, "series prepared in the background");
                } else {
                    debug!(study = %w.study, series = %w.series_uid, "background result dropped: cache full");
                }
            }
            Ok(Ok(None)) => {
                debug!(study = %w.study, series = %w.series_uid, "background preparation stopped")
            }
            Ok(Err(e)) => {
                debug!(study = %w.study, series = %w.series_uid, error = %e, "background preparation dropped")
            }
            Err(_) => {
                debug!(study = %w.study, series = %w.series_uid, "background preparation panicked: dropped")
            }
        }
    }
}

/// Refresh what is known of the studies being received or waiting for the worker, drop
/// stale cache entries, and pick the next series to prepare: idle long enough, not yet
/// tried with its current instances, in a study with enough series to qualify.
fn plan(
    ctx: &BackgroundCtx,
    cfg: &Config,
    tracks: &mut HashMap<String, StudyTrack>,
    now: i64,
    never: Option<&(String, String)>,
) -> Result<Option<Work>, StateError> {
    let (idle_ms, _) = timing(cfg);
    let mut studies = ctx.state.studies_in_state(StudyState::Receiving)?;
    studies.extend(ctx.state.studies_in_state(StudyState::Queued)?);
    tracks.retain(|uid, _| studies.iter().any(|s| s.study_uid == *uid));
    // A study's entries live until its job takes them. The worker marks the study
    // processing just before it does, so dropping entries of processing studies here lost
    // them now and then (seen in a 3,000-instance run: none of 6 used).
    let cached = ctx.cache.studies();
    if !cached.is_empty() {
        let processing = ctx.state.studies_in_state(StudyState::Processing)?;
        for uid in cached {
            let live = |s: &StudyRow| s.study_uid == uid;
            if !studies.iter().any(live) && !processing.iter().any(live) {
                ctx.cache.remove(&uid, None);
            }
        }
    }
    for s in &studies {
        let t = tracks
            .entry(s.study_uid.clone())
            .or_insert_with(|| StudyTrack {
                last_received_ms: i64::MIN,
                series: BTreeMap::new(),
            });
        if t.last_received_ms != s.last_received_ms {
            refresh(ctx, cfg, &s.study_uid, s.last_received_ms, t)?;
        }
        if t.series.len() < cfg.assembly.min_series {
            continue;
        }
        for (uid, st) in &t.series {
            // Whatever the source resolution, a prepared slice is 256×256 f32 tokens: a
            // series that would not fit is not prepared only to be dropped.
            let estimate = st.instances.len() * 256 * 256 * 4;
            if now - st.changed_ms >= idle_ms
                && st.tried != Some(st.db_key)
                && never.is_none_or(|(study, series)| *study != s.study_uid || series != uid)
                && ctx.cache.has_room(estimate)
            {
                return Ok(Some(Work {
                    study: s.study_uid.clone(),
                    series_uid: uid.clone(),
                    db_key: st.db_key,
                    last_received_ms: s.last_received_ms,
                    instances: st.instances.clone(),
                }));
            }
        }
    }
    Ok(None)
}

fn refresh(
    ctx: &BackgroundCtx,
    cfg: &Config,
    study: &str,
    last_received_ms: i64,
    t: &mut StudyTrack,
) -> Result<(), StateError> {
    let (inst, _) = crate::study::current_input(&ctx.state, study, cfg)?;
    let mut groups: BTreeMap<String, Vec<StoredInstance>> = BTreeMap::new();
    for i in inst {
        groups.entry(i.series_uid.clone()).or_default().push(i);
    }
    let mut series = BTreeMap::new();
    for (uid, instances) in groups {
        let key = db_key(&instances);
        let track = match t.series.remove(&uid) {
            Some(old) if old.db_key == key => old,
            _ => {
                ctx.cache.remove(study, Some(&uid));
                SeriesTrack {
                    db_key: key,
                    changed_ms: last_received_ms,
                    instances,
                    tried: None,
                }
            }
        };
        series.insert(uid, track);
    }
    for uid in t.series.keys() {
        ctx.cache.remove(study, Some(uid));
    }
    t.series = series;
    t.last_received_ms = last_received_ms;
    Ok(())
}

fn speculate(
    ctx: &BackgroundCtx,
    cfg: &Config,
    w: &Work,
    flag: &AtomicBool,
    stop: &AtomicBool,
) -> Result<Option<Prepared>, Unusable> {
    // The series is still what was planned: nothing arrived for the study, or what
    // arrived went to other series.
    let seen = std::cell::Cell::new(w.last_received_ms);
    let unchanged = || -> Result<bool, StateError> {
        let Some(row) = ctx.state.study(&w.study)? else {
            return Ok(false);
        };
        if row.state != StudyState::Receiving && row.state != StudyState::Queued {
            return Ok(false);
        }
        if row.last_received_ms == seen.get() {
            return Ok(true);
        }
        let (inst, _) = crate::study::current_input(&ctx.state, &w.study, cfg)?;
        let mine: Vec<StoredInstance> = inst
            .into_iter()
            .filter(|i| i.series_uid == w.series_uid)
            .collect();
        seen.set(row.last_received_ms);
        Ok(db_key(&mine) == w.db_key)
    };
    let cancelled = || {
        flag.load(Ordering::SeqCst) || stop.load(Ordering::SeqCst) || !unchanged().unwrap_or(false)
    };
    prepare_series_files(&w.study, &w.series_uid, &w.instances, &cancelled)
}

/// Why background work on a series is not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("a file cannot be stat'ed")]
    Unstatable,
    #[error("files changed while being prepared")]
    Changed,
}

/// Background preparation of one series: headers, then each candidate, stopping (`None`)
/// as soon as `cancelled` says so. `Err` when the files changed underneath or cannot be
/// stat'ed: nothing is kept.
pub fn prepare_series_files(
    study: &str,
    series_uid: &str,
    instances: &[StoredInstance],
    cancelled: &dyn Fn() -> bool,
) -> Result<Option<Prepared>, Unusable> {
    let t0 = Instant::now();
    let files = || {
        instances.iter().map(|i| {
            (
                i.sop_uid.as_str(),
                i.content_hash.as_str(),
                i.path.as_path(),
            )
        })
    };
    let key = series_key(series_uid, files()).ok_or(Unusable::Unstatable)?;
    let mut order: Vec<&StoredInstance> = instances.iter().collect();
    order.sort_by(|a, b| a.sop_uid.cmp(&b.sop_uid));
    let mut headers = Vec::with_capacity(order.len());
    for (n, i) in order.iter().enumerate() {
        if n % 16 == 0 && cancelled() {
            return Ok(None);
        }
        headers.push((i.path.clone(), read_slice_headers(&i.path)));
    }
    let scan = group_by_series_uid(
        headers
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .flatten()
            .cloned()
            .collect(),
    );
    let mut series = Vec::with_capacity(scan.series.len());
    let mut bytes = headers.len() * 512;
    for c in scan.series {
        let Some(r) = prepare_series_budgeted(&c, cancelled) else {
            return Ok(None);
        };
        if let Ok(p) = &r {
            bytes += prepared_bytes(p);
        }
        series.push((c, Some(r)));
    }
    if series_key(series_uid, files()) != Some(key) {
        return Err(Unusable::Changed);
    }
    if cancelled() {
        return Ok(None);
    }
    Ok(Some(Prepared {
        study: study.to_string(),
        series_uid: series_uid.to_string(),
        key,
        headers,
        series,
        seconds: t0.elapsed().as_secs_f64(),
        bytes,
    }))
}
