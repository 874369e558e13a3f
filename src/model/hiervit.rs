//! Upstream's `HierViT` (docs/prima-inference-spec.md §10): per-series inner ViT over [name
//! token, patch tokens], outer ViT over [study-description token, series embeddings] →
//! `clip_emb`.

use tch::Tensor;

use super::manifest::Architecture;
use super::text::NameEncoder;
use super::vit::{Vit, VitOutput};
use super::weights::Weights;
use super::ModelError;

pub struct HierVit {
    serie_encoder: Option<NameEncoder>,
    study_encoder: Option<NameEncoder>,
    inner: Vit,
    outer: Vit,
    d_in: i64,
}

/// Everything the HierViT computes for one study (on the model's device and kind).
pub struct HierVitOutput {
    /// (S, D_in), when `useseriename`.
    pub serie_name_enc: Option<Tensor>,
    /// (1, D_out), when `usestudydescription`.
    pub study_enc: Option<Tensor>,
    /// (S, C_in·D_in).
    pub inner_pooled: Tensor,
    /// (S, NC_in).
    pub series_emb: Tensor,
    /// (1, C_out·D_out).
    pub clip_emb: Tensor,
}

impl HierVit {
    /// Weights at `<prefix>.{serieencoder, studyencoder, innerViT, outerViT}`.
    pub(crate) fn new(w: &Weights, prefix: &str, a: &Architecture) -> Result<Self, ModelError> {
        let (d_in, d_out) = (a.inner.dim, a.outer.dim);
        if a.inner.num_classes != d_out {
            return Err(ModelError::Input(format!(
                "inner num_classes {} != outer dim {d_out}",
                a.inner.num_classes
            )));
        }
        let serie_encoder = match (&a.serie_name_encoder, a.useseriename) {
            (Some(c), true) => Some(NameEncoder::new(w, &format!("{prefix}.serieencoder"), c)?),
            _ => None,
        };
        let study_encoder = match (&a.study_description_encoder, a.usestudydescription) {
            (Some(c), true) => Some(NameEncoder::new(w, &format!("{prefix}.studyencoder"), c)?),
            _ => None,
        };
        for (what, enc, d) in [
            ("serie", &serie_encoder, d_in),
            ("study", &study_encoder, d_out),
        ] {
            if let Some(e) = enc {
                if e.out_dim() != d {
                    return Err(ModelError::Input(format!(
                        "{what} encoder output {} != ViT dim {d}",
                        e.out_dim()
                    )));
                }
            }
        }
        Ok(HierVit {
            serie_encoder,
            study_encoder,
            inner: Vit::new(w, &format!("{prefix}.innerViT"), &a.inner, true)?,
            outer: Vit::new(w, &format!("{prefix}.outerViT"), &a.outer, false)?,
            d_in,
        })
    }

    /// `tokens[s]` (K_s, D_in) patchified tokens of series s (model device/kind),
    /// `names[s]` its character ids, `study` the study description's ids.
    pub fn forward(
        &self,
        tokens: &[Tensor],
        names: &[Vec<i64>],
        study: &[i64],
    ) -> Result<HierVitOutput, ModelError> {
        let s = tokens.len();
        if s == 0 || names.len() != s {
            return Err(ModelError::Input(format!(
                "{s} token sets for {} series names",
                names.len()
            )));
        }
        let serie_name_enc = self.name_encodings(names)?;
        let rows: Vec<usize> = (0..s).collect();
        let inner = self.inner(tokens, serie_name_enc.as_ref(), &rows)?;
        let series_emb = inner
            .head
            .ok_or_else(|| ModelError::Input("inner ViT without mlp_head".into()))?;
        let study_enc = self.study_encoding(study)?;
        let clip_emb = self.outer(&[series_emb.shallow_clone()], study_enc.as_ref())?;
        Ok(HierVitOutput {
            serie_name_enc,
            study_enc,
            inner_pooled: inner.pooled,
            series_emb,
            clip_emb,
        })
    }

    /// (S, D_in) series-name encodings, when `useseriename`.
    pub fn name_encodings(&self, names: &[Vec<i64>]) -> Result<Option<Tensor>, ModelError> {
        self.serie_encoder
            .as_ref()
            .map(|e| e.forward(names))
            .transpose()
    }

    /// (1, D_out) study-description encoding, when `usestudydescription`.
    pub fn study_encoding(&self, study: &[i64]) -> Result<Option<Tensor>, ModelError> {
        self.study_encoder
            .as_ref()
            .map(|e| e.forward(&[study.to_vec()]))
            .transpose()
    }

    /// The inner ViT over `tokens[b]` (K_b, D_in), each sequence led by row `name_rows[b]`
    /// of `name_enc` when names are used: one call, sequences packed. Each sequence's
    /// result depends on that sequence alone, so a series can be run by itself.
    pub fn inner(
        &self,
        tokens: &[Tensor],
        name_enc: Option<&Tensor>,
        name_rows: &[usize],
    ) -> Result<VitOutput, ModelError> {
        if name_rows.len() != tokens.len() {
            return Err(ModelError::Input(format!(
                "{} token sets for {} name rows",
                tokens.len(),
                name_rows.len()
            )));
        }
        let mut seqs = Vec::with_capacity(tokens.len());
        for (t, &row) in tokens.iter().zip(name_rows) {
            let sz = t.size();
            if sz.len() != 2 || sz[1] != self.d_in || sz[0] == 0 {
                return Err(ModelError::Input(format!(
                    "series tokens of shape {sz:?}, expected (K>0, {})",
                    self.d_in
                )));
            }
            seqs.push(match name_enc {
                Some(ne) => Tensor::f_cat(&[&ne.f_narrow(0, row as i64, 1)?, t], 0)?,
                None => t.shallow_clone(),
            });
        }
        self.inner.forward(&seqs)
    }

    /// The outer ViT over studies given by their series embeddings `series_emb[b]`
    /// (S_b, D_out), each led by the study encoding when used → clip_emb (B, C_out·D_out).
    pub fn outer(
        &self,
        series_emb: &[Tensor],
        study_enc: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        let seqs = series_emb
            .iter()
            .map(|e| match study_enc {
                Some(se) => Ok(Tensor::f_cat(&[se, e], 0)?),
                None => Ok(e.shallow_clone()),
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(self.outer.forward(&seqs)?.pooled)
    }
}
