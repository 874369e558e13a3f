//! Results of background preparation, waiting for their jobs, and the keys that say
//! whether one still matches its input.
//!
//! The key ([`series_key`]) covers every instance of the series: SOP Instance UID, the data
//! set's content hash recorded at reception, the spool path and the file's identity (device,
//! inode, size, modification and change times). The spool never rewrites a file in place
//! (each version is a new file renamed over the old), so an instance added, replaced or
//! removed changes the key, and the identity is checked before and after the background
//! read so the cached result is what reading those files at job time would give. On top of
//! that a cached series is used only when the candidate the job's own header scan builds
//! (slices, order, name) equals the one it was prepared from (`super::prepare`).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::series::PreparedSeries;
use crate::imaging::series::{SeriesCandidate, SkipReason, SliceHeaderError, SliceMeta};

/// Identity of one series' input files.
pub type SeriesKey = [u8; 32];

/// Prepared token arrays kept at most (a 256×256×300 series is ~80 MB): the cache holds
/// what the next job needs, not a second copy of a large study.
const CACHE_BYTES: usize = 512 << 20;
const CACHE_ENTRIES: usize = 64;

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
    pub(super) headers: Vec<(PathBuf, Result<Vec<SliceMeta>, SliceHeaderError>)>,
    /// The candidates the headers grouped into (normally one) and their results.
    pub(super) series: Vec<(SeriesCandidate, Option<Result<PreparedSeries, SkipReason>>)>,
    /// Wall seconds the background preparation took.
    pub seconds: f64,
    pub(super) bytes: usize,
}

impl Prepared {
    /// The result prepared from a candidate equal to `c`, taken out.
    pub(super) fn take_result(
        &mut self,
        c: &SeriesCandidate,
    ) -> Option<Result<PreparedSeries, SkipReason>> {
        self.series
            .iter_mut()
            .find(|(k, r)| r.is_some() && k == c)
            .and_then(|(_, r)| r.take())
    }
}

/// Approximate heap bytes of a prepared series (the padded f32 volume dominates).
pub(super) fn prepared_bytes(p: &PreparedSeries) -> usize {
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
    pub(super) fn insert(&self, p: Prepared) -> bool {
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

    pub(super) fn remove(&self, study: &str, series_uid: Option<&str>) {
        let mut g = self.lock();
        g.entries
            .retain(|e| !(e.study == study && series_uid.is_none_or(|s| s == e.series_uid)));
        g.bytes = g.entries.iter().map(|e| e.bytes).sum();
    }

    pub(super) fn has_study(&self, study: &str) -> bool {
        self.lock().entries.iter().any(|e| e.study == study)
    }

    pub(super) fn studies(&self) -> Vec<String> {
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
    pub(super) fn has_room(&self, bytes: usize) -> bool {
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

    pub(super) fn set_busy(&self, study: Option<(String, Arc<AtomicBool>)>) {
        self.lock().busy = study;
    }
}
