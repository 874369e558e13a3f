//! Crash consistency: seeded trials that SIGKILL the real node at a random moment while
//! several associations send a synthetic study, while the study is processed, or while its
//! results are sent; then restart it and check what survived.
//!
//! After every kill (node down): each instance `storescu` saw answered Success is in the
//! spool, data set byte-identical to what was sent. After every restart: no temporary file
//! is left; the study completes (its last output covers every instance); every output is
//! received by the destination (a DCMTK storescp), counted by SOP Instance UID.
//!
//! Exactly-once delivery over C-STORE has one unavoidable gap: the destination stored the
//! object but the node died before it recorded the Success response. The node must then
//! re-send (same SOP Instance UID, so a PACS recognises it). So every kill snapshots the
//! outbox from the database: a re-send of an output that was still `pending` at a kill is
//! an *in-doubt re-send* (reported); any other extra copy is a *duplicate* (a bug, must be
//! 0), and an output never received is *lost* (must be 0).
//!
//! Default (CI) mode: 3 trials, one per phase. `PRIMA_RELIABILITY_FULL=1`: 24 trials with
//! larger studies; `PRIMA_RELIABILITY_SEED` picks the seed. Prints one line starting with
//! `CRASH-SUMMARY` for `scripts/reliability.sh`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use prima_node::store::state::{OutboxState, State, StudyState};
use prima_node::synth::{write_study, Plane, SynthSeries, SynthStudy};

/// SplitMix64: a seeded generator without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..hi` (hi exclusive, hi > lo).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Receive,
    Process,
    Send,
}

const PHASES: [Phase; 3] = [Phase::Receive, Phase::Process, Phase::Send];
/// How long the fake processor works on a study, so a kill can land inside it.
const PROCESS_MS: u64 = 400;

pub fn full_mode() -> bool {
    std::env::var("PRIMA_RELIABILITY_FULL").is_ok_and(|v| v == "1")
}

pub fn run_seed() -> u64 {
    std::env::var("PRIMA_RELIABILITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_129)
}

struct Study {
    uid: String,
    series: Vec<Vec<PathBuf>>,
    files: Vec<PathBuf>,
}

fn make_study(dir: &Path, seed: u64, rng: &mut Rng, full: bool) -> Study {
    let n_series = rng.range(2, 5) as i32;
    let (size, max_slices) = if full { (128, 24) } else { (64, 10) };
    let planes = [Plane::Axial, Plane::Coronal, Plane::Sagittal, Plane::Axial];
    let series = (0..n_series)
        .map(|i| {
            let slices = rng.range(4, max_slices) as usize;
            SynthSeries::new(
                i + 2,
                &format!("SERIES {i}"),
                planes[i as usize],
                size,
                size,
                slices,
            )
        })
        .collect();
    let s = SynthStudy {
        series,
        ..SynthStudy::brain(seed)
    };
    let files = write_study(&s, dir).expect("write synthetic study");
    let uid = study_uid_of(&files[0]);
    let mut by_series: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for f in &files {
        by_series
            .entry(f.parent().unwrap().to_owned())
            .or_default()
            .push(f.clone());
    }
    Study {
        uid,
        series: by_series.into_values().collect(),
        files,
    }
}

/// The data set bytes of a Part-10 file (everything after the meta group).
fn dataset_bytes(path: &Path) -> Vec<u8> {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[128..132], b"DICM", "{}", path.display());
    // (0002,0000) UL: tag, VR, 2-byte length, then the 4-byte group length at 140.
    let gl = u32::from_le_bytes([b[140], b[141], b[142], b[143]]) as usize;
    b[144 + gl..].to_vec()
}

/// Every temporary file the node could leave behind in its state directory.
fn temp_files(state_dir: &Path) -> Vec<PathBuf> {
    walk_files(state_dir)
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            p.starts_with(state_dir.join("spool/tmp"))
                || n.contains(".tmp-")
                || n.ends_with(".part")
        })
        .collect()
}

fn outbox(node: &Node) -> Vec<prima_node::store::state::OutboxRow> {
    State::open_read_only(&node.state_dir)
        .and_then(|s| s.all_outbox())
        .unwrap_or_default()
}

fn study_state_of(node: &Node, uid: &str) -> Option<StudyState> {
    State::open_read_only(&node.state_dir)
        .and_then(|s| s.study(uid))
        .ok()
        .flatten()
        .map(|s| s.state)
}

