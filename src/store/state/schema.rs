//! The database schema, how an older database is brought up to it, and the values of the
//! `state` columns.

use rusqlite::Connection;

/// Study life cycle.
pub mod study_state {
    pub const RECEIVING: &str = "receiving";
    pub const QUEUED: &str = "queued";
    pub const PROCESSING: &str = "processing";
    pub const DONE: &str = "done";
    pub const FAILED: &str = "failed";
    pub const NOT_QUALIFIED: &str = "not_qualified";
    /// Cluster ingest: every instance is replicated; the cluster decides the rest.
    pub const REPLICATED: &str = "replicated";
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

pub(super) const SCHEMA: &str = r#"
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

/// Bring a database written by an older version up to this schema.
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
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
