//! Durable files: private directories, atomic writes (temp, fsync, rename, fsync the
//! directory), free space, and the thread pool whose concurrent fsyncs share device flushes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::store::error::{io_err, SpoolError};

/// Create a directory (and parents) with mode 0700.
pub fn create_private_dir(p: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(p)
}

pub fn fsync_dir(p: &Path) -> io::Result<()> {
    File::open(p)?.sync_all()
}

/// [`create_private_dir`], durably: every directory it creates is fsynced, and so is the
/// parent each one's entry was added to, so a power loss cannot take away a directory
/// (and with it the files later made durable inside it). A directory that already exists
/// costs one `stat`.
pub fn create_durable_dir(p: &Path) -> io::Result<()> {
    if p.is_dir() {
        return Ok(());
    }
    // Deepest first: `p`, then each missing ancestor.
    let missing: Vec<&Path> = p
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.is_dir())
        .collect();
    create_private_dir(p)?;
    for d in &missing {
        fsync_dir(d)?;
    }
    let top_parent = missing
        .last()
        .and_then(|d| d.parent())
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fsync_dir(top_parent)
}

/// Write `bytes` to `dir/name` atomically and durably (temp, fsync, rename, fsync dir).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, SpoolError> {
    create_durable_dir(dir).map_err(io_err(dir))?;
    let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let dst = dir.join(name);
    let r = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &dst)?;
        fsync_dir(dir)
    })();
    if let Err(e) = r {
        let _ = fs::remove_file(&tmp);
        return Err(SpoolError::Io {
            path: dst,
            source: e,
        });
    }
    Ok(dst)
}

/// Write several files into `dir` atomically and durably, sharing the cost: every temp
/// file is written, then fdatasynced (in parallel, so their flushes merge), then renamed,
/// then the directory is fsynced once. Either all names are in place and
/// durable on Ok, or an error is returned (some may be in place; each is complete).
pub fn write_atomic_many(dir: &Path, files: &[(&str, &[u8])]) -> Result<Vec<PathBuf>, SpoolError> {
    // A study's first results create `results/<hash>`: its entry in `results/` must be
    // durable too, or the files in it could vanish with it.
    create_durable_dir(dir).map_err(io_err(dir))?;
    let mut tmps: Vec<(PathBuf, PathBuf, std::sync::Arc<File>)> = Vec::with_capacity(files.len());
    let cleanup = |tmps: &[(PathBuf, PathBuf, std::sync::Arc<File>)]| {
        for (t, _, _) in tmps {
            let _ = fs::remove_file(t);
        }
    };
    for (name, bytes) in files {
        let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
        let dst = dir.join(name);
        let r = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(bytes).map(|_| f));
        match r {
            Ok(f) => {
                start_writeback(&f);
                tmps.push((tmp, dst, std::sync::Arc::new(f)));
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                cleanup(&tmps);
                return Err(SpoolError::Io {
                    path: dst,
                    source: e,
                });
            }
        }
    }
    let r = in_parallel(
        tmps.iter()
            .map(|(_, _, f)| {
                let f = f.clone();
                Box::new(move || f.sync_data()) as SyncJob
            })
            .collect(),
    )
    .into_iter()
    .collect::<io::Result<Vec<()>>>();
    if let Err(e) = r {
        cleanup(&tmps);
        return Err(SpoolError::Io {
            path: dir.to_owned(),
            source: e,
        });
    }
    let mut out = Vec::with_capacity(tmps.len());
    for (i, (tmp, dst, _)) in tmps.iter().enumerate() {
        if let Err(e) = fs::rename(tmp, dst) {
            cleanup(&tmps[i..]);
            return Err(SpoolError::Io {
                path: dst.clone(),
                source: e,
            });
        }
        out.push(dst.clone());
    }
    fsync_dir(dir).map_err(io_err(dir))?;
    Ok(out)
}

/// Free space in MB available to unprivileged writers on the filesystem holding `p`.
pub fn free_mb(p: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: statvfs only writes into the struct we pass; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64) / (1024 * 1024))
}

/// Most fsyncs in flight at once (threads in the sync pool).
const SYNC_THREADS: usize = 16;

