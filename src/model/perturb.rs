//! One study's HierViT input held fixed while parts of it are taken away: what LIME's
//! perturbations and the series occlusion leave unchanged (the series-name and
//! study-description encodings, every series' inner-ViT embedding) is computed once, and
//! each batch of perturbed inputs runs only what changes: the inner ViT of the one
//! perturbed series (sequences packed into one call), the outer ViT and one head.
//!
//! Each inner sequence's result depends on that sequence alone and the outer ViT sees only
//! the series embeddings, so a perturbed input's logit is the one a whole-study forward
//! gives, up to float rounding (a different packing of the attention calls).

use tch::Tensor;

use super::prima::PrimaModel;
use super::ModelError;

pub struct FixedStudy<'m> {
    model: &'m PrimaModel,
    /// Per series: patchified tokens (K_s, D_in) on the model's device and kind.
    tokens: Vec<Tensor>,
    name_enc: Option<Tensor>,
    study_enc: Option<Tensor>,
    /// (S, D_out) inner-ViT embeddings of the unperturbed series.
    series_emb: Tensor,
    /// Run under CUDA float16 autocast, as upstream's LIME does on a GPU (a no-op on the
    /// CPU, where libtorch's autocast does not apply).
    autocast: bool,
}

impl PrimaModel {
    /// `series` and `study_description` as [`PrimaModel::forward`] takes them.
    pub fn fix_study(
        &self,
        series: &[(Tensor, Vec<i64>)],
        study_description: &[i64],
        autocast: bool,
    ) -> Result<FixedStudy<'_>, ModelError> {
        let _guard = tch::no_grad_guard();
        if series.is_empty() {
            return Err(ModelError::Input("a study without series".into()));
        }
        let (device, kind) = (self.options().device, self.options().precision.kind());
        let tokens = series
            .iter()
            .map(|(t, _)| Ok(t.f_to_device(device)?.f_to_kind(kind)?))
            .collect::<Result<Vec<_>, ModelError>>()?;
        let names: Vec<Vec<i64>> = series.iter().map(|(_, n)| n.clone()).collect();
        let h = self.hiervit();
        tch::autocast(autocast, || {
            let name_enc = h.name_encodings(&names)?;
            let study_enc = h.study_encoding(study_description)?;
            let rows: Vec<usize> = (0..tokens.len()).collect();
            let series_emb = h
                .inner(&tokens, name_enc.as_ref(), &rows)?
                .head
                .ok_or_else(|| ModelError::Input("inner ViT without mlp_head".into()))?;
            Ok(FixedStudy {
                model: self,
                tokens,
                name_enc,
                study_enc,
                series_emb,
                autocast,
            })
        })
    }
}

impl FixedStudy<'_> {
    pub fn series_count(&self) -> usize {
        self.tokens.len()
    }

    /// Tokens of series `s`.
    pub fn token_count(&self, s: usize) -> usize {
        self.tokens
            .get(s)
            .map(|t| t.size()[0] as usize)
            .unwrap_or(0)
    }

    /// Diagnosis `k`'s logit (threshold not subtracted) for the whole study and, for each
    /// `left_out[b]`, for the study without that series: one batch.
    pub fn logits_without(&self, k: usize, left_out: &[usize]) -> Result<Vec<f64>, ModelError> {
        let _guard = tch::no_grad_guard();
        let s = self.series_count() as i64;
        let mut embs = vec![self.series_emb.shallow_clone()];
        for &o in left_out {
            if o as i64 >= s || s < 2 {
                return Err(ModelError::Input(format!(
                    "series {o} left out of a study of {s}"
                )));
            }
            let keep: Vec<i64> = (0..s).filter(|&i| i != o as i64).collect();
            let idx = Tensor::from_slice(&keep).f_to_device(self.series_emb.device())?;
            embs.push(self.series_emb.f_index_select(0, &idx)?);
        }
        self.head_logits(&embs, k)
    }

    /// Diagnosis `k`'s logit when series `s` keeps only the tokens `keeps[b]` (indices
    /// into its tokens, in order; none empty), every other series unchanged: one batch.
    pub fn logits_keeping(
        &self,
        k: usize,
        s: usize,
        keeps: &[Vec<i64>],
    ) -> Result<Vec<f64>, ModelError> {
        let _guard = tch::no_grad_guard();
        let tokens = self
            .tokens
            .get(s)
            .ok_or_else(|| ModelError::Input(format!("series {s} of {}", self.tokens.len())))?;
        let n = tokens.size()[0];
        let device = tokens.device();
        let subsets = keeps
            .iter()
            .map(|keep| {
                if keep.is_empty() || keep.iter().any(|&j| j < 0 || j >= n) {
                    return Err(ModelError::Input(format!(
                        "a perturbation keeps {} of {n} tokens, or one out of range",
                        keep.len()
                    )));
                }
                let idx = Tensor::from_slice(keep).f_to_device(device)?;
                Ok(tokens.f_index_select(0, &idx)?)
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let h = self.model.hiervit();
        tch::autocast(self.autocast, || {
            let rows = vec![s; subsets.len()];
            let perturbed = h
                .inner(&subsets, self.name_enc.as_ref(), &rows)?
                .head
                .ok_or_else(|| ModelError::Input("inner ViT without mlp_head".into()))?;
            let total = self.series_count() as i64;
            let before = self.series_emb.f_narrow(0, 0, s as i64)?;
            let after = self
                .series_emb
                .f_narrow(0, s as i64 + 1, total - s as i64 - 1)?;
            let embs = (0..subsets.len() as i64)
                .map(|b| {
                    let row = perturbed.f_narrow(0, b, 1)?.f_to_kind(before.kind())?;
                    Ok(Tensor::f_cat(&[&before, &row, &after], 0)?)
                })
                .collect::<Result<Vec<_>, ModelError>>()?;
            self.head_logits(&embs, k)
        })
    }

    /// The outer ViT over studies given by their series embeddings, then head `k`.
    fn head_logits(&self, embs: &[Tensor], k: usize) -> Result<Vec<f64>, ModelError> {
        tch::autocast(self.autocast, || {
            let clip = self.model.hiervit().outer(embs, self.study_enc.as_ref())?;
            let v = self.model.heads().diagnosis_logits(&clip, k)?;
            Ok(v.into_iter().map(f64::from).collect())
        })
    }
}
