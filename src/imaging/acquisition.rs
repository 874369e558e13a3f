//! What tells the volumes of one series apart, read per image: diffusion b-value and
//! gradient (standard tags and the vendor places dcm2niix reads), echo, image type,
//! temporal position, Enhanced MR dimension indices and stacks, and Siemens mosaics.
//! [`super::volumes`] groups images on these facts.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::csa;
use super::elements::{read_ds, read_int, read_str};

/// Siemens CSA image header, the usual private block.
const SIEMENS_CSA_IMAGE: Tag = Tag(0x0029, 0x1010);
/// Siemens' own copy of NumberOfImagesInMosaic, for a CSA header that cannot be read.
const SIEMENS_MOSAIC_IMAGES: Tag = Tag(0x0019, 0x100a);
/// GE: slop_int_6..9; the first value is the b-value (plus 10^9 on some software).
const GE_BVALUE: Tag = Tag(0x0043, 0x1039);
const GE_GRADIENT: [Tag; 3] = [
    Tag(0x0019, 0x10bb),
    Tag(0x0019, 0x10bc),
    Tag(0x0019, 0x10bd),
];
/// Philips: b-value (FL), direction label ("I" isotropic), gradient (FL × 3 tags).
const PHILIPS_BVALUE: Tag = Tag(0x2001, 0x1003);
const PHILIPS_DIRECTION: Tag = Tag(0x2001, 0x1004);
const PHILIPS_GRADIENT: [Tag; 3] = [
    Tag(0x2005, 0x10b0),
    Tag(0x2005, 0x10b1),
    Tag(0x2005, 0x10b2),
];

const MR_DIFFUSION_SEQUENCE: Tag = Tag(0x0018, 0x9117);
const DIFFUSION_GRADIENT_DIRECTION_SEQUENCE: Tag = Tag(0x0018, 0x9076);
const MR_ECHO_SEQUENCE: Tag = Tag(0x0018, 0x9114);
const MR_IMAGE_FRAME_TYPE_SEQUENCE: Tag = Tag(0x0018, 0x9226);
const FRAME_CONTENT_SEQUENCE: Tag = Tag(0x0020, 0x9111);
const DIMENSION_INDEX_SEQUENCE: Tag = Tag(0x0020, 0x9222);
/// Dimensions that say where a frame lies in space (not what separates volumes), or when
/// (time points are split by `temporal_position`, so the first can be chosen).
const SPATIAL_DIMENSIONS: [Tag; 4] = [
    tags::IN_STACK_POSITION_NUMBER,
    tags::IMAGE_POSITION_PATIENT,
    tags::TEMPORAL_POSITION_INDEX,
    tags::TEMPORAL_POSITION_IDENTIFIER,
];

/// Largest b-value taken as real (s/mm²); clinical ones stay under 10,000.
const MAX_B_VALUE: f64 = 100_000.0;

/// Why an image's header cannot place it in a volume.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HeaderDefect {
    #[error("Siemens CSA header unreadable: {0}")]
    Csa(#[from] csa::CsaError),
    #[error("mosaic: NumberOfImagesInMosaic {images} does not tile a {cols}×{rows} image")]
    MosaicCount { images: i64, cols: u32, rows: u32 },
    #[error("mosaic without NumberOfImagesInMosaic in its CSA header")]
    MosaicWithoutCount,
    #[error("invalid diffusion b-value {0}")]
    BValue(f64),
    #[error("DimensionIndexValues has {values} values for {dimensions} dimensions")]
    DimensionValues { values: usize, dimensions: usize },
    #[error("dimension index points at ({0:04X},{1:04X}), absent from frame {2}")]
    DimensionAbsent(u16, u16, usize),
}

/// One Siemens mosaic tile: which tile of the file's image this slice is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MosaicTile {
    pub index: u32,
    /// Tiles per row (and per column) of the mosaic.
    pub across: u32,
    /// Tiles that hold slices (NumberOfImagesInMosaic).
    pub images: u32,
    pub full_cols: u32,
    pub full_rows: u32,
    /// CSA SliceNormalVector: the direction the tiles follow (it may point against the
    /// row × column normal).
    pub normal: Option<[f64; 3]>,
}

impl MosaicTile {
    /// (first column, first row) of the tile in the mosaic image.
    pub fn origin(&self, cols: u32, rows: u32) -> (usize, usize) {
        let (i, a) = (self.index, self.across);
        (((i % a) * cols) as usize, ((i / a) * rows) as usize)
    }
}

