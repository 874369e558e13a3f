//! A stand-in study processor for the tests and benchmarks that exercise the node without
//! a model: compiled only with the `stand-in` feature (`scripts/test.sh`, the ingest
//! benchmark), never into the shipped binary. `serve` selects it with
//! `PRIMA_NODE_FAKE_PROCESSOR=1`.
//!
//! One small Basic Text SR per run, with UIDs derived from the study and its input set, so
//! a re-run after a crash produces the same SOP Instance UID. `PRIMA_NODE_FAKE_FAIL` makes
//! every job fail; `PRIMA_NODE_FAKE_DELAY_MS` makes each take that long.

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use crate::job::{
    OutputKind, OutputObject, PredecessorRef, ProcessError, ProcessedStudy, RunRecord, StudyJob,
    StudyProcessor,
};

pub struct FakeProcessor;

const UID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5a0c_31c6_6f0e_4f6e_9a53_7c1b_9d2e_0b41);

fn uid_from_name(name: &str) -> String {
    crate::uid::from_name(&UID_NAMESPACE, name)
}

const BASIC_TEXT_SR: &str = dicom_dictionary_std::uids::BASIC_TEXT_SR_STORAGE;

impl StudyProcessor for FakeProcessor {
    fn process(&mut self, job: &StudyJob) -> Result<ProcessedStudy, ProcessError> {
        if std::env::var_os("PRIMA_NODE_FAKE_FAIL").is_some() {
            return Err(ProcessError::Failed("fake failure requested".into()));
        }
        // Gives the crash-consistency tests a window to SIGKILL the node mid-study.
        if let Some(ms) = std::env::var("PRIMA_NODE_FAKE_DELAY_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let h = hex::encode(job.input_set_hash);
        let sop = uid_from_name(&format!("fake-sr|{}|{h}", job.study_instance_uid));
        let series = uid_from_name(&format!("fake-sr-series|{}|{h}", job.study_instance_uid));
        let mut series_uids: Vec<&str> = job
            .instances
            .iter()
            .map(|i| i.series_instance_uid.as_str())
            .collect();
        series_uids.sort();
        series_uids.dedup();
        let text = format!(
            "Fake result (no model): {} instances in {} series.",
            job.instances.len(),
            series_uids.len()
        );
        let bytes = fake_sr(
            &job.study_instance_uid,
            &series,
            &sop,
            &text,
            &job.predecessors,
        )
        .map_err(|e| ProcessError::Failed(format!("cannot build fake SR: {e}")))?;
        let predictions = serde_json::json!({
            "fake": true,
            "study_instance_uid": job.study_instance_uid,
            "instances": job.instances.len(),
            "series": series_uids.len(),
            "input_set_hash": h,
        });
        Ok(ProcessedStudy {
            outputs: vec![OutputObject {
                kind: OutputKind::Sr,
                sop_class_uid: BASIC_TEXT_SR.into(),
                sop_instance_uid: sop,
                series_instance_uid: series,
                study_instance_uid: job.study_instance_uid.clone(),
                bytes,
            }],
            predictions_json: serde_json::to_string_pretty(&predictions).unwrap_or_default(),
            run: RunRecord {
                study: job.study_instance_uid.clone(),
                study_instance_uid: Some(job.study_instance_uid.clone()),
                model_name: "stand-in".into(),
                warnings: vec![format!(
                    "FAKE processor (attempt {}): not model results",
                    job.attempt
                )],
                ..RunRecord::default()
            },
        })
    }
}

fn fake_sr(
    study: &str,
    series: &str,
    sop: &str,
    text: &str,
    predecessors: &[PredecessorRef],
) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    use dicom_object::FileMetaTableBuilder;

