//! Issue 28 item 5: every character set a PACS sends. For each case a synthetic instance
//! gets PatientName, SeriesDescription, StudyDescription, ProtocolName and a Procedure Code
//! Sequence item's CodeMeaning as raw bytes in that encoding; then
//! (a) `charset::open_header` decodes them as DCMTK's `dcmdump +U8` does (pydicom for the
//!     Japanese sets, which this DCMTK build's iconv lacks),
//! (b) the SR and KOS built from that header carry the same text as UTF-8 (`dcmdump +U8`
//!     of the outputs), and `dciodvfy` finds no error in the SR,
//! (c) the model's series name comes from the decoded description, not its escape bytes.
use std::path::{Path, PathBuf};
use std::process::Command;

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use prima_node::imaging::charset::open_header;
use prima_node::imaging::header::read_slice_headers;
use prima_node::imaging::series::series_name;
use prima_node::report::{
    build_outputs, ModelIdentity, NodeIdentity, OutputKind, Predictions, ReportConfig, ReportInput,
    SourceInstance, UsedSeries,
};
use prima_node::synth::{write_study, Plane, SynthSeries, SynthStudy};

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn have(tool: &str) -> bool {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(!ci(), "{tool} not installed");
        eprintln!("SKIPPED: {tool} not installed");
    }
    ok
}

/// Which outside decoder is the reference for a case.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Reference {
    Dcmtk,
    /// DCMTK 3.6.7 on glibc iconv has no ISO-IR-87/JIS X 0201 converter.
    Pydicom,
}

struct Case {
    name: &'static str,
    charset: &'static [u8],
    patient_name: Vec<u8>,
    series_description: Vec<u8>,
    study_description: Vec<u8>,
    protocol_name: Vec<u8>,
    code_meaning: Vec<u8>,
    reference: Reference,
}

fn enc(e: &'static encoding_rs::Encoding, s: &str) -> Vec<u8> {
    let (b, _, unmappable) = e.encode(s);
    assert!(!unmappable, "{s} in {}", e.name());
    b.into_owned()
}

