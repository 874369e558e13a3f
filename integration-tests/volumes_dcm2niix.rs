//! Which volumes a series holds, checked against dcm2niix (issue 28): each vendor-like case
//! of `synth::vendor` is converted by dcm2niix, every NIfTI volume is turned back into
//! DICOM terms (slice positions, values in DICOM pixel order), and the node's volumes of
//! the same folder must be the same: count, dims, slice order and positions (1e-3 mm),
//! pixel values.
//!
//! Cases the node does not split yet are `#[ignore]`d with the reason; run them with
//! `cargo test --test volumes_dcm2niix -- --include-ignored` to see how they differ.
//! `PRIMA_VENDOR_OUT=<dir>` keeps the generated DICOM and dcm2niix's output there.
#[path = "common/dcm2niix.rs"]
mod dcm2niix;
#[path = "common/nifti.rs"]
mod nifti;

use std::path::{Path, PathBuf};

use dcm2niix::RefVolume;
use prima_node::imaging::series::{load_volume, scan_study, SliceOrder};
use prima_node::synth::vendor::{self, VendorCase};

/// One volume the node makes of a study folder, used or not.
#[derive(Debug, Clone)]
pub struct NodeVolume {
    pub series_uid: String,
    /// (columns, rows, slices)
    pub dims: [usize; 3],
    /// Each slice's ImagePositionPatient, in the volume's slice order.
    pub positions: Vec<[f64; 3]>,
    /// Rescaled values, x fastest, then y (DICOM rows), then slices; `None` when unused.
    pub values: Option<Vec<f64>>,
    /// `Err(reason)` when the node does not use it.
    pub used: Result<(), String>,
}

/// The node's volumes of `dir`: every volume its series were split into, those the model
/// reads (`Ok`) and those it deliberately does not (`Err(reason)`).
pub fn node_volumes(dir: &Path) -> Vec<NodeVolume> {
    let scan = scan_study(dir, SliceOrder::Position).expect("scan");
    let all = scan.series.iter().map(|c| (c, Ok(()))).chain(
        scan.not_used
            .iter()
            .map(|(c, why)| (c, Err(why.to_string()))),
    );
    all.map(|(c, used)| {
        let first = &c.slices[0];
        NodeVolume {
            series_uid: c.series_instance_uid.clone(),
            dims: [first.cols as usize, first.rows as usize, c.slices.len()],
            positions: c
                .slices
                .iter()
                .map(|s| s.ipp.unwrap_or([f64::NAN; 3]))
                .collect(),
            values: load_volume(c).ok().map(|v| v.data),
            used,
        }
    })
    .collect()
}

/// A volume in the node's split (used or deliberately not), as opposed to images the node
/// found are not one volume.
fn is_volume(n: &NodeVolume) -> bool {
    !n.used
        .as_ref()
        .is_err_and(|e| e.starts_with("not a volume"))
}

/// Positions agree to this (mm).
const POSITION_TOLERANCE: f64 = 1e-3;

/// Why `n` is not the volume `r`, or `Ok`.
fn same_volume(n: &NodeVolume, r: &RefVolume) -> Result<(), String> {
    if n.dims != r.dims {
        return Err(format!("dims {:?} vs {:?}", n.dims, r.dims));
    }
    for (k, (a, b)) in n.positions.iter().zip(&r.positions).enumerate() {
        let d = (0..3).map(|i| (a[i] - b[i]).abs()).fold(0.0, f64::max);
        if d.is_nan() || d > POSITION_TOLERANCE {
            return Err(format!("slice {k} at {a:?}, dcm2niix {b:?}"));
        }
    }
    let values = n.values.as_ref().ok_or("no values")?;
    let plane = r.dims[0] * r.dims[1];
    for (k, slice) in r.slices.iter().enumerate() {
        let mine = &values[k * plane..(k + 1) * plane];
        let worst = mine
            .iter()
            .zip(slice)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        if worst.is_nan() || worst > 1e-6 {
            return Err(format!("slice {k}: values differ by up to {worst}"));
        }
    }
    Ok(())
}

