//! The Prima network in libtorch (`tch`), docs/prima-inference-spec.md §8–§14.
//!
//! One file per upstream module, the way candle-transformers' model files read: a config
//! (from the model directory's `manifest.json`), a constructor that takes the weights at
//! the module's state-dict key path, and a `forward`.
//!
//! - [`manifest`] — `<model-dir>/manifest.json` (written by `scripts/convert-checkpoint`
//!   or [`write_demo_model`]).
//! - [`vqvae`] — the VQ-VAE encoder (tokenizer), §8.
//! - [`patchify`] — encoder output → 289-wide patch tokens with the 3-D sin/cos
//!   positional encoding, §9.
//! - [`text`] — `SerieTransformerEncoder` (series names, study description), §11.
//! - [`vit`] — pre-norm Transformer and ViT with batched, padding-masked attention, §12.
//! - [`hiervit`] — the two-level visual model, §10.
//! - [`heads`] — diagnosis / referral / priority heads, §13.
//! - [`prima`] — the whole model: load a model directory, run a study.
//! - [`perturb`] — a study held fixed while LIME and the series occlusion take parts away.
//! - [`demo`] — deterministic random-weight models in the converter's format.
//! - [`import`] — `model import`: the shipped converter, then this loader, then install.
//!
//! Every size is derived from the manifest and checked against the tensor shapes; nothing
//! is assumed from the fixture's or the release's sizes.

pub mod demo;
pub mod heads;
pub mod hiervit;
pub mod import;
pub mod manifest;
pub mod patchify;
pub mod perturb;
pub mod prima;
pub mod text;
pub mod vit;
pub mod vqvae;
mod weights;

pub use demo::{write_demo_model, DemoSize};
pub use manifest::Manifest;
pub use prima::{
    is_gpu_out_of_memory, parse_device, usable_device, ModelOptions, Precision, PrimaModel,
    PrimaOutput,
};

/// Errors of the model module.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid manifest {path}: {source}")]
    ManifestJson {
        path: std::path::PathBuf,
        source: serde_json::Error,
    },
    #[error("invalid manifest {path}: {source}")]
    InvalidManifest {
        path: std::path::PathBuf,
        source: manifest::ManifestError,
    },
    #[error("invalid manifest {path}: no files.{key}.sha256 for {file}: the weights cannot be verified (convert the model again)")]
    UnverifiableWeights {
        path: std::path::PathBuf,
        key: String,
        file: String,
    },
    #[error("invalid manifest {path}: files.{key}.file is {named:?}, expected {file:?}")]
    WeightsFileName {
        path: std::path::PathBuf,
        key: String,
        named: Option<String>,
        file: String,
    },
    #[error("invalid weights file {path}: {msg}")]
    Weights {
        path: std::path::PathBuf,
        msg: String,
    },
    #[error("model file {path} is damaged or altered: its SHA-256 is {actual}, the manifest records {expected}")]
    Checksum {
        path: std::path::PathBuf,
        expected: String,
        actual: String,
    },
    #[error("missing tensor `{key}` in {path}")]
    MissingTensor {
        path: std::path::PathBuf,
        key: String,
    },
    #[error("tensor `{key}` has shape {actual:?}, expected {expected:?}")]
    Shape {
        key: String,
        actual: Vec<i64>,
        expected: Vec<i64>,
    },
    #[error("invalid input: {0}")]
    Input(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl ModelError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
