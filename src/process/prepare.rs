//! A study's prepared series: from a job's spooled instances (taking what background
//! preparation already did, `super::cache`) or from a folder (`prima-node infer`).
//! Series that cannot be used become skips; they never abort the study.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::warn;

use super::cache::{series_key, PrepareCache, Prepared, SeriesKey};
use super::series::{prepare_series_budgeted, PreparedSeries};
use crate::imaging::series::{
    self, group_by_series_uid, read_slice_headers, SeriesCandidate, SeriesSkip, SkipReason,
    SliceHeaderError, SliceMeta, StudyScan,
};
use crate::job::StudyJob;

/// Prepare every series of a scan; failures become skips (they never abort the study).
/// Series are independent, so they are prepared on up to `available_parallelism` threads
/// (each holds one series' volume at a time, within a memory budget); results keep the
/// scan's order.
pub fn prepare_all(scan: &series::StudyScan) -> (Vec<PreparedSeries>, Vec<SeriesSkip>) {
    prepare_all_with(scan, |_| None)
}

/// [`prepare_all`], taking a series' result from `cached` where it has one (prepared
/// earlier from the same candidate and files); only the others are prepared here.
pub fn prepare_all_with(
    scan: &series::StudyScan,
    mut cached: impl FnMut(&SeriesCandidate) -> Option<Result<PreparedSeries, SkipReason>>,
) -> (Vec<PreparedSeries>, Vec<SeriesSkip>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let n = scan.series.len();
    let mut results: Vec<Option<Result<PreparedSeries, SkipReason>>> =
        scan.series.iter().map(&mut cached).collect();
    let todo: Vec<usize> = (0..n).filter(|&i| results[i].is_none()).collect();
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .min(todo.len().max(1));
    let next = AtomicUsize::new(0);
    let fresh: Mutex<Vec<(usize, Result<PreparedSeries, SkipReason>)>> = Mutex::new(Vec::new());
    if !todo.is_empty() {
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = todo.get(k) else { break };
                    let r = prepare_series_budgeted(&scan.series[i], &|| false)
                        .unwrap_or(Err(SkipReason::NotPrepared));
                    fresh.lock().unwrap_or_else(|e| e.into_inner()).push((i, r));
                });
            }
        });
    }
    for (i, r) in fresh.into_inner().unwrap_or_else(|e| e.into_inner()) {
        results[i] = Some(r);
    }
    let mut ok = Vec::new();
    let mut skipped = scan.skipped.clone();
    for (c, r) in scan.series.iter().zip(results) {
        match r.unwrap_or(Err(SkipReason::NotPrepared)) {
            Ok(p) => ok.push(p),
            Err(reason) => skipped.push(SeriesSkip::new(
                c.key.clone(),
                Some(c.series_instance_uid.clone()),
                &reason,
            )),
        }
    }
    (ok, skipped)
}

/// The scan and prepared series of one study, and where they came from.
pub struct PreparedStudy {
    pub scan: StudyScan,
    pub prepared: Vec<PreparedSeries>,
    pub skipped: Vec<SeriesSkip>,
    /// Seconds spent on keys and headers (a folder: the scan).
    pub scan_s: f64,
    /// Seconds spent preparing series.
    pub prepare_s: f64,
    /// A job only (`None` for a folder): what background preparation contributed.
    pub background: Option<BackgroundUse>,
}

impl PreparedStudy {
    /// Series taken from background preparation.
    pub fn cached_series(&self) -> usize {
        self.background.map_or(0, |b| b.cached_series)
    }
}

/// Series of a job taken from background preparation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackgroundUse {
    pub cached_series: usize,
    /// Background seconds behind the series taken.
    pub speculative_s: f64,
}

/// A study folder (`prima-node infer`, `prima-node prepare`): every file scanned in
/// `order`, then every series prepared.
pub fn prepare_folder(
    dir: &Path,
    order: series::SliceOrder,
) -> Result<PreparedStudy, series::ImagingError> {
    let t0 = Instant::now();
    let scan = series::scan_study(dir, order)?;
    let scan_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let (prepared, skipped) = prepare_all(&scan);
    Ok(PreparedStudy {
        scan,
        prepared,
        skipped,
        scan_s,
        prepare_s: t1.elapsed().as_secs_f64(),
        background: None,
    })
}

/// The job-time half: headers and prepared series of `job`, from `cache` where a series'
/// key and candidate match, read and prepared here otherwise. The result is the same as
/// `group_by_series_uid` over the job's headers followed by `prepare_all`.
pub fn prepare_job(cache: Option<&PrepareCache>, job: &StudyJob) -> PreparedStudy {
    let t0 = Instant::now();
    let mut hits = match cache {
        Some(c) => background_results(c, job),
        None => Vec::new(),
    };
    let scan = scan_job(job, &mut hits);
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
    PreparedStudy {
        scan,
        prepared,
        skipped,
        scan_s,
        prepare_s: t1.elapsed().as_secs_f64(),
        background: Some(BackgroundUse {
            cached_series,
            speculative_s,
        }),
    }
}

