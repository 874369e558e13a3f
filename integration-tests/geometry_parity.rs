//! Parity of the geometry steps with the upstream reference, each step on its own: ITK's
//! index/physical-point matrices (`imaging::itk`), and the in-plane resample plus
//! DICOMOrient('LPS') (`imaging::resample`, `imaging::orient`) on series stacked by a
//! minimal reader of this file, in the fixture's own file order, so a change in the
//! production series reader cannot hide (or cause) a geometry mismatch. `imaging_parity`
//! checks the whole path through the production reader.
mod fixtures;

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::{open_file, DefaultDicomObject};
use dicom_pixeldata::PixelDecoder;
use prima_node::imaging::itk::{
    direction_from_iop, index_to_physical, index_to_point, physical_to_index,
    point_to_continuous_index, Mat3,
};
use prima_node::imaging::orient::orient_lps;
use prima_node::imaging::resample::resample_inplane_256;
use prima_node::imaging::{Array3, Geometry, PixelType, Volume};
use serde_json::Value;

// ---------------------------------------------------------------- a minimal DICOM stacker

fn strings(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<Vec<String>> {
    let e = obj.element_opt(tag).ok()??;
    let s = e.to_str().ok()?;
    let parts: Vec<String> = s
        .split('\\')
        .map(|p| p.trim_matches(|c: char| c == ' ' || c == '\0').to_string())
        .collect();
    if parts.iter().all(|p| p.is_empty()) {
        None
    } else {
        Some(parts)
    }
}

fn floats(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<Vec<f64>> {
    strings(obj, tag).map(|v| v.iter().map(|s| s.parse::<f64>().unwrap()).collect())
}

fn uint(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> u16 {
    obj.element(tag).unwrap().to_int::<u16>().unwrap()
}

/// Stack `files` (already in upstream's slice order) as GDCM/ITK would (§1.6, §1.7).
fn load_series(folder: &Path, files: &[String]) -> Volume {
    let mut data = Vec::new();
    let mut first: Option<(DefaultDicomObject, PixelType)> = None;
    let mut last_ipp = [0.0; 3];
    let (mut cols, mut rows) = (0usize, 0usize);
    for name in files {
        let obj = open_file(folder.join(name)).unwrap();
        let slope = floats(&obj, tags::RESCALE_SLOPE).map_or(1.0, |v| v[0]);
        let intercept = floats(&obj, tags::RESCALE_INTERCEPT).map_or(0.0, |v| v[0]);
        let bits_alloc = uint(&obj, tags::BITS_ALLOCATED);
        let bits_stored = uint(&obj, tags::BITS_STORED);
        let signed = uint(&obj, tags::PIXEL_REPRESENTATION) == 1;
        let decoded = obj.decode_pixel_data().unwrap();
        cols = decoded.columns() as usize;
        rows = decoded.rows() as usize;
        let raw = decoded.data();
        let n = cols * rows;
        match (bits_alloc, signed) {
            (16, false) => data.extend(
                raw.chunks_exact(2)
                    .take(n)
                    .map(|b| slope * u16::from_le_bytes([b[0], b[1]]) as f64 + intercept),
            ),
            (16, true) => data.extend(
                raw.chunks_exact(2)
                    .take(n)
                    .map(|b| slope * i16::from_le_bytes([b[0], b[1]]) as f64 + intercept),
            ),
            (8, false) => data.extend(raw.iter().take(n).map(|&b| slope * b as f64 + intercept)),
            other => panic!("unsupported pixel layout {other:?}"),
        }
        last_ipp = floats(&obj, tags::IMAGE_POSITION_PATIENT)
            .unwrap()
            .try_into()
            .unwrap();
        if first.is_none() {
            let pt = PixelType::from_rescale(slope, intercept, bits_stored, signed);
            first = Some((obj, pt));
        }
    }
    let (obj, pixel_type) = first.unwrap();
    let origin: [f64; 3] = floats(&obj, tags::IMAGE_POSITION_PATIENT)
        .unwrap()
        .try_into()
        .unwrap();
    let iop: [f64; 6] = floats(&obj, tags::IMAGE_ORIENTATION_PATIENT)
        .unwrap()
        .try_into()
        .unwrap();
    let ps = floats(&obj, tags::PIXEL_SPACING).unwrap();
    let n = files.len();
    let sz = if n > 1 {
        let d = [
            last_ipp[0] - origin[0],
            last_ipp[1] - origin[1],
            last_ipp[2] - origin[2],
        ];
        let norm = (((0.0 + d[0] * d[0]) + d[1] * d[1]) + d[2] * d[2]).sqrt();
        if norm < 1e-12 {
            1.0
        } else {
            norm / (n - 1) as f64
        }
    } else {
        floats(&obj, tags::SPACING_BETWEEN_SLICES).map_or(1.0, |v| v[0])
    };
    Volume {
        size: [cols, rows, n],
        data,
        pixel_type,
        geometry: Geometry {
            origin,
            direction: direction_from_iop(&iop),
            spacing: [ps[1], ps[0], sz],
        },
    }
}

// ---------------------------------------------------------------- ITK index vectors

fn f(v: &Value) -> f64 {
    v.as_f64().expect("number")
}

fn mat_rowmajor(v: &Value) -> Mat3 {
    let a = v.as_array().unwrap();
    assert_eq!(a.len(), 9);
    let mut m = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] = f(&a[3 * i + j]);
        }
    }
    m
}

