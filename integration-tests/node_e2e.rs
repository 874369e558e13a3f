//! The product end to end: STUDY_A sent to the node with DCMTK over several associations
//! → Prima (converted fixture model) → SR + KOS stored at a DCMTK `storescp` "PACS".
mod common;
mod fixtures;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Node, NodeOpts, StoreScp};

const SR_CLASS: &str = "1.2.840.10008.5.1.4.1.1.88.34";
const KOS_CLASS: &str = "1.2.840.10008.5.1.4.1.1.88.59";

fn find(dir: &std::path::Path, name: &str) -> Option<PathBuf> {
    common::walk_files(dir)
        .into_iter()
        .find(|p| p.file_name().map(|n| n == name).unwrap_or(false))
}

#[test]
fn study_a_through_the_node_gives_sr_and_kos_equal_to_infer() {
    let Some(root) = fixtures::reference_dir() else {
        return;
    };
    if !common::have_dcmtk() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures::convert_fixture_model(&root, &tmp.path().join("model"));
    let pacs_port = common::free_port();
    let pacs = StoreScp::start(pacs_port);
    let node = Node::start(NodeOpts {
        dest_port: pacs_port,
        model_dir: Some(model.clone()),
        ..NodeOpts::default()
    });
    let series = common::study_series(&root, "STUDY_A");
    common::send_study(node.opts.port, &series, 3);
    let study_uid = common::study_uid_of(&series[0][0]);
    let ok = common::wait_until(Duration::from_secs(240), || {
        pacs.received_objects().len() >= 2
    });
    assert!(ok, "no SR/KOS at the destination:\n{}", node.log_text());
    std::thread::sleep(Duration::from_millis(500));
    let got = pacs.received_objects();
    assert_eq!(
        got.len(),
        2,
        "exactly one SR and one KOS: {:?}",
        got.iter().map(|g| &g.0).collect::<Vec<_>>()
    );
    let classes: Vec<String> = got
        .iter()
        .map(|(_, _, o)| {
            o.element(dicom_dictionary_std::tags::SOP_CLASS_UID)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches('\0')
                .to_string()
        })
        .collect();
    assert!(
        classes.iter().any(|c| c == SR_CLASS) && classes.iter().any(|c| c == KOS_CLASS),
        "{classes:?}"
    );
    assert!(
        got.iter().all(|(_, s, _)| *s == study_uid),
        "outputs belong to the source study"
    );
    let status = node.status();
    assert!(status.contains("done"), "status:\n{status}");
    // The predictions the node kept equal `prima-node infer` on the same files.
    let kept =
        find(&node.state_dir, "predictions.json").expect("predictions kept in the state dir");
    let out = tmp.path().join("infer");
    let o = Command::new(common::bin())
        .args(["infer", "--device", "cpu", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(&out)
        .arg(root.join("studies/STUDY_A"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (rel, l2) =
        fixtures::compare_predictions(&kept, &out.join("STUDY_A_predictions.json"), 1e-3);
    assert!(rel <= 1e-6 && l2 <= 1e-6, "node vs infer: {rel:e} {l2:e}");
    // Series prepared in the background while the study arrived (how many depends on
    // timing) are recorded; the comparison above holds either way.
    let run = fixtures::json(&find(&node.state_dir, "run.json").expect("run record kept"));
    let cached = run["timings"]["prepare_cached_series"]
        .as_u64()
        .expect("run record says how many series were prepared in the background");
    eprintln!(
        "series prepared in the background: {cached} of {}",
        run["series"].as_array().map_or(0, |s| s.len())
    );
    // No patient name or ID at info level.
    let obj = dicom_object::open_file(&series[0][0]).unwrap();
    let log = node.log_text();
    for tag in [
        dicom_dictionary_std::tags::PATIENT_NAME,
        dicom_dictionary_std::tags::PATIENT_ID,
    ] {
        let v = obj
            .element(tag)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches(['\0', ' '])
            .to_string();
        if !v.is_empty() {
            assert!(!log.contains(&v), "PHI {v:?} in the node log");
        }
    }
}

/// `prima-node synth-study --seed <seed>` into `dir`: its files.
fn synth(dir: &std::path::Path, seed: u64) -> Vec<PathBuf> {
    let o = Command::new(common::bin())
        .args(["synth-study", "--seed", &seed.to_string(), "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut f = common::walk_files(dir);
    f.sort();
    f
}

fn studies_at(pacs: &StoreScp) -> Vec<String> {
    pacs.received_objects()
        .into_iter()
        .map(|(_, s, _)| s)
        .collect()
}

/// A small demo model in a temporary folder and a storescp "PACS":
/// (folder, model dir, PACS port, PACS).
fn demo_model_and_pacs() -> (tempfile::TempDir, PathBuf, u16, StoreScp) {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    let o = Command::new(common::bin())
        .args(["model", "demo", "--size", "small", "--out"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pacs_port = common::free_port();
    let pacs = StoreScp::start(pacs_port);
    (tmp, model, pacs_port, pacs)
}

/// A node with the small demo model on `device`, sending to a storescp "PACS".
fn demo_node(device: &str) -> (tempfile::TempDir, StoreScp, Node) {
    let (tmp, model, pacs_port, pacs) = demo_model_and_pacs();
    let node = Node::start(NodeOpts {
        dest_port: pacs_port,
        model_dir: Some(model),
        device: device.into(),
        ..NodeOpts::default()
    });
    (tmp, pacs, node)
}

/// Issue 17: a node configured for the GPU on a machine without one (or whose GPU is gone)
/// says so and answers its studies on the CPU, instead of failing every study.
#[test]
fn a_node_configured_for_cuda_without_one_runs_on_the_cpu_and_says_so() {
    if !common::have_dcmtk() {
        return;
    }
    let (tmp, pacs, node) = demo_node("cuda");
    let files = synth(&tmp.path().join("study"), 5);
    let study = common::study_uid_of(&files[0]);
    common::send_study(node.opts.port, &[files], 1);
    assert!(
        common::wait_until(Duration::from_secs(120), || studies_at(&pacs).len() >= 2),
        "no SR and KOS for the study:\n{}",
        node.log_text()
    );
    assert!(studies_at(&pacs).iter().all(|s| *s == study));
    let run = fixtures::json(&find(&node.state_dir, "run.json").expect("run record kept"));
    let log = node.log_text();
    let fell_back = log.contains("CUDA not available: the model runs on the CPU");
    if tch::Cuda::device_count() == 0 {
        assert!(fell_back, "no fallback line in the log:\n{log}");
        assert!(log.contains("libtorch sees no CUDA device"), "{log}");
        assert_eq!(run["device"], "Cpu", "{run}");
    } else {
        // On a GPU machine the same configuration runs on the GPU.
        assert!(!fell_back, "{log}");
        assert_eq!(run["device"], "Cuda(0)", "{run}");
    }
}

/// Issue 18 in the node: with `[explain]` on (and allowed on the CPU) the SR that reaches
/// the PACS carries the LIME regions and the KOS names the finding; with `on_cpu` off the
/// node says it skipped the explanation and sends the objects without it.
#[test]
fn a_node_explains_its_top_finding_or_says_why_not() {
    if !common::have_dcmtk() {
        return;
    }
    for on_cpu in [true, false] {
        let (tmp, model, pacs_port, pacs) = demo_model_and_pacs();
        let node = Node::start(NodeOpts {
            dest_port: pacs_port,
            model_dir: Some(model),
            extra_toml: format!(
                "\n[explain]\nenabled = true\non_cpu = {on_cpu}\nsamples = 32\nbatch = 8\n"
            ),
            ..NodeOpts::default()
        });
        let files = synth(&tmp.path().join("study"), 6);
        common::send_study(node.opts.port, &[files], 1);
        assert!(
            common::wait_until(Duration::from_secs(120), || studies_at(&pacs).len() >= 2),
            "no SR and KOS (on_cpu = {on_cpu}):\n{}",
            node.log_text()
        );
        let run = fixtures::json(&find(&node.state_dir, "run.json").expect("run record kept"));
        let log = node.log_text();
        let text_of = |class: &str| {
            let (name, _, _) = pacs
                .received_objects()
                .into_iter()
                .find(|(_, _, o)| {
                    o.element(dicom_dictionary_std::tags::SOP_CLASS_UID)
                        .ok()
                        .and_then(|e| e.to_str().ok())
                        .is_some_and(|c| c.trim_end_matches('\0') == class)
                })
                .expect("object of the class at the PACS");
            let path = common::walk_files(pacs.dir.path())
                .into_iter()
                .find(|p| {
                    dicom_object::open_file(p).is_ok_and(|o| {
                        o.element(dicom_dictionary_std::tags::SOP_INSTANCE_UID)
                            .ok()
                            .and_then(|e| e.to_str().ok())
                            .is_some_and(|u| u.trim_end_matches('\0') == name)
                    })
                })
                .unwrap();
            String::from_utf8_lossy(&std::fs::read(path).unwrap()).into_owned()
        };
        let (sr, kos) = (text_of(SR_CLASS), text_of(KOS_CLASS));
        // The key-image series travels with the explained SR: Secondary Captures naming their
        // source images; none without an explanation.
        let key_images = || {
            pacs.received_objects()
                .into_iter()
                .filter(|(_, _, o)| {
                    o.element(dicom_dictionary_std::tags::SOP_CLASS_UID)
                        .ok()
                        .and_then(|e| e.to_str().ok())
                        .is_some_and(|c| c.trim_end_matches('\0') == "1.2.840.10008.5.1.4.1.1.7")
                })
                .count()
        };
        if on_cpu {
            assert!(
                common::wait_until(Duration::from_secs(30), || key_images() >= 1),
                "no key images at the PACS:\n{}",
                node.log_text()
            );
        } else {
            assert_eq!(key_images(), 0);
        }
        if on_cpu {
            let f = &run["explanation"]["findings"][0];
            assert_eq!(f["samples"], 32, "{run}");
            assert_eq!(f["tokens"].as_array().map(|t| t.len()), Some(3), "{f}");
            assert!(sr.contains("PRIMA-LIME"), "no LIME weights in the SR");
            assert!(
                kos.contains("where the model looked for"),
                "KOS description"
            );
            assert!(log.contains("explain: "), "{log}");
        } else {
            assert!(run.get("explanation").is_none(), "{run}");
            assert!(!sr.contains("PRIMA-LIME") && !kos.contains("where the model looked"));
            assert!(
                log.contains("explain: skipped, the model runs on the CPU"),
                "no skip line:\n{log}"
            );
        }
        drop(node);
    }
}

/// Issue 18, hostile: with the explanation on, a study whose series are damaged in ways
/// that reach the explanation's geometry (no PixelSpacing, a lone slice, an absurd frame
/// count) is assembled and run: it gets its SR and KOS, and the next, good study is
/// explained as usual by the same worker.
#[test]
fn a_damaged_study_with_the_explanation_on_is_answered_and_the_next_is_explained() {
    if !common::have_dcmtk() {
        return;
    }
    use dicom_core::{DataElement, PrimitiveValue as V, VR};
    use dicom_dictionary_std::tags;
    let (tmp, model, pacs_port, pacs) = demo_model_and_pacs();
    let node = Node::start(NodeOpts {
        dest_port: pacs_port,
        model_dir: Some(model),
        extra_toml: "\n[explain]\nenabled = true\non_cpu = true\nsamples = 32\n".into(),
        ..NodeOpts::default()
    });
    let bad = synth(&tmp.path().join("bad"), 8);
    let mut by_series: Vec<(String, Vec<PathBuf>)> = Vec::new();
    for f in &bad {
        let uid = common::series_uid_of(f);
        match by_series.iter_mut().find(|(u, _)| *u == uid) {
            Some((_, v)) => v.push(f.clone()),
            None => by_series.push((uid, vec![f.clone()])),
        }
    }
    assert!(by_series.len() >= 3, "{} series", by_series.len());
    // Series 0 without PixelSpacing, series 1 down to one slice, series 2 with one
    // instance claiming 2^31-1 frames; the rest as they are.
    for f in &by_series[0].1 {
        let mut o = dicom_object::open_file(f).unwrap();
        o.remove_element(tags::PIXEL_SPACING);
        o.write_to_file(f).unwrap();
    }
    for f in &by_series[1].1[1..] {
        std::fs::remove_file(f).unwrap();
    }
    let mut o = dicom_object::open_file(&by_series[2].1[0]).unwrap();
    o.put(DataElement::new(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        V::from("2147483647"),
    ));
    o.write_to_file(&by_series[2].1[0]).unwrap();
    let files: Vec<PathBuf> = bad.into_iter().filter(|f| f.exists()).collect();
    let bad_study = common::study_uid_of(&files[0]);
    common::send_study(node.opts.port, &[files], 1);
    assert!(
        common::wait_until(Duration::from_secs(180), || studies_at(&pacs)
            .iter()
            .filter(|s| **s == bad_study)
            .count()
            >= 2),
        "no SR and KOS for the damaged study:\n{}",
        node.log_text()
    );
    let good = synth(&tmp.path().join("good"), 9);
    let good_study = common::study_uid_of(&good[0]);
    common::send_study(node.opts.port, &[good], 1);
    assert!(
        common::wait_until(Duration::from_secs(180), || studies_at(&pacs)
            .iter()
            .filter(|s| **s == good_study)
            .count()
            >= 2),
        "no SR and KOS for the next study:\n{}",
        node.log_text()
    );
    let log = node.log_text();
    assert_eq!(
        log.matches("worker process ready").count(),
        1,
        "the worker never crashed:\n{log}"
    );
    let runs: Vec<serde_json::Value> = common::walk_files(&node.state_dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with("run.json"))
        .map(|p| fixtures::json(&p))
        .collect();
    let good_run = runs
        .iter()
        .find(|r| {
            r["study"] == good_study.as_str() || r["study_instance_uid"] == good_study.as_str()
        })
        .unwrap_or_else(|| panic!("run record of the good study among {}", runs.len()));
    assert_eq!(
        good_run["explanation"]["findings"][0]["tokens"]
            .as_array()
            .map(|t| t.len()),
        Some(3),
        "the good study explained: {good_run}"
    );
    for r in &runs {
        eprintln!(
            "study {}: {} series used, {} skipped, explanation {}",
            r["study"],
            r["series"].as_array().map_or(0, |v| v.len()),
            r["skipped"].as_array().map_or(0, |v| v.len()),
            if r["explanation"]["error"].is_string() {
                "failed"
            } else {
                "ok"
            }
        );
    }
}

/// Issue 14: one instance claiming 2,147,483,647 frames was accepted and then aborted the
/// node on every start (944 GB reserved while reading its header). It must go through
/// processing as a skipped series, and the next study must be processed as usual.
#[test]
fn an_absurd_frame_count_skips_its_series_and_the_node_goes_on() {
    if !common::have_dcmtk() {
        return;
    }
    let (tmp, pacs, node) = demo_node("cpu");
    let bad = synth(&tmp.path().join("bad"), 3);
    // Sets `values` in one instance; returns its series.
    let poison =
        |path: &std::path::Path,
         values: &[(dicom_core::Tag, dicom_core::VR, dicom_core::PrimitiveValue)]| {
            let mut obj = dicom_object::open_file(path).unwrap();
            for (tag, vr, v) in values {
                obj.put(dicom_core::DataElement::new(*tag, *vr, v.clone()));
            }
            obj.write_to_file(path).unwrap();
            common::series_uid_of(path)
        };
    use dicom_core::{PrimitiveValue as V, VR};
    use dicom_dictionary_std::tags;
    let bad_series = poison(
        &bad[0],
        &[(tags::NUMBER_OF_FRAMES, VR::IS, V::from("2147483647"))],
    );
    // Rows × Columns that its pixel data cannot hold (the volume buffer's shape).
    let big_series = poison(
        bad.last().unwrap(),
        &[
            (tags::ROWS, VR::US, V::from(65535u16)),
            (tags::COLUMNS, VR::US, V::from(65535u16)),
        ],
    );
    assert_ne!(bad_series, big_series);
    let bad_study = common::study_uid_of(&bad[0]);
    common::send_study(node.opts.port, &[bad], 1);
    assert!(
        common::wait_until(Duration::from_secs(120), || studies_at(&pacs)
            .contains(&bad_study)),
        "no result for the study:\n{}",
        node.log_text()
    );
    let run = fixtures::json(&find(&node.state_dir, "run.json").expect("run record kept"));
    let skipped = run["skipped"].as_array().unwrap();
    assert!(
        skipped
            .iter()
            .any(|s| s["series_instance_uid"] == bad_series.as_str()
                && s["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("NumberOfFrames 2147483647"))),
        "{skipped:?}"
    );
    assert!(
        skipped
            .iter()
            .any(|s| s["series_instance_uid"] == big_series.as_str()
                && s["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("needs at least"))),
        "{skipped:?}"
    );
    let good = synth(&tmp.path().join("good"), 4);
    let good_study = common::study_uid_of(&good[0]);
    common::send_study(node.opts.port, &[good], 1);
    assert!(
        common::wait_until(Duration::from_secs(120), || studies_at(&pacs)
            .contains(&good_study)),
        "no result for the next study:\n{}",
        node.log_text()
    );
    assert_eq!(
        node.log_text().matches("worker process ready").count(),
        1,
        "the worker never crashed"
    );
}

/// The worker's data memory (kB, VmData) as the kernel counts it for RLIMIT_DATA.
fn worker_vmdata_kb(node: &Node) -> u64 {
    let kids = common::children_of(node.pid().unwrap());
    assert_eq!(kids.len(), 1, "one worker process: {kids:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", kids[0])).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmData:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmData in /proc/<pid>/status")
}

/// Crash-loop: a study whose processing ends the worker process every time (here: series
/// of 300 slices, whose resampled volumes need more memory than `[model] worker_memory_mb`
/// leaves, as a study bigger than the host would meet the OOM killer) is marked failed
/// after `max_crashes` tries, and the study sent after it gets its SR and KOS.
#[test]
fn a_study_that_crashes_the_worker_every_time_fails_and_the_next_one_is_reported() {
    if !common::have_dcmtk() {
        return;
    }
    let (tmp, model, pacs_port, pacs) = demo_model_and_pacs();
    let mut node = Node::start(NodeOpts {
        dest_port: pacs_port,
        model_dir: Some(model),
        ..NodeOpts::default()
    });
    // What the loaded model takes, plus room for a normal small study (4 series of 256×256
    // ×24: ~13 MB per resampled volume) but not for two 300-slice ones (~160 MB each, twice).
    let limit_mb = worker_vmdata_kb(&node) / 1024 + 150;
    node.sigterm();
    node.opts.worker_memory_mb = Some(limit_mb);
    std::fs::write(
        &node.config,
        common::config_text(&node.opts, &node.state_dir),
    )
    .unwrap();
    node.restart();

    let big = tmp.path().join("big");
    let o = Command::new(common::bin())
        .args([
            "synth-study",
            "--seed",
            "5",
            "--instances",
            "600",
            "--series",
            "2",
            "--rows",
            "16",
            "--cols",
            "16",
            "--out",
        ])
        .arg(&big)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut files = common::walk_files(&big);
    files.sort();
    let big_study = common::study_uid_of(&files[0]);
    common::send_study(node.opts.port, &[files], 1);
    assert!(
        common::wait_until(Duration::from_secs(120), || node.status().lines().any(
            |l| l.contains(&big_study) && l.contains(" failed ") && l.contains("crashed 2 time(s)")
        )),
        "{}\n{}",
        node.status(),
        node.log_text()
    );
    assert!(
        !studies_at(&pacs).contains(&big_study),
        "nothing sent for it"
    );
    assert!(
        node.log_text().contains("memory allocation of"),
        "the worker ended on an allocation beyond its limit:\n{}",
        node.log_text()
    );

    let good = synth(&tmp.path().join("good"), 4);
    let good_study = common::study_uid_of(&good[0]);
    common::send_study(node.opts.port, &[good], 1);
    assert!(
        common::wait_until(Duration::from_secs(120), || studies_at(&pacs)
            .iter()
            .filter(|s| **s == good_study)
            .count()
            >= 2),
        "no SR and KOS for the next study:\n{}\n{}",
        node.status(),
        node.log_text()
    );
}

/// Vendor-like series written as one study (`study` UID, one patient): each case's files.
fn vendor_study(dir: &std::path::Path, study: &str, names: &[&str]) -> Vec<Vec<PathBuf>> {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    let cases: Vec<_> = prima_node::synth::vendor::cases()
        .into_iter()
        .chain(prima_node::synth::vendor::hostile_cases())
        .collect();
    names
        .iter()
        .map(|name| {
            let case = cases.iter().find(|c| c.name == *name).unwrap();
            // A hostile variant shares its generator's UIDs: another seed keeps it apart.
            let hostile = prima_node::synth::vendor::hostile_cases()
                .iter()
                .any(|h| h.name == *name);
            let seed = if hostile { 6 } else { 5 };
            let files = prima_node::synth::vendor::write_case(case, dir, seed).unwrap();
            for f in &files {
                let mut o = dicom_object::open_file(f).unwrap();
                for (tag, vr, v) in [
                    (tags::STUDY_INSTANCE_UID, VR::UI, study),
                    (tags::PATIENT_ID, VR::LO, "VENDOR-1"),
                    (tags::PATIENT_NAME, VR::PN, "Vendor^Study"),
                ] {
                    o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
                }
                o.write_to_file(f).unwrap();
            }
            files
        })
        .collect()
}

/// The run record kept for `study`.
fn run_record_of(state_dir: &std::path::Path, study: &str) -> Option<serde_json::Value> {
    common::walk_files(state_dir)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "run.json"))
        .find(|p| {
            std::fs::read_to_string(p.with_file_name("study_instance_uid.txt"))
                .is_ok_and(|s| s == study)
        })
        .map(|p| fixtures::json(&p))
}

/// A colour Secondary Capture (a console screenshot, modality OT) in `study`, made by
/// DCMTK's img2dcm from a 24-bit BMP with the study of `template`.
fn colour_capture(dir: &std::path::Path, template: &std::path::Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let (w, h) = (64u32, 48u32);
    let mut bmp = Vec::new();
    let row = (w * 3).next_multiple_of(4);
    let size = 54 + row * h;
    bmp.extend_from_slice(b"BM");
    for v in [size, 0, 54, 40] {
        bmp.extend_from_slice(&v.to_le_bytes());
    }
    bmp.extend_from_slice(&(w as i32).to_le_bytes());
    bmp.extend_from_slice(&(h as i32).to_le_bytes());
    bmp.extend_from_slice(&1u16.to_le_bytes());
    bmp.extend_from_slice(&24u16.to_le_bytes());
    for v in [0u32, row * h, 2835, 2835, 0, 0] {
        bmp.extend_from_slice(&v.to_le_bytes());
    }
    for y in 0..h {
        for x in 0..w {
            bmp.extend_from_slice(&[(x * 4) as u8, (y * 5) as u8, 200]);
        }
        bmp.resize(bmp.len() + (row - w * 3) as usize, 0);
    }
    let (src, out) = (dir.join("map.bmp"), dir.join("map.dcm"));
    std::fs::write(&src, bmp).unwrap();
    let o = Command::new("img2dcm")
        .args(["-i", "BMP"])
        .arg(&src)
        .arg(&out)
        .arg("-stf")
        .arg(template)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_file(&src).unwrap();
    out
}

/// Issue 28: real scanner series through `serve`. A study whose only other series is a
/// 3-plane localizer has one usable series: not analysed (min_series 2), nothing sent, the
/// reasons in its run record. Then a 16-series study of diffusion (Siemens, GE, Philips),
/// SWI magnitude+phase, 4D perfusion, a mosaic, Enhanced MR (stacks, time, echoes), Legacy
/// Converted, a localizer, a mixed matrix, a mosaic with a corrupt CSA header and a colour
/// Secondary Capture: split into volumes, analysed, the SR PARTIAL with one reason per
/// volume or object not used, and the log says so. A good study afterwards is answered.
#[test]
fn real_scanner_series_are_split_into_volumes_and_every_volume_not_used_is_reported() {
    if !common::have_dcmtk() {
        return;
    }
    let (tmp, model, pacs_port, pacs) = demo_model_and_pacs();
    let node = Node::start(NodeOpts {
        dest_port: pacs_port,
        model_dir: Some(model),
        device: "cpu".into(),
        extra_sop_classes: vec!["1.2.840.10008.5.1.4.1.1.7".into()],
        ..NodeOpts::default()
    });
    let thin = "2.25.2801";
    let series = vendor_study(
        &tmp.path().join("thin"),
        thin,
        &["plain_axial", "localizer_3plane"],
    );
    common::send_study(node.opts.port, &series, 1);
    assert!(
        common::wait_until(Duration::from_secs(120), || node
            .log_text()
            .contains("study not analysed")),
        "{}",
        node.log_text()
    );
    let run = common::wait_until(Duration::from_secs(30), || {
        run_record_of(&node.state_dir, thin).is_some()
    });
    assert!(run, "a run record is kept for a study not analysed");
    let run = run_record_of(&node.state_dir, thin).unwrap();
    let why = run["not_analysed"].as_str().unwrap();
    assert!(why.starts_with("1 usable series, min_series is 2"), "{why}");
    assert!(why.contains("(3 images): localizer"), "{why}");

    let full = "2.25.2802";
    let names = [
        "plain_axial",
        "siemens_dwi_trace",
        "ge_dwi_multib",
        "philips_dwi_isotropic",
        "swi_mag_phase",
        "perfusion_4d",
        "siemens_mosaic",
        "enhanced_plain",
        "enhanced_two_stacks",
        "enhanced_time_series",
        "enhanced_two_echoes",
        "legacy_converted",
        "localizer_3plane",
        "mixed_matrix",
        "mosaic_csa_truncated",
    ];
    let mut series = vendor_study(&tmp.path().join("full"), full, &names);
    series.push(vec![colour_capture(&tmp.path().join("sc"), &series[0][0])]);
    assert_eq!(series.len(), 16);
    // storescu does not propose Legacy Converted Enhanced MR; dcmsend proposes each file's
    // own SOP class.
    let legacy = series.remove(names.iter().position(|n| *n == "legacy_converted").unwrap());
    let o = Command::new("dcmsend")
        .args(["-aet", common::SCU_AE, "-aec", common::NODE_AE, "127.0.0.1"])
        .arg(node.opts.port.to_string())
        .args(&legacy)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "dcmsend: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    common::send_study(node.opts.port, &series, 2);
    assert!(
        common::wait_until(Duration::from_secs(300), || studies_at(&pacs)
            .contains(&full.to_string())),
        "no result for the study:\n{}",
        node.log_text()
    );
    assert!(
        !studies_at(&pacs).contains(&thin.to_string()),
        "nothing sent for the thin study"
    );
    let run = run_record_of(&node.state_dir, full).expect("run record");
    let reasons: Vec<&str> = run["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reason"].as_str().unwrap())
        .collect();
    for want in [
        "ph image: Prima reads magnitude images",
        "time point 10 of 10 of a 4D series",
        "time point 3 of 3 of a 4D series",
        "(3 images): localizer",
        "not a volume: slice spacing varies",
        "not a volume: Siemens CSA header unreadable",
        "1 instance(s): not an MR image the model reads (SOP Class 1.2.840.10008.5.1.4.1.1.7)",
        "diffusion direction at b=1000: the isotropic (trace) image is used",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(want)),
            "{want}: {reasons:#?}"
        );
    }
    let used = run["series"].as_array().unwrap();
    let volumes: Vec<&str> = used
        .iter()
        .map(|s| s["volume"].as_str().unwrap_or(""))
        .collect();
    assert!(
        volumes.iter().filter(|v| v.contains("b")).count() >= 2,
        "{volumes:?}"
    );
    assert!(
        volumes.contains(&"te10") && volumes.contains(&"te40"),
        "{volumes:?}"
    );
    let sr_of = || {
        pacs.received_objects().into_iter().find(|(_, s, o)| {
            s == full
                && o.element(dicom_dictionary_std::tags::MODALITY)
                    .ok()
                    .and_then(|e| e.to_str().ok())
                    .is_some_and(|m| m.trim() == "SR")
        })
    };
    assert!(
        common::wait_until(Duration::from_secs(60), || sr_of().is_some()),
        "SR at the PACS"
    );
    let sr = sr_of().unwrap().2;
    let flag = sr
        .element(dicom_dictionary_std::tags::COMPLETION_FLAG)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(flag.trim(), "PARTIAL");
    let log = node.log_text();
    assert!(log.contains("series split into volumes"), "{log}");
    assert!(log.contains("series skipped"), "{log}");
    let good = synth(&tmp.path().join("good"), 7);
    let good_study = common::study_uid_of(&good[0]);
    common::send_study(node.opts.port, &[good], 1);
    assert!(
        common::wait_until(Duration::from_secs(120), || studies_at(&pacs)
            .contains(&good_study)),
        "no result for the next study:\n{}",
        node.log_text()
    );
}
