//! The study policy: from a snapshot of one study and the configuration, whether it is
//! stable, whether Prima should run on it, and why not. The single node's assembler and
//! the cluster's ingest nodes both decide with [`decide`]; neither has a rule of its own.
//!
//! A study is stable when no instance has arrived for `assembly.quiet_period_s` (DCMTK's
//! end-of-study timeout, Orthanc's StableAge); `assembly.force_complete_s` caps the wait for
//! a study that keeps trickling. A stable study qualifies when at least
//! `assembly.min_series` series hold eligible instances (a model SOP class and a configured
//! modality); otherwise it settles as not qualified. A study whose eligible input is the
//! one its last run used settles as done without a re-run (a PACS re-sending a whole study
//! is common).

use sha2::{Digest, Sha256};

use crate::config::{Config, MODEL_SOP_CLASSES};
use crate::store::state::{utc_text, EvictReason, EvictedSeries, StoredInstance, StudyState};

/// What the policy needs to know about one study.
#[derive(Debug, Clone, Copy)]
pub struct StudySnapshot<'a> {
    /// Every instance the study holds (eligible or not).
    pub instances: &'a [StoredInstance],
    /// Last arrival of new or changed content (ms since the epoch).
    pub last_arrival_ms: i64,
    /// First arrival since the study was last decided: the force deadline counts from it.
    pub opened_ms: i64,
    /// Instances acknowledged somewhere but not visible here yet (a cluster ingest node
    /// announced them): the study is not quiet until they are in; the deadline still holds.
    pub held: bool,
    /// Input set hash (hex) of the study's last run or published job.
    pub last_input_hash: Option<&'a str>,
}

/// What to do with a study now.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not stable yet: look again at this time (ms).
    Wait { due_ms: i64 },
    /// Decide without running the model.
    Settle { state: StudyState, reason: String },
    /// Run the model on these instances.
    Run(StudyInput),
}

/// The model input of a study that should run.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyInput {
    /// The eligible instances, in the order the snapshot listed them.
    pub instances: Vec<StoredInstance>,
    /// [`input_set_hash`] of `instances`.
    pub hash: [u8; 32],
    /// Cut off by the force deadline rather than a quiet period.
    pub forced: bool,
    /// Distinct series among `instances`.
    pub series: usize,
}

/// The reason given when inputs are unchanged since the last run.
pub const UNCHANGED: &str = "inputs unchanged since the last run";

/// When a study receiving instances becomes due (stable or forced), in ms.
pub fn due_ms(last_arrival_ms: i64, opened_ms: i64, cfg: &Config) -> i64 {
    let (quiet, force) = windows_ms(cfg);
    (last_arrival_ms + quiet).min(opened_ms + force)
}

fn windows_ms(cfg: &Config) -> (i64, i64) {
    (
        (cfg.assembly.quiet_period_s * 1000.0) as i64,
        (cfg.assembly.force_complete_s * 1000.0) as i64,
    )
}

/// The policy's decision on one study at `now`.
pub fn decide(s: &StudySnapshot, cfg: &Config, now: i64) -> Verdict {
    let (quiet, force) = windows_ms(cfg);
    let quiet_enough = !s.held && now - s.last_arrival_ms >= quiet;
    let forced = !quiet_enough && now - s.opened_ms >= force;
    if !quiet_enough && !forced {
        return Verdict::Wait {
            due_ms: due_ms(s.last_arrival_ms, s.opened_ms, cfg),
        };
    }
    let instances = eligible(s.instances.to_vec(), cfg);
    let series = distinct_series(&instances);
    if series < cfg.assembly.min_series {
        return Verdict::Settle {
            state: StudyState::NotQualified,
            reason: format!(
                "{} series of modality {:?} in a model SOP class; min_series is {}",
                series, cfg.assembly.modalities, cfg.assembly.min_series
            ),
        };
    }
    let hash = input_set_hash(&instances);
    if s.last_input_hash == Some(hex::encode(hash).as_str()) {
        return Verdict::Settle {
            state: StudyState::Done,
            reason: UNCHANGED.into(),
        };
    }
    Verdict::Run(StudyInput {
        instances,
        hash,
        forced,
        series,
    })
}

