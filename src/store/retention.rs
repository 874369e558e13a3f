//! Retention: which finished studies lose their received instances, and removing them
//! without ever leaving the database and the spool disagreeing.
//!
//! What is decided ([`classify`], [`plan`], pure): a study is *pending* (never evicted)
//! while it is not finished (receiving, queued, processing, replicated), a job of it is not
//! done, or a result of it is not yet delivered or given up; it is *recent* (not evicted)
//! within `[assembly] force_complete_s` of its last instance, the longest the node waits
//! for a study to finish arriving; otherwise it is *kept* until `[storage] keep_days` after
//! its last activity (instance received, run finished, result delivered) and *due* after.
//! Due studies are evicted at the next pass; when free space is below
//! `evict_below_free_mb`, kept studies are evicted too, least recently active first, until
//! `evict_until_free_mb` is free again.
//!
//! How it is removed ([`evict`]), so a crash at any point leaves nothing for the rescan to
//! misread (`crate::store::recover` treats a row without a file as lost and a file without
//! a row as a new arrival):
//! 1. the intent, durably: the study, the reason, and each file with the inode it has now;
//! 2. each file removed if it still has that inode (a copy re-sent meanwhile has another,
//!    and the spool's commit and this removal take the same shard lock), then the shard
//!    directories synced, so a power loss cannot bring a removed file back;
//! 3. the rows of the removed instances deleted (not those received again since step 1),
//!    the series recorded as evicted, an audit row, the intent deleted, in one transaction.
//!
//! At start, [`finish_pending`] runs steps 2 and 3 of every intent before the rescan.
//!
//! What is kept: the study's rows (state, series, jobs, outputs, deliveries), the run
//! records and predictions under `results/`, the SR/KOS under `outbox/`, and the series
//! evicted with their counts. A series arriving later re-opens the study as any late
//! series does; its run cannot read the evicted series, and the job lists them as set
//! aside ("removed by the retention policy on …"), so the amended report says exactly
//! which series it lacks (`crate::study::assembler`). Records go too after
//! `keep_records_days` ([`prune_records`]).

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::config::Retention;
use crate::store::durable::fsync_dir;
use crate::store::spool::{Removal, Spool};
use crate::store::state::{
    EvictReason, EvictionIntent, EvictionRecord, Holding, State, StateError, StudyState,
};

/// Where a study stands for retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Not finished, or results still to deliver: never evicted.
    Pending,
    /// Finished, but instances arrived within the assembly window: not evicted yet.
    Recent,
    /// Finished and delivered: evicted at `due_ms`, or earlier under disk pressure.
    Kept { due_ms: i64 },
    /// Past `keep_days`: evicted at the next pass.
    Due,
}

/// Where `h` stands at `now_ms`.
pub fn classify(h: &Holding, now_ms: i64, window_ms: i64, keep_ms: i64) -> Hold {
    let finished = matches!(
        h.state,
        StudyState::Done | StudyState::Failed | StudyState::NotQualified
    );
    if !finished || h.unfinished || h.evicting {
        return Hold::Pending;
    }
    if now_ms < h.last_received_ms.saturating_add(window_ms) {
        return Hold::Recent;
    }
    let due_ms = h.last_activity_ms.saturating_add(keep_ms);
    if now_ms >= due_ms {
        Hold::Due
    } else {
        Hold::Kept { due_ms }
    }
}

/// The studies to evict now, in order, with the reason: every due study, then, while free
/// space is below the low watermark, kept studies least recently active first until the
/// bytes they free bring it to the high one.
pub fn plan(
    holdings: &[Holding],
    now_ms: i64,
    free_mb: u64,
    r: &Retention,
    window_ms: i64,
) -> Vec<(String, EvictReason)> {
    let mb = |b: u64| b / (1024 * 1024);
    let mut out = Vec::new();
    let mut freed = 0u64;
    let mut kept: Vec<&Holding> = Vec::new();
    for h in holdings {
        match classify(h, now_ms, window_ms, r.keep_ms()) {
            Hold::Due => {
                freed += h.bytes;
                out.push((h.study_uid.clone(), EvictReason::Age));
            }
            Hold::Kept { .. } => kept.push(h),
            Hold::Pending | Hold::Recent => {}
        }
    }
    if free_mb >= r.evict_below_free_mb {
        return out;
    }
    kept.sort_by_key(|h| (h.last_activity_ms, h.study_uid.clone()));
    for h in kept {
        if free_mb + mb(freed) >= r.evict_until_free_mb {
            break;
        }
        freed += h.bytes;
        out.push((h.study_uid.clone(), EvictReason::Pressure));
    }
    out
}

