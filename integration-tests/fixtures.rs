//! Locating the reference fixtures and reading their .npy files (shared by test crates).
#![allow(dead_code)]
use std::path::{Path, PathBuf};

/// `PRIMA_REFERENCE_DIR`, default `../shared/fixtures/prima-reference`. Missing fixtures
/// fail under CI and are reported loudly elsewhere.
pub fn reference_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("PRIMA_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/prima-reference")
        });
    if dir.join("README.md").exists() {
        return Some(dir);
    }
    if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
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