/// What tells the volumes of a series apart, for one image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Acquisition {
    pub manufacturer: Option<String>,
    /// ImageType (or an Enhanced MR frame's FrameType), upper-case.
    pub image_type: Vec<String>,
    /// Enhanced MR ComplexImageComponent (MAGNITUDE, PHASE, REAL, IMAGINARY, MIXED).
    pub complex_component: Option<String>,
    pub echo_number: Option<i64>,
    pub echo_time: Option<f64>,
    pub b_value: Option<f64>,
    pub gradient: Option<[f64; 3]>,
    /// DiffusionDirectionality (ISOTROPIC, DIRECTIONAL, NONE), or Philips' "I" as ISOTROPIC.
    pub directionality: Option<String>,
    pub temporal_position: Option<i64>,
    pub acquisition_number: Option<i64>,
    pub acquisition_time: Option<String>,
    pub stack_id: Option<String>,
    /// Enhanced MR: the frame's dimension index values, spatial dimensions left out.
    pub dimension_values: Vec<u32>,
    /// A Siemens mosaic image's tiling (index 0), as its header gives it.
    pub mosaic_layout: Option<MosaicTile>,
    /// Set on the slices [`super::stack::mosaic_tiles`] cuts from a mosaic: which tile this slice is.
    pub mosaic: Option<MosaicTile>,
    /// SliceThickness: a mosaic's slice step when SpacingBetweenSlices is absent.
    pub slice_thickness: Option<f64>,
    pub defect: Option<HeaderDefect>,
}

/// Numbers of an element, whatever VR it was read with: private tags in Implicit VR files
/// arrive as UN bytes (text for GE's IS/DS, little-endian floats for Philips' FL).
fn private_numbers(obj: &InMemDicomObject, tag: Tag, float32: bool) -> Option<Vec<f64>> {
    let e = obj.get(tag)?;
    if e.vr() != dicom_core::VR::UN {
        return read_ds(obj, tag);
    }
    let b = e.value().to_bytes().ok()?;
    if float32 {
        let v: Vec<f64> = b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect();
        (!v.is_empty()).then_some(v)
    } else {
        let s = String::from_utf8_lossy(&b);
        let v: Option<Vec<f64>> = s
            .split('\\')
            .map(|p| p.trim_matches([' ', '\0']).parse().ok())
            .collect();
        v.filter(|v| !v.is_empty())
    }
}

fn vec3(v: Option<Vec<f64>>) -> Option<[f64; 3]> {
    v.and_then(|v| v.get(..3).map(|s| [s[0], s[1], s[2]]))
}

fn first_item(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    obj.get(tag)?.value().items()?.first()
}

/// The data set's own facts (a single-frame image, or every frame's defaults).
pub fn read_acquisition(obj: &InMemDicomObject) -> Acquisition {
    let manufacturer = read_str(obj, tags::MANUFACTURER);
    let maker = manufacturer
        .clone()
        .unwrap_or_default()
        .to_ascii_uppercase();
    let mut a = Acquisition {
        image_type: image_type(obj, tags::IMAGE_TYPE),
        echo_number: read_int(obj, tags::ECHO_NUMBERS),
        echo_time: read_ds(obj, tags::ECHO_TIME).map(|v| v[0]),
        b_value: read_ds(obj, tags::DIFFUSION_B_VALUE).map(|v| v[0]),
        gradient: vec3(read_ds(obj, tags::DIFFUSION_GRADIENT_ORIENTATION)),
        directionality: read_str(obj, tags::DIFFUSION_DIRECTIONALITY),
        temporal_position: read_int(obj, tags::TEMPORAL_POSITION_IDENTIFIER),
        acquisition_number: read_int(obj, tags::ACQUISITION_NUMBER),
        acquisition_time: read_str(obj, tags::ACQUISITION_TIME),
        slice_thickness: read_ds(obj, tags::SLICE_THICKNESS).map(|v| v[0]),
        manufacturer,
        ..Acquisition::default()
    };
    if maker.contains("SIEMENS") {
        siemens(obj, &mut a);
    } else if maker.starts_with("GE") {
        if a.b_value.is_none() {
            // GE adds 10^9 to the b-value on some software versions.
            a.b_value = private_numbers(obj, GE_BVALUE, false).map(|v| v[0] % 1e9);
        }
        if a.gradient.is_none() {
            let g: Option<Vec<f64>> = GE_GRADIENT
                .iter()
                .map(|t| private_numbers(obj, *t, false).map(|v| v[0]))
                .collect();
            a.gradient = vec3(g);
        }
    } else if maker.contains("PHILIPS") {
        if a.b_value.is_none() {
            a.b_value = private_numbers(obj, PHILIPS_BVALUE, true).map(|v| v[0]);
        }
        if a.gradient.is_none() {
            let g: Option<Vec<f64>> = PHILIPS_GRADIENT
                .iter()
                .map(|t| private_numbers(obj, *t, true).map(|v| v[0]))
                .collect();
            a.gradient = vec3(g);
        }
        if a.directionality.is_none() && read_str(obj, PHILIPS_DIRECTION).as_deref() == Some("I") {
            a.directionality = Some("ISOTROPIC".into());
        }
    }
    check_b_value(&mut a);
    a
}

