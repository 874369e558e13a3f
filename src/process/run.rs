//! Prepared series → Prima → predictions ([`analyse`]), and what a run leaves behind:
//! upstream's predictions JSON (`docs/prima-inference-spec.md` §13.3) and the run record
//! (what was used, skipped and how long each stage took).
use std::time::Instant;

use tch::{Kind, Tensor};

use super::prepare::PreparedStudy;
use super::series::PreparedSeries;
use crate::explain::{explain, ExplainOptions, Explanation, TokenPlace};
use crate::imaging::series::{SeriesSkip, SliceOrder};
use crate::imaging::text::chartovec;
use crate::job::{ExplanationRecord, RunRecord, SeriesRecord, SkipRecord, StageTimings};
use crate::model::prima::distinct_ids;
use crate::model::{ModelError, PrimaModel, PrimaOutput};
use crate::pyjson::{dumps_indent2, PyValue};

pub struct ModelRun {
    pub output: PrimaOutput,
    /// What the HierViT got per series (patchified tokens, name ids), for the explanation,
    /// which re-runs the HierViT on subsets of one series' tokens.
    pub inputs: Vec<(Tensor, Vec<i64>)>,
    pub tokens_encoded: usize,
    /// Floating-point operations of the VQ-VAE over the encoded tokens.
    pub vqvae_flops: f64,
    pub vqvae_s: f64,
    pub patchify_s: f64,
    pub prima_s: f64,
}

/// Runs the learned part on prepared series. The VQ-VAE sees each selected patch once
/// (spec §6.3 can select a hole patch twice; the encoder output is gathered back), and
/// nothing that the otsu selection dropped (upstream encodes every patch first).
pub fn run_model(
    model: &PrimaModel,
    prepared: &[PreparedSeries],
    study_description: &str,
    mut progress: impl FnMut(&str),
) -> Result<ModelRun, ModelError> {
    let mut series = Vec::with_capacity(prepared.len());
    let (mut vqvae_s, mut patchify_s, mut tokens_encoded) = (0.0, 0.0, 0usize);
    let mut vqvae_flops = 0.0;
    for p in prepared {
        let t0 = Instant::now();
        let ids = &p.selection.ids;
        let uniq = distinct_ids(ids);
        let tokens = p.tokenized.tokens(&uniq);
        let enc = model.encode_gathered(&tokens, &uniq, p.tokenized.token_shape(), ids)?;
        drop(tokens);
        tokens_encoded += uniq.len();
        vqvae_flops += uniq.len() as f64 * model.vqvae_flops_per_token(p.tokenized.token_shape());
        let t1 = Instant::now();
        vqvae_s += (t1 - t0).as_secs_f64();
        let patches = model.patchify(&enc, &p.selected_coords())?;
        patchify_s += t1.elapsed().as_secs_f64();
        progress(&format!(
            "vqvae: series {} encoded {} tokens in {:.2}s",
            p.name,
            uniq.len(),
            (t1 - t0).as_secs_f64()
        ));
        series.push((patches, p.name_ids.clone()));
    }
    let t2 = Instant::now();
    let output = model.forward(&series, &chartovec(study_description))?;
    let prima_s = t2.elapsed().as_secs_f64();
    progress(&format!("prima: HierViT + heads in {prima_s:.2}s"));
    Ok(ModelRun {
        output,
        inputs: series,
        tokens_encoded,
        vqvae_flops,
        vqvae_s,
        patchify_s,
        prima_s,
    })
}

/// One study through the model.
pub struct Analysis {
    pub input: PreparedStudy,
    /// LIME's explanation when asked for: the findings explained, or why it failed (the
    /// study's results stand without it).
    pub explanation: Option<Result<Vec<Explanation>, ModelError>>,
    /// The study description given to the model.
    pub description: String,
    pub run: ModelRun,
}

