//! What the cluster stores about a study and its results, and the decisions taken on it.
//! Everything here is plain data and pure functions: the NATS calls are in the callers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::job::PredecessorRef;
use crate::store::state::{StoredInstance, StudyState};
use crate::study::policy::{self, StudySnapshot, Verdict};

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
    pub state: StudyState,
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
            state: StudyState::Receiving,
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
        if self.state != StudyState::Receiving {
            // New input after a decision re-opens the study, as `record_instance` does.
            self.state = StudyState::Receiving;
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
    Settle { state: StudyState, reason: String },
    /// Publish a job for this input.
    Publish(JobMessage),
}

/// The study policy ([`crate::study::policy`]) on the cluster's view of the study: quiet
/// since the last arrival on any ingest node, or forced at the deadline; the last
/// published input stands for the last run.
///
/// `held`: an ingest node announced instances of the study it acknowledged and has not
/// replicated yet (its [`NodeRecord`]): the study is not quiet until they are in, but the
/// force deadline still holds.
pub fn decide(rec: &StudyRecord, cfg: &Config, now: i64, held: bool) -> Option<Decision> {
    if rec.state != StudyState::Receiving {
        return None;
    }
    let stored = rec.stored();
    let snapshot = StudySnapshot {
        instances: &stored,
        last_arrival_ms: rec.last_ms,
        opened_ms: rec.opened_ms,
        held,
        last_input_hash: rec.published_input.as_deref(),
    };
    Some(match policy::decide(&snapshot, cfg, now) {
        Verdict::Wait { due_ms } => Decision::Wait(due_ms),
        Verdict::Settle { state, reason } => Decision::Settle { state, reason },
        Verdict::Run(input) => Decision::Publish(JobMessage {
            study_uid: rec.study_uid.clone(),
            input_hash: hex::encode(input.hash),
            instances: input
                .instances
                .into_iter()
                .map(|i| {
                    let e = &rec.instances[&i.sop_uid];
                    (i.sop_uid, e.clone())
                })
                .collect(),
            predecessors: rec.outputs.clone(),
            forced: input.forced,
        }),
    })
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

crate::store::state::state_enum! {
    /// A result record's life cycle.
    ResultState {
        /// Published by a worker; no ingest node delivers it yet.
        Ready = "ready",
        /// An ingest node delivers it (`claimed_by`, until `lease_until_ms` unless renewed).
        Claimed = "claimed",
        /// At every destination.
        Delivered = "delivered",
        /// The study failed: nothing to deliver.
        Failed = "failed",
    }
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
    pub state: ResultState,
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
        match self.state {
            ResultState::Ready => true,
            ResultState::Claimed => {
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
                let single = hex::encode(policy::input_set_hash(&r.stored()));
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
        r.state = StudyState::Done;
        assert!(!r.add("1.1", entry("9.1", "h1"), 6000));
        assert_eq!(r.state, StudyState::Done);
        assert!(r.add("1.1", entry("9.1", "h1b"), 7000));
        assert_eq!(r.state, StudyState::Receiving);
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
                state: StudyState::NotQualified,
                ..
            })
        ));
    }

    #[test]
    fn a_claim_is_taken_over_only_when_its_lease_ran_out() {
        let mut r = ResultRecord {
            study_uid: "1".into(),
            input_hash: "h".into(),
            state: ResultState::Claimed,
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
        r.state = ResultState::Delivered;
        assert!(!r.claimable_by("a", 50));
    }
}
