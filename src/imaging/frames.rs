//! One slice's stored values read from its file: a frame of a single- or multi-frame
//! image, or a mosaic's tile, decoded by dicom-pixeldata behind the guards fuzzing showed
//! it needs. The volumes are stacked from these (`series::load_volume`), and the key images
//! show them (`read_plane`).

use std::path::Path;

use dicom_dictionary_std::{tags, uids};
use dicom_pixeldata::PixelDecoder;

use super::header::{file_name, SliceMeta};
use super::skip::{SkipReason, MAX_VOLUME_VALUES};

/// The volume's buffer, refused rather than allocated when a header claims too much.
pub(super) fn allocate_volume([w, h, n]: [usize; 3]) -> Result<Vec<f64>, SkipReason> {
    let values = (w * h)
        .checked_mul(n)
        .filter(|&v| v <= MAX_VOLUME_VALUES)
        .ok_or(SkipReason::TooManyVoxels { w, h, n })?;
    let mut data = Vec::new();
    data.try_reserve_exact(values)
        .map_err(|source| SkipReason::Allocation { w, h, n, source })?;
    Ok(data)
}

/// One slice's pixel values (rescaled, not cast), row by row: what a derived image of that
/// slice shows (the key images drawn for an explanation).
pub fn read_plane(s: &SliceMeta) -> Result<Vec<f64>, SkipReason> {
    let (w, h) = (s.cols as usize, s.rows as usize);
    let mut data = allocate_volume([w, h, 1])?;
    append_stored(&open(&s.path)?, s, [w, h], &mut data)?;
    for v in &mut data {
        *v = s.slope * *v + s.intercept;
    }
    Ok(data)
}

pub(super) fn open(path: &Path) -> Result<dicom_object::DefaultDicomObject, SkipReason> {
    dicom_object::open_file(path).map_err(|source| SkipReason::Unreadable {
        file: file_name(path),
        source: Box::new(source),
    })
}

/// The stored values of slice `s` (a frame, or a mosaic's tile) of the opened file, `h`
/// rows of `w`, appended to `data`.
pub(super) fn append_stored(
    obj: &dicom_object::DefaultDicomObject,
    s: &SliceMeta,
    [w, h]: [usize; 2],
    data: &mut Vec<f64>,
) -> Result<(), SkipReason> {
    let decoded = decode_frame(obj, s.frame.unwrap_or(0))?;
    let mosaic = s.acquisition.mosaic;
    let (fw, fh) = mosaic.map_or((w, h), |m| (m.full_cols as usize, m.full_rows as usize));
    if decoded.rows() as usize != fh || decoded.columns() as usize != fw {
        return Err(SkipReason::FrameSize);
    }
    let bytes = decoded.frame_data(0).map_err(SkipReason::FrameData)?;
    match mosaic {
        None => push_stored_values(data, bytes, decoded.bits_allocated(), s.signed, w * h),
        Some(m) => {
            // One tile: `h` rows of `w` values, each row a slice of the mosaic's row.
            let bpp = (decoded.bits_allocated() as usize).div_ceil(8);
            let (x0, y0) = m.origin(w as u32, h as u32);
            for y in 0..h {
                let start = ((y0 + y) * fw + x0) * bpp;
                let row = bytes.get(start..).ok_or(SkipReason::PixelDataShort {
                    have: bytes.len(),
                    need: start + w * bpp,
                })?;
                push_stored_values(data, row, decoded.bits_allocated(), s.signed, w)?;
            }
            Ok(())
        }
    }
}

/// One frame of an opened file, decoded.
fn decode_frame(
    obj: &dicom_object::DefaultDicomObject,
    frame: u32,
) -> Result<dicom_pixeldata::DecodedPixelData<'_>, SkipReason> {
    // The codecs are third-party code fed with a peer's bytes, and some index out of
    // bounds on malformed fragments (RLE, found by fuzzing): a panic there must skip
    // this series, not take the worker down.
    if rle_segments_exceed_limit(obj) {
        return Err(SkipReason::RleSegments);
    }
    let transfer_syntax = || obj.meta().transfer_syntax().to_string();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        obj.decode_pixel_data_frame(frame)
    }))
    .map_err(|_| SkipReason::DecoderPanicked {
        transfer_syntax: transfer_syntax(),
    })?
    .map_err(|source| SkipReason::Decode {
        transfer_syntax: transfer_syntax(),
        source,
    })
}

/// The RLE decoder allocates its segment table from the fragment header's count before
/// checking it (a 4-byte header asked for 17 GB; found by fuzzing). PS3.5 G.3.1 allows at
/// most 15 segments.
fn rle_segments_exceed_limit(obj: &dicom_object::DefaultDicomObject) -> bool {
    if obj.meta().transfer_syntax().trim_end_matches('\0') != uids::RLE_LOSSLESS {
        return false;
    }
    let Some(frags) = obj
        .element_opt(tags::PIXEL_DATA)
        .ok()
        .flatten()
        .and_then(|e| e.value().fragments())
    else {
        return false;
    };
    frags
        .iter()
        .any(|f| f.len() >= 4 && u32::from_le_bytes([f[0], f[1], f[2], f[3]]) > 15)
}

fn push_stored_values(
    out: &mut Vec<f64>,
    bytes: &[u8],
    bits_allocated: u16,
    signed: bool,
    n: usize,
) -> Result<(), SkipReason> {
    let bpp = (bits_allocated as usize).div_ceil(8);
    if bytes.len() < n * bpp {
        return Err(SkipReason::PixelDataShort {
            have: bytes.len(),
            need: n * bpp,
        });
    }
    let b = &bytes[..n * bpp];
    match (bpp, signed) {
        (1, false) => out.extend(b.iter().map(|&v| v as f64)),
        (1, true) => out.extend(b.iter().map(|&v| v as i8 as f64)),
        (2, false) => out.extend(
            b.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as f64),
        ),
        (2, true) => out.extend(
            b.chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as f64),
        ),
        (4, false) => out.extend(
            b.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64),
        ),
        (4, true) => out.extend(
            b.chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64),
        ),
        _ => return Err(SkipReason::BitsAllocated(bits_allocated)),
    }
    Ok(())
}