/// Instances the model may read: a model SOP class and a configured modality.
pub fn eligible(instances: Vec<StoredInstance>, cfg: &Config) -> Vec<StoredInstance> {
    instances
        .into_iter()
        .filter(|i| MODEL_SOP_CLASSES.contains(&i.sop_class_uid.as_str()))
        .filter(|i| {
            cfg.assembly
                .modalities
                .iter()
                .any(|m| m.eq_ignore_ascii_case(&i.modality))
        })
        .collect()
}

/// Per series, the instances of a study the model does not read and why (not a model SOP
/// class, or not a configured modality): reported with the results so a study's PARTIAL
/// says what was received and not used.
pub fn set_aside(instances: &[StoredInstance], cfg: &Config) -> Vec<SetAside> {
    let mut out: Vec<SetAside> = Vec::new();
    for i in instances {
        let reason = if !MODEL_SOP_CLASSES.contains(&i.sop_class_uid.as_str()) {
            format!(
                "not an MR image the model reads (SOP Class {})",
                i.sop_class_uid
            )
        } else if !cfg
            .assembly
            .modalities
            .iter()
            .any(|m| m.eq_ignore_ascii_case(&i.modality))
        {
            format!("modality {:?} is not in [assembly] modalities", i.modality)
        } else {
            continue;
        };
        match out
            .iter_mut()
            .find(|s| s.series_instance_uid == i.series_uid && s.reason == reason)
        {
            Some(s) => s.instances += 1,
            None => out.push(SetAside {
                series_instance_uid: i.series_uid.clone(),
                instances: 1,
                reason,
            }),
        }
    }
    out
}

/// Series whose instances the retention policy removed (and that hold none now), set
/// aside so that a later run's report names each series it could not read, and why.
pub fn evicted(series: &[EvictedSeries]) -> Vec<SetAside> {
    series
        .iter()
        .map(|e| SetAside {
            series_instance_uid: e.series_uid.clone(),
            instances: e.instances as usize,
            reason: format!(
                "removed by the retention policy on {} UTC ({}), before this run: not read",
                utc_text(e.evicted_ms),
                match e.reason {
                    EvictReason::Age => "keep_days",
                    EvictReason::Pressure => "disk space",
                }
            ),
        })
        .collect()
}

pub use crate::job::SetAside;

