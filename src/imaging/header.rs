//! One instance's header → the facts the pipeline needs of each image it holds
//! ([`SliceMeta`]: one per file, or one per frame of an Enhanced MR file, from the
//! per-frame or shared functional groups). Header values that size something are checked
//! against the file's bytes before anything is allocated from them.
use std::path::{Path, PathBuf};

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;

use super::acquisition::{self, Acquisition};
use super::elements::{read_ds, read_int, read_str};
use super::itk;

const SHARED_FG: Tag = Tag(0x5200, 0x9229);
const PER_FRAME_FG: Tag = Tag(0x5200, 0x9230);

/// Header facts of one image (one single-frame file, or one frame of a multi-frame file).
#[derive(Debug, Clone, PartialEq)]
pub struct SliceMeta {
    pub path: PathBuf,
    /// Frame index for multi-frame files.
    pub frame: Option<u32>,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub series_instance_uid: String,
    pub study_instance_uid: String,
    /// Frame of Reference UID: the patient coordinate system the geometry is given in.
    pub frame_of_reference_uid: Option<String>,
    pub modality: Option<String>,
    pub series_number: Option<i64>,
    pub instance_number: Option<i64>,
    pub rows: u32,
    pub cols: u32,
    pub ipp: Option<[f64; 3]>,
    pub iop: Option<[f64; 6]>,
    /// (row spacing, column spacing) as in DICOM PixelSpacing.
    pub pixel_spacing: Option<[f64; 2]>,
    pub spacing_between_slices: Option<f64>,
    pub slope: f64,
    pub intercept: f64,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub signed: bool,
    pub samples_per_pixel: u16,
    pub photometric: String,
    /// `Err(())` when the attribute is multi-valued (upstream's name code raises then).
    pub series_description: Result<Option<String>, ()>,
    pub protocol_name: Result<Option<String>, ()>,
    pub study_description: Option<String>,
    /// What tells this image's volume apart from the series' other volumes.
    pub acquisition: Acquisition,
}

impl SliceMeta {
    /// A 1×1 single-frame image with no geometry and empty UIDs, for tests to fill in.
    #[cfg(test)]
    pub(crate) fn blank() -> SliceMeta {
        SliceMeta {
            path: PathBuf::new(),
            frame: None,
            sop_instance_uid: String::new(),
            sop_class_uid: String::new(),
            series_instance_uid: String::new(),
            study_instance_uid: String::new(),
            frame_of_reference_uid: None,
            modality: None,
            series_number: None,
            instance_number: None,
            rows: 1,
            cols: 1,
            ipp: None,
            iop: None,
            pixel_spacing: None,
            spacing_between_slices: None,
            slope: 1.0,
            intercept: 0.0,
            bits_allocated: 16,
            bits_stored: 16,
            signed: false,
            samples_per_pixel: 1,
            photometric: "MONOCHROME2".into(),
            series_description: Ok(None),
            protocol_name: Ok(None),
            study_description: None,
            acquisition: Acquisition::default(),
        }
    }

    /// Position along the slice normal r × c of this slice's own orientation.
    pub fn position_along_normal(&self) -> Option<f64> {
        let (ipp, iop) = (self.ipp?, self.iop?);
        let d = itk::direction_from_iop(&iop);
        Some(ipp[0] * d[0][2] + ipp[1] * d[1][2] + ipp[2] * d[2][2])
    }
}

/// Single-valued text: `Err(())` if the attribute holds several values.
fn read_single_str(obj: &InMemDicomObject, tag: Tag) -> Result<Option<String>, ()> {
    match obj.get(tag) {
        None => Ok(None),
        Some(e) => {
            let vals = e.value().to_multi_str().map_err(|_| ())?;
            match vals.len() {
                0 => Ok(Some(String::new())),
                1 => Ok(Some(
                    vals[0]
                        .trim_end_matches(['\0', ' '])
                        .trim_start_matches(' ')
                        .to_string(),
                )),
                _ => Err(()),
            }
        }
    }
}

