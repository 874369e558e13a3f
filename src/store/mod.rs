//! Durable storage: received instances ([`spool`]), bookkeeping ([`state`]) and the
//! queue of results to send ([`outbox`]).
pub mod outbox;
pub mod spool;
pub mod state;