fn vec3(v: &Value) -> [f64; 3] {
    let a = v.as_array().unwrap();
    [f(&a[0]), f(&a[1]), f(&a[2])]
}

fn bits_eq(a: &Mat3, b: &Mat3) -> bool {
    (0..3).all(|i| (0..3).all(|j| a[i][j] == b[i][j]))
}

#[test]
fn itk_index_vectors_bit_exact() {
    let Some(dir) = fixtures::reference_dir() else {
        return;
    };
    let root = fixtures::json(&dir.join("unit/itk_index_vectors.json"));
    let mut n_checked = 0;
    for s in root["series"].as_array().unwrap() {
        let name = format!(
            "{}/{}",
            s["study"].as_str().unwrap(),
            s["folder"].as_str().unwrap()
        );
        let iop_s: Vec<f64> = s["ImageOrientationPatient_strings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().trim().parse::<f64>().unwrap())
            .collect();
        let iop: [f64; 6] = iop_s.try_into().unwrap();
        let d = direction_from_iop(&iop);
        let d_itk = mat_rowmajor(&s["itk_direction_rowmajor"]);
        assert!(bits_eq(&d, &d_itk), "{name}: direction {d:?} != {d_itk:?}");
        let g = Geometry {
            origin: vec3(&s["itk_origin_xyz"]),
            direction: d,
            spacing: vec3(&s["itk_spacing_xyz"]),
        };
        let size = s["itk_size_xyz"].as_array().unwrap();
        let (w, h) = (size[0].as_f64().unwrap(), size[1].as_f64().unwrap());
        let so = [
            (w * g.spacing[0]) / 256.0,
            (h * g.spacing[1]) / 256.0,
            g.spacing[2],
        ];
        assert_eq!(so, vec3(&s["output_spacing_xyz"]), "{name}: output spacing");
        let p = physical_to_index(&g);
        let p_itk = mat_rowmajor(&s["itk_physical_point_to_index_rowmajor"]);
        assert!(bits_eq(&p, &p_itk), "{name}: P {p:?} != {p_itk:?}");
        let out = Geometry { spacing: so, ..g };
        let mo = index_to_physical(&out);
        for sl in s["scanlines"].as_array().unwrap() {
            let j = sl["j"].as_f64().unwrap();
            let k = sl["k"].as_f64().unwrap();
            let start = point_to_continuous_index(
                &g.origin,
                &p,
                &index_to_point(&g.origin, &mo, &[0.0, j, k]),
            );
            let end = point_to_continuous_index(
                &g.origin,
                &p,
                &index_to_point(&g.origin, &mo, &[256.0, j, k]),
            );
            assert_eq!(
                start,
                vec3(&sl["start_cindex_xyz"]),
                "{name}: start j={j} k={k}"
            );
            assert_eq!(
                end,
                vec3(&sl["end_cindex_xyz_at_i256"]),
                "{name}: end j={j} k={k}"
            );
        }
        n_checked += 1;
    }
    assert_eq!(n_checked, 8);
    let mut mismatches = Vec::new();
    let randoms = root["random_geometries"].as_array().unwrap();
    for (i, r) in randoms.iter().enumerate() {
        let g = Geometry {
            origin: [0.0; 3],
            direction: mat_rowmajor(&r["direction_rowmajor"]),
            spacing: vec3(&r["spacing_xyz"]),
        };
        let p = physical_to_index(&g);
        let p_itk = mat_rowmajor(&r["itk_physical_point_to_index_rowmajor"]);
        if !bits_eq(&p, &p_itk) {
            mismatches.push((i, p, p_itk));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} random geometries differ, first: {:?}",
        mismatches.len(),
        randoms.len(),
        mismatches.first()
    );
    assert_eq!(randoms.len(), 64);
}

// ---------------------------------------------------------------- resample + orient

fn series_record<'a>(rec: &'a Value, folder: &str) -> &'a Value {
    rec["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["folder"] == folder)
        .unwrap()
}

