//! The node's study processor: spooled instances → imaging → Prima → SR/KOS. This is the
//! only place where the node (worker) meets the model and the report builder.
use std::sync::Arc;
use std::time::Instant;

use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;

use crate::config::Config;
use crate::infer::{predictions_json, run_model, RunContext, RunRecord};
use crate::model::{parse_device, ModelOptions, PrimaModel};
use crate::report::{
    build_outputs, ModelIdentity, NodeIdentity, PredecessorRef, Predictions, ReportConfig,
    ReportInput, SkippedSeries, SourceInstance, UsedSeries,
};
use crate::speculate::{scan_and_prepare, JobPrepared, PrepareCache};
use crate::worker::{OutputObject, ProcessError, ProcessedStudy, StudyJob, StudyProcessor};

pub struct PrimaProcessor {
    model: PrimaModel,
    report: ReportConfig,
    node: NodeIdentity,
    /// Background preparation results (`[assembly] speculative_prepare`).
    cache: Option<Arc<PrepareCache>>,
}

impl PrimaProcessor {
    /// Loads the model once, on the worker thread.
    pub fn new(cfg: &Config) -> Result<Self, ProcessError> {
        let opts = ModelOptions {
            device: parse_device(&cfg.model.device)
                .map_err(|e| ProcessError::Load(e.to_string()))?,
            ..ModelOptions::default()
        };
        let model = PrimaModel::load(&cfg.model.dir, &opts)
            .map_err(|e| ProcessError::Load(e.to_string()))?;
        Ok(PrimaProcessor {
            model,
            report: ReportConfig::default(),
            node: node_identity(&cfg.node.ae_title, &cfg.node.state_dir.to_string_lossy()),
            // Always there: the setting is applied live, by the background thread.
            cache: Some(Arc::new(PrepareCache::new())),
        })
    }
}

impl StudyProcessor for PrimaProcessor {
    fn prepare_cache(&self) -> Option<Arc<PrepareCache>> {
        self.cache.clone()
    }

    fn process(&mut self, job: &StudyJob) -> Result<ProcessedStudy, ProcessError> {
        let fail = |e: String| ProcessError::Failed(e);
        let t_start = Instant::now();
        // scan_s covers reading the headers too, as `infer`'s folder scan does; series
        // prepared in the background while the study arrived are taken as they are.
        let JobPrepared {
            scan,
            prepared,
            skipped,
            scan_s,
            prepare_s,
            cached_series,
            speculative_s,
        } = scan_and_prepare(self.cache.as_deref(), job);
        if cached_series > 0 {
            tracing::info!(
                series = cached_series,
                background_s = speculative_s,
                "series prepared in the background used"
            );
        }
        for s in &skipped {
            tracing::info!(series = %s.key, reason = %s.reason, "series skipped");
        }
        if prepared.is_empty() {
            return Err(fail("no usable series".into()));
        }
        let description = scan.study_description.clone().unwrap_or_default();
        let run = run_model(&self.model, &prepared, &description, |m| {
            tracing::info!("{m}")
        })
        .map_err(|e| fail(format!("model: {e}")))?;
        let m = self.model.manifest();
        let first = &job.instances[0].path;
        let header = OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(first)
            .map_err(|e| fail(format!("source header: {e}")))?
            .into_inner();
        let predecessors: Vec<PredecessorRef> = job
            .predecessors
            .iter()
            .map(|p| PredecessorRef {
                sop_class_uid: p.sop_class_uid.clone(),
                sop_instance_uid: p.sop_instance_uid.clone(),
                series_instance_uid: p.series_instance_uid.clone(),
            })
            .collect();
        let outputs = build_reports(&ReportArgs {
            prepared: &prepared,
            skipped: &skipped,
            output: &run.output,
            manifest: m,
            header: &header,
            input_set_hash: job.input_set_hash,
            predecessors: &predecessors,
            forced_complete: job.forced_complete,
            node: &self.node,
            config: &self.report,
        })
        .map_err(|e| fail(format!("report: {e}")))?;
        for o in &outputs {
            tracing::info!(kind = o.kind.uid_kind(), sop = %o.sop_instance_uid, "output built");
        }
        let mut record = RunRecord::new(RunContext {
            study: job.study_instance_uid.clone(),
            study_instance_uid: scan.study_instance_uid.clone(),
            study_description: description,
            slice_order: "position",
            model: &self.model,
            prepared: &prepared,
            skipped: &skipped,
            run: &run,
            scan_s,
            prepare_s,
            total_s: t_start.elapsed().as_secs_f64(),
        });
        record.timings.prepare_cached =
            Some(cached_series > 0 && cached_series == scan.series.len());
        record.timings.prepare_cached_series = Some(cached_series);
        record.timings.prepare_speculative_s = Some(speculative_s);
        Ok(ProcessedStudy {
            outputs: outputs
                .into_iter()
                .map(|o| OutputObject {
                    kind: o.kind.uid_kind().to_string(),
                    sop_class_uid: o.sop_class_uid,
                    sop_instance_uid: o.sop_instance_uid,
                    series_instance_uid: o.series_instance_uid,
                    study_instance_uid: o.study_instance_uid,
                    bytes: o.bytes,
                })
                .collect(),
            predictions_json: predictions_json(&run.output),
            run_json: serde_json::to_string_pretty(&record).unwrap_or_default(),
        })
    }
}

