//! `<model-dir>/manifest.json`: what the Rust side needs besides tensors
//! (docs/prima-inference-spec.md §14.3).
//!
//! Written by `scripts/convert-checkpoint` (from the pickled checkpoint's plain attributes)
//! and by [`super::write_demo_model`]. Unknown fields are kept in `extra` so a manifest
//! read and written again loses nothing.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ModelError;

/// The manifest's file name inside a model directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Extra fields this crate does not interpret.
pub type Extra = BTreeMap<String, Value>;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: Value,
    pub model_name: String,
    pub model_version: String,
    #[serde(default)]
    pub demo: bool,
    #[serde(default)]
    pub sources: Value,
    pub architecture: Architecture,
    pub tokenizer: TokenizerConfig,
    pub diagnosis_heads: Vec<HeadEntry>,
    pub referral_heads: Vec<HeadEntry>,
    pub priority_head: PriorityHead,
    pub priority_classes: Vec<String>,
    pub embedding_dim: i64,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Architecture {
    pub inner: VitConfig,
    pub outer: VitConfig,
    pub useseriename: bool,
    pub usestudydescription: bool,
    pub serie_name_encoder: Option<NameEncoderConfig>,
    pub study_description_encoder: Option<NameEncoderConfig>,
    pub pipeline_patchifier: PatchifierConfig,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `ViT(dim, num_classes, depth, heads, mlp_dim, dim_head, clsnum)` (spec §12.2).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VitConfig {
    pub dim: i64,
    pub depth: i64,
    pub heads: i64,
    pub dim_head: i64,
    pub mlp_dim: i64,
    pub clsnum: i64,
    pub num_classes: i64,
    #[serde(default = "default_pool")]
    pub pool: String,
    /// `Attention.scale`; `dim_head ** -0.5` when absent.
    #[serde(default)]
    pub attention_scale: Option<f64>,
    #[serde(default = "default_eps")]
    pub layernorm_eps: f64,
    /// Whether attention has `to_out` (false only when heads == 1 and dim_head == dim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_out: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

fn default_pool() -> String {
    "cls".to_string()
}

fn default_eps() -> f64 {
    1e-5
}

/// Which of the two module forms of the serie-name encoder a checkpoint uses
/// (spec §11 steps 5–6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormKind {
    /// `Sequential(SerieTransformerEncoder(prelinear=True), Linear(256, D))`:
    /// keys `<p>.0.*` and `<p>.1.*`.
    Sequential,
    /// A plain `SerieTransformerEncoder`: keys `<p>.embed/transformer/linear`.
    Plain,
}

/// `SerieTransformerEncoder` hyper-parameters (spec §11).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NameEncoderConfig {
    /// `[num_embeddings, embedding_dim]` of `embed`.
    pub embedding: [i64; 2],
    pub embsize: i64,
    pub positional_encoding_dim: i64,
    pub positional_encoding_rows: i64,
    pub depth: i64,
    pub heads: i64,
    pub dim_head: i64,
    pub mlp_dim: i64,
    pub prelinear: bool,
    pub linear_out: i64,
    /// `Attention.scale`; `dim_head ** -0.5` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_scale: Option<f64>,
    #[serde(default = "default_eps")]
    pub layernorm_eps: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_out: Option<bool>,
    /// Key prefix of the `SerieTransformerEncoder` itself (`….serieencoder.0` in the
    /// sequential form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dict_prefix: Option<String>,
    /// Key of the exported `p_enc` table, when the converter stored it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_enc_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form_kind: Option<FormKind>,
    /// `[in, out]` of the enclosing `Sequential`'s projection, sequential form only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projection: Option<[i64; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projection_prefix: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The pipeline's `MedicalImagePatchifier(in_dim, d)` (spec §9).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PatchifierConfig {
    pub in_dim: i64,
    pub d: i64,
    pub out_dim: i64,
    #[serde(flatten)]
    pub extra: Extra,
}

