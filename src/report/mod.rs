//! Study results as DICOM: a findings SR (Comprehensive 3D SR, TID 1500) and a worklist-priority
//! Key Object Selection document, built from one study's predictions and a source header.
//!
//! The contract is `docs/dicom-outputs.md`; what follows records the decisions that
//! document leaves open.
//!
//! - **Scores.** The model emits, per head, its output minus the head's threshold. The SR
//!   stores exactly that number as a NUM named (PRIMA-MARGIN, 99PRIMA, "Prima decision margin
//!   (score minus threshold)"), unit (1, UCUM, "no units"): it is a decision margin, not a
//!   probability, and is never called one. The threshold goes into Algorithm Parameters as
//!   `threshold=<t>`; the finding is Present when the margin is > 0.
//! - **Priority** is the argmax of the priority head's outputs (first class wins a tie).
//!   **Referral recommendations** are the referral heads whose margin is > 0.
//! - **CAD Processing and Findings Summary** (CID 6047): "with findings" when any diagnosis
//!   margin is > 0; "not all algorithms succeeded" when any series was skipped or the study was
//!   forced complete before all series arrived; "no algorithms succeeded" when the run failed.
//! - **Completion Flag** PARTIAL when series were skipped, the study was forced complete or the
//!   run failed; else COMPLETE. Verification UNVERIFIED, Preliminary Flag PRELIMINARY.
//! - **A failed run** produces the SR only (no measurements, CAD summary 111245); no KOS,
//!   since there is no priority to announce.
//! - **KOS representative slices.** The model gives no per-series attribution, so the KOS
//!   references up to three slices around the middle of the series with the most tokens used
//!   (the first such series on a tie). Slices are ordered by position along the slice normal
//!   when the caller gives it for every instance, else in the order given.
//! - **Image Library** (TID 1600): one Image Library Group per used series, with the
//!   descriptors all its images share (modality, frame of reference, rows and columns) at
//!   group level and one IMAGE entry per source instance; see [`library`].
//! - **Source of Measurement.** Every measurement group references, per used series, the
//!   series' middle slice: the model reads all series and, until an explanation exists, gives
//!   no per-series attribution, so each finding names every series once (a viewer opens the
//!   series at that image); listing all images in all 52 groups would multiply the SR's size
//!   by 52 for no information the Image Library does not already hold.
//! - **Priority classes** are the checkpoint's: none/low/high in the current release,
//!   none/low/medium/high in the earlier one. Nothing here assumes "medium" exists;
//!   [`PRIORITY_LEVELS`] only orders the classes for `kos_min_priority`.
//! - **Predecessors.** Only the SR carries Predecessor Documents Sequence (the KOS IOD has no
//!   such attribute); it lists the SR-class predecessors passed in, never the document itself.
//! - **Codes.** Model labels become `99PRIMA` codes whose value is a short hash of the label
//!   (Code Value is limited to 16 characters) and whose meaning is readable text; the label
//!   itself is the Tracking Identifier. See [`codes`].
//! - **UIDs** are `2.25.` + UUIDv5 (see [`uid`]). SOP Instance and Series UIDs depend on the
//!   study, the input set hash, the model version and the object kind; the Device Observer UID
//!   on the node's AE title and serial number; tracking UIDs on the study and label.
//! - **Determinism.** Content Date/Time (given by the caller) are the only fields that differ
//!   between regenerations from the same inputs; there is no Instance Creation Date/Time and
//!   no Series Date/Time. Head order is the model's order; predecessors are sorted.
//! - Series numbers 9001 (SR), 9002 (KO), 9003 (summary card); instance number 1.
//! - **Summary card** (off by default): a Secondary Capture, DERIVED\\SECONDARY, Burned In
//!   Annotation YES, "NOT FOR DIAGNOSIS", drawing the same table in Noto Sans Mono
//!   (pre-rasterised, anti-aliased: `noto-sans-mono-bitmap`).

pub mod card;
pub mod codes;
mod header;
mod items;
pub mod keyimages;
pub use keyimages::KeyImagePixels;
pub mod kos;
mod library;
pub mod sr;

use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;

use crate::uid;
use items::get_str;

/// The job types the report builder reads and returns (one definition, in `crate::job`).
pub use crate::job::{OutputKind, OutputObject, PredecessorRef};

