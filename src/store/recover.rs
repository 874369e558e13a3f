//! Rebuilding state at start: the database is reconciled with the spool, and a spool file
//! that cannot be indexed is moved to `<state_dir>/quarantine`, never deleted.
//!
//! Every file under `spool/objects` was acknowledged with Success once (nothing is renamed
//! there before it is durable and checked), so it may be the only copy of an instance a
//! PACS no longer holds. A read can fail for reasons that say nothing about the file
//! (EIO, EMFILE, a guard made stricter by an upgrade): deleting on failure would destroy
//! acknowledged data. Quarantined files keep their bytes and mode 0600 for an operator to
//! inspect or re-send; `prima-node status` counts them.

use std::fs;
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::store::durable::{create_durable_dir, fsync_dir};
use crate::store::hash::content_hash;
use crate::store::header::{data_set_of, read_header, HeaderError};
use crate::store::identity::{identity_of_bytes, identity_or_bytes};
use crate::store::spool::Spool;
use crate::store::state::{InstanceRecord, State, StateError};

/// The quarantine directory of a state directory.
pub fn quarantine_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("quarantine")
}

/// Files in quarantine (0 when there is no quarantine directory).
pub fn quarantined_count(state_dir: &Path) -> usize {
    fs::read_dir(quarantine_dir(state_dir))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .count()
        })
        .unwrap_or(0)
}

/// What the rescan did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rescan {
    /// Database rows whose spool file is gone.
    pub forgotten: usize,
    /// Spool files the database did not know, indexed again.
    pub indexed: usize,
    /// Known spool files newer than their record, indexed again.
    pub reindexed: usize,
    /// Spool files that could not be indexed, moved to quarantine.
    pub quarantined: usize,
    /// Spool files that could not be indexed nor moved (left where they are).
    pub left_in_place: usize,
}

