//! The pipeline's `MedicalImagePatchifier(in_dim, d)`
//! (docs/prima-inference-spec.md §9.1–§9.2) and the sin/cos tables of positional-encodings
//! 6.0.3 (also used by the name encoders, §11.1).
//!
//! The tables are computed with the same libtorch float32 ops in the same order as the
//! Python package (`1 / 10000 ** (arange(0, ch, 2) / ch)`, outer product with the
//! positions, `sin`/`cos` over the whole (rows, ch/2) tensor, interleaved), so the values
//! are bit-identical on the same libtorch build: libtorch's vectorised `sin` and its
//! scalar tail can differ by an ulp, so even the table's row count matters.

use tch::{Device, Kind, Tensor};

use super::manifest::PatchifierConfig;
use super::ModelError;

/// Patch edge (voxels) along the two full axes (spec §5).
pub const PATCH_EDGE: i64 = 32;
/// Patch extent along the thin axis before the 4 → 8 resize (spec §5, §7).
pub const PATCH_THIN: i64 = 4;
/// Rows of upstream's 3-D table per axis (it materialises a (100, 100, 100, d) table).
const PE3D_ROWS: i64 = 100;

/// positional-encodings' `get_emb(pos ⊗ inv_freq)` for pos = 0..rows: (rows, ch) float32,
/// `[sin g0, cos g0, sin g1, cos g1, …]` with `ch` even.
pub fn sincos_table(rows: i64, ch: i64) -> Result<Tensor, ModelError> {
    if ch <= 0 || ch % 2 != 0 || rows <= 0 {
        return Err(ModelError::Input(format!(
            "positional table ({rows}, {ch}): need rows > 0 and even ch"
        )));
    }
    let opts = (Kind::Float, Device::Cpu);
    let expo = Tensor::f_arange_start_step(0, ch, 2, opts)?.f_div_scalar(ch)?;
    let inv_freq = Tensor::f_pow_scalar(10000, &expo)?.f_reciprocal()?;
    let pos = Tensor::f_arange(rows, opts)?;
    let inp = pos.f_unsqueeze(1)?.f_mul(&inv_freq.f_unsqueeze(0)?)?;
    let emb = Tensor::f_stack(&[inp.f_sin()?, inp.f_cos()?], -1)?;
    Ok(emb.f_reshape([rows, ch])?)
}

/// Per-axis channel count of `PositionalEncoding3D(d)`.
fn pe3d_axis_channels(d: i64) -> i64 {
    let ch = (d + 5) / 6 * 2;
    ch + ch % 2
}

/// Orientation of a series, from the encoder output shape (spec §9.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Orientation {
    Axial,
    Coronal,
    Sagittal,
}

impl Orientation {
    /// The thin spatial axis of (a, b, c) is the unique smallest one. For upstream's
    /// encoder this is exactly its test `a == 2`, else `b == 2`, else sagittal.
    pub fn from_encoder_shape(abc: [i64; 3]) -> Result<Self, ModelError> {
        let min = *abc.iter().min().unwrap_or(&0);
        let thin: Vec<usize> = (0..3).filter(|&i| abc[i] == min).collect();
        match thin.as_slice() {
            [0] => Ok(Orientation::Axial),
            [1] => Ok(Orientation::Coronal),
            [2] => Ok(Orientation::Sagittal),
            _ => Err(ModelError::Input(format!(
                "encoder output spatial shape {abc:?} has no unique thin axis"
            ))),
        }
    }

    fn axis(self) -> usize {
        match self {
            Orientation::Axial => 0,
            Orientation::Coronal => 1,
            Orientation::Sagittal => 2,
        }
    }

    /// Divisor of the patch start coordinates: the patch shape before the resize.
    pub fn divisor(self) -> [i64; 3] {
        let mut d = [PATCH_EDGE; 3];
        d[self.axis()] = PATCH_THIN;
        d
    }
}

/// `MedicalImagePatchifier` with its derived sizes.
#[derive(Debug, Clone)]
pub struct Patchifier {
    in_dim: i64,
    d: i64,
    out_dim: i64,
}

impl Patchifier {
    pub fn new(c: &PatchifierConfig) -> Result<Self, ModelError> {
        if c.out_dim != c.in_dim + c.d + 3 || c.d <= 0 {
            return Err(ModelError::Input(format!(
                "patchifier in_dim {} + d {} + 3 != out_dim {}",
                c.in_dim, c.d, c.out_dim
            )));
        }
        Ok(Patchifier {
            in_dim: c.in_dim,
            d: c.d,
            out_dim: c.out_dim,
        })
    }

