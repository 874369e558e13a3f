//! dcm2niix as an outside reference for which volumes a folder of DICOM holds: run it,
//! then read back every NIfTI it wrote with its JSON sidecar and .bval/.bvec, as one
//! [`RefVolume`] per 3D volume (a 4D NIfTI is t volumes).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use super::nifti::Nifti;

/// Whether dcm2niix is installed; a test without it prints SKIPPED (fails under CI).
pub fn have_dcm2niix() -> bool {
    let ok = Command::new("dcm2niix").arg("--version").output().is_ok();
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("dcm2niix not installed");
        }
        eprintln!("SKIPPED: dcm2niix not installed");
    }
    ok
}

/// The options: BIDS sidecar without anonymising (SeriesInstanceUID stays), no gzip, the
/// default merge (-m 2, auto), localizers and derived images kept (-i n), no crop (-x n),
/// names `<series number>_<protocol>` plus dcm2niix's own suffixes (_e2, _ph, _i00001,
/// …) that keep every volume apart.
pub const ARGS: &[&str] = &[
    "-b", "y", "-ba", "n", "-z", "n", "-i", "n", "-x", "n", "-m", "2", "-f", "%s_%p",
];

/// What one dcm2niix run printed and wrote.
#[derive(Debug)]
pub struct Run {
    pub status: Option<i32>,
    /// stdout and stderr together.
    pub log: String,
    pub files: Vec<NiftiFile>,
}

impl Run {
    /// The WARNING/ERROR lines it printed.
    pub fn warnings(&self) -> Vec<&str> {
        self.log
            .lines()
            .filter(|l| l.contains("Warning") || l.contains("Error") || l.contains("WARNING"))
            .collect()
    }

    /// Every 3D volume of every file, files in name order.
    pub fn volumes(&self) -> Vec<RefVolume> {
        let mut out = Vec::new();
        for f in &self.files {
            let [nx, ny, nz, nt] = f.nifti.size();
            for t in 0..nt {
                out.push(RefVolume {
                    file: f.name.clone(),
                    t,
                    dims: [nx, ny, nz],
                    positions: (0..nz).map(|k| f.nifti.dicom_ipp(k)).collect(),
                    slices: (0..nz).map(|k| f.nifti.dicom_slice(k, t)).collect(),
                    bval: f.bval.as_ref().and_then(|b| b.get(t).copied()),
                });
            }
        }
        out
    }
}

/// One NIfTI dcm2niix wrote, with what came beside it.
#[derive(Debug)]
pub struct NiftiFile {
    /// File name without `.nii`.
    pub name: String,
    pub nifti: Nifti,
    pub json: Option<serde_json::Value>,
    pub bval: Option<Vec<f64>>,
    /// Three rows (x, y, z), one value per volume.
    pub bvec: Option<Vec<Vec<f64>>>,
}

/// One 3D volume of dcm2niix's output, in DICOM terms.
#[derive(Debug, Clone)]
pub struct RefVolume {
    pub file: String,
    /// Index along the 4th dimension.
    pub t: usize,
    /// (columns, rows, slices)
    pub dims: [usize; 3],
    /// Each slice's ImagePositionPatient (LPS), in the file's slice order.
    pub positions: Vec<[f64; 3]>,
    /// Each slice's values in DICOM pixel order.
    pub slices: Vec<Vec<f64>>,
    pub bval: Option<f64>,
}

fn numbers(text: &str) -> Vec<f64> {
    text.split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// Run dcm2niix on `input`, writing into `out` (created), and read what it wrote.
pub fn run(input: &Path, out: &Path) -> Run {
    std::fs::create_dir_all(out).unwrap();
    let o = Command::new("dcm2niix")
        .args(ARGS)
        .arg("-o")
        .arg(out)
        .arg(input)
        .output()
        .expect("dcm2niix runs");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let mut names: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "nii"))
        .collect();
    names.sort();
    let files = names
        .iter()
        .map(|p| {
            let stem = p.with_extension("");
            let side = |ext: &str| std::fs::read_to_string(stem.with_extension(ext)).ok();
            NiftiFile {
                name: stem.file_name().unwrap().to_string_lossy().into_owned(),
                nifti: Nifti::read(p).unwrap_or_else(|e| panic!("{e}")),
                json: side("json").and_then(|t| serde_json::from_str(&t).ok()),
                bval: side("bval").map(|t| numbers(&t)),
                bvec: side("bvec").map(|t| t.lines().map(numbers).collect()),
            }
        })
        .collect();
    Run {
        status: o.status.code(),
        log,
        files,
    }
}
