//! Diagnosis, referral and priority heads (docs/prima-inference-spec.md §13).
//!
//! Each head is `Sequential(Linear(E, h1), ReLU, Linear(h1, h2), ReLU, Linear(h2, n))`
//! (keys `<p>.0`, `<p>.2`, `<p>.4`). Names that share one head module share its stored
//! tensors (the manifest's `weights_prefix`): each distinct head is loaded and run once.

use std::collections::HashMap;

use tch::{Kind, Tensor};

use super::manifest::{HeadEntry, Manifest};
use super::vit::Linear;
use super::weights::Weights;
use super::ModelError;

/// One MLP head.
pub struct Head {
    layers: Vec<Linear>,
}

impl Head {
    /// Weights at `<prefix>.<j>` for j in `linear_indices` (default 0, 2, 4, …): one
    /// Linear per size step `in_dim → hidden… → n_out`, ReLU between them.
    pub(crate) fn new(
        w: &Weights,
        prefix: &str,
        in_dim: i64,
        hidden: &[i64],
        n_out: i64,
        linear_indices: Option<&[i64]>,
    ) -> Result<Self, ModelError> {
        let sizes: Vec<i64> = std::iter::once(in_dim)
            .chain(hidden.iter().copied())
            .chain(std::iter::once(n_out))
            .collect();
        let idx: Vec<i64> = match linear_indices {
            Some(v) => v.to_vec(),
            None => (0..sizes.len() as i64 - 1).map(|i| 2 * i).collect(),
        };
        if idx.len() + 1 != sizes.len() {
            return Err(ModelError::Input(format!(
                "head {prefix}: {} linear layers for {} size steps",
                idx.len(),
                sizes.len() - 1
            )));
        }
        let layers = sizes
            .windows(2)
            .zip(&idx)
            .map(|(io, j)| Linear::new(w, &format!("{prefix}.{j}"), io[0], io[1], true))
            .collect::<Result<_, _>>()?;
        Ok(Head { layers })
    }

    /// x (B, E) → (B, n_out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let mut x = x.shallow_clone();
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(&x)?;
            if i + 1 < self.layers.len() {
                x = x.f_relu()?;
            }
        }
        Ok(x)
    }
}

struct Named {
    name: String,
    head: usize,
    idx: i64,
    thresh: f32,
}

/// All heads of a model, distinct modules stored once.
pub struct Heads {
    heads: Vec<Head>,
    diagnosis: Vec<Named>,
    referral: Vec<Named>,
    priority: usize,
    priority_classes: Vec<String>,
}

/// Head outputs for one study, in manifest order.
pub struct HeadOutputs {
    pub diagnosis: Vec<(String, f32)>,
    pub referral: Vec<(String, f32)>,
    pub priority: Vec<(String, f32)>,
}

impl Heads {
    /// Stored prefixes of every distinct head the manifest uses.
    pub fn weight_prefixes(m: &Manifest) -> Vec<String> {
        let mut v: Vec<String> = m
            .diagnosis_heads
            .iter()
            .chain(&m.referral_heads)
            .map(|h| h.weights_prefix.clone())
            .chain(std::iter::once(m.priority_head.prefix().to_string()))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    pub(crate) fn new(w: &Weights, m: &Manifest) -> Result<Self, ModelError> {
        let e = m.embedding_dim;
        let mut heads = Vec::new();
        let mut by_prefix: HashMap<String, (usize, Vec<i64>, i64)> = HashMap::new();
        let mut get = |prefix: &str,
                       hidden: &[i64],
                       n_out: i64,
                       lin: Option<&[i64]>|
         -> Result<usize, ModelError> {
            if let Some((i, h, n)) = by_prefix.get(prefix) {
                if h.as_slice() != hidden || *n != n_out {
                    return Err(ModelError::Input(format!(
                        "head {prefix} listed with different sizes"
                    )));
                }
                return Ok(*i);
            }
            heads.push(Head::new(w, prefix, e, hidden, n_out, lin)?);
            let i = heads.len() - 1;
            by_prefix.insert(prefix.to_string(), (i, hidden.to_vec(), n_out));
            Ok(i)
        };
        let mut named = |list: &[HeadEntry]| -> Result<Vec<Named>, ModelError> {
            list.iter()
                .map(|h| {
                    Ok(Named {
                        name: h.name.clone(),
                        head: get(
                            &h.weights_prefix,
                            &h.hidden,
                            h.num_outputs,
                            h.linear_indices.as_deref(),
                        )?,
                        idx: h.idx,
                        thresh: h.thresh as f32,
                    })
                })
                .collect()
        };
        let diagnosis = named(&m.diagnosis_heads)?;
        let referral = named(&m.referral_heads)?;
        let p = &m.priority_head;
        let priority = get(
            p.prefix(),
            &p.hidden,
            p.num_outputs,
            p.linear_indices.as_deref(),
        )?;
        Ok(Heads {
            heads,
            diagnosis,
            referral,
            priority,
            priority_classes: m.priority_classes.clone(),
        })
    }

    /// Diagnosis `k`'s logit (threshold not subtracted) for each row of clip_emb (B, E),
    /// float32 as [`Self::forward`] computes it; only that head runs.
    pub fn diagnosis_logits(&self, clip_emb: &Tensor, k: usize) -> Result<Vec<f32>, ModelError> {
        let n = self.diagnosis.get(k).ok_or_else(|| {
            ModelError::Input(format!("diagnosis {k} of {} heads", self.diagnosis.len()))
        })?;
        let y = self.heads[n.head]
            .forward(clip_emb)?
            .f_select(1, n.idx)?
            .f_to_kind(Kind::Float)?
            .f_to_device(tch::Device::Cpu)?;
        Ok(Vec::<f32>::try_from(&y)?)
    }

    /// clip_emb (1, E) → named values. Each value is `head(clip_emb)[0, idx] − thresh`
    /// in float32 (thresh rounded to float32, as torch applies a Python float).
    pub fn forward(&self, clip_emb: &Tensor) -> Result<HeadOutputs, ModelError> {
        let outs = self
            .heads
            .iter()
            .map(|h| {
                let y = h
                    .forward(clip_emb)?
                    .f_to_kind(Kind::Float)?
                    .f_to_device(tch::Device::Cpu)?;
                Ok(Vec::<f32>::try_from(&y.f_get(0)?)?)
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let pick = |list: &[Named]| {
            list.iter()
                .map(|n| (n.name.clone(), outs[n.head][n.idx as usize] - n.thresh))
                .collect()
        };
        let priority = self
            .priority_classes
            .iter()
            .zip(&outs[self.priority])
            .map(|(c, &v)| (c.clone(), v))
            .collect();
        Ok(HeadOutputs {
            diagnosis: pick(&self.diagnosis),
            referral: pick(&self.referral),
            priority,
        })
    }
}