/// What the report builder needs from one inference run.
pub struct ReportArgs<'a> {
    pub prepared: &'a [crate::pipeline::PreparedSeries],
    pub skipped: &'a [crate::imaging::series::SeriesSkip],
    pub output: &'a crate::model::PrimaOutput,
    pub manifest: &'a crate::model::Manifest,
    pub header: &'a dicom_object::InMemDicomObject,
    pub input_set_hash: [u8; 32],
    pub predecessors: &'a [PredecessorRef],
    pub forced_complete: bool,
    pub node: &'a NodeIdentity,
    pub config: &'a ReportConfig,
}

/// SR + KOS (+ card) for one run; shared by the node and `prima-node infer --dicom`.
pub fn build_reports(
    a: &ReportArgs,
) -> Result<Vec<crate::report::OutputObject>, crate::report::ReportError> {
    let used: Vec<UsedSeries> = a
        .prepared
        .iter()
        .map(|p| UsedSeries {
            series_instance_uid: p.series_instance_uid.clone(),
            series_name: p.name.clone(),
            instances: p
                .slices
                .iter()
                .map(|s| SourceInstance {
                    sop_class_uid: s.sop_class_uid.clone(),
                    sop_instance_uid: s.sop_instance_uid.clone(),
                    instance_number: s.instance_number.map(|n| n as i32),
                    position_along_normal: s.position_along_normal(),
                })
                .collect(),
            tokens_used: p.selection.ids.len(),
        })
        .collect();
    let skipped: Vec<SkippedSeries> = a
        .skipped
        .iter()
        .map(|s| SkippedSeries {
            series_instance_uid: s
                .series_instance_uid
                .clone()
                .unwrap_or_else(|| s.key.clone()),
            reason: s.reason.clone(),
        })
        .collect();
    let predictions = Predictions {
        diagnosis: a.output.diagnosis.clone(),
        referral: a.output.referral.clone(),
        priority: a.output.priority.clone(),
        clip_emb: a.output.clip_emb.clone(),
    };
    let m = a.manifest;
    let model = ModelIdentity {
        name: m.model_name.clone(),
        version: m.model_version.clone(),
        demo: m.demo,
        diagnosis_thresholds: m
            .diagnosis_heads
            .iter()
            .map(|h| (h.name.clone(), h.thresh as f32))
            .collect(),
        referral_thresholds: m
            .referral_heads
            .iter()
            .map(|h| (h.name.clone(), h.thresh as f32))
            .collect(),
    };
    let input = ReportInput {
        source_header: a.header,
        used: &used,
        skipped: &skipped,
        predictions: &predictions,
        model: &model,
        input_set_hash: a.input_set_hash,
        predecessors: a.predecessors,
        forced_complete: a.forced_complete,
        failed: false,
        node: a.node,
        content_datetime: dicom_now(),
    };
    build_outputs(&input, a.config)
}

/// SHA-256 over the sorted (SOP Instance UID, file SHA-256) pairs of a folder's files
/// (`infer --dicom`). The node builds its input hash from what it received instead
/// (`study::assembler::input_set_hash`: the data sets' content hashes), so the two need not
/// give the same output UIDs for the same study.
pub fn input_set_hash(files: &[(String, std::path::PathBuf)]) -> std::io::Result<[u8; 32]> {
    use sha2::Digest;
    let mut pairs = Vec::with_capacity(files.len());
    for (uid, path) in files {
        let digest = sha2::Sha256::digest(std::fs::read(path)?);
        pairs.push((uid.clone(), digest));
    }
    pairs.sort();
    let mut h = sha2::Sha256::new();
    for (uid, d) in pairs {
        h.update(uid.as_bytes());
        h.update([0u8]);
        h.update(d);
    }
    Ok(h.finalize().into())
}

/// The node's identity in reports: AE title, a serial derived from where its state lives
/// (stable across restarts, distinct between nodes on one host), and the software version.
pub fn node_identity(ae_title: &str, instance: &str) -> NodeIdentity {
    use sha2::Digest;
    let serial = hex::encode(&sha2::Sha256::digest(instance.as_bytes())[..6]);
    NodeIdentity::new(
        ae_title,
        &serial,
        concat!("prima-node ", env!("CARGO_PKG_VERSION")),
    )
}

/// Current UTC date and time as DICOM DA/TM strings.
pub fn dicom_now() -> (String, String) {
    chrono_like_now()
}

fn chrono_like_now() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // civil-from-days (Howard Hinnant)
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{:02}{:02}{:02}", rem / 3600, (rem / 60) % 60, rem % 60),
    )
}