fn latin1(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap())
        .collect()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn cases() -> Vec<Case> {
    use encoding_rs::{EUC_KR, GB18030, GBK, ISO_2022_JP, ISO_8859_5, ISO_8859_7};
    // ISO-2022-JP as encoding_rs writes it is DICOM's IR 87 form: ESC $ B … ESC ( B.
    let jis = |s: &str| enc(ISO_2022_JP, s);
    let ksc = |s: &str| cat(&[b"\x1b$)C", &enc(EUC_KR, s)]);
    let gb2312 = |s: &str| cat(&[b"\x1b$)A", &enc(GBK, s)]);
    vec![
        Case {
            name: "ISO 2022 IR 87",
            charset: b"\\ISO 2022 IR 87",
            // PS3.5 Annex H.3.1.
            patient_name: b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B".to_vec(),
            series_description: cat(&[&jis("頭部"), b" T1"]),
            study_description: cat(&[&jis("脳"), b" MRI ", &jis("単純")]),
            protocol_name: cat(&[&jis("頭部"), b" T1"]),
            code_meaning: jis("頭部MRI"),
            reference: Reference::Pydicom,
        },
        Case {
            name: "ISO 2022 IR 149",
            charset: b"\\ISO 2022 IR 149",
            // PS3.5 Annex I.2.
            patient_name: b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf".to_vec(),
            series_description: cat(&[&ksc("뇌"), b" T1"]),
            study_description: cat(&[&ksc("뇌 자기공명"), b" MRI"]),
            protocol_name: cat(&[&ksc("뇌"), b" T1"]),
            code_meaning: ksc("뇌 검사"),
            reference: Reference::Dcmtk,
        },
        Case {
            name: "GB18030",
            charset: b"GB18030",
            // PS3.5 Annex J.3; 淺 is 0x9C 0x5C.
            patient_name: b"Wang^XiaoDong=\xcd\xf5^\xd0\xa1\xb6\xab=".to_vec(),
            series_description: enc(GB18030, "淺 T1"),
            study_description: enc(GB18030, "头部 淺表"),
            protocol_name: enc(GB18030, "淺"),
            code_meaning: enc(GB18030, "淺检查"),
            reference: Reference::Dcmtk,
        },
        Case {
            name: "ISO 2022 IR 58",
            charset: b"\\ISO 2022 IR 58",
            // PS3.5 Annex K.
            patient_name: b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab=".to_vec(),
            series_description: cat(&[&gb2312("头部"), b" T1"]),
            study_description: cat(&[&gb2312("头部磁共振"), b" MRI"]),
            protocol_name: cat(&[&gb2312("头部"), b" T2"]),
            code_meaning: gb2312("检查"),
            reference: Reference::Dcmtk,
        },
        Case {
            name: "ISO_IR 100",
            charset: b"ISO_IR 100",
            patient_name: latin1("Müller^Zoë"),
            series_description: latin1("Tête T1 àçé"),
            study_description: latin1("IRM crâne"),
            protocol_name: latin1("Tête T1"),
            code_meaning: latin1("IRM cérébrale"),
            reference: Reference::Dcmtk,
        },
        Case {
            name: "ISO_IR 144",
            charset: b"ISO_IR 144",
            patient_name: enc(ISO_8859_5, "Иванов^Иван"),
            series_description: enc(ISO_8859_5, "Голова T1"),
            study_description: enc(ISO_8859_5, "МРТ головного мозга"),
            protocol_name: enc(ISO_8859_5, "Голова"),
            code_meaning: enc(ISO_8859_5, "МРТ"),
            reference: Reference::Dcmtk,
        },
        Case {
            name: "ISO_IR 126",
            charset: b"ISO_IR 126",
            patient_name: enc(ISO_8859_7, "Διονυσιος^Νικος"),
            series_description: enc(ISO_8859_7, "Κεφαλή T1"),
            study_description: enc(ISO_8859_7, "Μαγνητική εγκεφάλου"),
            protocol_name: enc(ISO_8859_7, "Κεφαλή"),
            code_meaning: enc(ISO_8859_7, "Εξέταση"),
            reference: Reference::Dcmtk,
        },
        Case {
            name: "ISO_IR 192",
            charset: b"ISO_IR 192",
            patient_name: "Ærøskøbing^山田=淺".as_bytes().to_vec(),
            series_description: "頭部 T1 淺".as_bytes().to_vec(),
            study_description: "Мозг 뇌 Κεφαλή".as_bytes().to_vec(),
            protocol_name: "頭部 T1 淺".as_bytes().to_vec(),
            code_meaning: "Prüfung 检查".as_bytes().to_vec(),
            reference: Reference::Dcmtk,
        },
    ]
}

fn raw(tag: Tag, vr: VR, bytes: &[u8]) -> DataElement<InMemDicomObject> {
    let mut b = bytes.to_vec();
    if !b.len().is_multiple_of(2) {
        b.push(b' ');
    }
    DataElement::new(tag, vr, PrimitiveValue::U8(b.into()))
}

