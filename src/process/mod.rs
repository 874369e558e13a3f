//! Processing a study: prepared series → Prima → the result objects. The model process
//! ([`PrimaProcessor`]) and `prima-node infer` ([`infer_folder`]) both run a study through
//! [`analyse`] and [`Analysis`] (in `run`); they differ only in where the instances come from (a job
//! of spooled instances, a folder) and where the results go (the outbox, files).
//!
//! - [`series`]: one series → selected VQ-VAE input tokens
//!   (`docs/prima-inference-spec.md` §1–§7), within one
//!   process-wide memory budget.
//! - [`prepare`]: a study's series, from a job (taking background results) or a folder.
//! - [`cache`]: background results waiting for their jobs, keyed by the exact input files.
//! - [`background`]: the low-priority thread that prepares series while a study arrives;
//!   [`marker`] names the series it works on, so a crash it causes is not held against a job.
//! - [`run`]: the model over prepared series, upstream's predictions JSON, the run record
//!   ([`crate::job::RunRecord`]).
//! - [`outputs`]: SR, KOS (and card) from one analysis.

pub mod background;
pub mod cache;
mod folder;
pub mod marker;
pub mod outputs;
pub mod prepare;
pub mod run;
pub mod series;

use std::sync::Arc;
use std::time::Instant;

use crate::config::Config;
use crate::job::{ProcessError, ProcessedStudy, StudyJob, StudyProcessor};
use crate::model::{is_gpu_out_of_memory, parse_device, usable_device, ModelOptions, PrimaModel};
use crate::report::{NodeIdentity, ReportConfig};
pub use cache::PrepareCache;
pub use folder::{infer_folder, InferError, InferOptions};
use outputs::ReportArgs;
use run::predictions_json;
use run::run_model;
pub use run::{analyse, Analysis};

/// The node's processor: the model, loaded once on the worker thread, and the background
/// preparation results it takes its series from.
pub struct PrimaProcessor {
    model: PrimaModel,
    /// A CPU copy of the model, loaded the first time a study does not fit on the GPU.
    cpu_model: Option<PrimaModel>,
    model_dir: std::path::PathBuf,
    /// `[explain]` when enabled.
    explain: Option<crate::explain::ExplainOptions>,
    /// `[explain] on_cpu`: explain also when the model runs on the CPU.
    explain_on_cpu: bool,
    report: ReportConfig,
    node: NodeIdentity,
    cache: Arc<PrepareCache>,
    /// The node's configuration: `[assembly] min_series` is live.
    config: crate::config::SharedConfig,
}

impl PrimaProcessor {
    pub fn new(
        shared: &crate::config::SharedConfig,
        cache: Arc<PrepareCache>,
    ) -> Result<Self, ProcessError> {
        let cfg: &Config = &shared.get();
        let load_err = |e: crate::model::ModelError| ProcessError::Load(e.to_string());
        let requested = parse_device(&cfg.model.device).map_err(load_err)?;
        // A node configured for a GPU still answers its studies when the GPU is gone (a
        // driver update, a failed card, a CPU-only libtorch): slower, and said so.
        let (device, why) = usable_device(requested);
        if let Some(why) = why {
            tracing::warn!(
                requested = %cfg.model.device,
                reason = %why,
                "CUDA not available: the model runs on the CPU"
            );
        }
        let opts = ModelOptions {
            device,
            ..ModelOptions::default()
        };
        let model = match PrimaModel::load(&cfg.model.dir, &opts) {
            Err(e) if device != tch::Device::Cpu && is_gpu_out_of_memory(&e) => {
                tracing::warn!(
                    requested = %cfg.model.device,
                    error = %e,
                    "the model does not fit on the GPU: it runs on the CPU"
                );
                PrimaModel::load(&cfg.model.dir, &cpu_options()).map_err(load_err)?
            }
            r => r.map_err(load_err)?,
        };
        Ok(PrimaProcessor {
            model,
            cpu_model: None,
            model_dir: cfg.model.dir.clone(),
            explain: cfg.explain.options(),
            explain_on_cpu: cfg.explain.on_cpu,
            report: ReportConfig {
                key_images: cfg.explain.key_images,
                ..ReportConfig::default()
            },
            node: match &cfg.node.serial_number {
                Some(serial) => outputs::node_identity_with_serial(&cfg.node.ae_title, serial),
                None => outputs::node_identity(&cfg.node.ae_title, &cfg.report_identity_source()),
            },
            cache,
            config: shared.clone(),
        })
    }
}

/// At info level, what became of each series: the volumes it was split into, and every
/// volume or series not used with its reason (the run record and the SR say the same).
fn log_volumes(input: &prepare::PreparedStudy) {
    let mut splits: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for c in &input.scan.series {
        splits
            .entry(&c.series_instance_uid)
            .or_default()
            .push(&c.volume);
    }
    for (c, _) in &input.scan.not_used {
        splits
            .entry(&c.series_instance_uid)
            .or_default()
            .push(&c.volume);
    }
    for (series, volumes) in splits.iter().filter(|(_, v)| v.len() > 1) {
        tracing::info!(%series, volumes = volumes.len(), labels = %volumes.join(" "), "series split into volumes");
    }
    for s in &input.skipped {
        tracing::info!(series = %s.key, volume = %s.volume, images = s.images, reason = %s.reason, "series skipped");
    }
}