/// Per-run bookkeeping for the summary.
#[derive(Default)]
struct Tally {
    trials: usize,
    acknowledged: usize,
    lost_instances: usize,
    /// Outputs that were `pending` at a kill: each may legitimately arrive once more.
    in_doubt_allowance: BTreeMap<String, usize>,
    kill_log: Vec<String>,
}

fn kill_and_snapshot(node: &mut Node, tally: &mut Tally, what: String) {
    node.sigkill();
    for r in outbox(node) {
        if r.state != OutboxState::Done {
            *tally.in_doubt_allowance.entry(r.sop_uid).or_default() += 1;
        }
    }
    tally.kill_log.push(what);
}

/// Each acknowledged instance is in the spool, data set byte-identical to the file sent.
fn check_acked(node: &Node, acked: &[PathBuf]) -> usize {
    let mut lost = 0;
    for f in acked {
        let p = node.spool_path(&sop_uid_of(f));
        if !p.exists() {
            eprintln!("LOST: acknowledged {} not in the spool", f.display());
            lost += 1;
        } else if dataset_bytes(&p) != dataset_bytes(f) {
            eprintln!("CORRUPT: acknowledged {} differs in the spool", f.display());
            lost += 1;
        }
    }
    lost
}

fn run_trial(
    node: &mut Node,
    tally: &mut Tally,
    rng: &mut Rng,
    t: usize,
    phase: Phase,
    full: bool,
) {
    let dir = node.dir.path().join(format!("trial-{t}"));
    let study = make_study(&dir, run_seed().wrapping_mul(1000) + t as u64, rng, full);
    let total = study.files.len();
    let port = node.opts.port;
    match phase {
        Phase::Receive => {
            let base = node.spool_objects().len();
            let logs: Vec<PathBuf> = (0..study.series.len())
                .map(|i| dir.join(format!("storescu-{i}.log")))
                .collect();
            let mut scus: Vec<_> = study
                .series
                .iter()
                .zip(&logs)
                .map(|(files, log)| storescu_spawn(port, SCU_AE, files, log))
                .collect();
            let target = rng.range(1, total as u64) as usize;
            wait_until(Duration::from_secs(20), || {
                node.spool_objects().len() >= base + target
            });
            std::thread::sleep(Duration::from_millis(rng.range(0, 15)));
            kill_and_snapshot(
                node,
                tally,
                format!("trial {t}: receive, after ~{target}/{total} instances"),
            );
            for c in &mut scus {
                let _ = c.wait();
            }
            let acked: Vec<PathBuf> = logs
                .iter()
                .flat_map(|l| acknowledged_files(&std::fs::read_to_string(l).unwrap()))
                .collect();
            tally.acknowledged += acked.len();
            tally.lost_instances += check_acked(node, &acked);
            node.restart();
            let left = temp_files(&node.state_dir);
            assert!(left.is_empty(), "temp files after restart: {left:?}");
            // The PACS retries the study, as after any failed association.
            send_study(port, &study.series, study.series.len());
        }
        Phase::Process => {
            send_study(port, &study.series, study.series.len());
            tally.acknowledged += total;
            let started = wait_until(Duration::from_secs(30), || {
                node.log_text()
                    .lines()
                    .any(|l| l.contains(&study.uid) && l.contains("processing study"))
            });
            assert!(started, "study {} never started processing", study.uid);
            let d = rng.range(0, PROCESS_MS);
            std::thread::sleep(Duration::from_millis(d));
            kill_and_snapshot(node, tally, format!("trial {t}: processing, +{d} ms"));
            tally.lost_instances += check_acked(node, &study.files);
            node.restart();
        }
        Phase::Send => {
            send_study(port, &study.series, study.series.len());
            tally.acknowledged += total;
            let queued = wait_until(Duration::from_secs(30), || {
                outbox(node).iter().any(|r| r.study_uid == study.uid)
            });
            assert!(queued, "no output queued for {}", study.uid);
            let d = rng.range(0, 30);
            std::thread::sleep(Duration::from_millis(d));
            kill_and_snapshot(node, tally, format!("trial {t}: sending, +{d} ms"));
            tally.lost_instances += check_acked(node, &study.files);
            node.restart();
        }
    }
    let left = temp_files(&node.state_dir);
    assert!(left.is_empty(), "temp files after restart: {left:?}");

    // The study completes and everything queued for it is delivered.
    let done = wait_until(Duration::from_secs(60), || {
        study_state_of(node, &study.uid) == Some(StudyState::Done)
            && outbox(node)
                .iter()
                .filter(|r| r.study_uid == study.uid)
                .all(|r| r.state == OutboxState::Done)
    });
    assert!(
        done,
        "trial {t} ({phase:?}) did not complete:\n{}",
        node.status()
    );
    // Every instance is stored, unchanged, whatever happened to the first attempt.
    tally.lost_instances += check_acked(node, &study.files);
    // The newest run saw the whole study (the fake SR names its instance count).
    let outs: Vec<_> = outbox(node)
        .into_iter()
        .filter(|r| r.study_uid == study.uid)
        .collect();
    let want = format!("{total} instances in {} series", study.series.len());
    assert!(
        outs.iter().any(|r| {
            std::fs::read(&r.path)
                .map(|b| String::from_utf8_lossy(&b).contains(&want))
                .unwrap_or(false)
        }),
        "trial {t}: no output covers the whole study ({want})"
    );
    tally.trials += 1;
}

