//! In-plane resample to 256×256 exactly as upstream's `sitk.Resample` call does it with
//! ITK 5.4's `ResampleImageFilter` (linear interpolator, identity transform;
//! docs/prima-inference-spec.md §2–§3).
use super::itk::Mat3;
use super::itk::{index_to_physical, index_to_point, physical_to_index, point_to_continuous_index};
use super::{Geometry, PixelType, Volume};

/// Output in-plane size upstream asks for.
pub const OUT_XY: usize = 256;

/// Resample `v` to (256, 256, Z) with spacing ((W·sx)/256, (H·sy)/256, sz), same origin,
/// direction and pixel type. Samples outside the input get the pixel type's SimpleITK id
/// (upstream passes it as `defaultPixelValue` by accident, §2).
pub fn resample_inplane_256(v: &Volume) -> Volume {
    let [w, h, nz] = v.size;
    let g = &v.geometry;
    let out_geom = Geometry {
        origin: g.origin,
        direction: g.direction,
        spacing: [
            (w as f64 * g.spacing[0]) / 256.0,
            (h as f64 * g.spacing[1]) / 256.0,
            g.spacing[2],
        ],
    };
    let mo = index_to_physical(&out_geom);
    let p = physical_to_index(g);
    let pt = v.pixel_type;
    let ctx = Ctx {
        src: &v.data,
        size: [w, h, nz],
        origin: g.origin,
        mo,
        p,
        default: cast_to(pt, pt.sitk_id() as f64),
    };
    // One monomorphised loop per cast so the hot loop has no dispatch on the type.
    let data = match pt {
        PixelType::F64 => ctx.run(|x| x),
        PixelType::F32 => ctx.run(|x| x as f32 as f64),
        PixelType::I64 | PixelType::U64 => ctx.run(move |x| cast_to(pt, x)),
        _ => {
            let (mn, mx) = pt.integer_range().expect("integer type");
            // Within (min, max) of a ≤32-bit type the i64 conversion is C++'s truncation
            // toward zero, and it yields +0.0 where ITK's integer 0 would.
            ctx.run(move |x| {
                if x <= mn {
                    mn
                } else if x >= mx {
                    mx
                } else {
                    x as i64 as f64
                }
            })
        }
    };
    Volume {
        size: [OUT_XY, OUT_XY, nz],
        data,
        pixel_type: pt,
        geometry: out_geom,
    }
}

/// §3.5 cast back to T (ITK's bounds-checked `static_cast`), +0.0 for integer zeros.
fn cast_to(pt: PixelType, x: f64) -> f64 {
    let c = pt.cast(x);
    if pt.is_integer() {
        c + 0.0
    } else {
        c
    }
}

struct Ctx<'a> {
    src: &'a [f64],
    size: [usize; 3],
    origin: [f64; 3],
    mo: Mat3,
    p: Mat3,
    default: f64,
}

impl Ctx<'_> {
    fn run<F: Fn(f64) -> f64>(&self, cast: F) -> Vec<f64> {
        let [w, h, nz] = self.size;
        // ITK's IsInsideBuffer for continuous indices: start − 0.5 ≤ c < start + size − 0.5.
        let hi = [w as f64 - 0.5, h as f64 - 0.5, nz as f64 - 0.5];
        let plane = w * h;
        let src = self.src;
        let mut alpha = [0.0f64; OUT_XY];
        for (i, a) in alpha.iter_mut().enumerate() {
            *a = i as f64 / OUT_XY as f64;
        }
        let mut data = vec![0.0f64; OUT_XY * OUT_XY * nz];
        for (k, out_plane) in data.chunks_exact_mut(OUT_XY * OUT_XY).enumerate() {
            for (j, out_row) in out_plane.chunks_exact_mut(OUT_XY).enumerate() {
                let (jf, kf) = (j as f64, k as f64);
                let start = point_to_continuous_index(
                    &self.origin,
                    &self.p,
                    &index_to_point(&self.origin, &self.mo, &[0.0, jf, kf]),
                );
                let end = point_to_continuous_index(
                    &self.origin,
                    &self.p,
                    &index_to_point(&self.origin, &self.mo, &[OUT_XY as f64, jf, kf]),
                );
                let vec = [end[0] - start[0], end[1] - start[1], end[2] - start[2]];
                if vec[1] == 0.0 && vec[2] == 0.0 {
                    // start + alpha·0 is start (up to the sign of a zero, which the floor,
                    // distance and clipping below do not see): y and z are fixed for the
                    // whole scanline.
                    let (cy, cz) = (start[1] + alpha[0] * vec[1], start[2] + alpha[0] * vec[2]);
                    if !(inside(cy, hi[1]) && inside(cz, hi[2])) {
                        out_row.fill(self.default);
                        continue;
                    }
                    let (by, dy, ny) = axis(cy, h);
                    let (bz, dz, nzz) = axis(cz, nz);
                    let s00 = &src[bz * plane + by * w..][..w];
                    let s10 = &src[bz * plane + ny * w..][..w];
                    let s01 = &src[nzz * plane + by * w..][..w];
                    let s11 = &src[nzz * plane + ny * w..][..w];
                    for (o, &a) in out_row.iter_mut().zip(alpha.iter()) {
                        let cx = start[0] + a * vec[0];
                        if !inside(cx, hi[0]) {
                            *o = self.default;
                            continue;
                        }
                        let (bx, dx, nx) = axis(cx, w);
                        *o = cast(trilinear(
                            [
                                s00[bx], s00[nx], s10[bx], s10[nx], s01[bx], s01[nx], s11[bx],
                                s11[nx],
                            ],
                            dx,
                            dy,
                            dz,
                        ));
                    }
                } else {
                    for (o, &a) in out_row.iter_mut().zip(alpha.iter()) {
                        let c = [
                            start[0] + a * vec[0],
                            start[1] + a * vec[1],
                            start[2] + a * vec[2],
                        ];
                        if !(inside(c[0], hi[0]) && inside(c[1], hi[1]) && inside(c[2], hi[2])) {
                            *o = self.default;
                            continue;
                        }
                        let (bx, dx, nx) = axis(c[0], w);
                        let (by, dy, ny) = axis(c[1], h);
                        let (bz, dz, nzz) = axis(c[2], nz);
                        let r00 = bz * plane + by * w;
                        let r10 = bz * plane + ny * w;
                        let r01 = nzz * plane + by * w;
                        let r11 = nzz * plane + ny * w;
                        *o = cast(trilinear(
                            [
                                src[r00 + bx],
                                src[r00 + nx],
                                src[r10 + bx],
                                src[r10 + nx],
                                src[r01 + bx],
                                src[r01 + nx],
                                src[r11 + bx],
                                src[r11 + nx],
                            ],
                            dx,
                            dy,
                            dz,
                        ));
                    }
                }
            }
        }
        data
    }
}