fn image_type(obj: &InMemDicomObject, tag: Tag) -> Vec<String> {
    obj.get(tag)
        .and_then(|e| e.value().to_multi_str().ok())
        .map(|v| v.iter().map(|s| s.trim().to_ascii_uppercase()).collect())
        .unwrap_or_default()
}

fn check_b_value(a: &mut Acquisition) {
    if let Some(b) = a.b_value {
        if !(b.is_finite() && (0.0..=MAX_B_VALUE).contains(&b)) && a.defect.is_none() {
            a.defect = Some(HeaderDefect::BValue(b));
        }
    }
    if a.gradient.is_some_and(|g| g.iter().any(|v| !v.is_finite())) {
        a.gradient = None;
    }
}

/// B-value, gradient and mosaic tiling from the CSA image header.
fn siemens(obj: &InMemDicomObject, a: &mut Acquisition) {
    let mosaic = a.image_type.iter().any(|t| t == "MOSAIC");
    let Some(bytes) = obj
        .get(SIEMENS_CSA_IMAGE)
        .and_then(|e| e.value().to_bytes().ok())
    else {
        // No CSA header (an anonymiser may strip it): Siemens' own (0019,100A) still gives
        // the tile count (dcm2niix reads it too); the slice normal comes from the
        // orientation.
        if mosaic {
            match private_numbers(obj, SIEMENS_MOSAIC_IMAGES, false) {
                Some(n) => mosaic_from_count(obj, a, n[0], None),
                None => a.defect = Some(HeaderDefect::MosaicWithoutCount),
            }
        }
        return;
    };
    let h = match csa::parse(&bytes) {
        Ok(h) => h,
        Err(e) => {
            // A corrupt header says nothing trustworthy about the tiles or the diffusion
            // encoding; only images that need neither are usable without it.
            if mosaic || a.b_value.is_none() {
                a.defect = Some(HeaderDefect::Csa(e));
            }
            return;
        }
    };
    if a.b_value.is_none() {
        a.b_value = h.number("B_value");
    }
    if a.gradient.is_none() {
        a.gradient = vec3(h.numbers("DiffusionGradientDirection"));
    }
    if mosaic {
        match h.number("NumberOfImagesInMosaic") {
            None => a.defect = Some(HeaderDefect::MosaicWithoutCount),
            Some(n) => mosaic_from_count(obj, a, n, vec3(h.numbers("SliceNormalVector"))),
        }
    }
}

fn mosaic_from_count(
    obj: &InMemDicomObject,
    a: &mut Acquisition,
    n: f64,
    normal: Option<[f64; 3]>,
) {
    let rows = read_int(obj, tags::ROWS)
        .unwrap_or(0)
        .clamp(0, u32::MAX as i64) as u32;
    let cols = read_int(obj, tags::COLUMNS)
        .unwrap_or(0)
        .clamp(0, u32::MAX as i64) as u32;
    match mosaic_layout(n, cols, rows) {
        Some(across) => {
            a.mosaic_layout = Some(MosaicTile {
                index: 0,
                across,
                images: n as u32,
                full_cols: cols,
                full_rows: rows,
                normal,
            })
        }
        None => {
            a.defect = Some(HeaderDefect::MosaicCount {
                images: n as i64,
                cols,
                rows,
            })
        }
    }
}

