//! Durable storage: received instances ([`spool`]), bookkeeping ([`state`]) and the
//! queue of results to send ([`outbox`]).
//!
//! - [`header`] reads what the node needs from a received instance, after
//!   [`length_guard`] made sure parsing it cannot allocate more than it holds.
//! - [`hash`] is the content hash of a data set; [`durable`] the fsync and atomic-write
//!   primitives the spool and the outbox share; [`error`] their error.
//! - [`recover`] reconciles the database with the spool at start (quarantining, never
//!   deleting, what it cannot index).
//! - [`retention`] removes finished studies' instances when they are due or the disk
//!   fills, crash-safely.
pub mod durable;
pub mod error;
pub mod hash;
pub mod header;
pub mod identity;
pub mod length_guard;
pub mod outbox;
pub mod recover;
pub mod retention;
pub mod spool;
pub mod state;