    let mut o = InMemDicomObject::new_empty();
    o.put(s(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"));
    o.put(s(tags::SOP_CLASS_UID, VR::UI, BASIC_TEXT_SR));
    o.put(s(tags::SOP_INSTANCE_UID, VR::UI, sop));
    o.put(s(tags::STUDY_INSTANCE_UID, VR::UI, study));
    o.put(s(tags::SERIES_INSTANCE_UID, VR::UI, series));
    o.put(s(tags::MODALITY, VR::CS, "SR"));
    o.put(s(tags::SERIES_NUMBER, VR::IS, "9901"));
    o.put(s(tags::INSTANCE_NUMBER, VR::IS, "1"));
    o.put(s(tags::PATIENT_NAME, VR::PN, ""));
    o.put(s(tags::PATIENT_ID, VR::LO, ""));
    o.put(s(tags::MANUFACTURER, VR::LO, "prima-node (fake processor)"));
    o.put(s(tags::VALUE_TYPE, VR::CS, "CONTAINER"));
    o.put(s(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"));
    o.put(s(tags::COMPLETION_FLAG, VR::CS, "COMPLETE"));
    o.put(s(tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED"));
    o.put(seq(
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code("18748-4", "LN", "Diagnostic Imaging Report")],
    ));
    let mut item = InMemDicomObject::from_element_iter([
        s(tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS"),
        s(tags::VALUE_TYPE, VR::CS, "TEXT"),
        s(tags::TEXT_VALUE, VR::UT, text),
    ]);
    item.put(seq(
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code("121071", "DCM", "Finding")],
    ));
    o.put(seq(tags::CONTENT_SEQUENCE, vec![item]));
    if !predecessors.is_empty() {
        o.put(predecessor_documents(study, predecessors));
    }
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(BASIC_TEXT_SR)
        .media_storage_sop_instance_uid(sop)
        .transfer_syntax(dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .implementation_class_uid(crate::uid::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(crate::uid::IMPLEMENTATION_VERSION_NAME)
        .build()?;
    let file = o.with_exact_meta(meta);
    let mut out = Vec::new();
    file.write_all(&mut out)?;
    Ok(out)
}

fn s(tag: dicom_core::Tag, vr: VR, v: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(v))
}
fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        s(tags::CODE_VALUE, VR::SH, value),
        s(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
        s(tags::CODE_MEANING, VR::LO, meaning),
    ])
}
fn seq(tag: dicom_core::Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}
/// Predecessor Documents Sequence naming the earlier outputs, grouped by series.
fn predecessor_documents(
    study: &str,
    predecessors: &[PredecessorRef],
) -> DataElement<InMemDicomObject> {
    let mut by_series: Vec<(String, Vec<InMemDicomObject>)> = Vec::new();
    for p in predecessors {
        let r = InMemDicomObject::from_element_iter([
            s(tags::REFERENCED_SOP_CLASS_UID, VR::UI, &p.sop_class_uid),
            s(
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                &p.sop_instance_uid,
            ),
        ]);
        match by_series
            .iter_mut()
            .find(|(s, _)| *s == p.series_instance_uid)
        {
            Some((_, v)) => v.push(r),
            None => by_series.push((p.series_instance_uid.clone(), vec![r])),
        }
    }
    let series_items = by_series
        .into_iter()
        .map(|(uid, refs)| {
            let mut it =
                InMemDicomObject::from_element_iter([s(tags::SERIES_INSTANCE_UID, VR::UI, &uid)]);
            it.put(seq(tags::REFERENCED_SOP_SEQUENCE, refs));
            it
        })
        .collect();
    let mut st = InMemDicomObject::from_element_iter([s(tags::STUDY_INSTANCE_UID, VR::UI, study)]);
    st.put(seq(tags::REFERENCED_SERIES_SEQUENCE, series_items));
    seq(tags::PREDECESSOR_DOCUMENTS_SEQUENCE, vec![st])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uid::is_valid as valid_uid;

    #[test]
    fn fake_processor_is_deterministic() {
        let job = StudyJob {
            study_instance_uid: "1.2.3".into(),
            instances: vec![],
            input_set_hash: [7; 32],
            predecessors: vec![PredecessorRef {
                sop_class_uid: BASIC_TEXT_SR.into(),
                sop_instance_uid: "2.25.1".into(),
                series_instance_uid: "2.25.2".into(),
            }],
            forced_complete: false,
            attempt: 1,
            set_aside: Vec::new(),
        };
        let a = FakeProcessor.process(&job).unwrap();
        let b = FakeProcessor.process(&job).unwrap();
        assert_eq!(a.outputs[0].sop_instance_uid, b.outputs[0].sop_instance_uid);
        assert_eq!(a.outputs[0].bytes, b.outputs[0].bytes);
        assert!(valid_uid(&a.outputs[0].sop_instance_uid));
        let obj = dicom_object::from_reader(&a.outputs[0].bytes[128..]).unwrap();
        assert_eq!(
            obj.element(dicom_dictionary_std::tags::SOP_INSTANCE_UID)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches('\0'),
            a.outputs[0].sop_instance_uid
        );
    }
}
