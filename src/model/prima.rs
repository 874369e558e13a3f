//! The whole model: VQ-VAE encoder + patchifier + HierViT + heads, loaded from a model
//! directory (`manifest.json`, `prima.safetensors`, `tokenizer.safetensors`).

use std::path::Path;
use std::str::FromStr;

use tch::{Device, Kind, Tensor};

use super::heads::Heads;
use super::hiervit::HierVit;
use super::manifest::Manifest;
use super::patchify::Patchifier;
use super::vqvae::VqvaeEncoder;
use super::weights::Weights;
use super::ModelError;

/// File names inside a model directory (the manifest's own is `manifest::MANIFEST_FILE`).
pub use super::manifest::MANIFEST_FILE;
pub const PRIMA_WEIGHTS_FILE: &str = "prima.safetensors";
pub const TOKENIZER_WEIGHTS_FILE: &str = "tokenizer.safetensors";

/// Key prefixes inside the weight files (upstream's state-dict paths,
/// docs/prima-inference-spec.md §14).
const VISUAL_PREFIX: &str = "clipvisualmodel";
const ENCODER_PREFIX: &str = "encoder";

/// Floating-point precision the network runs in. Outputs are always float32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// float32: the reference numerics (upstream's CPU path).
    #[default]
    F32,
    /// float16 (upstream's GPU path uses float16 autocast). Meant for CUDA.
    F16,
    /// bfloat16. Meant for CUDA.
    BF16,
}

impl Precision {
    pub fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::F16 => Kind::Half,
            Precision::BF16 => Kind::BFloat16,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::BF16 => "bf16",
        }
    }
}

impl FromStr for Precision {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::BF16),
            _ => Err(ModelError::Input(format!(
                "precision {s:?}: expected f32, f16 or bf16"
            ))),
        }
    }
}

/// `auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device, ModelError> {
    let s = s.trim().to_ascii_lowercase();
    match s.as_str() {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => Ok(Device::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .map(Device::Cuda)
            .ok_or_else(|| {
                ModelError::Input(format!("device {s:?}: expected auto, cpu, cuda or cuda:N"))
            }),
    }
}

/// The device a node runs on, given the one configured: a CUDA device that libtorch cannot
/// see (no GPU, no driver, a CPU-only libtorch, an index past the last GPU) becomes the CPU,
/// with the reason, so that a node configured for a GPU still answers its studies.
pub fn usable_device(requested: Device) -> (Device, Option<String>) {
    match requested {
        Device::Cuda(i) => {
            let n = tch::Cuda::device_count().max(0) as usize;
            if n == 0 {
                (
                    Device::Cpu,
                    Some(
                        "libtorch sees no CUDA device (no GPU or driver, or a CPU-only libtorch)"
                            .into(),
                    ),
                )
            } else if i >= n {
                (
                    Device::Cpu,
                    Some(format!(
                        "cuda:{i} asked for, libtorch sees {n} CUDA device(s)"
                    )),
                )
            } else {
                (requested, None)
            }
        }
        d => (d, None),
    }
}

/// Whether a model error is the GPU running out of memory (worth a retry on the CPU)
/// rather than something the input or the model is to blame for.
pub fn is_gpu_out_of_memory(e: &ModelError) -> bool {
    let m = e.to_string();
    m.contains("CUDA out of memory") || m.contains("CUDA error: out of memory")
}

/// How to load and run the model.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    pub device: Device,
    pub precision: Precision,
    /// Tokens per VQ-VAE call (upstream: 400). Chunking does not change results.
    pub vqvae_chunk: usize,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            device: Device::Cpu,
            precision: Precision::F32,
            vqvae_chunk: 400,
        }
    }
}

/// The Prima model, ready to run. `Send` (owned by one worker thread), not `Sync`.
pub struct PrimaModel {
    manifest: Manifest,
    opts: ModelOptions,
    encoder: VqvaeEncoder,
    patchifier: Patchifier,
    hiervit: HierVit,
    heads: Heads,
}

/// Everything `forward` computes for one study. Tensors are float32 on the CPU.
pub struct PrimaOutput {
    /// (C_out·D_out) = the predictions JSON's `clip_emb[0]`.
    pub clip_emb: Vec<f32>,
    /// `head(clip_emb)[idx] − thresh` per diagnosis name, manifest order.
    pub diagnosis: Vec<(String, f32)>,
    /// Same for referrals.
    pub referral: Vec<(String, f32)>,
    /// `(class, value)` for none, low, [medium,] high.
    pub priority: Vec<(String, f32)>,
    /// (S, D_in) series-name encodings (absent without `useseriename`).
    pub serie_name_enc: Option<Tensor>,
    /// (1, D_out) study-description encoding (absent without `usestudydescription`).
    pub study_enc: Option<Tensor>,
    /// (S, C_in·D_in) inner ViT pooled cls tokens.
    pub inner_pooled: Tensor,
    /// (S, D_out) series embeddings (inner ViT `mlp_head`).
    pub series_emb: Tensor,
}

