//! The fast CI subset of the fuzzing (issue 6 §5): every fuzz target's function over the
//! committed corpus (`fuzz/corpus/<target>`), the crash regressions
//! (`fuzz/regressions/<target>`), and a few thousand seeded mutations of them. A panic,
//! or an input taking unreasonably long, fails the test; the failing input is written
//! next to the target's regressions as `failing-<hash>` so it can be replayed with
//! `scripts/fuzz.sh` or the fuzz binary.
//!
//! `PRIMA_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_corpus write_seeds -- --ignored`
//! regenerates the seed corpus from synthetic studies (no patient data).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prima_node::fuzzing::{self, Mutator};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target, usize); 5] = [
    ("dimse_command", fuzzing::dimse_command, 6000),
    ("pdata_pdu", fuzzing::pdata_pdu, 4000),
    ("instance_header", fuzzing::instance_header, 3000),
    ("imaging_slice", fuzzing::imaging_slice, 2000),
    ("structured_dataset", fuzzing::structured_dataset, 2000),
];

/// The entry of TARGETS named `name` (by name: the indices once ran the wrong targets).
fn target(name: &str) -> (&'static str, Target, usize) {
    *TARGETS
        .iter()
        .find(|t| t.0 == name)
        .expect("a known target")
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in ["corpus", "regressions"] {
        let dir = fuzz_dir().join(sub).join(target);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            if f.is_file() {
                out.push((
                    format!(
                        "{sub}/{target}/{}",
                        f.file_name().unwrap().to_string_lossy()
                    ),
                    std::fs::read(&f).unwrap(),
                ));
            }
        }
    }
    out
}

fn run_one(target: &str, f: Target, name: &str, data: &[u8]) -> Duration {
    let t0 = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(|| f(data)));
    let took = t0.elapsed();
    let slow = took > Duration::from_secs(20);
    if r.is_err() || slow {
        let hash = prima_node::store::hash::sha256_hex(data);
        let dir = std::env::temp_dir()
            .join("prima-fuzz-failures")
            .join(target);
        let _ = std::fs::create_dir_all(&dir);
        let p = dir.join(format!("failing-{}", &hash[..16]));
        let _ = std::fs::write(&p, data);
        panic!(
            "fuzz target {target} {} on {name} ({} bytes, {took:?}); input saved to {}",
            if slow { "too slow" } else { "panicked" },
            data.len(),
            p.display()
        );
    }
    took
}

fn run_target(target: &str, f: Target, mutations: usize) {
    // Scratch files go to the temp dir, one per thread, removed after each input (the
    // targets do that); PRIMA_FUZZ_SCRATCH is not set here because tests share the env.
    let seeds = inputs(target);
    assert!(
        seeds.len() >= 3,
        "fuzz/corpus/{target} should hold the committed seeds (found {})",
        seeds.len()
    );
    let t0 = Instant::now();
    let mut slowest = (Duration::ZERO, String::new());
    for (name, data) in &seeds {
        let t = run_one(target, f, name, data);
        if t > slowest.0 {
            slowest = (t, name.clone());
        }
    }
    // Seeded so a failure reproduces; the seed differs per target.
    let mut m = Mutator::new(0x5EED_0000 ^ target.len() as u64 ^ (mutations as u64) << 20);
    for i in 0..mutations {
        let (name, base) = &seeds[i % seeds.len()];
        let mut data = m.mutate(base);
        // Stack a second round on some inputs: deeper edits reach other branches.
        if i % 3 == 0 {
            data = m.mutate(&data);
        }
        let name = format!("mutation {i} of {name}");
        let t = run_one(target, f, &name, &data);
        if t > slowest.0 {
            slowest = (t, name);
        }
    }
    eprintln!(
        "fuzz_corpus: {target}: {} corpus inputs + {mutations} mutations ok in {:?} (slowest {:?}: {})",
        seeds.len(),
        t0.elapsed(),
        slowest.0,
        slowest.1
    );
}

#[test]
fn dimse_command_corpus_and_mutations() {
    let (t, f, n) = target("dimse_command");
    run_target(t, f, n);
}

#[test]
fn pdata_pdu_corpus_and_mutations() {
    let (t, f, n) = target("pdata_pdu");
    run_target(t, f, n);
}

#[test]
fn structured_dataset_corpus_and_mutations() {
    let (t, f, n) = target("structured_dataset");
    run_target(t, f, n);
}

#[test]
fn instance_header_corpus_and_mutations() {
    let (t, f, n) = target("instance_header");
    run_target(t, f, n);
}

