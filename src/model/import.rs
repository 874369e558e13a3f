//! `prima-node model import`: a model directory from the upstream checkpoints, on a node
//! server without a Python environment.
//!
//! The conversion is the shipped converter (`scripts/convert-checkpoint`: a restricted
//! unpickler that executes nothing from the file), run by the system's `python3`; it needs
//! only numpy (Debian: python3-numpy). Reading pickles in Rust as well would give two
//! readers of one format to keep in step; the converter is the one the tests check against
//! upstream.
//!
//! The converter writes into a staging directory next to `--out`; the node's loader then
//! reads it exactly as the node will (manifest, then each weights file against its
//! recorded SHA-256, then every tensor against the architecture), and only a model that
//! loads is renamed to `--out`. A refused or failing import leaves `--out` as it was.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::prima::{ModelOptions, PrimaModel};
use super::{Manifest, ModelError};

/// Where the package installs the converter (packaging/deb/NOTES.md).
pub const PACKAGED_CONVERTER: &str = "/usr/lib/prima-node/convert/convert-checkpoint";
/// Overrides where the converter is looked for.
pub const CONVERTER_ENV: &str = "PRIMA_NODE_CONVERTER";
/// Overrides the Python interpreter (default `python3` on PATH).
pub const PYTHON_ENV: &str = "PRIMA_NODE_PYTHON";

/// Errors of `model import`.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the checkpoint converter was not found (looked at {}); set {CONVERTER_ENV}", .tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NoConverter { tried: Vec<PathBuf> },
    #[error("cannot run {python:?}: {source} (install python3; Debian: apt-get install python3 python3-numpy)")]
    NoPython {
        python: OsString,
        #[source]
        source: std::io::Error,
    },
    #[error("{python:?} has no numpy, which the converter needs (Debian: apt-get install python3-numpy)")]
    NoNumpy { python: OsString },
    #[error(
        "{out} already holds files: import into a new directory (then point [model] dir at it)"
    )]
    OutNotEmpty { out: PathBuf },
    #[error("the converter refused or failed ({status}): {message}")]
    Converter { status: String, message: String },
    #[error("the converted model does not load: {0}")]
    Load(#[source] ModelError),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
    move |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The three upstream files.
#[derive(Debug, Clone)]
pub struct ImportSources {
    pub prima: PathBuf,
    pub tokenizer: PathBuf,
    pub tokenizer_config: PathBuf,
}

/// The converter to run: the environment's choice if set (it must exist: a typo should not
/// silently fall back to another converter), else the first candidate that exists.
pub fn choose_converter(
    from_env: Option<PathBuf>,
    candidates: &[PathBuf],
    exists: impl Fn(&Path) -> bool,
) -> Result<PathBuf, ImportError> {
    if let Some(p) = from_env {
        return if exists(&p) {
            Ok(p)
        } else {
            Err(ImportError::NoConverter { tried: vec![p] })
        };
    }
    candidates
        .iter()
        .find(|p| exists(p))
        .cloned()
        .ok_or_else(|| ImportError::NoConverter {
            tried: candidates.to_vec(),
        })
}

/// Where this binary looks for the converter: the package's copy, then the checkout it was
/// built from (a developer's `cargo run`).
pub fn converter_candidates() -> Vec<PathBuf> {
    vec![
        PathBuf::from(PACKAGED_CONVERTER),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/convert-checkpoint"),
    ]
}

/// The staging directory for `out`: beside it (same file system, so the final rename is
/// atomic), hidden, and unique to this process.
pub fn staging_dir(out: &Path, pid: u32) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    out.with_file_name(format!(".{name}.import-{pid}"))
}

/// The converter's message: its last non-empty stderr line (it prints one line on failure;
/// a Python traceback ends with the exception).
pub fn converter_message(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(no message)")
        .to_string()
}

/// Converts, loads and installs the model into `out`; returns its manifest. The
/// interpreter and converter as the environment names them (or the defaults).
pub fn import_model(src: &ImportSources, out: &Path) -> Result<Manifest, ImportError> {
    let python = std::env::var_os(PYTHON_ENV).unwrap_or_else(|| "python3".into());
    let converter = choose_converter(
        std::env::var_os(CONVERTER_ENV).map(PathBuf::from),
        &converter_candidates(),
        Path::exists,
    )?;
    check_python(&python)?;
    import_with(&python, &converter, src, out)
}

/// [`import_model`] with this interpreter and converter (numpy not checked).
pub fn import_with(
    python: &OsString,
    converter: &Path,
    src: &ImportSources,
    out: &Path,
) -> Result<Manifest, ImportError> {
    if std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
        return Err(ImportError::OutNotEmpty {
            out: out.to_path_buf(),
        });
    }
    let staging = staging_dir(out, std::process::id());
    let result = convert_and_load(python, converter, src, &staging);
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    // An empty --out (made by the administrator, perhaps with its owner set) is replaced.
    if out.is_dir() {
        std::fs::remove_dir(out).map_err(io(out))?;
    }
    std::fs::rename(&staging, out).map_err(io(out))?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        // The rename must survive a crash, as the converter's own writes do.
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io(parent))?;
    }
    Ok(manifest)
}

