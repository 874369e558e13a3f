//! Received instances: recording one (and what that does to its study), listing them.

use std::path::PathBuf;

use rusqlite::{params, OptionalExtension};

use super::db::{now_ms, State, StateError};
use super::schema::StudyState;
use crate::store::hash::{file_content_hash, legacy_content_hash, CONTENT_HASH_PREFIX};
use crate::store::identity::IDENTITY_PREFIX;

/// One received instance, as recorded.
#[derive(Debug, Clone)]
pub struct InstanceRecord {
    pub sop_uid: String,
    pub study_uid: String,
    pub series_uid: String,
    pub sop_class_uid: String,
    pub modality: String,
    pub transfer_syntax: String,
    pub series_number: String,
    pub series_description: String,
    pub path: PathBuf,
    /// The instance's identity ([`crate::store::identity`]), or where it could not be
    /// computed the byte hash of its data set ([`crate::store::hash::content_hash`]).
    pub content_hash: String,
    pub size: u64,
    pub calling_ae: String,
    pub peer: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordOutcome {
    New,
    /// Same SOP Instance UID, another identity (a changed attribute or image, a lossy
    /// re-encoding): the earlier copy was replaced.
    Replaced,
    /// A re-send with the same identity, in whatever transfer syntax: the file is the
    /// new copy, the record (and so the study's input) stays.
    Unchanged,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredInstance {
    pub sop_uid: String,
    pub series_uid: String,
    pub sop_class_uid: String,
    pub modality: String,
    pub path: PathBuf,
    /// [`crate::store::hash::content_hash`] of the data set.
    pub content_hash: String,
}

/// Whether a recorded content hash is the received instance's.
///
/// Both identities ([`IDENTITY_PREFIX`]): equal or not, whatever the encodings. A recorded
/// byte hash ([`CONTENT_HASH_PREFIX`]: written before identities, or for an instance
/// whose identity could not be computed) can only be compared with the new file's bytes;
/// a hash recorded before the algorithm tag (bare SHA-256) with the new file's SHA-256.
/// So upgrading the node does not make a byte-identical re-send look like a replacement
/// (which would re-open a finished study and send a second report); a re-send of such an
/// instance in another encoding is a replacement once, and recorded by identity after.
fn same_content(recorded: &str, r: &InstanceRecord) -> bool {
    if recorded == r.content_hash || recorded.starts_with(IDENTITY_PREFIX) {
        return recorded == r.content_hash;
    }
    if recorded.starts_with(CONTENT_HASH_PREFIX) {
        // The new one's is a byte hash too when its identity could not be computed: then
        // the two differ (they were compared above).
        return r.content_hash.starts_with(IDENTITY_PREFIX)
            && file_content_hash(&r.path).is_ok_and(|h| h == recorded);
    }
    legacy_content_hash(&r.path).is_ok_and(|h| h == recorded)
}

impl State {
    /// Record a durable instance and touch its study (re-opening it if it was finished).
    pub fn record_instance(&self, r: &InstanceRecord) -> Result<RecordOutcome, StateError> {
        let now = now_ms();
        let mut c = self.c();
        let tx = c.transaction()?;
        // Runs once per received instance: statements are parsed once per connection.
        let prev: Option<(String, String)> = tx
            .prepare_cached("SELECT content_hash, study_uid FROM instances WHERE sop_uid = ?1")?
            .query_row(params![r.sop_uid], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        let outcome = match &prev {
            None => RecordOutcome::New,
            Some((hash, study)) if *study == r.study_uid && same_content(hash, r) => {
                RecordOutcome::Unchanged
            }
            Some(_) => RecordOutcome::Replaced,
        };
        tx.prepare_cached(
            "INSERT INTO audit (at_ms, event, calling_ae, peer, study_uid, sop_uid, detail)
             VALUES (?1, 'c-store', ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            now,
            r.calling_ae,
            r.peer,
            r.study_uid,
            r.sop_uid,
            format!("{:?} {} bytes", outcome, r.size)
        ])?;
        if outcome == RecordOutcome::Unchanged {
            // The re-sent copy replaced the file (a rename): its record is as recent as
            // the file, or the rescan would take it for a replacement whose record was
            // lost and hash it again at every start.
            // The new copy's encoding and size are the file's now.
            tx.prepare_cached(
                "UPDATE instances SET received_ms = ?2, transfer_syntax = ?3, size = ?4
                 WHERE sop_uid = ?1",
            )?
            .execute(params![r.sop_uid, now, r.transfer_syntax, r.size as i64])?;
            tx.commit()?;
            return Ok(outcome);
        }
        // A replaced instance may have moved between studies; the old study changes too.
        if let Some((_, old_study)) = &prev {
            if *old_study != r.study_uid {
                tx.prepare_cached(
                    "UPDATE studies SET state = ?2, opened_ms = ?3, last_received_ms = ?3, updated_ms = ?3
                     WHERE study_uid = ?1 AND state IN ('done','failed','not_qualified')",
                )?
                .execute(
                    params![old_study, StudyState::Receiving, now],
                )?;
            }
        }
        tx.prepare_cached(
            "INSERT INTO instances (sop_uid, study_uid, series_uid, sop_class_uid, modality,
                transfer_syntax, path, content_hash, size, received_ms, calling_ae, peer)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT(sop_uid) DO UPDATE SET study_uid = excluded.study_uid,
                series_uid = excluded.series_uid, sop_class_uid = excluded.sop_class_uid,
                modality = excluded.modality, transfer_syntax = excluded.transfer_syntax,
                path = excluded.path, content_hash = excluded.content_hash, size = excluded.size,
                received_ms = excluded.received_ms, calling_ae = excluded.calling_ae,
                peer = excluded.peer",
        )?
        .execute(params![
            r.sop_uid,
            r.study_uid,
            r.series_uid,
            r.sop_class_uid,
            r.modality,
            r.transfer_syntax,
            r.path.to_string_lossy(),
            r.content_hash,
            r.size as i64,
            now,
            r.calling_ae,
            r.peer
        ])?;
        tx.prepare_cached(
            "INSERT INTO series (series_uid, study_uid, modality, series_number, description)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(series_uid) DO UPDATE SET study_uid = excluded.study_uid,
                modality = excluded.modality, series_number = excluded.series_number,
                description = excluded.description",
        )?
        .execute(params![
            r.series_uid,
            r.study_uid,
            r.modality,
            r.series_number,
            r.series_description
        ])?;
        Self::touch_study(&tx, &r.study_uid, now)?;
        tx.commit()?;
        Ok(outcome)
    }

    fn touch_study(
        tx: &rusqlite::Transaction<'_>,
        study: &str,
        now: i64,
    ) -> Result<(), StateError> {
        tx.prepare_cached(
            "INSERT INTO studies (study_uid, state, first_received_ms, last_received_ms, opened_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?3, ?3, ?3)
             ON CONFLICT(study_uid) DO UPDATE SET last_received_ms = excluded.last_received_ms,
                updated_ms = excluded.updated_ms,
                opened_ms = CASE WHEN studies.state IN ('done','failed','not_qualified')
                                 THEN excluded.opened_ms ELSE studies.opened_ms END,
                state = CASE WHEN studies.state IN ('done','failed','not_qualified')
                             THEN ?2 ELSE studies.state END",
        )?
        .execute(
            params![study, StudyState::Receiving, now],
        )?;
        Ok(())
    }

    pub fn instances_of(&self, study_uid: &str) -> Result<Vec<StoredInstance>, StateError> {
        let c = self.c();
        let mut st = c.prepare(
            "SELECT sop_uid, series_uid, sop_class_uid, modality, path, content_hash
             FROM instances WHERE study_uid = ?1 ORDER BY sop_uid",
        )?;
        let rows = st
            .query_map(params![study_uid], |r| {
                Ok(StoredInstance {
                    sop_uid: r.get(0)?,
                    series_uid: r.get(1)?,
                    sop_class_uid: r.get(2)?,
                    modality: r.get(3)?,
                    path: PathBuf::from(r.get::<_, String>(4)?),
                    content_hash: r.get(5)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Every instance known (SOP Instance UID, path, when it was last recorded), for the
    /// spool rescan.
    pub fn instance_paths(&self) -> Result<Vec<(String, PathBuf, i64)>, StateError> {
        let c = self.c();
        let mut st = c.prepare("SELECT sop_uid, path, received_ms FROM instances")?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get(0)?, PathBuf::from(r.get::<_, String>(1)?), r.get(2)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn forget_instance(&self, sop_uid: &str) -> Result<(), StateError> {
        self.c()
            .execute("DELETE FROM instances WHERE sop_uid = ?1", params![sop_uid])?;
        Ok(())
    }
}
