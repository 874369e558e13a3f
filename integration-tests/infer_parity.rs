//! `prima-node infer` end to end against the upstream predictions (fixture model):
//! file-name mode on every fixture study, default position mode on Study A, the run
//! record, and the predictions file's exact layout.
mod fixtures;

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_prima-node"))
}

fn infer(model: &Path, study: &Path, out: &Path, order: &str) {
    let o = Command::new(bin())
        .args([
            "infer",
            "--device",
            "cpu",
            "--slice-order",
            order,
            "--model",
        ])
        .arg(model)
        .arg("--out")
        .arg(out)
        .arg(study)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "infer failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("vqvae:") && err.contains("prima:"),
        "no stage progress on stderr: {err}"
    );
}

#[test]
fn filename_mode_matches_upstream_on_every_fixture_study() {
    let Some(root) = fixtures::reference_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures::convert_fixture_model(&root, &tmp.path().join("model"));
    for study in ["STUDY_A", "STUDY_C", "STUDY_C_J2K"] {
        let out = tmp.path().join(study);
        infer(&model, &root.join("studies").join(study), &out, "filename");
        let got = out.join(format!("{study}_predictions.json"));
        let want = root
            .join("expected")
            .join(study)
            .join(format!("{study}_predictions.json"));
        // 1e-4 relative, or 1e-5 absolute for values near zero
        let (rel, l2) = fixtures::compare_predictions(&got, &want, 0.1);
        eprintln!(
            "{study}: max error {rel:.2e} (relative, abs below 0.1), clip_emb rel L2 {l2:.2e}"
        );
        assert!(rel <= 1e-4, "{study}: scores off by {rel:e}");
        assert!(l2 <= 1e-4, "{study}: clip_emb off by {l2:e}");
        // The file has upstream's exact layout: same keys, order, nesting and indentation.
        let g = std::fs::read_to_string(&got).unwrap();
        let w = std::fs::read_to_string(&want).unwrap();
        let shape = |s: &str| {
            s.lines()
                .map(|l| {
                    let t = l.trim().trim_end_matches(',');
                    if t.parse::<f64>().is_ok() {
                        l.replace(t, "<number>")
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(shape(&g), shape(&w), "{study}: JSON layout differs");
        let run = fixtures::json(&out.join(format!("{study}_run.json")));
        let rr = fixtures::json(&root.join("expected").join(study).join("run_record.json"));
        let series = run["series"].as_array().unwrap();
        assert_eq!(series.len(), rr["series"].as_array().unwrap().len());
        for (s, r) in series.iter().zip(rr["series"].as_array().unwrap()) {
            assert_eq!(s["name"], r["series_name"]);
            assert_eq!(s["tokens_before_selection"], r["tokens_before_filter"]);
            assert_eq!(s["tokens_after_selection"], r["tokens_after_filter"]);
            assert_eq!(s["otsu_percentage"], r["otsu_percentage_used"]);
        }
        assert!(run["timings"]["vqvae_s"].as_f64().unwrap() > 0.0);
        assert_eq!(run["demo_model"], false);
    }
}

fn copy_dir(from: &Path, to: &Path, skip: &str) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() == skip {
            continue;
        }
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
            copy_dir(&e.path(), &dst, skip);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// Position mode differs from upstream only where upstream stacked slices out of spatial
/// order (Study A's S3, files named by UID): without S3 both orders give the same scores;
/// with S3 the difference is S3's effect and is reported.
#[test]
fn position_mode_on_study_a() {
    let Some(root) = fixtures::reference_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures::convert_fixture_model(&root, &tmp.path().join("model"));
    let study = root.join("studies/STUDY_A");
    let out = tmp.path().join("pos");
    infer(&model, &study, &out, "position");
    let want = root.join("expected/STUDY_A/STUDY_A_predictions.json");
    let (rel_s3, _) =
        fixtures::compare_predictions(&out.join("STUDY_A_predictions.json"), &want, 0.1);
    eprintln!(
        "STUDY_A position vs upstream (effect of S3's spatial order): max error {rel_s3:.2e}"
    );
    let no_s3 = tmp.path().join("STUDY_A");
    std::fs::create_dir_all(&no_s3).unwrap();
    copy_dir(&study, &no_s3, "S3");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    infer(&model, &no_s3, &a, "position");
    infer(&model, &no_s3, &b, "filename");
    let (rel, l2) = fixtures::compare_predictions(
        &a.join("STUDY_A_predictions.json"),
        &b.join("STUDY_A_predictions.json"),
        0.1,
    );
    eprintln!(
        "STUDY_A without S3, position vs file-name order: max error {rel:.2e}, clip L2 {l2:.2e}"
    );
    assert!(rel <= 1e-3, "{rel}");
}

#[test]
fn no_usable_series_is_a_one_line_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let study = tmp.path().join("empty");
    std::fs::create_dir_all(study.join("S1")).unwrap();
    std::fs::write(study.join("S1/readme.txt"), "not dicom").unwrap();
    let model = tmp.path().join("model");
    let o = Command::new(bin())
        .args(["model", "demo", "--size", "small", "--out"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(bin())
        .args(["infer", "--device", "cpu", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(tmp.path().join("out"))
        .arg(&study)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.lines()
            .last()
            .unwrap_or("")
            .contains("no usable series"),
        "{err}"
    );
}

/// `--dicom` writes the SR and KOS next to the JSON, valid by dciodvfy.
#[test]
fn infer_dicom_writes_sr_and_kos() {
    let Some(root) = fixtures::reference_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures::convert_fixture_model(&root, &tmp.path().join("model"));
    let out = tmp.path().join("out");
    let o = Command::new(bin())
        .args(["infer", "--dicom", "--device", "cpu", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(&out)
        .arg(root.join("studies/STUDY_C"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for kind in ["sr", "kos"] {
        let f = out.join(format!("STUDY_C_{kind}.dcm"));
        let obj = dicom_object::open_file(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let study = obj
            .element(dicom_dictionary_std::tags::STUDY_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(!study.is_empty());
        if let Ok(v) = Command::new("dciodvfy").arg(&f).output() {
            let text = String::from_utf8_lossy(&v.stderr).to_string()
                + &String::from_utf8_lossy(&v.stdout);
            let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("Error")).collect();
            assert!(errors.is_empty(), "{kind}: {errors:?}");
        }
    }
}

/// Issue 30, item 3: output UIDs come from everything that shapes the objects. The same
/// study twice without an explanation: the same SR and KOS UIDs (an idempotent re-send);
/// with an explanation: other UIDs for both (before, the explained SR reused the plain
/// one's UID and a PACS kept the first, answering the second "already stored").
#[test]
fn the_explanation_changes_every_output_uid_and_a_repeat_keeps_them() {
    let Some(root) = fixtures::reference_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures::convert_fixture_model(&root, &tmp.path().join("model"));
    let run = |name: &str, explain: bool| -> Vec<String> {
        let out = tmp.path().join(name);
        let mut c = Command::new(bin());
        c.args(["infer", "--dicom", "--device", "cpu"]);
        if explain {
            c.args(["--explain", "--explain-samples", "32"]);
        }
        let o = c
            .arg("--model")
            .arg(&model)
            .arg("--out")
            .arg(&out)
            .arg(root.join("studies/STUDY_C"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        ["sr", "kos"]
            .iter()
            .map(|k| {
                let f = out.join(format!("STUDY_C_{k}.dcm"));
                dicom_object::open_file(&f)
                    .unwrap()
                    .element(dicom_dictionary_std::tags::SOP_INSTANCE_UID)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .trim_end_matches('\0')
                    .to_string()
            })
            .collect()
    };
    let plain = run("plain", false);
    assert_eq!(plain, run("again", false), "identical runs, identical UIDs");
    let explained = run("explained", true);
    for (p, e) in plain.iter().zip(&explained) {
        assert_ne!(p, e, "an explained object reuses the plain one's UID");
    }
}
