//! Durable instance storage.
//!
//! An instance is streamed into a temporary file under `spool/tmp` (Part-10 preamble and
//! meta group first, then the data set bytes exactly as received), checked, fdatasynced,
//! and renamed to `spool/objects/<h0h1>/<sha256(SOP Instance UID)>.dcm`, after which the
//! directory is fsynced. Only then may the SCP answer Success: the file content AND its
//! directory entry are durable. The path never contains a raw UID: a UID is
//! attacker-controlled text. A duplicate SOP Instance UID lands on the same path, so
//! `rename` replaces the earlier copy atomically.
//!
//! The 256 shard directories are created (and made durable) when the spool is opened:
//! creating directories while receiving cost more CPU than anything else in the C-STORE
//! path, and each new one needed its parent fsynced too.
//!
//! Commits overlap: each instance's sync/rename/directory-sync runs on a pool of sync
//! threads as soon as its header is checked, concurrently with every other association's.
//! Every fsync ends in a device cache flush, and flushes were what bounded ingest; issued
//! at the same time from several threads they are merged by the block layer, so
//! concurrent instances share flushes. (This replaced a single committer thread taking
//! batches: an instance arriving during a batch waited for that batch and then its own,
//! ~1.5 batch latencies; here it waits for its own two fsyncs only. `syncfs` would also
//! share flushes but writes out every other process's dirty data on the filesystem,
//! which made latency depend on unrelated writers.) Write-back of each file starts while
//! it is still arriving (every 256 KiB) and for the rest at its last byte. The content is
//! durable before the rename and the entry before Success.
//!
//! What is recorded for the instance is its identity ([`crate::store::identity`]: the
//! decoded data set, so a re-send in another transfer syntax is "unchanged"). It needs the
//! whole file parsed and its pixel data decoded, so it is computed while the commit's
//! fsyncs wait for the device, on another thread, from a second descriptor of the same
//! file (the rename does not disturb it). The byte hash, fed as the data arrives, is what
//! is recorded where the identity cannot be computed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use dicom_object::FileMetaTableBuilder;

use crate::store::durable::{
    commit_file, create_durable_dir, fsync_dir, in_parallel, run_on_pool, start_writeback, SyncJob,
};
use crate::store::error::io_err;
pub use crate::store::error::SpoolError;
use crate::store::hash::ContentHasher;
use crate::store::identity::{identity_of_file, identity_or_bytes, IdentityError};
use crate::uid::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};

use crate::store::durable::{create_private_dir, free_mb};
use crate::store::hash::sha256_hex;

/// The spool directory tree.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    tmp: PathBuf,
    objects: PathBuf,
    /// Hard cap on one instance, so a peer cannot stream forever into one file.
    pub max_instance_bytes: u64,
}