/// Disk held by received instances, by where their studies stand (the status page, the
/// `spool_bytes` metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Usage {
    /// Not finished, results pending, or within the assembly window.
    pub pending_bytes: u64,
    pub pending_studies: u64,
    /// Finished and delivered, inside `keep_days` (evicted under disk pressure).
    pub done_bytes: u64,
    pub done_studies: u64,
    /// Past `keep_days`: evicted at the next pass.
    pub evictable_bytes: u64,
    pub evictable_studies: u64,
    /// The first instance of the oldest study held (ms since the epoch).
    pub oldest_held_ms: Option<i64>,
    /// When the next kept study becomes due.
    pub next_eviction_ms: Option<i64>,
}

/// [`Usage`] of `holdings` at `now_ms`.
pub fn usage(holdings: &[Holding], now_ms: i64, keep_ms: i64, window_ms: i64) -> Usage {
    let mut u = Usage::default();
    for h in holdings {
        u.oldest_held_ms = Some(
            u.oldest_held_ms
                .map_or(h.first_received_ms, |o| o.min(h.first_received_ms)),
        );
        match classify(h, now_ms, window_ms, keep_ms) {
            Hold::Pending | Hold::Recent => {
                u.pending_bytes += h.bytes;
                u.pending_studies += 1;
            }
            Hold::Kept { due_ms } => {
                u.done_bytes += h.bytes;
                u.done_studies += 1;
                u.next_eviction_ms = Some(u.next_eviction_ms.map_or(due_ms, |n| n.min(due_ms)));
            }
            Hold::Due => {
                u.evictable_bytes += h.bytes;
                u.evictable_studies += 1;
                u.next_eviction_ms = Some(now_ms);
            }
        }
    }
    u
}

/// The assembly window of a configuration, in ms (see the module's first paragraph).
pub fn window_ms(cfg: &crate::config::Config) -> i64 {
    (cfg.assembly
        .force_complete_s
        .max(cfg.assembly.quiet_period_s)
        * 1000.0) as i64
}

/// Evict one study's received instances (see the module's steps); `None` when it is no
/// longer finished (something arrived or was asked for since it was planned).
pub fn evict(
    spool: &Spool,
    state: &State,
    study_uid: &str,
    reason: EvictReason,
) -> Result<Option<EvictionRecord>, StateError> {
    let intent = intent_now(state, study_uid, reason)?;
    if !state.begin_eviction(&intent)? {
        return Ok(None);
    }
    kill_point(Step::Recorded, 0);
    finish(spool, state, &intent).map(Some)
}

/// The intent of evicting `study_uid` now: its instances recorded until now, each with
/// the inode its file has.
fn intent_now(
    state: &State,
    study_uid: &str,
    reason: EvictReason,
) -> Result<EvictionIntent, StateError> {
    let started_ms = crate::store::state::now_ms();
    let files = state
        .instances_recorded_before(study_uid, started_ms)?
        .into_iter()
        .map(|(sop, path)| {
            // A file already gone has nothing to remove; inode 0 matches no file.
            let inode = std::fs::metadata(&path).map(|m| m.ino()).unwrap_or(0);
            (sop, path, inode)
        })
        .collect();
    Ok(EvictionIntent {
        study_uid: study_uid.to_string(),
        reason,
        started_ms,
        files,
    })
}

/// Steps 2 and 3 of an eviction whose intent is recorded.
fn finish(
    spool: &Spool,
    state: &State,
    intent: &EvictionIntent,
) -> Result<EvictionRecord, StateError> {
    let mut dirs = BTreeSet::new();
    for (n, (_, path, inode)) in intent.files.iter().enumerate() {
        match spool.remove_if_inode(path, *inode) {
            Ok(Removal::Removed) => {
                if let Some(d) = path.parent() {
                    dirs.insert(d.to_path_buf());
                }
            }
            Ok(Removal::Absent | Removal::Replaced) => {}
            // Not removed, so its row must stay: the intent stays too and is retried.
            Err(e) => return Err(StateError::Io(e)),
        }
        kill_point(Step::Removed, n + 1);
    }
    for d in &dirs {
        fsync_dir(d)?;
    }
    kill_point(Step::Synced, 0);
    state.end_eviction(intent)
}

