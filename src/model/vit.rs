//! Upstream's `Transformer` and `ViT` (spec §12) over packed variable-length sequences.
//!
//! Like upstream (flash-attn varlen, or its own per-sequence loop on CPU) the sequences
//! are packed row-wise, (N, dim) with N = Σ lengths, so the row-wise parts (LayerNorm,
//! projections, feed-forward) cost exactly the real tokens. Attention is one batched
//! `scaled_dot_product_attention` call per layer: q/k/v are scattered into a zero-padded
//! (B, H, L, Dh) batch with a boolean key-padding mask, so no sequence attends to
//! another's tokens or to padding, and the real rows are gathered back. No per-sequence
//! loops.

use tch::{Device, Kind, Tensor};

use super::manifest::VitConfig;
use super::weights::Weights;
use super::ModelError;

/// `nn.Linear`.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// `<prefix>.weight` (out, in) and, when `with_bias`, `<prefix>.bias` (out).
    pub(crate) fn new(
        w: &Weights,
        prefix: &str,
        in_dim: i64,
        out_dim: i64,
        with_bias: bool,
    ) -> Result<Self, ModelError> {
        let weight = w.get_shaped(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
        let bias = if with_bias {
            Some(w.get_shaped(&format!("{prefix}.bias"), &[out_dim])?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// Like [`Linear::new`] with the sizes read from the stored weight.
    pub(crate) fn from_stored(w: &Weights, prefix: &str) -> Result<Self, ModelError> {
        let s = w.shape(&format!("{prefix}.weight"))?;
        if s.len() != 2 {
            return Err(ModelError::Shape {
                key: format!("{prefix}.weight"),
                actual: s,
                expected: vec![-1, -1],
            });
        }
        Linear::new(w, prefix, s[1], s[0], true)
    }

    pub fn in_dim(&self) -> i64 {
        self.weight.size()[1]
    }

    pub fn out_dim(&self) -> i64 {
        self.weight.size()[0]
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(x.f_linear(&self.weight, self.bias.as_ref())?)
    }
}

/// `nn.LayerNorm(dim)` over the last axis.
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub(crate) fn new(w: &Weights, prefix: &str, dim: i64, eps: f64) -> Result<Self, ModelError> {
        Ok(LayerNorm {
            weight: w.get_shaped(&format!("{prefix}.weight"), &[dim])?,
            bias: w.get_shaped(&format!("{prefix}.bias"), &[dim])?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let d = *self.weight.size().last().unwrap_or(&0);
        Ok(x.f_layer_norm([d], Some(&self.weight), Some(&self.bias), self.eps, true)?)
    }
}

/// Hyper-parameters of one `Transformer(dim, depth, heads, dim_head, mlp_dim)`.
#[derive(Debug, Clone, Copy)]
pub struct TransformerConfig {
    pub dim: i64,
    pub depth: i64,
    pub heads: i64,
    pub dim_head: i64,
    pub mlp_dim: i64,
    pub scale: f64,
    pub eps: f64,
    /// Whether attention has `to_out`; `None` = decide from the stored keys.
    pub project_out: Option<bool>,
}

impl TransformerConfig {
    pub fn from_vit(c: &VitConfig) -> Self {
        TransformerConfig {
            dim: c.dim,
            depth: c.depth,
            heads: c.heads,
            dim_head: c.dim_head,
            mlp_dim: c.mlp_dim,
            scale: c
                .attention_scale
                .unwrap_or_else(|| (c.dim_head as f64).powf(-0.5)),
            eps: c.layernorm_eps,
            project_out: c.project_out,
        }
    }
}

/// `PreNorm(dim, Attention(dim, heads, dim_head))` = `layers.<l>.0`.
pub struct Attention {
    norm: LayerNorm,
    to_qkv: Linear,
    /// Absent (identity) when `heads == 1 && dim_head == dim`, as upstream.
    to_out: Option<Linear>,
    heads: i64,
    dim_head: i64,
    scale: f64,
}

impl Attention {
    pub(crate) fn new(
        w: &Weights,
        prefix: &str,
        c: &TransformerConfig,
    ) -> Result<Self, ModelError> {
        let inner = c.heads * c.dim_head;
        let out_key = format!("{prefix}.fn.to_out.0");
        let stored = w.contains(&format!("{out_key}.weight"));
        // Upstream: `project_out = not (heads == 1 and dim_head == dim)`.
        let identity_ok = c.heads == 1 && c.dim_head == c.dim;
        let to_out = if c.project_out.unwrap_or(stored || !identity_ok) {
            Some(Linear::new(w, &out_key, inner, c.dim, true)?)
        } else if identity_ok {
            None
        } else {
            return Err(ModelError::MissingTensor {
                path: w.path().to_path_buf(),
                key: format!("{out_key}.weight"),
            });
        };
        Ok(Attention {
            norm: LayerNorm::new(w, &format!("{prefix}.norm"), c.dim, c.eps)?,
            to_qkv: Linear::new(w, &format!("{prefix}.fn.to_qkv"), c.dim, 3 * inner, false)?,
            to_out,
            heads: c.heads,
            dim_head: c.dim_head,
            scale: c.scale,
        })
    }

    /// x (N, dim) packed → x + attn(x), each sequence attending only to itself.
    fn forward(&self, x: &Tensor, pk: &Packing) -> Result<Tensor, ModelError> {
        let (b, l) = (pk.batch(), pk.max_len());
        let inner = self.heads * self.dim_head;
        let h = self.norm.forward(x)?;
        let qkv = self.to_qkv.forward(&h)?;
        let qkv = match &pk.scatter {
            Some(idx) => Tensor::f_zeros([b * l, 3 * inner], (qkv.kind(), qkv.device()))?
                .f_index_copy(0, idx, &qkv)?,
            None => qkv,
        };
        let qkv = qkv
            .f_view([b, l, 3, self.heads, self.dim_head])?
            .f_permute([2, 0, 3, 1, 4])?;
        let (q, k, v) = (qkv.f_get(0)?, qkv.f_get(1)?, qkv.f_get(2)?);
        let o = Tensor::f_scaled_dot_product_attention(
            &q,
            &k,
            &v,
            pk.mask.as_ref(),
            0.0,
            false,
            self.scale,
            false,
        )?;
        // (B, H, L, Dh) → (B·L, H·Dh), head-major as upstream's `b n h d -> b n (h d)`.
        let o = o.f_transpose(1, 2)?.f_reshape([b * l, inner])?;
        let o = match &pk.scatter {
            Some(idx) => o.f_index_select(0, idx)?,
            None => o,
        };
        let o = match &self.to_out {
            Some(lin) => lin.forward(&o)?,
            None => o,
        };
        Ok(o.f_add(x)?)
    }
}

/// `PreNorm(dim, FeedForward(dim, mlp_dim))` = `layers.<l>.1`.
pub struct FeedForward {
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl FeedForward {
    pub(crate) fn new(
        w: &Weights,
        prefix: &str,
        c: &TransformerConfig,
    ) -> Result<Self, ModelError> {
        Ok(FeedForward {
            norm: LayerNorm::new(w, &format!("{prefix}.norm"), c.dim, c.eps)?,
            fc1: Linear::new(w, &format!("{prefix}.fn.net.0"), c.dim, c.mlp_dim, true)?,
            fc2: Linear::new(w, &format!("{prefix}.fn.net.3"), c.mlp_dim, c.dim, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let h = self.norm.forward(x)?;
        // nn.GELU() is the exact erf form.
        let h = self.fc1.forward(&h)?.f_gelu("none")?;
        Ok(self.fc2.forward(&h)?.f_add(x)?)
    }
}

/// `Transformer(dim, depth, heads, dim_head, mlp_dim)`: `depth` pre-norm blocks, no final norm.
pub struct Transformer {
    layers: Vec<(Attention, FeedForward)>,
}

impl Transformer {
    /// Weights at `<prefix>.layers.<l>.{0,1}.*`.
    pub(crate) fn new(
        w: &Weights,
        prefix: &str,
        c: &TransformerConfig,
    ) -> Result<Self, ModelError> {
        let layers = (0..c.depth)
            .map(|l| {
                Ok((
                    Attention::new(w, &format!("{prefix}.layers.{l}.0"), c)?,
                    FeedForward::new(w, &format!("{prefix}.layers.{l}.1"), c)?,
                ))
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(Transformer { layers })
    }

    /// x (N, dim): the sequences of `pk` packed row-wise → (N, dim).
    pub fn forward(&self, x: &Tensor, pk: &Packing) -> Result<Tensor, ModelError> {
        if x.size().first() != Some(&pk.total()) {
            return Err(ModelError::Input(format!(
                "packed input {:?} for {} rows",
                x.size(),
                pk.total()
            )));
        }
        let mut x = x.shallow_clone();
        for (att, ff) in &self.layers {
            x = att.forward(&x, pk)?;
            x = ff.forward(&x)?;
        }
        Ok(x)
    }
}

/// Layout of packed sequences and what one padded attention call needs.
pub struct Packing {
    lens: Vec<i64>,
    starts: Vec<i64>,
    max_len: i64,
    /// (N,) position of each packed row in the padded (B·L) layout; `None` when no
    /// padding is needed (all sequences of the same length).
    scatter: Option<Tensor>,
    /// (B, 1, 1, L) bool, true = key takes part; `None` without padding.
    mask: Option<Tensor>,
}

impl Packing {
    pub fn new(lens: &[i64], device: Device) -> Result<Self, ModelError> {
        if lens.is_empty() || lens.iter().any(|&n| n < 1) {
            return Err(ModelError::Input(format!("sequence lengths {lens:?}")));
        }
        let max_len = *lens.iter().max().unwrap_or(&1);
        let starts: Vec<i64> = lens
            .iter()
            .scan(0, |acc, &n| {
                let s = *acc;
                *acc += n;
                Some(s)
            })
            .collect();
        let (scatter, mask) = if lens.iter().all(|&n| n == max_len) {
            (None, None)
        } else {
            let idx: Vec<i64> = lens
                .iter()
                .enumerate()
                .flat_map(|(b, &n)| (0..n).map(move |p| b as i64 * max_len + p))
                .collect();
            let b = lens.len() as i64;
            let lens_t = Tensor::from_slice(lens)
                .f_to_device(device)?
                .f_view([-1, 1])?;
            let pos = Tensor::f_arange(max_len, (Kind::Int64, device))?.f_view([1, -1])?;
            let mask = pos.f_lt_tensor(&lens_t)?.f_view([b, 1, 1, max_len])?;
            (
                Some(Tensor::from_slice(&idx).f_to_device(device)?),
                Some(mask),
            )
        };
        Ok(Packing {
            lens: lens.to_vec(),
            starts,
            max_len,
            scatter,
            mask,
        })
    }

    pub fn batch(&self) -> i64 {
        self.lens.len() as i64
    }

    pub fn max_len(&self) -> i64 {
        self.max_len
    }

    pub fn total(&self) -> i64 {
        self.lens.iter().sum()
    }

    pub fn lens(&self) -> &[i64] {
        &self.lens
    }

    /// Packed row of each sequence's first position.
    pub fn starts(&self) -> &[i64] {
        &self.starts
    }
}

/// Upstream's `ViT` (spec §12.2): cls pooling, no positional embedding.
pub struct Vit {
    cls_token: Tensor,
    transformer: Transformer,
    layernorm: LayerNorm,
    mlp_head: Option<Linear>,
    clsnum: i64,
    dim: i64,
}

/// What a ViT returns: pooled cls tokens and, for `retboth`, the `mlp_head` output.
pub struct VitOutput {
    /// (B, clsnum·dim).
    pub pooled: Tensor,
    /// (B, num_classes), when the ViT was built with its head.
    pub head: Option<Tensor>,
}

impl Vit {
    /// Weights at `<prefix>.{cls_token, transformer.*, layernorm.*, mlp_head.0.*}`;
    /// `with_head` = whether `mlp_head` is used (`retboth`) or not (`retpool`).
    pub(crate) fn new(
        w: &Weights,
        prefix: &str,
        c: &VitConfig,
        with_head: bool,
    ) -> Result<Self, ModelError> {
        let tc = TransformerConfig::from_vit(c);
        let mlp_head = if with_head {
            Some(Linear::new(
                w,
                &format!("{prefix}.mlp_head.0"),
                c.clsnum * c.dim,
                c.num_classes,
                true,
            )?)
        } else {
            None
        };
        Ok(Vit {
            cls_token: w.get_shaped(&format!("{prefix}.cls_token"), &[1, c.clsnum, c.dim])?,
            transformer: Transformer::new(w, &format!("{prefix}.transformer"), &tc)?,
            layernorm: LayerNorm::new(w, &format!("{prefix}.layernorm"), c.dim, c.layernorm_eps)?,
            mlp_head,
            clsnum: c.clsnum,
            dim: c.dim,
        })
    }

    /// `seqs[b]` (m_b, dim) token sequences → pooled (B, clsnum·dim) (and the head).
    pub fn forward(&self, seqs: &[Tensor]) -> Result<VitOutput, ModelError> {
        if seqs.is_empty() {
            return Err(ModelError::Input("ViT without input sequences".into()));
        }
        let cls = self.cls_token.f_reshape([self.clsnum, self.dim])?;
        let mut parts = Vec::with_capacity(2 * seqs.len());
        let mut lens = Vec::with_capacity(seqs.len());
        for x in seqs {
            let s = x.size();
            if s.len() != 2 || s[1] != self.dim || s[0] < 1 {
                return Err(ModelError::Input(format!(
                    "ViT input sequence {s:?}, dim {}",
                    self.dim
                )));
            }
            parts.push(&cls);
            parts.push(x);
            lens.push(s[0] + self.clsnum);
        }
        let x = Tensor::f_cat(&parts, 0)?;
        let pk = Packing::new(&lens, x.device())?;
        let y = self.transformer.forward(&x, &pk)?;
        let rows: Vec<i64> = pk
            .starts()
            .iter()
            .flat_map(|&s| s..s + self.clsnum)
            .collect();
        let rows = Tensor::from_slice(&rows).f_to_device(x.device())?;
        let b = seqs.len() as i64;
        let pooled = self
            .layernorm
            .forward(&y.f_index_select(0, &rows)?)?
            .f_reshape([b, self.clsnum * self.dim])?;
        let head = match &self.mlp_head {
            Some(h) => Some(h.forward(&pooled)?),
            None => None,
        };
        Ok(VitOutput { pooled, head })
    }
}
