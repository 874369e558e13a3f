//! The bookkeeping of retention (`crate::store::retention` decides and removes files):
//! what each study holds on disk, an eviction's durable intent and its end, the series it
//! removed, and the pruning of old records and audit rows.

use std::path::PathBuf;

use rusqlite::{params, OptionalExtension};

use super::db::{now_ms, State, StateError};
use super::schema::{EvictReason, StudyState};

/// One study that holds received instances, with what retention decides on.
#[derive(Debug, Clone, PartialEq)]
pub struct Holding {
    pub study_uid: String,
    pub state: StudyState,
    pub instances: u64,
    pub bytes: u64,
    pub first_received_ms: i64,
    pub last_received_ms: i64,
    /// The latest of: last instance received, last run finished, last result delivered.
    pub last_activity_ms: i64,
    /// Jobs not finished or deliveries pending: the study is not done with its files.
    pub unfinished: bool,
    /// An eviction of it is under way.
    pub evicting: bool,
}

/// An eviction's durable intent: the files to remove with the inode each had.
#[derive(Debug, Clone, PartialEq)]
pub struct EvictionIntent {
    pub study_uid: String,
    pub reason: EvictReason,
    pub started_ms: i64,
    /// (SOP Instance UID, path, inode).
    pub files: Vec<(String, PathBuf, u64)>,
}

/// What an eviction removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EvictionRecord {
    pub instances: u64,
    pub bytes: u64,
}

/// A series whose instances an eviction removed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EvictedSeries {
    pub series_uid: String,
    pub instances: u64,
    pub bytes: u64,
    pub evicted_ms: i64,
    pub reason: EvictReason,
}

/// A study whose records were pruned, with the files that went with them.
#[derive(Debug, Clone, PartialEq)]
pub struct PrunedStudy {
    pub study_uid: String,
    pub output_paths: Vec<PathBuf>,
}