fn first_item(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    obj.get(tag)?.value().items()?.first()
}

/// Look an attribute up in a functional-group sequence: per-frame item first, then shared.
fn fg_lookup<'a>(
    per_frame: Option<&'a InMemDicomObject>,
    shared: Option<&'a InMemDicomObject>,
    seq: Tag,
) -> Option<&'a InMemDicomObject> {
    per_frame
        .and_then(|f| first_item(f, seq))
        .or_else(|| shared.and_then(|s| first_item(s, seq)))
}

/// Why a file gives no slice headers.
#[derive(Debug, thiserror::Error)]
pub enum SliceHeaderError {
    // Boxed: the reader's error is large, and a header result is kept per file.
    #[error("not a readable DICOM file: {0}")]
    NotDicom(#[source] Box<dicom_object::ReadError>),
    #[error("no Rows (not an image)")]
    NoRows,
    #[error("no Columns (not an image)")]
    NoColumns,
    #[error("NumberOfFrames {frames} is more than the {max} an instance may have", max = MAX_FRAMES)]
    TooManyFrames { frames: i64 },
    #[error("cannot stat {file}: {source}")]
    Stat {
        file: String,
        source: std::io::Error,
    },
    #[error("NumberOfFrames {frames} needs at least {needed} bytes of pixel data; the file has {file_len}")]
    FramesExceedFile {
        frames: i64,
        needed: u64,
        file_len: u64,
    },
}

/// Header(s) of one file: one entry per frame. `Err` if the file is not a DICOM image.
pub fn read_slice_headers(path: &Path) -> Result<Vec<SliceMeta>, SliceHeaderError> {
    // Text decoded as (0008,0005) says: the series name comes from it, and whether a
    // description is multi-valued is decided on the decoded text.
    let obj =
        super::charset::open_header(path).map_err(|e| SliceHeaderError::NotDicom(Box::new(e)))?;
    let rows = read_int(&obj, tags::ROWS).ok_or(SliceHeaderError::NoRows)?;
    let cols = read_int(&obj, tags::COLUMNS).ok_or(SliceHeaderError::NoColumns)?;
    let base = SliceMeta {
        path: path.to_path_buf(),
        frame: None,
        sop_instance_uid: read_str(&obj, tags::SOP_INSTANCE_UID).unwrap_or_default(),
        sop_class_uid: read_str(&obj, tags::SOP_CLASS_UID).unwrap_or_default(),
        series_instance_uid: read_str(&obj, tags::SERIES_INSTANCE_UID).unwrap_or_default(),
        study_instance_uid: read_str(&obj, tags::STUDY_INSTANCE_UID).unwrap_or_default(),
        frame_of_reference_uid: read_str(&obj, tags::FRAME_OF_REFERENCE_UID),
        modality: read_str(&obj, tags::MODALITY),
        series_number: read_int(&obj, tags::SERIES_NUMBER),
        instance_number: read_int(&obj, tags::INSTANCE_NUMBER),
        rows: rows.clamp(0, u32::MAX as i64) as u32,
        cols: cols.clamp(0, u32::MAX as i64) as u32,
        ipp: read_ds(&obj, tags::IMAGE_POSITION_PATIENT).and_then(|v| v.try_into().ok()),
        iop: read_ds(&obj, tags::IMAGE_ORIENTATION_PATIENT).and_then(|v| v.try_into().ok()),
        pixel_spacing: read_ds(&obj, tags::PIXEL_SPACING).and_then(|v| v.try_into().ok()),
        spacing_between_slices: read_ds(&obj, tags::SPACING_BETWEEN_SLICES)
            .and_then(|v| v.first().copied()),
        slope: read_ds(&obj, tags::RESCALE_SLOPE)
            .and_then(|v| v.first().copied())
            .unwrap_or(1.0),
        intercept: read_ds(&obj, tags::RESCALE_INTERCEPT)
            .and_then(|v| v.first().copied())
            .unwrap_or(0.0),
        bits_allocated: read_int(&obj, tags::BITS_ALLOCATED).unwrap_or(16) as u16,
        bits_stored: read_int(&obj, tags::BITS_STORED)
            .or_else(|| read_int(&obj, tags::BITS_ALLOCATED))
            .unwrap_or(16) as u16,
        signed: read_int(&obj, tags::PIXEL_REPRESENTATION).unwrap_or(0) == 1,
        samples_per_pixel: read_int(&obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1) as u16,
        photometric: read_str(&obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default(),
        series_description: read_single_str(&obj, tags::SERIES_DESCRIPTION),
        protocol_name: read_single_str(&obj, tags::PROTOCOL_NAME),
        study_description: read_str(&obj, tags::STUDY_DESCRIPTION),
        acquisition: acquisition::read_acquisition(&obj),
    };
    let frames = read_int(&obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
    check_frames_fit(path, &obj, frames, &base)?;
    let per_frame_items = obj.get(PER_FRAME_FG).and_then(|e| e.value().items());
    if frames == 1 && per_frame_items.is_none() {
        return Ok(vec![base]);
    }
    let shared = first_item(&obj, SHARED_FG);
    let dimensions = acquisition::dimensions(&obj);
    let mut out = Vec::with_capacity(frames as usize);
    for f in 0..frames as usize {
        let pf = per_frame_items.and_then(|items| items.get(f));
        let mut m = base.clone();
        m.frame = Some(f as u32);
        acquisition::apply_frame(&mut m.acquisition, f, pf, shared, &dimensions);
        if let Some(pos) = fg_lookup(pf, shared, tags::PLANE_POSITION_SEQUENCE) {
            m.ipp = read_ds(pos, tags::IMAGE_POSITION_PATIENT).and_then(|v| v.try_into().ok());
        }
        if let Some(o) = fg_lookup(pf, shared, tags::PLANE_ORIENTATION_SEQUENCE) {
            m.iop = read_ds(o, tags::IMAGE_ORIENTATION_PATIENT).and_then(|v| v.try_into().ok());
        }
        if let Some(pm) = fg_lookup(pf, shared, tags::PIXEL_MEASURES_SEQUENCE) {
            if let Some(ps) = read_ds(pm, tags::PIXEL_SPACING).and_then(|v| v.try_into().ok()) {
                m.pixel_spacing = Some(ps);
            }
            if let Some(sb) = read_ds(pm, tags::SPACING_BETWEEN_SLICES) {
                m.spacing_between_slices = sb.first().copied();
            }
        }
        if let Some(pv) = fg_lookup(pf, shared, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE) {
            if let Some(s) = read_ds(pv, tags::RESCALE_SLOPE) {
                m.slope = s[0];
            }
            if let Some(i) = read_ds(pv, tags::RESCALE_INTERCEPT) {
                m.intercept = i[0];
            }
        }
        out.push(m);
    }
    Ok(out)
}

/// Frames one instance may claim: far above any MR acquisition (a 4D series rarely has
/// more than a few thousand), far below what would make the header loop a denial of service.
pub const MAX_FRAMES: i64 = 16_384;

/// A header value sizes the per-frame loop (and later the volume buffer): refuse a frame
/// count the file's bytes cannot hold before anything is allocated from it. Native pixel
/// data needs rows × columns × samples × bytes per frame; encapsulated needs at least one
/// 8-byte item header per frame.
fn check_frames_fit(
    path: &Path,
    obj: &dicom_object::DefaultDicomObject,
    frames: i64,
    m: &SliceMeta,
) -> Result<(), SliceHeaderError> {
    if frames > MAX_FRAMES {
        return Err(SliceHeaderError::TooManyFrames { frames });
    }
    let encapsulated = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(obj.meta().transfer_syntax())
        .is_none_or(|ts| ts.is_encapsulated_pixel_data());
    let per_frame: u64 = if encapsulated {
        8
    } else {
        (m.rows as u64 * m.cols as u64 * m.samples_per_pixel.max(1) as u64)
            .saturating_mul(m.bits_allocated.max(1) as u64)
            .div_ceil(8)
            .max(1)
    };
    let file_len = std::fs::metadata(path)
        .map_err(|source| SliceHeaderError::Stat {
            file: file_name(path),
            source,
        })?
        .len();
    let needed = per_frame.saturating_mul(frames as u64);
    if needed > file_len {
        return Err(SliceHeaderError::FramesExceedFile {
            frames,
            needed,
            file_len,
        });
    }
    Ok(())
}

pub(super) fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One synthetic instance with `tag` set to `value`, written to a temporary folder.
    fn instance_with(tag: Tag, vr: dicom_core::VR, value: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let files =
            crate::synth::write_study(&crate::synth::SynthStudy::brain(1), d.path()).unwrap();
        let mut obj = dicom_object::open_file(&files[0]).unwrap();
        obj.put(dicom_core::DataElement::new(
            tag,
            vr,
            dicom_core::PrimitiveValue::from(value),
        ));
        let p = d.path().join("changed.dcm");
        obj.write_to_file(&p).unwrap();
        (d, p)
    }

    /// Issue 28 item 5: 淺 is 0x9C 0x5C in GB18030. Split on the raw 0x5C, the
    /// description looked two-valued and the series lost its name.
    #[test]
    fn a_gb18030_description_with_a_0x5c_trail_byte_is_one_value() {
        let d = tempfile::tempdir().unwrap();
        let files =
            crate::synth::write_study(&crate::synth::SynthStudy::brain(1), d.path()).unwrap();
        let mut obj = dicom_object::open_file(&files[0]).unwrap();
        for (tag, vr, bytes) in [
            (
                tags::SPECIFIC_CHARACTER_SET,
                dicom_core::VR::CS,
                &b"GB18030 "[..],
            ),
            (
                tags::SERIES_DESCRIPTION,
                dicom_core::VR::LO,
                b"\x9c\x5c T1 ",
            ),
            (tags::PROTOCOL_NAME, dicom_core::VR::LO, b"\x9c\x5c"),
        ] {
            obj.put(dicom_core::DataElement::new(
                tag,
                vr,
                dicom_core::PrimitiveValue::U8(bytes.into()),
            ));
        }
        let p = d.path().join("changed.dcm");
        obj.write_to_file(&p).unwrap();
        let m = &read_slice_headers(&p).unwrap()[0];
        assert_eq!(m.series_description, Ok(Some("淺 T1".to_string())));
        assert_eq!(m.protocol_name, Ok(Some("淺".to_string())));
    }

    #[test]
    fn a_frame_count_the_file_cannot_hold_is_refused_before_allocating() {
        // Issue 14: this instance aborted the node (944 GB reserved for the frame headers).
        let (_d, p) = instance_with(tags::NUMBER_OF_FRAMES, dicom_core::VR::IS, "2147483647");
        let e = read_slice_headers(&p).unwrap_err().to_string();
        assert!(e.contains("NumberOfFrames 2147483647"), "{e}");
        // Within the limit but more than the pixel data holds.
        let (_d, p) = instance_with(tags::NUMBER_OF_FRAMES, dicom_core::VR::IS, "64");
        let e = read_slice_headers(&p).unwrap_err().to_string();
        assert!(e.contains("needs at least"), "{e}");
        // The count the file really has is accepted.
        let (_d, p) = instance_with(tags::NUMBER_OF_FRAMES, dicom_core::VR::IS, "1");
        assert_eq!(read_slice_headers(&p).unwrap().len(), 1);
    }
}
