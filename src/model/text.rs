//! Upstream's `SerieTransformerEncoder` (docs/prima-inference-spec.md §11): series-name and
//! study-description encoders over `chartovec` character ids.
//!
//! Rows are batched zero-padded with a key-padding mask instead of upstream's per-row
//! loop; each row attends only to its own first `len` positions, as upstream.

use tch::Tensor;

use super::manifest::{FormKind, NameEncoderConfig};
use super::patchify::sincos_table;
use super::vit::{Linear, Packing, Transformer, TransformerConfig};
use super::weights::Weights;
use super::ModelError;

/// The end token `chartovec` appends (spec §9.4).
pub const END_TOKEN: i64 = 46;

/// `SerieTransformerEncoder(out_dim, prelinear)` at one key prefix.
pub struct SerieTransformerEncoder {
    embed: Tensor,
    /// (rows, pe_dim) 1-D positional encoding table (`p_enc`).
    p_enc: Tensor,
    transformer: Transformer,
    /// Its own `linear`, applied unless `prelinear`.
    linear: Option<Linear>,
    embsize: i64,
}

impl SerieTransformerEncoder {
    /// Weights at `<prefix>.{embed, transformer, linear}`; `<prefix>.p_enc` when the
    /// converter exported it, else computed (§11.1).
    pub(crate) fn new(
        w: &Weights,
        prefix: &str,
        c: &NameEncoderConfig,
    ) -> Result<Self, ModelError> {
        let [n_emb, emb_dim] = c.embedding;
        let embed = w.get_shaped(&format!("{prefix}.embed.weight"), &[n_emb, emb_dim])?;
        if emb_dim + c.positional_encoding_dim != c.embsize {
            return Err(ModelError::Input(format!(
                "{prefix}: embedding {emb_dim} + positional {} != embsize {}",
                c.positional_encoding_dim, c.embsize
            )));
        }
        let pe_key = c
            .p_enc_key
            .clone()
            .unwrap_or_else(|| format!("{prefix}.p_enc"));
        let p_enc = if w.contains(&pe_key) {
            w.get_shaped(&pe_key, &[-1, c.positional_encoding_dim])?
        } else {
            sincos_table(c.positional_encoding_rows, c.positional_encoding_dim)?
                .f_to_kind(embed.kind())?
                .f_to_device(embed.device())?
        };
        let tc = TransformerConfig {
            dim: c.embsize,
            depth: c.depth,
            heads: c.heads,
            dim_head: c.dim_head,
            mlp_dim: c.mlp_dim,
            scale: c
                .attention_scale
                .unwrap_or_else(|| (c.dim_head as f64).powf(-0.5)),
            eps: c.layernorm_eps,
            project_out: c.project_out,
        };
        let transformer = Transformer::new(w, &format!("{prefix}.transformer"), &tc)?;
        let linear = if c.prelinear {
            None
        } else {
            Some(Linear::new(
                w,
                &format!("{prefix}.linear"),
                c.embsize,
                c.linear_out,
                true,
            )?)
        };
        Ok(SerieTransformerEncoder {
            embed,
            p_enc,
            transformer,
            linear,
            embsize: c.embsize,
        })
    }

    /// Width of [`Self::forward`]'s output.
    pub fn out_dim(&self) -> i64 {
        self.linear.as_ref().map_or(self.embsize, Linear::out_dim)
    }

