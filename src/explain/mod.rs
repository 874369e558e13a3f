//! Where the model looked: upstream's LIME over volume tokens
//! (`Prima_training_and_evaluation/util_lime.py` in MLNeurosurg/Prima), for one study, one
//! diagnosis and one series.
//!
//! - [`masks`]: upstream's perturbation masks, numpy's legacy `RandomState.randint` stream
//!   reproduced bit for bit.
//! - [`ridge`]: the weighted ridge regression `LimeBase.explain_instance_with_data` fits.
//! - here: which finding and which series to explain, and the perturbation loop: each mask
//!   keeps a subset of that series' tokens (their VQ-VAE features and coordinates, in
//!   order), every other series unchanged, and the label is the head's logit for that
//!   input. The VQ-VAE and the patchifier ran once, in the study's run: a subset of the
//!   patchified tokens is exactly the patchifier's output for the subset, since it works
//!   token by token.

pub mod masks;
pub mod regions;
pub mod ridge;

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::model::perturb::FixedStudy;
use crate::model::{ModelError, PrimaModel, PrimaOutput};

/// `[explain]` and `infer`'s flags.
#[derive(Debug, Clone, PartialEq)]
pub struct ExplainOptions {
    /// Perturbed inputs (upstream: 1000).
    pub samples: usize,
    /// Tokens reported, most important first (upstream's figures: 3).
    pub top_tokens: usize,
    /// Findings explained, highest margin first.
    pub findings: usize,
    /// Seed of the masks (upstream: 0).
    pub seed: u32,
    /// Perturbed inputs per model call (packed into one inner-ViT and one outer-ViT call).
    pub batch: usize,
    /// On CUDA, compute the labels under float16 autocast as upstream does (the model's
    /// weights stay in their precision); no effect on the CPU.
    pub autocast: bool,
}

impl Default for ExplainOptions {
    fn default() -> Self {
        ExplainOptions {
            samples: 1000,
            top_tokens: 3,
            findings: 1,
            seed: 0,
            batch: 50,
            autocast: true,
        }
    }
}

/// The kernel LIME weighs samples with; upstream passes distances of zero, so every sample
/// weighs `kernel(0) = 1`. Kept as the formula so that the weights stay upstream's if the
/// distances ever change.
fn kernel(d: f64) -> f64 {
    (-(d * d) / (0.25 * 0.25)).exp().sqrt()
}

/// One token LIME ranked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenWeight {
    /// Position of the token among the series' selected tokens (the mask column).
    pub index: usize,
    /// (z, y, x) voxel corner of its 32×32×4 patch in the resampled, oriented volume.
    pub coords: [i64; 3],
    /// Its ridge coefficient: the logit's change when the token is present.
    pub coefficient: f64,
    /// Where it lies in the source images (absent for a patch wholly in the padding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place: Option<TokenPlace>,
}

/// A token's [`regions::Footprint`] with the source instances it names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenPlace {
    #[serde(flatten)]
    pub footprint: regions::Footprint,
    /// SOP Instance UIDs of the covered slices, first to last, each once (the frames of a
    /// multi-frame instance share one).
    pub instances: Vec<String>,
    /// SOP Class and Instance UID of the image the region is drawn on (the nearest slice).
    pub image_sop_class_uid: String,
    pub image_sop_instance_uid: String,
    /// Its frame number (1-based) when that image is a frame of a multi-frame instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_frame: Option<u32>,
}

impl TokenPlace {
    /// The place of the token starting at `coord` in a series of `slices`.
    pub fn locate(g: &regions::SeriesGeometry, coord: [i64; 3]) -> Option<TokenPlace> {
        let f = regions::footprint(g, coord)?;
        let near = &g.slices[f.nearest_slice];
        let mut instances: Vec<String> = Vec::new();
        for s in &g.slices[f.first_slice..=f.last_slice] {
            if !instances.contains(&s.sop_instance_uid) {
                instances.push(s.sop_instance_uid.clone());
            }
        }
        Some(TokenPlace {
            instances,
            image_sop_class_uid: near.sop_class_uid.clone(),
            image_sop_instance_uid: near.sop_instance_uid.clone(),
            image_frame: near.frame.map(|f| f + 1),
            footprint: f,
        })
    }
}

/// How much the finding's logit drops when one series is left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesOcclusion {
    pub series: usize,
    pub logit_drop: f64,
}

