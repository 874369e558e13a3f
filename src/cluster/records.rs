//! What the cluster stores about a study and its results, and the decisions taken on it.
//! Everything here is plain data and pure functions: the NATS calls are in the callers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::job::PredecessorRef;
use crate::store::input::{eligible, input_set_hash};
use crate::store::state::StoredInstance;

/// The study record's `state`.
pub mod state {
    /// Instances arriving (or arrived since the last decision).
    pub const RECEIVING: &str = "receiving";
    /// A job for the current input is in the queue.
    pub const QUEUED: &str = "queued";
    /// A worker runs it.
    pub const PROCESSING: &str = "processing";
    /// Results for the current input exist.
    pub const DONE: &str = "done";
    pub const FAILED: &str = "failed";
    pub const NOT_QUALIFIED: &str = "not_qualified";
}

/// One replicated instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceEntry {
    pub series_uid: String,
    pub sop_class_uid: String,
    pub modality: String,
    pub content_hash: String,
    /// Name in the instances object store.
    pub object: String,
    pub size: u64,
    /// The ingest node that received (and replicated) it.
    pub node: String,
    pub received_ms: i64,
}

/// The cluster's view of one study: every instance, whichever ingest node received it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyRecord {
    pub study_uid: String,
    /// By SOP Instance UID.
    pub instances: BTreeMap<String, InstanceEntry>,
    /// First arrival since the study was last decided (the force deadline counts from it).
    pub opened_ms: i64,
    /// Last arrival of new or changed content.
    pub last_ms: i64,
    pub state: String,
    /// Input set hash of the last job published (hex).
    #[serde(default)]
    pub published_input: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    /// Results of earlier runs: the predecessors of a re-run.
    #[serde(default)]
    pub outputs: Vec<PredecessorRef>,
    #[serde(default)]
    pub runs: u32,
    /// The worker holding it, while `processing`.
    #[serde(default)]
    pub worker: Option<String>,
    pub updated_ms: i64,
}

impl StudyRecord {
    pub fn new(study_uid: &str, now: i64) -> StudyRecord {
        StudyRecord {
            study_uid: study_uid.to_string(),
            instances: BTreeMap::new(),
            opened_ms: now,
            last_ms: now,
            state: state::RECEIVING.into(),
            published_input: None,
            reason: None,
            outputs: Vec::new(),
            runs: 0,
            worker: None,
            updated_ms: now,
        }
    }

    /// Record a replicated instance. Returns false when the record already had exactly
    /// this content (a re-send changes nothing, as on the single node).
    pub fn add(&mut self, sop_uid: &str, e: InstanceEntry, now: i64) -> bool {
        if self
            .instances
            .get(sop_uid)
            .is_some_and(|old| old.content_hash == e.content_hash)
        {
            return false;
        }
        if self.state != state::RECEIVING {
            // New input after a decision re-opens the study, as `record_instance` does.
            self.state = state::RECEIVING.into();
            self.opened_ms = now;
            self.reason = None;
        }
        self.last_ms = self.last_ms.max(now);
        self.updated_ms = now;
        self.instances.insert(sop_uid.to_string(), e);
        true
    }

    /// The instances as the assembler's input functions take them (`path` = object name).
    pub fn stored(&self) -> Vec<StoredInstance> {
        self.instances
            .iter()
            .map(|(uid, e)| StoredInstance {
                sop_uid: uid.clone(),
                series_uid: e.series_uid.clone(),
                sop_class_uid: e.sop_class_uid.clone(),
                modality: e.modality.clone(),
                path: PathBuf::from(&e.object),
                content_hash: e.content_hash.clone(),
            })
            .collect()
    }
}

/// What to do with a study now.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Not stable yet: look again at this time (ms).
    Wait(i64),
    /// Settle without a job.
    Settle { state: &'static str, reason: String },
    /// Publish a job for this input.
    Publish(JobMessage),
}

