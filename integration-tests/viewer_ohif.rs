//! Issue 30: our SR as a radiologist sees it in the most widely used open-source web viewer.
//! OHIF Viewer 3.13.2's prebuilt dist, Orthanc with its DICOMweb plugin on one origin, and
//! headless Chromium driven by Playwright (`integration-tests/viewer/ohif_check.py`, set up
//! by `scripts/viewer-setup.sh`). For STUDY_A and a synthetic study, with and without an
//! explanation: the SR opens with no error; every explained region is drawn, by OHIF's own
//! annotation state, on the image its group references, labelled with the finding, Present or
//! Absent and a readable importance; without regions, OHIF shows the report as text with every
//! finding and its Present/Absent; and Orthanc stores the plain and the explained objects
//! side by side. (Before: OHIF failed opening the SR — "Cannot read properties of undefined
//! (reading 'ReferencedSOPSequence')" — and drew nothing.)

mod common;
mod fixtures;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::bin;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Whether the harness can run here; in CI it must.
fn have_viewer() -> bool {
    let dist = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".cache/prima-node/ohif-3.13.2/dist/index.html");
    let playwright = Command::new(repo().join(".venv/bin/python"))
        .args(["-c", "import playwright"])
        .output()
        .is_ok_and(|o| o.status.success());
    let plugin = Path::new("/usr/share/orthanc/plugins/libOrthancDicomWeb.so").exists();
    let ok = dist.exists() && playwright && plugin && Path::new("/usr/bin/chromium").exists();
    if !ok {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "the viewer harness is not installed (scripts/viewer-setup.sh)"
        );
        eprintln!("SKIPPED: OHIF harness not installed (scripts/viewer-setup.sh)");
    }
    ok
}

fn s(o: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    o.element(tag)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

fn items(o: &InMemDicomObject, tag: dicom_core::Tag) -> Vec<InMemDicomObject> {
    o.element(tag)
        .ok()
        .and_then(|e| e.items().map(|i| i.to_vec()))
        .unwrap_or_default()
}

fn walk(o: &InMemDicomObject, out: &mut Vec<InMemDicomObject>) {
    for c in items(o, tags::CONTENT_SEQUENCE) {
        out.push(c.clone());
        walk(&c, out);
    }
}

fn concept(o: &InMemDicomObject) -> (String, String) {
    items(o, tags::CONCEPT_NAME_CODE_SEQUENCE)
        .first()
        .map(|c| (s(c, tags::CODE_VALUE), s(c, tags::CODE_MEANING)))
        .unwrap_or_default()
}

/// What the SR says a viewer should show: per tracked region, the image it lies on; and the
/// "<finding>: Present|Absent" line of every diagnosis.
struct Expected {
    regions: BTreeMap<String, String>,
    findings: Vec<String>,
}

fn expected(sr: &Path) -> Expected {
    let obj = dicom_object::open_file(sr).unwrap();
    let mut all = Vec::new();
    walk(&obj, &mut all);
    let mut regions = BTreeMap::new();
    for g in all.iter().filter(|i| concept(i).0 == "125007") {
        let mut inner = Vec::new();
        walk(g, &mut inner);
        let id = inner
            .iter()
            .find(|i| concept(i).0 == "112039")
            .map(|i| s(i, tags::TEXT_VALUE))
            .unwrap();
        let image = inner
            .iter()
            .find(|i| s(i, tags::VALUE_TYPE) == "SCOORD")
            .map(|sc| {
                let img = &items(sc, tags::CONTENT_SEQUENCE)[0];
                s(
                    &items(img, tags::REFERENCED_SOP_SEQUENCE)[0],
                    tags::REFERENCED_SOP_INSTANCE_UID,
                )
            })
            .expect("every group has a region");
        regions.insert(id, image);
    }
    let findings = all
        .iter()
        .filter(|i| concept(i).0.starts_with("DX-") && s(i, tags::VALUE_TYPE) == "CODE")
        .map(|i| {
            let value = items(i, tags::CONCEPT_CODE_SEQUENCE)
                .first()
                .map(|c| s(c, tags::CODE_MEANING))
                .unwrap_or_default();
            format!("{}: {value}", concept(i).1)
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    Expected { regions, findings }
}

/// Runs the harness on a study and our outputs; its report for the study.
fn open_in_ohif(study: &Path, outputs: &Path, report_dir: &Path) -> Value {
    let o = Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("integration-tests/viewer/ohif_check.py"))
        .arg("--out")
        .arg(report_dir)
        .arg(study)
        .arg(outputs)
        .output()
        .expect("run ohif_check.py");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "ohif_check.py failed:\n{log}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(report_dir.join("report.json")).unwrap()).unwrap();
    let viewer = report["viewer"].as_object().unwrap();
    assert_eq!(viewer.len(), 1, "one study");
    viewer.values().next().unwrap().clone()
}

/// Checks one run in OHIF; returns the directory of its outputs.
fn check(name: &str, study: &Path, model: &Path, explain: bool, tmp: &Path) -> PathBuf {
    let out = tmp.join(format!("{name}-out"));
    let mut c = Command::new(bin());
    c.args(["infer", "--dicom", "--device", "cpu", "--model"])
        .arg(model)
        .arg("--out")
        .arg(&out);
    if explain {
        c.args(["--explain", "--explain-samples", "32"]);
    }
    let o = c.arg(study).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sr = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("_sr.dcm"))
        .unwrap();
    let want = expected(&sr);
    let shots = std::env::var_os("PRIMA_SCREENSHOT_DIR")
        .map(|d| PathBuf::from(d).join(name))
        .unwrap_or_else(|| tmp.join(format!("{name}-report")));
    let v = open_in_ohif(study, &out, &shots);
    let summary = &v["summary"];
    println!("OHIF {name}: {summary}");
    assert_eq!(
        summary["errors"],
        serde_json::json!([]),
        "{name}: {summary}"
    );
    assert_eq!(v["page_errors"], serde_json::json!([]), "{name}");
    assert_eq!(summary["sr_loaded"], true, "{name}: {summary}");

    // Every region where OHIF's annotation state puts it: on the image its group references.
    let drawn: BTreeMap<String, (String, Vec<String>)> = summary["annotations_drawn"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let labels = a["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap().to_string())
                .collect();
            (
                a["tracking"].as_str().unwrap().to_string(),
                (a["sop_instance"].as_str().unwrap().to_string(), labels),
            )
        })
        .collect();
    assert_eq!(
        drawn.keys().collect::<Vec<_>>(),
        want.regions.keys().collect::<Vec<_>>(),
        "{name}: regions drawn"
    );
    assert_eq!(
        explain,
        !want.regions.is_empty(),
        "{name}: regions only when explained"
    );
    for (id, image) in &want.regions {
        let (on, labels) = &drawn[id];
        assert_eq!(on, image, "{name}: {id} drawn on another image");
        assert!(
            labels
                .iter()
                .any(|l| l.contains(": Present (margin") || l.contains(": Absent (margin")),
            "{name}: {id}: no finding and Present/Absent in {labels:?}"
        );
        let pct = labels
            .iter()
            .find_map(|l| l.strip_prefix("LIME importance (% of the top region): "))
            .and_then(|v| v.trim_end_matches(" %").parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name}: {id}: no readable importance in {labels:?}"));
        assert!(pct.abs() > 0.005, "{name}: {id}: importance reads {pct}");
    }
    // The derived key-image series (explained runs only): a display set OHIF supports, with
    // every key image, and a key image shown in the viewport with its pixels.
    let key_uids: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("_keyimage"))
        .map(|p| {
            let o = dicom_object::open_file(&p).unwrap();
            let uid = o.element(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap();
            uid.trim_end_matches('\0').to_string()
        })
        .collect();
    let sets = summary["key_image_sets"].as_array().unwrap();
    assert_eq!(
        explain,
        !key_uids.is_empty(),
        "{name}: key images only when explained"
    );
    if explain {
        assert_eq!(
            sets.len(),
            1,
            "{name}: one key-image display set: {summary}"
        );
        assert_eq!(sets[0]["unsupported"], false, "{name}: {summary}");
        assert_eq!(
            sets[0]["instances"].as_u64(),
            Some(key_uids.len() as u64),
            "{name}: {summary}"
        );
        let shown = summary["key_images_shown"].as_array().unwrap();
        assert!(
            shown.iter().any(|v| key_uids
                .iter()
                .any(|u| v["sop_instance"].as_str() == Some(u.as_str()))
                && v["dimensions"].is_array()),
            "{name}: no key image shown in a viewport: {summary}"
        );
    } else {
        assert!(sets.is_empty(), "{name}: {summary}");
    }
    // Without regions OHIF shows the report as text: every finding with Present/Absent.
    if want.regions.is_empty() {
        let text = v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|st| st["panel_text"]["body"].as_str())
            .collect::<Vec<_>>()
            .join("\n");
        for f in &want.findings {
            assert!(text.contains(f.as_str()), "{name}: {f:?} not shown");
        }
    }
    out
}