impl Spool {
    pub fn open(state_dir: &Path) -> Result<Spool, SpoolError> {
        let root = state_dir.join("spool");
        let tmp = root.join("tmp");
        let objects = root.join("objects");
        for d in [&root, &tmp, &objects] {
            create_durable_dir(d).map_err(io_err(d))?;
        }
        let mut created = Vec::new();
        for i in 0..=255u8 {
            let d = objects.join(format!("{i:02x}"));
            if !d.is_dir() {
                create_private_dir(&d).map_err(io_err(&d))?;
                created.push(d);
            }
        }
        if !created.is_empty() {
            // Each new shard, then their parent: in parallel, so the first start pays a
            // few merged device flushes rather than 257 in a row.
            let jobs = created
                .iter()
                .map(|d| {
                    let d = d.clone();
                    Box::new(move || fsync_dir(&d)) as SyncJob
                })
                .collect();
            for (d, r) in created.iter().zip(in_parallel(jobs)) {
                r.map_err(io_err(d))?;
            }
            fsync_dir(&objects).map_err(io_err(&objects))?;
        }
        Ok(Spool {
            root,
            tmp,
            objects,
            max_instance_bytes: 16 * 1024 * 1024 * 1024,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn objects_dir(&self) -> &Path {
        &self.objects
    }

    /// Where the instance with this SOP Instance UID lives.
    pub fn path_for(&self, sop_instance_uid: &str) -> PathBuf {
        let h = sha256_hex(sop_instance_uid.as_bytes());
        self.objects.join(&h[0..2]).join(format!("{h}.dcm"))
    }

    /// Remove temporary files left by a crash; returns how many.
    pub fn clean_tmp(&self) -> usize {
        let mut n = 0;
        if let Ok(rd) = fs::read_dir(&self.tmp) {
            for e in rd.flatten() {
                if fs::remove_file(e.path()).is_ok() {
                    n += 1;
                }
            }
        }
        n
    }

    /// Every `.dcm` file under `objects/` (for rebuilding state after a crash).
    pub fn all_objects(&self) -> Vec<PathBuf> {
        walkdir::WalkDir::new(&self.objects)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .map(|e| e.into_path())
            .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
            .collect()
    }

    /// Remove the spool file at `path` if it is still the file with `inode` (retention's
    /// removal: a copy committed since has another inode and stays). Not synced: the
    /// caller syncs the directories once for all its removals.
    pub fn remove_if_inode(&self, path: &Path, inode: u64) -> io::Result<Removal> {
        use std::os::unix::fs::MetadataExt;
        let _shard = shard_lock(path);
        match fs::symlink_metadata(path) {
            Ok(m) if m.ino() == inode => {}
            Ok(_) => return Ok(Removal::Replaced),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Removal::Absent),
            Err(e) => return Err(e),
        }
        match fs::remove_file(path) {
            Ok(()) => Ok(Removal::Removed),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Removal::Absent),
            Err(e) => Err(e),
        }
    }

    pub fn check_space(&self, floor_mb: u64) -> Result<(), SpoolError> {
        let free = free_mb(&self.root).map_err(io_err(&self.root))?;
        if free < floor_mb {
            return Err(SpoolError::LowSpace {
                free_mb: free,
                floor_mb,
            });
        }
        Ok(())
    }

    /// Start receiving an instance: a temporary Part-10 file whose meta group is built from
    /// the C-STORE command and the presentation context.
    pub fn begin(
        &self,
        sop_class_uid: &str,
        sop_instance_uid: &str,
        transfer_syntax: &str,
        calling_ae: &str,
        floor_mb: u64,
    ) -> Result<TempInstance, SpoolError> {
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(sop_class_uid)
            .media_storage_sop_instance_uid(sop_instance_uid)
            .transfer_syntax(transfer_syntax)
            .source_application_entity_title(calling_ae.trim())
            .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
            .build()
            .map_err(|e| SpoolError::Meta(e.to_string()))?;
        let path = self
            .tmp
            .join(format!("{}.part", uuid::Uuid::new_v4().simple()));
        // Readable too: the identity is read back through it (see `Hashing`).
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut head = Vec::with_capacity(512);
        head.extend_from_slice(&[0u8; 128]);
        head.extend_from_slice(b"DICM");
        let r = meta
            .write(&mut head)
            .map_err(|e| SpoolError::Meta(e.to_string()))
            .and_then(|_| file.write_all(&head).map_err(io_err(&path)));
        if let Err(e) = r {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        let head_len = head.len() as u64;
        Ok(TempInstance {
            head_len,
            // Small on purpose: the command-sized writes of the meta group are gathered, while
            // data PDVs (usually ≥ this) go straight to the kernel without an extra copy.
            file: Some(std::io::BufWriter::with_capacity(32 * 1024, file)),
            path,
            hasher: ContentHasher::default(),
            written: 0,
            max_bytes: self.max_instance_bytes,
            root: self.root.clone(),
            floor_mb,
            next_space_check: SPACE_CHECK_EVERY,
            next_writeback: WRITEBACK_EVERY,
        })
    }

    /// Make a finished temporary file durable and move it into place (on the sync pool, its
    /// fsyncs sharing device flushes with other instances' commits), and compute the
    /// content hash to record ([`crate::store::identity`]) on this thread meanwhile.
    /// Blocks; durable when this returns Ok: the content was fdatasynced before the
    /// rename, and the directory entry after it.
    /// Not for async contexts: use [`Spool::commit_async`] there.
    pub fn commit(
        &self,
        done: FinishedInstance,
        sop_instance_uid: &str,
    ) -> Result<Committed, SpoolError> {
        let (dst, answer, hashing) = self.submit(done, sop_instance_uid);
        let content_hash = hashing.run();
        Self::answered(dst, answer.blocking_recv()).map(|path| Committed { path, content_hash })
    }

    /// [`Spool::commit`] for async callers: the task waits for the fsyncs and the identity
    /// (on the blocking pool) without blocking a runtime thread, so other associations are
    /// served meanwhile.
    pub async fn commit_async(
        &self,
        done: FinishedInstance,
        sop_instance_uid: &str,
    ) -> Result<Committed, SpoolError> {
        let (dst, answer, hashing) = self.submit(done, sop_instance_uid);
        let byte_hash = hashing.byte_hash.clone();
        let content_hash = tokio::task::spawn_blocking(move || hashing.run());
        let committed = Self::answered(dst, answer.await);
        // A panic outside the decoders (which are caught) leaves the byte hash.
        let content_hash = content_hash.await.unwrap_or(byte_hash);
        committed.map(|path| Committed { path, content_hash })
    }

    fn submit(
        &self,
        done: FinishedInstance,
        sop_instance_uid: &str,
    ) -> (
        PathBuf,
        tokio::sync::oneshot::Receiver<io::Result<()>>,
        Hashing,
    ) {
        let dst = self.path_for(sop_instance_uid);
        let (reply, answer) = tokio::sync::oneshot::channel();
        let FinishedInstance {
            path,
            file,
            content_hash,
            ..
        } = done;
        // Read through a second descriptor: positional reads, unaffected by the rename.
        let hashing = Hashing {
            file: file.try_clone(),
            byte_hash: content_hash,
        };
        let (to, objects) = (dst.clone(), self.objects.clone());
        run_on_pool(Box::new(move || {
            // Never between an eviction's inode check and its removal of this path.
            let _shard = shard_lock(&to);
            let _ = reply.send(commit_file(&file, &path, &to, &objects));
        }));
        (dst, answer, hashing)
    }

    fn answered(
        dst: PathBuf,
        r: Result<io::Result<()>, tokio::sync::oneshot::error::RecvError>,
    ) -> Result<PathBuf, SpoolError> {
        let r = r.unwrap_or_else(|_| Err(io::Error::other("spool commit job failed")));
        match r {
            Ok(()) => Ok(dst),
            Err(source) => Err(SpoolError::Io { path: dst, source }),
        }
    }
}

/// What [`Spool::remove_if_inode`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// No file there.
    Absent,
    /// Another file there now (received again): left.
    Replaced,
}

/// One lock per spool shard directory, taken by a commit's rename and by retention's
/// check-then-remove of a file there: a re-sent copy renamed between the check and the
/// removal would otherwise be removed after it was acknowledged.
fn shard_lock(path: &Path) -> std::sync::MutexGuard<'static, ()> {
    static SHARDS: [std::sync::Mutex<()>; 256] = [const { std::sync::Mutex::new(()) }; 256];
    let shard = path
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| u8::from_str_radix(&n.to_string_lossy(), 16).ok())
        .unwrap_or(0);
    SHARDS[shard as usize]
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// A committed instance: where it is, and the content hash to record for it (its
/// identity, or its byte hash where that cannot be computed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub path: PathBuf,
    pub content_hash: String,
}