/// What background preparation holds for `job`'s series, taken out of `cache` (which also
/// stops background work on the study).
fn background_results(cache: &PrepareCache, job: &StudyJob) -> Vec<Prepared> {
    if !cache.has_study(&job.study_instance_uid) {
        // Nothing prepared for the study: no keys to compute (a stat per file), but
        // background work on it is stopped all the same.
        return cache.take(&job.study_instance_uid, &[]);
    }
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
    cache.take(&job.study_instance_uid, &keys)
}

/// The job's instances grouped into series, each header taken from `hits` where the
/// background read it, read here otherwise.
fn scan_job(job: &StudyJob, hits: &mut [Prepared]) -> StudyScan {
    let mut headers = Vec::new();
    // Series with an instance whose header cannot be used: skipped whole (a series missing
    // a slice is not the series that was acquired), with the first reason.
    let mut unreadable: BTreeMap<&str, SkipReason> = BTreeMap::new();
    let mut cached: HashMap<PathBuf, Result<Vec<SliceMeta>, SliceHeaderError>> = hits
        .iter_mut()
        .flat_map(|p| std::mem::take(&mut p.headers))
        .collect();
    for inst in &job.instances {
        let r = cached
            .remove(inst.path.as_path())
            .unwrap_or_else(|| read_slice_headers(&inst.path));
        match r {
            Ok(h) => headers.extend(h),
            Err(e) => {
                warn!(sop = %inst.sop_instance_uid, "instance not readable as an image: {e}");
                unreadable
                    .entry(inst.series_instance_uid.as_str())
                    .or_insert(SkipReason::UnreadableInstance(e));
            }
        }
    }
    let mut scan = group_by_series_uid(headers);
    for (uid, reason) in unreadable {
        scan.series.retain(|c| c.series_instance_uid != uid);
        scan.skipped.push(SeriesSkip::new(
            uid.to_string(),
            Some(uid.to_string()),
            &reason,
        ));
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobInstance;
    use crate::process::background::prepare_series_files;
    use crate::store::state::StoredInstance;
    use sha2::{Digest, Sha256};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use crate::test_fixtures::reference_dir as fixture_dir;

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
            set_aside: Vec::new(),
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

    fn assert_same(a: &PreparedStudy, b: &PreparedStudy) {
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
        let fresh = prepare_job(None, &j);
        assert_eq!(fresh.cached_series(), 0);
        let cache = speculate_all(&study, &inst);
        let n = cache.len();
        assert!(n >= 2);
        let cached = prepare_job(Some(&cache), &j);
        // Volumes the split sets aside (the localizer images) are never prepared.
        assert_eq!(
            cached.cached_series(),
            fresh.prepared.len() + fresh.skipped.len() - fresh.scan.not_used.len()
        );
        assert!(cached.background.unwrap().speculative_s > 0.0);
        assert!(cache.is_empty(), "the job took the study's entries");
        assert_same(&fresh, &cached);

        let model_dir = d.path().join("model");
        crate::model::write_demo_model(&model_dir, crate::model::DemoSize::Small, 3).unwrap();
        let model =
            crate::model::PrimaModel::load(&model_dir, &crate::model::ModelOptions::default())
                .unwrap();
        let desc = fresh.scan.study_description.clone().unwrap_or_default();
        let a = crate::process::run::run_model(&model, &fresh.prepared, &desc, |_| {}).unwrap();
        let b = crate::process::run::run_model(&model, &cached.prepared, &desc, |_| {}).unwrap();
        assert_eq!(
            crate::process::run::predictions_json(&a.output),
            crate::process::run::predictions_json(&b.output)
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
        let got = prepare_job(Some(&cache), &job(&study, &fewer));
        assert_eq!(
            got.cached_series(),
            others,
            "only the untouched series come from the cache"
        );
        assert_same(&prepare_job(None, &job(&study, &fewer)), &got);

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
        let got = prepare_job(Some(&cache), &job(&study, &inst));
        assert_eq!(got.cached_series(), others);
        assert_same(&prepare_job(None, &job(&study, &inst)), &got);

        // Replaced, same content hash recorded (a re-sent file): the file identity changes.
        let cache = speculate_all(&study, &inst);
        let p = &inst[0].path;
        let tmp = p.with_extension("tmp");
        std::fs::copy(p, &tmp).unwrap();
        std::fs::rename(&tmp, p).unwrap();
        let got = prepare_job(Some(&cache), &job(&study, &inst));
        assert_eq!(got.cached_series(), others);

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
        let got = prepare_job(Some(&cache), &job(&study, &changed));
        assert_eq!(got.cached_series(), others);
        assert_same(&prepare_job(None, &job(&study, &changed)), &got);
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