/// Runs the model on a study's prepared series.
pub fn analyse(
    model: &PrimaModel,
    input: PreparedStudy,
    description: String,
    progress: impl FnMut(&str),
) -> Result<Analysis, ModelError> {
    let run = run_model(model, &input.prepared, &description, progress)?;
    Ok(Analysis {
        input,
        explanation: None,
        description,
        run,
    })
}

impl Analysis {
    /// Runs LIME ([`crate::explain`]) on this analysis; a failure is kept, not raised.
    pub fn explain(
        &mut self,
        model: &PrimaModel,
        opts: &ExplainOptions,
        mut progress: impl FnMut(&str),
    ) {
        let coords: Vec<Vec<[i64; 3]>> = self
            .input
            .prepared
            .iter()
            .map(|p| p.selected_coords())
            .collect();
        let r = explain(
            model,
            &self.run.inputs,
            &coords,
            &chartovec(&self.description),
            &self.run.output,
            opts,
        );
        self.explanation = Some(match r {
            Ok(mut ex) => {
                for e in &mut ex {
                    let p = &self.input.prepared[e.series];
                    e.series_instance_uid = p.series_instance_uid.clone();
                    e.series_name = p.name.clone();
                    let g = p.geometry();
                    for t in &mut e.tokens {
                        t.place = TokenPlace::locate(&g, t.coords);
                    }
                    progress(&format!(
                        "explain: {} (logit {:.4}) in series {}: {} tokens, {} samples, R² {:.3}, {:.2}s",
                        e.finding, e.logit, p.name, e.n_tokens, e.samples, e.r2, e.seconds
                    ));
                }
                Ok(ex)
            }
            Err(e) => {
                progress(&format!("explain: failed: {e}"));
                Err(e)
            }
        });
    }

    /// The run record; `study` names the study (its UID in the node, the folder in
    /// `infer`), `total_s` the seconds from the start of its processing.
    pub fn record(
        &self,
        model: &PrimaModel,
        study: String,
        slice_order: SliceOrder,
        total_s: f64,
    ) -> RunRecord {
        let i = &self.input;
        let mut record = RunRecord::new(RunContext {
            study,
            study_instance_uid: i.scan.study_instance_uid.clone(),
            study_description: self.description.clone(),
            slice_order,
            model,
            prepared: &i.prepared,
            skipped: &i.skipped,
            run: &self.run,
            scan_s: i.scan_s,
            prepare_s: i.prepare_s,
            total_s,
        });
        record.explanation = self.explanation.as_ref().map(|e| match e {
            Ok(f) => ExplanationRecord {
                findings: f.clone(),
                error: None,
            },
            Err(err) => ExplanationRecord {
                findings: Vec::new(),
                error: Some(err.to_string()),
            },
        });
        if let Some(b) = i.background {
            let t = &mut record.timings;
            t.prepare_cached = Some(b.cached_series > 0 && b.cached_series == i.scan.series.len());
            t.prepare_cached_series = Some(b.cached_series);
            t.prepare_speculative_s = Some(b.speculative_s);
        }
        record
    }
}

/// Upstream's predictions JSON (spec §13.3): `json.dump(indent=2)` of diagnosis,
/// referral, priority (each value a one-element list) and `clip_emb` ([[…]]).
pub fn predictions_json(out: &PrimaOutput) -> String {
    let named = |v: &[(String, f32)]| {
        PyValue::Dict(
            v.iter()
                .map(|(k, x)| (k.clone(), PyValue::List(vec![PyValue::Float(*x as f64)])))
                .collect(),
        )
    };
    let clip = PyValue::List(vec![PyValue::List(
        out.clip_emb
            .iter()
            .map(|&x| PyValue::Float(x as f64))
            .collect(),
    )]);
    dumps_indent2(&PyValue::Dict(vec![
        ("diagnosis".into(), named(&out.diagnosis)),
        ("referral".into(), named(&out.referral)),
        ("priority".into(), named(&out.priority)),
        ("clip_emb".into(), clip),
    ]))
}