fn to_cpu_f32(t: &Tensor) -> Result<Tensor, ModelError> {
    Ok(t.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?)
}

impl PrimaModel {
    /// Loads `<dir>/manifest.json`, `<dir>/prima.safetensors` (only `clipvisualmodel.*`
    /// minus unused modules, and each distinct head once) and `<dir>/tokenizer.safetensors`
    /// (only `encoder.*`).
    pub fn load(dir: &Path, opts: &ModelOptions) -> Result<Self, ModelError> {
        let _guard = tch::no_grad_guard();
        if opts.vqvae_chunk == 0 {
            return Err(ModelError::Input("vqvae_chunk must be > 0".into()));
        }
        let manifest = Manifest::read(&dir.join(MANIFEST_FILE))?;
        manifest.verify_file(dir, "prima", PRIMA_WEIGHTS_FILE)?;
        manifest.verify_file(dir, "tokenizer", TOKENIZER_WEIGHTS_FILE)?;
        let kind = opts.precision.kind();
        let head_prefixes: Vec<String> = Heads::weight_prefixes(&manifest)
            .into_iter()
            .map(|p| format!("{p}."))
            .collect();
        let visual = format!("{VISUAL_PREFIX}.");
        let unused = [
            format!("{VISUAL_PREFIX}.patdisnet."),
            format!("{VISUAL_PREFIX}.dummy_param"),
            format!("{VISUAL_PREFIX}.serieencoder.0.linear."),
        ];
        let want = |k: &str| {
            (k.starts_with(&visual) && !unused.iter().any(|u| k.starts_with(u.as_str())))
                || head_prefixes.iter().any(|p| k.starts_with(p.as_str()))
        };
        let w = Weights::load(&dir.join(PRIMA_WEIGHTS_FILE), want, opts.device, kind)?;
        let hiervit = HierVit::new(&w, VISUAL_PREFIX, &manifest.architecture)?;
        let heads = Heads::new(&w, &manifest)?;
        drop(w);
        let enc_prefix = format!("{ENCODER_PREFIX}.");
        let wt = Weights::load(
            &dir.join(TOKENIZER_WEIGHTS_FILE),
            |k| k.starts_with(&enc_prefix),
            opts.device,
            kind,
        )?;
        let encoder = VqvaeEncoder::new(&wt, ENCODER_PREFIX, &manifest.tokenizer)?;
        drop(wt);
        let patchifier = Patchifier::new(&manifest.architecture.pipeline_patchifier)?;
        // Which checkpoint answers, and with which priority head: the official release
        // changed the head from 4 to 3 classes, and an administrator must be able to tell
        // from the log which one a node runs.
        tracing::info!(
            model = %manifest.model_name,
            version = %manifest.model_version,
            demo = manifest.demo,
            device = ?opts.device,
            precision = opts.precision.as_str(),
            priority_classes = manifest.priority_classes.len(),
            priority = %manifest.priority_classes.join("/"),
            checkpoint_sha256 = manifest.checkpoint_sha256().unwrap_or("none"),
            weights_sha256 = manifest.weights_sha256().unwrap_or("none"),
            "model loaded"
        );
        Ok(PrimaModel {
            manifest,
            opts: opts.clone(),
            encoder,
            patchifier,
            hiervit,
            heads,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn options(&self) -> &ModelOptions {
        &self.opts
    }

    pub(crate) fn hiervit(&self) -> &HierVit {
        &self.hiervit
    }

    pub(crate) fn heads(&self) -> &Heads {
        &self.heads
    }

    /// VQ-VAE encoder over `n` tokens given row-major as (n, d0, d1, d2) float32 (thin axis
    /// already resized to 8). Runs in chunks of `vqvae_chunk`. Returns (n, emb, a, b, c)
    /// float32 on the CPU. Tokens are encoded as given (duplicates included); see
    /// [`Self::encode_selected`] to encode each distinct token once.
    pub fn encode_tokens(
        &self,
        tokens: &[f32],
        n: usize,
        token_shape: [usize; 3],
    ) -> Result<Tensor, ModelError> {
        let _guard = tch::no_grad_guard();
        let per: usize = token_shape.iter().product();
        if n == 0 || tokens.len() != n * per {
            return Err(ModelError::Input(format!(
                "{} token values for {n} tokens of shape {token_shape:?}",
                tokens.len()
            )));
        }
        let [d0, d1, d2] = token_shape.map(|d| d as i64);
        let x = Tensor::from_slice(tokens).f_view([
            n as i64,
            self.encoder.in_channels(),
            d0,
            d1,
            d2,
        ])?;
        let kind = self.opts.precision.kind();
        let mut outs = Vec::new();
        let mut start = 0usize;
        while start < n {
            let len = self.opts.vqvae_chunk.min(n - start);
            let chunk = x
                .f_narrow(0, start as i64, len as i64)?
                .f_to_device(self.opts.device)?
                .f_to_kind(kind)?;
            outs.push(to_cpu_f32(&self.encoder.forward(&chunk)?)?);
            start += len;
        }
        Ok(Tensor::f_cat(&outs, 0)?)
    }

    /// Floating-point operations of the VQ-VAE encoder per token of `token_shape`.
    pub fn vqvae_flops_per_token(&self, token_shape: [usize; 3]) -> f64 {
        self.encoder.flops_per_token(token_shape.map(|d| d as i64))
    }

    /// Encodes only the tokens `ids` of a series whose tokens are all given in `tokens`
    /// ((n, d0, d1, d2) row-major): see [`Self::encode_gathered`].
    pub fn encode_selected(
        &self,
        tokens: &[f32],
        n: usize,
        token_shape: [usize; 3],
        ids: &[usize],
    ) -> Result<Tensor, ModelError> {
        let per: usize = token_shape.iter().product();
        if tokens.len() != n * per || ids.iter().any(|&i| i >= n) || ids.is_empty() {
            return Err(ModelError::Input(format!(
                "selected ids out of range for {n} tokens of shape {token_shape:?}"
            )));
        }
        let distinct = distinct_ids(ids);
        let mut sub = Vec::with_capacity(distinct.len() * per);
        for &i in &distinct {
            sub.extend_from_slice(&tokens[i * per..(i + 1) * per]);
        }
        self.encode_gathered(&sub, &distinct, token_shape, ids)
    }

    /// Encodes each distinct selected token once (hole filling can select a patch twice,
    /// spec §6.3) and gathers the result back into `ids` order → (ids.len(), emb, a, b, c).
    /// `tokens` holds the values of the `distinct` ids ([`distinct_ids`] of `ids`), in
    /// that order.
    pub fn encode_gathered(
        &self,
        tokens: &[f32],
        distinct: &[usize],
        token_shape: [usize; 3],
        ids: &[usize],
    ) -> Result<Tensor, ModelError> {
        let pos = ids
            .iter()
            .map(|i| distinct.binary_search(i).map(|p| p as i64))
            .collect::<Result<Vec<i64>, _>>()
            .map_err(|_| ModelError::Input("a selected id has no encoded token".into()))?;
        let enc = self.encode_tokens(tokens, distinct.len(), token_shape)?;
        Ok(enc.f_index_select(0, &Tensor::from_slice(&pos))?)
    }

    /// enc (K, emb, a, b, c), coords (K, 3) (z, y, x) patch start coordinates in the
    /// padded volume → (K, 289) float32 on the CPU (spec §9).
    pub fn patchify(&self, enc: &Tensor, coords: &[[i64; 3]]) -> Result<Tensor, ModelError> {
        let _guard = tch::no_grad_guard();
        self.patchifier.forward(enc, coords)
    }

    /// One study: per series (patchified tokens (K_s, 289), series-name character ids
    /// ending with the end token 46), and the study description's character ids.
    pub fn forward(
        &self,
        series: &[(Tensor, Vec<i64>)],
        study_description: &[i64],
    ) -> Result<PrimaOutput, ModelError> {
        let _guard = tch::no_grad_guard();
        let kind = self.opts.precision.kind();
        let tokens = series
            .iter()
            .map(|(t, _)| Ok(t.f_to_device(self.opts.device)?.f_to_kind(kind)?))
            .collect::<Result<Vec<_>, ModelError>>()?;
        let names: Vec<Vec<i64>> = series.iter().map(|(_, n)| n.clone()).collect();
        let h = self.hiervit.forward(&tokens, &names, study_description)?;
        let heads = self.heads.forward(&h.clip_emb)?;
        let clip_emb = Vec::<f32>::try_from(&to_cpu_f32(&h.clip_emb)?.f_reshape([-1])?)?;
        let opt = |t: &Option<Tensor>| t.as_ref().map(to_cpu_f32).transpose();
        Ok(PrimaOutput {
            clip_emb,
            diagnosis: heads.diagnosis,
            referral: heads.referral,
            priority: heads.priority,
            serie_name_enc: opt(&h.serie_name_enc)?,
            study_enc: opt(&h.study_enc)?,
            inner_pooled: to_cpu_f32(&h.inner_pooled)?,
            series_emb: to_cpu_f32(&h.series_emb)?,
        })
    }
}

/// The ids of a selection, sorted and each once.
pub fn distinct_ids(ids: &[usize]) -> Vec<usize> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

#[allow(dead_code)]
fn assert_send() {
    fn is_send<T: Send>() {}
    is_send::<PrimaModel>();
    is_send::<PrimaOutput>();
}
