//! The node's durable bookkeeping in SQLite (WAL): studies, series, instances, jobs,
//! outputs, outbox and an audit trail. Every statement is parameterised; no SQL text is
//! ever built from values.
//!
//! One connection behind a mutex: the writers (associations, assembler, worker, sender) do
//! small transactions, and a single writer is what SQLite serialises to anyway.

mod cluster;
mod db;
mod instances;
mod jobs;
mod outbox;
pub mod progress;
mod retention;
mod schema;
mod studies;
#[cfg(test)]
mod tests;
mod views;

pub use cluster::LocalInstance;
pub use db::{now_ms, utc_text, Counts, State, StateError};
pub use instances::{InstanceRecord, RecordOutcome, StoredInstance};
pub use jobs::{JobRow, OutputRow};
pub use outbox::OutboxRow;
pub use progress::Stall;
pub use retention::{EvictedSeries, EvictionIntent, EvictionRecord, Holding, PrunedStudy};
pub(crate) use schema::state_enum;
pub use schema::{EvictReason, JobState, OutboxState, StudyState};
pub use studies::StudyRow;
pub use views::{AuditView, DeliveryView, JobView, SeriesView};
