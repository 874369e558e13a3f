//! prima-node: a DICOM node that runs the Prima brain-MRI model.
//!
//! Data flows one way (the design: `docs/architecture.md`):
//!
//! ```text
//! net::scp → store::spool → study (policy, assembler) → job → worker → model_process
//!          → process (imaging → model → report) → worker's sink (store::outbox, or the
//!            cluster's objects) → net::scu
//! ```
//!
//! In comments, `§N` or `spec §N` is section N of `docs/prima-inference-spec.md` (the
//! model's input pipeline and numerics; each file names it at its first reference), and
//! the SR/KOS contract is `docs/dicom-outputs.md`.
//!
//! Layers: each module imports only from the modules listed before it (a unit test,
//! `layering`, checks this list against the code):
//! 1. [`uid`] — what counts as a UID, the UIDs the node derives, its implementation identity.
//! 2. [`pyjson`] — Python `json.dumps` formatting, for upstream-identical JSON.
//! 3. [`metrics`] — the process's counters and histograms (Prometheus text format).
//! 4. [`imaging`] — DICOM series → ITK-exact resampled, oriented volumes → Prima's VQ-VAE
//!    input tokens (pure Rust, no libtorch); `docs/prima-inference-spec.md` §1–§7, §9.4.
//! 5. [`model`] — the Prima network in libtorch (`tch`): VQ-VAE encoder, patchifier, name
//!    encoders, HierViT, heads; weights looked up by upstream state-dict key paths.
//! 6. [`explain`] — LIME over volume tokens: which tokens of which series drive a finding.
//! 7. [`config`] — the TOML schema, each section validating itself, and the shared live
//!    configuration.
//! 8. [`store`] — durable storage: received instances (`spool`, where an instance is made
//!    durable before Success), the SQLite bookkeeping and the life-cycle enums (`state`),
//!    results to send (`outbox`), and what is removed when (`retention`).
//! 9. [`net`] — DICOM networking: associations and C-STORE in (`scp`), C-STORE out (`scu`),
//!    DICOM TLS (`tls`), what a stranger may cost before an association (`admission`,
//!    `refusals`), what the sender may send (`fence`: a cluster node's claims).
//! 10. [`job`] — the study job, the processor contract and the run record: what crosses
//!     the model process and cluster boundaries.
//! 11. [`report`] — the findings SR, the priority KOS, the summary card and the key images.
//! 12. [`study`] — when a study is ready and whether it qualifies (`policy`, pure), and the
//!     single node's assembler that applies it and dispatches jobs.
//! 13. [`process`] — processing a study (series preparation, background preparation while
//!     a study arrives, the model run, the run record, the result objects): what both the
//!     model process and `infer` run.
//! 14. [`model_process`] — the processor in a child process (`prima-node worker`): the
//!     node's side (`parent`), the child's (`child`), their `protocol`.
//! 15. [`worker`] — the one worker loop: jobs from a `JobSource`, outcomes to a
//!     `ResultSink`; the single node's transport (`local`: the assembler's channel, the
//!     outbox).
//! 16. [`cluster`] — `[cluster]` over NATS JetStream: ingest nodes (`ingest`: replication,
//!     the study policy on the cluster's view, claimed delivery, fenced by `net::fence`) and the
//!     worker's NATS transport (`worker`); `reads` survive a lagging or silent replica.
//! 17. [`http`] — the status page, its JSON API, `/metrics` and the health endpoints.
//! 18. [`synth`] — synthetic head-phantom MR studies for the demo, tests and benchmarks.
//! 19. [`fuzzing`] — entry points the fuzz targets and their corpus test share.
//! 20. [`stand_in`] — a model-free processor for tests (feature `stand-in` only).
//! 21. [`app`] — `serve` built, run and drained per role (with the retention thread); the
//!     model process's `main`; `check-config` and `status`.
//!
//! Where to look:
//! - an instance is made durable: `store::spool` (`Spool::begin`, `Spool::commit`), before `net::scp`
//!   answers Success;
//! - a study is ready: `study::policy::decide`, applied by `study::assembler` (single node)
//!   and `cluster::records::decide` (cluster);
//! - a job reaches the model process: `worker` (the loop) → `model_process::parent`
//!   (`ModelProcess`) → `model_process::child` → `process::PrimaProcessor`;
//! - results leave: the worker's sink (`worker::local`) writes the outbox, `net::scu`
//!   sends it;
//! - received instances are removed: `store::retention` (decided and done), run by the
//!   `prima-retention` thread (`app`'s `retention`);
//! - whether the pipeline makes progress: `store::state::progress` (stalled stages), read
//!   by `/readyz`, the status page and the assembler thread (metric, log, systemd watchdog);
//! - a cluster worker differs from a single node only in its transport:
//!   `cluster::worker` (`NatsJobs`, `NatsResults`) instead of `worker::local`.
pub mod app;
pub mod cluster;
pub mod config;
pub mod explain;
pub mod fuzzing;
pub mod http;
pub mod imaging;
pub mod job;
pub mod metrics;
pub mod model;
pub mod model_process;
pub mod net;
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
mod layering;
#[cfg(test)]
#[path = "../integration-tests/fixtures.rs"]
mod test_fixtures;
