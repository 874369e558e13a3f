//! Study results as DICOM: a findings SR (Comprehensive SR, TID 1500) and a worklist-priority
//! Key Object Selection document, built from one study's predictions and a source header.
//!
//! The contract is `../shared/docs/dicom-outputs.md`; what follows records the decisions that
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
//!   Annotation YES, "NOT FOR DIAGNOSIS", drawing the same table with a built-in bitmap font.

pub mod card;
pub mod codes;
pub mod kos;
pub mod sr;

use dicom_core::value::{DataSetSequence, Value};
use dicom_core::{DataElement, Length, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use crate::uid;
use codes::Code;

/// SOP Class UIDs of what we create.
pub const COMPREHENSIVE_SR: &str = "1.2.840.10008.5.1.4.1.1.88.33";
pub const KEY_OBJECT_SELECTION: &str = "1.2.840.10008.5.1.4.1.1.88.59";
pub const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// Prefix shared by every SR Storage SOP class (KOS included, filtered separately).
const SR_CLASS_PREFIX: &str = "1.2.840.10008.5.1.4.1.1.88.";

pub const SR_SERIES_NUMBER: i32 = 9001;
pub const KOS_SERIES_NUMBER: i32 = 9002;
pub const CARD_SERIES_NUMBER: i32 = 9003;
pub const SR_SERIES_DESCRIPTION: &str = "Prima AI findings — not for primary diagnosis";
pub const MODEL_NAME_EQUIPMENT: &str = "prima-node";
pub const NOT_VERIFIED_COMMENT: &str = "AI-generated, not verified by a physician";
pub const DEMO_COMMENT: &str = "DEMO MODEL — NOT FOR CLINICAL USE";

/// Canonical order of priority classes, lowest first. A 3-class head uses a subset.
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
    /// Instances the model used, in slice order.
    pub instances: Vec<SourceInstance>,
    pub tokens_used: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SkippedSeries {
    pub series_instance_uid: String,
    pub reason: String,
}

/// An earlier SR or KOS of the same study that this run supersedes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PredecessorRef {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
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
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self {
            kos_min_priority: "none".to_string(),
            summary_card: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    Sr,
    Kos,
    Card,
}

impl OutputKind {
    /// The `kind` string hashed into the UIDs.
    pub fn uid_kind(self) -> &'static str {
        match self {
            OutputKind::Sr => "sr",
            OutputKind::Kos => "kos",
            OutputKind::Card => "card",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutputObject {
    pub kind: OutputKind,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
    pub study_instance_uid: String,
    /// Complete Part-10 file: preamble, `DICM`, meta group, Explicit VR Little Endian dataset.
    pub bytes: Vec<u8>,
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

/// UID of an output object: `2.25.` + decimal u128 of a UUIDv5 over the four inputs.
pub fn output_uid(
    study_uid: &str,
    input_set_hash: &[u8; 32],
    model_version: &str,
    kind: &str,
) -> String {
    uid::output_uid(study_uid, input_set_hash, model_version, kind)
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
    let ctx = Context::new(input)?;

    let mut out = Vec::new();
    let sr_bytes = sr::build(&ctx)?;
    out.push(OutputObject {
        kind: OutputKind::Sr,
        sop_class_uid: COMPREHENSIVE_SR.to_string(),
        sop_instance_uid: ctx.sr_uid.clone(),
        series_instance_uid: ctx.sr_series_uid.clone(),
        study_instance_uid: ctx.study_uid.clone(),
        bytes: sr_bytes,
    });

    if let Some(p) = &ctx.summary.priority {
        let rank = priority_rank(p).unwrap_or(PRIORITY_LEVELS.len());
        if rank >= min_rank {
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
    Ok(out)
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
    pub summary: Summary,
    pub partial: bool,
}

impl<'a> Context<'a> {
    fn new(input: &'a ReportInput<'a>) -> Result<Self, ReportError> {
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
        let h = &input.input_set_hash;
        let v = &input.model.version;
        let id = |kind: &str| uid::output_uid(&study_uid, h, v, kind);
        Ok(Self {
            sr_uid: id("sr"),
            sr_series_uid: id("sr-series"),
            kos_uid: id("kos"),
            kos_series_uid: id("kos-series"),
            card_uid: id("card"),
            card_series_uid: id("card-series"),
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

// ---------------------------------------------------------------------------------------
// Dataset building helpers.

pub(crate) type Obj = InMemDicomObject;

pub(crate) fn get_str(obj: &Obj, tag: Tag) -> Option<String> {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
}

pub(crate) fn put_str(obj: &mut Obj, tag: Tag, vr: VR, s: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(s)));
}

pub(crate) fn put_strs(obj: &mut Obj, tag: Tag, vr: VR, values: &[String]) {
    let v: Vec<String> = values.to_vec();
    obj.put(DataElement::new(
        tag,
        vr,
        PrimitiveValue::Strs(v.into_iter().collect()),
    ));
}

pub(crate) fn put_empty(obj: &mut Obj, tag: Tag, vr: VR) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::Empty));
}

pub(crate) fn put_seq(obj: &mut Obj, tag: Tag, items: Vec<Obj>) {
    let value: Value<Obj, _> = DataSetSequence::new(items, Length::UNDEFINED).into();
    obj.put(DataElement::new(tag, VR::SQ, value));
}

pub(crate) fn code_item(code: &Code) -> Obj {
    let mut o = Obj::new_empty();
    put_str(&mut o, tags::CODE_VALUE, VR::SH, &code.value);
    put_str(&mut o, tags::CODING_SCHEME_DESIGNATOR, VR::SH, &code.scheme);
    put_str(&mut o, tags::CODE_MEANING, VR::LO, &code.meaning);
    o
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Rel {
    Contains,
    HasObsContext,
    HasConceptMod,
}

impl Rel {
    fn as_str(self) -> &'static str {
        match self {
            Rel::Contains => "CONTAINS",
            Rel::HasObsContext => "HAS OBS CONTEXT",
            Rel::HasConceptMod => "HAS CONCEPT MOD",
        }
    }
}

fn item(rel: Rel, value_type: &str, name: Option<&Code>) -> Obj {
    let mut o = Obj::new_empty();
    put_str(&mut o, tags::RELATIONSHIP_TYPE, VR::CS, rel.as_str());
    put_str(&mut o, tags::VALUE_TYPE, VR::CS, value_type);
    if let Some(n) = name {
        put_seq(&mut o, tags::CONCEPT_NAME_CODE_SEQUENCE, vec![code_item(n)]);
    }
    o
}

pub(crate) fn text_item(rel: Rel, name: &Code, text: &str) -> Obj {
    let mut o = item(rel, "TEXT", Some(name));
    put_str(&mut o, tags::TEXT_VALUE, VR::UT, text);
    o
}

pub(crate) fn code_value_item(rel: Rel, name: &Code, value: &Code) -> Obj {
    let mut o = item(rel, "CODE", Some(name));
    put_seq(&mut o, tags::CONCEPT_CODE_SEQUENCE, vec![code_item(value)]);
    o
}

pub(crate) fn uidref_item(rel: Rel, name: &Code, uid: &str) -> Obj {
    let mut o = item(rel, "UIDREF", Some(name));
    put_str(&mut o, tags::UID, VR::UI, uid);
    o
}

pub(crate) fn num_item(rel: Rel, name: &Code, value: f32, unit: &Code) -> Obj {
    let mut o = item(rel, "NUM", Some(name));
    let mut mv = Obj::new_empty();
    put_str(&mut mv, tags::NUMERIC_VALUE, VR::DS, &format_ds(value));
    put_seq(
        &mut mv,
        tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
        vec![code_item(unit)],
    );
    put_seq(&mut o, tags::MEASURED_VALUE_SEQUENCE, vec![mv]);
    o
}

pub(crate) fn container_item(
    rel: Option<Rel>,
    name: &Code,
    template: Option<&str>,
    children: Vec<Obj>,
) -> Obj {
    let mut o = match rel {
        Some(r) => item(r, "CONTAINER", Some(name)),
        None => {
            let mut o = Obj::new_empty();
            put_str(&mut o, tags::VALUE_TYPE, VR::CS, "CONTAINER");
            put_seq(
                &mut o,
                tags::CONCEPT_NAME_CODE_SEQUENCE,
                vec![code_item(name)],
            );
            o
        }
    };
    put_str(&mut o, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    if let Some(t) = template {
        put_seq(
            &mut o,
            tags::CONTENT_TEMPLATE_SEQUENCE,
            vec![template_item(t)],
        );
    }
    if !children.is_empty() {
        put_seq(&mut o, tags::CONTENT_SEQUENCE, children);
    }
    o
}

pub(crate) fn template_item(id: &str) -> Obj {
    let mut t = Obj::new_empty();
    put_str(&mut t, tags::MAPPING_RESOURCE, VR::CS, "DCMR");
    put_str(&mut t, tags::TEMPLATE_IDENTIFIER, VR::CS, id);
    t
}

/// IMAGE or COMPOSITE reference item without concept name (as TID 2010 wants).
pub(crate) fn reference_item(value_type: &str, sop_class: &str, sop_instance: &str) -> Obj {
    let mut o = item(Rel::Contains, value_type, None);
    put_seq(
        &mut o,
        tags::REFERENCED_SOP_SEQUENCE,
        vec![sop_ref(sop_class, sop_instance)],
    );
    o
}

pub(crate) fn sop_ref(sop_class: &str, sop_instance: &str) -> Obj {
    let mut r = Obj::new_empty();
    put_str(&mut r, tags::REFERENCED_SOP_CLASS_UID, VR::UI, sop_class);
    put_str(
        &mut r,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        sop_instance,
    );
    r
}

/// SOP Instance Reference Macro, hierarchical (study → series → instances), as used by the
/// evidence and predecessor sequences. Series and instances keep the given order; an
/// instance listed twice is kept once.
pub(crate) fn hierarchical_refs(
    study_uid: &str,
    series: &[(String, Vec<(String, String)>)],
) -> Obj {
    let mut seen = std::collections::BTreeSet::new();
    let mut series_items = Vec::new();
    for (series_uid, instances) in series {
        let refs: Vec<Obj> = instances
            .iter()
            .filter(|(_, inst)| seen.insert(inst.clone()))
            .map(|(class, inst)| sop_ref(class, inst))
            .collect();
        if refs.is_empty() {
            continue;
        }
        let mut s = Obj::new_empty();
        put_str(&mut s, tags::SERIES_INSTANCE_UID, VR::UI, series_uid);
        put_seq(&mut s, tags::REFERENCED_SOP_SEQUENCE, refs);
        series_items.push(s);
    }
    let mut st = Obj::new_empty();
    put_str(&mut st, tags::STUDY_INSTANCE_UID, VR::UI, study_uid);
    put_seq(&mut st, tags::REFERENCED_SERIES_SEQUENCE, series_items);
    st
}

/// Decimal string (DS, ≤ 16 bytes) that reads back as exactly the same f32.
pub(crate) fn format_ds(v: f32) -> String {
    let plain = format!("{v}");
    if plain.len() <= 16 {
        plain
    } else {
        format!("{v:e}")
    }
}

/// Patient, Clinical Trial Subject, General Study and Patient Study attributes copied verbatim
/// from the source, so that `dcentvfy` sees one patient and one study. The `bool` marks Type 2
/// attributes written empty when the source lacks them.
const COPIED_FROM_SOURCE: &[(Tag, VR, bool)] = &[
    // Patient
    (tags::PATIENT_NAME, VR::PN, true),
    (tags::PATIENT_ID, VR::LO, true),
    (tags::ISSUER_OF_PATIENT_ID, VR::LO, false),
    (
        tags::ISSUER_OF_PATIENT_ID_QUALIFIERS_SEQUENCE,
        VR::SQ,
        false,
    ),
    (tags::TYPE_OF_PATIENT_ID, VR::CS, false),
    (tags::PATIENT_BIRTH_DATE, VR::DA, true),
    (tags::PATIENT_BIRTH_TIME, VR::TM, false),
    (tags::PATIENT_SEX, VR::CS, true),
    (tags::OTHER_PATIENT_I_DS_SEQUENCE, VR::SQ, false),
    // Ethnic Group: retired from the dictionary, still found in source headers.
    (Tag(0x0010, 0x2160), VR::SH, false),
    (tags::PATIENT_COMMENTS, VR::LT, false),
    (tags::PATIENT_SPECIES_DESCRIPTION, VR::LO, false),
    (tags::PATIENT_SPECIES_CODE_SEQUENCE, VR::SQ, false),
    (tags::PATIENT_BREED_DESCRIPTION, VR::LO, false),
    (tags::PATIENT_BREED_CODE_SEQUENCE, VR::SQ, false),
    (tags::BREED_REGISTRATION_SEQUENCE, VR::SQ, false),
    (tags::RESPONSIBLE_PERSON, VR::PN, false),
    (tags::RESPONSIBLE_PERSON_ROLE, VR::CS, false),
    (tags::RESPONSIBLE_ORGANIZATION, VR::LO, false),
    (tags::PATIENT_IDENTITY_REMOVED, VR::CS, false),
    (tags::DEIDENTIFICATION_METHOD, VR::LO, false),
    (tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE, VR::SQ, false),
    // Clinical Trial Subject
    (tags::CLINICAL_TRIAL_SPONSOR_NAME, VR::LO, false),
    (tags::CLINICAL_TRIAL_PROTOCOL_ID, VR::LO, false),
    (tags::CLINICAL_TRIAL_PROTOCOL_NAME, VR::LO, false),
    (tags::CLINICAL_TRIAL_SITE_ID, VR::LO, false),
    (tags::CLINICAL_TRIAL_SITE_NAME, VR::LO, false),
    (tags::CLINICAL_TRIAL_SUBJECT_ID, VR::LO, false),
    (tags::CLINICAL_TRIAL_SUBJECT_READING_ID, VR::LO, false),
    (tags::CLINICAL_TRIAL_TIME_POINT_ID, VR::LO, false),
    (tags::CLINICAL_TRIAL_TIME_POINT_DESCRIPTION, VR::ST, false),
    // General Study
    (tags::STUDY_INSTANCE_UID, VR::UI, false),
    (tags::STUDY_DATE, VR::DA, true),
    (tags::STUDY_TIME, VR::TM, true),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN, true),
    (
        tags::REFERRING_PHYSICIAN_IDENTIFICATION_SEQUENCE,
        VR::SQ,
        false,
    ),
    (tags::STUDY_ID, VR::SH, true),
    (tags::ACCESSION_NUMBER, VR::SH, true),
    (tags::ISSUER_OF_ACCESSION_NUMBER_SEQUENCE, VR::SQ, false),
    (tags::STUDY_DESCRIPTION, VR::LO, false),
    (tags::PHYSICIANS_OF_RECORD, VR::PN, false),
    (tags::NAME_OF_PHYSICIANS_READING_STUDY, VR::PN, false),
    (tags::PROCEDURE_CODE_SEQUENCE, VR::SQ, false),
    // Patient Study
    (tags::ADMITTING_DIAGNOSES_DESCRIPTION, VR::LO, false),
    (tags::PATIENT_AGE, VR::AS, false),
    (tags::PATIENT_SIZE, VR::DS, false),
    (tags::PATIENT_WEIGHT, VR::DS, false),
    (tags::ADDITIONAL_PATIENT_HISTORY, VR::LT, false),
];

/// Everything but the document-specific modules: SOP Common, Patient, Study, Series,
/// General Equipment, plus the request references shared by SR and KOS.
pub(crate) fn base_header(
    ctx: &Context,
    sop_class: &str,
    sop_instance: &str,
    modality: &str,
    series_uid: &str,
    series_number: i32,
    series_description: &str,
) -> Obj {
    let input = ctx.input;
    let src = input.source_header;
    let mut o = Obj::new_empty();
    put_str(&mut o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    put_str(&mut o, tags::SOP_CLASS_UID, VR::UI, sop_class);
    put_str(&mut o, tags::SOP_INSTANCE_UID, VR::UI, sop_instance);

    for (tag, vr, type2) in COPIED_FROM_SOURCE {
        match src.get(*tag) {
            Some(e) => {
                o.put(e.clone());
            }
            None if *type2 => put_empty(&mut o, *tag, *vr),
            None => {}
        }
    }

    // Series
    put_str(&mut o, tags::MODALITY, VR::CS, modality);
    put_str(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, series_uid);
    put_str(
        &mut o,
        tags::SERIES_NUMBER,
        VR::IS,
        &series_number.to_string(),
    );
    put_str(
        &mut o,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        &codes::truncate_lo(series_description),
    );
    put_seq(
        &mut o,
        tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
        vec![],
    );

    // General Equipment
    put_str(
        &mut o,
        tags::MANUFACTURER,
        VR::LO,
        &codes::truncate_lo(&input.node.manufacturer),
    );
    put_str(
        &mut o,
        tags::MANUFACTURER_MODEL_NAME,
        VR::LO,
        MODEL_NAME_EQUIPMENT,
    );
    put_strs(
        &mut o,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        &ctx.software_versions(),
    );
    if !input.node.serial_number.is_empty() {
        put_str(
            &mut o,
            tags::DEVICE_SERIAL_NUMBER,
            VR::LO,
            &codes::truncate_lo(&input.node.serial_number),
        );
    }
    if !input.node.ae_title.is_empty() {
        put_str(
            &mut o,
            tags::STATION_NAME,
            VR::SH,
            &codes::truncate_chars(input.node.ae_title.trim(), 16),
        );
    }

    // Document instance
    put_str(&mut o, tags::INSTANCE_NUMBER, VR::IS, "1");
    put_str(
        &mut o,
        tags::CONTENT_DATE,
        VR::DA,
        &input.content_datetime.0,
    );
    put_str(
        &mut o,
        tags::CONTENT_TIME,
        VR::TM,
        &input.content_datetime.1,
    );
    o
}

/// Referenced Request Sequence (SR and KOS documents), when the source names requests.
pub(crate) fn put_referenced_requests(ctx: &Context, o: &mut Obj) {
    let requests = referenced_requests(ctx.input.source_header, &ctx.study_uid);
    if !requests.is_empty() {
        put_seq(o, tags::REFERENCED_REQUEST_SEQUENCE, requests);
    }
}

/// Referenced Request Sequence items from the source's Request Attributes Sequence (one per
/// request the study fulfils). Type 2 attributes are written empty when the source lacks them.
fn referenced_requests(src: &Obj, study_uid: &str) -> Vec<Obj> {
    let Some(items) = src
        .get(tags::REQUEST_ATTRIBUTES_SEQUENCE)
        .and_then(|e| e.items())
    else {
        return Vec::new();
    };
    let accession = src.get(tags::ACCESSION_NUMBER);
    let mut out = Vec::new();
    for req in items {
        let mut r = Obj::new_empty();
        put_str(&mut r, tags::STUDY_INSTANCE_UID, VR::UI, study_uid);
        put_seq(&mut r, tags::REFERENCED_STUDY_SEQUENCE, vec![]);
        match req.get(tags::ACCESSION_NUMBER).or(accession) {
            Some(e) => {
                r.put(e.clone());
            }
            None => put_empty(&mut r, tags::ACCESSION_NUMBER, VR::SH),
        }
        if let Some(e) = req
            .get(tags::ISSUER_OF_ACCESSION_NUMBER_SEQUENCE)
            .or_else(|| src.get(tags::ISSUER_OF_ACCESSION_NUMBER_SEQUENCE))
        {
            r.put(e.clone());
        }
        for (tag, vr, type2) in [
            (
                tags::PLACER_ORDER_NUMBER_IMAGING_SERVICE_REQUEST,
                VR::LO,
                true,
            ),
            (
                tags::FILLER_ORDER_NUMBER_IMAGING_SERVICE_REQUEST,
                VR::LO,
                true,
            ),
            (tags::REQUESTED_PROCEDURE_ID, VR::SH, true),
            (tags::REQUESTED_PROCEDURE_DESCRIPTION, VR::LO, true),
            (tags::REQUESTED_PROCEDURE_CODE_SEQUENCE, VR::SQ, true),
            (tags::REASON_FOR_THE_REQUESTED_PROCEDURE, VR::LO, false),
            (
                tags::REASON_FOR_REQUESTED_PROCEDURE_CODE_SEQUENCE,
                VR::SQ,
                false,
            ),
        ] {
            match req.get(tag) {
                Some(e) => {
                    r.put(e.clone());
                }
                None if vr == VR::SQ && type2 => put_seq(&mut r, tag, vec![]),
                None if type2 => put_empty(&mut r, tag, vr),
                None => {}
            }
        }
        out.push(r);
    }
    out
}

/// Coding Scheme Identification Sequence item declaring `99PRIMA`.
pub(crate) fn coding_scheme_identification() -> Obj {
    let mut o = Obj::new_empty();
    put_str(
        &mut o,
        tags::CODING_SCHEME_DESIGNATOR,
        VR::SH,
        codes::PRIMA_SCHEME,
    );
    put_str(
        &mut o,
        tags::CODING_SCHEME_NAME,
        VR::ST,
        codes::PRIMA_SCHEME_NAME,
    );
    put_str(
        &mut o,
        tags::CODING_SCHEME_RESPONSIBLE_ORGANIZATION,
        VR::ST,
        codes::PRIMA_SCHEME_ORG,
    );
    o
}

/// Device observer context (TID 1002 with TID 1004), HAS OBS CONTEXT items of the root.
pub(crate) fn observer_context(ctx: &Context) -> Vec<Obj> {
    let node = ctx.input.node;
    let mut v = vec![
        code_value_item(
            Rel::HasObsContext,
            &codes::observer_type(),
            &codes::device(),
        ),
        uidref_item(
            Rel::HasObsContext,
            &codes::device_observer_uid(),
            &node.device_observer_uid,
        ),
    ];
    if !node.ae_title.is_empty() {
        v.push(text_item(
            Rel::HasObsContext,
            &codes::device_observer_name(),
            node.ae_title.trim(),
        ));
    }
    v.push(text_item(
        Rel::HasObsContext,
        &codes::device_observer_manufacturer(),
        &node.manufacturer,
    ));
    v.push(text_item(
        Rel::HasObsContext,
        &codes::device_observer_model_name(),
        MODEL_NAME_EQUIPMENT,
    ));
    if !node.serial_number.is_empty() {
        v.push(text_item(
            Rel::HasObsContext,
            &codes::device_observer_serial_number(),
            &node.serial_number,
        ));
    }
    v
}

pub(crate) fn language_item() -> Obj {
    code_value_item(Rel::HasConceptMod, &codes::language(), &codes::english_us())
}

/// Part-10 bytes of `obj`: preamble, `DICM`, meta group, Explicit VR Little Endian dataset.
pub(crate) fn to_part10(
    obj: Obj,
    sop_class: &str,
    sop_instance: &str,
) -> Result<Vec<u8>, ReportError> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance)
        .transfer_syntax(EXPLICIT_VR_LE)
        .implementation_class_uid(uid::OUTPUT_IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(uid::OUTPUT_IMPLEMENTATION_VERSION_NAME)
        .build()
        .map_err(|e| ReportError::Encode(e.to_string()))?;
    let file = obj.with_exact_meta(meta);
    let mut buf = Vec::new();
    file.write_all(&mut buf)
        .map_err(|e| ReportError::Encode(e.to_string()))?;
    Ok(buf)
}

/// Whether a predecessor is an SR document (KOS excluded) that this SR may supersede.
pub(crate) fn is_sr_document(sop_class: &str) -> bool {
    sop_class.starts_with(SR_CLASS_PREFIX) && sop_class != KEY_OBJECT_SELECTION
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ds_roundtrips_f32_within_16_chars() {
        for v in [
            1.4532604f32,
            -0.4096565,
            1e-20,
            -3.4e38,
            0.0,
            -0.0,
            1.0 / 3.0,
            -1.1754944e-38,
            123456.79,
        ] {
            let s = format_ds(v);
            assert!(s.len() <= 16, "{s}");
            assert_eq!(s.parse::<f32>().unwrap(), v, "{s}");
        }
    }

    #[test]
    fn priority_ranks() {
        assert_eq!(priority_rank("none"), Some(0));
        assert_eq!(priority_rank("HIGH"), Some(3));
        assert_eq!(priority_rank("urgent"), None);
    }
}
