//! prima-node: a DICOM node that runs the Prima brain-MRI foundation model.
//!
//! Data flows one way (see `../shared/docs/architecture.md`):
//!
//! ```text
//! net::scp → store::spool → study::assembler → worker (imaging → model) → report → store::outbox → net::scu
//! ```
//!
//! Layout:
//! - [`imaging`] — DICOM series → ITK-exact resampled, oriented volumes → Prima's VQ-VAE
//!   input tokens (pure Rust, no libtorch). Mirrors spec §1–§7 and §9.4.
//! - [`model`] — the Prima network in libtorch (`tch`): VQ-VAE encoder, patchifier,
//!   name encoders, HierViT, heads; weights looked up by upstream state-dict key paths.
//! - [`synth`] — synthetic head-phantom MR studies for the demo, tests and benchmarks.
//! - [`pipeline`] — one study folder → predictions (what `prima-node infer` runs).
pub mod config;
pub mod fuzzing;
pub mod imaging;
pub mod infer;
pub mod model;
pub mod net;
pub mod node;
pub mod pipeline;
pub mod processor;
pub mod pyjson;
pub mod report;
pub mod speculate;
pub mod store;
pub mod study;
pub mod synth;
pub mod uid;
pub mod worker;
