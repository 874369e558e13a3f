//! The outbox queue: one row per output and destination, with its attempts.

use std::path::PathBuf;

use rusqlite::params;

use super::db::{now_ms, State, StateError};
use super::schema::OutboxState;

#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub sop_uid: String,
    pub destination: String,
    pub state: OutboxState,
    pub attempts: i64,
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
    pub sop_class_uid: String,
    pub study_uid: String,
    pub path: PathBuf,
}

impl State {
    /// Outbox entries whose next attempt is due.
    pub fn due_outbox(&self, now: i64) -> Result<Vec<OutboxRow>, StateError> {
        let c = self.c();
        let mut st = c.prepare(
            "SELECT o.id, o.sop_uid, o.destination, o.state, o.attempts, o.next_attempt_ms,
                    o.last_error, p.sop_class_uid, p.study_uid, p.path
             FROM outbox o JOIN outputs p ON p.sop_uid = o.sop_uid
             WHERE o.state = ?1 AND o.next_attempt_ms <= ?2 ORDER BY o.id",
        )?;
        let rows = st
            .query_map(params![OutboxState::Pending, now], outbox_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn all_outbox(&self) -> Result<Vec<OutboxRow>, StateError> {
        let c = self.c();
        let mut st = c.prepare(
            "SELECT o.id, o.sop_uid, o.destination, o.state, o.attempts, o.next_attempt_ms,
                    o.last_error, p.sop_class_uid, p.study_uid, p.path
             FROM outbox o JOIN outputs p ON p.sop_uid = o.sop_uid ORDER BY o.id",
        )?;
        let rows = st
            .query_map([], outbox_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn outbox_delivered(&self, id: i64, warning: Option<&str>) -> Result<(), StateError> {
        let now = now_ms();
        let c = self.c();
        c.execute(
            "UPDATE outbox SET state = ?2, delivered_ms = ?3, attempts = attempts + 1, last_error = ?4
             WHERE id = ?1",
            params![id, OutboxState::Done, now, warning],
        )?;
        Ok(())
    }

    /// Keep a pending entry for later without counting an attempt: nothing was tried (its
    /// destination is not configured, or cannot be connected to as configured).
    pub fn outbox_parked(
        &self,
        id: i64,
        reason: &str,
        next_attempt_ms: i64,
    ) -> Result<(), StateError> {
        self.c().execute(
            "UPDATE outbox SET last_error = ?2, next_attempt_ms = ?3 WHERE id = ?1 AND state = ?4",
            params![id, reason, next_attempt_ms, OutboxState::Pending],
        )?;
        Ok(())
    }

    /// Make the pending entries of `destination` due now (it was configured again);
    /// returns how many.
    pub fn outbox_retry_now(&self, destination: &str) -> Result<usize, StateError> {
        let now = now_ms();
        Ok(self.c().execute(
            "UPDATE outbox SET next_attempt_ms = ?2
             WHERE destination = ?1 AND state = ?3 AND next_attempt_ms > ?2",
            params![destination, now, OutboxState::Pending],
        )?)
    }

    /// Record a failed attempt; `give_up` makes it final.
    pub fn outbox_failed(
        &self,
        id: i64,
        error: &str,
        next_attempt_ms: i64,
        give_up: bool,
    ) -> Result<(), StateError> {
        let c = self.c();
        let state = if give_up {
            OutboxState::Failed
        } else {
            OutboxState::Pending
        };
        c.execute(
            "UPDATE outbox SET state = ?2, attempts = attempts + 1, last_error = ?3,
                next_attempt_ms = ?4 WHERE id = ?1",
            params![id, state, error, next_attempt_ms],
        )?;
        Ok(())
    }
}

fn outbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxRow> {
    Ok(OutboxRow {
        id: r.get(0)?,
        sop_uid: r.get(1)?,
        destination: r.get(2)?,
        state: r.get(3)?,
        attempts: r.get(4)?,
        next_attempt_ms: r.get(5)?,
        last_error: r.get(6)?,
        sop_class_uid: r.get(7)?,
        study_uid: r.get(8)?,
        path: PathBuf::from(r.get::<_, String>(9)?),
    })
}