/// The fixture's run record of `study` and series `folder` loaded in its file order.
fn fixture_series(dir: &Path, study: &str, folder: &str) -> (Value, Volume) {
    let rec = fixtures::json(&dir.join(format!("expected/{study}/run_record.json")));
    let files: Vec<String> = series_record(&rec, folder)["files_used_in_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    let v = load_series(&dir.join(format!("studies/{study}/{folder}")), &files);
    (rec, v)
}

fn check_oriented(study: &str, folder: &str) {
    let Some(dir) = fixtures::reference_dir() else {
        return;
    };
    let (rec, v) = fixture_series(&dir, study, folder);
    let s = series_record(&rec, folder);
    let size: Vec<usize> = s["original_size_xyz"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(v.size.to_vec(), size, "{folder}: size");
    assert_eq!(
        v.geometry.spacing,
        vec3(&s["original_spacing_xyz"]),
        "{folder}: spacing"
    );
    assert_eq!(
        v.geometry.origin,
        vec3(&s["original_origin_xyz"]),
        "{folder}: origin"
    );
    let d: Vec<f64> = v.geometry.direction.iter().flatten().copied().collect();
    let d_ref: Vec<f64> = s["original_direction_rowmajor"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(d, d_ref, "{folder}: direction");
    assert_eq!(
        v.pixel_type.sitk_name(),
        s["pixel_type"].as_str().unwrap(),
        "{folder}: type"
    );

    let t0 = std::time::Instant::now();
    let r = resample_inplane_256(&v);
    let t1 = t0.elapsed();
    let (a, code) = orient_lps(&r);
    eprintln!(
        "{study}/{folder}: resample {:.1} ms, orient {:.1} ms",
        t1.as_secs_f64() * 1e3,
        (t0.elapsed() - t1).as_secs_f64() * 1e3
    );
    assert_eq!(
        code,
        s["original_orientation_code"].as_str().unwrap(),
        "{folder}: code"
    );
    let shape: Vec<usize> = s["oriented_array_shape_zyx"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(a.shape.to_vec(), shape, "{folder}: oriented shape");
    let npy = dir.join(format!(
        "expected/{study}/intermediates/{folder}_oriented_volume.npy"
    ));
    let (npy_shape, want) = (fixtures::npy_shape(&npy), fixtures::npy::<f32>(&npy));
    assert_eq!(
        npy_shape.iter().map(|&x| x as usize).collect::<Vec<_>>(),
        shape
    );
    let mut mismatches = 0usize;
    let mut max_diff = 0f64;
    let mut first = None;
    for (i, (&g, &w)) in a.data.iter().zip(want.iter()).enumerate() {
        if g as f32 != w {
            mismatches += 1;
            max_diff = max_diff.max((g - w as f64).abs());
            first.get_or_insert((i, g, w));
        }
    }
    assert_eq!(
        mismatches, 0,
        "{study}/{folder}: {mismatches} of {} voxels differ (max |diff| {max_diff}, first {first:?})",
        want.len()
    );
}

/// Spec §5 steps 1–3 and 6 on the oriented volume: per-patch percentage of voxels above
/// the mask threshold. A test-only check of the integer-typed resampling (S3 has no
/// oriented-volume fixture).
fn patch_otsu(a: &Array3<f64>) -> Vec<f64> {
    let vol: Vec<f32> = a.data.iter().map(|&x| x as f32).collect();
    let t = (0..3).find(|&i| a.shape[i] != 256).expect("thin axis");
    let mut ps = [32usize; 3];
    ps[t] = 4;
    let mut before = [0usize; 3];
    let mut padded = [0usize; 3];
    let mut any_pad = false;
    for i in 0..3 {
        let p = (ps[i] - a.shape[i] % ps[i]) % ps[i];
        before[i] = p / 2;
        padded[i] = a.shape[i] + p;
        any_pad |= p > 0;
    }
    let mut max = vol.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if any_pad {
        max = max.max(0.0);
    }
    let thr: f32 = if max < 5.0 { 0.5 } else { 50.0 };
    let n = [padded[0] / ps[0], padded[1] / ps[1], padded[2] / ps[2]];
    let mut counts = vec![0u32; n[0] * n[1] * n[2]];
    for z in 0..a.shape[0] {
        for y in 0..a.shape[1] {
            for x in 0..a.shape[2] {
                if vol[(z * a.shape[1] + y) * a.shape[2] + x] > thr {
                    let (pz, py, px) = (
                        (z + before[0]) / ps[0],
                        (y + before[1]) / ps[1],
                        (x + before[2]) / ps[2],
                    );
                    counts[(pz * n[1] + py) * n[2] + px] += 1;
                }
            }
        }
    }
    counts
        .iter()
        .map(|&c| (c as f64 / 4096.0) * 100.0)
        .collect()
}

fn check_otsu(folder: &str) {
    let Some(dir) = fixtures::reference_dir() else {
        return;
    };
    let (rec, v) = fixture_series(&dir, "STUDY_A", folder);
    let s = series_record(&rec, folder);
    assert_eq!(
        v.geometry.spacing,
        vec3(&s["original_spacing_xyz"]),
        "{folder}: spacing"
    );
    assert_eq!(
        v.pixel_type.sitk_name(),
        s["pixel_type"].as_str().unwrap(),
        "{folder}: type"
    );
    let t0 = std::time::Instant::now();
    let r = resample_inplane_256(&v);
    eprintln!(
        "STUDY_A/{folder}: resample {:.1} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    let (a, code) = orient_lps(&r);
    assert_eq!(code, s["original_orientation_code"].as_str().unwrap());
    let got = patch_otsu(&a);
    let want: Vec<f64> = fixtures::npy(&dir.join(format!(
        "expected/STUDY_A/intermediates/{folder}_patch_otsu_percent.npy"
    )));
    assert_eq!(got.len(), want.len(), "{folder}: patch count");
    let bad: Vec<(usize, f64, f64)> = got
        .iter()
        .zip(&want)
        .enumerate()
        .filter(|(_, (g, w))| g != w)
        .map(|(i, (&g, &w))| (i, g, w))
        .collect();
    assert!(
        bad.is_empty(),
        "{folder}: {} of {} patches differ, first {:?}",
        bad.len(),
        want.len(),
        bad.first()
    );
}

#[test]
fn patch_otsu_study_a_s3() {
    check_otsu("S3");
}

#[test]
fn patch_otsu_study_a_s2() {
    check_otsu("S2");
}

#[test]
fn patch_otsu_study_a_s6() {
    check_otsu("S6");
}

#[test]
fn patch_otsu_oriented_fixtures_too() {
    for f in ["S4", "S5", "S10"] {
        check_otsu(f);
    }
}

#[test]
fn oriented_volume_study_a_s5() {
    check_oriented("STUDY_A", "S5");
}

#[test]
fn oriented_volume_study_a_s4() {
    check_oriented("STUDY_A", "S4");
}

#[test]
fn oriented_volume_study_a_s10() {
    check_oriented("STUDY_A", "S10");
}

#[test]
fn oriented_volume_study_c_mosaic() {
    check_oriented("STUDY_C", "dti_mosaic");
}

#[test]
fn oriented_volume_study_c_j2k() {
    check_oriented("STUDY_C_J2K", "mip_j2k");
}