#[test]
fn sigkill_at_random_moments_loses_nothing() {
    if !have_dcmtk() {
        return;
    }
    let t0 = Instant::now();
    let full = full_mode();
    let seed = run_seed();
    let n_trials = if full { 24 } else { 3 };
    let o = NodeOpts {
        quiet_s: 1.0,
        retry_initial_s: 0.2,
        retry_max_s: 1.0,
        env: vec![("PRIMA_NODE_FAKE_DELAY_MS".into(), PROCESS_MS.to_string())],
        ..NodeOpts::default()
    };
    let dest = StoreScp::start(o.dest_port);
    let mut node = Node::start(o);
    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    for t in 0..n_trials {
        // Every phase in each group of three, in a seeded order.
        let phase = if full {
            PHASES[rng.range(0, 3) as usize]
        } else {
            PHASES[t % 3]
        };
        run_trial(&mut node, &mut tally, &mut rng, t, phase, full);
    }
    // One more crash and restart: nothing delivered may be sent again.
    std::thread::sleep(Duration::from_millis(500));
    kill_and_snapshot(&mut node, &mut tally, "final".into());
    node.restart();
    std::thread::sleep(Duration::from_secs(2));

    let expected: BTreeSet<String> = outbox(&node).into_iter().map(|r| r.sop_uid).collect();
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    for (sop, _) in dest.received() {
        *copies.entry(sop).or_default() += 1;
    }
    let mut lost_outputs = 0;
    let mut duplicates = 0;
    let mut in_doubt = 0;
    for sop in &expected {
        let n = copies.get(sop).copied().unwrap_or(0);
        if n == 0 {
            eprintln!("LOST OUTPUT: {sop}");
            lost_outputs += 1;
        }
        let extra = n.saturating_sub(1);
        let allowed = tally.in_doubt_allowance.get(sop).copied().unwrap_or(0);
        in_doubt += extra.min(allowed);
        if extra > allowed {
            eprintln!("DUPLICATE: {sop} received {n} times ({allowed} in-doubt re-sends allowed)");
            duplicates += extra - allowed;
        }
    }
    let unexpected = copies.keys().filter(|s| !expected.contains(*s)).count();
    let summary = format!(
        "CRASH-SUMMARY mode={} seed={seed} trials={} kills={} acknowledged={} lost={} outputs={} lost_outputs={lost_outputs} duplicates={duplicates} in_doubt_resends={in_doubt} unexpected_outputs={unexpected} seconds={:.1}",
        if full { "full" } else { "fast" },
        tally.trials,
        tally.kill_log.len(),
        tally.acknowledged,
        tally.lost_instances,
        expected.len(),
        t0.elapsed().as_secs_f64()
    );
    println!("{summary}");
    eprintln!("{summary}");
    for k in &tally.kill_log {
        eprintln!("  kill: {k}");
    }
    assert_eq!(tally.lost_instances, 0, "acknowledged instances lost");
    assert_eq!(lost_outputs, 0, "outputs never delivered");
    assert_eq!(duplicates, 0, "outputs delivered twice");
    assert_eq!(unexpected, 0, "outputs the node does not know");
    assert_eq!(tally.trials, n_trials);
}