/// Written so that NaN counts as outside.
#[inline(always)]
fn inside(c: f64, hi: f64) -> bool {
    c >= -0.5 && c < hi
}

/// ITK's 3-D linear interpolation (§3.3). `v` = [v(b_z,b_y,b_x), v(b_z,b_y,n_x),
/// v(b_z,n_y,b_x), v(b_z,n_y,n_x), v(n_z,b_y,b_x), v(n_z,b_y,n_x), v(n_z,n_y,b_x),
/// v(n_z,n_y,n_x)].
#[inline(always)]
fn trilinear(v: [f64; 8], dx: f64, dy: f64, dz: f64) -> f64 {
    let x00 = v[0] + (v[1] - v[0]) * dx;
    let x10 = v[2] + (v[3] - v[2]) * dx;
    let xx0 = x00 + (x10 - x00) * dy;
    let x01 = v[4] + (v[5] - v[4]) * dx;
    let x11 = v[6] + (v[7] - v[6]) * dx;
    let xx1 = x01 + (x11 - x01) * dy;
    xx0 + (xx1 - xx0) * dz
}

/// Base index (floor, clamped at 0), clipped distance (0 when ≤ 0) and upper neighbour
/// (clamped at the last index) along one axis of ITK's linear interpolator (§3.3). With
/// these clamps the branch-free formula equals ITK's branchy `EvaluateOptimized`.
/// `c` has passed [`inside`], so it lies in [−0.5, size − 0.5).
#[inline(always)]
fn axis(c: f64, size: usize) -> (usize, f64, usize) {
    // floor without a libm call (baseline x86-64 has no roundsd).
    let t = c as i64;
    let fl = if (t as f64) > c { t - 1 } else { t };
    let base = fl.max(0) as usize;
    let d = c - base as f64;
    let d = if d > 0.0 { d } else { 0.0 };
    let next = (base + 1).min(size - 1);
    (base, d, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::PixelType;

    fn identity_volume(w: usize, h: usize, nz: usize, pt: PixelType) -> Volume {
        let data = (0..w * h * nz).map(|i| (i % 1000) as f64 + 100.0).collect();
        Volume {
            size: [w, h, nz],
            data,
            pixel_type: pt,
            geometry: Geometry {
                origin: [-10.0, 20.0, 3.0],
                direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                spacing: [1.0, 1.0, 2.0],
            },
        }
    }

    #[test]
    fn upsampling_128_puts_default_in_last_row_and_column() {
        let v = identity_volume(128, 128, 2, PixelType::I16);
        let r = resample_inplane_256(&v);
        assert_eq!(r.size, [256, 256, 2]);
        assert_eq!(r.geometry.spacing, [0.5, 0.5, 2.0]);
        for z in 0..2 {
            for t in 0..256 {
                assert_eq!(r.at(255, t, z), 2.0);
                assert_eq!(r.at(t, 255, z), 2.0);
            }
            // Even output indices sit exactly on input voxels.
            for y in (0..254).step_by(2) {
                for x in (0..254).step_by(2) {
                    assert_eq!(r.at(x, y, z), v.at(x / 2, y / 2, z));
                }
            }
            // Odd ones average two neighbours, truncated.
            let m = (v.at(0, 0, z) + v.at(1, 0, z)) / 2.0;
            assert_eq!(r.at(1, 0, z), m.trunc());
        }
    }

    #[test]
    fn downsampling_300_clamps_last_column() {
        let v = identity_volume(300, 300, 1, PixelType::F64);
        let r = resample_inplane_256(&v);
        assert_eq!(r.size, [256, 256, 1]);
        // No output sample falls outside for 128 < W.
        assert!(r.data.iter().all(|&x| x >= 100.0));
        // Column 255 samples x = 255·300/256 ≈ 298.83, between the last two columns.
        let c = 255.0 * 300.0 / 256.0;
        let d = c - 298.0;
        let want = v.at(298, 0, 0) + (v.at(299, 0, 0) - v.at(298, 0, 0)) * d;
        assert!((r.at(255, 0, 0) - want).abs() < 1e-9);
    }

    #[test]
    fn float32_is_rounded_and_uint_default_is_3() {
        let mut v = identity_volume(128, 64, 1, PixelType::F32);
        v.data.iter_mut().for_each(|x| *x += 0.1f32 as f64);
        let r = resample_inplane_256(&v);
        assert!(r.data.iter().all(|&x| x == x as f32 as f64));
        assert_eq!(r.at(255, 0, 0), 8.0);
        let v = identity_volume(64, 64, 1, PixelType::U16);
        assert_eq!(resample_inplane_256(&v).at(255, 0, 0), 3.0);
    }
}