/// The identity computation that overlaps a commit's fsyncs.
struct Hashing {
    file: io::Result<File>,
    byte_hash: String,
}

impl Hashing {
    fn run(self) -> String {
        let identity = self
            .file
            .map_err(IdentityError::Read)
            .and_then(|f| identity_of_file(&f));
        identity_or_bytes(identity, || self.byte_hash)
    }
}

const SPACE_CHECK_EVERY: u64 = 32 * 1024 * 1024;
const WRITEBACK_EVERY: u64 = 256 * 1024;

/// An instance being received. Dropping it without `finish` deletes the file.
pub struct TempInstance {
    /// Preamble and meta group: part of the file, not of `written`.
    head_len: u64,
    file: Option<std::io::BufWriter<File>>,
    path: PathBuf,
    hasher: ContentHasher,
    written: u64,
    max_bytes: u64,
    root: PathBuf,
    floor_mb: u64,
    next_space_check: u64,
    next_writeback: u64,
}

/// A fully written temporary instance, not yet durable (see [`Spool::commit`]).
#[derive(Debug)]
pub struct FinishedInstance {
    pub path: PathBuf,
    file: File,
    /// [`crate::store::hash::content_hash`] of the data set bytes (not the meta group):
    /// recorded where the identity cannot be computed.
    pub content_hash: String,
    /// The file's size (what retention frees by removing it).
    pub size: u64,
}

