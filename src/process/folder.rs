//! `prima-node infer`: one study folder → `<name>_predictions.json` (upstream's exact
//! structure, docs/prima-inference-spec.md §13.3), `<name>_run.json`, and with `dicom` the
//! SR and KOS beside them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::outputs::{build_reports, input_set_hash, node_identity, ReportArgs};
use super::prepare::{prepare_folder, PreparedStudy};
use super::run::predictions_json;
use super::run::{analyse, Analysis};
use crate::imaging::series::{ImagingError, SliceOrder};
use crate::job::OutputKind;
use crate::model::{Manifest, ModelError, ModelOptions, PrimaModel};
use crate::report::{ReportConfig, ReportError};

/// What `prima-node infer` was asked.
pub struct InferOptions {
    pub model_dir: PathBuf,
    pub model: ModelOptions,
    /// libtorch intra-op threads (`None`: libtorch's choice).
    pub threads: Option<i32>,
    pub study_dir: PathBuf,
    pub slice_order: SliceOrder,
    /// Instead of the DICOM StudyDescription.
    pub study_description: Option<String>,
    pub out: PathBuf,
    /// Also write the findings SR and the priority KOS.
    pub dicom: bool,
    /// Explain the top finding(s) with LIME into the run record.
    pub explain: Option<crate::explain::ExplainOptions>,
}

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("loading model {}: {source}", dir.display())]
    Load { dir: PathBuf, source: ModelError },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Imaging(#[from] ImagingError),
    #[error("no usable series in {}", .0.display())]
    NoUsableSeries(PathBuf),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("source header: {0}")]
    Header(#[source] dicom_object::ReadError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

fn write(path: &Path, bytes: impl AsRef<[u8]>) -> Result<(), InferError> {
    std::fs::write(path, bytes).map_err(|source| InferError::Io {
        what: "writing",
        path: path.to_owned(),
        source,
    })
}

/// Runs one folder, reporting progress as lines for a person.
pub fn infer_folder(a: &InferOptions, mut progress: impl FnMut(&str)) -> Result<(), InferError> {
    let t_start = Instant::now();
    if let Some(n) = a.threads {
        tch::set_num_threads(n);
    }
    let model = load_model(a, &mut progress)?;
    let input = prepare_folder(&a.study_dir, a.slice_order)?;
    report_input(&input, &mut progress);
    if input.prepared.is_empty() {
        return Err(InferError::NoUsableSeries(a.study_dir.clone()));
    }
    let description = a
        .study_description
        .clone()
        .or_else(|| input.scan.study_description.clone())
        .unwrap_or_default();
    let mut analysis = analyse(&model, input, description, &mut progress)?;
    if let Some(x) = &a.explain {
        analysis.explain(&model, x, &mut progress);
    }
    let name = a
        .study_dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "study".into());
    std::fs::create_dir_all(&a.out).map_err(|source| InferError::Io {
        what: "creating",
        path: a.out.clone(),
        source,
    })?;
    let pred_path = a.out.join(format!("{name}_predictions.json"));
    write(&pred_path, predictions_json(&analysis.run.output))?;
    let record = analysis.record(
        &model,
        name.clone(),
        a.slice_order,
        t_start.elapsed().as_secs_f64(),
    );
    write(
        &a.out.join(format!("{name}_run.json")),
        serde_json::to_string_pretty(&record)?,
    )?;
    progress(&format!("wrote {}", pred_path.display()));
    if a.dicom {
        write_reports(a, &analysis, model.manifest(), &name, &mut progress)?;
    }
    Ok(())
}

/// The model, and what it is, for the person running it.
fn load_model(a: &InferOptions, progress: &mut impl FnMut(&str)) -> Result<PrimaModel, InferError> {
    let model = PrimaModel::load(&a.model_dir, &a.model).map_err(|source| InferError::Load {
        dir: a.model_dir.clone(),
        source,
    })?;
    let m = model.manifest();
    progress(&format!(
        "model {} {}{} on {:?}",
        m.model_name,
        m.model_version,
        if m.demo {
            " (DEMO MODEL — NOT FOR CLINICAL USE)"
        } else {
            ""
        },
        a.model.device
    ));
    progress(&format!(
        "model: priority head of {} classes ({}), checkpoint sha256 {}, weights sha256 {}",
        m.priority_classes.len(),
        m.priority_classes.join("/"),
        m.checkpoint_sha256().unwrap_or("none (demo model)"),
        m.weights_sha256().unwrap_or("none"),
    ));
    Ok(model)
}

/// Series found, tokens selected and series skipped.
fn report_input(input: &PreparedStudy, progress: &mut impl FnMut(&str)) {
    progress(&format!(
        "scan: {} series candidates in {:.2}s",
        input.scan.series.len(),
        input.scan_s
    ));
    for p in &input.prepared {
        progress(&format!(
            "tokens: series {} {} -> {} tokens at {}%",
            p.name,
            p.tokenized.n_patches(),
            p.selection.ids.len(),
            p.selection.percent
        ));
    }
    for s in &input.skipped {
        progress(&format!("skipped series {}: {}", s.key, s.reason));
    }
}

/// The findings SR and the priority KOS, beside the JSON files.
fn write_reports(
    a: &InferOptions,
    analysis: &Analysis,
    manifest: &Manifest,
    name: &str,
    progress: &mut impl FnMut(&str),
) -> Result<(), InferError> {
    let files: Vec<(String, PathBuf)> = analysis
        .input
        .prepared
        .iter()
        .flat_map(|p| {
            p.slices
                .iter()
                .map(|s| (s.sop_instance_uid.clone(), s.path.clone()))
        })
        .collect();
    let header = crate::imaging::charset::open_header(&files[0].1)
        .map_err(InferError::Header)?
        .into_inner();
    let hash = input_set_hash(&files).map_err(|source| InferError::Io {
        what: "reading",
        path: a.study_dir.clone(),
        source,
    })?;
    let outputs = build_reports(&ReportArgs {
        analysis,
        manifest,
        header: &header,
        input_set_hash: hash,
        predecessors: &[],
        forced_complete: false,
        node: &node_identity("PRIMA", "infer"),
        config: &ReportConfig::default(),
    })?;
    let mut key_images = 0;
    for o in outputs {
        let file = match o.kind {
            OutputKind::KeyImage => {
                key_images += 1;
                format!("{name}_{}{key_images}.dcm", o.kind.as_str())
            }
            kind => format!("{name}_{}.dcm", kind.as_str()),
        };
        let path = a.out.join(file);
        write(&path, &o.bytes)?;
        progress(&format!("wrote {}", path.display()));
    }
    Ok(())
}
