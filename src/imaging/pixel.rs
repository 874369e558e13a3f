//! The ITK pixel type GDCM picks for a series (docs/prima-inference-spec.md §1.6) and the
//! cast back to it after resampling (§3.5).

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelType {
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

impl PixelType {
    /// SimpleITK's pixel id; upstream passes it by accident as the resampler's default
    /// pixel value (§2).
    pub fn sitk_id(self) -> u8 {
        match self {
            PixelType::I8 => 0,
            PixelType::U8 => 1,
            PixelType::I16 => 2,
            PixelType::U16 => 3,
            PixelType::I32 => 4,
            PixelType::U32 => 5,
            PixelType::I64 => 6,
            PixelType::U64 => 7,
            PixelType::F32 => 8,
            PixelType::F64 => 9,
        }
    }

    /// SimpleITK's name of the type (as in the fixtures' `run_record.json`).
    pub fn sitk_name(self) -> &'static str {
        match self {
            PixelType::I8 => "8-bit signed integer",
            PixelType::U8 => "8-bit unsigned integer",
            PixelType::I16 => "16-bit signed integer",
            PixelType::U16 => "16-bit unsigned integer",
            PixelType::I32 => "32-bit signed integer",
            PixelType::U32 => "32-bit unsigned integer",
            PixelType::I64 => "64-bit signed integer",
            PixelType::U64 => "64-bit unsigned integer",
            PixelType::F32 => "32-bit float",
            PixelType::F64 => "64-bit float",
        }
    }

    pub fn is_integer(self) -> bool {
        !matches!(self, PixelType::F32 | PixelType::F64)
    }

    /// (min, max) of an integer type as f64; None for float types.
    pub fn integer_range(self) -> Option<(f64, f64)> {
        Some(match self {
            PixelType::I8 => (i8::MIN as f64, i8::MAX as f64),
            PixelType::U8 => (0.0, u8::MAX as f64),
            PixelType::I16 => (i16::MIN as f64, i16::MAX as f64),
            PixelType::U16 => (0.0, u16::MAX as f64),
            PixelType::I32 => (i32::MIN as f64, i32::MAX as f64),
            PixelType::U32 => (0.0, u32::MAX as f64),
            PixelType::I64 => (i64::MIN as f64, i64::MAX as f64),
            PixelType::U64 => (0.0, u64::MAX as f64),
            PixelType::F32 | PixelType::F64 => return None,
        })
    }

    /// Pixel type from the first file's rescale and stored range (§1.6).
    pub fn from_rescale(slope: f64, intercept: f64, bits_stored: u16, signed: bool) -> PixelType {
        if slope.fract() != 0.0
            || intercept.fract() != 0.0
            || !slope.is_finite()
            || !intercept.is_finite()
        {
            return PixelType::F64;
        }
        let bits = bits_stored.clamp(1, 64) as i32;
        let (lo, hi) = if signed {
            (-(2f64.powi(bits - 1)), 2f64.powi(bits - 1) - 1.0)
        } else {
            (0.0, 2f64.powi(bits) - 1.0)
        };
        let a = slope * lo + intercept;
        let b = slope * hi + intercept;
        let (mn, mx) = (a.min(b), a.max(b));
        let candidates: &[PixelType] = if mn >= 0.0 {
            &[
                PixelType::U8,
                PixelType::U16,
                PixelType::U32,
                PixelType::U64,
            ]
        } else {
            &[
                PixelType::I8,
                PixelType::I16,
                PixelType::I32,
                PixelType::I64,
            ]
        };
        for &t in candidates {
            let (tmin, tmax) = t.integer_range().unwrap();
            if mn >= tmin && mx <= tmax {
                return t;
            }
        }
        PixelType::F64
    }

    /// C++ `static_cast` from double to this type with ITK's clamping (§3.5); identity
    /// for float64. float32 rounds to the nearest float.
    #[inline]
    pub fn cast(self, v: f64) -> f64 {
        match self.integer_range() {
            Some((mn, mx)) => {
                if v <= mn {
                    mn
                } else if v >= mx {
                    mx
                } else {
                    v.trunc()
                }
            }
            None => {
                if self == PixelType::F32 {
                    v as f32 as f64
                } else {
                    v
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_examples_of_spec_1_6() {
        assert_eq!(PixelType::from_rescale(1.0, 0.0, 16, true), PixelType::I16);
        assert_eq!(PixelType::from_rescale(1.0, 0.0, 12, false), PixelType::U16);
        assert_eq!(PixelType::from_rescale(2.0, 0.0, 16, true), PixelType::I32);
        assert_eq!(
            PixelType::from_rescale(1.5, -100.0, 16, true),
            PixelType::F64
        );
        assert_eq!(PixelType::from_rescale(1.0, 0.0, 8, false), PixelType::U8);
        assert_eq!(
            PixelType::from_rescale(1.0, -1024.0, 12, false),
            PixelType::I16
        );
    }

    #[test]
    fn cast_truncates_and_clamps() {
        assert_eq!(PixelType::I16.cast(-3.7), -3.0);
        assert_eq!(PixelType::I16.cast(40000.0), 32767.0);
        assert_eq!(PixelType::U16.cast(-0.5), 0.0);
        assert_eq!(PixelType::F64.cast(1.25), 1.25);
    }
}
