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

/// An ingest node as a decider sees it now.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeState {
    pub record: NodeRecord,
    /// Its announcements arrive (it is this node, or it announced within `node_silent_s`).
    pub reachable: bool,
    /// When it was last heard of (ms).
    pub last_seen_ms: i64,
}

/// What a decider knows of the ingest nodes that hold or sent instances of one study.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Holders {
    /// A reachable node announced instances of the study it has not replicated yet.
    pub held: bool,
    /// Unreachable nodes that may hold instances of the study.
    pub unreachable: Option<Unreachable>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Unreachable {
    pub nodes: Vec<String>,
    /// When the last of them was heard of (ms): the wait for them counts from there.
    pub since_ms: i64,
}

/// Which ingest nodes the decision on `rec` must wait for. A node that cannot be heard
/// from may hold acknowledged instances of the study that nobody else knows of: the
/// pending ones it announced, or more of a study it sent instances of (a partition cuts
/// a node off in the middle of an association). A node that announced a clean stop with
/// nothing pending holds nothing.
pub fn holders(rec: &StudyRecord, nodes: &[NodeState]) -> Holders {
    let mut h = Holders::default();
    let mut since = i64::MIN;
    let mut gone = Vec::new();
    for n in nodes {
        let pending = n.record.pending.contains(&rec.study_uid);
        if n.reachable {
            h.held |= pending;
            continue;
        }
        let sent = rec.instances.values().any(|e| e.node == n.record.node);
        let stopped_empty = n.record.stopped && n.record.pending.is_empty();
        if pending || (sent && !stopped_empty) {
            gone.push(n.record.node.clone());
            since = since.max(n.last_seen_ms);
        }
    }
    if !gone.is_empty() {
        h.unreachable = Some(Unreachable {
            nodes: gone,
            since_ms: since,
        });
    }
    h
}