/// Reconcile the database with the spool after a crash or a power loss.
pub fn rescan(spool: &Spool, state: &State, state_dir: &Path) -> Result<Rescan, StateError> {
    let mut out = Rescan::default();
    let mut known_paths = std::collections::HashSet::new();
    // Known instances whose file is newer than their record: a replacement (same SOP
    // Instance UID, new content) whose record a power loss took (see docs/durability.md).
    let mut stale = std::collections::HashMap::new();
    for (sop, path, recorded_ms) in state.instance_paths()? {
        match fs::metadata(&path) {
            Ok(m) if modified_ms(&m).is_some_and(|t| t > recorded_ms) => {
                stale.insert(path, sop);
            }
            Ok(_) => {
                known_paths.insert(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                warn!(path = %path.display(), "instance in the database but not in the spool: forgotten");
                state.forget_instance(&sop)?;
                out.forgotten += 1;
            }
            // Unreadable now is not gone: the record stays.
            Err(_) => {
                known_paths.insert(path);
            }
        }
    }
    let quarantine = quarantine_dir(state_dir);
    for path in spool.all_objects() {
        if known_paths.contains(&path) {
            continue;
        }
        match recover_instance(spool, &path) {
            Ok(rec) => {
                state.record_instance(&rec)?;
                if stale.contains_key(&path) {
                    out.reindexed += 1;
                } else {
                    out.indexed += 1;
                }
            }
            Err(reason) => match move_to_quarantine(&path, &quarantine) {
                Ok(to) => {
                    if let Some(sop) = stale.get(&path) {
                        state.forget_instance(sop)?;
                    }
                    // The path names a hash of the UID, never the UID: no PHI here.
                    warn!(
                        path = %path.display(), quarantined_as = %to.display(), %reason,
                        "spool file cannot be indexed: moved to quarantine"
                    );
                    out.quarantined += 1;
                }
                Err(e) => {
                    warn!(
                        path = %path.display(), %reason, error = %e,
                        "spool file cannot be indexed nor quarantined: left in place"
                    );
                    out.left_in_place += 1;
                }
            },
        }
    }
    Ok(out)
}

fn modified_ms(m: &fs::Metadata) -> Option<i64> {
    let d = m
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// Why a spool file cannot be indexed.
#[derive(Debug, thiserror::Error)]
enum RecoverError {
    #[error("header: {0}")]
    Header(#[source] HeaderError),
    #[error("misplaced: not at the path of its SOP Instance UID")]
    Misplaced,
    #[error("read: {0}")]
    Read(#[source] std::io::Error),
    #[error("no Part-10 data set")]
    NoDataSet,
}

/// The record of a spool file the database does not know, or why there is none.
fn recover_instance(spool: &Spool, path: &Path) -> Result<InstanceRecord, RecoverError> {
    let h = read_header(path).map_err(RecoverError::Header)?;
    if spool.path_for(&h.sop_instance_uid) != path {
        return Err(RecoverError::Misplaced);
    }
    let bytes = fs::read(path).map_err(RecoverError::Read)?;
    let ds = data_set_of(&bytes).ok_or(RecoverError::NoDataSet)?;
    // Hashed as the SCP hashes it: its identity, else the data set's bytes.
    let hash = identity_or_bytes(identity_of_bytes(&bytes), || content_hash(ds));
    Ok(InstanceRecord {
        sop_uid: h.sop_instance_uid,
        study_uid: h.study_instance_uid,
        series_uid: h.series_instance_uid,
        sop_class_uid: h.sop_class_uid,
        modality: h.modality,
        transfer_syntax: h.transfer_syntax,
        series_number: h.series_number,
        series_description: h.series_description,
        path: path.to_owned(),
        content_hash: hash,
        size: bytes.len() as u64,
        calling_ae: "(recovered)".into(),
        peer: String::new(),
    })
}

/// Move `path` into `quarantine` (same file system: a rename), durably: the quarantine
/// entry is made durable before the spool entry's removal is, so a crash in between leaves
/// the file in one place or the other, never in none.
fn move_to_quarantine(path: &Path, quarantine: &Path) -> std::io::Result<PathBuf> {
    create_durable_dir(quarantine)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unnamed".into());
    // Unique: the same name may be quarantined again after a later crash.
    let to = quarantine.join(format!(
        "{}-{name}",
        uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .get(..12)
            .unwrap_or("x")
    ));
    fs::rename(path, &to)?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(&to, fs::Permissions::from_mode(0o600));
    }
    fsync_dir(quarantine)?;
    if let Some(from) = path.parent() {
        fsync_dir(from)?;
    }
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_quarantined_not_deleted() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::open(d.path()).unwrap();
        let state = State::open(d.path()).unwrap();
        let bad = spool
            .objects_dir()
            .join("ab")
            .join(format!("{}.dcm", "ab".repeat(32)));
        fs::write(&bad, b"not dicom at all").unwrap();
        fs::set_permissions(&bad, fs::Permissions::from_mode(0o600)).unwrap();
        let r = rescan(&spool, &state, d.path()).unwrap();
        assert_eq!(
            r,
            Rescan {
                quarantined: 1,
                ..Rescan::default()
            }
        );
        assert!(!bad.exists());
        let q = quarantine_dir(d.path());
        let files: Vec<_> = fs::read_dir(&q).unwrap().flatten().collect();
        assert_eq!(files.len(), 1);
        assert_eq!(fs::read(files[0].path()).unwrap(), b"not dicom at all");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&files[0].path()), 0o600);
        assert_eq!(mode(&q), 0o700);
        assert_eq!(quarantined_count(d.path()), 1);
        // A second rescan finds nothing more to do.
        assert_eq!(rescan(&spool, &state, d.path()).unwrap(), Rescan::default());
    }

    /// A file found on restart is recorded with the identity the SCP records when it
    /// receives the instance, in whatever encoding: a re-send after a crash that took
    /// the record is unchanged.
    #[test]
    fn rescan_records_the_identity_the_scp_records() {
        use crate::store::identity::tests::{convert, mr, phantom, write, SOP};
        use crate::store::identity::{identity, IDENTITY_PREFIX};
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::open(d.path()).unwrap();
        let state = State::open(d.path()).unwrap();
        let e = d.path().join("e.dcm");
        write(
            &mr(32, 32, phantom(32, 32)),
            dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN,
            &e,
        );
        let rle = d.path().join("rle.dcm");
        convert("dcmcrle", &[], &e, &rle);
        // As the SCP receives it: meta group from the command, then the data set bytes.
        let bytes = fs::read(&rle).unwrap();
        let mut t = spool
            .begin(
                crate::config::MR_IMAGE_STORAGE,
                SOP,
                dicom_dictionary_std::uids::RLE_LOSSLESS,
                "SCU",
                0,
            )
            .unwrap();
        t.write(data_set_of(&bytes).unwrap()).unwrap();
        let committed = spool.commit(t.finish().unwrap(), SOP).unwrap();
        assert!(committed.content_hash.starts_with(IDENTITY_PREFIX));
        assert_eq!(
            Some(committed.content_hash.clone()),
            identity(&fs::read(&e).unwrap()).ok()
        );
        let r = rescan(&spool, &state, d.path()).unwrap();
        assert_eq!(r.indexed, 1);
        let rows = state.instances_of("1.2.826.0.1.3680043.2.1143.77").unwrap();
        assert_eq!(rows[0].content_hash, committed.content_hash);
    }
}