/// The assembler's rules (`crate::study::assembler::assemble`) on the cluster's view of
/// the study: stable after the quiet period since the last arrival on any ingest node, or
/// forced at the deadline; qualified with `min_series`; not re-run for unchanged input.
///
/// `held`: an ingest node announced instances of the study it acknowledged and has not
/// replicated yet (its [`NodeRecord`]): the study is not quiet until they are in, but the
/// force deadline still holds.
pub fn decide(rec: &StudyRecord, cfg: &Config, now: i64, held: bool) -> Option<Decision> {
    if rec.state != state::RECEIVING {
        return None;
    }
    let quiet = (cfg.assembly.quiet_period_s * 1000.0) as i64;
    let force = (cfg.assembly.force_complete_s * 1000.0) as i64;
    let quiet_enough = !held && now - rec.last_ms >= quiet;
    let forced = !quiet_enough && now - rec.opened_ms >= force;
    if !quiet_enough && !forced {
        return Some(Decision::Wait(
            (rec.last_ms + quiet).min(rec.opened_ms + force),
        ));
    }
    let inst = eligible(rec.stored(), cfg);
    let hash = hex::encode(input_set_hash(&inst));
    let series: BTreeSet<&str> = inst.iter().map(|i| i.series_uid.as_str()).collect();
    if series.len() < cfg.assembly.min_series {
        return Some(Decision::Settle {
            state: state::NOT_QUALIFIED,
            reason: format!(
                "{} series of modality {:?} in a model SOP class; min_series is {}",
                series.len(),
                cfg.assembly.modalities,
                cfg.assembly.min_series
            ),
        });
    }
    if rec.published_input.as_deref() == Some(hash.as_str()) {
        return Some(Decision::Settle {
            state: state::DONE,
            reason: "inputs unchanged since the last run".into(),
        });
    }
    Some(Decision::Publish(JobMessage {
        study_uid: rec.study_uid.clone(),
        input_hash: hash,
        instances: inst
            .into_iter()
            .map(|i| {
                let e = &rec.instances[&i.sop_uid];
                (i.sop_uid, e.clone())
            })
            .collect(),
        predecessors: rec.outputs.clone(),
        forced,
    }))
}

/// An ingest node's announcement: the studies of which it holds acknowledged instances not
/// yet in the cluster. Written before it replicates them, so that another node deciding
/// meanwhile (this node's replication is slow, or its server just died) waits for them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node: String,
    pub updated_ms: i64,
    pub pending: BTreeSet<String>,
}

pub fn node_key(node: &str) -> String {
    format!("n.{node}")
}

/// A job in the queue: everything a worker needs, with the instances by object name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobMessage {
    pub study_uid: String,
    pub input_hash: String,
    pub instances: BTreeMap<String, InstanceEntry>,
    pub predecessors: Vec<PredecessorRef>,
    pub forced: bool,
}

impl JobMessage {
    /// The publish de-duplication id: one job per study input, whichever node publishes.
    pub fn msg_id(&self) -> String {
        format!("{}:{}", self.study_uid, self.input_hash)
    }
}

/// The result record's `state`.
pub mod result_state {
    /// Published by a worker; no ingest node delivers it yet.
    pub const READY: &str = "ready";
    /// An ingest node delivers it (`claimed_by`, until `lease_until_ms` unless renewed).
    pub const CLAIMED: &str = "claimed";
    /// At every destination.
    pub const DELIVERED: &str = "delivered";
    /// The study failed: nothing to deliver.
    pub const FAILED: &str = "failed";
}

/// One output object of a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputEntry {
    pub kind: crate::job::OutputKind,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
    /// Name in the outputs object store.
    pub object: String,
}

/// One study run's results and their delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRecord {
    pub study_uid: String,
    pub input_hash: String,
    pub state: String,
    pub outputs: Vec<OutputEntry>,
    /// Objects with upstream's predictions JSON and the run record.
    #[serde(default)]
    pub predictions_object: Option<String>,
    #[serde(default)]
    pub run_object: Option<String>,
    pub worker: String,
    pub finished_ms: i64,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub claimed_by: Option<String>,
    #[serde(default)]
    pub lease_until_ms: i64,
    #[serde(default)]
    pub delivered_ms: Option<i64>,
}

impl ResultRecord {
    /// Whether `node` may take (or keep) the delivery now.
    pub fn claimable_by(&self, node: &str, now: i64) -> bool {
        match self.state.as_str() {
            result_state::READY => true,
            result_state::CLAIMED => {
                self.claimed_by.as_deref() == Some(node) || self.lease_until_ms <= now
            }
            _ => false,
        }
    }
}

/// KV keys: the study UID itself (digits and dots are valid key characters).
pub fn study_key(study_uid: &str) -> String {
    format!("s.{study_uid}")
}

pub fn result_key(study_uid: &str, input_hash: &str) -> String {
    format!("r.{study_uid}.{input_hash}")
}

/// Instance objects are named by content, so a re-replication is the same object.
pub fn instance_object(study_uid: &str, sop_uid: &str, content_hash: &str) -> String {
    let h = content_hash.rsplit(':').next().unwrap_or(content_hash);
    format!("{study_uid}/{sop_uid}/{h}")
}

