//! An ingest node's picture of a KV bucket, kept current by reading only what changed.
//!
//! The study and result buckets hold every record of `keep_days` (tens of thousands in a
//! health system); re-reading them all on each 250 ms pass would cost that many requests
//! per pass. Every write to a bucket is a message with the next stream sequence, so a pass
//! asks the stream for its last sequence (one request) and reads the messages after the
//! last one it saw by direct get (any live replica answers). The first pass lists and
//! reads everything once. The open records (still to be decided or delivered) are kept
//! whole; of the rest only their state, for the counts on the status page.

use std::collections::{BTreeMap, HashMap};

use serde::de::DeserializeOwned;

use super::records::{ResultRecord, ResultState, StudyRecord};
use super::{nats_at, reads, Cluster, ClusterError};
use crate::store::state::StudyState;

/// Changes read in one pass at most (the rest in the next passes).
const MAX_CHANGES: u64 = 2000;

/// What the tracker needs of a record.
pub trait Tracked: DeserializeOwned {
    fn state(&self) -> &str;
    /// Still to be acted on by an ingest node.
    fn open(&self) -> bool;
    /// (when, study, why) for a failed record.
    fn failure(&self) -> Option<(i64, String, String)> {
        None
    }
}

impl Tracked for StudyRecord {
    fn state(&self) -> &str {
        self.state.as_str()
    }
    fn open(&self) -> bool {
        self.state == StudyState::Receiving
    }
    fn failure(&self) -> Option<(i64, String, String)> {
        (self.state == StudyState::Failed).then(|| {
            (
                self.updated_ms,
                self.study_uid.clone(),
                self.reason.clone().unwrap_or_default(),
            )
        })
    }
}

impl Tracked for ResultRecord {
    fn state(&self) -> &str {
        self.state.as_str()
    }
    fn open(&self) -> bool {
        self.state == ResultState::Ready || self.state == ResultState::Claimed
    }
    fn failure(&self) -> Option<(i64, String, String)> {
        // A job whose study has no record (published by hand, or the record expired)
        // fails here only.
        (self.state == ResultState::Failed).then(|| {
            (
                self.finished_ms,
                self.study_uid.clone(),
                self.error.clone().unwrap_or_default(),
            )
        })
    }
}

pub struct Bucket<T> {
    name: String,
    /// Stream sequence up to which every change has been read (0: nothing read yet).
    seen: u64,
    /// Every record's state, by key.
    pub states: HashMap<String, String>,
    /// The open records, by key.
    pub open: BTreeMap<String, T>,
    /// Failed records: key -> (when, study, why).
    pub failures: HashMap<String, (i64, String, String)>,
}

impl<T: Tracked> Bucket<T> {
    pub fn new(bucket: &str) -> Self {
        Bucket {
            name: bucket.to_string(),
            seen: 0,
            states: HashMap::new(),
            open: BTreeMap::new(),
            failures: HashMap::new(),
        }
    }

    fn put(&mut self, key: &str, rec: T) {
        self.states.insert(key.to_string(), rec.state().to_string());
        match rec.failure() {
            Some(f) => self.failures.insert(key.to_string(), f),
            None => self.failures.remove(key),
        };
        if rec.open() {
            self.open.insert(key.to_string(), rec);
        } else {
            self.open.remove(key);
        }
    }

    fn forget(&mut self, key: &str) {
        self.states.remove(key);
        self.open.remove(key);
        self.failures.remove(key);
    }

    /// Read what changed since the last call.
    pub async fn refresh(&mut self, cl: &Cluster) -> Result<(), ClusterError> {
        let stream_name = format!("KV_{}", self.name);
        let stream = cl
            .js
            .get_stream(&stream_name)
            .await
            .map_err(nats_at(format_args!("bucket {} info", self.name)))?;
        let last = stream.cached_info().state.last_sequence;
        if last < self.seen {
            // The bucket was made anew: start over.
            *self = Bucket::new(&self.name);
        }
        if self.seen == 0 {
            // Everything once; what changes meanwhile (after `last`) is read next time.
            let bucket = if self.name == cl.section.studies_bucket {
                &cl.studies
            } else {
                &cl.results
            };
            for key in cl.keys(bucket).await? {
                match cl.read::<T>(bucket, &key).await {
                    Ok(Some((rec, _))) => self.put(&key, rec),
                    Ok(None) => self.forget(&key),
                    Err(ClusterError::Record { key, message }) => {
                        tracing::warn!(%key, %message, "unreadable cluster record ignored");
                    }
                    Err(e) => return Err(e),
                }
            }
            self.seen = last;
            return Ok(());
        }
        let prefix = format!("$KV.{}.", self.name);
        let filter = format!("{prefix}>");
        let to = last.min(self.seen + MAX_CHANGES);
        let mut seq = self.seen + 1;
        while seq <= to {
            // The next change still held: the versions in between were overwritten since
            // (one message per key) or expired. A replica that has not caught up says
            // "none" where the leader has some: `next_for_subject` then asks the leader.
            let Some(m) = reads::next_for_subject(&stream, &filter, seq).await? else {
                break;
            };
            if m.sequence > to {
                break;
            }
            seq = m.sequence + 1;
            self.seen = m.sequence;
            let Some(key) = m.subject.strip_prefix(&prefix).map(str::to_string) else {
                continue;
            };
            if key.starts_with(super::CAS_BARRIER) {
                continue;
            }
            if reads::is_kv_delete(&m) {
                self.forget(&key);
                continue;
            }
            match serde_json::from_slice::<T>(&m.payload) {
                Ok(rec) => self.put(&key, rec),
                Err(e) => tracing::warn!(%key, error = %e, "unreadable cluster record ignored"),
            }
        }
        self.seen = to;
        Ok(())
    }

    /// Records by state.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for s in self.states.values() {
            *m.entry(s.clone()).or_insert(0) += 1;
        }
        m
    }

    /// The failures: (when, study, why).
    pub fn failures(&self) -> impl Iterator<Item = &(i64, String, String)> {
        self.failures.values()
    }
}