/// Issue 30, item 3: the plain and the explained objects of one study are different objects
/// with different UIDs, so a PACS stores both (before, Orthanc answered "AlreadyStored" to the
/// explained SR and KOS: the plain ones had their UIDs).
fn orthanc_stores_both(study: &Path, plain: &Path, explained: &Path, tmp: &Path) {
    let report_dir = tmp.join("both-report");
    let o = Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("integration-tests/viewer/ohif_check.py"))
        .arg("--out")
        .arg(&report_dir)
        .arg(study)
        .arg(plain)
        .arg(explained)
        .output()
        .expect("run ohif_check.py");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: Value =
        serde_json::from_slice(&std::fs::read(report_dir.join("report.json")).unwrap()).unwrap();
    let files = report["files"].as_u64().unwrap();
    assert_eq!(
        report["upload"],
        serde_json::json!({ "Success": files }),
        "every object stored once, none 'AlreadyStored'"
    );
}

#[test]
fn ohif_opens_the_plain_and_the_explained_sr_and_draws_each_region_on_its_image() {
    let Some(fx) = fixtures::reference_dir() else {
        return;
    };
    if !have_viewer() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures::convert_fixture_model(&fx, &tmp.path().join("model"));
    let synth = tmp.path().join("studies/s3");
    let o = Command::new(bin())
        .args(["synth-study", "--seed", "3", "--out"])
        .arg(&synth)
        .output()
        .unwrap();
    assert!(o.status.success());
    let study_a = fx.join("studies/STUDY_A");
    let plain = check("study_a-plain", &study_a, &model, false, tmp.path());
    let explained = check("study_a-explained", &study_a, &model, true, tmp.path());
    check("synthetic-plain", &synth, &model, false, tmp.path());
    check("synthetic-explained", &synth, &model, true, tmp.path());
    orthanc_stores_both(&study_a, &plain, &explained, tmp.path());
}
