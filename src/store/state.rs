//! The node's durable bookkeeping in SQLite (WAL): studies, series, instances, jobs,
//! outputs, outbox and an audit trail. Every statement is parameterised; no SQL text is
//! ever built from values.
//!
//! One connection behind a mutex: the writers (associations, assembler, worker, sender) do
//! small transactions, and a single writer is what SQLite serialises to anyway.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state database I/O: {0}")]
    Io(#[from] std::io::Error),
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Study life cycle.
pub mod study_state {
    pub const RECEIVING: &str = "receiving";
    pub const QUEUED: &str = "queued";
    pub const PROCESSING: &str = "processing";
    pub const DONE: &str = "done";
    pub const FAILED: &str = "failed";
    pub const NOT_QUALIFIED: &str = "not_qualified";
}

pub mod job_state {
    pub const QUEUED: &str = "queued";
    pub const DISPATCHED: &str = "dispatched";
    pub const RUNNING: &str = "running";
    pub const DONE: &str = "done";
    pub const FAILED: &str = "failed";
}

pub mod outbox_state {
    pub const PENDING: &str = "pending";
    pub const DONE: &str = "done";
    pub const FAILED: &str = "failed";
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    first_received_ms INTEGER NOT NULL,
    last_received_ms INTEGER NOT NULL,
    opened_ms INTEGER NOT NULL,
    runs INTEGER NOT NULL DEFAULT 0,
    last_input_hash TEXT,
    reason TEXT,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    modality TEXT NOT NULL,
    series_number TEXT NOT NULL,
    description TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    modality TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    path TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    calling_ae TEXT NOT NULL,
    peer TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    input_hash TEXT,
    forced INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    started_ms INTEGER,
    finished_ms INTEGER,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS outputs (
    sop_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    job_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_uid TEXT NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    last_error TEXT,
    delivered_ms INTEGER,
    UNIQUE(sop_uid, destination)
);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox(state, next_attempt_ms);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    event TEXT NOT NULL,
    calling_ae TEXT,
    peer TEXT,
    study_uid TEXT,
    sop_uid TEXT,
    detail TEXT
);
"#;

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
    /// [`crate::store::spool::content_hash`] of the data set.
    pub content_hash: String,
    pub size: u64,
    pub calling_ae: String,
    pub peer: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordOutcome {
    New,
    /// Same SOP Instance UID, different bytes: the earlier copy was replaced.
    Replaced,
    /// Byte-identical re-send.
    Unchanged,
}

#[derive(Debug, Clone)]
pub struct StoredInstance {
    pub sop_uid: String,
    pub series_uid: String,
    pub sop_class_uid: String,
    pub modality: String,
    pub path: PathBuf,
    /// [`crate::store::spool::content_hash`] of the data set.
    pub content_hash: String,
}

#[derive(Debug, Clone)]
pub struct StudyRow {
    pub study_uid: String,
    pub state: String,
    pub first_received_ms: i64,
    pub last_received_ms: i64,
    pub opened_ms: i64,
    pub runs: i64,
    pub last_input_hash: Option<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: i64,
    pub study_uid: String,
    pub state: String,
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

#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub sop_uid: String,
    pub destination: String,
    pub state: String,
    pub attempts: i64,
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
    pub sop_class_uid: String,
    pub study_uid: String,
    pub path: PathBuf,
}

pub struct State {
    conn: Mutex<Connection>,
    path: PathBuf,
}

/// Bring a database written by an older version up to this schema.
fn migrate(conn: &Connection) -> Result<(), StateError> {
    // Content hashes were SHA-256 in a column named after it; the values stay as they
    // are (see `same_content`).
    let old_column: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('instances') WHERE name = 'sha256'",
        [],
        |r| r.get(0),
    )?;
    if old_column {
        conn.execute_batch("ALTER TABLE instances RENAME COLUMN sha256 TO content_hash")?;
    }
    Ok(())
}

