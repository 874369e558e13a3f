//! The error of the spool and of the durable writes it shares with the outbox.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("free space {free_mb} MB is below the floor of {floor_mb} MB")]
    LowSpace { free_mb: u64, floor_mb: u64 },
    #[error("instance larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("cannot build the file meta group: {0}")]
    Meta(String),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}
