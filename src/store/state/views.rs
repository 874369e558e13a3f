//! Read-only views for the status page and its JSON API, and the two operator actions
//! (retry a delivery now, re-run a study). The page opens its own read-only connection, so
//! a browser refreshing the page never waits behind, or holds up, the listener's writes.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::db::{now_ms, State, StateError};
use super::schema::{JobState, OutboxState, StudyState};
use super::studies::{study_row, StudyRow};

#[derive(Debug, Clone, Serialize)]
pub struct SeriesView {
    pub series_uid: String,
    pub modality: String,
    pub series_number: String,
    pub description: String,
    pub instances: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub id: i64,
    pub state: JobState,
    pub attempt: i64,
    pub forced: bool,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeliveryView {
    pub id: i64,
    pub study_uid: String,
    pub sop_uid: String,
    pub kind: String,
    pub destination: String,
    pub state: OutboxState,
    pub attempts: i64,
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
    pub delivered_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditView {
    pub at_ms: i64,
    pub event: String,
    pub calling_ae: Option<String>,
    pub peer: Option<String>,
    pub study_uid: Option<String>,
    pub detail: Option<String>,
}

fn audit_row(r: &rusqlite::Row) -> rusqlite::Result<AuditView> {
    Ok(AuditView {
        at_ms: r.get(0)?,
        event: r.get(1)?,
        calling_ae: r.get(2)?,
        peer: r.get(3)?,
        study_uid: r.get(4)?,
        detail: r.get(5)?,
    })
}

fn delivery_row(r: &rusqlite::Row) -> rusqlite::Result<DeliveryView> {
    Ok(DeliveryView {
        id: r.get(0)?,
        study_uid: r.get(1)?,
        sop_uid: r.get(2)?,
        kind: r.get(3)?,
        destination: r.get(4)?,
        state: r.get(5)?,
        attempts: r.get(6)?,
        next_attempt_ms: r.get(7)?,
        last_error: r.get(8)?,
        delivered_ms: r.get(9)?,
    })
}

const DELIVERY_COLUMNS: &str = "o.id, p.study_uid, o.sop_uid, p.kind, o.destination, o.state,
    o.attempts, o.next_attempt_ms, o.last_error, o.delivered_ms
    FROM outbox o JOIN outputs p ON p.sop_uid = o.sop_uid";

impl State {
    /// Studies newest first (by last instance), optionally only those in `state`.
    pub fn studies_page(
        &self,
        state: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<StudyRow>, StateError> {
        let c = self.c();
        let mut st = c.prepare(
            "SELECT study_uid, state, first_received_ms, last_received_ms, opened_ms, runs,
                    last_input_hash, reason
             FROM studies WHERE (?1 IS NULL OR state = ?1)
             ORDER BY last_received_ms DESC, study_uid LIMIT ?2 OFFSET ?3",
        )?;
        let rows = st
            .query_map(params![state, limit, offset], study_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// How many instances a study has, and the spool path of one of them (for its header).
    pub fn study_files(
        &self,
        study_uid: &str,
    ) -> Result<(i64, Option<std::path::PathBuf>), StateError> {
        let c = self.c();
        let n: i64 = c.query_row(
            "SELECT COUNT(*) FROM instances WHERE study_uid = ?1",
            params![study_uid],
            |r| r.get(0),
        )?;
        // Once the retention policy removed the instances, the study's header is read from
        // a result sent for it (the SR and KOS copy it).
        let path: Option<String> = c
            .query_row(
                "SELECT path FROM instances WHERE study_uid = ?1
                 UNION ALL SELECT path FROM outputs WHERE study_uid = ?1 LIMIT 1",
                params![study_uid],
                |r| r.get(0),
            )
            .optional()?;
        Ok((n, path.map(std::path::PathBuf::from)))
    }

    pub fn series_view(&self, study_uid: &str) -> Result<Vec<SeriesView>, StateError> {
        let c = self.c();
        let mut st = c.prepare(
            "SELECT s.series_uid, s.modality, s.series_number, s.description,
                    (SELECT COUNT(*) FROM instances i WHERE i.series_uid = s.series_uid)
             FROM series s WHERE s.study_uid = ?1 ORDER BY s.series_number, s.series_uid",
        )?;
        let rows = st
            .query_map(params![study_uid], |r| {
                Ok(SeriesView {
                    series_uid: r.get(0)?,
                    modality: r.get(1)?,
                    series_number: r.get(2)?,
                    description: r.get(3)?,
                    instances: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn jobs_view(&self, study_uid: &str) -> Result<Vec<JobView>, StateError> {
        let c = self.c();
        let mut st = c.prepare(
            "SELECT id, state, attempt, forced, created_ms, started_ms, finished_ms, error
             FROM jobs WHERE study_uid = ?1 ORDER BY id",
        )?;
        let rows = st
            .query_map(params![study_uid], |r| {
                Ok(JobView {
                    id: r.get(0)?,
                    state: r.get(1)?,
                    attempt: r.get(2)?,
                    forced: r.get::<_, i64>(3)? != 0,
                    created_ms: r.get(4)?,
                    started_ms: r.get(5)?,
                    finished_ms: r.get(6)?,
                    error: r.get(7)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn deliveries_of(&self, study_uid: &str) -> Result<Vec<DeliveryView>, StateError> {
        let c = self.c();
        let mut st = c.prepare(&format!(
            "SELECT {DELIVERY_COLUMNS} WHERE p.study_uid = ?1 ORDER BY o.id"
        ))?;
        let rows = st
            .query_map(params![study_uid], delivery_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Deliveries not done (pending or failed), oldest first.
    pub fn open_deliveries(&self, limit: i64) -> Result<Vec<DeliveryView>, StateError> {
        let c = self.c();
        let mut st = c.prepare(&format!(
            "SELECT {DELIVERY_COLUMNS} WHERE o.state != ?1 ORDER BY o.id LIMIT ?2"
        ))?;
        let rows = st
            .query_map(params![OutboxState::Done, limit], delivery_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The newest audit records but the per-instance `c-store` ones (associations,
    /// deliveries, operator actions).
    pub fn audit_view(&self, limit: i64) -> Result<Vec<AuditView>, StateError> {
        let c = self.c();
        let mut st = c.prepare(
            "SELECT at_ms, event, calling_ae, peer, study_uid, detail FROM audit
             WHERE event != 'c-store' ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = st
            .query_map(params![limit], audit_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The audit records about one study but its per-instance `c-store` ones (delivery
    /// attempts, operator actions), oldest first.
    pub fn audit_of_study(&self, study_uid: &str) -> Result<Vec<AuditView>, StateError> {
        let c = self.c();
        let mut st = c.prepare(
            "SELECT at_ms, event, calling_ae, peer, study_uid, detail FROM audit
             WHERE study_uid = ?1 AND event != 'c-store' ORDER BY id LIMIT 1000",
        )?;
        let rows = st
            .query_map(params![study_uid], audit_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Jobs waiting or running.
    pub fn queue_depth(&self) -> Result<i64, StateError> {
        Ok(self.c().query_row(
            "SELECT COUNT(*) FROM jobs WHERE state IN (?1, ?2, ?3)",
            params![JobState::Queued, JobState::Dispatched, JobState::Running],
            |r| r.get(0),
        )?)
    }

    /// The most recent failure reason of any study or job, with its time.
    pub fn last_error(&self) -> Result<Option<(i64, String)>, StateError> {
        Ok(self
            .c()
            .query_row(
                "SELECT finished_ms, error FROM jobs WHERE error IS NOT NULL
                 ORDER BY finished_ms DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, Option<i64>>(0)?.unwrap_or(0), r.get(1)?)),
            )
            .optional()?)
    }

    /// An operator action for the audit trail (who: the peer address of the request).
    pub fn audit_action(&self, event: &str, peer: &str, study_uid: Option<&str>, detail: &str) {
        let r = self.c().execute(
            "INSERT INTO audit (at_ms, event, peer, study_uid, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now_ms(), event, peer, study_uid, detail],
        );
        if let Err(e) = r {
            tracing::warn!(error = %e, "audit record not written");
        }
    }

    /// Make one delivery due now, a failed one pending again with its attempts reset;
    /// returns whether there was such a delivery not yet done.
    pub fn retry_delivery(&self, id: i64) -> Result<bool, StateError> {
        let n = self.c().execute(
            "UPDATE outbox SET state = ?2, next_attempt_ms = ?3,
                 attempts = CASE WHEN state = ?4 THEN 0 ELSE attempts END
             WHERE id = ?1 AND state != ?5",
            params![
                id,
                OutboxState::Pending,
                now_ms(),
                OutboxState::Failed,
                OutboxState::Done
            ],
        )?;
        Ok(n > 0)
    }

    /// Queue a study for another run unless it has a job waiting or running; returns the
    /// new job's id.
    pub fn rerun_study(&self, study_uid: &str) -> Result<Option<i64>, StateError> {
        let busy: bool = {
            let c = self.c();
            let known: bool = c.query_row(
                // A study whose instances the retention policy removed has nothing to run on.
                "SELECT COUNT(*) > 0 FROM studies WHERE study_uid = ?1 AND state != ?2
                   AND EXISTS (SELECT 1 FROM instances WHERE study_uid = ?1)",
                params![study_uid, StudyState::Receiving],
                |r| r.get(0),
            )?;
            if !known {
                return Ok(None);
            }
            c.query_row(
                "SELECT COUNT(*) > 0 FROM jobs WHERE study_uid = ?1 AND state IN (?2, ?3, ?4)",
                params![
                    study_uid,
                    JobState::Queued,
                    JobState::Dispatched,
                    JobState::Running
                ],
                |r| r.get(0),
            )?
        };
        if busy {
            return Ok(None);
        }
        Ok(Some(self.create_job(study_uid, false)?))
    }
}