/// One finding explained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// Diagnosis head name and its position in the manifest.
    pub finding: String,
    pub finding_index: usize,
    /// Whether the finding was positive (margin > 0); the top-margin one is explained when
    /// none is.
    pub positive: bool,
    /// The head's logit for the whole study (threshold not subtracted).
    pub logit: f64,
    /// Index of the explained series among the study's prepared series, its UID and name.
    pub series: usize,
    pub series_instance_uid: String,
    pub series_name: String,
    pub occlusion: Vec<SeriesOcclusion>,
    pub n_tokens: usize,
    /// The `top_tokens` tokens by |coefficient|, largest first.
    pub tokens: Vec<TokenWeight>,
    pub intercept: f64,
    /// Weighted R² of the ridge fit on the samples (LIME's `score`).
    pub r2: f64,
    /// The fit's prediction for the unperturbed input (LIME's `local_pred`).
    pub local_pred: f64,
    pub samples: usize,
    pub seed: u32,
    pub seconds: f64,
}

/// The diagnoses to explain: positive ones by decreasing margin; when none is positive,
/// the one nearest to being so (the highest margin), so that a normal study still shows
/// what the model weighed most.
pub fn findings_to_explain(output: &PrimaOutput, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..output.diagnosis.len()).collect();
    order.sort_by(|&a, &b| output.diagnosis[b].1.total_cmp(&output.diagnosis[a].1));
    let positive: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| output.diagnosis[i].1 > 0.0)
        .collect();
    let chosen = if positive.is_empty() { order } else { positive };
    chosen.into_iter().take(n).collect()
}

/// LIME for `findings` of one study run: `inputs` are the HierViT's inputs of that run
/// (patchified tokens and name ids per series), `coords` each series' selected token
/// coordinates, `description` the study description's character ids.
pub fn explain(
    model: &PrimaModel,
    inputs: &[(Tensor, Vec<i64>)],
    coords: &[Vec<[i64; 3]>],
    description: &[i64],
    output: &PrimaOutput,
    opts: &ExplainOptions,
) -> Result<Vec<Explanation>, ModelError> {
    if inputs.is_empty() || inputs.len() != coords.len() {
        return Err(ModelError::Input(format!(
            "explain: {} series inputs, {} coordinate lists",
            inputs.len(),
            coords.len()
        )));
    }
    if opts.samples < 2 {
        return Err(ModelError::Input(
            "explain: samples must be at least 2".into(),
        ));
    }
    if opts.batch == 0 {
        return Err(ModelError::Input(
            "explain: batch must be at least 1".into(),
        ));
    }
    let heads = &model.manifest().diagnosis_heads;
    // The first finding's seconds include holding the study fixed (one inner-ViT pass).
    let mut t0 = Instant::now();
    let fixed = model.fix_study(inputs, description, opts.autocast)?;
    let mut out = Vec::new();
    for k in findings_to_explain(output, opts.findings) {
        let occlusion = occlude(&fixed, k)?;
        // The head's logit: PrimaOutput carries it minus the head's threshold, which only
        // shifts the ridge intercept; upstream regresses the logit itself.
        let thresh = heads.get(k).map(|h| h.thresh).unwrap_or(0.0);
        let full = output.diagnosis[k].1 as f64 + thresh;
        let series = occlusion
            .iter()
            .max_by(|a, b| a.logit_drop.total_cmp(&b.logit_drop))
            .map(|o| o.series)
            .unwrap_or(0);
        let n_tokens = fixed.token_count(series);
        let fit = lime(n_tokens, opts, |keeps| {
            fixed.logits_keeping(k, series, keeps)
        })?;
        let ranked = rank(&fit.coef);
        out.push(Explanation {
            finding: output.diagnosis[k].0.clone(),
            finding_index: k,
            positive: output.diagnosis[k].1 > 0.0,
            logit: full,
            series,
            series_instance_uid: String::new(),
            series_name: String::new(),
            occlusion,
            n_tokens,
            tokens: ranked
                .into_iter()
                .take(opts.top_tokens)
                .map(|j| TokenWeight {
                    index: j,
                    coords: coords[series][j],
                    coefficient: fit.coef[j],
                    place: None,
                })
                .collect(),
            intercept: fit.intercept,
            r2: fit.r2,
            local_pred: fit.local_pred,
            samples: opts.samples,
            seed: opts.seed,
            seconds: t0.elapsed().as_secs_f64(),
        });
        t0 = Instant::now();
    }
    Ok(out)
}