/// Where one run's record comes from.
pub struct RunContext<'a> {
    pub study: String,
    pub study_instance_uid: Option<String>,
    pub study_description: String,
    pub slice_order: SliceOrder,
    pub model: &'a PrimaModel,
    pub prepared: &'a [PreparedSeries],
    pub skipped: &'a [SeriesSkip],
    pub run: &'a ModelRun,
    pub scan_s: f64,
    pub prepare_s: f64,
    pub total_s: f64,
}

impl RunRecord {
    /// The record of one run, with the warnings every reader should see: demo weights,
    /// and series whose selection used hole filling (upstream raises there, spec §6.5).
    pub fn new(c: RunContext) -> RunRecord {
        let m = c.model.manifest();
        let opts = c.model.options();
        let mut warnings = Vec::new();
        if m.demo {
            warnings.push("DEMO MODEL (random weights) — NOT FOR CLINICAL USE".to_string());
        }
        for p in c.prepared.iter().filter(|p| p.selection.holes_used) {
            warnings.push(format!(
                "series {}: a used otsu bin had holes; upstream's pipeline raises here (spec 6.5)",
                p.name
            ));
        }
        RunRecord {
            study: c.study,
            study_instance_uid: c.study_instance_uid,
            study_description: c.study_description,
            slice_order: match c.slice_order {
                SliceOrder::Position => "position",
                SliceOrder::FileName => "filename",
            }
            .to_string(),
            model_name: m.model_name.clone(),
            model_version: m.model_version.clone(),
            demo_model: m.demo,
            device: format!("{:?}", opts.device),
            precision: opts.precision.as_str().into(),
            threads: tch::get_num_threads(),
            series: series_records(c.prepared),
            skipped: skip_records(c.skipped),
            not_analysed: None,
            tokens_encoded: c.run.tokens_encoded,
            vqvae_gflop: c.run.vqvae_flops / 1e9,
            timings: StageTimings {
                scan_s: c.scan_s,
                prepare_s: c.prepare_s,
                vqvae_s: c.run.vqvae_s,
                patchify_s: c.run.patchify_s,
                prima_s: c.run.prima_s,
                total_s: c.total_s,
                ..StageTimings::default()
            },
            warnings,
            explanation: None,
        }
    }
}

pub fn series_records(prepared: &[PreparedSeries]) -> Vec<SeriesRecord> {
    prepared
        .iter()
        .map(|p| SeriesRecord {
            key: p.key.clone(),
            series_instance_uid: p.series_instance_uid.clone(),
            volume: p.volume.clone(),
            name: p.name.clone(),
            instances_used: p.slices.len(),
            images_found: p.images_found,
            sop_instance_uids: p
                .slices
                .iter()
                .map(|s| s.sop_instance_uid.clone())
                .collect(),
            pixel_type: p.pixel_type.sitk_name().to_string(),
            orientation: p.orientation_code.clone(),
            oriented_shape_zyx: p.oriented_shape,
            tokens_before_selection: p.tokenized.n_patches(),
            tokens_after_selection: p.selection.ids.len(),
            otsu_percentage: p.selection.percent,
            otsu_attempts: p.selection.attempts.clone(),
            hole_filling_used: p.selection.holes_used,
        })
        .collect()
}

pub fn skip_records(skipped: &[SeriesSkip]) -> Vec<SkipRecord> {
    skipped
        .iter()
        .map(|s| SkipRecord {
            key: s.key.clone(),
            series_instance_uid: s.series_instance_uid.clone(),
            volume: s.volume.clone(),
            images: s.images,
            reason: s.reason.clone(),
        })
        .collect()
}

/// Values of a (…) float tensor as f32, for tests and records.
pub fn tensor_values(t: &Tensor) -> Result<Vec<f32>, ModelError> {
    Ok(Vec::<f32>::try_from(
        &t.f_to_kind(Kind::Float)?.f_reshape([-1])?,
    )?)
}