/// Finish the evictions a crash interrupted (at start, before the rescan).
pub fn finish_pending(spool: &Spool, state: &State) -> Result<usize, StateError> {
    let pending = state.pending_evictions()?;
    for intent in &pending {
        finish(spool, state, intent)?;
    }
    Ok(pending.len())
}

/// Prune the records of studies whose instances are gone and whose last activity is older
/// than `keep_records_ms`: output files and the results directory first, then the rows
/// (a crash between leaves rows whose files are gone, which nothing reads as lost, and the
/// next pass prunes them). At most `limit` per call. Returns how many.
pub fn prune_records(
    state: &State,
    state_dir: &Path,
    now_ms: i64,
    keep_records_ms: i64,
    limit: usize,
) -> Result<usize, StateError> {
    let mut n = 0;
    for s in state.prunable_studies(now_ms.saturating_sub(keep_records_ms), limit)? {
        for p in &s.output_paths {
            remove_quietly(p)?;
        }
        let results = crate::store::outbox::results_dir_in(state_dir, &s.study_uid);
        match std::fs::remove_dir_all(&results) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StateError::Io(e)),
        }
        if state.forget_study(&s.study_uid)? {
            n += 1;
        }
    }
    Ok(n)
}

fn remove_quietly(p: &PathBuf) -> Result<(), StateError> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StateError::Io(e)),
    }
}

/// The steps of an eviction a crash test may kill the process after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The intent is durable; nothing removed.
    Recorded,
    /// The n-th file is removed.
    Removed,
    /// Every file removed and the directories synced; the rows not yet ended.
    Synced,
}

