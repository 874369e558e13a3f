//! Real PACS round trip: Orthanc (Debian package) on loopback holds STUDY_A, C-STOREs it to
//! the node (real Prima processor, fixture model), and must end up with the node's SR and KO
//! series in the same study, readable through its REST API.
mod common;
mod fixtures;

use common::{free_port, wait_until, Node, NodeOpts, NODE_AE};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ORTHANC_BIN: &str = "/usr/sbin/Orthanc";
const ORTHANC_AE: &str = "ORTHANC";
const COMPREHENSIVE_3D_SR: &str = "1.2.840.10008.5.1.4.1.1.88.34";
const KEY_OBJECT_SELECTION: &str = "1.2.840.10008.5.1.4.1.1.88.59";

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Orthanc and curl (our HTTP client) present; DCMTK too, as the other node tests need it
/// and the brief treats it as part of the PACS toolset. Missing tools fail under CI.
fn have_tools() -> bool {
    let mut missing = Vec::new();
    if !Path::new(ORTHANC_BIN).is_file() {
        missing.push(ORTHANC_BIN);
    }
    for t in ["curl", "storescu"] {
        let ok = Command::new(t)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !ok {
            missing.push(t);
        }
    }
    if missing.is_empty() {
        return true;
    }
    if ci() {
        panic!("CI=true and required tools are missing: {missing:?}");
    }
    eprintln!("\n*** SKIPPED: Orthanc round trip needs {missing:?} (not installed) ***\n");
    false
}

/// An Orthanc server on loopback with a throw-away configuration and storage.
struct Orthanc {
    dir: tempfile::TempDir,
    http_port: u16,
    dicom_port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Orthanc {
    fn start(node_port: u16) -> Orthanc {
        let dir = tempfile::tempdir().unwrap();
        let http_port = free_port();
        let dicom_port = free_port();
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        // Only what the test relies on is set; the permission settings are spelled out even
        // where they equal the 1.10 defaults so a distro default change cannot break the test.
        let config = serde_json::json!({
            "Name": "prima-node-test",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "HttpPort": http_port,
            "DicomPort": dicom_port,
            "DicomAet": ORTHANC_AE,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "Plugins": [],
            "DicomModalities": { "prima": [NODE_AE, "127.0.0.1", node_port] },
            "DicomCheckCalledAet": false,
            "DicomAlwaysAllowStore": true,
            "DicomCheckModalityHost": false,
            "SaveJobs": false,
        });
        let cfg = dir.path().join("orthanc.json");
        std::fs::write(&cfg, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let log = dir.path().join("orthanc.log");
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(ORTHANC_BIN)
            .arg("--verbose")
            .arg(&cfg)
            .current_dir(dir.path())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("start Orthanc");
        let mut o = Orthanc {
            dir,
            http_port,
            dicom_port,
            log,
            child: Some(child),
        };
        let up = wait_until(Duration::from_secs(30), || {
            o.exited().is_none() && http(&o.url("/system"), "GET", None).0 == 200
        });
        assert!(up, "Orthanc did not start (exit: {:?})", o.exited());
        o
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    fn get_json(&self, path: &str) -> Value {
        let (code, body) = http(&self.url(path), "GET", None);
        assert_eq!(code, 200, "GET {path}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    fn post_json(&self, path: &str, body: Body) -> Value {
        let (code, out) = http(&self.url(path), "POST", Some(body));
        assert_eq!(code, 200, "POST {path}: {}", String::from_utf8_lossy(&out));
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "---- Orthanc log ({}) ----\n{}",
                self.dir.path().display(),
                self.log_text()
            );
        }
    }
}

enum Body<'a> {
    File(&'a Path),
    Text(String),
}

/// One HTTP request with curl; returns (status, body). Status 0 means no answer.
fn http(url: &str, method: &str, body: Option<Body>) -> (u16, Vec<u8>) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "120",
        "-X",
        method,
        "-w",
        "%{http_code}",
    ]);
    match body {
        Some(Body::File(p)) => {
            cmd.arg("--data-binary").arg(format!("@{}", p.display()));
        }
        Some(Body::Text(t)) => {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(t);
        }
        None => {}
    }
    let out = cmd
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .expect("run curl");
    let mut b = out.stdout;
    // -w appends the three-digit status after the body.
    if b.len() < 3 {
        return (0, b);
    }
    let code = std::str::from_utf8(&b[b.len() - 3..])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    b.truncate(b.len() - 3);
    (code, b)
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn element_text(path: &Path, tag: dicom_core::Tag) -> String {
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
        .open_file(path)
        .unwrap();
    obj.element(tag)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(['\0', ' '])
        .to_string()
}