/// Tiles per row of a mosaic of `n` images in a `cols`×`rows` image: the smallest square
/// holding `n`. Tiles are `cols / across` wide (rounded down: Siemens leaves the rest of the
/// image empty, e.g. 48 tiles of 36×36 in 256×256).
pub fn mosaic_layout(n: f64, cols: u32, rows: u32) -> Option<u32> {
    if !(n.is_finite() && n >= 1.0 && n.fract() == 0.0 && n <= 4096.0) {
        return None;
    }
    let across = n.sqrt().ceil() as u32;
    (across > 0 && cols / across >= 1 && rows / across >= 1).then_some(across)
}

/// The facts a frame of an Enhanced (or Legacy Converted Enhanced) MR instance adds to its
/// data set's: per-frame functional group first, then shared.
pub fn apply_frame(
    a: &mut Acquisition,
    frame: usize,
    per_frame: Option<&InMemDicomObject>,
    shared: Option<&InMemDicomObject>,
    dimensions: &[(Tag, Option<Tag>)],
) {
    let group = |seq: Tag| {
        per_frame
            .and_then(|f| first_item(f, seq))
            .or_else(|| shared.and_then(|s| first_item(s, seq)))
    };
    if let Some(ft) = group(MR_IMAGE_FRAME_TYPE_SEQUENCE) {
        let t = image_type(ft, tags::FRAME_TYPE);
        if !t.is_empty() {
            a.image_type = t;
        }
        a.complex_component = read_str(ft, tags::COMPLEX_IMAGE_COMPONENT);
    }
    if let Some(e) = group(MR_ECHO_SEQUENCE) {
        a.echo_time = read_ds(e, tags::EFFECTIVE_ECHO_TIME).map(|v| v[0]);
    }
    if let Some(d) = group(MR_DIFFUSION_SEQUENCE) {
        a.b_value = read_ds(d, tags::DIFFUSION_B_VALUE).map(|v| v[0]);
        a.directionality = read_str(d, tags::DIFFUSION_DIRECTIONALITY);
        a.gradient = first_item(d, DIFFUSION_GRADIENT_DIRECTION_SEQUENCE)
            .and_then(|g| vec3(read_ds(g, tags::DIFFUSION_GRADIENT_ORIENTATION)));
    }
    if let Some(fc) = group(FRAME_CONTENT_SEQUENCE) {
        a.stack_id = read_str(fc, tags::STACK_ID);
        if let Some(t) = read_int(fc, tags::TEMPORAL_POSITION_INDEX) {
            a.temporal_position = Some(t);
        }
        let values = fc
            .get(tags::DIMENSION_INDEX_VALUES)
            .and_then(|e| e.value().to_multi_int::<u32>().ok())
            .unwrap_or_default();
        if !dimensions.is_empty() {
            if values.len() != dimensions.len() {
                a.defect = Some(HeaderDefect::DimensionValues {
                    values: values.len(),
                    dimensions: dimensions.len(),
                });
            } else {
                a.dimension_values = dimensions
                    .iter()
                    .zip(&values)
                    .filter(|((t, _), _)| !SPATIAL_DIMENSIONS.contains(t))
                    .map(|(_, v)| *v)
                    .collect();
            }
        }
    } else if !dimensions.is_empty() {
        a.defect = Some(HeaderDefect::DimensionValues {
            values: 0,
            dimensions: dimensions.len(),
        });
    }
    for (pointer, fg) in dimensions {
        let Some(fg) = fg else { continue };
        let present = group(*fg).is_some_and(|item| item.get(*pointer).is_some());
        if !present && a.defect.is_none() {
            a.defect = Some(HeaderDefect::DimensionAbsent(pointer.0, pointer.1, frame));
        }
    }
    check_b_value(a);
}

/// The Dimension Index Sequence: (pointer, functional group pointer) per dimension.
pub fn dimensions(obj: &InMemDicomObject) -> Vec<(Tag, Option<Tag>)> {
    let Some(items) = obj
        .get(DIMENSION_INDEX_SEQUENCE)
        .and_then(|e| e.value().items())
    else {
        return Vec::new();
    };
    let tag_of = |item: &InMemDicomObject, t: Tag| item.get(t)?.value().to_tag().ok();
    items
        .iter()
        .map(|item| {
            (
                tag_of(item, tags::DIMENSION_INDEX_POINTER).unwrap_or(Tag(0, 0)),
                tag_of(item, tags::FUNCTIONAL_GROUP_POINTER),
            )
        })
        .collect()
}