impl FinishedInstance {
    pub fn discard(self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl TempInstance {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        self.written += data.len() as u64;
        if self.written > self.max_bytes {
            return Err(SpoolError::TooLarge(self.max_bytes));
        }
        // Long instances re-check the floor so one huge object cannot fill the disk.
        if self.written >= self.next_space_check {
            self.next_space_check = self.written + SPACE_CHECK_EVERY;
            let free = free_mb(&self.root).map_err(io_err(&self.root))?;
            if free < self.floor_mb {
                return Err(SpoolError::LowSpace {
                    free_mb: free,
                    floor_mb: self.floor_mb,
                });
            }
        }
        self.hasher.update(data);
        let f = self.file.as_mut().expect("open until finish");
        f.write_all(data).map_err(io_err(&self.path))?;
        // Start writing to disk while the rest is still arriving: the fdatasync before
        // Success then waits only for the tail and the device flush.
        if self.written >= self.next_writeback {
            self.next_writeback = self.written + WRITEBACK_EVERY;
            start_writeback(f.get_ref());
        }
        Ok(())
    }

    /// All bytes received: flush them to the kernel and start write-back (durability is
    /// [`Spool::commit`]'s job, after the header was checked).
    pub fn finish(mut self) -> Result<FinishedInstance, SpoolError> {
        let w = self.file.take().expect("open until finish");
        let path = self.path.clone();
        let file = match w.into_inner().map_err(|e| e.into_error()) {
            Ok(f) => f,
            Err(e) => {
                let _ = fs::remove_file(&path);
                return Err(SpoolError::Io { path, source: e });
            }
        };
        start_writeback(&file);
        let content_hash = self.hasher.finalize();
        let size = self.head_len + self.written;
        // Defuse Drop: the file is handed over.
        self.path = PathBuf::new();
        Ok(FinishedInstance {
            path,
            file,
            content_hash,
            size,
        })
    }
}

impl Drop for TempInstance {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            self.file.take();
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN;

    #[test]
    fn paths_never_contain_the_uid() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        let p = s.path_for("1.2.3");
        assert!(!p.to_string_lossy().contains("1.2.3"));
        assert!(p.starts_with(s.objects_dir()));
    }

    #[test]
    fn stream_commit_replace() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        let mut t = s
            .begin(
                crate::config::MR_IMAGE_STORAGE,
                "1.2.3.4",
                EXPLICIT_VR_LITTLE_ENDIAN,
                "SCU",
                0,
            )
            .unwrap();
        t.write(b"\x08\x00\x60\x00CS\x02\x00MR").unwrap();
        let f = t.finish().unwrap();
        let p = s.commit(f, "1.2.3.4").unwrap().path;
        assert!(p.exists());
        let t = s
            .begin(
                crate::config::MR_IMAGE_STORAGE,
                "1.2.3.4",
                EXPLICIT_VR_LITTLE_ENDIAN,
                "SCU",
                0,
            )
            .unwrap();
        let tmp = t.path().to_owned();
        drop(t);
        assert!(!tmp.exists(), "dropped temp file removed");
        assert_eq!(s.all_objects().len(), 1);
        assert_eq!(s.clean_tmp(), 0);
        assert!(s.check_space(u64::MAX).is_err());
    }

    #[test]
    fn concurrent_commits_all_land() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        std::thread::scope(|sc| {
            for i in 0..12 {
                let s = s.clone();
                sc.spawn(move || {
                    let uid = format!("1.2.3.{i}");
                    let mut t = s
                        .begin(
                            crate::config::MR_IMAGE_STORAGE,
                            &uid,
                            EXPLICIT_VR_LITTLE_ENDIAN,
                            "SCU",
                            0,
                        )
                        .unwrap();
                    t.write(format!("data {i}").as_bytes()).unwrap();
                    let p = s.commit(t.finish().unwrap(), &uid).unwrap().path;
                    assert_eq!(p, s.path_for(&uid));
                    assert!(std::fs::read(&p)
                        .unwrap()
                        .ends_with(format!("data {i}").as_bytes()));
                });
            }
        });
        assert_eq!(s.all_objects().len(), 12);
        assert_eq!(
            std::fs::read_dir(d.path().join("spool/tmp"))
                .unwrap()
                .count(),
            0
        );
    }
}
