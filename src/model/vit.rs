//! Upstream's `Transformer` and `ViT` (docs/prima-inference-spec.md §12) over packed sequences.
//!
//! Like upstream (flash-attn varlen, or its own per-sequence loop on CPU) the sequences
//! are packed row-wise, (N, dim) with N = Σ lengths, so the row-wise parts (LayerNorm,
//! projections, feed-forward) cost exactly the real tokens. Attention is done as batched
//! `scaled_dot_product_attention` calls with boolean key-padding masks, so no sequence
//! attends to another's tokens or to padding. Sequences are grouped by length first and
//! each group is padded only to its own longest member: a study's longest series (a 3-D
//! volume can have twice the tokens of the others) no longer makes every other series pay
//! for its length squared. One call per length group, never one per sequence.

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
        let inner = self.heads * self.dim_head;
        let h = self.norm.forward(x)?;
        let qkv = self.to_qkv.forward(&h)?;
        // A zero row at index N stands in for every padding position of a group.
        let qkv_ext = if pk.unscatter.is_some() {
            Tensor::f_cat(
                &[
                    &qkv,
                    &Tensor::f_zeros([1, 3 * inner], (qkv.kind(), qkv.device()))?,
                ],
                0,
            )?
        } else {
            qkv.shallow_clone()
        };
        let mut outs = Vec::with_capacity(pk.groups.len());
        for g in &pk.groups {
            let part = match &g.gather {
                Some(idx) => qkv_ext.f_index_select(0, idx)?,
                None => qkv.shallow_clone(),
            };
            let part = part
                .f_view([g.batch, g.len, 3, self.heads, self.dim_head])?
                .f_permute([2, 0, 3, 1, 4])?;
            let (q, k, v) = (part.f_get(0)?, part.f_get(1)?, part.f_get(2)?);
            let o = Tensor::f_scaled_dot_product_attention(
                &q,
                &k,
                &v,
                g.mask.as_ref(),
                0.0,
                false,
                self.scale,
                false,
            )?;
            // (B, H, L, Dh) → (B·L, H·Dh), head-major as upstream's `b n h d -> b n (h d)`.
            outs.push(o.f_transpose(1, 2)?.f_reshape([g.batch * g.len, inner])?);
        }
        let o = match &pk.unscatter {
            Some(idx) => Tensor::f_cat(&outs, 0)?.f_index_select(0, idx)?,
            None => outs.swap_remove(0),
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

/// One padded attention call: `batch` sequences padded to `len`.
struct Group {
    batch: i64,
    len: i64,
    /// (batch·len,) packed row of each padded position, N (a zero row) for padding;
    /// `None` when the group is the whole packed input without padding.
    gather: Option<Tensor>,
    /// (batch, 1, 1, len) bool, true = key takes part; `None` without padding.
    mask: Option<Tensor>,
}

/// Layout of packed sequences and the padded attention calls that cover them.
pub struct Packing {
    lens: Vec<i64>,
    starts: Vec<i64>,
    groups: Vec<Group>,
    /// (N,) row of each packed row in the concatenated group outputs; `None` with a
    /// single unpadded group.
    unscatter: Option<Tensor>,
}

/// Relative cost of one padded attention call over `b` sequences of length `l`, in units
/// of one attention score per head: the scores (∝ b·l²), the gathers and copies (∝ b·l)
/// and a fixed per-call overhead. Only the grouping depends on it, never the result.
fn group_cost(b: i64, l: i64) -> f64 {
    let (b, l) = (b as f64, l as f64);
    4.0 * b * l * l + 30.0 * b * l + 20_000.0
}

/// Splits the sequences, sorted by decreasing length, into runs that minimise the summed
/// [`group_cost`] (exact dynamic programme; S is the number of series, small).
fn length_groups(lens: &[i64]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
    let n = order.len();
    // best[j] = cheapest cost of covering order[..j]; cut[j] = start of its last run.
    let mut best = vec![0.0f64; n + 1];
    let mut cut = vec![0usize; n + 1];
    for j in 1..=n {
        best[j] = f64::INFINITY;
        for i in 0..j {
            let c = best[i] + group_cost((j - i) as i64, lens[order[i]]);
            if c < best[j] {
                best[j] = c;
                cut[j] = i;
            }
        }
    }
    let mut groups = Vec::new();
    let mut j = n;
    while j > 0 {
        let i = cut[j];
        groups.push(order[i..j].to_vec());
        j = i;
    }
    groups.reverse();
    groups
}

impl Packing {
    pub fn new(lens: &[i64], device: Device) -> Result<Self, ModelError> {
        if lens.is_empty() || lens.iter().any(|&n| n < 1) {
            return Err(ModelError::Input(format!("sequence lengths {lens:?}")));
        }
        let starts: Vec<i64> = lens
            .iter()
            .scan(0, |acc, &n| {
                let s = *acc;
                *acc += n;
                Some(s)
            })
            .collect();
        let total: i64 = lens.iter().sum();
        let max_len = *lens.iter().max().unwrap_or(&1);
        if lens.iter().all(|&n| n == max_len) {
            return Ok(Packing {
                lens: lens.to_vec(),
                starts,
                groups: vec![Group {
                    batch: lens.len() as i64,
                    len: max_len,
                    gather: None,
                    mask: None,
                }],
                unscatter: None,
            });
        }
        let mut groups = Vec::new();
        let mut unscatter = vec![0i64; total as usize];
        let mut offset = 0i64;
        for members in length_groups(lens) {
            let len = members.iter().map(|&i| lens[i]).max().unwrap_or(1);
            let batch = members.len() as i64;
            let mut gather = Vec::with_capacity((batch * len) as usize);
            for (slot, &i) in members.iter().enumerate() {
                for p in 0..len {
                    if p < lens[i] {
                        let row = starts[i] + p;
                        gather.push(row);
                        unscatter[row as usize] = offset + slot as i64 * len + p;
                    } else {
                        gather.push(total);
                    }
                }
            }
            let mask = if members.iter().all(|&i| lens[i] == len) {
                None
            } else {
                let glens: Vec<i64> = members.iter().map(|&i| lens[i]).collect();
                let glens = Tensor::from_slice(&glens)
                    .f_to_device(device)?
                    .f_view([-1, 1])?;
                let pos = Tensor::f_arange(len, (Kind::Int64, device))?.f_view([1, -1])?;
                Some(pos.f_lt_tensor(&glens)?.f_view([batch, 1, 1, len])?)
            };
            groups.push(Group {
                batch,
                len,
                gather: Some(Tensor::from_slice(&gather).f_to_device(device)?),
                mask,
            });
            offset += batch * len;
        }
        Ok(Packing {
            lens: lens.to_vec(),
            starts,
            groups,
            unscatter: Some(Tensor::from_slice(&unscatter).f_to_device(device)?),
        })
    }

    pub fn batch(&self) -> i64 {
        self.lens.len() as i64
    }

    /// Number of padded attention calls per layer.
    pub fn calls(&self) -> usize {
        self.groups.len()
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

#[cfg(test)]
mod packing_tests {
    use super::*;

    #[test]
    fn groups_cover_every_sequence_once() {
        for lens in [
            vec![209, 453, 196, 213, 165, 175],
            vec![5],
            vec![7, 7, 7],
            vec![1, 1000, 2, 999, 30],
        ] {
            let g = length_groups(&lens);
            let mut all: Vec<usize> = g.iter().flatten().copied().collect();
            all.sort();
            assert_eq!(all, (0..lens.len()).collect::<Vec<_>>(), "{lens:?}");
        }
        // One long sequence among short ones gets its own call.
        let g = length_groups(&[209, 453, 196, 213, 165, 175]);
        assert!(g.len() >= 2 && g[0] == vec![1], "{g:?}");
    }

    /// Grouped attention equals attention over each sequence alone.
    #[test]
    fn grouped_attention_matches_single_sequences() {
        tch::manual_seed(3);
        let c = TransformerConfig {
            dim: 16,
            depth: 1,
            heads: 2,
            dim_head: 8,
            mlp_dim: 32,
            scale: 8f64.powf(-0.5),
            eps: 1e-5,
            project_out: Some(true),
        };
        let w = |o: i64, i: i64| Tensor::randn([o, i], (Kind::Float, Device::Cpu)) * 0.3;
        let att = Attention {
            norm: LayerNorm {
                weight: Tensor::ones([16], (Kind::Float, Device::Cpu)),
                bias: Tensor::zeros([16], (Kind::Float, Device::Cpu)),
                eps: c.eps,
            },
            to_qkv: Linear {
                weight: w(48, 16),
                bias: None,
            },
            to_out: Some(Linear {
                weight: w(16, 16),
                bias: Some(Tensor::zeros([16], (Kind::Float, Device::Cpu))),
            }),
            heads: 2,
            dim_head: 8,
            scale: c.scale,
        };
        let lens = [40i64, 3, 90, 41, 5, 38];
        let x = Tensor::randn([lens.iter().sum::<i64>(), 16], (Kind::Float, Device::Cpu));
        let pk = Packing::new(&lens, Device::Cpu).unwrap();
        assert!(pk.calls() >= 2);
        let y = att.forward(&x, &pk).unwrap();
        for (i, &n) in lens.iter().enumerate() {
            let xi = x.narrow(0, pk.starts()[i], n);
            let one = Packing::new(&[n], Device::Cpu).unwrap();
            let yi = att.forward(&xi, &one).unwrap();
            let d = (y.narrow(0, pk.starts()[i], n) - yi)
                .abs()
                .max()
                .double_value(&[]);
            assert!(d < 1e-5, "sequence {i}: {d}");
        }
    }
}