#[test]
fn imaging_slice_corpus_and_mutations() {
    let (t, f, n) = target("imaging_slice");
    run_target(t, f, n);
}

/// Data set bytes (after the meta group) of a Part-10 file, in transfer syntax `ts`.
fn dataset_in(path: &Path, ts: &str) -> Option<Vec<u8>> {
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    let obj = dicom_object::open_file(path).ok()?;
    let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry.get(ts)?;
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, ts).ok()?;
    Some(out)
}

fn raw_dataset(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let obj = dicom_object::open_file(path).unwrap();
    let mut meta = Vec::new();
    obj.meta().write(&mut meta).unwrap();
    bytes[132 + meta.len()..].to_vec()
}

fn ts_selector(ts: &str) -> u8 {
    fuzzing::TRANSFER_SYNTAXES
        .iter()
        .position(|t| *t == ts)
        .expect("known transfer syntax") as u8
}

#[test]
#[ignore = "regenerates fuzz/corpus; run with PRIMA_WRITE_FUZZ_SEEDS=1"]
fn write_seeds() {
    use prima_node::net::dimse;
    use prima_node::synth::{Plane, SynthSeries, SynthStudy};
    if std::env::var("PRIMA_WRITE_FUZZ_SEEDS").is_err() {
        return;
    }
    let corpus = fuzz_dir().join("corpus");
    let put = |target: &str, name: &str, data: &[u8]| {
        let d = corpus.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), data).unwrap();
    };

    put(
        "dimse_command",
        "c-store-rq",
        &dimse::c_store_rq(7, "1.2.840.10008.5.1.4.1.1.4", "1.2.3.4.5.6"),
    );
    put(
        "dimse_command",
        "c-store-rsp-comment",
        &dimse::c_store_rsp(
            7,
            "1.2.840.10008.5.1.4.1.1.4",
            "1.2.3.4.5.6",
            0xA700,
            Some("out of resources"),
        ),
    );
    put(
        "dimse_command",
        "c-echo-rsp",
        &dimse::c_echo_rsp(1, dimse::VERIFICATION),
    );
    put(
        "dimse_command",
        "unrecognized-rsp",
        &dimse::unrecognized_rsp(3, 0x0020, "1.2.840.10008.5.1.4.1.2.2.1"),
    );

    let tmp = tempfile::tempdir().unwrap();
    let mut study = SynthStudy::brain(4242);
    let mut ax = SynthSeries::new(2, "AX T2 FLAIR", Plane::Axial, 8, 8, 2);
    ax.signed = false;
    let mut mf = SynthSeries::new(3, "SAG T1", Plane::Sagittal, 6, 6, 3);
    mf.enhanced_multiframe = true;
    let mut ob = SynthSeries::new(4, "AX T1 +C", Plane::ObliqueAxial(12.0), 6, 8, 2);
    ob.slope = 2.0;
    ob.intercept = -10.0;
    study.series = vec![ax, mf, ob];
    let files = prima_node::synth::write_study(&study, tmp.path()).unwrap();
    let mut n = 0;
    for f in files.iter() {
        n += 1;
        let explicit = raw_dataset(f);
        let mut input = vec![ts_selector("1.2.840.10008.1.2.1")];
        input.extend_from_slice(&explicit);
        for target in ["instance_header", "imaging_slice"] {
            put(target, &format!("synth-{n}-explicit-le"), &input);
        }
        if n <= 2 {
            let mut input = vec![ts_selector("1.2.840.10008.1.2")];
            input.extend(dataset_in(f, "1.2.840.10008.1.2").unwrap());
            for target in ["instance_header", "imaging_slice"] {
                put(target, &format!("synth-{n}-implicit-le"), &input);
            }
        }
    }
    // Encapsulated variants via DCMTK when available (RLE, JPEG lossless).
    for (tool, args, ts) in [
        ("dcmcrle", vec![], "1.2.840.10008.1.2.5"),
        ("dcmcjpeg", vec!["+e1"], "1.2.840.10008.1.2.4.70"),
    ] {
        let out = tmp.path().join(format!("{tool}.dcm"));
        let ok = std::process::Command::new(tool)
            .args(&args)
            .arg(&files[0])
            .arg(&out)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            let mut input = vec![ts_selector(ts)];
            input.extend(raw_dataset(&out));
            for target in ["instance_header", "imaging_slice"] {
                put(target, &format!("synth-1-{tool}"), &input);
            }
        }
    }
}
