//! What every output shares around its document content: the header modules copied from the
//! source or describing the node, the referenced requests, the device observer context, and
//! the Part-10 encoding.

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::FileMetaTableBuilder;

use super::codes;
use super::items::{
    code_value_item, put_empty, put_seq, put_str, put_strs, text_item, uidref_item, Obj, Rel,
};
use super::{Context, ReportError, MODEL_NAME_EQUIPMENT};
use crate::uid;

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

/// What a Secondary Capture made by the node says of itself besides its pixels: a derived
/// workstation image with burned-in text, not for diagnosis. General Series is not an SR
/// series: the PPS reference is Type 3 there and may not be empty; Laterality is Type 2C and
/// a whole-brain result has none (dciodvfy wants it present, empty).
pub(crate) fn secondary_capture_image(o: &mut Obj) {
    o.remove_element(tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE);
    put_empty(o, tags::LATERALITY, VR::CS);
    put_str(o, tags::CONVERSION_TYPE, VR::CS, "WSD");
    put_strs(
        o,
        tags::IMAGE_TYPE,
        VR::CS,
        &["DERIVED".to_string(), "SECONDARY".to_string()],
    );
    put_empty(o, tags::PATIENT_ORIENTATION, VR::CS);
    put_str(o, tags::BURNED_IN_ANNOTATION, VR::CS, "YES");
    put_str(o, tags::IMAGE_COMMENTS, VR::LT, "NOT FOR DIAGNOSIS");
}

/// Image Pixel for 8-bit pixels, `w` x `h`: grey (MONOCHROME2) or interleaved RGB.
pub(crate) fn put_pixels_8bit(o: &mut Obj, (w, h): (usize, usize), rgb: bool, px: Vec<u8>) {
    let us = |v: usize| PrimitiveValue::from(v as u16);
    let (samples, photometric) = if rgb { (3, "RGB") } else { (1, "MONOCHROME2") };
    o.put(DataElement::new(
        tags::SAMPLES_PER_PIXEL,
        VR::US,
        us(samples),
    ));
    put_str(o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, photometric);
    if rgb {
        o.put(DataElement::new(tags::PLANAR_CONFIGURATION, VR::US, us(0)));
    }
    o.put(DataElement::new(tags::ROWS, VR::US, us(h)));
    o.put(DataElement::new(tags::COLUMNS, VR::US, us(w)));
    o.put(DataElement::new(tags::BITS_ALLOCATED, VR::US, us(8)));
    o.put(DataElement::new(tags::BITS_STORED, VR::US, us(8)));
    o.put(DataElement::new(tags::HIGH_BIT, VR::US, us(7)));
    o.put(DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, us(0)));
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(px.into()),
    ));
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
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .implementation_class_uid(uid::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(uid::IMPLEMENTATION_VERSION_NAME)
        .build()
        .map_err(|e| ReportError::Encode(e.to_string()))?;
    let file = obj.with_exact_meta(meta);
    let mut buf = Vec::new();
    file.write_all(&mut buf)
        .map_err(|e| ReportError::Encode(e.to_string()))?;
    Ok(buf)
}