/// Upstream's LIME over `n_tokens` tokens: `label(keeps)` gives, for each kept-token
/// index list (in order), the logit for the input that keeps only those tokens; it is
/// called with up to `opts.batch` lists at a time. Returns the ridge fit of the labels on
/// the masks.
pub fn lime(
    n_tokens: usize,
    opts: &ExplainOptions,
    mut label: impl FnMut(&[Vec<i64>]) -> Result<Vec<f64>, ModelError>,
) -> Result<ridge::RidgeFit, ModelError> {
    let m = masks::lime_masks(opts.seed, 1, opts.samples, n_tokens);
    let keeps: Vec<Vec<i64>> = m
        .iter()
        .map(|row| {
            (0..n_tokens as i64)
                .filter(|&j| row[j as usize] != 0.0)
                .collect()
        })
        .collect();
    let mut labels = Vec::with_capacity(opts.samples);
    for chunk in keeps.chunks(opts.batch.max(1)) {
        let got = label(chunk)?;
        if got.len() != chunk.len() {
            return Err(ModelError::Input(format!(
                "explain: {} labels for {} perturbations",
                got.len(),
                chunk.len()
            )));
        }
        labels.extend(got);
    }
    let x: Vec<Vec<f64>> = m
        .iter()
        .map(|r| r.iter().map(|&v| v as f64).collect())
        .collect();
    let weights = vec![kernel(0.0); opts.samples];
    ridge::fit(&x, &labels, &weights, 1.0)
        .map_err(|e| ModelError::Input(format!("explain: ridge fit: {e}")))
}

/// Token indices by decreasing |coefficient| (LIME's ranking).
pub fn rank(coef: &[f64]) -> Vec<usize> {
    let mut ranked: Vec<usize> = (0..coef.len()).collect();
    ranked.sort_by(|&a, &b| coef[b].abs().total_cmp(&coef[a].abs()));
    ranked
}

/// How much diagnosis `k`'s logit drops without each series in turn (one batch over the
/// series embeddings); with one series there is nothing to choose and nothing is run.
fn occlude(fixed: &FixedStudy<'_>, k: usize) -> Result<Vec<SeriesOcclusion>, ModelError> {
    let s = fixed.series_count();
    if s == 1 {
        return Ok(vec![SeriesOcclusion {
            series: 0,
            logit_drop: 0.0,
        }]);
    }
    let left_out: Vec<usize> = (0..s).collect();
    let logits = fixed.logits_without(k, &left_out)?;
    // Against this batch's own whole-study logit, so that the drops share its rounding.
    Ok(left_out
        .iter()
        .zip(&logits[1..])
        .map(|(&series, l)| SeriesOcclusion {
            series,
            logit_drop: logits[0] - l,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classifier whose logit is a known weighted sum over the kept tokens: LIME must
    /// give back its weights (ridge shrinks them a little) and rank them in order.
    #[test]
    fn recovers_the_tokens_of_a_known_linear_classifier() {
        let n = 40;
        let mut w = vec![0.0; n];
        for (j, v) in [(17, 5.0), (3, -3.0), (29, 2.0), (8, 1.0)] {
            w[j] = v;
        }
        let opts = ExplainOptions::default();
        let opts = ExplainOptions { batch: 37, ..opts };
        let fit = lime(n, &opts, |keeps| {
            Ok(keeps
                .iter()
                .map(|keep| 0.25 + keep.iter().map(|&j| w[j as usize]).sum::<f64>())
                .collect())
        })
        .unwrap();
        assert_eq!(&rank(&fit.coef)[..4], &[17, 3, 29, 8]);
        for (j, &want) in w.iter().enumerate() {
            assert!(
                (fit.coef[j] - want).abs() < 0.05 * want.abs().max(1.0),
                "token {j}: {} vs {want}",
                fit.coef[j]
            );
        }
        assert!(fit.r2 > 0.99, "R² {}", fit.r2);
    }

    fn output(diagnosis: &[(&str, f32)]) -> PrimaOutput {
        PrimaOutput {
            clip_emb: Vec::new(),
            diagnosis: diagnosis.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            referral: Vec::new(),
            priority: Vec::new(),
            serie_name_enc: None,
            study_enc: None,
            inner_pooled: Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu)),
            series_emb: Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu)),
        }
    }

    #[test]
    fn a_positive_finding_is_explained_before_a_higher_negative_one() {
        let o = output(&[("a", -0.1), ("b", 0.2), ("c", 0.7), ("d", -2.0)]);
        assert_eq!(findings_to_explain(&o, 2), vec![2, 1]);
        let none = output(&[("a", -0.3), ("b", -0.1)]);
        assert_eq!(findings_to_explain(&none, 1), vec![1]);
    }
}