/// SOP Class UIDs of what we create.
/// The findings SR: Comprehensive 3D SR, what IHE AIR's Evidence Creator produces and what
/// spatial coordinates in the frame of reference (SCOORD3D) need.
pub const COMPREHENSIVE_3D_SR: &str = uids::COMPREHENSIVE3_DSR_STORAGE;
pub const KEY_OBJECT_SELECTION: &str = uids::KEY_OBJECT_SELECTION_DOCUMENT_STORAGE;
pub const SECONDARY_CAPTURE: &str = uids::SECONDARY_CAPTURE_IMAGE_STORAGE;
/// Prefix shared by every SR Storage SOP class (KOS included, filtered separately).
const SR_CLASS_PREFIX: &str = "1.2.840.10008.5.1.4.1.1.88.";

pub const SR_SERIES_NUMBER: i32 = 9001;
pub const KOS_SERIES_NUMBER: i32 = 9002;
pub const CARD_SERIES_NUMBER: i32 = 9003;
pub const SR_SERIES_DESCRIPTION: &str = "Prima AI findings — not for primary diagnosis";
pub const MODEL_NAME_EQUIPMENT: &str = "prima-node";
pub const NOT_VERIFIED_COMMENT: &str = "AI-generated, not verified by a physician";
pub const DEMO_COMMENT: &str = "DEMO MODEL — NOT FOR CLINICAL USE";

/// Canonical order of priority classes, lowest first. The current release's 3-class head
/// (none/low/high) uses a subset; the earlier 4-class one uses all of them.
pub const PRIORITY_LEVELS: [&str; 4] = ["none", "low", "medium", "high"];

