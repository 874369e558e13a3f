//! Speculative preparation: the work between "study stable" and the model, done while
//! the study is still arriving.
//!
//! Preparing a study (reading headers, decoding, resampling, orienting, tokenising,
//! selecting tokens) used to start only when the quiet period ended, so it added directly
//! to the time between the last instance and the result. Here one background thread at low
//! priority prepares each series of a study as soon as that series has been idle for a
//! while (a quarter of the quiet period, at most 2 s), and keeps the result in a small
//! bounded cache. When the job runs, the worker computes the same key for every series and
//! takes a cached result only on an exact match; everything else is prepared as before.
//!
//! The key ([`series_key`]) covers every instance of the series: SOP Instance UID, the data
//! set's content hash recorded at reception, the spool path and the file's identity (device,
//! inode, size, modification and change times). The spool never rewrites a file in place
//! (each version is a new file renamed over the old), so an instance added, replaced or
//! removed changes the key, and the identity is checked before and after the background
//! read so the cached result is what reading those files at job time would give. On top of
//! that a cached series is used only when the candidate the job's own header scan builds
//! (slices, order, name) equals the one it was prepared from.
//!
//! Background work never changes an output: it is either used whole or dropped. Errors
//! and panics drop it (logged at debug). New instances for a series stop its background
//! work between stages; a job starting for the study stops it too.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use crate::config::{Config, SharedConfig};
use crate::imaging::series::{
    group_by_series_uid, read_slice_headers, SeriesCandidate, SeriesSkip, SliceMeta, StudyScan,
};
use crate::pipeline::{prepare_all_with, prepare_series_budgeted, PreparedSeries};
use crate::store::state::{now_ms, study_state, State, StateError, StoredInstance, StudyRow};
use crate::study::assembler::current_input;
use crate::worker::StudyJob;

/// Identity of one series' input files.
pub type SeriesKey = [u8; 32];

/// Prepared token arrays kept at most (a 256×256×300 series is ~80 MB): the cache holds
/// what the next job needs, not a second copy of a large study.
const CACHE_BYTES: usize = 512 << 20;
const CACHE_ENTRIES: usize = 64;
/// Nice value of the background thread (Linux nice is per thread): it should take the CPU
/// that reception and the model leave idle, not compete with them.
const NICE: i32 = 10;

/// Key of one series' input: the sorted (SOP Instance UID, data set content hash, path, file
/// identity) of its instances. `None` if a file cannot be stat'ed.
pub fn series_key<'a>(
    series_uid: &str,
    instances: impl IntoIterator<Item = (&'a str, &'a str, &'a Path)>,
) -> Option<SeriesKey> {
    use std::os::unix::fs::MetadataExt;
    let mut v: Vec<(&str, &str, &Path)> = instances.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0).then_with(|| a.2.cmp(b.2)));
    let mut h = Sha256::new();
    h.update(series_uid.as_bytes());
    h.update([0u8]);
    for (sop, sha, path) in v {
        let m = std::fs::metadata(path).ok()?;
        for part in [sop.as_bytes(), sha.as_bytes(), path.as_os_str().as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        for x in [
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime() as u64,
            m.mtime_nsec() as u64,
            m.ctime() as u64,
            m.ctime_nsec() as u64,
        ] {
            h.update(x.to_le_bytes());
        }
    }
    Some(h.finalize().into())
}

/// One series prepared in the background.
pub struct Prepared {
    pub study: String,
    /// The series (by the state database's Series Instance UID) the files belong to.
    pub series_uid: String,
    pub key: SeriesKey,
    /// The header read of each file, in SOP Instance UID order.
    headers: Vec<(PathBuf, Result<Vec<SliceMeta>, String>)>,
    /// The candidates the headers grouped into (normally one) and their results.
    series: Vec<(SeriesCandidate, Option<Result<PreparedSeries, String>>)>,
    /// Wall seconds the background preparation took.
    pub seconds: f64,
    bytes: usize,
}

