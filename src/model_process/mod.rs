//! The model process: the processor runs in a child process (`prima-node worker`, this
//! binary re-executed), so that nothing a study does to the model's process (an abort, a
//! stack overflow, the OOM killer, a libtorch crash) takes the node down.
//!
//! - [`parent`]: the node's side, [`ModelProcess`], the [`crate::job::StudyProcessor`] the
//!   worker calls: starts the child, sends it each job, reports a crash as
//!   [`crate::job::ProcessError::Crashed`] and starts a fresh child for the next try.
//! - [`child`]: the child's side: loads the model, answers jobs until the node is gone.
//! - [`protocol`]: what the two say over their Unix socket.

pub mod child;
pub mod parent;
pub mod protocol;

pub use parent::{factory, Limits, ModelProcess, SpawnError};

/// The descriptor the child finds its end of the socket on.
pub const WORKER_FD: i32 = 3;