/// One study's model outputs. Values are in the model's head order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Predictions {
    /// (label, head output minus threshold) per diagnosis head.
    pub diagnosis: Vec<(String, f32)>,
    /// (label, head output minus threshold) per referral head.
    pub referral: Vec<(String, f32)>,
    /// (class, raw head output) per priority class.
    pub priority: Vec<(String, f32)>,
    pub clip_emb: Vec<f32>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelIdentity {
    pub name: String,
    pub version: String,
    /// Weights are a demo (random/placeholder) model: every output says so.
    pub demo: bool,
    pub diagnosis_thresholds: Vec<(String, f32)>,
    pub referral_thresholds: Vec<(String, f32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceInstance {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub instance_number: Option<i32>,
    /// Image Position (Patient) projected on the slice normal, in mm.
    pub position_along_normal: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UsedSeries {
    pub series_instance_uid: String,
    pub series_name: String,
    /// Modality (0008,0060) of the series' images, e.g. `MR`.
    pub modality: Option<String>,
    /// Frame of Reference UID, when every image of the series gives the same one.
    pub frame_of_reference_uid: Option<String>,
    /// (Rows, Columns) of the source images, when the same for the whole series.
    pub image_size: Option<(u32, u32)>,
    /// Instances the model used, in slice order.
    pub instances: Vec<SourceInstance>,
    pub tokens_used: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SkippedSeries {
    pub series_instance_uid: String,
    pub reason: String,
}

/// Who produced the result (General Equipment and the device observer context).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeIdentity {
    pub ae_title: String,
    /// Node instance id, written as Device Serial Number.
    pub serial_number: String,
    pub device_observer_uid: String,
    /// prima-node version.
    pub software_version: String,
    pub manufacturer: String,
}

impl NodeIdentity {
    /// Identity with the device observer UID derived from AE title and serial number.
    pub fn new(ae_title: &str, serial_number: &str, software_version: &str) -> Self {
        Self {
            ae_title: ae_title.to_string(),
            serial_number: serial_number.to_string(),
            device_observer_uid: uid::device_observer_uid(ae_title, serial_number),
            software_version: software_version.to_string(),
            manufacturer: "prima-node project".to_string(),
        }
    }
}

/// One region behind an explained finding: a volume token's footprint on the source image
/// nearest its centre.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRegion {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    /// Frame number (1-based) of the image within a multi-frame instance.
    pub frame: Option<u32>,
    /// [left, top, right, bottom] in image coordinates (column, row; the top left corner of
    /// the top left pixel is (0, 0)).
    pub rect: [f64; 4],
    /// LIME's coefficient of the token.
    pub coefficient: f64,
}

/// Where the model looked for one finding (LIME over one series' volume tokens).
#[derive(Debug, Clone, PartialEq)]
pub struct FindingEvidence {
    /// The diagnosis head's label.
    pub label: String,
    pub series_instance_uid: String,
    /// (SOP Class UID, SOP Instance UID) of the images the top tokens cover, most important
    /// token first.
    pub key_images: Vec<(String, String)>,
    /// One per top token, most important first.
    pub regions: Vec<KeyRegion>,
    /// How it was computed, one line for the reader.
    pub method: String,
}

pub struct ReportInput<'a> {
    /// Header of one source instance of the study (pixel data not needed).
    pub source_header: &'a InMemDicomObject,
    pub used: &'a [UsedSeries],
    pub skipped: &'a [SkippedSeries],
    pub predictions: &'a Predictions,
    pub model: &'a ModelIdentity,
    /// SHA-256 over the sorted SOP Instance UIDs + content hashes (computed by the caller).
    pub input_set_hash: [u8; 32],
    pub predecessors: &'a [PredecessorRef],
    /// Explained findings (empty without an explanation): the KOS's key images and the SR's
    /// regions come from the first; every one gets its regions in the SR.
    pub evidence: &'a [FindingEvidence],
    /// The images the evidence's regions lie on, for the key-image series (may be empty).
    pub key_images: &'a [KeyImagePixels],
    /// The study was closed before all expected series arrived.
    pub forced_complete: bool,
    /// The model run failed: no predictions to report.
    pub failed: bool,
    pub node: &'a NodeIdentity,
    /// (YYYYMMDD, HHMMSS) written as Content Date/Time.
    pub content_datetime: (String, String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportConfig {
    /// Lowest priority for which a KOS is emitted: "none" (default, always) … "high".
    pub kos_min_priority: String,
    pub summary_card: bool,
    /// The derived key-image series ([`keyimages`]) when an explanation has regions.
    pub key_images: bool,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self {
            kos_min_priority: "none".to_string(),
            summary_card: false,
            key_images: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("source header lacks {0}")]
    MissingAttribute(&'static str),
    #[error("invalid report input: {0}")]
    InvalidInput(String),
    #[error("DICOM encoding failed: {0}")]
    Encode(String),
}

/// Build the SR, and the KOS when the priority reaches `cfg.kos_min_priority`.
pub fn build_outputs(
    input: &ReportInput,
    cfg: &ReportConfig,
) -> Result<Vec<OutputObject>, ReportError> {
    let min_rank = priority_rank(&cfg.kos_min_priority).ok_or_else(|| {
        ReportError::InvalidInput(format!(
            "kos_min_priority {:?} is not one of {PRIORITY_LEVELS:?}",
            cfg.kos_min_priority
        ))
    })?;
    let key = content_key(&input.input_set_hash, input.evidence, cfg);
    let ctx = Context::new(input, key)?;

    let mut out = Vec::new();
    let sr_bytes = sr::build(&ctx)?;
    out.push(OutputObject {
        kind: OutputKind::Sr,
        sop_class_uid: COMPREHENSIVE_3D_SR.to_string(),
        sop_instance_uid: ctx.sr_uid.clone(),
        series_instance_uid: ctx.sr_series_uid.clone(),
        study_instance_uid: ctx.study_uid.clone(),
        bytes: sr_bytes,
    });

    if let Some(p) = &ctx.summary.priority {
        let rank = priority_rank(p).unwrap_or(PRIORITY_LEVELS.len());
        let replaces_a_kos = !kos::earlier(&ctx).is_empty();
        if emits_kos(rank, min_rank, replaces_a_kos) {
            out.push(OutputObject {
                kind: OutputKind::Kos,
                sop_class_uid: KEY_OBJECT_SELECTION.to_string(),
                sop_instance_uid: ctx.kos_uid.clone(),
                series_instance_uid: ctx.kos_series_uid.clone(),
                study_instance_uid: ctx.study_uid.clone(),
                bytes: kos::build(&ctx)?,
            });
        }
    }
    if cfg.summary_card {
        out.push(OutputObject {
            kind: OutputKind::Card,
            sop_class_uid: SECONDARY_CAPTURE.to_string(),
            sop_instance_uid: ctx.card_uid.clone(),
            series_instance_uid: ctx.card_series_uid.clone(),
            study_instance_uid: ctx.study_uid.clone(),
            bytes: card::build(&ctx)?,
        });
    }
    if cfg.key_images && keyimages::any_regions(input.evidence) {
        for (i, img) in keyimages::chosen(&ctx).into_iter().enumerate() {
            let uid = uid::output_uid(
                &ctx.study_uid,
                &key,
                &input.model.version,
                &format!("keyimage-{}", i + 1),
            );
            out.push(OutputObject {
                kind: OutputKind::KeyImage,
                sop_class_uid: SECONDARY_CAPTURE.to_string(),
                bytes: keyimages::build(&ctx, img, i + 1, &uid)?,
                sop_instance_uid: uid,
                series_instance_uid: ctx.key_images_series_uid.clone(),
                study_instance_uid: ctx.study_uid.clone(),
            });
        }
    }
    Ok(out)
}

/// Whether a run sends a priority KOS: when its priority reaches `kos_min_priority`, and
/// always when an earlier run sent one — else that earlier, higher flag would stay the
/// study's last word on the worklist after the amended run lowered it.
pub(crate) fn emits_kos(rank: usize, min_rank: usize, replaces_a_kos: bool) -> bool {
    rank >= min_rank || replaces_a_kos
}

/// Position of a priority class in [`PRIORITY_LEVELS`] (case-insensitive).
pub fn priority_rank(class: &str) -> Option<usize> {
    PRIORITY_LEVELS
        .iter()
        .position(|l| l.eq_ignore_ascii_case(class.trim()))
}

/// One diagnosis head, as reported.
#[derive(Debug, Clone)]
pub(crate) struct Finding {
    pub label: String,
    pub margin: f32,
    pub threshold: f32,
    pub present: bool,
}

/// The interpretation of the predictions shared by SR and KOS.
#[derive(Debug, Clone)]
pub(crate) struct Summary {
    pub findings: Vec<Finding>,
    pub priority: Option<String>,
    pub referrals: Vec<(String, f32)>,
    pub with_findings: bool,
}

impl Summary {
    fn from_input(input: &ReportInput) -> Result<Self, ReportError> {
        if input.failed {
            return Ok(Self {
                findings: Vec::new(),
                priority: None,
                referrals: Vec::new(),
                with_findings: false,
            });
        }
        let p = input.predictions;
        if p.diagnosis.is_empty() {
            return Err(ReportError::InvalidInput(
                "no diagnosis outputs and the run is not marked failed".into(),
            ));
        }
        let mut findings = Vec::with_capacity(p.diagnosis.len());
        for (label, margin) in &p.diagnosis {
            check_finite(label, *margin)?;
            let threshold = lookup(&input.model.diagnosis_thresholds, label).ok_or_else(|| {
                ReportError::InvalidInput(format!("no threshold for diagnosis {label:?}"))
            })?;
            findings.push(Finding {
                label: label.clone(),
                margin: *margin,
                threshold,
                present: *margin > 0.0,
            });
        }
        let mut referrals = Vec::new();
        for (label, margin) in &p.referral {
            check_finite(label, *margin)?;
            if *margin > 0.0 {
                referrals.push((label.clone(), *margin));
            }
        }
        let mut priority: Option<(&str, f32)> = None;
        for (class, v) in &p.priority {
            check_finite(class, *v)?;
            if priority.is_none_or(|(_, best)| *v > best) {
                priority = Some((class, *v));
            }
        }
        let priority = priority.map(|(c, _)| c.to_string());
        if let Some(c) = &priority {
            if priority_rank(c).is_none() {
                return Err(ReportError::InvalidInput(format!(
                    "priority class {c:?} is not one of {PRIORITY_LEVELS:?}"
                )));
            }
        } else {
            return Err(ReportError::InvalidInput("no priority outputs".into()));
        }
        let with_findings = findings.iter().any(|f| f.present);
        Ok(Self {
            findings,
            priority,
            referrals,
            with_findings,
        })
    }
}

fn check_finite(label: &str, v: f32) -> Result<(), ReportError> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(ReportError::InvalidInput(format!(
            "non-finite model output for {label:?}"
        )))
    }
}

fn lookup(table: &[(String, f32)], label: &str) -> Option<f32> {
    table.iter().find(|(l, _)| l == label).map(|(_, t)| *t)
}

/// Everything both documents need, computed once.
pub(crate) struct Context<'a> {
    pub input: &'a ReportInput<'a>,
    pub study_uid: String,
    pub sr_uid: String,
    pub sr_series_uid: String,
    pub kos_uid: String,
    pub kos_series_uid: String,
    pub card_uid: String,
    pub card_series_uid: String,
    pub key_images_series_uid: String,
    pub summary: Summary,
    pub partial: bool,
}

/// What shapes the objects besides the model version: the input instances (their set's
/// hash), the software that writes them, the explanation (which findings, how computed, on
/// which series, how many regions) and the report settings. The output UIDs derive from it,
/// so different content never shares a UID (a PACS keeps the first object of a UID and
/// answers the next "already stored"), while the same inputs under the same settings keep
/// theirs (an idempotent re-send after a crash).
fn content_key(
    input_set_hash: &[u8; 32],
    evidence: &[FindingEvidence],
    cfg: &ReportConfig,
) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(input_set_hash);
    let mut part = |p: &[u8]| {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    };
    part(env!("CARGO_PKG_VERSION").as_bytes());
    part(cfg.kos_min_priority.as_bytes());
    part(&[u8::from(cfg.summary_card), u8::from(cfg.key_images)]);
    for e in evidence {
        part(e.label.as_bytes());
        part(e.method.as_bytes());
        part(e.series_instance_uid.as_bytes());
        part(&(e.regions.len() as u64).to_le_bytes());
    }
    h.finalize().into()
}

