//! `sitk.DICOMOrient(image, 'LPS')`: an axis permutation plus flips, no resampling
//! (spec §4).
use super::{Array3, Volume};

/// For each physical axis c (0 = x/L, 1 = y/P, 2 = z/S): the image axis assigned to it
/// and the sign of that image axis along c, as ITK's `DirectionCosinesToOrientation`
/// decides them greedily.
pub fn axis_assignment(direction: &[[f64; 3]; 3]) -> [(usize, i8); 3] {
    // ITK keeps |D[c][r]| in a multimap keyed by value; equal keys stay in insertion
    // order (c-major), so among ties the last inserted, i.e. the larger 3c + r, is taken.
    let mut entries: Vec<(f64, usize, usize)> = Vec::with_capacity(9);
    for (c, row) in direction.iter().enumerate() {
        for (r, &d) in row.iter().enumerate() {
            entries.push((d.abs(), c, r));
        }
    }
    let mut out = [(usize::MAX, 0i8); 3];
    for _ in 0..3 {
        let mut best: Option<(f64, usize, usize)> = None;
        for &e in &entries {
            match best {
                Some((v, _, _)) if e.0 < v => {}
                _ => best = Some(e),
            }
        }
        let (_, c, r) = best.expect("3x3 direction has an entry left");
        let d = direction[c][r];
        let sign = if d > 0.0 {
            1
        } else if d < 0.0 {
            -1
        } else {
            0
        };
        out[c] = (r, sign);
        entries.retain(|&(_, ec, er)| ec != c && er != r);
    }
    out
}

/// Orientation code of a direction matrix: for each image axis the letter of the
/// patient direction it increases toward (e.g. "LPS", "PIR", "LIP").
pub fn orientation_code(direction: &[[f64; 3]; 3]) -> String {
    const POS: [char; 3] = ['L', 'P', 'S'];
    const NEG: [char; 3] = ['R', 'A', 'I'];
    let mut letters = ['?'; 3];
    for (c, &(r, sign)) in axis_assignment(direction).iter().enumerate() {
        // ITK's Math::sgn is 0 for a zero entry, which maps to the negative letter.
        letters[r] = if sign == 1 { POS[c] } else { NEG[c] };
    }
    letters.iter().collect()
}

