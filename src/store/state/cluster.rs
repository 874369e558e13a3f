//! What an ingest node of a cluster (`[cluster]`, docs/cluster.md) keeps in its own
//! database: instances received but not yet replicated, and the results it claimed for
//! delivery, queued in the same outbox the single node sends from.

use rusqlite::params;

use super::db::{now_ms, State, StateError};
use super::instances::StoredInstance;
use super::jobs::{insert_outputs, OutputRow};
use super::schema::{JobState, OutboxState, StudyState};

/// An instance in the local spool, waiting to be replicated to the cluster.
#[derive(Debug, Clone)]
pub struct LocalInstance {
    pub study_uid: String,
    pub instance: StoredInstance,
    pub size: u64,
    pub received_ms: i64,
}

impl State {
    /// Instances still held locally (every one an ingest node holds is unreplicated:
    /// replicated ones are forgotten), oldest first.
    /// Studies in `exclude` are left out.
    pub fn unreplicated(
        &self,
        limit: usize,
        exclude: &[String],
    ) -> Result<Vec<LocalInstance>, StateError> {
        let c = self.c();
        // The excluded studies as a JSON array: one parameter, any number of them.
        let exclude = serde_json::to_string(exclude).unwrap_or_else(|_| "[]".into());
        let mut st = c.prepare(
            "SELECT study_uid, sop_uid, series_uid, sop_class_uid, modality, path, content_hash,
                    size, received_ms
             FROM instances
             WHERE study_uid NOT IN (SELECT value FROM json_each(?2))
             ORDER BY received_ms, sop_uid LIMIT ?1",
        )?;
        let rows = st
            .query_map(params![limit as i64, exclude], |r| {
                Ok(LocalInstance {
                    study_uid: r.get(0)?,
                    instance: StoredInstance {
                        sop_uid: r.get(1)?,
                        series_uid: r.get(2)?,
                        sop_class_uid: r.get(3)?,
                        modality: r.get(4)?,
                        path: std::path::PathBuf::from(r.get::<_, String>(5)?),
                        content_hash: r.get(6)?,
                    },
                    size: r.get::<_, i64>(7)? as u64,
                    received_ms: r.get(8)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The studies of which instances wait here to be replicated.
    pub fn unreplicated_studies(&self) -> Result<std::collections::BTreeSet<String>, StateError> {
        let c = self.c();
        let mut st = c.prepare("SELECT DISTINCT study_uid FROM instances")?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The instance is safe in the cluster: forget it here (the caller removes the file).
    /// Only the same content is forgotten: a replacement received meanwhile stays to be
    /// replicated in its turn. When the study has nothing left here it is `replicated`.
    pub fn instance_replicated(
        &self,
        study_uid: &str,
        sop_uid: &str,
        content_hash: &str,
    ) -> Result<bool, StateError> {
        let now = now_ms();
        let mut c = self.c();
        let tx = c.transaction()?;
        let n = tx.execute(
            "DELETE FROM instances WHERE sop_uid = ?1 AND content_hash = ?2",
            params![sop_uid, content_hash],
        )?;
        let left: i64 = tx.query_row(
            "SELECT COUNT(*) FROM instances WHERE study_uid = ?1",
            params![study_uid],
            |r| r.get(0),
        )?;
        if left == 0 {
            tx.execute(
                "UPDATE studies SET state = ?2, reason = 'handed to the cluster', updated_ms = ?3
                 WHERE study_uid = ?1 AND state = ?4",
                params![
                    study_uid,
                    StudyState::Replicated,
                    now,
                    StudyState::Receiving
                ],
            )?;
        }
        tx.commit()?;
        Ok(n > 0)
    }

    /// A cluster result this node claimed: its objects (already written durably to the
    /// `path`s) recorded and queued for every destination, in one transaction. Idempotent:
    /// queued again after a restart, nothing is added twice. Returns whether it was new.
    pub fn queue_cluster_result(
        &self,
        study_uid: &str,
        input_hash: &str,
        outputs: &[OutputRow],
        destinations: &[String],
    ) -> Result<bool, StateError> {
        let now = now_ms();
        let mut c = self.c();
        let tx = c.transaction()?;
        let known: i64 = tx.query_row(
            "SELECT COUNT(*) FROM jobs WHERE study_uid = ?1 AND input_hash = ?2",
            params![study_uid, input_hash],
            |r| r.get(0),
        )?;
        if known > 0 {
            return Ok(false);
        }
        // The study may have been received entirely by other ingest nodes.
        tx.execute(
            "INSERT OR IGNORE INTO studies (study_uid, state, first_received_ms, last_received_ms,
                opened_ms, updated_ms) VALUES (?1, ?2, ?3, ?3, ?3, ?3)",
            params![study_uid, StudyState::Replicated, now],
        )?;
        tx.execute(
            "INSERT INTO jobs (study_uid, state, attempt, input_hash, forced, created_ms,
                started_ms, finished_ms) VALUES (?1, ?2, 1, ?3, 0, ?4, ?4, ?4)",
            params![study_uid, JobState::Done, input_hash, now],
        )?;
        let job_id = tx.last_insert_rowid();
        insert_outputs(&tx, study_uid, job_id, outputs, destinations, now)?;
        tx.execute(
            "UPDATE studies SET state = ?2, runs = runs + 1, last_input_hash = ?3, reason = NULL,
                updated_ms = ?4 WHERE study_uid = ?1",
            params![study_uid, StudyState::Done, input_hash, now],
        )?;
        tx.execute(
            "INSERT INTO audit (at_ms, event, study_uid, detail) VALUES (?1, 'cluster-result', ?2, ?3)",
            params![
                now,
                study_uid,
                format!("claimed for delivery: {} outputs", outputs.len())
            ],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Whether this node queued that study run's results already.
    pub fn knows_cluster_result(
        &self,
        study_uid: &str,
        input_hash: &str,
    ) -> Result<bool, StateError> {
        let n: i64 = self.c().query_row(
            "SELECT COUNT(*) FROM jobs WHERE study_uid = ?1 AND input_hash = ?2",
            params![study_uid, input_hash],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// The outbox states of these objects' entries (one per destination).
    pub fn outbox_states(&self, sop_uids: &[String]) -> Result<Vec<OutboxState>, StateError> {
        let c = self.c();
        let mut st = c.prepare("SELECT state FROM outbox WHERE sop_uid = ?1")?;
        let mut out = Vec::new();
        for uid in sop_uids {
            let rows = st
                .query_map(params![uid], |r| r.get::<_, OutboxState>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            out.extend(rows);
        }
        Ok(out)
    }

    /// Each outbox entry of these objects: (destination, state, attempts made).
    pub fn outbox_entries(
        &self,
        sop_uids: &[String],
    ) -> Result<Vec<(String, OutboxState, i64)>, StateError> {
        let c = self.c();
        let mut st =
            c.prepare("SELECT destination, state, attempts FROM outbox WHERE sop_uid = ?1")?;
        let mut out = Vec::new();
        for uid in sop_uids {
            let rows = st
                .query_map(params![uid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            out.extend(rows);
        }
        Ok(out)
    }

    /// This node holds the delivery (again): entries it withdrew or handed over before are
    /// pending again, due now and with their attempts counted from zero, except for the
    /// destinations the result reached already. Returns how many.
    pub fn reopen_outbox(
        &self,
        sop_uids: &[String],
        delivered_to: &[String],
    ) -> Result<usize, StateError> {
        let c = self.c();
        let now = now_ms();
        let mut n = 0;
        for uid in sop_uids {
            let mut st =
                c.prepare("SELECT id, destination FROM outbox WHERE sop_uid = ?1 AND state = ?2")?;
            let rows = st
                .query_map(params![uid, OutboxState::Failed], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            for (id, dest) in rows {
                if delivered_to.contains(&dest) {
                    continue;
                }
                n += c.execute(
                    "UPDATE outbox SET state = ?2, attempts = 0, next_attempt_ms = ?3,
                        last_error = NULL WHERE id = ?1",
                    params![id, OutboxState::Pending, now],
                )?;
            }
        }
        Ok(n)
    }

    /// Another node holds the delivery now: stop sending these objects from here.
    pub fn cancel_outbox(&self, sop_uids: &[String], reason: &str) -> Result<usize, StateError> {
        let c = self.c();
        let mut n = 0;
        for uid in sop_uids {
            n += c.execute(
                "UPDATE outbox SET state = ?2, last_error = ?3 WHERE sop_uid = ?1 AND state = ?4",
                params![uid, OutboxState::Failed, reason, OutboxState::Pending],
            )?;
        }
        Ok(n)
    }
}