    /// Rows of character ids, each containing exactly one [`END_TOKEN`] (anything after
    /// it is ignored, as upstream) → (B, out_dim).
    pub fn forward(&self, rows: &[Vec<i64>]) -> Result<Tensor, ModelError> {
        let device = self.embed.device();
        let mut lens = Vec::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            let ends = r.iter().filter(|&&c| c == END_TOKEN).count();
            let n_emb = self.embed.size()[0];
            if ends != 1 || r.iter().any(|&c| c < 0 || c >= n_emb) {
                return Err(ModelError::Input(format!(
                    "character-id row {i} must hold ids in 0..{n_emb} and exactly one end token"
                )));
            }
            lens.push(r.iter().position(|&c| c == END_TOKEN).unwrap_or(0) as i64 + 1);
        }
        if rows.is_empty() {
            return Err(ModelError::Input("no character-id rows".into()));
        }
        let l = *lens.iter().max().unwrap_or(&1);
        if l > self.p_enc.size()[0] {
            return Err(ModelError::Input(format!(
                "text of {l} characters exceeds the {} positional rows",
                self.p_enc.size()[0]
            )));
        }
        // Packed: each row's first `len` ids, and its positions 0..len.
        let ids: Vec<i64> = rows
            .iter()
            .zip(&lens)
            .flat_map(|(r, &n)| r[..n as usize].iter().copied())
            .collect();
        let pos: Vec<i64> = lens.iter().flat_map(|&n| 0..n).collect();
        let ids = Tensor::from_slice(&ids).f_to_device(device)?;
        let pos = Tensor::from_slice(&pos).f_to_device(device)?;
        let x = Tensor::f_embedding(&self.embed, &ids, -1, false, false)?;
        let pe = self.p_enc.f_index_select(0, &pos)?;
        let x = Tensor::f_cat(&[&x, &pe], 1)?;
        let pk = Packing::new(&lens, device)?;
        let y = self.transformer.forward(&x, &pk)?;
        // Output at each row's end token.
        let last: Vec<i64> = pk
            .starts()
            .iter()
            .zip(&lens)
            .map(|(&s, &n)| s + n - 1)
            .collect();
        let y = y.f_index_select(0, &Tensor::from_slice(&last).f_to_device(device)?)?;
        match &self.linear {
            Some(lin) => lin.forward(&y),
            None => Ok(y),
        }
    }
}

/// A name encoder as HierViT holds it: a `SerieTransformerEncoder`, optionally inside a
/// `Sequential` with a projection (spec §11 steps 5–6).
pub struct NameEncoder {
    encoder: SerieTransformerEncoder,
    projection: Option<Linear>,
}

impl NameEncoder {
    /// `prefix` = the HierViT attribute (`clipvisualmodel.serieencoder`). The form comes
    /// from `form_kind` or, when absent, from the stored keys.
    pub(crate) fn new(
        w: &Weights,
        prefix: &str,
        c: &NameEncoderConfig,
    ) -> Result<Self, ModelError> {
        let form = match c.form_kind {
            Some(f) => f,
            None if w.contains(&format!("{prefix}.0.embed.weight")) => FormKind::Sequential,
            None => FormKind::Plain,
        };
        match form {
            FormKind::Sequential => {
                let enc_prefix = c
                    .state_dict_prefix
                    .clone()
                    .unwrap_or_else(|| format!("{prefix}.0"));
                let proj_prefix = c
                    .projection_prefix
                    .clone()
                    .unwrap_or_else(|| format!("{prefix}.1"));
                let encoder = SerieTransformerEncoder::new(w, &enc_prefix, c)?;
                let projection = Linear::from_stored(w, &proj_prefix)?;
                if projection.in_dim() != encoder.out_dim() {
                    return Err(ModelError::Shape {
                        key: format!("{proj_prefix}.weight"),
                        actual: projection.weight.size(),
                        expected: vec![-1, encoder.out_dim()],
                    });
                }
                Ok(NameEncoder {
                    encoder,
                    projection: Some(projection),
                })
            }
            FormKind::Plain => Ok(NameEncoder {
                encoder: SerieTransformerEncoder::new(
                    w,
                    c.state_dict_prefix.as_deref().unwrap_or(prefix),
                    c,
                )?,
                projection: None,
            }),
        }
    }

    pub fn out_dim(&self) -> i64 {
        self.projection
            .as_ref()
            .map_or(self.encoder.out_dim(), Linear::out_dim)
    }

    /// Rows of character ids → (B, out_dim).
    pub fn forward(&self, rows: &[Vec<i64>]) -> Result<Tensor, ModelError> {
        let y = self.encoder.forward(rows)?;
        match &self.projection {
            Some(p) => p.forward(&y),
            None => Ok(y),
        }
    }
}