/// Every way the node's volumes differ from dcm2niix's; empty when they are the same.
fn differences(node: &[NodeVolume], reference: &[RefVolume]) -> Vec<String> {
    let used: Vec<&NodeVolume> = node.iter().filter(|n| is_volume(n)).collect();
    let mut out = Vec::new();
    if used.len() != reference.len() {
        out.push(format!(
            "count: node {} used volume(s) {:?}, dcm2niix {} {:?}",
            used.len(),
            used.iter().map(|n| n.dims).collect::<Vec<_>>(),
            reference.len(),
            reference.iter().map(|r| r.dims).collect::<Vec<_>>(),
        ));
    }
    let mut taken = vec![false; used.len()];
    for r in reference {
        let found = used
            .iter()
            .enumerate()
            .find(|(i, n)| !taken[*i] && same_volume(n, r).is_ok());
        match found {
            Some((i, _)) => taken[i] = true,
            None => {
                let why: Vec<String> = used
                    .iter()
                    .map(|n| same_volume(n, r).err().unwrap_or("matched already".into()))
                    .collect();
                out.push(format!(
                    "dcm2niix {}[t={}] {:?}: no node volume is it ({})",
                    r.file,
                    r.t,
                    r.dims,
                    why.join("; ")
                ));
            }
        }
    }
    for (i, n) in used.iter().enumerate() {
        if !taken[i] {
            out.push(format!(
                "node volume {:?} of {} is none of dcm2niix's",
                n.dims, n.series_uid
            ));
        }
    }
    out
}

/// How many of `r`'s slices are, position and values, a slice of some node volume used
/// or not (a check of this harness's reading of dcm2niix that needs no grouping).
fn slices_in_node(node: &[NodeVolume], r: &RefVolume) -> usize {
    let plane = r.dims[0] * r.dims[1];
    r.slices
        .iter()
        .zip(&r.positions)
        .filter(|(values, at)| {
            node.iter()
                .filter(|n| n.dims[0] == r.dims[0] && n.dims[1] == r.dims[1])
                .any(|n| {
                    n.positions.iter().enumerate().any(|(j, p)| {
                        (0..3).all(|i| (p[i] - at[i]).abs() <= POSITION_TOLERANCE)
                            && n.values
                                .as_ref()
                                .is_some_and(|v| v[j * plane..(j + 1) * plane] == values[..])
                    })
                })
        })
        .count()
}

/// Where a case is written and converted: a temporary folder, or `PRIMA_VENDOR_OUT`.
struct Workdir {
    _tmp: Option<tempfile::TempDir>,
    root: PathBuf,
}

fn workdir() -> Workdir {
    match std::env::var_os("PRIMA_VENDOR_OUT") {
        Some(d) => Workdir {
            _tmp: None,
            root: PathBuf::from(d),
        },
        None => {
            let t = tempfile::tempdir().unwrap();
            Workdir {
                root: t.path().to_path_buf(),
                _tmp: Some(t),
            }
        }
    }
}

