//! The database handle: opening it, its one connection, and what concerns every table
//! (the audit trail, the counts behind `status`).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection};

use super::schema::{migrate, OutboxState, StudyState, SCHEMA};

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

/// Milliseconds since the epoch as UTC `YYYY-MM-DD HH:MM:SS`.
pub fn utc_text(ms: i64) -> String {
    if ms <= 0 {
        return "—".into();
    }
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub struct State {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl State {
    pub fn open(state_dir: &Path) -> Result<State, StateError> {
        let path = state_dir.join("state.db");
        let conn = Connection::open(&path)?;
        restrict_perms(&path);
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL in WAL survives a process crash; a power loss can lose the last commits
        // (always a suffix of them). Success promises the spool file (fsynced with its
        // directory entry), not this row: the rescan at start indexes files the database
        // lost and re-indexes files newer than their row (a lost replacement), so every
        // acknowledged instance and its study's state come back. FULL would add a
        // serialized fsync per instance for bookkeeping the rescan rebuilds. See
        // docs/durability.md.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        for suffix in ["-wal", "-shm"] {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            restrict_perms(Path::new(&p));
        }
        // SQLite fsyncs the database and WAL files, not the directory entries it created
        // for them: a power loss right after the first start could take the files away.
        crate::store::durable::fsync_dir(state_dir)?;
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

    pub(super) fn c(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
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
    pub fn studies_in(&self, state: StudyState) -> i64 {
        self.studies
            .iter()
            .find(|(s, _)| s == state.as_str())
            .map_or(0, |x| x.1)
    }
    pub fn outbox_in(&self, state: OutboxState) -> i64 {
        self.outbox
            .iter()
            .find(|(s, _)| s == state.as_str())
            .map_or(0, |x| x.1)
    }
}

fn restrict_perms(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if p.exists() {
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600));
    }
}