/// Why a study is not analysed: fewer distinct series with a usable volume than
/// `[assembly] min_series` (at least one). The reason lists what was not used.
pub fn not_enough_series(input: &prepare::PreparedStudy, min_series: usize) -> Option<String> {
    let usable: std::collections::BTreeSet<&str> = input
        .prepared
        .iter()
        .map(|p| p.series_instance_uid.as_str())
        .collect();
    if usable.len() >= min_series.max(1) {
        return None;
    }
    const LISTED: usize = 8;
    let mut why: Vec<String> = input
        .skipped
        .iter()
        .take(LISTED)
        .map(|s| format!("{}: {}", s.key, s.reason))
        .collect();
    if input.skipped.len() > LISTED {
        why.push(format!("{} more", input.skipped.len() - LISTED));
    }
    Some(format!(
        "{} usable series, min_series is {}{}{}",
        usable.len(),
        min_series.max(1),
        if why.is_empty() { "" } else { "; not used: " },
        why.join("; ")
    ))
}

fn cpu_options() -> ModelOptions {
    ModelOptions {
        device: tch::Device::Cpu,
        ..ModelOptions::default()
    }
}

impl StudyProcessor for PrimaProcessor {
    fn process(&mut self, job: &StudyJob) -> Result<ProcessedStudy, ProcessError> {
        let fail = |e: String| ProcessError::Failed(e);
        let t_start = Instant::now();
        // The cache is always there: `[assembly] speculative_prepare` is applied live, by
        // the background thread, which leaves it empty when off.
        let mut input = prepare::prepare_job(Some(&self.cache), job);
        for a in &job.set_aside {
            input.skipped.push(crate::imaging::series::SeriesSkip {
                key: a.series_instance_uid.clone(),
                series_instance_uid: Some(a.series_instance_uid.clone()),
                volume: String::new(),
                images: a.instances,
                reason: format!("{} instance(s): {}", a.instances, a.reason),
            });
        }
        if let Some(b) = input.background.filter(|b| b.cached_series > 0) {
            tracing::info!(
                series = b.cached_series,
                background_s = b.speculative_s,
                "series prepared in the background used"
            );
        }
        log_volumes(&input);
        let min_series = self.config.get().assembly.min_series;
        if let Some(reason) = not_enough_series(&input, min_series) {
            tracing::info!(%reason, "study not analysed");
            let mut run = crate::job::RunRecord {
                study: job.study_instance_uid.clone(),
                study_instance_uid: input.scan.study_instance_uid.clone(),
                skipped: run::skip_records(&input.skipped),
                not_analysed: Some(reason),
                ..Default::default()
            };
            run.timings.scan_s = input.scan_s;
            run.timings.prepare_s = input.prepare_s;
            run.timings.total_s = t_start.elapsed().as_secs_f64();
            return Ok(ProcessedStudy {
                outputs: Vec::new(),
                predictions_json: String::new(),
                run,
            });
        }
        let description = input.scan.study_description.clone().unwrap_or_default();
        let log = |m: &str| tracing::info!("{m}");
        let (run, on_cpu) = match run_model(&self.model, &input.prepared, &description, log) {
            Err(e)
                if self.model.options().device != tch::Device::Cpu && is_gpu_out_of_memory(&e) =>
            {
                // One large study must not fail for want of GPU memory: it runs on the CPU,
                // and the GPU model stays for the studies after it.
                tracing::warn!(error = %e, "GPU out of memory: this study runs on the CPU");
                if self.cpu_model.is_none() {
                    let m = PrimaModel::load(&self.model_dir, &cpu_options())
                        .map_err(|e| fail(format!("model on the CPU: {e}")))?;
                    self.cpu_model = Some(m);
                }
                let cpu = self.cpu_model.as_ref().expect("loaded above");
                (run_model(cpu, &input.prepared, &description, log), true)
            }
            r => (r, false),
        };
        let run = run.map_err(|e| fail(format!("model: {e}")))?;
        let used = match (&self.cpu_model, on_cpu) {
            (Some(cpu), true) => cpu,
            _ => &self.model,
        };
        let mut analysis = Analysis {
            input,
            explanation: None,
            description,
            run,
        };
        match &self.explain {
            Some(_) if used.options().device == tch::Device::Cpu && !self.explain_on_cpu => {
                // Measured (docs/performance.md): a full-size explanation on the CPU costs
                // ~0.7 s per sample, 1000 samples ~11 minutes per study, which would hold
                // every later study back; results go out without it.
                tracing::info!(
                    "explain: skipped, the model runs on the CPU ([explain] on_cpu = true runs it anyway)"
                );
            }
            Some(x) => analysis.explain(used, x, log),
            None => {}
        }
        let header = crate::imaging::charset::open_header(&job.instances[0].path)
            .map_err(|e| fail(format!("source header: {e}")))?
            .into_inner();
        let outputs = outputs::build_reports(&ReportArgs {
            analysis: &analysis,
            manifest: self.model.manifest(),
            header: &header,
            input_set_hash: job.input_set_hash,
            predecessors: &job.predecessors,
            forced_complete: job.forced_complete,
            node: &self.node,
            config: &self.report,
        })
        .map_err(|e| fail(format!("report: {e}")))?;
        for o in &outputs {
            tracing::info!(kind = o.kind.as_str(), sop = %o.sop_instance_uid, "output built");
        }
        let record = analysis.record(
            used,
            job.study_instance_uid.clone(),
            crate::imaging::series::SliceOrder::Position,
            t_start.elapsed().as_secs_f64(),
        );
        Ok(ProcessedStudy {
            outputs,
            predictions_json: predictions_json(&analysis.run.output),
            run: record,
        })
    }
}