impl<'a> Context<'a> {
    fn new(input: &'a ReportInput<'a>, content_key: [u8; 32]) -> Result<Self, ReportError> {
        let study_uid = get_str(input.source_header, tags::STUDY_INSTANCE_UID)
            .filter(|s| !s.is_empty())
            .ok_or(ReportError::MissingAttribute("StudyInstanceUID"))?;
        let (date, time) = &input.content_datetime;
        if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ReportError::InvalidInput(format!(
                "content date {date:?} is not YYYYMMDD"
            )));
        }
        if time.len() < 6 || !time.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(ReportError::InvalidInput(format!(
                "content time {time:?} is not HHMMSS"
            )));
        }
        if input.model.version.is_empty() {
            return Err(ReportError::InvalidInput("empty model version".into()));
        }
        if !input.failed && input.used.iter().all(|s| s.instances.is_empty()) {
            return Err(ReportError::InvalidInput(
                "no source instances listed as used".into(),
            ));
        }
        let summary = Summary::from_input(input)?;
        let v = &input.model.version;
        let id = |kind: &str| uid::output_uid(&study_uid, &content_key, v, kind);
        Ok(Self {
            sr_uid: id("sr"),
            sr_series_uid: id("sr-series"),
            kos_uid: id("kos"),
            kos_series_uid: id("kos-series"),
            card_uid: id("card"),
            card_series_uid: id("card-series"),
            key_images_series_uid: id("keyimage-series"),
            partial: input.failed || input.forced_complete || !input.skipped.is_empty(),
            summary,
            study_uid,
            input,
        })
    }

    /// Software Versions: node version, then model name and version.
    fn software_versions(&self) -> Vec<String> {
        vec![
            codes::truncate_lo(&format!("prima-node {}", self.input.node.software_version)),
            codes::truncate_lo(&format!(
                "{} {}",
                self.input.model.name, self.input.model.version
            )),
        ]
    }
}

