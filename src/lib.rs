//! prima-node: a DICOM node that runs the Prima brain-MRI foundation model.
//!
//! Data flows one way, and each module imports only from those before it in this list
//! (see `../shared/docs/architecture.md`):
//!
//! ```text
//! net::scp → store::spool → study::assembler → job → worker → process (imaging → model)
//!          → report → store::outbox → net::scu
//! ```
//!
//! Layout, in flow order:
//! - [`uid`] — what counts as a UID, the UIDs the node derives, its implementation identity.
//! - [`config`] — the TOML schema, its validation and live reload.
//! - [`net`] — DICOM networking: associations and C-STORE in (`scp`, `pdata`, `dimse`),
//!   C-STORE out (`scu`), DICOM TLS (`tls`).
//! - [`store`] — durable storage: received instances (`spool`, with `header` reading and
//!   `length_guard` vetting them, `hash`, `durable` files), the SQLite bookkeeping (`state`),
//!   a study's recorded model input (`input`), results to send (`outbox`).
//! - [`study`] — assembly: when a study is stable, whether Prima should run, the jobs.
//! - [`job`] — the study job and the processor contract, shared by assembler, worker,
//!   processor and report.
//! - [`worker`] — the inference thread: runs jobs through a processor, persists results.
//! - [`process`] — processing a study: series preparation (with background preparation
//!   while a study arrives), the model run, the run record, the result objects; what both
//!   `serve` and `infer` run.
//! - [`imaging`] — DICOM series → ITK-exact resampled, oriented volumes → Prima's VQ-VAE
//!   input tokens (pure Rust, no libtorch). Mirrors spec §1–§7 and §9.4.
//! - [`model`] — the Prima network in libtorch (`tch`): VQ-VAE encoder, patchifier,
//!   name encoders, HierViT, heads; weights looked up by upstream state-dict key paths.
//! - [`report`] — the findings SR, the priority KOS and the summary card (`header`, `items`:
//!   the attributes and content items they share).
//! - [`metrics`] — the process's counters and histograms (Prometheus text format).
//! - [`cluster`] — `[cluster]`: ingest nodes and model workers over NATS JetStream
//!   (replication, completeness across nodes, the job queue, claimed delivery).
//! - [`http`] — the status page, its JSON API, `/metrics` and the health endpoints
//!   (`[http]`): reads the state, never writes it except for the two audited actions.
//! - [`node`] — `serve`: wires the pieces into threads; `check-config`, `status`.
//! - [`pyjson`] — Python `json.dumps` formatting, for upstream-identical JSON.
//! - [`synth`] — synthetic head-phantom MR studies for the demo, tests and benchmarks.
//! - [`explain`] — LIME over volume tokens: which tokens of which series drive a finding.
//! - [`fuzzing`] — entry points the fuzz targets and their corpus test share.
//! - `stand_in` — a model-free processor for tests (feature `stand-in` only).
pub mod cluster;
pub mod config;
pub mod explain;
pub mod fuzzing;
pub mod http;
pub mod imaging;
pub mod job;
pub mod metrics;
pub mod model;
pub mod net;
pub mod node;
pub mod process;
pub mod pyjson;
pub mod report;
#[cfg(feature = "stand-in")]
pub mod stand_in;
pub mod store;
pub mod study;
pub mod synth;
pub mod uid;
pub mod worker;

#[cfg(test)]
#[path = "../integration-tests/fixtures.rs"]
mod test_fixtures;
