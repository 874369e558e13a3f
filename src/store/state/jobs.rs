//! Jobs (one run of the model over a study) and the outputs a finished job recorded.

use std::path::PathBuf;

use rusqlite::{params, OptionalExtension};

use super::db::{now_ms, State, StateError};
use super::schema::{JobState, OutboxState, StudyState};

#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: i64,
    pub study_uid: String,
    pub state: JobState,
    pub attempt: i64,
    pub forced: bool,
}

#[derive(Debug, Clone)]
pub struct OutputRow {
    pub sop_uid: String,
    pub kind: String,
    pub sop_class_uid: String,
    pub series_uid: String,
    pub path: PathBuf,
}

impl State {
    pub fn create_job(&self, study_uid: &str, forced: bool) -> Result<i64, StateError> {
        let now = now_ms();
        let mut c = self.c();
        let tx = c.transaction()?;
        tx.execute(
            "UPDATE studies SET state = ?2, reason = NULL, updated_ms = ?3 WHERE study_uid = ?1",
            params![study_uid, StudyState::Queued, now],
        )?;
        tx.execute(
            "INSERT INTO jobs (study_uid, state, forced, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![study_uid, JobState::Queued, forced as i64, now],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(id)
    }

    pub fn queued_jobs(&self) -> Result<Vec<JobRow>, StateError> {
        let c = self.c();
        let mut st = c.prepare(
            "SELECT id, study_uid, state, attempt, forced FROM jobs WHERE state = ?1 ORDER BY id",
        )?;
        let rows = st
            .query_map(params![JobState::Queued], job_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn job(&self, id: i64) -> Result<Option<JobRow>, StateError> {
        let c = self.c();
        Ok(c.query_row(
            "SELECT id, study_uid, state, attempt, forced FROM jobs WHERE id = ?1",
            params![id],
            job_row,
        )
        .optional()?)
    }

    pub fn mark_job_dispatched(&self, id: i64, input_hash: &str) -> Result<i64, StateError> {
        let c = self.c();
        c.execute(
            "UPDATE jobs SET state = ?2, input_hash = ?3, attempt = attempt + 1 WHERE id = ?1",
            params![id, JobState::Dispatched, input_hash],
        )?;
        Ok(
            c.query_row("SELECT attempt FROM jobs WHERE id = ?1", params![id], |r| {
                r.get(0)
            })?,
        )
    }

    pub fn mark_job_running(&self, id: i64, study_uid: &str) -> Result<(), StateError> {
        let now = now_ms();
        let mut c = self.c();
        let tx = c.transaction()?;
        tx.execute(
            "UPDATE jobs SET state = ?2, started_ms = ?3 WHERE id = ?1",
            params![id, JobState::Running, now],
        )?;
        tx.execute(
            "UPDATE studies SET state = ?2, updated_ms = ?3 WHERE study_uid = ?1 AND state = ?4",
            params![study_uid, StudyState::Processing, now, StudyState::Queued],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A job produced outputs (already written durably to `path`s): record them, queue
    /// them for every destination, and settle the study. If the study's inputs changed
    /// while the job ran (`current_hash` differs), it goes back to `receiving` for a re-run.
    #[allow(clippy::too_many_arguments)]
    pub fn finish_job_ok(
        &self,
        job_id: i64,
        study_uid: &str,
        outputs: &[OutputRow],
        destinations: &[String],
        input_hash: &str,
        current_hash: &str,
    ) -> Result<(), StateError> {
        let now = now_ms();
        let mut c = self.c();
        let tx = c.transaction()?;
        insert_outputs(&tx, study_uid, job_id, outputs, destinations, now)?;
        tx.execute(
            "UPDATE jobs SET state = ?2, finished_ms = ?3, error = NULL WHERE id = ?1",
            params![job_id, JobState::Done, now],
        )?;
        let next = if input_hash == current_hash {
            StudyState::Done
        } else {
            StudyState::Receiving
        };
        tx.execute(
            "UPDATE studies SET state = ?2, runs = runs + 1, last_input_hash = ?3, reason = NULL,
                updated_ms = ?4, opened_ms = CASE WHEN ?2 = 'receiving' THEN ?4 ELSE opened_ms END
             WHERE study_uid = ?1",
            params![study_uid, next, input_hash, now],
        )?;
        tx.execute(
            "INSERT INTO audit (at_ms, event, study_uid, detail) VALUES (?1, 'job-done', ?2, ?3)",
            params![
                now,
                study_uid,
                format!("job {job_id}: {} outputs", outputs.len())
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn finish_job_failed(
        &self,
        job_id: i64,
        study_uid: &str,
        error: &str,
    ) -> Result<(), StateError> {
        let now = now_ms();
        let mut c = self.c();
        let tx = c.transaction()?;
        tx.execute(
            "UPDATE jobs SET state = ?2, finished_ms = ?3, error = ?4 WHERE id = ?1",
            params![job_id, JobState::Failed, now, error],
        )?;
        tx.execute(
            "UPDATE studies SET state = ?2, reason = ?3, updated_ms = ?4 WHERE study_uid = ?1",
            params![study_uid, StudyState::Failed, error, now],
        )?;
        tx.execute(
            "INSERT INTO audit (at_ms, event, study_uid, detail) VALUES (?1, 'job-failed', ?2, ?3)",
            params![now, study_uid, format!("job {job_id}: {error}")],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Earlier outputs of a study (the predecessors of a re-run).
    pub fn outputs_of(&self, study_uid: &str) -> Result<Vec<OutputRow>, StateError> {
        let c = self.c();
        let mut st = c.prepare(
            "SELECT sop_uid, kind, sop_class_uid, series_uid, path FROM outputs
             WHERE study_uid = ?1 ORDER BY created_ms, sop_uid",
        )?;
        let rows = st
            .query_map(params![study_uid], |r| {
                Ok(OutputRow {
                    sop_uid: r.get(0)?,
                    kind: r.get(1)?,
                    sop_class_uid: r.get(2)?,
                    series_uid: r.get(3)?,
                    path: PathBuf::from(r.get::<_, String>(4)?),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// After a restart: whatever was in flight goes back to the queue.
    pub fn requeue_unfinished(&self) -> Result<(usize, usize), StateError> {
        let c = self.c();
        let jobs = c.execute(
            "UPDATE jobs SET state = ?1 WHERE state IN (?2, ?3)",
            params![JobState::Queued, JobState::Dispatched, JobState::Running],
        )?;
        c.execute(
            "UPDATE studies SET state = ?1 WHERE state = ?2",
            params![StudyState::Queued, StudyState::Processing],
        )?;
        let outbox: usize = c.query_row(
            "SELECT COUNT(*) FROM outbox WHERE state = ?1",
            params![OutboxState::Pending],
            |r| r.get::<_, i64>(0),
        )? as usize;
        Ok((jobs, outbox))
    }
}

/// A job's outputs recorded and queued for every destination, inside the caller's
/// transaction (the single node's finished job, a cluster result claimed for delivery).
pub(super) fn insert_outputs(
    tx: &rusqlite::Transaction<'_>,
    study_uid: &str,
    job_id: i64,
    outputs: &[OutputRow],
    destinations: &[String],
    now: i64,
) -> Result<(), StateError> {
    for o in outputs {
        tx.execute(
            "INSERT OR IGNORE INTO outputs (sop_uid, study_uid, job_id, kind, sop_class_uid,
                series_uid, path, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                o.sop_uid,
                study_uid,
                job_id,
                o.kind,
                o.sop_class_uid,
                o.series_uid,
                o.path.to_string_lossy(),
                now
            ],
        )?;
        for d in destinations {
            tx.execute(
                "INSERT OR IGNORE INTO outbox (sop_uid, destination, state, next_attempt_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                params![o.sop_uid, d, OutboxState::Pending, now],
            )?;
        }
    }
    Ok(())
}

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        study_uid: r.get(1)?,
        state: r.get(2)?,
        attempt: r.get(3)?,
        forced: r.get::<_, i64>(4)? != 0,
    })
}
