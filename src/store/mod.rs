//! Durable storage: received instances ([`spool`]), bookkeeping ([`state`]) and the
//! queue of results to send ([`outbox`]); a study's model input as recorded ([`input`]).
pub mod input;
pub mod outbox;
pub mod spool;
pub mod state;
