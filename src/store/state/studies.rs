//! Studies: looking them up and settling one without a job.

use rusqlite::{params, OptionalExtension};

use super::db::{now_ms, State, StateError};
use super::schema::StudyState;

#[derive(Debug, Clone)]
pub struct StudyRow {
    pub study_uid: String,
    pub state: StudyState,
    pub first_received_ms: i64,
    pub last_received_ms: i64,
    pub opened_ms: i64,
    pub runs: i64,
    pub last_input_hash: Option<String>,
    pub reason: Option<String>,
}

impl State {
    pub fn study(&self, study_uid: &str) -> Result<Option<StudyRow>, StateError> {
        let c = self.c();
        let r = c
            .query_row(
                "SELECT study_uid, state, first_received_ms, last_received_ms, opened_ms, runs,
                        last_input_hash, reason FROM studies WHERE study_uid = ?1",
                params![study_uid],
                study_row,
            )
            .optional()?;
        Ok(r)
    }

    pub fn studies_in_state(&self, state: StudyState) -> Result<Vec<StudyRow>, StateError> {
        let c = self.c();
        let mut st = c.prepare(
            "SELECT study_uid, state, first_received_ms, last_received_ms, opened_ms, runs,
                    last_input_hash, reason FROM studies WHERE state = ?1 ORDER BY first_received_ms",
        )?;
        let rows = st
            .query_map(params![state], study_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn all_studies(&self) -> Result<Vec<StudyRow>, StateError> {
        let c = self.c();
        let mut st = c.prepare(
            "SELECT study_uid, state, first_received_ms, last_received_ms, opened_ms, runs,
                    last_input_hash, reason FROM studies ORDER BY first_received_ms",
        )?;
        let rows = st
            .query_map([], study_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The study did not qualify for the model, or its inputs did not change since the last
    /// run: settle it without a job.
    pub fn settle_study(
        &self,
        study_uid: &str,
        state: StudyState,
        reason: &str,
    ) -> Result<(), StateError> {
        let now = now_ms();
        let mut c = self.c();
        let tx = c.transaction()?;
        tx.execute(
            "UPDATE studies SET state = ?2, reason = ?3, updated_ms = ?4 WHERE study_uid = ?1",
            params![study_uid, state, reason, now],
        )?;
        tx.execute(
            "INSERT INTO audit (at_ms, event, study_uid, detail) VALUES (?1, 'study-settled', ?2, ?3)",
            params![now, study_uid, format!("{state}: {reason}")],
        )?;
        tx.commit()?;
        Ok(())
    }
}

pub(super) fn study_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StudyRow> {
    Ok(StudyRow {
        study_uid: r.get(0)?,
        state: r.get(1)?,
        first_received_ms: r.get(2)?,
        last_received_ms: r.get(3)?,
        opened_ms: r.get(4)?,
        runs: r.get(5)?,
        last_input_hash: r.get(6)?,
        reason: r.get(7)?,
    })
}