/// Whether a predecessor is an SR document (KOS excluded) that this SR may supersede.
pub(crate) fn is_sr_document(sop_class: &str) -> bool {
    sop_class.starts_with(SR_CLASS_PREFIX) && sop_class != KEY_OBJECT_SELECTION
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_amended_run_replaces_an_earlier_kos_even_below_the_threshold() {
        assert!(emits_kos(2, 1, false));
        assert!(
            !emits_kos(0, 1, false),
            "below kos_min_priority, nothing to replace"
        );
        assert!(
            emits_kos(0, 1, true),
            "the earlier, higher flag must be replaced"
        );
    }

    #[test]
    fn the_content_key_changes_with_the_explanation_and_the_settings_only() {
        let h = [7u8; 32];
        let cfg = ReportConfig::default();
        let explained = FindingEvidence {
            label: "tumor".into(),
            series_instance_uid: "1.2.3".into(),
            key_images: Vec::new(),
            regions: Vec::new(),
            method: "LIME, 1000 samples, seed 0".into(),
        };
        let plain = content_key(&h, &[], &cfg);
        assert_eq!(plain, content_key(&h, &[], &cfg), "same content, same key");
        let with = content_key(&h, std::slice::from_ref(&explained), &cfg);
        assert_ne!(plain, with, "the explanation changes the objects");
        let other_samples = FindingEvidence {
            method: "LIME, 500 samples, seed 0".into(),
            ..explained.clone()
        };
        assert_ne!(with, content_key(&h, &[other_samples], &cfg));
        let no_card = ReportConfig {
            summary_card: !cfg.summary_card,
            ..cfg.clone()
        };
        assert_ne!(plain, content_key(&h, &[], &no_card));
        assert_ne!(plain, content_key(&[8u8; 32], &[], &cfg));
    }

    #[test]
    fn priority_ranks() {
        assert_eq!(priority_rank("none"), Some(0));
        assert_eq!(priority_rank("HIGH"), Some(3));
        assert_eq!(priority_rank("urgent"), None);
    }
}