impl State {
    /// Every study holding received instances.
    pub fn holdings(&self) -> Result<Vec<Holding>, StateError> {
        let c = self.c();
        let mut st = c.prepare(
            "SELECT s.study_uid, s.state, COUNT(i.sop_uid), COALESCE(SUM(i.size), 0),
                    s.first_received_ms, s.last_received_ms,
                    (SELECT MAX(finished_ms) FROM jobs j WHERE j.study_uid = s.study_uid),
                    (SELECT MAX(o.delivered_ms) FROM outputs p JOIN outbox o ON o.sop_uid = p.sop_uid
                      WHERE p.study_uid = s.study_uid),
                    (SELECT COUNT(*) FROM jobs j WHERE j.study_uid = s.study_uid
                      AND j.state NOT IN ('done', 'failed'))
                  + (SELECT COUNT(*) FROM outputs p JOIN outbox o ON o.sop_uid = p.sop_uid
                      WHERE p.study_uid = s.study_uid AND o.state = 'pending'),
                    EXISTS (SELECT 1 FROM evictions e WHERE e.study_uid = s.study_uid)
             FROM studies s JOIN instances i ON i.study_uid = s.study_uid
             GROUP BY s.study_uid ORDER BY s.study_uid",
        )?;
        let rows = st
            .query_map([], |r| {
                let last_received_ms: i64 = r.get(5)?;
                let finished: Option<i64> = r.get(6)?;
                let delivered: Option<i64> = r.get(7)?;
                Ok(Holding {
                    study_uid: r.get(0)?,
                    state: r.get(1)?,
                    instances: r.get::<_, i64>(2)? as u64,
                    bytes: r.get::<_, i64>(3)? as u64,
                    first_received_ms: r.get(4)?,
                    last_received_ms,
                    last_activity_ms: last_received_ms
                        .max(finished.unwrap_or(0))
                        .max(delivered.unwrap_or(0)),
                    unfinished: r.get::<_, i64>(8)? > 0,
                    evicting: r.get(9)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The instances of a study recorded before `started_ms` (those an eviction that
    /// starts then may remove): SOP Instance UID and path.
    pub fn instances_recorded_before(
        &self,
        study_uid: &str,
        started_ms: i64,
    ) -> Result<Vec<(String, PathBuf)>, StateError> {
        let c = self.c();
        let mut st = c.prepare(
            "SELECT sop_uid, path FROM instances WHERE study_uid = ?1 AND received_ms < ?2
             ORDER BY sop_uid",
        )?;
        let rows = st
            .query_map(params![study_uid, started_ms], |r| {
                Ok((r.get(0)?, PathBuf::from(r.get::<_, String>(1)?)))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Record an eviction's intent, durably (a synchronous commit, where the rest of the
    /// database commits at NORMAL): files are removed only after this returns.
    /// False, and nothing recorded, when the study is no longer finished (an instance
    /// arrived, a re-run was asked for) since it was planned.
    pub fn begin_eviction(&self, intent: &EvictionIntent) -> Result<bool, StateError> {
        let mut c = self.c();
        c.pragma_update(None, "synchronous", "FULL")?;
        let r = (|| -> Result<bool, StateError> {
            let tx = c.transaction()?;
            let finished: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM studies s WHERE s.study_uid = ?1
                   AND s.state IN ('done', 'failed', 'not_qualified')
                   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.study_uid = ?1
                                   AND j.state NOT IN ('done', 'failed'))
                   AND NOT EXISTS (SELECT 1 FROM outputs p JOIN outbox o ON o.sop_uid = p.sop_uid
                                   WHERE p.study_uid = ?1 AND o.state = 'pending'))",
                params![intent.study_uid],
                |r| r.get(0),
            )?;
            if !finished {
                return Ok(false);
            }
            tx.execute(
                "INSERT OR REPLACE INTO evictions (study_uid, reason, started_ms) VALUES (?1, ?2, ?3)",
                params![intent.study_uid, intent.reason, intent.started_ms],
            )?;
            {
                let mut ins = tx.prepare(
                    "INSERT OR REPLACE INTO evicting (sop_uid, study_uid, path, inode)
                     VALUES (?1, ?2, ?3, ?4)",
                )?;
                for (sop, path, inode) in &intent.files {
                    ins.execute(params![
                        sop,
                        intent.study_uid,
                        path.to_string_lossy(),
                        *inode as i64
                    ])?;
                }
            }
            tx.commit()?;
            Ok(true)
        })();
        c.pragma_update(None, "synchronous", "NORMAL")?;
        r
    }

    /// Evictions recorded and not ended (a crash came between): finished at start.
    pub fn pending_evictions(&self) -> Result<Vec<EvictionIntent>, StateError> {
        let c = self.c();
        let heads: Vec<(String, EvictReason, i64)> = c
            .prepare("SELECT study_uid, reason, started_ms FROM evictions ORDER BY started_ms")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::new();
        for (study_uid, reason, started_ms) in heads {
            let files = c
                .prepare(
                    "SELECT sop_uid, path, inode FROM evicting WHERE study_uid = ?1 ORDER BY sop_uid",
                )?
                .query_map(params![study_uid], |r| {
                    Ok((
                        r.get(0)?,
                        PathBuf::from(r.get::<_, String>(1)?),
                        r.get::<_, i64>(2)? as u64,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            out.push(EvictionIntent {
                study_uid,
                reason,
                started_ms,
                files,
            });
        }
        Ok(out)
    }

    /// End an eviction whose files are gone (and their directories synced): the rows of
    /// the instances it named that were not received again since it started go, what it
    /// removed is recorded per series, and an audit row says why and how much.
    pub fn end_eviction(&self, intent: &EvictionIntent) -> Result<EvictionRecord, StateError> {
        let now = now_ms();
        let mut c = self.c();
        let tx = c.transaction()?;
        let gone = "SELECT i.sop_uid FROM instances i JOIN evicting e ON e.sop_uid = i.sop_uid
                    WHERE e.study_uid = ?1 AND i.received_ms < ?2";
        let (instances, bytes): (i64, i64) = tx.query_row(
            &format!(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM instances WHERE sop_uid IN ({gone})"
            ),
            params![intent.study_uid, intent.started_ms],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        tx.execute(
            &format!(
                "INSERT INTO evicted_series (series_uid, study_uid, instances, bytes, evicted_ms, reason)
                 SELECT series_uid, study_uid, COUNT(*), SUM(size), ?3, ?4 FROM instances
                 WHERE sop_uid IN ({gone}) GROUP BY series_uid
                 ON CONFLICT(series_uid) DO UPDATE SET study_uid = excluded.study_uid,
                    instances = excluded.instances, bytes = excluded.bytes,
                    evicted_ms = excluded.evicted_ms, reason = excluded.reason"
            ),
            params![intent.study_uid, intent.started_ms, now, intent.reason],
        )?;
        tx.execute(
            &format!("DELETE FROM instances WHERE sop_uid IN ({gone})"),
            params![intent.study_uid, intent.started_ms],
        )?;
        tx.execute(
            "DELETE FROM evicting WHERE study_uid = ?1",
            params![intent.study_uid],
        )?;
        tx.execute(
            "DELETE FROM evictions WHERE study_uid = ?1",
            params![intent.study_uid],
        )?;
        tx.execute(
            "INSERT INTO audit (at_ms, event, study_uid, detail) VALUES (?1, 'evict', ?2, ?3)",
            params![
                now,
                intent.study_uid,
                format!(
                    "reason={} instances={instances} bytes={bytes}",
                    intent.reason
                )
            ],
        )?;
        tx.commit()?;
        Ok(EvictionRecord {
            instances: instances as u64,
            bytes: bytes as u64,
        })
    }

    /// The series of a study whose instances were removed and that hold none now.
    pub fn evicted_series_of(&self, study_uid: &str) -> Result<Vec<EvictedSeries>, StateError> {
        let c = self.c();
        let mut st = c.prepare(
            "SELECT e.series_uid, e.instances, e.bytes, e.evicted_ms, e.reason FROM evicted_series e
             WHERE e.study_uid = ?1
               AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.series_uid = e.series_uid)
             ORDER BY e.series_uid",
        )?;
        let rows = st
            .query_map(params![study_uid], |r| {
                Ok(EvictedSeries {
                    series_uid: r.get(0)?,
                    instances: r.get::<_, i64>(1)? as u64,
                    bytes: r.get::<_, i64>(2)? as u64,
                    evicted_ms: r.get(3)?,
                    reason: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Finished studies holding no instance whose last activity is before `before_ms`:
    /// their records may be pruned (with the output files listed).
    pub fn prunable_studies(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<PrunedStudy>, StateError> {
        let c = self.c();
        let studies: Vec<String> = c
            .prepare(
                "SELECT s.study_uid FROM studies s
                 WHERE s.state IN ('done', 'failed', 'not_qualified')
                   AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.study_uid = s.study_uid)
                   AND NOT EXISTS (SELECT 1 FROM evictions e WHERE e.study_uid = s.study_uid)
                   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.study_uid = s.study_uid
                                   AND j.state NOT IN ('done', 'failed'))
                   AND NOT EXISTS (SELECT 1 FROM outputs p JOIN outbox o ON o.sop_uid = p.sop_uid
                                   WHERE p.study_uid = s.study_uid AND o.state = 'pending')
                   AND MAX(s.updated_ms, s.last_received_ms,
                           COALESCE((SELECT MAX(finished_ms) FROM jobs j WHERE j.study_uid = s.study_uid), 0),
                           COALESCE((SELECT MAX(o.delivered_ms) FROM outputs p JOIN outbox o
                                     ON o.sop_uid = p.sop_uid WHERE p.study_uid = s.study_uid), 0)) < ?1
                 ORDER BY s.last_received_ms LIMIT ?2",
            )?
            .query_map(params![before_ms, limit as i64], |r| r.get(0))?
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::new();
        for study_uid in studies {
            let output_paths = c
                .prepare("SELECT path FROM outputs WHERE study_uid = ?1")?
                .query_map(params![study_uid], |r| {
                    Ok(PathBuf::from(r.get::<_, String>(0)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            out.push(PrunedStudy {
                study_uid,
                output_paths,
            });
        }
        Ok(out)
    }

    /// Forget a pruned study's records (its files are already removed), unless something
    /// arrived for it meanwhile. True when it was forgotten.
    pub fn forget_study(&self, study_uid: &str) -> Result<bool, StateError> {
        let mut c = self.c();
        let tx = c.transaction()?;
        let held: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM instances WHERE study_uid = ?1)
                 OR NOT EXISTS (SELECT 1 FROM studies WHERE study_uid = ?1
                                AND state IN ('done', 'failed', 'not_qualified'))",
            params![study_uid],
            |r| r.get(0),
        )?;
        if held {
            return Ok(false);
        }
        tx.execute(
            "DELETE FROM outbox WHERE sop_uid IN (SELECT sop_uid FROM outputs WHERE study_uid = ?1)",
            params![study_uid],
        )?;
        for table in ["outputs", "jobs", "series", "evicted_series", "studies"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE study_uid = ?1"),
                params![study_uid],
            )?;
        }
        tx.execute(
            "INSERT INTO audit (at_ms, event, study_uid, detail) VALUES (?1, 'prune', ?2, 'records past keep_records_days')",
            params![now_ms(), study_uid],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Fold audit rows older than `before_ms` into per-day counts; returns how many.
    pub fn fold_audit(&self, before_ms: i64) -> Result<u64, StateError> {
        let mut c = self.c();
        let tx = c.transaction()?;
        tx.execute(
            "INSERT INTO audit_counts (day, event, count)
             SELECT date(at_ms / 1000, 'unixepoch'), event, COUNT(*) FROM audit WHERE at_ms < ?1
             GROUP BY 1, 2
             ON CONFLICT(day, event) DO UPDATE SET count = count + excluded.count",
            params![before_ms],
        )?;
        let n = tx.execute("DELETE FROM audit WHERE at_ms < ?1", params![before_ms])?;
        tx.commit()?;
        Ok(n as u64)
    }

    /// Audit rows kept and folded counts, per event (for `status` and tests).
    pub fn audit_totals(&self) -> Result<Vec<(String, u64, u64)>, StateError> {
        let c = self.c();
        let mut st = c.prepare(
            "SELECT event, SUM(rows), SUM(folded) FROM (
                SELECT event, COUNT(*) AS rows, 0 AS folded FROM audit GROUP BY event
                UNION ALL
                SELECT event, 0, SUM(count) FROM audit_counts GROUP BY event)
             GROUP BY event ORDER BY event",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// When the study's instances were last removed, and why (for the status page).
    pub fn last_eviction_of(
        &self,
        study_uid: &str,
    ) -> Result<Option<(i64, EvictReason)>, StateError> {
        Ok(self
            .c()
            .query_row(
                "SELECT evicted_ms, reason FROM evicted_series WHERE study_uid = ?1
                 ORDER BY evicted_ms DESC LIMIT 1",
                params![study_uid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }
}
