//! From a token back to the patient: which source images a 32×32×4 patch of the resampled,
//! oriented volume covers, and its footprint on them.
//!
//! A token's (z, y, x) start is a voxel of the padded, oriented array. Undoing the padding
//! gives the oriented voxel range; undoing DICOMOrient (an axis permutation plus flips,
//! [`orient::axis_assignment`]) gives the range in the resampled volume, whose x and y are
//! the source images' columns and rows at 256 × 256 and whose z is the series' slices in
//! stacking order. The in-plane resample keeps the origin (the centre of the first pixel),
//! so resampled voxel `i` lies at source pixel `i · W / 256` (continuous index), which maps
//! the footprint onto the source pixels without interpolation error. Patient coordinates
//! come from each source image's own Image Position/Orientation and Pixel Spacing.

use serde::{Deserialize, Serialize};

use crate::imaging::header::SliceMeta;
use crate::imaging::orient;

/// The series geometry a token is mapped through.
pub struct SeriesGeometry<'a> {
    /// Source images in stacking order (the resampled volume's z).
    pub slices: &'a [SliceMeta],
    /// Direction of the resampled volume (that of the source series).
    pub direction: &'a [[f64; 3]; 3],
    /// (z, y, x) after DICOMOrient, before padding.
    pub oriented_shape: [usize; 3],
    /// (z, y, x) after padding.
    pub padded_shape: [usize; 3],
    /// (z, y, x) of a patch.
    pub patch_shape: [usize; 3],
}

/// Where one token lies in the source images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Footprint {
    /// Indices into the series' slices (stacking order) the patch covers, first to last.
    pub first_slice: usize,
    pub last_slice: usize,
    /// The slice nearest the patch's centre (the lower one of two equally near).
    pub nearest_slice: usize,
    /// In-plane footprint on the source images, in DICOM image coordinates (column, row; the
    /// top left corner of the top left pixel is (0, 0)): [left, top, right, bottom], clipped
    /// to the image.
    pub rect: [f64; 4],
    /// The footprint's centre on the nearest slice, patient coordinates (mm).
    pub centre_mm: [f64; 3],
    /// The footprint's corners on the first and on the last covered slice (mm): the patch's
    /// box in the patient.
    pub corners_mm: Vec<[f64; 3]>,
}

/// The footprint of the token starting at `coord`, or `None` when it lies wholly in the
/// padding (it covers no source voxel).
pub fn footprint(g: &SeriesGeometry, coord: [i64; 3]) -> Option<Footprint> {
    let first = g.slices.first()?;
    // Oriented ITK axis c is array axis 2 - c.
    let mut lo = [0usize; 3];
    let mut hi = [0usize; 3];
    for a in 0..3 {
        let n = g.oriented_shape[a] as i64;
        let before = ((g.padded_shape[a] - g.oriented_shape[a]) / 2) as i64;
        let start = coord[a] - before;
        let end = start + g.patch_shape[a] as i64 - 1;
        if n == 0 || end < 0 || start >= n {
            return None;
        }
        lo[a] = start.max(0) as usize;
        hi[a] = end.min(n - 1) as usize;
    }
    // Resampled index range along each input axis r (0 = column, 1 = row, 2 = slice).
    let assign = orient::axis_assignment(g.direction);
    let mut range = [(0usize, 0usize); 3];
    for (c, &(r, sign)) in assign.iter().enumerate() {
        let a = 2 - c;
        let n = g.oriented_shape[a];
        range[r] = if sign < 0 {
            (n - 1 - hi[a], n - 1 - lo[a])
        } else {
            (lo[a], hi[a])
        };
    }
    let n_slices = g.slices.len();
    let (z0, z1) = (range[2].0.min(n_slices - 1), range[2].1.min(n_slices - 1));
    let nearest = (z0 + z1) / 2;
    // The resampled grid's in-plane size is the oriented shape along the axes the image's
    // columns and rows landed on.
    let size_of = |r: usize| {
        let c = assign.iter().position(|&(ar, _)| ar == r).unwrap_or(r);
        g.oriented_shape[2 - c] as f64
    };
    let near = &g.slices[nearest];
    let (w, h) = (near.cols as f64, near.rows as f64);
    let (sx, sy) = (w / size_of(0), h / size_of(1));
    // Resampled voxel i spans continuous source index (i ± 0.5)·s; image coordinates put
    // pixel centres at +0.5.
    let rect = [
        ((range[0].0 as f64 - 0.5) * sx + 0.5).clamp(0.0, w),
        ((range[1].0 as f64 - 0.5) * sy + 0.5).clamp(0.0, h),
        ((range[0].1 as f64 + 0.5) * sx + 0.5).clamp(0.0, w),
        ((range[1].1 as f64 + 0.5) * sy + 0.5).clamp(0.0, h),
    ];
    let centre_mm = to_patient(
        near,
        first,
        (rect[0] + rect[2]) / 2.0,
        (rect[1] + rect[3]) / 2.0,
    );
    let mut corners_mm = Vec::with_capacity(8);
    for s in [&g.slices[z0], &g.slices[z1]] {
        for (col, row) in [
            (rect[0], rect[1]),
            (rect[2], rect[1]),
            (rect[2], rect[3]),
            (rect[0], rect[3]),
        ] {
            corners_mm.push(to_patient(s, first, col, row));
        }
    }
    Some(Footprint {
        first_slice: z0,
        last_slice: z1,
        nearest_slice: nearest,
        rect,
        centre_mm,
        corners_mm,
    })
}