fn check_python(python: &OsString) -> Result<(), ImportError> {
    let st = Command::new(python)
        .args(["-c", "import numpy"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|source| ImportError::NoPython {
            python: python.clone(),
            source,
        })?;
    if !st.success() {
        return Err(ImportError::NoNumpy {
            python: python.clone(),
        });
    }
    Ok(())
}

fn convert_and_load(
    python: &OsString,
    converter: &Path,
    src: &ImportSources,
    staging: &Path,
) -> Result<Manifest, ImportError> {
    // The converter is a Python file behind a small sh launcher: started through the
    // interpreter directly, it runs under the python chosen here, not a venv's.
    let out = Command::new(python)
        .arg(converter)
        .arg("-q")
        .arg("--prima")
        .arg(&src.prima)
        .arg("--tokenizer")
        .arg(&src.tokenizer)
        .arg("--tokenizer-config")
        .arg(&src.tokenizer_config)
        .arg("--out")
        .arg(staging)
        .output()
        .map_err(|source| ImportError::NoPython {
            python: python.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(ImportError::Converter {
            status: out.status.to_string(),
            message: converter_message(&String::from_utf8_lossy(&out.stderr)),
        });
    }
    let model = PrimaModel::load(staging, &ModelOptions::default()).map_err(ImportError::Load)?;
    Ok(model.manifest().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_wins_and_must_exist() {
        let cands = vec![PathBuf::from("/a"), PathBuf::from("/b")];
        let all = |_: &Path| true;
        assert_eq!(
            choose_converter(Some("/env".into()), &cands, all).unwrap(),
            PathBuf::from("/env")
        );
        let only_b = |p: &Path| p == Path::new("/b");
        match choose_converter(Some("/env".into()), &cands, only_b) {
            Err(ImportError::NoConverter { tried }) => {
                assert_eq!(tried, vec![PathBuf::from("/env")])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_first_existing_candidate_is_used() {
        let cands = vec![PathBuf::from("/a"), PathBuf::from("/b")];
        let only_b = |p: &Path| p == Path::new("/b");
        assert_eq!(
            choose_converter(None, &cands, only_b).unwrap(),
            PathBuf::from("/b")
        );
        let none = |_: &Path| false;
        let e = choose_converter(None, &cands, none).unwrap_err();
        assert!(e.to_string().contains("/a, /b"), "{e}");
    }

    #[test]
    fn the_packaged_converter_comes_first() {
        assert_eq!(converter_candidates()[0], Path::new(PACKAGED_CONVERTER));
    }

    #[test]
    fn staging_sits_beside_out() {
        assert_eq!(
            staging_dir(Path::new("/var/lib/prima-node/model"), 42),
            PathBuf::from("/var/lib/prima-node/.model.import-42")
        );
        assert_eq!(
            staging_dir(Path::new("model"), 7),
            PathBuf::from(".model.import-7")
        );
    }

    /// A converter that succeeds but writes a model the loader refuses (here: a manifest
    /// that is not one): `--out` must not appear, nor the staging directory stay.
    #[test]
    fn a_model_that_does_not_load_is_not_installed() {
        let tmp = tempfile::tempdir().unwrap();
        let conv = tmp.path().join("convert.sh");
        std::fs::write(
            &conv,
            "while [ $# -gt 1 ]; do [ \"$1\" = --out ] && out=$2; shift; done\n\
             mkdir -p \"$out\" && echo '{}' > \"$out/manifest.json\"\n",
        )
        .unwrap();
        let out = tmp.path().join("model");
        let src = ImportSources {
            prima: "p.pt".into(),
            tokenizer: "t.pth".into(),
            tokenizer_config: "t.json".into(),
        };
        let e = import_with(&"sh".into(), &conv, &src, &out).unwrap_err();
        assert!(matches!(e, ImportError::Load(_)), "{e}");
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("convert.sh")]);

        // A directory with files is refused before anything runs.
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("manifest.json"), "{}").unwrap();
        let e = import_with(&"sh".into(), &conv, &src, &out).unwrap_err();
        assert!(matches!(e, ImportError::OutNotEmpty { .. }), "{e}");
    }

    #[test]
    fn the_converters_last_line_is_the_message() {
        assert_eq!(
            converter_message("Traceback\n  File x\nValueError: bad\n\n"),
            "ValueError: bad"
        );
        assert_eq!(converter_message(""), "(no message)");
    }
}