fn case(name: &str) -> VendorCase {
    vendor::cases()
        .into_iter()
        .chain(vendor::hostile_cases())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

/// One case through both sides.
struct Outcome {
    node: Vec<NodeVolume>,
    run: dcm2niix::Run,
    differences: Vec<String>,
}

/// `test` names the folder under `PRIMA_VENDOR_OUT`: tests run in parallel.
fn convert(test: &str, name: &str) -> Outcome {
    let w = workdir();
    let c = case(name);
    let root = w.root.join(test);
    let _ = std::fs::remove_dir_all(&root);
    let dicom = root.join("dicom");
    vendor::write_case(&c, &dicom, 28).unwrap();
    let input = dicom.join(name);
    let run = dcm2niix::run(&input, &root.join("nifti").join(name));
    let node = node_volumes(&input);
    let differences = differences(&node, &run.volumes());
    Outcome {
        node,
        run,
        differences,
    }
}

fn summary(name: &str, o: &Outcome) -> String {
    let mut s = format!("== {name}\n dcm2niix (exit {:?}):\n", o.run.status);
    for f in &o.run.files {
        let [nx, ny, nz, nt] = f.nifti.size();
        s += &format!(
            "  {}: {nx}x{ny}x{nz}x{nt} pixdim {:?} bval {:?}\n",
            f.name,
            &f.nifti.pixdim[1..5],
            f.bval
        );
    }
    for w in o.run.warnings() {
        s += &format!("  | {w}\n");
    }
    for r in o.run.volumes() {
        let found = slices_in_node(&o.node, &r);
        if found != r.dims[2] {
            s += &format!(
                "  {}[t={}]: {found} of {} slices are node slices\n",
                r.file, r.t, r.dims[2]
            );
        }
    }
    s += " node:\n";
    for n in &o.node {
        s += &format!("  {:?} {:?}\n", n.dims, n.used);
    }
    for d in &o.differences {
        s += &format!(" DIFF {d}\n");
    }
    s
}

fn assert_same(name: &str) {
    if !dcm2niix::have_dcm2niix() {
        return;
    }
    let o = convert(name, name);
    let s = summary(name, &o);
    eprintln!("{s}");
    assert!(o.differences.is_empty(), "{s}");
}

#[test]
fn plain_axial() {
    assert_same("plain_axial");
}

#[test]
fn enhanced_plain() {
    assert_same("enhanced_plain");
}

#[test]
fn legacy_converted() {
    assert_same("legacy_converted");
}

#[test]
fn siemens_dwi_trace() {
    assert_same("siemens_dwi_trace");
}

#[test]
fn siemens_dwi_standard_bvalue() {
    assert_same("siemens_dwi_standard_bvalue");
}

#[test]
fn ge_dwi_multib() {
    assert_same("ge_dwi_multib");
}

#[test]
fn ge_dwi_multib_1e9() {
    assert_same("ge_dwi_multib_1e9");
}

#[test]
fn philips_dwi_isotropic() {
    assert_same("philips_dwi_isotropic");
}

#[test]
fn swi_mag_phase() {
    assert_same("swi_mag_phase");
}

#[test]
fn perfusion_4d() {
    assert_same("perfusion_4d");
}

#[test]
fn localizer_3plane() {
    assert_same("localizer_3plane");
}

#[test]
fn siemens_mosaic() {
    assert_same("siemens_mosaic");
}

/// dcm2niix 1.0.20220720 makes the axial and the coronal stack one 8×2 4D NIfTI with the
/// axial geometry, so it is not the reference here: the generator's two stacks are (two
/// volumes of 8 slices, one per orientation, each along its own normal, uniform).
#[test]
fn enhanced_two_stacks() {
    let o = convert("enhanced_two_stacks", "enhanced_two_stacks");
    let used: Vec<&NodeVolume> = o.node.iter().filter(|n| n.used.is_ok()).collect();
    assert_eq!(used.len(), 2, "{}", summary("enhanced_two_stacks", &o));
    for v in used {
        assert_eq!(v.dims, [64, 64, 8]);
        let gaps: Vec<f64> = v
            .positions
            .windows(2)
            .map(|w| {
                (0..3)
                    .map(|i| (w[1][i] - w[0][i]).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .collect();
        assert!(
            gaps.iter().all(|g| (g - gaps[0]).abs() < 1e-6 && *g > 0.0),
            "{gaps:?}"
        );
    }
    assert_ne!(o.node[0].positions[1], o.node[1].positions[1]);
}

#[test]
fn enhanced_time_series() {
    assert_same("enhanced_time_series");
}

#[test]
fn enhanced_two_echoes() {
    assert_same("enhanced_two_echoes");
}

/// dcm2niix gives the 256×256 images equidistant slices where their positions have 10 mm
/// gaps (NIfTI cannot say otherwise; it exits 8, "Interslice distance varies"): the node
/// refuses them as not a volume, with the reason. The 320×320 images are dcm2niix's volume.
#[test]
fn mixed_matrix() {
    if !dcm2niix::have_dcm2niix() {
        return;
    }
    let o = convert("mixed_matrix", "mixed_matrix");
    let s = summary("mixed_matrix", &o);
    let refs = o.run.volumes();
    let big = refs.iter().find(|r| r.dims == [320, 320, 5]).expect(&s);
    let used: Vec<&NodeVolume> = o.node.iter().filter(|n| n.used.is_ok()).collect();
    assert_eq!(used.len(), 1, "{s}");
    assert_eq!(same_volume(used[0], big), Ok(()), "{s}");
    let refused = o.node.iter().find(|n| n.dims == [256, 256, 15]).expect(&s);
    assert!(
        refused
            .used
            .as_ref()
            .is_err_and(|e| e.starts_with("not a volume: slice spacing varies")),
        "{s}"
    );
}

/// Every slice dcm2niix writes is, at the same position and with the same values, one
/// of the node's slices: the harness reads NIfTI (row flip, RAS→LPS, 4D layout, scaling)
/// right even where the grouping differs. Mosaics (the node has no tiles), the mixed
/// matrix and the two stacks (dcm2niix's geometry is not the slices') are left out, and
/// SWI: today's node casts the phase slices (slope 2, intercept -4096) to the unsigned
/// type of the magnitude slices it stacks them with, so negative phase values clamp.
#[test]
fn every_dcm2niix_slice_is_a_node_slice() {
    if !dcm2niix::have_dcm2niix() {
        return;
    }
    for name in [
        "plain_axial",
        "siemens_dwi_trace",
        "siemens_dwi_standard_bvalue",
        "ge_dwi_multib",
        "ge_dwi_multib_1e9",
        "philips_dwi_isotropic",
        "perfusion_4d",
        "localizer_3plane",
        "enhanced_plain",
        "enhanced_time_series",
        "enhanced_two_echoes",
        "legacy_converted",
    ] {
        let o = convert("slices", name);
        let volumes = o.run.volumes();
        assert!(!volumes.is_empty(), "{}", summary(name, &o));
        for r in &volumes {
            let found = slices_in_node(&o.node, r);
            assert_eq!(found, r.dims[2], "{}", summary(name, &o));
        }
    }
}

/// dciodvfy's errors about a generated file that are not our generator's to fix.
const DCIODVFY_KNOWN: &[&str] = &[];

/// Each realistic case's files are valid DICOM as dciodvfy (dicom3tools) checks it.
#[test]
fn generated_files_pass_dciodvfy() {
    if std::process::Command::new("dciodvfy").output().is_err() {
        eprintln!("SKIPPED: dciodvfy not installed");
        return;
    }
    let w = workdir();
    let mut errors = Vec::new();
    for c in vendor::cases() {
        let files = vendor::write_case(&c, &w.root.join("dciodvfy"), 28).unwrap();
        let mut check = vec![files[0].clone(), files[files.len() - 1].clone()];
        check.dedup();
        for f in check {
            let out = std::process::Command::new("dciodvfy")
                .arg(&f)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout);
            for line in text.lines().filter(|l| l.starts_with("Error")) {
                if !DCIODVFY_KNOWN.iter().any(|k| line.contains(k)) {
                    errors.push(format!("{}: {line}", c.name));
                }
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// Every realistic case has a test above (a new generator without one is caught here).
#[test]
fn every_case_is_compared() {
    let source = include_str!("volumes_dcm2niix.rs");
    for c in vendor::cases() {
        assert!(
            source.contains(&format!("assert_same(\"{}\")", c.name))
                || source.contains(&format!("convert(\"{0}\", \"{0}\")", c.name)),
            "{} has no comparison test",
            c.name
        );
    }
}

/// The reason each hostile case's volume is not used; `None` where the node reads it as
/// dcm2niix does (16 tiles that fit a 216² mosaic). dcm2niix crashes on three of the
/// corrupt CSA headers and guesses tiles for the others; the node refuses them all.
const HOSTILE_REASONS: &[(&str, Option<&str>)] = &[
    (
        "mosaic_images_0",
        Some("NumberOfImagesInMosaic 0 does not tile"),
    ),
    (
        "mosaic_images_1e6",
        Some("NumberOfImagesInMosaic 1000000 does not tile"),
    ),
    ("mosaic_images_too_many_tiles", None),
    ("mosaic_csa_truncated", Some("CSA header ends early")),
    (
        "mosaic_csa_tag_count_huge",
        Some("CSA header claims 1000000 tags"),
    ),
    ("mosaic_csa_item_past_end", Some("CSA header ends early")),
    ("mosaic_csa_not_sv10", Some("Siemens CSA header unreadable")),
    ("siemens_dwi_b_nan", Some("invalid diffusion b-value NaN")),
    (
        "siemens_dwi_b_negative",
        Some("invalid diffusion b-value -1000"),
    ),
    ("siemens_dwi_b_huge", Some("invalid diffusion b-value 1")),
    ("ge_dwi_b_negative", Some("invalid diffusion b-value -")),
    ("ge_dwi_b_huge", Some("invalid diffusion b-value 999999999")),
    ("philips_dwi_b_nan", Some("invalid diffusion b-value NaN")),
    ("philips_dwi_b_huge", Some("invalid diffusion b-value 1")),
    (
        "enhanced_dimension_absent_tag",
        Some("dimension index points at (0020,9128), absent"),
    ),
    (
        "enhanced_dimension_value_count",
        Some("DimensionIndexValues has 1 values for 3 dimensions"),
    ),
];

/// The node reads every hostile case without panicking; a volume it does not use says why.
#[test]
fn hostile_cases_do_not_crash_the_node() {
    let w = workdir();
    let cases = vendor::hostile_cases();
    assert_eq!(cases.len(), HOSTILE_REASONS.len());
    for c in &cases {
        let dir = w.root.join("hostile");
        vendor::write_case(c, &dir, 28).unwrap();
        let vols = node_volumes(&dir.join(c.name));
        eprintln!(
            "{}: {:?}",
            c.name,
            vols.iter().map(|v| (v.dims, &v.used)).collect::<Vec<_>>()
        );
        let expected = HOSTILE_REASONS
            .iter()
            .find(|(n, _)| *n == c.name)
            .unwrap_or_else(|| panic!("{} has no entry in HOSTILE_REASONS", c.name))
            .1;
        for v in &vols {
            if let Err(reason) = &v.used {
                assert!(!reason.is_empty(), "{}: a skip without a reason", c.name);
            }
        }
        // The hostile volume is refused with its reason (the clean volumes beside it, such
        // as a b=0 volume, are used).
        if let Some(want) = expected {
            assert!(
                vols.iter()
                    .any(|v| v.used.as_ref().err().is_some_and(|e| e.contains(want))),
                "{}: expected a volume refused with {want:?}",
                c.name
            );
        }
    }
}

/// What dcm2niix makes of every case, realistic and hostile (for DCM2NIIX-NOTES.md):
/// `cargo test --test volumes_dcm2niix -- --ignored --nocapture notes`.
#[test]
#[ignore = "prints a report; compares nothing"]
fn notes() {
    if !dcm2niix::have_dcm2niix() {
        return;
    }
    for c in vendor::cases().iter().chain(vendor::hostile_cases().iter()) {
        let o = convert("notes", c.name);
        eprintln!("{}", summary(c.name, &o));
    }
}