pub fn output_object(study_uid: &str, input_hash: &str, name: &str) -> String {
    format!("{study_uid}/{input_hash}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        let text = format!(
            "{}[assembly]\nquiet_period_s = 2\nforce_complete_s = 10\nmin_series = 2\n",
            crate::config::MINIMAL_FOR_TESTS
        );
        Config::parse(std::path::Path::new("t.toml"), &text).unwrap()
    }

    fn entry(series: &str, hash: &str) -> InstanceEntry {
        InstanceEntry {
            series_uid: series.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.4".into(),
            modality: "MR".into(),
            content_hash: hash.into(),
            object: format!("o/{hash}"),
            size: 1,
            node: "a".into(),
            received_ms: 0,
        }
    }

    #[test]
    fn quiet_period_counts_from_the_last_arrival_on_any_node() {
        let c = cfg();
        let mut r = StudyRecord::new("1.2.3", 0);
        assert!(r.add("1.1", entry("9.1", "h1"), 0));
        assert!(r.add("1.2", entry("9.2", "h2"), 1500));
        assert_eq!(decide(&r, &c, 2000, false), Some(Decision::Wait(3500)));
        // Another node still holds instances of it: not quiet, until the force deadline.
        assert!(matches!(
            decide(&r, &c, 9000, true),
            Some(Decision::Wait(_))
        ));
        assert!(matches!(
            decide(&r, &c, 10_000, true),
            Some(Decision::Publish(JobMessage { forced: true, .. }))
        ));
        match decide(&r, &c, 3500, false) {
            Some(Decision::Publish(j)) => {
                assert_eq!(j.instances.len(), 2);
                assert!(!j.forced);
                let single = hex::encode(input_set_hash(&r.stored()));
                assert_eq!(j.input_hash, single, "the single node's input hash");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resend_changes_nothing_and_new_content_reopens() {
        let c = cfg();
        let mut r = StudyRecord::new("1.2.3", 0);
        r.add("1.1", entry("9.1", "h1"), 0);
        r.add("1.2", entry("9.2", "h2"), 0);
        let Some(Decision::Publish(j)) = decide(&r, &c, 5000, false) else {
            panic!()
        };
        r.published_input = Some(j.input_hash.clone());
        r.state = state::DONE.into();
        assert!(!r.add("1.1", entry("9.1", "h1"), 6000));
        assert_eq!(r.state, state::DONE);
        assert!(r.add("1.1", entry("9.1", "h1b"), 7000));
        assert_eq!(r.state, state::RECEIVING);
        assert_eq!(r.opened_ms, 7000);
        let Some(Decision::Publish(j2)) = decide(&r, &c, 9000, false) else {
            panic!()
        };
        assert_ne!(j2.input_hash, j.input_hash);
        assert_ne!(j2.msg_id(), j.msg_id());
    }

    #[test]
    fn forced_at_the_deadline_and_unqualified_settles() {
        let c = cfg();
        let mut r = StudyRecord::new("1.2.3", 0);
        for t in (0..12_000).step_by(1000) {
            r.add(
                &format!("1.{t}"),
                entry(&format!("9.{}", (t / 1000) % 2), &format!("h{t}")),
                t,
            );
        }
        match decide(&r, &c, 11_500, false) {
            Some(Decision::Publish(j)) => assert!(j.forced),
            other => panic!("{other:?}"),
        }
        let mut one = StudyRecord::new("1.2.4", 0);
        one.add("1.1", entry("9.1", "h1"), 0);
        assert!(matches!(
            decide(&one, &c, 5000, false),
            Some(Decision::Settle {
                state: state::NOT_QUALIFIED,
                ..
            })
        ));
    }

    #[test]
    fn a_claim_is_taken_over_only_when_its_lease_ran_out() {
        let mut r = ResultRecord {
            study_uid: "1".into(),
            input_hash: "h".into(),
            state: result_state::CLAIMED.into(),
            outputs: vec![],
            predictions_object: None,
            run_object: None,
            worker: "w".into(),
            finished_ms: 0,
            error: None,
            claimed_by: Some("a".into()),
            lease_until_ms: 100,
            delivered_ms: None,
        };
        assert!(r.claimable_by("a", 50));
        assert!(!r.claimable_by("b", 50));
        assert!(r.claimable_by("b", 100));
        r.state = result_state::DELIVERED.into();
        assert!(!r.claimable_by("a", 50));
    }
}