/// monai-generative `VQVAE` encoder hyper-parameters (spec §8.2).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenizerConfig {
    pub spatial_dims: i64,
    pub in_channels: i64,
    pub num_channels: Vec<i64>,
    pub num_res_channels: Vec<i64>,
    pub num_res_layers: i64,
    /// `[stride, kernel, dilation, padding]` per downsampling stage.
    pub downsample_parameters: Vec<[i64; 4]>,
    pub embedding_dim: i64,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One named diagnosis or referral output (spec §13.1, §14.3).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadEntry {
    pub name: String,
    /// Where upstream's `state_dict()` lists the head (`m1.<k>`).
    pub state_dict_prefix: String,
    /// Where the converter stored its tensors (shared heads are stored once).
    pub weights_prefix: String,
    pub idx: i64,
    pub thresh: f64,
    pub num_outputs: i64,
    pub hidden: Vec<i64>,
    /// Positions of the Linear layers inside the head's `Sequential` (default 0, 2, 4, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linear_indices: Option<Vec<i64>>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PriorityHead {
    pub state_dict_prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_prefix: Option<String>,
    pub num_outputs: i64,
    pub hidden: Vec<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linear_indices: Option<Vec<i64>>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl PriorityHead {
    pub fn prefix(&self) -> &str {
        self.weights_prefix
            .as_deref()
            .unwrap_or(&self.state_dict_prefix)
    }
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let m: Manifest =
            serde_json::from_str(&text).map_err(|source| ModelError::ManifestJson {
                path: path.to_path_buf(),
                source,
            })?;
        m.validate().map_err(|source| ModelError::InvalidManifest {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(m)
    }

    /// Check that the weights file the manifest lists under `files.<key>` is, byte for
    /// byte, the one it recorded: its name is `file` and its content has the recorded
    /// SHA-256. A copy torn by a crash or a full disk, or altered since the conversion,
    /// would otherwise load as long as its header parses, and the model would answer with
    /// wrong weights.
    pub fn verify_file(&self, dir: &Path, key: &str, file: &str) -> Result<(), ModelError> {
        let manifest = dir.join(MANIFEST_FILE);
        let entry = self.extra.get("files").and_then(|f| f.get(key));
        let recorded = entry.and_then(|e| e.get("sha256")).and_then(Value::as_str);
        let Some(expected) = recorded else {
            return Err(ModelError::UnverifiableWeights {
                path: manifest,
                key: key.to_string(),
                file: file.to_string(),
            });
        };
        let named = entry.and_then(|e| e.get("file")).and_then(Value::as_str);
        if named.is_some_and(|n| n != file) {
            return Err(ModelError::WeightsFileName {
                path: manifest,
                key: key.to_string(),
                named: named.map(str::to_string),
                file: file.to_string(),
            });
        }
        let path = dir.join(file);
        let actual = sha256_file(&path)?;
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(ModelError::Checksum {
                path,
                expected: expected.to_string(),
                actual,
            });
        }
        Ok(())
    }

    /// SHA-256 of the upstream checkpoint this model was converted from (`None` for a demo
    /// model, which has no upstream checkpoint).
    pub fn checkpoint_sha256(&self) -> Option<&str> {
        self.extra.get("source_sha256").and_then(Value::as_str)
    }

    /// SHA-256 of the converted Prima weights file, as recorded at conversion.
    pub fn weights_sha256(&self) -> Option<&str> {
        self.extra
            .get("files")
            .and_then(|f| f.get("prima"))
            .and_then(|p| p.get("sha256"))
            .and_then(Value::as_str)
    }

    /// Consistency checks that do not need the tensors.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let a = &self.architecture;
        for (n, v) in [("inner", &a.inner), ("outer", &a.outer)] {
            if v.dim <= 0 || v.depth < 0 || v.heads <= 0 || v.dim_head <= 0 || v.clsnum <= 0 {
                return Err(ManifestError::NonPositiveSize { vit: n });
            }
            if v.pool != "cls" {
                return Err(ManifestError::Pool {
                    vit: n,
                    pool: v.pool.clone(),
                });
            }
        }
        if a.useseriename && a.serie_name_encoder.is_none() {
            return Err(ManifestError::NoSerieNameEncoder);
        }
        if a.usestudydescription && a.study_description_encoder.is_none() {
            return Err(ManifestError::NoStudyDescriptionEncoder);
        }
        if a.pipeline_patchifier.out_dim
            != a.pipeline_patchifier.in_dim + a.pipeline_patchifier.d + 3
        {
            return Err(ManifestError::PatchifierWidth);
        }
        if a.pipeline_patchifier.out_dim != a.inner.dim {
            return Err(ManifestError::PatchifierInnerDim);
        }
        if self.embedding_dim != a.outer.clsnum * a.outer.dim {
            return Err(ManifestError::EmbeddingDim);
        }
        let t = &self.tokenizer;
        if t.downsample_parameters.is_empty()
            || t.num_channels.len() != t.downsample_parameters.len()
            || t.num_res_channels.len() != t.downsample_parameters.len()
        {
            return Err(ManifestError::TokenizerStages);
        }
        for h in self.diagnosis_heads.iter().chain(&self.referral_heads) {
            if h.idx < 0 || h.idx >= h.num_outputs {
                return Err(ManifestError::HeadIndex {
                    head: h.name.clone(),
                    idx: h.idx,
                });
            }
        }
        let n = self.priority_head.num_outputs as usize;
        if !(n == 3 || n == 4) || self.priority_classes.len() != n {
            return Err(ManifestError::PriorityOutputs);
        }
        Ok(())
    }
}

/// An inconsistency [`Manifest::validate`] finds, one variant per check.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("architecture.{vit}: non-positive size")]
    NonPositiveSize { vit: &'static str },
    #[error("architecture.{vit}.pool = {pool:?}: only cls")]
    Pool { vit: &'static str, pool: String },
    #[error("useseriename without serie_name_encoder")]
    NoSerieNameEncoder,
    #[error("usestudydescription without study_description_encoder")]
    NoStudyDescriptionEncoder,
    #[error("pipeline_patchifier: out_dim != in_dim + d + 3")]
    PatchifierWidth,
    #[error("pipeline_patchifier.out_dim != inner.dim")]
    PatchifierInnerDim,
    #[error("embedding_dim != outer.clsnum * outer.dim")]
    EmbeddingDim,
    #[error("tokenizer: one num_channels/num_res_channels per stage")]
    TokenizerStages,
    #[error("head {head}: idx {idx} out of range")]
    HeadIndex { head: String, idx: i64 },
    #[error("priority head must have 3 or 4 outputs, one class name each")]
    PriorityOutputs,
}

/// SHA-256 of a file's content, lowercase hex.
pub(crate) fn sha256_file(path: &Path) -> Result<String, ModelError> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| ModelError::io(path, e))?;
    Ok(hex::encode(h.finalize()))
}