/// A job for the sync pool: one fsync-like call.
pub(crate) type SyncJob = Box<dyn FnOnce() -> io::Result<()> + Send>;

/// Persistent threads for fsyncs: [`in_parallel`] batches and instance commits. Each
/// fsync ends in a device cache flush; issued from several threads at once, the block
/// layer merges their flushes (one flush serves every fsync waiting for it), where one
/// after the other each pays a whole flush. Threads started once: spawning them per batch
/// cost ~7 % of the node's ingest CPU.
fn sync_pool() -> &'static crossbeam_channel::Sender<Box<dyn FnOnce() + Send>> {
    static POOL: std::sync::OnceLock<crossbeam_channel::Sender<Box<dyn FnOnce() + Send>>> =
        std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<Box<dyn FnOnce() + Send>>();
        for i in 0..SYNC_THREADS {
            let rx = rx.clone();
            // A thread that cannot be started makes the pool smaller; `run_on_pool` runs
            // the job on the caller's thread if there is no pool at all.
            let _ = std::thread::Builder::new()
                .name(format!("spool-sync-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        // A panicking job drops its reply sender: the waiter sees an error.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                });
        }
        tx
    })
}

pub(crate) fn run_on_pool(job: Box<dyn FnOnce() + Send>) {
    if let Err(e) = sync_pool().send(job) {
        (e.into_inner())();
    }
}

/// Run every job at the same time, the first on this thread and the rest on the sync
/// pool; results in job order. Unlike `syncfs`, this never waits for other processes'
/// dirty data.
pub(crate) fn in_parallel(mut jobs: Vec<SyncJob>) -> Vec<io::Result<()>> {
    if jobs.is_empty() {
        return Vec::new();
    }
    let mine = jobs.remove(0);
    let answers: Vec<_> = jobs
        .into_iter()
        .map(|job| {
            let (reply, answer) = crossbeam_channel::bounded(1);
            run_on_pool(Box::new(move || {
                let _ = reply.send(job());
            }));
            answer
        })
        .collect();
    let mut out = vec![mine()];
    out.extend(answers.into_iter().map(|a| {
        a.recv()
            .unwrap_or_else(|_| Err(io::Error::other("fsync job failed")))
    }));
    out
}

/// Ask the kernel to start writing a file's dirty pages now (no wait, no durability
/// promise), so the data is already on its way when the batch's fdatasync comes.
pub(crate) fn start_writeback(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on a file descriptor we own; it only starts write-back.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Make one received file durable under its final name: content first (nothing is
/// renamed into objects/ before its bytes are durable, so a crash never leaves a partial
/// file under its final name), then the directory entry.
pub(crate) fn commit_file(file: &File, tmp: &Path, dst: &Path, objects: &Path) -> io::Result<()> {
    let r = (|| {
        file.sync_data()?;
        let shard = dst.parent().expect("has parent");
        // Shards exist since `open`; recreate one removed behind our back.
        if !shard.is_dir() {
            create_private_dir(shard)?;
            fsync_dir(shard)?;
            fsync_dir(objects)?;
        }
        fs::rename(tmp, dst)?;
        fsync_dir(shard)
    })();
    if r.is_err() {
        let _ = fs::remove_file(tmp);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_durable_dir_makes_private_nested_dirs() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a/b/c");
        create_durable_dir(&deep).unwrap();
        for p in [d.path().join("a"), d.path().join("a/b"), deep.clone()] {
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o700
            );
        }
        create_durable_dir(&deep).unwrap();
    }

    #[test]
    fn write_atomic_many_writes_all() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("r");
        let out = write_atomic_many(&dir, &[("a.json", b"{}"), ("b.txt", b"bee")]).unwrap();
        assert_eq!(out, vec![dir.join("a.json"), dir.join("b.txt")]);
        assert_eq!(std::fs::read(dir.join("b.txt")).unwrap(), b"bee");
        let again = write_atomic_many(&dir, &[("b.txt", b"new")]).unwrap();
        assert_eq!(std::fs::read(&again[0]).unwrap(), b"new");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            2,
            "no temp files left"
        );
    }
}