/// Image coordinates (column, row) on `s` to patient coordinates (mm), with the series'
/// first image's orientation and spacing where `s` lacks them (the volume was built from
/// those).
fn to_patient(s: &SliceMeta, first: &SliceMeta, col: f64, row: f64) -> [f64; 3] {
    let ipp = s.ipp.or(first.ipp).unwrap_or([0.0; 3]);
    let iop = s
        .iop
        .or(first.iop)
        .unwrap_or([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    let ps = s
        .pixel_spacing
        .or(first.pixel_spacing)
        .unwrap_or([1.0, 1.0]);
    // Continuous pixel index = image coordinate - 0.5; IOP's first triplet is the direction
    // of increasing column, PixelSpacing is (row spacing, column spacing).
    let (i, j) = (col - 0.5, row - 0.5);
    std::array::from_fn(|k| ipp[k] + iop[k] * ps[1] * i + iop[3 + k] * ps[0] * j)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::itk::direction_from_iop;
    use crate::imaging::{orient, tokens, Geometry, PixelType, Volume};

    fn slice(k: usize, iop: [f64; 6], normal: [f64; 3], rows: u32, cols: u32) -> SliceMeta {
        SliceMeta {
            sop_instance_uid: format!("1.2.3.{k}"),
            rows,
            cols,
            ipp: Some(std::array::from_fn(|i| normal[i] * 3.0 * k as f64 + 10.0)),
            iop: Some(iop),
            pixel_spacing: Some([0.5, 0.5]),
            ..SliceMeta::blank()
        }
    }

    /// A volume whose voxels hold their own resampled index: orient + tokenise it, and each
    /// token's footprint must hold exactly the voxels that token read.
    fn roundtrip(iop: [f64; 6], n_slices: usize) {
        let direction = direction_from_iop(&iop);
        let normal = [direction[0][2], direction[1][2], direction[2][2]];
        let slices: Vec<SliceMeta> = (0..n_slices)
            .map(|k| slice(k, iop, normal, 512, 512))
            .collect();
        let size = [256, 256, n_slices];
        let n = size[0] * size[1] * size[2];
        // value = 1 + x + 256 y + 65536 z, so the voxel is known from its value
        let vol = Volume {
            size,
            data: (0..n).map(|i| 1.0 + i as f64).collect(),
            pixel_type: PixelType::F64,
            geometry: Geometry {
                origin: [10.0; 3],
                direction,
                spacing: [1.0, 1.0, 3.0],
            },
        };
        let (oriented, code) = orient::orient_lps(&vol);
        let thin = tokens::thin_axis(oriented.shape, 0);
        let t = tokens::tokenize(&oriented, thin);
        let g = SeriesGeometry {
            slices: &slices,
            direction: &direction,
            oriented_shape: oriented.shape,
            padded_shape: t.padded_shape,
            patch_shape: t.patch_shape,
        };
        for (k, &coord) in t.coords.iter().enumerate().step_by(7) {
            // what the token read, from the oriented array directly
            let mut seen = [(usize::MAX, 0usize); 3];
            let mut any = false;
            for dz in 0..t.patch_shape[0] {
                for dy in 0..t.patch_shape[1] {
                    for dx in 0..t.patch_shape[2] {
                        let p = [
                            coord[0] as usize + dz,
                            coord[1] as usize + dy,
                            coord[2] as usize + dx,
                        ];
                        let before: [usize; 3] =
                            std::array::from_fn(|a| (t.padded_shape[a] - oriented.shape[a]) / 2);
                        if (0..3).any(|a| p[a] < before[a] || p[a] - before[a] >= oriented.shape[a])
                        {
                            continue;
                        }
                        let v = oriented.at(p[0] - before[0], p[1] - before[1], p[2] - before[2]);
                        let i = (v - 1.0) as usize;
                        let xyz = [i % 256, (i / 256) % 256, i / 65536];
                        for r in 0..3 {
                            seen[r].0 = seen[r].0.min(xyz[r]);
                            seen[r].1 = seen[r].1.max(xyz[r]);
                        }
                        any = true;
                    }
                }
            }
            let f = footprint(&g, coord);
            assert_eq!(f.is_some(), any, "{code} token {k}");
            let Some(f) = f else { continue };
            assert_eq!(
                (f.first_slice, f.last_slice),
                seen[2],
                "{code} token {k} slices"
            );
            // 512 source pixels per 256 resampled voxels: voxel i spans pixels 2i-1..2i+1
            let want = [
                (2.0 * seen[0].0 as f64 - 0.5).max(0.0),
                (2.0 * seen[1].0 as f64 - 0.5).max(0.0),
                (2.0 * seen[0].1 as f64 + 1.5).min(512.0),
                (2.0 * seen[1].1 as f64 + 1.5).min(512.0),
            ];
            assert_eq!(f.rect, want, "{code} token {k} rect");
        }
    }

    #[test]
    fn footprints_hold_exactly_the_voxels_each_token_read() {
        // axial (LPS), sagittal (PIR) and coronal (LIP), each with a flipped variant
        roundtrip([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], 10);
        roundtrip([-1.0, 0.0, 0.0, 0.0, -1.0, 0.0], 9);
        roundtrip([0.0, 1.0, 0.0, 0.0, 0.0, -1.0], 12);
        roundtrip([1.0, 0.0, 0.0, 0.0, 0.0, -1.0], 7);
        roundtrip([0.0, -1.0, 0.0, 0.0, 0.0, 1.0], 5);
    }

    #[test]
    fn patient_coordinates_follow_the_image_plane() {
        let iop = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        let s = slice(2, iop, [0.0, 0.0, 1.0], 512, 512);
        // the centre of the top left pixel is IPP
        assert_eq!(to_patient(&s, &s, 0.5, 0.5), [10.0, 10.0, 16.0]);
        // 10 columns right, 4 rows down at 0.5 mm
        assert_eq!(to_patient(&s, &s, 10.5, 4.5), [15.0, 12.0, 16.0]);
    }
}