impl Prepared {
    /// The result prepared from a candidate equal to `c`, taken out.
    fn take_result(&mut self, c: &SeriesCandidate) -> Option<Result<PreparedSeries, String>> {
        self.series
            .iter_mut()
            .find(|(k, r)| r.is_some() && k == c)
            .and_then(|(_, r)| r.take())
    }
}

/// Approximate heap bytes of a prepared series (the padded f32 volume dominates).
fn prepared_bytes(p: &PreparedSeries) -> usize {
    let t = &p.tokenized;
    let vol: usize = t.padded_shape.iter().product();
    vol * 4 + t.coords.len() * 32 + p.slices.len() * 512
}

#[derive(Default)]
struct Inner {
    entries: Vec<Prepared>,
    bytes: usize,
    /// The study being prepared in the background now, and the flag that stops it.
    busy: Option<(String, Arc<AtomicBool>)>,
}

/// The results of background preparation, waiting for their jobs.
#[derive(Default)]
pub struct PrepareCache {
    inner: Mutex<Inner>,
}

impl PrepareCache {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// For a job starting on `study`: stops background work on the study and hands over
    /// its prepared series whose (series, key) is in `keys`; the study's other entries are
    /// dropped (their files changed since).
    pub fn take(&self, study: &str, keys: &[(String, SeriesKey)]) -> Vec<Prepared> {
        let mut g = self.lock();
        if let Some((s, flag)) = &g.busy {
            if s == study {
                flag.store(true, Ordering::SeqCst);
            }
        }
        let (mine, rest): (Vec<Prepared>, Vec<Prepared>) = std::mem::take(&mut g.entries)
            .into_iter()
            .partition(|e| e.study == study);
        g.bytes = rest.iter().map(|e| e.bytes).sum();
        g.entries = rest;
        mine.into_iter()
            .filter(|e| keys.iter().any(|(s, k)| *s == e.series_uid && *k == e.key))
            .collect()
    }

    /// Keep `p`, replacing an earlier result for its series; false when it does not fit.
    fn insert(&self, p: Prepared) -> bool {
        let mut g = self.lock();
        g.entries
            .retain(|e| !(e.study == p.study && e.series_uid == p.series_uid));
        g.bytes = g.entries.iter().map(|e| e.bytes).sum();
        if g.bytes + p.bytes > CACHE_BYTES || g.entries.len() >= CACHE_ENTRIES {
            return false;
        }
        g.bytes += p.bytes;
        g.entries.push(p);
        true
    }

    fn remove(&self, study: &str, series_uid: Option<&str>) {
        let mut g = self.lock();
        g.entries
            .retain(|e| !(e.study == study && series_uid.is_none_or(|s| s == e.series_uid)));
        g.bytes = g.entries.iter().map(|e| e.bytes).sum();
    }

    fn has_study(&self, study: &str) -> bool {
        self.lock().entries.iter().any(|e| e.study == study)
    }

