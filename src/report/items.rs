//! Attribute and SR content-item builders shared by the documents: typed puts, code and
//! reference items, the TID 1500/2010 item shapes, and the DS formatting of model outputs.

use dicom_core::value::{DataSetSequence, Value};
use dicom_core::{DataElement, Length, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::codes::{self, Code};

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
    HasAcqContext,
    InferredFrom,
}

impl Rel {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Rel::Contains => "CONTAINS",
            Rel::HasObsContext => "HAS OBS CONTEXT",
            Rel::HasConceptMod => "HAS CONCEPT MOD",
            Rel::HasAcqContext => "HAS ACQ CONTEXT",
            Rel::InferredFrom => "INFERRED FROM",
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

/// IMAGE or COMPOSITE reference item without concept name (as TID 2010 and TID 1601 want).
pub(crate) fn reference_item(value_type: &str, sop_class: &str, sop_instance: &str) -> Obj {
    named_reference_item(value_type, None, sop_class, sop_instance)
}

/// IMAGE or COMPOSITE reference item (Rel CONTAINS), with a concept name when the template
/// gives one (TID 1501 "Source of Measurement").
pub(crate) fn named_reference_item(
    value_type: &str,
    name: Option<&Code>,
    sop_class: &str,
    sop_instance: &str,
) -> Obj {
    let mut o = item(Rel::Contains, value_type, name);
    put_seq(
        &mut o,
        tags::REFERENCED_SOP_SEQUENCE,
        vec![sop_ref(sop_class, sop_instance)],
    );
    o
}

/// SCOORD "Source of Measurement" (TID 320, INFERRED FROM its measurement): a closed
/// POLYLINE rectangle [left, top, right, bottom] on one image, SELECTED FROM that image
/// (with its frame number when the image is a frame of a multi-frame instance).
pub(crate) fn region_item(
    rect: [f64; 4],
    sop_class: &str,
    sop_instance: &str,
    frame: Option<u32>,
) -> Obj {
    let mut o = Obj::new_empty();
    put_str(&mut o, tags::RELATIONSHIP_TYPE, VR::CS, "INFERRED FROM");
    put_str(&mut o, tags::VALUE_TYPE, VR::CS, "SCOORD");
    put_seq(
        &mut o,
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code_item(&codes::source_of_measurement())],
    );
    put_str(&mut o, tags::GRAPHIC_TYPE, VR::CS, "POLYLINE");
    let [l, t, r, b] = rect.map(|v| v as f32);
    let points = [l, t, r, t, r, b, l, b, l, t];
    o.put(DataElement::new(
        tags::GRAPHIC_DATA,
        VR::FL,
        PrimitiveValue::F32(points.iter().copied().collect()),
    ));
    let mut image = Obj::new_empty();
    put_str(&mut image, tags::RELATIONSHIP_TYPE, VR::CS, "SELECTED FROM");
    put_str(&mut image, tags::VALUE_TYPE, VR::CS, "IMAGE");
    let mut reference = sop_ref(sop_class, sop_instance);
    if let Some(f) = frame {
        put_str(
            &mut reference,
            tags::REFERENCED_FRAME_NUMBER,
            VR::IS,
            &f.to_string(),
        );
    }
    put_seq(&mut image, tags::REFERENCED_SOP_SEQUENCE, vec![reference]);
    put_seq(&mut o, tags::CONTENT_SEQUENCE, vec![image]);
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

pub(crate) fn language_item() -> Obj {
    code_value_item(Rel::HasConceptMod, &codes::language(), &codes::english_us())
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
}