/// A one-series synthetic study whose first instance carries the case's text; returns its
/// files (the patched one first).
fn study(dir: &Path, case: &Case) -> Vec<PathBuf> {
    let synth = SynthStudy {
        seed: 28,
        patient_name: "SYNTHETIC^PHANTOM".into(),
        patient_id: "SYN000028".into(),
        study_description: "MRI BRAIN".into(),
        accession_number: "ACC000028".into(),
        series: vec![SynthSeries::new(2, "AX T1", Plane::Axial, 32, 32, 3)],
    };
    let files = write_study(&synth, dir).unwrap();
    let mut obj = dicom_object::open_file(&files[0]).unwrap();
    obj.put(raw(tags::SPECIFIC_CHARACTER_SET, VR::CS, case.charset));
    obj.put(raw(tags::PATIENT_NAME, VR::PN, &case.patient_name));
    obj.put(raw(
        tags::SERIES_DESCRIPTION,
        VR::LO,
        &case.series_description,
    ));
    obj.put(raw(
        tags::STUDY_DESCRIPTION,
        VR::LO,
        &case.study_description,
    ));
    obj.put(raw(tags::PROTOCOL_NAME, VR::LO, &case.protocol_name));
    let item = InMemDicomObject::from_element_iter([
        raw(tags::CODE_VALUE, VR::SH, b"BRAINMR"),
        raw(tags::CODING_SCHEME_DESIGNATOR, VR::SH, b"99TEST"),
        raw(tags::CODE_MEANING, VR::LO, &case.code_meaning),
    ]);
    obj.put(DataElement::new(
        tags::PROCEDURE_CODE_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(vec![item]),
    ));
    obj.write_to_file(&files[0]).unwrap();
    files
}

/// The attributes compared, with the way to find each in `dcmdump` output and in pydicom.
const ATTRIBUTES: [(&str, &str); 5] = [
    ("(0010,0010)", "PatientName"),
    ("(0008,103e)", "SeriesDescription"),
    ("(0008,1030)", "StudyDescription"),
    ("(0018,1030)", "ProtocolName"),
    ("(0008,0104)", "ProcedureCodeSequence[0].CodeMeaning"),
];

/// `dcmdump +U8` values of `ATTRIBUTES` (CodeMeaning: the first one after (0008,1032)).
fn dcmtk_values(file: &Path) -> Vec<Option<String>> {
    let o = Command::new("dcmdump")
        .arg("+U8")
        .arg(file)
        .output()
        .unwrap();
    let text = String::from_utf8(o.stdout).expect("dcmdump +U8 prints UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    let value = |line: &str| {
        let body = &line[..line.rfind('#').unwrap_or(line.len())];
        let (a, b) = (body.find('[')?, body.rfind(']')?);
        Some(body[a + 1..b].to_string())
    };
    ATTRIBUTES
        .iter()
        .map(|(tag, _)| {
            let from = if *tag == "(0008,0104)" {
                lines.iter().position(|l| l.contains("(0008,1032)"))?
            } else {
                0
            };
            lines[from..]
                .iter()
                .find(|l| l.trim_start().starts_with(tag))
                .and_then(|l| value(l))
        })
        .collect()
}

fn pydicom_values(file: &Path) -> Vec<Option<String>> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let script = r#"
import json, sys, pydicom
ds = pydicom.dcmread(sys.argv[1])
def text(v):
    return None if v is None else str(v)
print(json.dumps([
    text(ds.get("PatientName")), text(ds.get("SeriesDescription")),
    text(ds.get("StudyDescription")), text(ds.get("ProtocolName")),
    text(ds.ProcedureCodeSequence[0].get("CodeMeaning")),
]))
"#;
    let o = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn have_pydicom() -> bool {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import pydicom"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(!ci(), "pydicom not in .venv");
        eprintln!("SKIPPED: pydicom not in .venv");
    }
    ok
}

fn trimmed(v: &str) -> String {
    v.trim_end_matches(['\0', ' ']).to_string()
}

fn ours(obj: &InMemDicomObject) -> Vec<Option<String>> {
    let get = |o: &InMemDicomObject, t| o.get(t).and_then(|e| e.to_str().ok()).map(|s| trimmed(&s));
    let item = obj
        .get(tags::PROCEDURE_CODE_SEQUENCE)
        .and_then(|e| e.items())
        .and_then(|i| i.first());
    vec![
        get(obj, tags::PATIENT_NAME),
        get(obj, tags::SERIES_DESCRIPTION),
        get(obj, tags::STUDY_DESCRIPTION),
        get(obj, tags::PROTOCOL_NAME),
        item.and_then(|i| get(i, tags::CODE_MEANING)),
    ]
}

