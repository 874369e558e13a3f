//! The database schema, how an older database is brought up to it, and the values of the
//! `state` columns.

use rusqlite::Connection;

/// Declares a life-cycle enum whose values are stored as text: in the `state` columns,
/// in the cluster's JSON records and in the status page's JSON, always by the same name.
macro_rules! state_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[derive(serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The state a stored name names, if any.
            pub fn parse(text: &str) -> Option<$name> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl rusqlite::types::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.as_str()))
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                let text = v.as_str()?;
                $name::parse(text).ok_or_else(|| {
                    rusqlite::types::FromSqlError::Other(
                        format!("unknown {} {text:?}", stringify!($name)).into(),
                    )
                })
            }
        }
    };
}

pub(crate) use state_enum;

state_enum! {
    /// A study's life cycle, on the single node and in the cluster's study records.
    StudyState {
        /// Instances arriving (or arrived since the last decision).
        Receiving = "receiving",
        /// A job for the current input waits for the worker.
        Queued = "queued",
        /// The worker runs it.
        Processing = "processing",
        /// Results for the current input exist.
        Done = "done",
        Failed = "failed",
        /// Stable, but the study policy does not run the model on it.
        NotQualified = "not_qualified",
        /// Cluster ingest: every instance is replicated; the cluster decides the rest.
        Replicated = "replicated",
    }
}

state_enum! {
    /// A job's life cycle (single node).
    JobState {
        Queued = "queued",
        /// Handed to the worker's channel.
        Dispatched = "dispatched",
        Running = "running",
        Done = "done",
        Failed = "failed",
    }
}

state_enum! {
    /// One delivery of one output to one destination.
    OutboxState {
        Pending = "pending",
        Done = "done",
        /// Given up after `[outbox] max_attempts`, or by the cluster's result.
        Failed = "failed",
    }
}

state_enum! {
    /// Why a study's received instances were removed.
    EvictReason {
        /// `[storage] keep_days` after its last activity.
        Age = "age",
        /// Free space below `[storage] evict_below_free_mb`; the oldest finished first.
        Pressure = "pressure",
    }
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
CREATE INDEX IF NOT EXISTS outputs_study ON outputs(study_uid);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs(study_uid);
-- An eviction under way: written durably before any file is removed, so that a restart
-- finishes it (`store::retention`) before the rescan could take its files for arrivals
-- or its rows for lost instances. `evicting` names each file with the inode it had, so a
-- copy re-sent meanwhile (a new inode at the same path) is never removed.
CREATE TABLE IF NOT EXISTS evictions (
    study_uid TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    started_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS evicting (
    sop_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    inode INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS evicting_study ON evicting(study_uid);
-- What an eviction removed, per series: a later run reports these series as missing.
CREATE TABLE IF NOT EXISTS evicted_series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    instances INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    evicted_ms INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS evicted_series_study ON evicted_series(study_uid);
-- Audit rows past `[storage] keep_audit_days`, folded into counts per day and event.
CREATE TABLE IF NOT EXISTS audit_counts (
    day TEXT NOT NULL,
    event TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (day, event)
);
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
CREATE INDEX IF NOT EXISTS audit_at ON audit(at_ms);
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
