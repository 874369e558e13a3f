//! Demo models: deterministic random weights in exactly the converter's format
//! (issue 3, deliverable 5), so the node runs end to end without the released weights.
//!
//! Weights come from a SplitMix64 + Box–Muller generator keyed by (seed, tensor name),
//! not from libtorch's global RNG: the result does not depend on thread interleaving,
//! on the order tensors are generated, or on the libtorch version. Scales follow common
//! initialisations so activations stay O(1): He-normal before ReLUs, 1/√fan_in
//! elsewhere, residual-branch outputs halved, small biases, LayerNorm weights ≈ 1.
//!
//! - `full`: the upstream architecture (docs/prima-inference-spec.md §12.3,
//!   `models/fullsize_reference.json`): VQ-VAE with 256 channels; inner ViT
//!   289/15/16/64/1024, clsnum 20, 1024 classes; outer ViT 1024/4/8/64/1024, clsnum 10, 128
//!   classes; clip_emb 10240; the pre-trained (`Sequential`) serie encoder; one 52-output
//!   diagnosis head (10240 → 4000 → 1000 → 52) shared by all 52 names of upstream's
//!   `config-classification-head-train.yaml` (`idx` = position in that list), one referral
//!   head, and the current release's 3-class priority (none/low/high: upstream moved to 3
//!   classes on 2026-02-19, when its README says the released priority model was corrected;
//!   earlier downloads have 4, which the converter reads too).
//! - `small`: tiny sizes (a study runs in well under a second on a CPU), exercising the
//!   other code paths: per-stage channel counts, one residual layer per stage, the plain
//!   serie-encoder form, and the same 3-class priority (the fixture checkpoint has the
//!   earlier 4-class head, so both head sizes run end to end in the tests).

mod manifest;
mod names;
mod tensors;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use super::manifest::sha256_file;
use super::prima::{MANIFEST_FILE, PRIMA_WEIGHTS_FILE, TOKENIZER_WEIGHTS_FILE};
use super::ModelError;
pub use manifest::demo_manifest;
pub use names::{DIAGNOSIS_NAMES, REFERRAL_NAMES};
use tensors::{prima_tensors, tokenizer_tensors};

/// Manifest format version this crate writes and reads.
pub const FORMAT_VERSION: i64 = 1;

/// Size of a demo model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoSize {
    Small,
    Full,
}

impl DemoSize {
    pub fn as_str(self) -> &'static str {
        match self {
            DemoSize::Small => "small",
            DemoSize::Full => "full",
        }
    }
}

impl std::str::FromStr for DemoSize {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "small" => Ok(DemoSize::Small),
            "full" => Ok(DemoSize::Full),
            _ => Err(ModelError::Input(format!("demo size {s:?}: small or full"))),
        }
    }
}

/// Writes `<out>/manifest.json`, `<out>/prima.safetensors` and
/// `<out>/tokenizer.safetensors` of a demo model (directory created 0700 if missing).
pub fn write_demo_model(out: &Path, size: DemoSize, seed: u64) -> Result<(), ModelError> {
    let mut m = demo_manifest(size, seed);
    m.validate().map_err(|source| ModelError::InvalidManifest {
        path: out.join(MANIFEST_FILE),
        source,
    })?;
    create_private_dir(out)?;

    let tok = tokenizer_tensors(&m, seed);
    let p = prima_tensors(&m, seed)?;

    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert("model_version".to_string(), m.model_version.clone());
    let mut files = serde_json::Map::new();
    for (key, set, file) in [
        ("prima", &p, PRIMA_WEIGHTS_FILE),
        ("tokenizer", &tok, TOKENIZER_WEIGHTS_FILE),
    ] {
        let path = out.join(file);
        set.write(&path, &meta)?;
        let bytes: usize = set.tensors.values().map(|(_, d)| d.len() * 4).sum();
        files.insert(
            key.into(),
            json!({
                "file": file,
                "sha256": sha256_file(&path)?,
                "tensors": set.tensors.len(),
                "data_bytes": bytes,
            }),
        );
    }
    m.extra.insert("files".into(), Value::Object(files));
    let text = serde_json::to_string_pretty(&m).map_err(|e| ModelError::Input(e.to_string()))?;
    let mp = out.join(MANIFEST_FILE);
    std::fs::write(&mp, text + "\n").map_err(|e| ModelError::io(&mp, e))?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), ModelError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(|e| ModelError::io(dir, e))
}