/// Whether a recorded content hash is the received instance's. A hash recorded before the
/// algorithm tag (bare SHA-256) is compared with the new file's SHA-256, so upgrading the
/// node does not make a byte-identical re-send look like a replacement (which would
/// re-open a finished study and send a second report).
fn same_content(recorded: &str, r: &InstanceRecord) -> bool {
    if recorded.starts_with(crate::store::spool::CONTENT_HASH_PREFIX) {
        return recorded == r.content_hash;
    }
    crate::store::spool::legacy_content_hash(&r.path).is_ok_and(|h| h == recorded)
}

impl State {
    pub fn open(state_dir: &Path) -> Result<State, StateError> {
        let path = state_dir.join("state.db");
        let conn = Connection::open(&path)?;
        restrict_perms(&path);
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL in WAL survives a process crash; a power loss can lose the last commits,
        // which the spool rescan at start repairs (the files are fsynced before Success).
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        for suffix in ["-wal", "-shm"] {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            restrict_perms(Path::new(&p));
        }
        Ok(State {
            conn: Mutex::new(conn),
            path,
        })
    }

    /// Open an existing database for `prima-node status` without creating anything.
    pub fn open_read_only(state_dir: &Path) -> Result<State, StateError> {
        let path = state_dir.join("state.db");
        let conn = Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(State {
            conn: Mutex::new(conn),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn c(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

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
                    params![old_study, study_state::RECEIVING, now],
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
            params![study, study_state::RECEIVING, now],
        )?;
        Ok(())
    }

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

    pub fn studies_in_state(&self, state: &str) -> Result<Vec<StudyRow>, StateError> {
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

    /// All instance paths known, for the spool rescan.
    pub fn instance_paths(&self) -> Result<Vec<(String, PathBuf)>, StateError> {
        let c = self.c();
        let mut st = c.prepare("SELECT sop_uid, path FROM instances")?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get(0)?, PathBuf::from(r.get::<_, String>(1)?)))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn forget_instance(&self, sop_uid: &str) -> Result<(), StateError> {
        self.c()
            .execute("DELETE FROM instances WHERE sop_uid = ?1", params![sop_uid])?;
        Ok(())
    }

    /// The study did not qualify for the model, or its inputs did not change since the last
    /// run: settle it without a job.
    pub fn settle_study(
        &self,
        study_uid: &str,
        state: &str,
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

    pub fn create_job(&self, study_uid: &str, forced: bool) -> Result<i64, StateError> {
        let now = now_ms();
        let mut c = self.c();
        let tx = c.transaction()?;
        tx.execute(
            "UPDATE studies SET state = ?2, reason = NULL, updated_ms = ?3 WHERE study_uid = ?1",
            params![study_uid, study_state::QUEUED, now],
        )?;
        tx.execute(
            "INSERT INTO jobs (study_uid, state, forced, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![study_uid, job_state::QUEUED, forced as i64, now],
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
            .query_map(params![job_state::QUEUED], job_row)?
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
            params![id, job_state::DISPATCHED, input_hash],
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
            params![id, job_state::RUNNING, now],
        )?;
        tx.execute(
            "UPDATE studies SET state = ?2, updated_ms = ?3 WHERE study_uid = ?1 AND state = ?4",
            params![study_uid, study_state::PROCESSING, now, study_state::QUEUED],
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
                    params![o.sop_uid, d, outbox_state::PENDING, now],
                )?;
            }
        }
        tx.execute(
            "UPDATE jobs SET state = ?2, finished_ms = ?3, error = NULL WHERE id = ?1",
            params![job_id, job_state::DONE, now],
        )?;
        let next = if input_hash == current_hash {
            study_state::DONE
        } else {
            study_state::RECEIVING
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
            params![job_id, job_state::FAILED, now, error],
        )?;
        tx.execute(
            "UPDATE studies SET state = ?2, reason = ?3, updated_ms = ?4 WHERE study_uid = ?1",
            params![study_uid, study_state::FAILED, error, now],
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
            params![job_state::QUEUED, job_state::DISPATCHED, job_state::RUNNING],
        )?;
        c.execute(
            "UPDATE studies SET state = ?1 WHERE state = ?2",
            params![study_state::QUEUED, study_state::PROCESSING],
        )?;
        let outbox: usize = c.query_row(
            "SELECT COUNT(*) FROM outbox WHERE state = ?1",
            params![outbox_state::PENDING],
            |r| r.get::<_, i64>(0),
        )? as usize;
        Ok((jobs, outbox))
    }

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
            .query_map(params![outbox_state::PENDING, now], outbox_row)?
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
            params![id, outbox_state::DONE, now, warning],
        )?;
        Ok(())
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
            outbox_state::FAILED
        } else {
            outbox_state::PENDING
        };
        c.execute(
            "UPDATE outbox SET state = ?2, attempts = attempts + 1, last_error = ?3,
                next_attempt_ms = ?4 WHERE id = ?1",
            params![id, state, error, next_attempt_ms],
        )?;
        Ok(())
    }

    /// Counts for `status` and the systemd STATUS line.
    pub fn counts(&self) -> Result<Counts, StateError> {
        let c = self.c();
        let mut studies = Vec::new();
        {
            let mut st =
                c.prepare("SELECT state, COUNT(*) FROM studies GROUP BY state ORDER BY state")?;
            for r in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                studies.push(r?);
            }
        }
        let mut outbox = Vec::new();
        {
            let mut st =
                c.prepare("SELECT state, COUNT(*) FROM outbox GROUP BY state ORDER BY state")?;
            for r in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                outbox.push(r?);
            }
        }
        let instances: i64 = c.query_row("SELECT COUNT(*) FROM instances", [], |r| r.get(0))?;
        Ok(Counts {
            studies,
            outbox,
            instances,
        })
    }

    pub fn audit(&self, event: &str, calling_ae: Option<&str>, peer: Option<&str>, detail: &str) {
        let r = self.c().execute(
            "INSERT INTO audit (at_ms, event, calling_ae, peer, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now_ms(), event, calling_ae, peer, detail],
        );
        if let Err(e) = r {
            tracing::warn!(error = %e, "audit record not written");
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub studies: Vec<(String, i64)>,
    pub outbox: Vec<(String, i64)>,
    pub instances: i64,
}

impl Counts {
    pub fn studies_in(&self, state: &str) -> i64 {
        self.studies
            .iter()
            .find(|(s, _)| s == state)
            .map_or(0, |x| x.1)
    }
    pub fn outbox_in(&self, state: &str) -> i64 {
        self.outbox
            .iter()
            .find(|(s, _)| s == state)
            .map_or(0, |x| x.1)
    }
}

fn study_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StudyRow> {
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

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        study_uid: r.get(1)?,
        state: r.get(2)?,
        attempt: r.get(3)?,
        forced: r.get::<_, i64>(4)? != 0,
    })
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