/// Reorient `v` to LPS. Returns the (z, y, x) array of the reoriented image and the
/// orientation code of the input direction.
pub fn orient_lps(v: &Volume) -> (Array3<f64>, String) {
    let assign = axis_assignment(&v.geometry.direction);
    let code = orientation_code(&v.geometry.direction);
    let in_size = v.size;
    let out_size = [
        in_size[assign[0].0],
        in_size[assign[1].0],
        in_size[assign[2].0],
    ];
    let in_stride = [1usize, in_size[0], in_size[0] * in_size[1]];

    // Output index o maps to input offset Σ_c f_c(o_c) · stride[r(c)], with f_c the
    // identity or the reversal along that axis.
    let mut start: isize = 0;
    let mut step = [0isize; 3];
    for c in 0..3 {
        let (r, sign) = assign[c];
        let stride = in_stride[r] as isize;
        if sign < 0 {
            start += (in_size[r] as isize - 1) * stride;
            step[c] = -stride;
        } else {
            step[c] = stride;
        }
    }
    let mut data = Vec::with_capacity(v.data.len());
    for o2 in 0..out_size[2] {
        let base2 = start + o2 as isize * step[2];
        for o1 in 0..out_size[1] {
            let base1 = base2 + o1 as isize * step[1];
            if step[0] == 1 {
                let b = base1 as usize;
                data.extend_from_slice(&v.data[b..b + out_size[0]]);
            } else {
                data.extend(
                    (0..out_size[0]).map(|o0| v.data[(base1 + o0 as isize * step[0]) as usize]),
                );
            }
        }
    }
    (
        Array3 {
            shape: [out_size[2], out_size[1], out_size[0]],
            data,
        },
        code,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::resample::resample_inplane_256;
    use crate::imaging::resample::test_support::{fixture_dir, load_series};
    use crate::imaging::{Geometry, PixelType};
    use serde_json::Value;
    use std::path::Path;

    fn volume(size: [usize; 3], direction: [[f64; 3]; 3]) -> Volume {
        let n = size[0] * size[1] * size[2];
        Volume {
            size,
            data: (0..n).map(|i| i as f64).collect(),
            pixel_type: PixelType::F64,
            geometry: Geometry {
                origin: [0.0; 3],
                direction,
                spacing: [1.0; 3],
            },
        }
    }

    #[test]
    fn sagittal_pir() {
        let d = [[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]];
        let v = volume([4, 5, 3], d);
        let (a, code) = orient_lps(&v);
        assert_eq!(code, "PIR");
        // ITK size (Z, W, H): x = reversed input z, y = input x, z = reversed input y.
        assert_eq!(a.shape, [5, 4, 3]);
        for z in 0..5 {
            for y in 0..4 {
                for x in 0..3 {
                    assert_eq!(a.at(z, y, x), v.at(y, 4 - z, 2 - x));
                }
            }
        }
    }

    #[test]
    fn coronal_lip() {
        let d = [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]];
        let v = volume([4, 5, 3], d);
        let (a, code) = orient_lps(&v);
        assert_eq!(code, "LIP");
        // x = input x, y = input z, z = reversed input y.
        assert_eq!(a.shape, [5, 3, 4]);
        for z in 0..5 {
            for y in 0..3 {
                for x in 0..4 {
                    assert_eq!(a.at(z, y, x), v.at(x, 4 - z, y));
                }
            }
        }
    }

    #[test]
    fn oblique_axial_stays_axial() {
        let t: f64 = 40f64.to_radians();
        let d = [
            [t.cos(), -t.sin(), 0.0],
            [t.sin(), t.cos(), 0.0],
            [0.0, 0.0, 1.0],
        ];
        let v = volume([4, 5, 3], d);
        let (a, code) = orient_lps(&v);
        assert_eq!(code, "LPS");
        assert_eq!(a.shape, [3, 5, 4]);
        assert_eq!(a.data, v.data);
        let d = [
            [t.cos(), t.sin(), 0.0],
            [-t.sin(), t.cos(), 0.0],
            [0.0, 0.0, 1.0],
        ];
        assert_eq!(orientation_code(&d), "LPS");
    }

    fn read_npy_f32(path: &Path) -> (Vec<u64>, Vec<f32>) {
        let bytes = std::fs::read(path).unwrap();
        let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
        let shape = npy.shape().to_vec();
        (shape, npy.into_vec::<f32>().unwrap())
    }

    fn series_record<'a>(rec: &'a Value, folder: &str) -> &'a Value {
        rec["series"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["folder"] == folder)
            .unwrap()
    }

    fn vec3(v: &Value) -> [f64; 3] {
        let a = v.as_array().unwrap();
        [
            a[0].as_f64().unwrap(),
            a[1].as_f64().unwrap(),
            a[2].as_f64().unwrap(),
        ]
    }

    /// The fixture's run record of `study` and series `folder` loaded in its file order.
    fn fixture_series(dir: &Path, study: &str, folder: &str) -> (Value, Volume) {
        let rec: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("expected/{study}/run_record.json")))
                .unwrap(),
        )
        .unwrap();
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
        let Some(dir) = fixture_dir() else { return };
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
        let (npy_shape, want) = read_npy_f32(&dir.join(format!(
            "expected/{study}/intermediates/{folder}_oriented_volume.npy"
        )));
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
        let Some(dir) = fixture_dir() else { return };
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
        let bytes = std::fs::read(dir.join(format!(
            "expected/STUDY_A/intermediates/{folder}_patch_otsu_percent.npy"
        )))
        .unwrap();
        let want = npyz::NpyFile::new(&bytes[..])
            .unwrap()
            .into_vec::<f64>()
            .unwrap();
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
}