    fn studies(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .lock()
            .entries
            .iter()
            .map(|e| e.study.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Whether a result of about `bytes` would still fit.
    fn has_room(&self, bytes: usize) -> bool {
        let g = self.lock();
        g.bytes.saturating_add(bytes) <= CACHE_BYTES && g.entries.len() < CACHE_ENTRIES
    }

    pub fn clear(&self) {
        let mut g = self.lock();
        g.entries.clear();
        g.bytes = 0;
    }

    /// Series currently cached (for tests and logs).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn set_busy(&self, study: Option<(String, Arc<AtomicBool>)>) {
        self.lock().busy = study;
    }
}

/// The scan and prepared series of one job, and where they came from.
pub struct JobPrepared {
    pub scan: StudyScan,
    pub prepared: Vec<PreparedSeries>,
    pub skipped: Vec<SeriesSkip>,
    /// Seconds spent on keys and headers at job time.
    pub scan_s: f64,
    /// Seconds spent preparing at job time.
    pub prepare_s: f64,
    /// Series taken from the background results.
    pub cached_series: usize,
    /// Background seconds behind the series taken.
    pub speculative_s: f64,
}

/// The job-time half: headers and prepared series of `job`, from `cache` where a series'
/// key and candidate match, read and prepared here otherwise. The result is the same as
/// `group_by_series_uid` over the job's headers followed by `prepare_all`.
pub fn scan_and_prepare(cache: Option<&PrepareCache>, job: &StudyJob) -> JobPrepared {
    let t0 = Instant::now();
    let mut hits = match cache {
        // Nothing prepared for the study: no keys to compute (a stat per file), but
        // background work on it is stopped all the same.
        Some(c) if !c.has_study(&job.study_instance_uid) => c.take(&job.study_instance_uid, &[]),
        Some(c) => {
            let mut groups: BTreeMap<&str, Vec<(&str, &str, &Path)>> = BTreeMap::new();
            for i in &job.instances {
                groups
                    .entry(i.series_instance_uid.as_str())
                    .or_default()
                    .push((
                        i.sop_instance_uid.as_str(),
                        i.content_hash.as_str(),
                        i.path.as_path(),
                    ));
            }
            let keys: Vec<(String, SeriesKey)> = groups
                .into_iter()
                .filter_map(|(uid, files)| series_key(uid, files).map(|k| (uid.to_string(), k)))
                .collect();
            c.take(&job.study_instance_uid, &keys)
        }
        None => Vec::new(),
    };
    let mut headers = Vec::new();
    {
        let cached: HashMap<&Path, &Result<Vec<SliceMeta>, String>> = hits
            .iter()
            .flat_map(|p| p.headers.iter().map(|(path, r)| (path.as_path(), r)))
            .collect();
        for inst in &job.instances {
            let r = match cached.get(inst.path.as_path()) {
                Some(r) => (*r).clone(),
                None => read_slice_headers(&inst.path),
            };
            match r {
                Ok(h) => headers.extend(h),
                Err(e) => {
                    warn!(sop = %inst.sop_instance_uid, "instance not readable as an image: {e}")
                }
            }
        }
    }
    let scan = group_by_series_uid(headers);
    let scan_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut used = vec![false; hits.len()];
    let mut cached_series = 0;
    let (prepared, skipped) = prepare_all_with(&scan, |c| {
        for (i, h) in hits.iter_mut().enumerate() {
            if let Some(r) = h.take_result(c) {
                used[i] = true;
                cached_series += 1;
                return Some(r);
            }
        }
        None
    });
    let speculative_s = hits
        .iter()
        .zip(&used)
        .filter(|(_, u)| **u)
        .map(|(h, _)| h.seconds)
        .sum();
    JobPrepared {
        scan,
        prepared,
        skipped,
        scan_s,
        prepare_s: t1.elapsed().as_secs_f64(),
        cached_series,
        speculative_s,
    }
}

/// Background preparation of one series: headers, then each candidate, stopping (`None`)
/// as soon as `cancelled` says so. `Err` when the files changed underneath or cannot be
/// stat'ed: nothing is kept.
pub fn prepare_series_files(
    study: &str,
    series_uid: &str,
    instances: &[StoredInstance],
    cancelled: &dyn Fn() -> bool,
) -> Result<Option<Prepared>, String> {
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
    let key = series_key(series_uid, files()).ok_or("a file cannot be stat'ed")?;
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
        return Err("files changed while being prepared".into());
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

/// What the background thread needs.
pub struct SpeculatorCtx {
    pub state: Arc<State>,
    pub config: SharedConfig,
    pub cache: Arc<PrepareCache>,
}

/// Start the background thread; it returns when `stop` is set.
pub fn spawn(
    ctx: SpeculatorCtx,
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
    crate::study::assembler::input_set_hash(instances)
}

fn run(ctx: SpeculatorCtx, stop: Arc<AtomicBool>) {
    lower_priority();
    let mut tracks: HashMap<String, StudyTrack> = HashMap::new();
    while !stop.load(Ordering::SeqCst) {
        let cfg = ctx.config.get();
        if !cfg.assembly.speculative_prepare {
            ctx.cache.clear();
            tracks.clear();
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        let (_, poll) = timing(&cfg);
        let work = match plan(&ctx, &cfg, &mut tracks, now_ms()) {
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
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            speculate(&ctx, &cfg, &w, &flag, &stop)
        }));
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
    ctx: &SpeculatorCtx,
    cfg: &Config,
    tracks: &mut HashMap<String, StudyTrack>,
    now: i64,
) -> Result<Option<Work>, StateError> {
    let (idle_ms, _) = timing(cfg);
    let mut studies = ctx.state.studies_in_state(study_state::RECEIVING)?;
    studies.extend(ctx.state.studies_in_state(study_state::QUEUED)?);
    tracks.retain(|uid, _| studies.iter().any(|s| s.study_uid == *uid));
    // A study's entries live until its job takes them. The worker marks the study
    // processing just before it does, so dropping entries of processing studies here lost
    // them now and then (seen in a 3,000-instance run: none of 6 used).
    let cached = ctx.cache.studies();
    if !cached.is_empty() {
        let processing = ctx.state.studies_in_state(study_state::PROCESSING)?;
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
    ctx: &SpeculatorCtx,
    cfg: &Config,
    study: &str,
    last_received_ms: i64,
    t: &mut StudyTrack,
) -> Result<(), StateError> {
    let (inst, _) = current_input(&ctx.state, study, cfg)?;
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
    ctx: &SpeculatorCtx,
    cfg: &Config,
    w: &Work,
    flag: &AtomicBool,
    stop: &AtomicBool,
) -> Result<Option<Prepared>, String> {
    // The series is still what was planned: nothing arrived for the study, or what
    // arrived went to other series.
    let seen = std::cell::Cell::new(w.last_received_ms);
    let unchanged = || -> Result<bool, StateError> {
        let Some(row) = ctx.state.study(&w.study)? else {
            return Ok(false);
        };
        if row.state != study_state::RECEIVING && row.state != study_state::QUEUED {
            return Ok(false);
        }
        if row.last_received_ms == seen.get() {
            return Ok(true);
        }
        let (inst, _) = current_input(&ctx.state, &w.study, cfg)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::JobInstance;

    use crate::imaging::resample::test_support::fixture_dir;

    fn sha_file(p: &Path) -> String {
        hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
    }

    /// STUDY_A copied into a spool-like folder: (study UID, instances).
    fn copy_study(root: &Path, to: &Path) -> (String, Vec<StoredInstance>) {
        let mut out = Vec::new();
        let mut study = String::new();
        for e in walkdir::WalkDir::new(root.join("studies/STUDY_A"))
            .sort_by_file_name()
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
        {
            let h = read_slice_headers(e.path()).unwrap().remove(0);
            study = h.study_instance_uid.clone();
            let path = to.join(format!("{}.dcm", out.len()));
            std::fs::copy(e.path(), &path).unwrap();
            out.push(StoredInstance {
                sop_uid: h.sop_instance_uid,
                series_uid: h.series_instance_uid,
                sop_class_uid: h.sop_class_uid,
                modality: h.modality.unwrap_or_default(),
                content_hash: sha_file(&path),
                path,
            });
        }
        out.sort_by(|a, b| a.sop_uid.cmp(&b.sop_uid));
        (study, out)
    }

    fn job(study: &str, inst: &[StoredInstance]) -> StudyJob {
        StudyJob {
            study_instance_uid: study.into(),
            instances: inst
                .iter()
                .map(|i| JobInstance {
                    path: i.path.clone(),
                    sop_class_uid: i.sop_class_uid.clone(),
                    sop_instance_uid: i.sop_uid.clone(),
                    series_instance_uid: i.series_uid.clone(),
                    modality: i.modality.clone(),
                    content_hash: i.content_hash.clone(),
                })
                .collect(),
            input_set_hash: [0; 32],
            predecessors: vec![],
            forced_complete: false,
            attempt: 1,
        }
    }

    /// Every series of the study prepared "in the background" into a cache.
    fn speculate_all(study: &str, inst: &[StoredInstance]) -> PrepareCache {
        let cache = PrepareCache::new();
        let mut groups: BTreeMap<String, Vec<StoredInstance>> = BTreeMap::new();
        for i in inst {
            groups
                .entry(i.series_uid.clone())
                .or_default()
                .push(i.clone());
        }
        for (uid, v) in groups {
            let p = prepare_series_files(study, &uid, &v, &|| false)
                .unwrap()
                .unwrap();
            assert!(cache.insert(p));
        }
        cache
    }

    fn assert_same(a: &JobPrepared, b: &JobPrepared) {
        assert_eq!(a.scan.series, b.scan.series);
        assert_eq!(a.scan.study_description, b.scan.study_description);
        assert_eq!(a.scan.study_instance_uid, b.scan.study_instance_uid);
        assert_eq!(a.skipped, b.skipped);
        assert_eq!(a.prepared.len(), b.prepared.len());
        for (x, y) in a.prepared.iter().zip(&b.prepared) {
            assert_eq!(x.series_instance_uid, y.series_instance_uid);
            assert_eq!(x.slices, y.slices);
            assert_eq!(x.oriented_shape, y.oriented_shape);
            assert_eq!(x.orientation_code, y.orientation_code);
            assert_eq!(x.selection.ids, y.selection.ids);
            assert_eq!(x.selected_coords(), y.selected_coords());
            let (tx, ty) = (x.selected_tokens(), y.selected_tokens());
            assert_eq!(tx.len(), ty.len());
            assert!(
                tx.iter().zip(&ty).all(|(p, q)| p.to_bits() == q.to_bits()),
                "tokens of {} differ",
                x.name
            );
            assert_eq!(
                x.tokenized
                    .otsu
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>(),
                y.tokenized
                    .otsu
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn cached_preparation_equals_fresh_and_gives_the_same_predictions() {
        let Some(root) = fixture_dir() else { return };
        let d = tempfile::tempdir().unwrap();
        let (study, inst) = copy_study(&root, d.path());
        let j = job(&study, &inst);
        let fresh = scan_and_prepare(None, &j);
        assert_eq!(fresh.cached_series, 0);
        let cache = speculate_all(&study, &inst);
        let n = cache.len();
        assert!(n >= 2);
        let cached = scan_and_prepare(Some(&cache), &j);
        assert_eq!(
            cached.cached_series,
            fresh.prepared.len() + fresh.skipped.len()
        );
        assert!(cached.speculative_s > 0.0);
        assert!(cache.is_empty(), "the job took the study's entries");
        assert_same(&fresh, &cached);

        let model_dir = d.path().join("model");
        crate::model::write_demo_model(&model_dir, crate::model::DemoSize::Small, 3).unwrap();
        let model =
            crate::model::PrimaModel::load(&model_dir, &crate::model::ModelOptions::default())
                .unwrap();
        let desc = fresh.scan.study_description.clone().unwrap_or_default();
        let a = crate::infer::run_model(&model, &fresh.prepared, &desc, |_| {}).unwrap();
        let b = crate::infer::run_model(&model, &cached.prepared, &desc, |_| {}).unwrap();
        assert_eq!(
            crate::infer::predictions_json(&a.output),
            crate::infer::predictions_json(&b.output)
        );
        let bits = |v: &[(String, f32)]| {
            v.iter()
                .map(|(k, x)| (k.clone(), x.to_bits()))
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&a.output.diagnosis), bits(&b.output.diagnosis));
        assert_eq!(bits(&a.output.referral), bits(&b.output.referral));
        assert_eq!(
            a.output
                .clip_emb
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>(),
            b.output
                .clip_emb
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn added_replaced_or_removed_instances_invalidate_the_speculation() {
        let Some(root) = fixture_dir() else { return };
        let d = tempfile::tempdir().unwrap();
        let (study, inst) = copy_study(&root, d.path());
        let series_of = |i: &StoredInstance| i.series_uid.clone();
        let first_series = series_of(&inst[0]);
        let others = inst
            .iter()
            .filter(|i| i.series_uid != first_series)
            .map(|i| i.series_uid.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .len();

        // Removed: the job lacks one instance of the first series.
        let cache = speculate_all(&study, &inst);
        let fewer: Vec<StoredInstance> = inst[1..].to_vec();
        let got = scan_and_prepare(Some(&cache), &job(&study, &fewer));
        assert_eq!(
            got.cached_series, others,
            "only the untouched series come from the cache"
        );
        assert_same(&scan_and_prepare(None, &job(&study, &fewer)), &got);

        // Added: the job has an instance the speculation did not see.
        let cache = {
            let c = PrepareCache::new();
            let mut groups: BTreeMap<String, Vec<StoredInstance>> = BTreeMap::new();
            for i in &fewer {
                groups
                    .entry(i.series_uid.clone())
                    .or_default()
                    .push(i.clone());
            }
            for (uid, v) in groups {
                assert!(c.insert(
                    prepare_series_files(&study, &uid, &v, &|| false)
                        .unwrap()
                        .unwrap()
                ));
            }
            c
        };
        let got = scan_and_prepare(Some(&cache), &job(&study, &inst));
        assert_eq!(got.cached_series, others);
        assert_same(&scan_and_prepare(None, &job(&study, &inst)), &got);

        // Replaced, same content hash recorded (a re-sent file): the file identity changes.
        let cache = speculate_all(&study, &inst);
        let p = &inst[0].path;
        let tmp = p.with_extension("tmp");
        std::fs::copy(p, &tmp).unwrap();
        std::fs::rename(&tmp, p).unwrap();
        let got = scan_and_prepare(Some(&cache), &job(&study, &inst));
        assert_eq!(got.cached_series, others);

        // Replaced with other content (as the spool does: a new file renamed into place).
        let cache = speculate_all(&study, &inst);
        let mut changed = inst.clone();
        let donor = inst
            .iter()
            .find(|i| i.series_uid == first_series && i.path != changed[0].path)
            .unwrap();
        std::fs::copy(&donor.path, &tmp).unwrap();
        std::fs::rename(&tmp, &changed[0].path).unwrap();
        changed[0].content_hash = sha_file(&changed[0].path);
        let got = scan_and_prepare(Some(&cache), &job(&study, &changed));
        assert_eq!(got.cached_series, others);
        assert_same(&scan_and_prepare(None, &job(&study, &changed)), &got);
    }

    #[test]
    fn cancelled_preparation_keeps_nothing() {
        let Some(root) = fixture_dir() else { return };
        let d = tempfile::tempdir().unwrap();
        let (study, inst) = copy_study(&root, d.path());
        let uid = inst[0].series_uid.clone();
        let v: Vec<StoredInstance> = inst
            .iter()
            .filter(|i| i.series_uid == uid)
            .cloned()
            .collect();
        assert!(prepare_series_files(&study, &uid, &v, &|| true)
            .unwrap()
            .is_none());
        // A job on the study stops the background work on it.
        let cache = PrepareCache::new();
        let flag = Arc::new(AtomicBool::new(false));
        cache.set_busy(Some((study.clone(), flag.clone())));
        cache.take("other", &[]);
        assert!(!flag.load(Ordering::SeqCst));
        cache.take(&study, &[]);
        assert!(flag.load(Ordering::SeqCst));
    }
}