#[test]
fn study_round_trips_through_orthanc() {
    let Some(root) = fixtures::reference_dir() else {
        return;
    };
    if !have_tools() {
        return;
    }
    let t0 = Instant::now();
    let study_dir = root.join("studies/STUDY_A");
    let mut files = common::walk_files(&study_dir);
    files.sort();
    assert!(!files.is_empty(), "no files in {}", study_dir.display());
    let first = &files[0];
    let patient_name = element_text(first, dicom_dictionary_std::tags::PATIENT_NAME);
    let patient_id = element_text(first, dicom_dictionary_std::tags::PATIENT_ID);
    let study_uid = element_text(first, dicom_dictionary_std::tags::STUDY_INSTANCE_UID);
    assert!(
        !patient_name.is_empty(),
        "STUDY_A has no PatientName: the PHI log check would be vacuous"
    );

    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures::convert_fixture_model(&root, &tmp.path().join("model"));
    eprintln!("model converted after {:.1} s", t0.elapsed().as_secs_f64());

    let node_port = free_port();
    let orthanc = Orthanc::start(node_port);
    let node = Node::start(NodeOpts {
        port: node_port,
        dest_port: orthanc.dicom_port,
        dest_ae: ORTHANC_AE.into(),
        quiet_s: 1.5,
        sources: vec![(ORTHANC_AE.into(), Some("127.0.0.1".into()))],
        model_dir: Some(model),
        ..NodeOpts::default()
    });

    // Upload over REST, as a modality or a user import would.
    let mut orthanc_study = String::new();
    for f in &files {
        let r = orthanc.post_json("/instances", Body::File(f));
        assert_eq!(
            str_of(&r["Status"]),
            "Success",
            "upload of {}: {r}",
            f.display()
        );
        let s = str_of(&r["ParentStudy"]).to_string();
        assert!(
            orthanc_study.is_empty() || orthanc_study == s,
            "STUDY_A split across Orthanc studies"
        );
        orthanc_study = s;
    }
    let study = orthanc.get_json(&format!("/studies/{orthanc_study}"));
    assert_eq!(
        str_of(&study["MainDicomTags"]["StudyInstanceUID"]),
        study_uid
    );
    let source_series: Vec<String> = study["Series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| str_of(s).to_string())
        .collect();
    eprintln!(
        "uploaded {} files ({} series) after {:.1} s",
        files.len(),
        source_series.len(),
        t0.elapsed().as_secs_f64()
    );

    // Orthanc as the SCU: C-STORE the whole study to the node (synchronous job).
    let job = serde_json::json!({ "Resources": [orthanc_study], "Synchronous": true });
    let r = orthanc.post_json("/modalities/prima/store", Body::Text(job.to_string()));
    assert_eq!(
        r["FailedInstancesCount"].as_u64(),
        Some(0),
        "C-STORE to node: {r}"
    );
    assert_eq!(
        r["InstancesCount"].as_u64(),
        Some(files.len() as u64),
        "C-STORE to node: {r}"
    );
    eprintln!(
        "Orthanc stored the study to the node after {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // The node's results come back into the same Orthanc study (same PatientID and
    // StudyInstanceUID, since Orthanc's study ID is derived from both).
    let find = |modality: &str| -> Option<(String, Value)> {
        let st = orthanc.get_json(&format!("/studies/{orthanc_study}"));
        st["Series"].as_array()?.iter().find_map(|s| {
            let s = str_of(s);
            let series = orthanc.get_json(&format!("/series/{s}"));
            (str_of(&series["MainDicomTags"]["Modality"]) == modality)
                .then(|| (s.to_string(), series))
        })
    };
    let mut sr = None;
    let mut ko = None;
    let arrived = wait_until(Duration::from_secs(90), || {
        if sr.is_none() {
            sr = find("SR");
        }
        if ko.is_none() {
            ko = find("KO");
        }
        std::thread::sleep(Duration::from_millis(400));
        sr.is_some() && ko.is_some()
    });
    if !arrived {
        let all = orthanc.get_json("/studies?expand");
        panic!(
            "SR/KO did not reach Orthanc study {orthanc_study} (SR: {}, KO: {}); Orthanc studies:\n{all:#}",
            sr.is_some(),
            ko.is_some()
        );
    }
    eprintln!(
        "SR and KO in Orthanc after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let (sr_series, sr_meta) = sr.unwrap();
    let (_, ko_meta) = ko.unwrap();
    assert!(!source_series.contains(&sr_series));

    let one_instance = |series: &Value, what: &str| -> String {
        let inst = series["Instances"].as_array().unwrap();
        assert_eq!(
            inst.len(),
            1,
            "{what} series should hold one instance: {series}"
        );
        str_of(&inst[0]).to_string()
    };
    let sr_id = one_instance(&sr_meta, "SR");
    let ko_id = one_instance(&ko_meta, "KO");

    for (id, class) in [
        (&sr_id, COMPREHENSIVE_3D_SR),
        (&ko_id, KEY_OBJECT_SELECTION),
    ] {
        let tags = orthanc.get_json(&format!("/instances/{id}/simplified-tags"));
        assert_eq!(str_of(&tags["SOPClassUID"]), class, "{tags:#}");
        assert_eq!(str_of(&tags["PatientID"]), patient_id);
        assert_eq!(str_of(&tags["StudyInstanceUID"]), study_uid);
        let content = tags["ContentSequence"].as_array();
        assert!(
            content.is_some_and(|c| !c.is_empty()),
            "no ContentSequence: {tags:#}"
        );
        let title = &tags["ConceptNameCodeSequence"][0];
        assert!(
            !str_of(&title["CodeValue"]).is_empty(),
            "no document title: {tags:#}"
        );
        assert!(
            !str_of(&title["CodeMeaning"]).is_empty(),
            "no document title meaning: {tags:#}"
        );
    }
    // No explanation on the CPU, so no regions: the report without measurements to draw
    // (docs/dicom-outputs.md, "Why two titles").
    let sr_tags = orthanc.get_json(&format!("/instances/{sr_id}/simplified-tags"));
    assert_eq!(
        str_of(&sr_tags["ConceptNameCodeSequence"][0]["CodeValue"]),
        "18748-4"
    );

    // Orthanc hands the SR back as a Part-10 file that parses.
    let (code, bytes) = http(
        &orthanc.url(&format!("/instances/{sr_id}/file")),
        "GET",
        None,
    );
    assert_eq!(code, 200);
    assert!(
        bytes.len() > 132 && &bytes[128..132] == b"DICM",
        "not a Part-10 file"
    );
    let sr_file = tmp.path().join("sr.dcm");
    std::fs::write(&sr_file, &bytes).unwrap();
    assert_eq!(
        element_text(&sr_file, dicom_dictionary_std::tags::SOP_INSTANCE_UID),
        str_of(&sr_tags["SOPInstanceUID"])
    );

    // No PHI in the node's info-level log (it runs with RUST_LOG=info).
    let log = node.log_text();
    let spaced = patient_name.replace('^', " ");
    for needle in [patient_name.as_str(), spaced.trim(), patient_id.as_str()] {
        assert!(
            !log.contains(needle),
            "node log contains patient data {needle:?}"
        );
    }
    assert!(
        log.contains("output delivered"),
        "node log does not record the delivery"
    );

    drop(node);
    let mut orthanc = orthanc;
    orthanc.stop();
    eprintln!("round trip done in {:.1} s", t0.elapsed().as_secs_f64());
}
