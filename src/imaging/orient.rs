//! `sitk.DICOMOrient(image, 'LPS')`: an axis permutation plus flips, no resampling
//! (docs/prima-inference-spec.md §4).
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
    use crate::imaging::{Geometry, PixelType};

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
}