fn report_inputs(files: &[PathBuf]) -> (Predictions, ModelIdentity, Vec<UsedSeries>, NodeIdentity) {
    let metas: Vec<_> = files
        .iter()
        .flat_map(|f| read_slice_headers(f).unwrap())
        .collect();
    let used = UsedSeries {
        series_instance_uid: metas[0].series_instance_uid.clone(),
        series_name: series_name(&metas[0], "S2"),
        modality: Some("MR".into()),
        frame_of_reference_uid: None,
        image_size: Some((32, 32)),
        instances: metas
            .iter()
            .map(|m| SourceInstance {
                sop_class_uid: m.sop_class_uid.clone(),
                sop_instance_uid: m.sop_instance_uid.clone(),
                instance_number: m.instance_number.map(|n| n as i32),
                position_along_normal: m.position_along_normal(),
            })
            .collect(),
        tokens_used: 10,
    };
    let preds = Predictions {
        diagnosis: vec![("finding_a".into(), 0.5), ("finding_b".into(), -0.5)],
        referral: vec![],
        priority: vec![
            ("none".into(), 0.1),
            ("low".into(), 0.9),
            ("high".into(), 0.2),
        ],
        clip_emb: vec![],
    };
    let model = ModelIdentity {
        name: "Prima".into(),
        version: "charset-test".into(),
        demo: true,
        diagnosis_thresholds: vec![("finding_a".into(), 0.0), ("finding_b".into(), 0.0)],
        referral_thresholds: vec![],
    };
    let node = NodeIdentity::new("PRIMA_NODE", "charset-test", env!("CARGO_PKG_VERSION"));
    (preds, model, vec![used], node)
}