/// The study policy ([`crate::study::policy`]) on the cluster's view of the study: quiet
/// since the last arrival on any ingest node, or forced at the deadline; the last
/// published input stands for the last run.
///
/// `holders`: a reachable ingest node that announced instances of the study it has not
/// replicated yet keeps the study from being quiet until they are in (the force deadline
/// still holds). An unreachable one that may hold instances of it holds the decision
/// itself, deadline included, for up to `[cluster] partition_wait_s` after it was last
/// heard of; then the study is analysed without it, as partial (and analysed again, with
/// an amended report, when its instances arrive).
pub fn decide(rec: &StudyRecord, cfg: &Config, now: i64, holders: &Holders) -> Option<Decision> {
    if rec.state != StudyState::Receiving {
        return None;
    }
    let wait_ms = cfg
        .cluster
        .as_ref()
        .map_or(0, |c| (c.partition_wait_s * 1000.0) as i64);
    if let Some(u) = &holders.unreachable {
        let until = u.since_ms.saturating_add(wait_ms);
        if now < until {
            return Some(Decision::Wait(until));
        }
    }
    let stored = rec.stored();
    let snapshot = StudySnapshot {
        instances: &stored,
        last_arrival_ms: rec.last_ms,
        opened_ms: rec.opened_ms,
        held: holders.held,
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
            forced: input.forced || holders.unreachable.is_some(),
            without: holders.unreachable.as_ref().map(|u| u.nodes.clone()),
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
    /// Written by a node that stopped cleanly (its last announcement).
    #[serde(default)]
    pub stopped: bool,
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
    /// Decided without these unreachable ingest nodes (after `partition_wait_s`): they may
    /// hold instances of the study that are not in this job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub without: Option<Vec<String>>,
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
    /// Nodes that handed the delivery over (they could not reach a destination), and until
    /// when they leave it to others (ms).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub declined: BTreeMap<String, i64>,
    /// Destinations (`AE@host:port`) that have every object already: a node taking the
    /// delivery over does not send to them again.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub delivered_to: BTreeSet<String>,
}

impl ResultRecord {
    /// Whether `node` may take (or keep) the delivery now.
    pub fn claimable_by(&self, node: &str, now: i64) -> bool {
        if self.declined.get(node).is_some_and(|&until| now < until) {
            return false;
        }
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

    fn free() -> Holders {
        Holders::default()
    }

    fn held() -> Holders {
        Holders {
            held: true,
            unreachable: None,
        }
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
        assert_eq!(decide(&r, &c, 2000, &free()), Some(Decision::Wait(3500)));
        // Another node still holds instances of it: not quiet, until the force deadline.
        assert!(matches!(
            decide(&r, &c, 9000, &held()),
            Some(Decision::Wait(_))
        ));
        assert!(matches!(
            decide(&r, &c, 10_000, &held()),
            Some(Decision::Publish(JobMessage { forced: true, .. }))
        ));
        match decide(&r, &c, 3500, &free()) {
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
        let Some(Decision::Publish(j)) = decide(&r, &c, 5000, &free()) else {
            panic!()
        };
        r.published_input = Some(j.input_hash.clone());
        r.state = StudyState::Done;
        assert!(!r.add("1.1", entry("9.1", "h1"), 6000));
        assert_eq!(r.state, StudyState::Done);
        assert!(r.add("1.1", entry("9.1", "h1b"), 7000));
        assert_eq!(r.state, StudyState::Receiving);
        assert_eq!(r.opened_ms, 7000);
        let Some(Decision::Publish(j2)) = decide(&r, &c, 9000, &free()) else {
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
        match decide(&r, &c, 11_500, &free()) {
            Some(Decision::Publish(j)) => assert!(j.forced),
            other => panic!("{other:?}"),
        }
        let mut one = StudyRecord::new("1.2.4", 0);
        one.add("1.1", entry("9.1", "h1"), 0);
        assert!(matches!(
            decide(&one, &c, 5000, &free()),
            Some(Decision::Settle {
                state: StudyState::NotQualified,
                ..
            })
        ));
    }

    fn node(name: &str, pending: &[&str], reachable: bool, seen: i64) -> NodeState {
        NodeState {
            record: NodeRecord {
                node: name.into(),
                updated_ms: seen,
                pending: pending.iter().map(|s| s.to_string()).collect(),
                stopped: false,
            },
            reachable,
            last_seen_ms: seen,
        }
    }

    #[test]
    fn an_unreachable_node_that_sent_or_holds_instances_holds_the_decision_until_the_bound() {
        // partition_wait_s = 300 (the default), quiet 2 s, deadline 10 s.
        let text = format!(
            "{}[assembly]\nquiet_period_s = 2\nforce_complete_s = 10\nmin_series = 2\n\
             [cluster]\nrole = \"ingest\"\nservers = [\"nats://a:4222\"]\n",
            crate::config::MINIMAL_FOR_TESTS
        );
        let c = Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        let mut r = StudyRecord::new("1.2.3", 0);
        let mut from_b = entry("9.2", "h2");
        from_b.node = "b".into();
        assert!(r.add("1.1", entry("9.1", "h1"), 0));
        assert!(r.add("1.2", from_b, 500));
        // b sent instances and went silent at 1000: no decision, not even at the deadline.
        let nodes = [node("a", &[], true, 20_000), node("b", &[], false, 1000)];
        let h = holders(&r, &nodes);
        assert_eq!(h.unreachable.as_ref().unwrap().nodes, vec!["b".to_string()]);
        assert_eq!(decide(&r, &c, 20_000, &h), Some(Decision::Wait(301_000)));
        // Past the bound: analysed without it, as partial, naming it.
        match decide(&r, &c, 301_000, &h) {
            Some(Decision::Publish(j)) => {
                assert!(j.forced);
                assert_eq!(j.without, Some(vec!["b".to_string()]));
            }
            other => panic!("{other:?}"),
        }
        // Reachable again (or never involved): the ordinary quiet period.
        let back = [node("a", &[], true, 20_000), node("b", &[], true, 20_000)];
        match decide(&r, &c, 3000, &holders(&r, &back)) {
            Some(Decision::Publish(j)) => assert!(!j.forced && j.without.is_none()),
            other => panic!("{other:?}"),
        }
        let other = [node("c", &[], false, 1000)];
        assert_eq!(holders(&r, &other), Holders::default());
        // A silent node that announced the study pending holds it without having sent any.
        let pend = [node("c", &["1.2.3"], false, 1000)];
        assert!(holders(&r, &pend).unreachable.is_some());
        // A reachable node's pending instances only keep the study from being quiet.
        let live = [node("c", &["1.2.3"], true, 1000)];
        assert_eq!(holders(&r, &live), held());
        // A node that stopped cleanly with nothing pending holds nothing.
        let mut stopped = node("b", &[], false, 1000);
        stopped.record.stopped = true;
        assert_eq!(holders(&r, &[stopped]), Holders::default());
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
            declined: BTreeMap::new(),
            delivered_to: BTreeSet::new(),
        };
        assert!(r.claimable_by("a", 50));
        assert!(!r.claimable_by("b", 50));
        assert!(r.claimable_by("b", 100));
        r.state = ResultState::Delivered;
        assert!(!r.claimable_by("a", 50));
        // Handed over by a: the others may take it at once, a itself only later.
        r.state = ResultState::Ready;
        r.claimed_by = None;
        r.declined.insert("a".into(), 200);
        assert!(r.claimable_by("b", 150));
        assert!(!r.claimable_by("a", 150));
        assert!(r.claimable_by("a", 200));
    }
}