    /// enc (K, ch, a, b, c) encoder outputs of one series, coords (K, 3) (z, y, x) patch
    /// start coordinates in the padded volume → (K, out_dim) float32 on the CPU.
    pub fn forward(&self, enc: &Tensor, coords: &[[i64; 3]]) -> Result<Tensor, ModelError> {
        let s = enc.size();
        if s.len() != 5 || s[0] != coords.len() as i64 || s[0] == 0 {
            return Err(ModelError::Input(format!(
                "patchifier input {s:?} with {} coordinates",
                coords.len()
            )));
        }
        let k = s[0];
        let orient = Orientation::from_encoder_shape([s[2], s[3], s[4]])?;
        let enc = enc.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?;
        // Bring the thin axis first: (ch, thin, full, full).
        let e = match orient {
            Orientation::Axial => enc,
            Orientation::Coronal => enc.f_transpose(2, 3)?,
            Orientation::Sagittal => enc.f_transpose(2, 4)?,
        };
        let flat_dim = s[1] * s[2] * s[3] * s[4];
        if flat_dim != self.in_dim {
            return Err(ModelError::Input(format!(
                "encoder output of {flat_dim} values per token, patchifier expects {}",
                self.in_dim
            )));
        }
        let flat = e.f_contiguous()?.f_reshape([k, self.in_dim])?;

        let div = orient.divisor();
        let mut idx = [Vec::with_capacity(k as usize), Vec::new(), Vec::new()];
        for c in coords {
            for ax in 0..3 {
                if c[ax] < 0 {
                    return Err(ModelError::Input(format!(
                        "negative patch coordinate {c:?}"
                    )));
                }
                idx[ax].push(c[ax].div_euclid(div[ax]));
            }
        }
        let max_idx = idx.iter().flatten().copied().max().unwrap_or(0);
        let ch = pe3d_axis_channels(self.d);
        let table = sincos_table(PE3D_ROWS.max(max_idx + 1), ch)?;
        let parts = idx
            .iter()
            .map(|v| table.f_index_select(0, &Tensor::from_slice(v)))
            .collect::<Result<Vec<_>, _>>()?;
        let pe = Tensor::f_cat(&parts, 1)?.f_narrow(1, 0, self.d)?;

        let mut onehot = [0f32; 3];
        onehot[orient.axis()] = 1.0;
        let onehot = Tensor::from_slice(&onehot)
            .f_view([1, 3])?
            .f_expand([k, 3], true)?;
        let out = Tensor::f_cat(&[&flat, &pe, &onehot], 1)?;
        debug_assert_eq!(out.size(), vec![k, self.out_dim]);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sincos_table_interleaves_sin_cos() {
        let t = sincos_table(3, 10).unwrap();
        assert_eq!(t.size(), [3, 10]);
        let row: Vec<f32> = Vec::try_from(&t.get(2)).unwrap();
        for k in 0..5 {
            let f = 1.0 / 10000f64.powf(2.0 * k as f64 / 10.0);
            assert!((row[2 * k] as f64 - (2.0 * f).sin()).abs() < 1e-6);
            assert!((row[2 * k + 1] as f64 - (2.0 * f).cos()).abs() < 1e-6);
        }
        assert!(sincos_table(3, 9).is_err());
    }

    #[test]
    fn orientation_from_shape() {
        assert_eq!(
            Orientation::from_encoder_shape([2, 8, 8]).unwrap(),
            Orientation::Axial
        );
        assert_eq!(
            Orientation::from_encoder_shape([8, 2, 8]).unwrap(),
            Orientation::Coronal
        );
        assert_eq!(
            Orientation::from_encoder_shape([8, 8, 2]).unwrap(),
            Orientation::Sagittal
        );
        assert!(Orientation::from_encoder_shape([8, 8, 8]).is_err());
        assert_eq!(Orientation::Coronal.divisor(), [32, 4, 32]);
    }

    #[test]
    fn sagittal_tokens_are_transposed_and_one_hot() {
        let p = Patchifier::new(&PatchifierConfig {
            in_dim: 256,
            d: 30,
            out_dim: 289,
            extra: Default::default(),
        })
        .unwrap();
        let enc = Tensor::arange(256, (Kind::Float, Device::Cpu)).reshape([1, 2, 8, 8, 2]);
        let out = p.forward(&enc, &[[64, 32, 8]]).unwrap();
        assert_eq!(out.size(), [1, 289]);
        let v: Vec<f32> = Vec::try_from(&out.get(0)).unwrap();
        // Transposed (2, 4): out index ch·128 + i·64 + j·8 + l = enc[ch, l, j, i].
        assert_eq!(v[1], enc.double_value(&[0, 0, 1, 0, 0]) as f32);
        assert_eq!(v[64], enc.double_value(&[0, 0, 0, 0, 1]) as f32);
        assert_eq!(&v[286..], &[0.0, 0.0, 1.0]);
        // PE of (64 // 32, 32 // 32, 8 // 4) = (2, 1, 2): sin(0) of axis y's first pair.
        let t = sincos_table(100, 10).unwrap();
        let y1: Vec<f32> = Vec::try_from(&t.get(1)).unwrap();
        assert_eq!(&v[266..276], &y1[..]);
    }
}