fn restrict_perms(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if p.exists() {
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(sop: &str, sha: &str) -> InstanceRecord {
        InstanceRecord {
            sop_uid: sop.into(),
            study_uid: "1.2.3".into(),
            series_uid: "1.2.3.1".into(),
            sop_class_uid: crate::config::MR_IMAGE_STORAGE.into(),
            modality: "MR".into(),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            series_number: "1".into(),
            series_description: "T1".into(),
            path: "/x".into(),
            content_hash: format!("{}{sha}", crate::store::spool::CONTENT_HASH_PREFIX),
            size: 10,
            calling_ae: "SCU".into(),
            peer: "127.0.0.1".into(),
        }
    }

    #[test]
    fn life_cycle() {
        let d = tempfile::tempdir().unwrap();
        let s = State::open(d.path()).unwrap();
        assert_eq!(
            s.record_instance(&rec("1.2.3.1.1", "aa")).unwrap(),
            RecordOutcome::New
        );
        assert_eq!(
            s.record_instance(&rec("1.2.3.1.1", "aa")).unwrap(),
            RecordOutcome::Unchanged
        );
        assert_eq!(
            s.record_instance(&rec("1.2.3.1.1", "bb")).unwrap(),
            RecordOutcome::Replaced
        );
        let st = s.study("1.2.3").unwrap().unwrap();
        assert_eq!(st.state, study_state::RECEIVING);
        let job = s.create_job("1.2.3", false).unwrap();
        assert_eq!(s.queued_jobs().unwrap().len(), 1);
        s.mark_job_dispatched(job, "h1").unwrap();
        s.mark_job_running(job, "1.2.3").unwrap();
        let out = OutputRow {
            sop_uid: "2.25.1".into(),
            kind: "sr".into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.88.11".into(),
            series_uid: "2.25.2".into(),
            path: "/o".into(),
        };
        s.finish_job_ok(
            job,
            "1.2.3",
            std::slice::from_ref(&out),
            &["A@h:1".into()],
            "h1",
            "h1",
        )
        .unwrap();
        // The same output again (a re-run after a crash) does not queue a second send.
        s.finish_job_ok(job, "1.2.3", &[out], &["A@h:1".into()], "h1", "h1")
            .unwrap();
        assert_eq!(s.study("1.2.3").unwrap().unwrap().state, study_state::DONE);
        let due = s.due_outbox(now_ms()).unwrap();
        assert_eq!(due.len(), 1);
        s.outbox_delivered(due[0].id, None).unwrap();
        assert!(s.due_outbox(now_ms()).unwrap().is_empty());
        // A new instance re-opens the study.
        s.record_instance(&rec("1.2.3.1.2", "cc")).unwrap();
        assert_eq!(
            s.study("1.2.3").unwrap().unwrap().state,
            study_state::RECEIVING
        );
        let c = s.counts().unwrap();
        assert_eq!(c.instances, 2);
        assert_eq!(c.outbox_in(outbox_state::DONE), 1);
    }

    /// A Part-10 file holding `data_set`, as the spool writes it.
    fn part10(dir: &Path, name: &str, data_set: &[u8]) -> PathBuf {
        let meta = [
            b"\x02\x00\x00\x00UL\x04\x00\x0a\x00\x00\x00".as_slice(),
            b"\x02\x00\x10\x00UI\x02\x00\x31\x00",
        ]
        .concat();
        let mut f = vec![0u8; 128];
        f.extend_from_slice(b"DICM");
        f.extend_from_slice(&meta);
        f.extend_from_slice(data_set);
        let p = dir.join(name);
        std::fs::write(&p, f).unwrap();
        p
    }

    #[test]
    fn upgrade_keeps_sha256_rows_and_recognises_identical_resends() {
        let d = tempfile::tempdir().unwrap();
        let first = part10(d.path(), "a.dcm", b"same bytes");
        let ds = crate::store::spool::data_set_of(&std::fs::read(&first).unwrap())
            .unwrap()
            .to_vec();
        assert_eq!(ds, b"same bytes");
        {
            // The schema before the column was renamed, with a row hashed by SHA-256.
            let c = Connection::open(d.path().join("state.db")).unwrap();
            c.execute_batch(&SCHEMA.replace("content_hash TEXT", "sha256 TEXT"))
                .unwrap();
            c.execute(
                "INSERT INTO instances (sop_uid, study_uid, series_uid, sop_class_uid, modality,
                    transfer_syntax, path, sha256, size, received_ms, calling_ae, peer)
                 VALUES ('1.2.3.1.1', '1.2.3', '1.2.3.1', '', 'MR', '', ?1, ?2, 10, 0, '', '')",
                params![
                    first.to_string_lossy(),
                    crate::store::spool::sha256_hex(&ds)
                ],
            )
            .unwrap();
        }
        let s = State::open(d.path()).unwrap();
        let resend = |name: &str, bytes: &[u8]| {
            let p = part10(d.path(), name, bytes);
            let mut r = rec("1.2.3.1.1", "");
            r.content_hash = crate::store::spool::content_hash(bytes);
            r.path = p;
            r
        };
        // The old row survives the migration with its value, and a byte-identical re-send
        // is still recognised; different bytes are a replacement.
        assert_eq!(s.instances_of("1.2.3").unwrap().len(), 1);
        assert_eq!(
            s.record_instance(&resend("b.dcm", b"same bytes")).unwrap(),
            RecordOutcome::Unchanged
        );
        assert_eq!(
            s.record_instance(&resend("c.dcm", b"other bytes")).unwrap(),
            RecordOutcome::Replaced
        );
        let now = s.instances_of("1.2.3").unwrap();
        assert_eq!(
            now[0].content_hash,
            crate::store::spool::content_hash(b"other bytes")
        );
        drop(s);
        // Opening a migrated database again changes nothing.
        let s = State::open(d.path()).unwrap();
        assert_eq!(s.instances_of("1.2.3").unwrap().len(), 1);
    }
}