/// `PRIMA_TEST_KILL_IN_EVICTION` = `recorded`, `removed:<n>` or `synced`: the crash
/// trials' way to SIGKILL the node at an exact step of an eviction. Unset in production;
/// read once.
fn kill_point(step: Step, n: usize) {
    static AT: OnceLock<Option<(Step, usize)>> = OnceLock::new();
    let at = AT.get_or_init(|| {
        let v = std::env::var("PRIMA_TEST_KILL_IN_EVICTION").ok()?;
        match v.split_once(':') {
            Some(("removed", k)) => Some((Step::Removed, k.parse().ok()?)),
            None if v == "recorded" => Some((Step::Recorded, 0)),
            None if v == "synced" => Some((Step::Synced, 0)),
            _ => None,
        }
    });
    if *at == Some((step, n)) {
        tracing::warn!(?step, n, "test kill point reached: SIGKILL");
        // SAFETY: kill(2) on our own pid with a valid signal number has no memory effects.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    /// A spool and a state with one done study of `n` instances in two series; each file
    /// holds its SOP Instance UID.
    fn done_study(n: usize) -> (tempfile::TempDir, Spool, State, Vec<String>) {
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::open(d.path()).unwrap();
        let state = State::open(d.path()).unwrap();
        let mut sops = Vec::new();
        for i in 0..n {
            let sop = format!("1.2.3.{}.{i}", i % 2);
            let path = spool.path_for(&sop);
            std::fs::write(&path, sop.as_bytes()).unwrap();
            state
                .record_instance(&crate::store::state::InstanceRecord {
                    sop_uid: sop.clone(),
                    study_uid: "1.2.3".into(),
                    series_uid: format!("1.2.3.{}", i % 2),
                    sop_class_uid: crate::config::MR_IMAGE_STORAGE.into(),
                    modality: "MR".into(),
                    transfer_syntax: "1.2.840.10008.1.2.1".into(),
                    series_number: (i % 2).to_string(),
                    series_description: "T1".into(),
                    path,
                    content_hash: format!("h{i}"),
                    size: 100,
                    calling_ae: "SCU".into(),
                    peer: "127.0.0.1".into(),
                })
                .unwrap();
            sops.push(sop);
        }
        state
            .settle_study("1.2.3", StudyState::Done, "test")
            .unwrap();
        // Recorded strictly before any eviction starts.
        std::thread::sleep(std::time::Duration::from_millis(2));
        (d, spool, state, sops)
    }

    /// No row without its file, no file without its row.
    fn agree(spool: &Spool, state: &State) -> (usize, usize) {
        let rows: BTreeSet<PathBuf> = state
            .instance_paths()
            .unwrap()
            .into_iter()
            .map(|(_, p, _)| p)
            .collect();
        let files: BTreeSet<PathBuf> = spool.all_objects().into_iter().collect();
        assert_eq!(rows, files, "rows and files disagree");
        (rows.len(), state.pending_evictions().unwrap().len())
    }

    #[test]
    fn an_eviction_removes_files_and_rows_and_records_the_series() {
        let (_d, spool, state, _) = done_study(6);
        let done = evict(&spool, &state, "1.2.3", EvictReason::Age)
            .unwrap()
            .unwrap();
        assert_eq!((done.instances, done.bytes), (6, 600));
        assert_eq!(agree(&spool, &state), (0, 0));
        let ev = state.evicted_series_of("1.2.3").unwrap();
        assert_eq!(
            ev.iter()
                .map(|e| (e.series_uid.as_str(), e.instances, e.reason))
                .collect::<Vec<_>>(),
            vec![
                ("1.2.3.0", 3, EvictReason::Age),
                ("1.2.3.1", 3, EvictReason::Age)
            ]
        );
        assert!(state.holdings().unwrap().is_empty());
        // A study active again is not evicted.
        let (_d, spool, state, _) = done_study(2);
        state.create_job("1.2.3", true).unwrap();
        assert_eq!(
            evict(&spool, &state, "1.2.3", EvictReason::Age).unwrap(),
            None
        );
        assert_eq!(agree(&spool, &state), (2, 0));
    }

    #[test]
    fn an_interrupted_eviction_is_finished_at_start_at_every_step() {
        // After the intent, after k of the files, after all: what a crash leaves.
        for removed in [0, 1, 3, 4] {
            let (_d, spool, state, _) = done_study(4);
            let intent = intent_now(&state, "1.2.3", EvictReason::Pressure).unwrap();
            assert!(state.begin_eviction(&intent).unwrap());
            for (_, p, _) in intent.files.iter().take(removed) {
                std::fs::remove_file(p).unwrap();
            }
            assert_eq!(finish_pending(&spool, &state).unwrap(), 1);
            assert_eq!(agree(&spool, &state), (0, 0), "after {removed} removed");
            let r = crate::store::recover::rescan(&spool, &state, _d.path()).unwrap();
            assert_eq!(r, crate::store::recover::Rescan::default());
        }
    }

    #[test]
    fn a_copy_received_during_an_eviction_stays_with_its_row() {
        let (_d, spool, state, sops) = done_study(4);
        let intent = intent_now(&state, "1.2.3", EvictReason::Age).unwrap();
        assert!(state.begin_eviction(&intent).unwrap());
        // Re-sent after the intent: a new file (renamed over the old, a new inode) and,
        // a moment later, its row.
        let again = &sops[1];
        let p = spool.path_for(again);
        let tmp = p.with_extension("new");
        std::fs::write(&tmp, b"again").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let r = crate::store::state::InstanceRecord {
            sop_uid: again.clone(),
            study_uid: "1.2.3".into(),
            series_uid: "1.2.3.1".into(),
            sop_class_uid: crate::config::MR_IMAGE_STORAGE.into(),
            modality: "MR".into(),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            series_number: "1".into(),
            series_description: "T1".into(),
            path: p.clone(),
            content_hash: "h-again".into(),
            size: 5,
            calling_ae: "SCU".into(),
            peer: "127.0.0.1".into(),
        };
        state.record_instance(&r).unwrap();
        finish_pending(&spool, &state).unwrap();
        assert_eq!(agree(&spool, &state), (1, 0));
        assert_eq!(std::fs::read(&p).unwrap(), b"again");
        // The series it belongs to holds an instance: not reported as removed.
        let ev = state.evicted_series_of("1.2.3").unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].series_uid, "1.2.3.0");
    }

    fn h(uid: &str, state: StudyState, last_ms: i64, mb: u64) -> Holding {
        Holding {
            study_uid: uid.into(),
            state,
            instances: 10,
            bytes: mb * 1024 * 1024,
            first_received_ms: last_ms - 1000,
            last_received_ms: last_ms,
            last_activity_ms: last_ms,
            unfinished: false,
            evicting: false,
        }
    }

    fn r() -> Retention {
        Retention {
            keep_days: 7.0,
            evict_below_free_mb: 100,
            evict_until_free_mb: 200,
            keep_records_days: 30.0,
            keep_audit_days: 30.0,
        }
    }

    #[test]
    fn nothing_unfinished_or_recent_is_ever_evicted() {
        let now = 100 * DAY;
        let mut unfinished = h("a", StudyState::Done, 0, 50);
        unfinished.unfinished = true;
        let mut evicting = h("b", StudyState::Done, 0, 50);
        evicting.evicting = true;
        let all = vec![
            h("r", StudyState::Receiving, 0, 50),
            h("q", StudyState::Queued, 0, 50),
            h("p", StudyState::Processing, 0, 50),
            h("x", StudyState::Replicated, 0, 50),
            unfinished,
            evicting,
            h("new", StudyState::Done, now - 1000, 50),
        ];
        // Even with no free space at all.
        assert_eq!(plan(&all, now, 0, &r(), 60_000), vec![]);
        assert_eq!(classify(&all[6], now, 60_000, r().keep_ms()), Hold::Recent);
        let u = usage(&all, now, r().keep_ms(), 60_000);
        assert_eq!(
            (u.pending_studies, u.done_studies, u.evictable_studies),
            (7, 0, 0)
        );
        assert_eq!(u.pending_bytes, 7 * 50 * 1024 * 1024);
    }

    #[test]
    fn due_exactly_at_keep_days_after_the_last_activity() {
        let mut s = h("s", StudyState::Done, 10 * DAY, 1);
        s.last_activity_ms = 11 * DAY; // delivered a day after the last instance
        let keep = r().keep_ms();
        assert_eq!(
            classify(&s, 18 * DAY - 1, 60_000, keep),
            Hold::Kept { due_ms: 18 * DAY }
        );
        assert_eq!(classify(&s, 18 * DAY, 60_000, keep), Hold::Due);
        for st in [StudyState::Failed, StudyState::NotQualified] {
            let mut f = s.clone();
            f.state = st;
            assert_eq!(classify(&f, 18 * DAY, 60_000, keep), Hold::Due);
        }
        assert_eq!(
            plan(&[s], 18 * DAY, 1000, &r(), 60_000),
            vec![("s".to_string(), EvictReason::Age)]
        );
    }

    #[test]
    fn pressure_evicts_the_least_recently_active_until_the_high_watermark() {
        let now = 3 * DAY;
        let all = vec![
            h("c", StudyState::Done, 2 * DAY, 40),
            h("a", StudyState::Done, DAY, 40),
            h("b", StudyState::Failed, DAY + 5, 40),
            h("d", StudyState::Done, 2 * DAY + 5, 40),
        ];
        // Above the low watermark: nothing (none is due).
        assert_eq!(plan(&all, now, 100, &r(), 60_000), vec![]);
        // 90 MB free, 200 wanted: a (40), b (80), c (120 → 210).
        assert_eq!(
            plan(&all, now, 90, &r(), 60_000),
            vec![
                ("a".to_string(), EvictReason::Pressure),
                ("b".to_string(), EvictReason::Pressure),
                ("c".to_string(), EvictReason::Pressure),
            ]
        );
        // Due studies count towards the target.
        let mut with_due = all.clone();
        with_due.push(h("old", StudyState::Done, -10 * DAY, 100));
        assert_eq!(
            plan(&with_due, now, 90, &r(), 60_000),
            vec![
                ("old".to_string(), EvictReason::Age),
                ("a".to_string(), EvictReason::Pressure),
            ]
        );
        let u = usage(&with_due, now, r().keep_ms(), 60_000);
        assert_eq!((u.done_studies, u.evictable_studies), (4, 1));
        assert_eq!(u.oldest_held_ms, Some(-10 * DAY - 1000));
        assert_eq!(u.next_eviction_ms, Some(now));
    }
}