fn distinct_series(instances: &[StoredInstance]) -> usize {
    instances
        .iter()
        .map(|i| i.series_uid.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

/// SHA-256 over the sorted (SOP Instance UID, content hash) pairs: identifies a study's
/// input, so output UIDs derived from it are stable across a crash and a re-run.
pub fn input_set_hash(instances: &[StoredInstance]) -> [u8; 32] {
    let mut pairs: Vec<(&str, &str)> = instances
        .iter()
        .map(|i| (i.sop_uid.as_str(), i.content_hash.as_str()))
        .collect();
    pairs.sort();
    let mut h = Sha256::new();
    for (uid, sha) in pairs {
        h.update(uid.as_bytes());
        h.update([0u8]);
        h.update(sha.as_bytes());
        h.update([b'\n']);
    }
    h.finalize().into()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn evicted_series_say_when_and_why() {
        let e = EvictedSeries {
            series_uid: "1.2.3".into(),
            instances: 24,
            bytes: 1 << 20,
            evicted_ms: 1_796_342_400_000,
            reason: EvictReason::Pressure,
        };
        assert_eq!(
            evicted(&[e]),
            vec![SetAside {
                series_instance_uid: "1.2.3".into(),
                instances: 24,
                reason: "removed by the retention policy on 2026-12-04 00:00:00 UTC (disk space), before this run: not read".into(),
            }]
        );
    }

    /// The example configuration with a 1 s quiet period and a 10 s deadline.
    pub(crate) fn example_config() -> Config {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/prima-node.toml"),
        )
        .unwrap();
        let mut c = Config::parse(std::path::Path::new("x"), &text).unwrap();
        c.assembly.quiet_period_s = 1.0;
        c.assembly.force_complete_s = 10.0;
        c
    }

    fn cfg() -> Config {
        let mut c = example_config();
        c.assembly.min_series = 2;
        c
    }

    fn inst(series: &str, sop: &str, modality: &str, class: &str) -> StoredInstance {
        StoredInstance {
            sop_uid: sop.into(),
            series_uid: series.into(),
            sop_class_uid: class.into(),
            modality: modality.into(),
            path: "/x".into(),
            content_hash: format!("h-{sop}"),
        }
    }

    fn mr(series: &str, sop: &str) -> StoredInstance {
        inst(series, sop, "MR", crate::config::MR_IMAGE_STORAGE)
    }

    fn snap(instances: &[StoredInstance]) -> StudySnapshot<'_> {
        StudySnapshot {
            instances,
            last_arrival_ms: 1000,
            opened_ms: 0,
            held: false,
            last_input_hash: None,
        }
    }

    #[test]
    fn waits_for_the_quiet_period_then_for_the_deadline_when_held() {
        let c = cfg();
        let i = [mr("1", "1.1"), mr("2", "2.1")];
        assert_eq!(decide(&snap(&i), &c, 1500), Verdict::Wait { due_ms: 2000 });
        assert!(matches!(
            decide(&snap(&i), &c, 2000),
            Verdict::Run(StudyInput { forced: false, .. })
        ));
        let held = StudySnapshot {
            held: true,
            ..snap(&i)
        };
        assert!(matches!(decide(&held, &c, 9_999), Verdict::Wait { .. }));
        assert!(matches!(
            decide(&held, &c, 10_000),
            Verdict::Run(StudyInput { forced: true, .. })
        ));
    }

    #[test]
    fn counts_only_eligible_series() {
        let c = cfg();
        let i = [
            mr("1", "1.1"),
            inst("2", "2.1", "CT", crate::config::MR_IMAGE_STORAGE),
            inst("3", "3.1", "MR", "1.2.840.10008.5.1.4.1.1.7"),
        ];
        match decide(&snap(&i), &c, 5000) {
            Verdict::Settle { state, reason } => {
                assert_eq!(state, StudyState::NotQualified);
                assert_eq!(
                    reason,
                    "1 series of modality [\"MR\"] in a model SOP class; min_series is 2"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unchanged_input_settles_and_changed_input_runs() {
        let c = cfg();
        let i = [mr("1", "1.1"), mr("2", "2.1")];
        let Verdict::Run(first) = decide(&snap(&i), &c, 5000) else {
            panic!("runs")
        };
        assert_eq!(first.series, 2);
        let last = hex::encode(first.hash);
        let again = StudySnapshot {
            last_input_hash: Some(&last),
            ..snap(&i)
        };
        assert_eq!(
            decide(&again, &c, 5000),
            Verdict::Settle {
                state: StudyState::Done,
                reason: UNCHANGED.into()
            }
        );
        let mut changed = i.to_vec();
        changed[1].content_hash = "other".into();
        let again = StudySnapshot {
            instances: &changed,
            ..again
        };
        assert!(matches!(decide(&again, &c, 5000), Verdict::Run(_)));
    }

    #[test]
    fn the_input_hash_ignores_order() {
        let a = [mr("1", "1.1"), mr("2", "2.1")];
        let b = [mr("2", "2.1"), mr("1", "1.1")];
        assert_eq!(input_set_hash(&a), input_set_hash(&b));
    }
}
