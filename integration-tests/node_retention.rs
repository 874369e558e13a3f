//! Retention (issue 32) through the real binary: eviction under disk pressure on a small
//! file system the test mounts, `keep_days` to the second, a late series after eviction,
//! SIGKILL at every step of an eviction, and a long run of small studies whose disk use
//! and database size must stay flat.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use prima_node::store::state::State;

/// A tmpfs of `mb` MB mounted at `dir` while this lives (None where mounting is not
/// permitted: the test then says so and stops).
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &Path, mb: u64) -> Option<SmallFs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mb}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(SmallFs(dir.to_path_buf()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `prima-node synth-study` with `instances` 128×128 instances in `series` series.
fn small_study(dir: &Path, seed: u64, instances: usize, series: usize) -> Vec<PathBuf> {
    let o = Command::new(bin())
        .args(["synth-study", "--seed", &seed.to_string()])
        .args(["--instances", &instances.to_string()])
        .args([
            "--series",
            &series.to_string(),
            "--rows",
            "128",
            "--cols",
            "128",
        ])
        .arg("--out")
        .arg(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut f = walk_files(dir);
    f.sort();
    f
}

fn curl_json(url: &str) -> serde_json::Value {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "20", url])
        .output()
        .expect("curl");
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{url}: {e}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// Studies at the PACS → SOP Instance UIDs received for each.
fn at_pacs(pacs: &StoreScp) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (sop, study) in pacs.received() {
        m.entry(study).or_default().push(sop);
    }
    m
}

/// The objects of one modality the PACS received for a study: (SOP UID, study, object).
fn received_of(
    pacs: &StoreScp,
    study: &str,
    modality: &str,
) -> Vec<(String, String, dicom_object::DefaultDicomObject)> {
    pacs.received_objects()
        .into_iter()
        .filter(|(_, s, o)| {
            s == study
                && o.element(dicom_dictionary_std::tags::MODALITY)
                    .ok()
                    .and_then(|e| e.to_str().ok())
                    .is_some_and(|m| m.trim() == modality)
        })
        .collect()
}

/// Audit rows of one event: (study, at_ms, detail).
fn audit(state_dir: &Path, event: &str) -> Vec<(String, i64, String)> {
    let c = rusqlite::Connection::open_with_flags(
        state_dir.join("state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut st = c
        .prepare("SELECT COALESCE(study_uid, ''), at_ms, COALESCE(detail, '') FROM audit WHERE event = ?1 ORDER BY id")
        .unwrap();
    st.query_map([event], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// Rows and files agree: every instance row has its file, every spool file its row, no
/// eviction left pending, nothing quarantined. Returns the instances per study.
fn consistent(state_dir: &Path) -> BTreeMap<String, usize> {
    let state = State::open_read_only(state_dir).unwrap();
    let rows: BTreeSet<PathBuf> = state
        .instance_paths()
        .unwrap()
        .into_iter()
        .map(|(_, p, _)| p)
        .collect();
    let files: BTreeSet<PathBuf> = walk_files(&state_dir.join("spool/objects"))
        .into_iter()
        .collect();
    let no_file: Vec<_> = rows.difference(&files).collect();
    let no_row: Vec<_> = files.difference(&rows).collect();
    assert!(no_file.is_empty(), "rows without their file: {no_file:?}");
    assert!(no_row.is_empty(), "files without their row: {no_row:?}");
    assert!(state.pending_evictions().unwrap().is_empty());
    assert_eq!(
        prima_node::store::recover::quarantined_count(state_dir),
        0,
        "quarantined files"
    );
    let mut per_study = BTreeMap::new();
    for h in state.holdings().unwrap() {
        per_study.insert(h.study_uid, h.instances as usize);
    }
    per_study
}

/// Acceptance 1: on a 40 MB file system, 30 studies of 1.5 MB sent at a steady pace (45 MB
/// in all: without eviction C-STORE would be refused after ~24). The oldest done studies
/// are evicted for space, nothing is refused, every study is answered, studies not evicted
/// keep every instance, and the status API's bytes are the spool's.
#[test]
fn disk_pressure_evicts_the_oldest_done_studies_and_refuses_nothing() {
    if !have_dcmtk() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some(_fs) = SmallFs::mount(&tmp.path().join("fs"), 40) else {
        return;
    };
    let pacs_port = free_port();
    let pacs = StoreScp::start(pacs_port);
    let http_port = free_port();
    let node = Node::start(NodeOpts {
        dest_port: pacs_port,
        state_dir: Some(tmp.path().join("fs/state")),
        min_free_mb: 4,
        quiet_s: 0.5,
        force_complete_s: 1.0,
        retention_toml: Some(
            "evict_below_free_mb = 14\nevict_until_free_mb = 18\nkeep_days = 30".into(),
        ),
        extra_toml: format!("\n[http]\nlisten = \"127.0.0.1:{http_port}\"\nopen_reads = true\n"),
        ..NodeOpts::default()
    });
    let mut order = Vec::new();
    for i in 0..30u64 {
        let files = small_study(&tmp.path().join(format!("s{i}")), 100 + i, 40, 2);
        order.push(study_uid_of(&files[0]));
        let o = storescu(node.opts.port, SCU_AE, &files);
        let t = text(&o);
        assert!(
            o.status.success() && !t.contains("Refused"),
            "study {i} refused:\n{t}\n{}",
            node.log_text()
        );
        assert_eq!(acknowledged_files(&t).len(), files.len(), "study {i}: {t}");
        std::thread::sleep(Duration::from_millis(600));
    }
    assert!(
        wait_until(Duration::from_secs(60), || at_pacs(&pacs).len()
            == order.len()),
        "not every study answered: {} of {}\n{}",
        at_pacs(&pacs).len(),
        order.len(),
        node.log_text()
    );
    // Let the last evictions land, then look.
    std::thread::sleep(Duration::from_secs(3));
    let evicted: Vec<String> = audit(&node.state_dir, "evict")
        .into_iter()
        .map(|(s, _, d)| {
            assert!(d.starts_with("reason=pressure"), "{d}");
            s
        })
        .collect();
    eprintln!("evicted {} of {} studies", evicted.len(), order.len());
    assert!(evicted.len() >= 6, "too few evictions: {evicted:?}");
    // Least recently active first: the evicted studies are the first ones sent.
    let evicted_set: BTreeSet<&String> = evicted.iter().collect();
    let first_kept = order.iter().position(|s| !evicted_set.contains(s)).unwrap();
    assert!(
        order[first_kept..].iter().all(|s| !evicted_set.contains(s)),
        "not the oldest first: {evicted:?} vs {order:?}"
    );
    let held = consistent(&node.state_dir);
    for s in &order[first_kept..] {
        assert_eq!(held.get(s), Some(&40), "study {s} lost instances");
    }
    // Every answer exactly once.
    for (s, sops) in at_pacs(&pacs) {
        let unique: BTreeSet<&String> = sops.iter().collect();
        assert_eq!(unique.len(), sops.len(), "{s}: duplicates at the PACS");
    }
    let overview = curl_json(&format!("http://127.0.0.1:{http_port}/api/overview"));
    let u = &overview["storage"]["usage"];
    let api_bytes = ["pending_bytes", "done_bytes", "evictable_bytes"]
        .iter()
        .map(|k| u[k].as_u64().unwrap())
        .sum::<u64>();
    let disk_bytes: u64 = walk_files(&node.state_dir.join("spool/objects"))
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(api_bytes, disk_bytes, "{overview}");
    assert_eq!(
        overview["instances"].as_u64().unwrap() as usize,
        held.values().sum::<usize>()
    );
    assert!(node.log_text().contains("removed by the retention policy"));
}

/// Acceptance 2 and 4: `keep_days` of 8.64 s counted from the last delivery: evicted no
/// earlier and within two passes after. Then two late series of the evicted study: an
/// amended report whose run record and SR name the two series it lacks.
#[test]
fn keep_days_evicts_when_due_and_a_late_series_is_reported_without_the_evicted_ones() {
    if !have_dcmtk() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    let o = Command::new(bin())
        .args(["model", "demo", "--size", "small", "--out"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pacs_port = free_port();
    let pacs = StoreScp::start(pacs_port);
    let http_port = free_port();
    let node = Node::start(NodeOpts {
        dest_port: pacs_port,
        model_dir: Some(model),
        quiet_s: 1.0,
        force_complete_s: 2.0,
        retention_toml: Some(
            "evict_below_free_mb = 2\nevict_until_free_mb = 2\nkeep_days = 0.0001".into(),
        ),
        extra_toml: format!("\n[http]\nlisten = \"127.0.0.1:{http_port}\"\nopen_reads = true\n"),
        ..NodeOpts::default()
    });
    let o = Command::new(bin())
        .args(["synth-study", "--seed", "3", "--out"])
        .arg(tmp.path().join("studies/s3"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let series = study_series(tmp.path(), "s3");
    assert_eq!(series.len(), 4);
    let study = study_uid_of(&series[0][0]);
    let (early, late) = series.split_at(2);
    send_study(node.opts.port, early, 1);
    assert!(
        wait_until(Duration::from_secs(120), || at_pacs(&pacs)
            .get(&study)
            .is_some_and(|s| s.len() >= 2)),
        "no first report:\n{}",
        node.log_text()
    );
    let state = State::open_read_only(&node.state_dir).unwrap();
    let last_activity = || {
        state
            .holdings()
            .unwrap()
            .first()
            .map(|h| h.last_activity_ms)
    };
    let due = last_activity().expect("held") + 8_640;
    assert!(
        wait_until(Duration::from_secs(30), || !audit(&node.state_dir, "evict")
            .is_empty()),
        "never evicted:\n{}",
        node.log_text()
    );
    let (s, at, detail) = audit(&node.state_dir, "evict").remove(0);
    assert_eq!(s, study);
    let sent = early.iter().map(|s| s.len()).sum::<usize>();
    assert!(
        detail.starts_with(&format!("reason=age instances={sent} ")),
        "{detail}"
    );
    eprintln!("due at {due}, evicted at {at} ({} ms after)", at - due);
    assert!(at >= due, "evicted {} ms early", due - at);
    assert!(at <= due + 2_500, "evicted {} ms late", at - due);
    assert!(consistent(&node.state_dir).is_empty());
    for f in early.iter().flatten() {
        assert!(!node.spool_path(&sop_uid_of(f)).exists());
    }
    // The late series: an amended report without the evicted series, saying so.
    send_study(node.opts.port, late, 1);
    assert!(
        wait_until(Duration::from_secs(120), || at_pacs(&pacs)
            .get(&study)
            .is_some_and(|s| s.len() >= 4)),
        "no amended report:\n{}",
        node.log_text()
    );
    let run_path = walk_files(&node.state_dir.join("results"))
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "run.json"))
        .unwrap();
    let run: serde_json::Value = serde_json::from_slice(&std::fs::read(run_path).unwrap()).unwrap();
    let skipped = run["skipped"].to_string();
    for s in early {
        let uid = series_uid_of(&s[0]);
        assert!(
            skipped.contains(&uid),
            "evicted series {uid} not named: {skipped}"
        );
    }
    assert!(
        skipped.contains("removed by the retention policy on"),
        "{skipped}"
    );
    let used = run["series"].to_string();
    for s in late {
        assert!(used.contains(&series_uid_of(&s[0])), "{used}");
    }
    // The amended report: the SR that names a predecessor.
    let srs = received_of(&pacs, &study, "SR");
    assert_eq!(srs.len(), 2, "one report and one amended report");
    let sr = srs
        .into_iter()
        .find(|(_, _, o)| {
            o.element(dicom_dictionary_std::tags::PREDECESSOR_DOCUMENTS_SEQUENCE)
                .is_ok()
        })
        .expect("the amended SR names its predecessor")
        .2;
    let flag = sr
        .element(dicom_dictionary_std::tags::COMPLETION_FLAG)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(flag.trim(), "PARTIAL");
    let out = tmp.path().join("sr.dcm");
    sr.write_to_file(&out).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("removed by the retention policy"),
        "the SR does not say what it lacks"
    );

    // Issue 30, item 4: the amended KOS says it is current and names the one it replaces,
    // and the study page says which objects are current.
    let kos = received_of(&pacs, &study, "KO");
    assert_eq!(kos.len(), 2, "one priority flag and its amendment");
    let desc = |o: &dicom_object::DefaultDicomObject| {
        o.element(dicom_dictionary_std::tags::SERIES_DESCRIPTION)
            .unwrap()
            .to_str()
            .unwrap()
            .trim()
            .to_string()
    };
    let (amended, first): (Vec<_>, Vec<_>) = kos
        .iter()
        .partition(|(_, _, o)| desc(o).ends_with("(AMENDED)"));
    assert_eq!(
        (amended.len(), first.len()),
        (1, 1),
        "{:?}",
        kos.iter().map(|k| desc(&k.2)).collect::<Vec<_>>()
    );
    let out = tmp.path().join("kos.dcm");
    amended[0].2.write_to_file(&out).unwrap();
    let text = String::from_utf8_lossy(&std::fs::read(&out).unwrap()).to_string();
    assert!(
        text.contains(&format!(
            "CURRENT: replaces the earlier AI priority (KOS {})",
            first[0].0
        )),
        "the amended KOS does not name {}",
        first[0].0
    );
    let page = curl_json(&format!("http://127.0.0.1:{http_port}/api/studies/{study}"));
    let current: Vec<(String, String, bool)> = page["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["sop_uid"].as_str().unwrap().to_string(),
                r["current"].as_bool().unwrap(),
            )
        })
        .filter(|(k, _, _)| k == "kos")
        .collect();
    assert_eq!(
        current,
        vec![
            ("kos".to_string(), first[0].0.clone(), false),
            ("kos".to_string(), amended[0].0.clone(), true)
        ]
    );
}

/// Acceptance 3: SIGKILL after the intent, after a seeded number of files, and after the
/// directories are synced: after restart no row without its file, no file without its
/// row, nothing quarantined, the study answered once, and the next study served.
#[test]
fn an_eviction_killed_at_every_step_is_finished_after_restart() {
    if !have_dcmtk() {
        return;
    }
    let seed: u64 = std::env::var("PRIMA_RELIABILITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    let files_in_study = 12usize;
    let k = 1 + (seed as usize * 7919) % (files_in_study - 1);
    let steps = [
        "recorded".to_string(),
        "removed:1".to_string(),
        format!("removed:{k}"),
        "synced".to_string(),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for (t, step) in steps.iter().enumerate() {
        let pacs_port = free_port();
        let pacs = StoreScp::start(pacs_port);
        let mut node = Node::start(NodeOpts {
            dest_port: pacs_port,
            quiet_s: 0.5,
            force_complete_s: 1.0,
            retention_toml: Some(
                "evict_below_free_mb = 2\nevict_until_free_mb = 2\nkeep_days = 0.00001".into(),
            ),
            env: vec![("PRIMA_TEST_KILL_IN_EVICTION".into(), step.clone())],
            ..NodeOpts::default()
        });
        let files = small_study(
            &tmp.path().join(format!("t{t}")),
            500 + t as u64,
            files_in_study,
            2,
        );
        let study = study_uid_of(&files[0]);
        let o = storescu(node.opts.port, SCU_AE, &files);
        assert!(o.status.success(), "{}", text(&o));
        let t0 = Instant::now();
        assert!(
            wait_until(Duration::from_secs(60), || !node.is_running()),
            "{step}: the node did not die at its kill point:\n{}",
            node.log_text()
        );
        assert!(node.log_text().contains("test kill point reached"));
        node.sigkill();
        node.opts.env.clear();
        node.restart();
        let held = consistent(&node.state_dir);
        assert!(held.is_empty(), "{step}: still held {held:?}");
        assert!(
            node.log_text().contains("interrupted_evictions_finished=1"),
            "{step}: {}",
            node.log_text()
        );
        assert_eq!(audit(&node.state_dir, "evict").len(), 1, "{step}");
        let state = State::open_read_only(&node.state_dir).unwrap();
        let ev = state.evicted_series_of(&study).unwrap();
        assert_eq!(
            ev.iter().map(|e| e.instances).sum::<u64>() as usize,
            files_in_study,
            "{step}"
        );
        // The next study is served, and nothing was sent twice.
        let next = small_study(&tmp.path().join(format!("n{t}")), 600 + t as u64, 6, 2);
        let next_study = study_uid_of(&next[0]);
        assert!(storescu(node.opts.port, SCU_AE, &next).status.success());
        assert!(
            wait_until(Duration::from_secs(60), || at_pacs(&pacs)
                .contains_key(&next_study)),
            "{step}: next study not answered"
        );
        let got = at_pacs(&pacs);
        assert_eq!(got.get(&study).map(|s| s.len()), Some(1), "{step}: {got:?}");
        eprintln!(
            "{step}: killed, restarted, finished in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
    }
}

/// Acceptance 5: a stream of small studies (2 instances, 2 series each) through the real
/// binary, time compressed: `keep_days` is one simulated day, records and audit rows are
/// kept two. Disk use and the state database stay flat once the horizons are reached.
/// CI: 9 simulated days of 20 studies (a day = 2 s). Full mode
/// (`PRIMA_RELIABILITY_FULL=1`, `scripts/reliability.sh`): a week of 300 studies a day
/// (2,100 studies, a day = 20 s).
#[test]
fn a_long_stream_of_studies_holds_disk_and_database_flat() {
    if !have_dcmtk() {
        return;
    }
    let full = std::env::var_os("PRIMA_RELIABILITY_FULL").is_some();
    // (studies, seconds per simulated day, studies per day)
    let (studies, day_s, per_day) = if full {
        (2100usize, 20.0, 300.0)
    } else {
        (180, 2.0, 20.0)
    };
    let day = |d: f64| d * day_s / 86_400.0; // simulated days as keep_* days
    let tmp = tempfile::tempdir().unwrap();
    let pacs_port = free_port();
    let pacs = StoreScp::start(pacs_port);
    let node = Node::start(NodeOpts {
        dest_port: pacs_port,
        quiet_s: 0.3,
        force_complete_s: 0.5,
        retention_toml: Some(format!(
            "evict_below_free_mb = 2\nevict_until_free_mb = 2\nkeep_days = {}\nkeep_records_days = {}\nkeep_audit_days = {}",
            day(1.0),
            day(2.0),
            day(2.0)
        )),
        ..NodeOpts::default()
    });
    let one = small_study(&tmp.path().join("one"), 9, 2, 2);
    let gap = Duration::from_secs_f64(day_s / per_day);
    let start = Instant::now();
    let mut samples: Vec<(f64, u64, u64, usize)> = Vec::new();
    let spool = node.state_dir.join("spool/objects");
    let db_bytes = |d: &Path| -> u64 {
        ["state.db", "state.db-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(d.join(f)).ok())
            .map(|m| m.len())
            .sum()
    };
    for i in 0..studies {
        // Each study its own UIDs: the same files re-stamped.
        let dir = tmp.path().join("cur");
        let _ = std::fs::remove_dir_all(&dir);
        let files = restamp(&one, &dir, i);
        let o = storescu(node.opts.port, SCU_AE, &files);
        assert!(o.status.success(), "{}", text(&o));
        let due = gap.mul_f64((i + 1) as f64);
        if let Some(rest) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(rest);
        }
        if i % (studies / 40).max(1) == 0 {
            let spool_bytes: u64 = walk_files(&spool)
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
            samples.push((
                start.elapsed().as_secs_f64() / day_s,
                spool_bytes,
                db_bytes(&node.state_dir),
                at_pacs(&pacs).len(),
            ));
        }
    }
    for (d, s, b, n) in &samples {
        eprintln!("RETENTION-SOAK day {d:.2}: spool {s} B, state.db {b} B, answered {n}");
    }
    // Flat: past three simulated days (a full keep_records horizon and more), the largest
    // sample of the last third is no more than 1.5× the largest of the middle third.
    let after: Vec<_> = samples.iter().filter(|s| s.0 >= 3.0).collect();
    assert!(after.len() >= 3, "too short to judge: {samples:?}");
    let third = after.len() / 3;
    let mid = &after[third..2 * third.max(1)];
    let last = &after[after.len() - third.max(1)..];
    let max = |v: &[&(f64, u64, u64, usize)], f: fn(&(f64, u64, u64, usize)) -> u64| {
        v.iter().map(|s| f(s)).max().unwrap_or(0)
    };
    let (ms, ls) = (max(mid, |s| s.1), max(last, |s| s.1));
    let (mb, lb) = (max(mid, |s| s.2), max(last, |s| s.2));
    eprintln!("RETENTION-SOAK spool max {ms} → {ls} B; state.db max {mb} → {lb} B");
    assert!(
        ls as f64 <= ms as f64 * 1.5 + 200_000.0,
        "spool grows: {samples:?}"
    );
    assert!(
        lb as f64 <= mb as f64 * 1.5 + 200_000.0,
        "database grows: {samples:?}"
    );
    let pruned = audit(&node.state_dir, "prune").len();
    assert!(pruned > 0, "no records pruned");
}

/// The files of `src` with new Study, Series and SOP Instance UIDs derived from `n`.
fn restamp(src: &[PathBuf], dir: &Path, n: usize) -> Vec<PathBuf> {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    std::fs::create_dir_all(dir).unwrap();
    src.iter()
        .enumerate()
        .map(|(k, p)| {
            let mut o = dicom_object::open_file(p).unwrap();
            let put = |o: &mut dicom_object::DefaultDicomObject, t, v: String| {
                o.put(DataElement::new(t, VR::UI, PrimitiveValue::from(v)));
            };
            let sop = format!("2.25.77{n:06}{k}");
            put(&mut o, tags::STUDY_INSTANCE_UID, format!("2.25.78{n:06}"));
            // One instance per series in the source study.
            put(
                &mut o,
                tags::SERIES_INSTANCE_UID,
                format!("2.25.79{n:06}{k}"),
            );
            put(&mut o, tags::SOP_INSTANCE_UID, sop.clone());
            o.meta_mut().media_storage_sop_instance_uid = sop;
            o.meta_mut().update_information_group_length();
            let out = dir.join(format!("{k}.dcm"));
            o.write_to_file(&out).unwrap();
            out
        })
        .collect()
}
