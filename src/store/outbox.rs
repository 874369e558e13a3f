//! Output objects are written here durably before anything is sent, so a crash between
//! processing and sending loses nothing; the queue itself (one row per output and
//! destination, with attempts and next-attempt time) lives in [`super::state`].

use std::path::{Path, PathBuf};

use crate::store::durable::{create_durable_dir, write_atomic, write_atomic_many};
use crate::store::error::SpoolError;
use crate::store::hash::sha256_hex;
use crate::uid;

#[derive(Debug, Clone)]
pub struct Outbox {
    objects: PathBuf,
    results: PathBuf,
}

impl Outbox {
    pub fn open(state_dir: &Path) -> Result<Outbox, SpoolError> {
        let objects = state_dir.join("outbox");
        let results = state_dir.join("results");
        for d in [&objects, &results] {
            create_durable_dir(d).map_err(|source| SpoolError::Io {
                path: d.clone(),
                source,
            })?;
        }
        Ok(Outbox { objects, results })
    }

    /// Remove temporary files a crash left in the middle of `write_atomic`; returns how many.
    pub fn clean_tmp(&self) -> usize {
        let mut n = 0;
        for d in [&self.objects, &self.results] {
            for e in walkdir::WalkDir::new(d).into_iter().flatten() {
                let name = e.file_name().to_string_lossy();
                if e.file_type().is_file()
                    && name.starts_with('.')
                    && name.contains(".tmp-")
                    && std::fs::remove_file(e.path()).is_ok()
                {
                    n += 1;
                }
            }
        }
        n
    }

    /// Persist one output object (a complete Part-10 file); returns its path.
    pub fn persist_object(
        &self,
        sop_instance_uid: &str,
        bytes: &[u8],
    ) -> Result<PathBuf, SpoolError> {
        debug_assert!(uid::is_valid(sop_instance_uid));
        let name = format!("{}.dcm", sha256_hex(sop_instance_uid.as_bytes()));
        write_atomic(&self.objects, &name, bytes)
    }

    /// Persist several output objects with one shared durability step; returns their paths
    /// in order.
    pub fn persist_objects(&self, objects: &[(&str, &[u8])]) -> Result<Vec<PathBuf>, SpoolError> {
        let names: Vec<String> = objects
            .iter()
            .map(|(sop_instance_uid, _)| {
                debug_assert!(uid::is_valid(sop_instance_uid));
                format!("{}.dcm", sha256_hex(sop_instance_uid.as_bytes()))
            })
            .collect();
        let files: Vec<(&str, &[u8])> = names
            .iter()
            .zip(objects)
            .map(|(n, (_, b))| (n.as_str(), *b))
            .collect();
        write_atomic_many(&self.objects, &files)
    }

    /// The directory holding the predictions and run record of a study.
    pub fn results_dir(&self, study_instance_uid: &str) -> PathBuf {
        self.results.join(sha256_hex(study_instance_uid.as_bytes()))
    }
}

/// Where a study's predictions and run records are kept, for readers that do not write
/// (the status page).
pub fn results_dir_in(state_dir: &Path, study_instance_uid: &str) -> PathBuf {
    state_dir
        .join("results")
        .join(sha256_hex(study_instance_uid.as_bytes()))
}

impl Outbox {
    /// Keep the predictions JSON and run record beside the study for audit: one pair per
    /// job, plus `predictions.json`/`run.json` for the latest run.
    pub fn persist_results(
        &self,
        study_instance_uid: &str,
        job_id: i64,
        predictions_json: &str,
        run_json: &str,
    ) -> Result<PathBuf, SpoolError> {
        let dir = self.results_dir(study_instance_uid);
        let job_pred = format!("job-{job_id}-predictions.json");
        let job_run = format!("job-{job_id}-run.json");
        // One durability step for the five files (they were five fsync pairs on the path
        // between the model and the send).
        write_atomic_many(
            &dir,
            &[
                (&job_pred, predictions_json.as_bytes()),
                (&job_run, run_json.as_bytes()),
                ("predictions.json", predictions_json.as_bytes()),
                ("run.json", run_json.as_bytes()),
                ("study_instance_uid.txt", study_instance_uid.as_bytes()),
            ],
        )?;
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persist_and_clean() {
        let d = tempfile::tempdir().unwrap();
        let o = Outbox::open(d.path()).unwrap();
        let p = o.persist_object("2.25.1", b"x").unwrap();
        assert!(p.exists() && !p.to_string_lossy().contains("2.25.1"));
        std::fs::write(d.path().join("outbox/.abc.dcm.tmp-123"), b"partial").unwrap();
        let r = o.persist_results("1.2.3", 7, "{}", "{}").unwrap();
        assert!(r.join("predictions.json").exists());
        assert_eq!(o.clean_tmp(), 1);
        assert!(p.exists());
    }
}