#[test]
fn every_character_set_decodes_as_the_reference_and_reaches_the_outputs() {
    let dcmtk = have("dcmdump");
    let pydicom = have_pydicom();
    let dciodvfy = have("dciodvfy");
    for case in cases() {
        let dir = tempfile::tempdir().unwrap();
        let dir = match std::env::var("PRIMA_CHARSETS_KEEP_DIR") {
            Ok(keep) => {
                let d = Path::new(&keep).join(case.name.replace(' ', "_"));
                std::fs::create_dir_all(&d).unwrap();
                d
            }
            Err(_) => dir.path().to_path_buf(),
        };
        let files = study(&dir, &case);
        let header = open_header(&files[0]).unwrap().into_inner();
        let decoded = ours(&header);
        eprintln!("{}: {decoded:?}", case.name);

        // (a) the outside reference decodes the source the same way.
        let reference = match case.reference {
            Reference::Dcmtk if dcmtk => Some(dcmtk_values(&files[0])),
            Reference::Pydicom if pydicom => Some(pydicom_values(&files[0])),
            _ => None,
        };
        if let Some(reference) = &reference {
            let reference: Vec<_> = reference
                .iter()
                .map(|v| v.as_deref().map(trimmed))
                .collect();
            for (i, (_, name)) in ATTRIBUTES.iter().enumerate() {
                assert_eq!(
                    decoded[i], reference[i],
                    "{}: {name} differs from {:?}",
                    case.name, case.reference
                );
            }
        }
        for v in decoded.iter().flatten() {
            assert!(
                !v.contains('\u{1b}') && !v.contains('\u{FFFD}'),
                "{}: {v:?}",
                case.name
            );
        }

        // (c) the series name is built from the decoded description.
        let metas = read_slice_headers(&files[0]).unwrap();
        let name = series_name(&metas[0], "FALLBACK");
        let mut from_text = metas[0].clone();
        from_text.series_description = Ok(decoded[1].clone());
        from_text.protocol_name = Ok(decoded[3].clone());
        assert_eq!(name, series_name(&from_text, "FALLBACK"), "{}", case.name);
        assert!(!name.contains("_B") && !name.starts_with("UNK-") && name != "FALLBACK");
        eprintln!("{}: series name {name:?}", case.name);

        // (b) the SR and KOS carry the same text, as UTF-8.
        let (preds, model, used, node) = report_inputs(&files);
        let input = ReportInput {
            source_header: &header,
            used: &used,
            skipped: &[],
            predictions: &preds,
            model: &model,
            input_set_hash: [7; 32],
            predecessors: &[],
            evidence: &[],
            key_images: &[],
            forced_complete: false,
            failed: false,
            node: &node,
            content_datetime: ("20261206".into(), "120000".into()),
        };
        let outputs = build_outputs(&input, &ReportConfig::default()).unwrap();
        for o in &outputs {
            let p = dir.join(format!("{:?}.dcm", o.kind));
            std::fs::write(&p, &o.bytes).unwrap();
            let obj = dicom_object::open_file(&p).unwrap();
            let sets = obj.get(tags::SPECIFIC_CHARACTER_SET).unwrap();
            assert_eq!(trimmed(&sets.to_str().unwrap()), "ISO_IR 192");
            let want = |i: usize| decoded[i].clone();
            let got = ours(&obj);
            // The outputs copy patient and study attributes, not the series ones.
            for i in [0, 2, 4] {
                assert_eq!(
                    got[i],
                    want(i),
                    "{} {:?}: {}",
                    case.name,
                    o.kind,
                    ATTRIBUTES[i].1
                );
            }
            if dcmtk {
                let dumped = dcmtk_values(&p);
                for i in [0, 2, 4] {
                    let d = dumped[i].as_deref().map(trimmed);
                    let r = reference
                        .as_ref()
                        .map_or(want(i), |r| r[i].as_deref().map(trimmed));
                    assert_eq!(
                        d, r,
                        "{} {:?}: dcmdump {}",
                        case.name, o.kind, ATTRIBUTES[i].1
                    );
                }
            }
            if dciodvfy && o.kind == OutputKind::Sr {
                let out = Command::new("dciodvfy").arg(&p).output().unwrap();
                let text = String::from_utf8_lossy(&out.stderr).into_owned()
                    + &String::from_utf8_lossy(&out.stdout);
                let errors: Vec<_> = text.lines().filter(|l| l.contains("Error")).collect();
                assert!(errors.is_empty(), "{}: dciodvfy: {errors:#?}", case.name);
            }
        }
    }
}

/// A study whose text cannot be decoded fully still gives headers, names and outputs:
/// replacement characters, no panic.
#[test]
fn undecodable_text_is_replaced() {
    let bad = [
        (&b"ISO_IR 999"[..], &b"Ab\xe9"[..], "Ab\u{FFFD}"),
        (b"GB18030", b"ab\x9c", "ab\u{FFFD}"),
        (b"\\ISO 2022 IR 87", b"a\x1b$)Zb\xb1", "a\u{FFFD}b\u{FFFD}"),
        (b"\\ISO 2022 IR 87", b"\x1b$B;3E", "山\u{FFFD}"),
    ];
    for (charset, bytes, want) in bad {
        let dir = tempfile::tempdir().unwrap();
        let case = Case {
            name: "bad",
            charset,
            patient_name: bytes.to_vec(),
            series_description: bytes.to_vec(),
            study_description: bytes.to_vec(),
            protocol_name: bytes.to_vec(),
            code_meaning: bytes.to_vec(),
            reference: Reference::Dcmtk,
        };
        let files = study(dir.path(), &case);
        let header = open_header(&files[0]).unwrap().into_inner();
        assert_eq!(ours(&header)[0].as_deref(), Some(want));
        let metas = read_slice_headers(&files[0]).unwrap();
        assert_eq!(metas[0].series_description, Ok(Some(want.to_string())));
    }
}
