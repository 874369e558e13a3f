//! Locating the reference fixtures and reading their .json/.npy files. Integration test
//! crates include it with `mod fixtures;`, the library's unit tests through a `#[path]`
//! module in `src/lib.rs`.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

/// The reference fixtures: `PRIMA_REFERENCE_DIR`, default `../shared/fixtures/prima-reference`
/// next to the crate. `None` (after a loud message) when they are absent, so a checkout
/// without them still passes; with `CI=true` absence is a failure. Every test, unit or
/// integration, finds the fixtures through this one function.
pub fn reference_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("PRIMA_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/prima-reference")
        });
    // Both marks: a directory holding only part of the fixtures counts as absent.
    if dir.join("README.md").is_file() && dir.join("studies/STUDY_A").is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "reference fixtures not found at {} (CI=true)",
            dir.display()
        );
    }
    eprintln!(
        "\n*** SKIPPED: reference fixtures not found at {} ***\n",
        dir.display()
    );
    None
}

pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn npy_shape(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).unwrap();
    npyz::NpyFile::new(&bytes[..]).unwrap().shape().to_vec()
}

pub fn npy<T: npyz::Deserialize>(path: &Path) -> Vec<T> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    npyz::NpyFile::new(&bytes[..])
        .unwrap()
        .into_vec::<T>()
        .unwrap()
}

/// Converts the fixture checkpoint with `scripts/convert-checkpoint` into `out`.
pub fn convert_fixture_model(root: &Path, out: &Path) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let m = root.join("models");
    let status = std::process::Command::new(repo.join(".venv/bin/python"))
        .arg(repo.join("scripts/convert-checkpoint"))
        .arg("-q")
        .arg("--prima")
        .arg(m.join("prima/primafullmodel_fixture.pt"))
        .arg("--tokenizer")
        .arg(m.join("tokenizer/vqvae_reduced.pth"))
        .arg("--tokenizer-config")
        .arg(m.join("tokenizer/tokenizer_config.json"))
        .arg("--out")
        .arg(out)
        .status()
        .expect("run scripts/convert-checkpoint");
    assert!(status.success(), "convert-checkpoint failed: {status}");
    out.to_path_buf()
}

/// (name → value) of the diagnosis, referral and priority sections, and clip_emb.
pub fn predictions(path: &Path) -> (Vec<(String, f64)>, Vec<f64>) {
    let v = json(path);
    let mut out = Vec::new();
    for sec in ["diagnosis", "referral", "priority"] {
        for (k, x) in v[sec].as_object().unwrap() {
            out.push((format!("{sec}/{k}"), x[0].as_f64().unwrap()));
        }
    }
    let emb = v["clip_emb"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    (out, emb)
}

/// Largest |a−b| / max(|b|, floor) over the named values (names and order must match),
/// and the relative L2 error of the embeddings.
pub fn compare_predictions(a: &Path, b: &Path, floor: f64) -> (f64, f64) {
    let (pa, ea) = predictions(a);
    let (pb, eb) = predictions(b);
    let names_a: Vec<&String> = pa.iter().map(|(k, _)| k).collect();
    let names_b: Vec<&String> = pb.iter().map(|(k, _)| k).collect();
    assert_eq!(names_a, names_b, "prediction names/order differ");
    let rel = pa
        .iter()
        .zip(&pb)
        .map(|((_, x), (_, y))| (x - y).abs() / y.abs().max(floor))
        .fold(0.0, f64::max);
    assert_eq!(ea.len(), eb.len());
    let num: f64 = ea
        .iter()
        .zip(&eb)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = eb.iter().map(|y| y * y).sum::<f64>().sqrt();
    (rel, num / den)
}
