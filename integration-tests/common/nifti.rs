//! NIfTI-1 (single file, `.nii`, uncompressed) as dcm2niix writes it, read just far
//! enough to compare with the node's volumes: dims, pixdim, scaling, sform, voxel values.
//! The 348-byte header is parsed here (a dozen fixed offsets, NIfTI-1 §"nifti1.h"); the
//! Rust NIfTI crates pull in ndarray and gzip for what is a few lines of byte reading.
#![allow(dead_code)]

use std::path::Path;

/// One NIfTI-1 image: header fields and voxel values (scaled by scl_slope/scl_inter when
/// the slope is set), x fastest, then y, z, t.
#[derive(Debug, Clone)]
pub struct Nifti {
    /// dim[0] = number of dimensions, dim[1..=7] sizes.
    pub dim: [i16; 8],
    pub pixdim: [f32; 8],
    pub datatype: i16,
    pub scl_slope: f32,
    pub scl_inter: f32,
    pub qform_code: i16,
    pub sform_code: i16,
    /// sform rows: world (RAS mm) = srow · (i, j, k, 1).
    pub srow: [[f32; 4]; 3],
    pub data: Vec<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum NiftiError {
    #[error("cannot read {0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: shorter than a NIfTI-1 header")]
    Short(String),
    #[error("{0}: sizeof_hdr {1}, not 348 (not little-endian NIfTI-1)")]
    NotNifti1(String, i32),
    #[error("{0}: unsupported datatype {1}")]
    Datatype(String, i16),
    #[error("{file}: {have} bytes of voxels, {need} needed")]
    DataShort {
        file: String,
        have: usize,
        need: usize,
    },
}

fn i16_at(b: &[u8], o: usize) -> i16 {
    i16::from_le_bytes([b[o], b[o + 1]])
}

fn f32_at(b: &[u8], o: usize) -> f32 {
    f32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

impl Nifti {
    pub fn read(path: &Path) -> Result<Nifti, NiftiError> {
        let name = path.display().to_string();
        let b = std::fs::read(path).map_err(|e| NiftiError::Io(name.clone(), e))?;
        if b.len() < 352 {
            return Err(NiftiError::Short(name));
        }
        let sizeof_hdr = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if sizeof_hdr != 348 {
            return Err(NiftiError::NotNifti1(name, sizeof_hdr));
        }
        let dim: [i16; 8] = std::array::from_fn(|i| i16_at(&b, 40 + 2 * i));
        let pixdim: [f32; 8] = std::array::from_fn(|i| f32_at(&b, 76 + 4 * i));
        let datatype = i16_at(&b, 70);
        let vox_offset = f32_at(&b, 108) as usize;
        let srow = [
            std::array::from_fn(|i| f32_at(&b, 280 + 4 * i)),
            std::array::from_fn(|i| f32_at(&b, 296 + 4 * i)),
            std::array::from_fn(|i| f32_at(&b, 312 + 4 * i)),
        ];
        let n: usize = (1..=dim[0].clamp(0, 7) as usize)
            .map(|i| dim[i].max(1) as usize)
            .product();
        let (size, read): (usize, fn(&[u8]) -> f64) = match datatype {
            2 => (1, |c| c[0] as f64),
            256 => (1, |c| c[0] as i8 as f64),
            4 => (2, |c| i16::from_le_bytes([c[0], c[1]]) as f64),
            512 => (2, |c| u16::from_le_bytes([c[0], c[1]]) as f64),
            8 => (4, |c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64),
            768 => (4, |c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64),
            16 => (4, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64),
            64 => (8, |c| f64::from_le_bytes(c[..8].try_into().unwrap())),
            other => return Err(NiftiError::Datatype(name, other)),
        };
        let need = n * size;
        let have = b.len().saturating_sub(vox_offset);
        if have < need {
            return Err(NiftiError::DataShort {
                file: name,
                have,
                need,
            });
        }
        let scl_slope = f32_at(&b, 112);
        let scl_inter = f32_at(&b, 116);
        // scl_slope 0 means "no scaling" (NIfTI-1).
        let (m, a) = if scl_slope != 0.0 && scl_slope.is_finite() {
            (scl_slope as f64, scl_inter as f64)
        } else {
            (1.0, 0.0)
        };
        let data = b[vox_offset..vox_offset + need]
            .chunks_exact(size)
            .map(|c| m * read(c) + a)
            .collect();
        Ok(Nifti {
            dim,
            pixdim,
            datatype,
            scl_slope,
            scl_inter,
            qform_code: i16_at(&b, 252),
            sform_code: i16_at(&b, 254),
            srow,
            data,
        })
    }

    /// (nx, ny, nz, nt), missing dimensions 1.
    pub fn size(&self) -> [usize; 4] {
        std::array::from_fn(|i| {
            if (i + 1) as i16 <= self.dim[0] {
                self.dim[i + 1].max(1) as usize
            } else {
                1
            }
        })
    }

    /// World (RAS) position of voxel (i, j, k).
    pub fn ras(&self, i: f64, j: f64, k: f64) -> [f64; 3] {
        std::array::from_fn(|r| {
            let s = self.srow[r].map(|v| v as f64);
            s[0] * i + s[1] * j + s[2] * k + s[3]
        })
    }

    /// DICOM ImagePositionPatient (LPS) of slice `k`. dcm2niix stores DICOM rows bottom
    /// up (NIfTI j = rows - 1 - DICOM row), so the DICOM first pixel (column 0, row 0) is
    /// voxel (0, ny - 1, k); RAS → LPS negates x and y.
    pub fn dicom_ipp(&self, k: usize) -> [f64; 3] {
        let ny = self.size()[1];
        let p = self.ras(0.0, ny as f64 - 1.0, k as f64);
        [-p[0], -p[1], p[2]]
    }

    /// Values of slice `k` of volume `t` in DICOM pixel order (row 0 first, columns
    /// fastest).
    pub fn dicom_slice(&self, k: usize, t: usize) -> Vec<f64> {
        let [nx, ny, nz, _] = self.size();
        let mut out = Vec::with_capacity(nx * ny);
        for row in 0..ny {
            let j = ny - 1 - row;
            let start = ((t * nz + k) * ny + j) * nx;
            out.extend_from_slice(&self.data[start..start + nx]);
        }
        out
    }
}
