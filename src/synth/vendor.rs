//! Vendor-like MR series: the shapes real scanners send that are not one volume per
//! SeriesInstanceUID (issue 28) — diffusion with several b-values, magnitude + phase,
//! 4D time series, 3-plane localizers, Siemens mosaics, Enhanced MR with stacks, time
//! points and echoes, Legacy Converted Enhanced MR, mixed matrix — each with the private
//! and standard attributes dcm2niix reads to split them (its `nii_dicom.cpp`), so dcm2niix
//! can serve as the outside reference. Hostile variants (flags) break exactly those
//! attributes. Pixel data is the head phantom with a per-volume contrast, so a slice put
//! in the wrong volume shows in the values. Deterministic for a given seed.
use std::path::{Path, PathBuf};

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;

use super::{
    cross, ds, item, orientation, phantom, put_str, seq, uid, write_part10, Lcg, Plane,
    SeriesHeader, SynthSeries, SynthStudy,
};

/// Enhanced MR Image Storage.
pub const ENHANCED_MR: &str = "1.2.840.10008.5.1.4.1.1.4.1";
/// Legacy Converted Enhanced MR Image Storage.
pub const LEGACY_CONVERTED_ENHANCED_MR: &str = "1.2.840.10008.5.1.4.1.1.4.4";

const SHARED_FG: Tag = Tag(0x5200, 0x9229);
const PER_FRAME_FG: Tag = Tag(0x5200, 0x9230);
const FRAME_CONTENT_SEQ: Tag = Tag(0x0020, 0x9111);
const STACK_ID: Tag = Tag(0x0020, 0x9056);
const IN_STACK_POSITION: Tag = Tag(0x0020, 0x9057);
const TEMPORAL_POSITION_INDEX: Tag = Tag(0x0020, 0x9128);
const DIMENSION_INDEX_VALUES: Tag = Tag(0x0020, 0x9157);
const MR_ECHO_SEQ: Tag = Tag(0x0018, 0x9114);
const EFFECTIVE_ECHO_TIME: Tag = Tag(0x0018, 0x9082);
const DIFFUSION_B_VALUE: Tag = Tag(0x0018, 0x9087);
const DIFFUSION_DIRECTIONALITY: Tag = Tag(0x0018, 0x9075);
const CSA_IMAGE_HEADER: Tag = Tag(0x0029, 0x1010);

/// One generated case: a name (also its folder name in [`write_case`]) and its writer.
#[derive(Clone, Copy)]
pub struct VendorCase {
    pub name: &'static str,
    pub write: fn(&Path, u64) -> std::io::Result<Vec<PathBuf>>,
}

/// The realistic cases, each one series (the Enhanced MR ones one instance).
pub fn cases() -> Vec<VendorCase> {
    let c = |name, write| VendorCase { name, write };
    vec![
        c("plain_axial", plain_axial),
        c("siemens_dwi_trace", |d, s| {
            siemens_dwi_trace(d, s, SiemensDwi::default())
        }),
        c("siemens_dwi_standard_bvalue", |d, s| {
            let o = SiemensDwi {
                standard_b_value: true,
                ..SiemensDwi::default()
            };
            siemens_dwi_trace(d, s, o)
        }),
        c("ge_dwi_multib", |d, s| ge_dwi(d, s, GeDwi::default())),
        c("ge_dwi_multib_1e9", |d, s| {
            let o = GeDwi {
                billion_offset: true,
                ..GeDwi::default()
            };
            ge_dwi(d, s, o)
        }),
        c("philips_dwi_isotropic", |d, s| {
            philips_dwi(d, s, BValueFault::None)
        }),
        c("swi_mag_phase", swi_mag_phase),
        c("perfusion_4d", perfusion_4d),
        c("localizer_3plane", localizer_3plane),
        c("siemens_mosaic", |d, s| {
            siemens_mosaic(d, s, Mosaic::default())
        }),
        c("enhanced_plain", |d, s| {
            enhanced_mr(d, s, EnhancedLayout::Plain, DimensionFault::None)
        }),
        c("enhanced_two_stacks", |d, s| {
            enhanced_mr(d, s, EnhancedLayout::TwoStacks, DimensionFault::None)
        }),
        c("enhanced_time_series", |d, s| {
            enhanced_mr(d, s, EnhancedLayout::TimeSeries, DimensionFault::None)
        }),
        c("enhanced_two_echoes", |d, s| {
            enhanced_mr(d, s, EnhancedLayout::TwoEchoes, DimensionFault::None)
        }),
        c("legacy_converted", legacy_converted_enhanced),
        c("mixed_matrix", mixed_matrix),
    ]
}

fn mosaic(images: u32) -> Mosaic {
    Mosaic {
        images_in_mosaic: Some(images),
        ..Mosaic::default()
    }
}

fn csa_fault(fault: CsaFault) -> Mosaic {
    Mosaic {
        csa: fault,
        ..Mosaic::default()
    }
}

fn dwi(b_value: BValueFault) -> SiemensDwi {
    SiemensDwi {
        b_value,
        ..SiemensDwi::default()
    }
}

/// The hostile variants: each breaks one attribute that splits or sizes a volume.
pub fn hostile_cases() -> Vec<VendorCase> {
    let c = |name, write| VendorCase { name, write };
    vec![
        c("mosaic_images_0", |d, s| siemens_mosaic(d, s, mosaic(0))),
        c("mosaic_images_1e6", |d, s| {
            siemens_mosaic(d, s, mosaic(1_000_000))
        }),
        // 16 tiles of the 72×72 acquisition matrix need 288×288; the image has 216×216.
        c("mosaic_images_too_many_tiles", |d, s| {
            siemens_mosaic(d, s, mosaic(16))
        }),
        c("mosaic_csa_truncated", |d, s| {
            siemens_mosaic(d, s, csa_fault(CsaFault::Truncated))
        }),
        c("mosaic_csa_tag_count_huge", |d, s| {
            siemens_mosaic(d, s, csa_fault(CsaFault::TagCountHuge))
        }),
        c("mosaic_csa_item_past_end", |d, s| {
            siemens_mosaic(d, s, csa_fault(CsaFault::ItemLengthPastEnd))
        }),
        c("mosaic_csa_not_sv10", |d, s| {
            siemens_mosaic(d, s, csa_fault(CsaFault::NotSv10))
        }),
        c("siemens_dwi_b_nan", |d, s| {
            siemens_dwi_trace(d, s, dwi(BValueFault::NaN))
        }),
        c("siemens_dwi_b_negative", |d, s| {
            siemens_dwi_trace(d, s, dwi(BValueFault::Negative))
        }),
        c("siemens_dwi_b_huge", |d, s| {
            siemens_dwi_trace(d, s, dwi(BValueFault::Huge))
        }),
        c("ge_dwi_b_negative", |d, s| {
            let o = GeDwi {
                b_value: BValueFault::Negative,
                ..GeDwi::default()
            };
            ge_dwi(d, s, o)
        }),
        c("ge_dwi_b_huge", |d, s| {
            let o = GeDwi {
                b_value: BValueFault::Huge,
                ..GeDwi::default()
            };
            ge_dwi(d, s, o)
        }),
        c("philips_dwi_b_nan", |d, s| {
            philips_dwi(d, s, BValueFault::NaN)
        }),
        c("philips_dwi_b_huge", |d, s| {
            philips_dwi(d, s, BValueFault::Huge)
        }),
        c("enhanced_dimension_absent_tag", |d, s| {
            enhanced_mr(
                d,
                s,
                EnhancedLayout::TimeSeries,
                DimensionFault::PointerToAbsentTag,
            )
        }),
        c("enhanced_dimension_value_count", |d, s| {
            enhanced_mr(
                d,
                s,
                EnhancedLayout::TimeSeries,
                DimensionFault::ValueCountMismatch,
            )
        }),
    ]
}

/// Write `case` into `out/<name>/` and return its files.
pub fn write_case(case: &VendorCase, out: &Path, seed: u64) -> std::io::Result<Vec<PathBuf>> {
    let dir = out.join(case.name);
    std::fs::create_dir_all(&dir)?;
    (case.write)(&dir, seed)
}

/// A realistic study of at least `min_instances` instances: every realistic case, again
/// with the next seed (new series) until there are enough, all put in one study of one
/// patient (`prima-node synth-study --vendor`, the preparation benchmark).
pub fn write_study(out: &Path, seed: u64, min_instances: usize) -> std::io::Result<Vec<PathBuf>> {
    let study = uid(seed, &["vendor", "study"]);
    let mut files = Vec::new();
    let mut round = 0;
    while files.len() < min_instances.max(1) {
        // The variants of one generator share its UIDs: one of each.
        for case in cases()
            .into_iter()
            .filter(|c| !matches!(c.name, "siemens_dwi_standard_bvalue" | "ge_dwi_multib_1e9"))
        {
            let dir = out.join(format!("set{round}"));
            files.extend(write_case(&case, &dir, seed + round)?);
        }
        round += 1;
    }
    for f in &files {
        let mut o = dicom_object::open_file(f).map_err(std::io::Error::other)?;
        for (tag, vr, v) in [
            (tags::STUDY_INSTANCE_UID, VR::UI, study.as_str()),
            (tags::PATIENT_ID, VR::LO, "VENDOR-1"),
            (tags::PATIENT_NAME, VR::PN, "Vendor^Study"),
        ] {
            o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
        }
        o.write_to_file(f).map_err(std::io::Error::other)?;
    }
    Ok(files)
}

/// A b-value broken the ways a header can break it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BValueFault {
    #[default]
    None,
    NaN,
    Negative,
    /// Far beyond any scanner (1e30 where the type holds it; an IS overflowing i32).
    Huge,
}

impl BValueFault {
    /// The b-value written for a nominal `b` > 0 (b = 0 stays 0).
    fn apply(self, b: f64) -> f64 {
        if b == 0.0 {
            return b;
        }
        match self {
            BValueFault::None => b,
            BValueFault::NaN => f64::NAN,
            BValueFault::Negative => -b,
            BValueFault::Huge => 1e30,
        }
    }
}

/// A Siemens CSA image header (0029,1010) broken the ways a reader must survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CsaFault {
    #[default]
    None,
    /// Cut in the middle of its second tag.
    Truncated,
    /// Claims 1,000,000 tags.
    TagCountHuge,
    /// An item's length runs past the end of the header.
    ItemLengthPastEnd,
    /// "SV10" magic replaced (reads as the old CSA1 layout or as garbage).
    NotSv10,
}

/// Siemens DWI trace series options.
#[derive(Debug, Clone, Copy, Default)]
pub struct SiemensDwi {
    /// The b-value in the standard DiffusionBValue (0018,9087) instead of the CSA header
    /// and (0019,100C), as newer Siemens software writes it.
    pub standard_b_value: bool,
    pub b_value: BValueFault,
}

/// GE multi-b DWI series options.
#[derive(Debug, Clone, Copy, Default)]
pub struct GeDwi {
    /// (0043,1039) first value = b + 1,000,000,000, as some GE software writes it.
    pub billion_offset: bool,
    pub b_value: BValueFault,
}

/// Siemens mosaic EPI options.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mosaic {
    /// NumberOfImagesInMosaic written instead of the true 9.
    pub images_in_mosaic: Option<u32>,
    pub csa: CsaFault,
}

/// Which Enhanced MR frame layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnhancedLayout {
    /// One stack of 12 axial slices.
    Plain,
    /// Stack 1: 8 axial slices; stack 2: 8 coronal slices.
    TwoStacks,
    /// 6 axial slices × 4 time points (TemporalPositionIndex).
    TimeSeries,
    /// 8 axial slices × 2 echoes (MREchoSequence EffectiveEchoTime).
    TwoEchoes,
}

/// Dimension Index attributes broken the ways a reader must survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DimensionFault {
    #[default]
    None,
    /// The DimensionIndexSequence points at TemporalPositionIndex, which no frame has,
    /// and at a functional group sequence that does not exist.
    PointerToAbsentTag,
    /// DimensionIndexValues with one value where the dimensions are three, and values
    /// 0 and 2^32-1 (indices are 1-based).
    ValueCountMismatch,
}

// ---------------------------------------------------------------------------------------
// Geometry and pixels

/// A slab of parallel slices centred on the head phantom.
#[derive(Debug, Clone, Copy)]
pub struct Slab {
    pub rows: u16,
    pub cols: u16,
    /// (row spacing, column spacing) mm, as DICOM PixelSpacing.
    pub pixel_spacing: (f64, f64),
    /// Row and column directions (IOP).
    pub r: [f64; 3],
    pub c: [f64; 3],
    pub slices: usize,
    /// Centre-to-centre distance of slices, mm.
    pub gap: f64,
}

impl Slab {
    /// `slices` slices of `rows`×`cols` over a square field of view of `fov` mm.
    pub fn new(plane: Plane, rows: u16, cols: u16, fov: f64, slices: usize, gap: f64) -> Slab {
        let (r, c) = orientation(plane);
        Slab {
            rows,
            cols,
            pixel_spacing: (fov / rows as f64, fov / cols as f64),
            r,
            c,
            slices,
            gap,
        }
    }

    pub fn normal(&self) -> [f64; 3] {
        cross(self.r, self.c)
    }

    /// ImagePositionPatient of slice `k` (k = 0 lowest along the normal).
    pub fn ipp(&self, k: usize) -> [f64; 3] {
        let (row_sp, col_sp) = self.pixel_spacing;
        let half_w = (self.cols as f64 - 1.0) * col_sp / 2.0;
        let half_h = (self.rows as f64 - 1.0) * row_sp / 2.0;
        let off = k as f64 * self.gap - (self.slices as f64 - 1.0) * self.gap / 2.0;
        let n = self.normal();
        std::array::from_fn(|a| -half_w * self.r[a] - half_h * self.c[a] + off * n[a])
    }

    /// Patient position of pixel (column i, row j) of slice `k`.
    fn at(&self, k: usize, i: usize, j: usize) -> [f64; 3] {
        let o = self.ipp(k);
        let (row_sp, col_sp) = self.pixel_spacing;
        std::array::from_fn(|a| {
            o[a] + i as f64 * col_sp * self.r[a] + j as f64 * row_sp * self.c[a]
        })
    }

    /// Stored values (unsigned 16-bit) of slice `k` under `contrast`, with a little noise.
    fn render(&self, k: usize, contrast: &dyn Fn([f64; 3]) -> f64, rng: &mut Lcg) -> Vec<u16> {
        let mut out = Vec::with_capacity(self.rows as usize * self.cols as usize);
        for j in 0..self.rows as usize {
            for i in 0..self.cols as usize {
                let v = contrast(self.at(k, i, j)) + 10.0 * rng.next_unit();
                out.push(v.round().clamp(0.0, u16::MAX as f64) as u16);
            }
        }
        out
    }

    fn iop(&self) -> String {
        ds(&[
            self.r[0], self.r[1], self.r[2], self.c[0], self.c[1], self.c[2],
        ])
    }

    fn spacing(&self) -> String {
        ds(&[self.pixel_spacing.0, self.pixel_spacing.1])
    }
}

fn le_bytes(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The head phantom (brightest tissue 1000).
fn tissue(p: [f64; 3]) -> f64 {
    phantom(p, 1000.0, true)
}

/// Diffusion-weighted contrast: every b-value gives visibly different values.
fn diffusion(b: f64) -> impl Fn([f64; 3]) -> f64 {
    move |p| {
        let t = tissue(p);
        // Fluid (ventricles, dim in the phantom) decays fastest, as in a trace image.
        let adc = if t > 0.0 && t < 200.0 { 3e-3 } else { 0.8e-3 };
        t * (-b * adc).exp()
    }
}

// ---------------------------------------------------------------------------------------
// Headers

/// Who made a case: study, series, manufacturer, the writer's uid namespace.
struct Case {
    study: SynthStudy,
    series: SynthSeries,
    study_uid: String,
    series_uid: String,
    seed: u64,
    name: &'static str,
    manufacturer: &'static str,
    model: &'static str,
}

impl Case {
    fn new(
        seed: u64,
        name: &'static str,
        number: i32,
        description: &str,
        manufacturer: &'static str,
        model: &'static str,
    ) -> Case {
        let mut study = SynthStudy::brain(seed);
        study.series.clear();
        let mut series = SynthSeries::new(number, description, Plane::Axial, 64, 64, 1);
        series.signed = false;
        Case {
            study_uid: uid(seed, &["vendor", name, "study"]),
            series_uid: uid(seed, &["vendor", name, "series"]),
            study,
            series,
            seed,
            name,
            manufacturer,
            model,
        }
    }

    fn rng(&self) -> Lcg {
        Lcg(self.seed ^ 0x5eed_0000 ^ (self.name.len() as u64 * 0x9e37_79b9))
    }

    /// The patient/study/series/equipment and image pixel attributes of one instance.
    fn instance(&self, sop_class: &str, key: &str, rows: u16, cols: u16) -> InMemDicomObject {
        let header = SeriesHeader {
            study: &self.study,
            s: &self.series,
            study_uid: &self.study_uid,
            series_uid: &self.series_uid,
        };
        let sop_uid = uid(self.seed, &["vendor", self.name, "sop", key]);
        let mut o = header.instance(sop_class, &sop_uid);
        put_str(&mut o, tags::MANUFACTURER, VR::LO, self.manufacturer);
        put_str(&mut o, tags::MANUFACTURER_MODEL_NAME, VR::LO, self.model);
        put_str(&mut o, tags::DEVICE_SERIAL_NUMBER, VR::LO, "0000");
        put_str(&mut o, tags::SOFTWARE_VERSIONS, VR::LO, "synthetic");
        put_str(&mut o, tags::INSTITUTION_NAME, VR::LO, "");
        put_str(&mut o, tags::CONTENT_DATE, VR::DA, "20260101");
        put_str(&mut o, tags::CONTENT_TIME, VR::TM, "120000");
        put_str(&mut o, tags::PATIENT_POSITION, VR::CS, "HFS");
        put_str(&mut o, tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
        put_str(&mut o, tags::BODY_PART_EXAMINED, VR::CS, "BRAIN");
        us(&mut o, tags::ROWS, rows);
        us(&mut o, tags::COLUMNS, cols);
        o
    }
}

fn us(o: &mut InMemDicomObject, tag: Tag, v: u16) {
    o.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
}

fn fl(o: &mut InMemDicomObject, tag: Tag, v: &[f32]) {
    o.put(DataElement::new(
        tag,
        VR::FL,
        PrimitiveValue::F32(v.iter().copied().collect()),
    ));
}

fn fd(o: &mut InMemDicomObject, tag: Tag, v: &[f64]) {
    o.put(DataElement::new(
        tag,
        VR::FD,
        PrimitiveValue::F64(v.iter().copied().collect()),
    ));
}

fn ul(o: &mut InMemDicomObject, tag: Tag, v: &[u32]) {
    o.put(DataElement::new(
        tag,
        VR::UL,
        PrimitiveValue::U32(v.iter().copied().collect()),
    ));
}

fn at(o: &mut InMemDicomObject, tag: Tag, v: Tag) {
    o.put(DataElement::new(
        tag,
        VR::AT,
        PrimitiveValue::Tags(std::iter::once(v).collect()),
    ));
}

/// A number as a decimal string, with NaN and infinities spelled as C's `atof` reads them.
fn num(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{v}")
    }
}

/// Acquisition parameters one 2D MR image (MR Image module) carries.
struct MrParams<'a> {
    image_type: &'a str,
    scanning_sequence: &'a str,
    sequence_variant: &'a str,
    sequence_name: &'a str,
    tr: f64,
    te: f64,
    echo_number: u32,
    acquisition_number: u32,
    /// Seconds after 12:00:00.
    acquisition_time: f64,
}

fn tm(seconds_after_noon: f64) -> String {
    let total = 12.0 * 3600.0 + seconds_after_noon;
    let h = (total / 3600.0).floor();
    let m = ((total - h * 3600.0) / 60.0).floor();
    let s = total - h * 3600.0 - m * 60.0;
    format!("{:02}{:02}{:09.6}", h as u32, m as u32, s)
}

/// One single-frame MR image of slice `k` of `slab`.
fn mr_image(
    case: &Case,
    key: &str,
    slab: &Slab,
    k: usize,
    pixels: &[u16],
    instance_number: usize,
    p: &MrParams,
) -> InMemDicomObject {
    let mut o = case.instance(uids::MR_IMAGE_STORAGE, key, slab.rows, slab.cols);
    put_mr_params(&mut o, p);
    put_str(
        &mut o,
        tags::INSTANCE_NUMBER,
        VR::IS,
        &instance_number.to_string(),
    );
    let ipp = slab.ipp(k);
    put_str(&mut o, tags::IMAGE_POSITION_PATIENT, VR::DS, &ds(&ipp));
    put_str(&mut o, tags::IMAGE_ORIENTATION_PATIENT, VR::DS, &slab.iop());
    put_str(&mut o, tags::PIXEL_SPACING, VR::DS, &slab.spacing());
    put_str(&mut o, tags::SLICE_THICKNESS, VR::DS, &ds(&[slab.gap]));
    put_str(
        &mut o,
        tags::SPACING_BETWEEN_SLICES,
        VR::DS,
        &ds(&[slab.gap]),
    );
    let n = slab.normal();
    let loc = ipp[0] * n[0] + ipp[1] * n[1] + ipp[2] * n[2];
    put_str(&mut o, tags::SLICE_LOCATION, VR::DS, &ds(&[loc]));
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::from(le_bytes(pixels)),
    ));
    o
}

fn put_mr_params(o: &mut InMemDicomObject, p: &MrParams) {
    put_str(o, tags::IMAGE_TYPE, VR::CS, p.image_type);
    put_str(o, tags::SCANNING_SEQUENCE, VR::CS, p.scanning_sequence);
    put_str(o, tags::SEQUENCE_VARIANT, VR::CS, p.sequence_variant);
    put_str(o, tags::SCAN_OPTIONS, VR::CS, "");
    put_str(o, tags::MR_ACQUISITION_TYPE, VR::CS, "2D");
    put_str(o, tags::SEQUENCE_NAME, VR::SH, p.sequence_name);
    put_str(o, tags::REPETITION_TIME, VR::DS, &ds(&[p.tr]));
    put_str(o, tags::ECHO_TIME, VR::DS, &ds(&[p.te]));
    put_str(o, tags::ECHO_NUMBERS, VR::IS, &p.echo_number.to_string());
    put_str(o, tags::ECHO_TRAIN_LENGTH, VR::IS, "1");
    put_str(o, tags::MAGNETIC_FIELD_STRENGTH, VR::DS, "3");
    put_str(o, tags::IMAGING_FREQUENCY, VR::DS, "123.2");
    put_str(o, tags::IMAGED_NUCLEUS, VR::SH, "1H");
    put_str(o, tags::FLIP_ANGLE, VR::DS, "90");
    // dcm2niix wants it to give diffusion gradients in image space.
    put_str(o, tags::IN_PLANE_PHASE_ENCODING_DIRECTION, VR::CS, "COL");
    put_str(
        o,
        tags::ACQUISITION_NUMBER,
        VR::IS,
        &p.acquisition_number.to_string(),
    );
    put_str(o, tags::ACQUISITION_DATE, VR::DA, "20260101");
    put_str(o, tags::ACQUISITION_TIME, VR::TM, &tm(p.acquisition_time));
}

fn private_creator(o: &mut InMemDicomObject, group: u16, creator: &str) {
    put_str(o, Tag(group, 0x0010), VR::LO, creator);
}

fn write_all(
    dir: &Path,
    objects: Vec<(String, InMemDicomObject)>,
) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::with_capacity(objects.len());
    for (name, o) in objects {
        let path = dir.join(name);
        write_part10(o, &path)?;
        out.push(path);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Siemens CSA header

/// One CSA element: name, VR and its values as text (CSA stores every value as a string).
pub struct CsaElement {
    pub name: String,
    pub vr: String,
    pub values: Vec<String>,
}

/// A Siemens CSA2 ("SV10") header: "SV10", 4 bytes, tag count, 77; per tag a 64-byte
/// NUL-padded name, VM, 4-byte VR, SyngoDT, item count, 77; per item four 32-bit words
/// (the second the string length) then the string padded to 4 bytes. Little endian.
pub fn csa2(elements: &[CsaElement], fault: CsaFault) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(if fault == CsaFault::NotSv10 {
        b"XV99"
    } else {
        b"SV10"
    });
    b.extend_from_slice(&[4, 3, 2, 1]);
    let n_tags = if fault == CsaFault::TagCountHuge {
        1_000_000
    } else {
        elements.len() as u32
    };
    b.extend_from_slice(&n_tags.to_le_bytes());
    b.extend_from_slice(&77u32.to_le_bytes());
    let mut truncate_at = None;
    for (t, e) in elements.iter().enumerate() {
        if t == 1 {
            truncate_at = Some(b.len() + 40);
        }
        let mut name = [0u8; 64];
        name[..e.name.len()].copy_from_slice(e.name.as_bytes());
        b.extend_from_slice(&name);
        b.extend_from_slice(&(e.values.len() as u32).to_le_bytes()); // VM
        let mut vr = [0u8; 4];
        vr[..e.vr.len()].copy_from_slice(e.vr.as_bytes());
        b.extend_from_slice(&vr);
        b.extend_from_slice(&0u32.to_le_bytes()); // SyngoDT
        b.extend_from_slice(&(e.values.len() as u32).to_le_bytes());
        b.extend_from_slice(&77u32.to_le_bytes());
        for v in &e.values {
            let mut s = v.clone().into_bytes();
            s.push(0);
            let len = if fault == CsaFault::ItemLengthPastEnd {
                0x7fff_0000
            } else {
                s.len() as u32
            };
            for w in [len, len, 77, len] {
                b.extend_from_slice(&w.to_le_bytes());
            }
            let padded = s.len().div_ceil(4) * 4;
            s.resize(padded, 0);
            b.extend_from_slice(&s);
        }
    }
    if fault == CsaFault::Truncated {
        b.truncate(truncate_at.unwrap_or(b.len() / 2));
    }
    // OB values have even length.
    if b.len() % 2 == 1 {
        b.push(0);
    }
    b
}

fn csa(name: &str, vr: &str, values: &[String]) -> CsaElement {
    CsaElement {
        name: name.into(),
        vr: vr.into(),
        values: values.to_vec(),
    }
}

fn put_csa(o: &mut InMemDicomObject, header: Vec<u8>) {
    private_creator(o, 0x0029, "SIEMENS CSA HEADER");
    o.put(DataElement::new(
        CSA_IMAGE_HEADER,
        VR::OB,
        PrimitiveValue::from(header),
    ));
}

// ---------------------------------------------------------------------------------------
// The cases

/// 20 axial slices, one volume: the reference every other case is checked against.
pub fn plain_axial(dir: &Path, seed: u64) -> std::io::Result<Vec<PathBuf>> {
    let case = Case::new(seed, "plain_axial", 2, "AX T1", "SIEMENS", "Prisma");
    let slab = Slab::new(Plane::Axial, 96, 96, 230.0, 20, 6.0);
    let mut rng = case.rng();
    let p = MrParams {
        image_type: "ORIGINAL\\PRIMARY\\M\\ND\\NORM",
        scanning_sequence: "SE",
        sequence_variant: "SP",
        sequence_name: "*se2d1",
        tr: 500.0,
        te: 10.0,
        echo_number: 1,
        acquisition_number: 1,
        acquisition_time: 0.0,
    };
    let objects = (0..slab.slices)
        .map(|k| {
            let px = slab.render(k, &tissue, &mut rng);
            let key = k.to_string();
            let o = mr_image(&case, &key, &slab, k, &px, k + 1, &p);
            (format!("IM{:04}.dcm", k + 1), o)
        })
        .collect();
    write_all(dir, objects)
}

/// Siemens ep2d_diff trace: b=0 and b=1000 trace-weighted images of 20 slices in one
/// series; the b-value in the CSA image header and (0019,100C), or in the standard
/// DiffusionBValue only.
pub fn siemens_dwi_trace(dir: &Path, seed: u64, opt: SiemensDwi) -> std::io::Result<Vec<PathBuf>> {
    let case = Case::new(
        seed,
        "siemens_dwi_trace",
        5,
        "ep2d_diff_trace",
        "SIEMENS",
        "Prisma",
    );
    let slab = Slab::new(Plane::Axial, 64, 64, 220.0, 20, 5.0);
    let mut rng = case.rng();
    let mut objects = Vec::new();
    for (v, b) in [0.0, 1000.0].into_iter().enumerate() {
        let written_b = opt.b_value.apply(b);
        let p = MrParams {
            image_type: if b == 0.0 {
                "ORIGINAL\\PRIMARY\\DIFFUSION\\NONE\\ND\\NORM"
            } else {
                "DERIVED\\PRIMARY\\DIFFUSION\\TRACEW\\ND\\NORM"
            },
            scanning_sequence: "EP",
            sequence_variant: "SK\\SP",
            sequence_name: if b == 0.0 { "*ep_b0" } else { "*ep_b1000t" },
            tr: 4000.0,
            te: 70.0,
            echo_number: 1,
            acquisition_number: 1,
            acquisition_time: v as f64 * 0.1,
        };
        let contrast = diffusion(b);
        for k in 0..slab.slices {
            let px = slab.render(k, &contrast, &mut rng);
            let n = v * slab.slices + k + 1;
            let mut o = mr_image(&case, &n.to_string(), &slab, k, &px, n, &p);
            if opt.standard_b_value {
                fd(&mut o, DIFFUSION_B_VALUE, &[written_b]);
            } else {
                let normal = slab.normal();
                let mut elements = vec![
                    csa("B_value", "IS", &[num(written_b)]),
                    csa(
                        "DiffusionDirectionality",
                        "CS",
                        &[if b == 0.0 { "NONE" } else { "ISOTROPIC" }.to_string()],
                    ),
                    csa("SliceNormalVector", "FD", normal.map(num).as_ref()),
                ];
                if b == 0.0 {
                    elements.push(csa("DiffusionGradientDirection", "FD", &[]));
                }
                put_csa(&mut o, csa2(&elements, CsaFault::None));
                private_creator(&mut o, 0x0019, "SIEMENS MR HEADER");
                put_str(&mut o, Tag(0x0019, 0x100C), VR::IS, &num(written_b));
                put_str(
                    &mut o,
                    Tag(0x0019, 0x100D),
                    VR::CS,
                    if b == 0.0 { "NONE" } else { "ISOTROPIC" },
                );
            }
            objects.push((format!("IM{n:04}.dcm"), o));
        }
    }
    write_all(dir, objects)
}

/// GE multi-b DWI: b 0, 500, 1000 × 15 slices; b-value in (0043,1039) (first of four
/// values, optionally + 10^9), gradient in (0019,10BB/BC/BD). Instances numbered slice by
/// slice (all b-values of a location, then the next), as GE does.
pub fn ge_dwi(dir: &Path, seed: u64, opt: GeDwi) -> std::io::Result<Vec<PathBuf>> {
    let case = Case::new(
        seed,
        "ge_dwi",
        600,
        "DWI multi-b",
        "GE MEDICAL SYSTEMS",
        "DISCOVERY MR750",
    );
    let slab = Slab::new(Plane::Axial, 64, 64, 240.0, 15, 5.0);
    let mut rng = case.rng();
    let bs = [0.0, 500.0, 1000.0];
    let mut objects = Vec::new();
    for k in 0..slab.slices {
        for (v, &b) in bs.iter().enumerate() {
            let p = MrParams {
                image_type: "ORIGINAL\\PRIMARY\\OTHER",
                scanning_sequence: "EP\\SE",
                sequence_variant: "NONE",
                sequence_name: "epi2",
                tr: 5000.0,
                te: 80.0,
                echo_number: 1,
                acquisition_number: 1,
                acquisition_time: 0.0,
            };
            let px = slab.render(k, &diffusion(b), &mut rng);
            let n = k * bs.len() + v + 1;
            let mut o = mr_image(&case, &n.to_string(), &slab, k, &px, n, &p);
            let written = opt.b_value.apply(b);
            let first = match opt.b_value {
                // An IS holds at most 12 characters; this one overflows 32 bits.
                BValueFault::Huge if b > 0.0 => "99999999999".to_string(),
                _ if opt.billion_offset => format!("{}", written as i64 + 1_000_000_000),
                _ => format!("{}", written as i64),
            };
            private_creator(&mut o, 0x0043, "GEMS_PARM_01");
            put_str(
                &mut o,
                Tag(0x0043, 0x1039),
                VR::IS,
                &format!("{first}\\8\\0\\0"),
            );
            o.put(DataElement::new(
                Tag(0x0043, 0x102F),
                VR::SS,
                PrimitiveValue::from(0i16),
            ));
            private_creator(&mut o, 0x0019, "GEMS_ACQU_01");
            let g = if b == 0.0 { 0.0 } else { 0.57735 };
            for e in [0x10BB, 0x10BC, 0x10BD] {
                put_str(&mut o, Tag(0x0019, e), VR::DS, &ds(&[g]));
            }
            objects.push((format!("IM{n:04}.dcm"), o));
        }
    }
    write_all(dir, objects)
}

/// Philips DWI: b=0, three directional b=1000 and the isotropic (trace) b=1000 image of
/// 12 slices; (2001,1003) b-value, (2001,1004) direction label, (2005,10B0..B2) gradient,
/// the standard (0018,9087) and (0018,9075) too.
pub fn philips_dwi(dir: &Path, seed: u64, fault: BValueFault) -> std::io::Result<Vec<PathBuf>> {
    let case = Case::new(
        seed,
        "philips_dwi",
        501,
        "DWI",
        "Philips Medical Systems",
        "Ingenia",
    );
    let slab = Slab::new(Plane::Axial, 64, 64, 230.0, 12, 5.0);
    let mut rng = case.rng();
    // (b, label, gradient, directionality)
    let vols: [(f64, &str, [f64; 3], &str); 5] = [
        (0.0, "", [0.0, 0.0, 0.0], "NONE"),
        (1000.0, "O", [1.0, 0.0, 0.0], "DIRECTIONAL"),
        (1000.0, "O", [0.0, 1.0, 0.0], "DIRECTIONAL"),
        (1000.0, "O", [0.0, 0.0, 1.0], "DIRECTIONAL"),
        (1000.0, "I", [0.0, 0.0, 0.0], "ISOTROPIC"),
    ];
    let mut objects = Vec::new();
    for (v, &(b, label, g, directionality)) in vols.iter().enumerate() {
        let p = MrParams {
            image_type: if label == "I" {
                "DERIVED\\PRIMARY\\DIFFUSION\\ISOTROPIC"
            } else {
                "ORIGINAL\\PRIMARY\\M_SE\\M\\SE"
            },
            scanning_sequence: "SE",
            sequence_variant: "SK",
            sequence_name: "",
            tr: 3500.0,
            te: 75.0,
            echo_number: 1,
            acquisition_number: 1,
            acquisition_time: 0.0,
        };
        // Directional images differ from each other: anisotropy along the gradient.
        let base = diffusion(b);
        let contrast = move |pt: [f64; 3]| base(pt) * (1.0 + 0.1 * g[0] - 0.1 * g[1] + 0.2 * g[2]);
        let written = fault.apply(b);
        for k in 0..slab.slices {
            let px = slab.render(k, &contrast, &mut rng);
            let n = v * slab.slices + k + 1;
            let mut o = mr_image(&case, &n.to_string(), &slab, k, &px, n, &p);
            private_creator(&mut o, 0x2001, "Philips Imaging DD 001");
            fl(&mut o, Tag(0x2001, 0x1003), &[written as f32]);
            put_str(&mut o, Tag(0x2001, 0x1004), VR::CS, label);
            // Slice number and gradient number: how Philips says which volume an image is.
            put_str(&mut o, Tag(0x2001, 0x100A), VR::IS, &(k + 1).to_string());
            put_str(&mut o, Tag(0x2005, 0x1413), VR::IS, &(v + 1).to_string());
            private_creator(&mut o, 0x2005, "Philips MR Imaging DD 001");
            fl(&mut o, Tag(0x2005, 0x10B0), &[g[0] as f32]);
            fl(&mut o, Tag(0x2005, 0x10B1), &[g[1] as f32]);
            fl(&mut o, Tag(0x2005, 0x10B2), &[g[2] as f32]);
            fd(&mut o, DIFFUSION_B_VALUE, &[written]);
            put_str(&mut o, DIFFUSION_DIRECTIONALITY, VR::CS, directionality);
            objects.push((format!("IM{n:04}.dcm"), o));
        }
    }
    write_all(dir, objects)
}

/// SWI: magnitude and phase of 12 slices in one series (ImageType …\M\… and …\P\…), the
/// phase stored 0..4095 with slope 2, intercept -4096 (Siemens' phase scaling).
pub fn swi_mag_phase(dir: &Path, seed: u64) -> std::io::Result<Vec<PathBuf>> {
    let case = Case::new(seed, "swi_mag_phase", 9, "SWI", "SIEMENS", "Prisma");
    let slab = Slab::new(Plane::Axial, 96, 96, 230.0, 12, 2.0);
    let mut rng = case.rng();
    let phase = |p: [f64; 3]| {
        if tissue(p) > 0.0 {
            2048.0 + 1500.0 * (p[0] / 15.0).sin() * (p[1] / 20.0).cos()
        } else {
            2048.0
        }
    };
    let mut objects = Vec::new();
    for (v, is_phase) in [false, true].into_iter().enumerate() {
        let p = MrParams {
            image_type: if is_phase {
                "ORIGINAL\\PRIMARY\\P\\ND"
            } else {
                "ORIGINAL\\PRIMARY\\M\\ND\\NORM"
            },
            scanning_sequence: "GR",
            sequence_variant: "SP\\OSP",
            sequence_name: "*swi3d1r",
            tr: 28.0,
            te: 20.0,
            echo_number: 1,
            acquisition_number: 1,
            acquisition_time: 0.0,
        };
        for k in 0..slab.slices {
            let px = if is_phase {
                slab.render(k, &phase, &mut rng)
            } else {
                slab.render(k, &tissue, &mut rng)
            };
            let n = v * slab.slices + k + 1;
            let mut o = mr_image(&case, &n.to_string(), &slab, k, &px, n, &p);
            if is_phase {
                put_str(&mut o, tags::RESCALE_SLOPE, VR::DS, "2");
                put_str(&mut o, tags::RESCALE_INTERCEPT, VR::DS, "-4096");
                put_str(&mut o, tags::RESCALE_TYPE, VR::LO, "US");
            }
            objects.push((format!("IM{n:04}.dcm"), o));
        }
    }
    write_all(dir, objects)
}

/// Time points of the 4D cases.
const PERFUSION_TIMES: usize = 10;

/// 4D perfusion: 15 slices × 10 time points, TemporalPositionIdentifier,
/// AcquisitionNumber and AcquisitionTime per time point; a bolus darkens t = 3..6.
pub fn perfusion_4d(dir: &Path, seed: u64) -> std::io::Result<Vec<PathBuf>> {
    let case = Case::new(seed, "perfusion_4d", 11, "ep2d_perf", "SIEMENS", "Prisma");
    let slab = Slab::new(Plane::Axial, 64, 64, 230.0, 15, 5.0);
    let mut rng = case.rng();
    let mut objects = Vec::new();
    for t in 0..PERFUSION_TIMES {
        let drop = match t {
            3 => 0.2,
            4 => 0.45,
            5 => 0.3,
            6 => 0.1,
            _ => 0.0,
        } + 0.01 * t as f64;
        let contrast = move |p: [f64; 3]| tissue(p) * (1.0 - drop);
        let p = MrParams {
            image_type: "ORIGINAL\\PRIMARY\\M\\ND\\NORM",
            scanning_sequence: "EP",
            sequence_variant: "SK",
            sequence_name: "*epfid2d1_64",
            tr: 1500.0,
            te: 30.0,
            echo_number: 1,
            acquisition_number: t as u32 + 1,
            acquisition_time: t as f64 * 1.5,
        };
        for k in 0..slab.slices {
            let px = slab.render(k, &contrast, &mut rng);
            let n = t * slab.slices + k + 1;
            let mut o = mr_image(&case, &n.to_string(), &slab, k, &px, n, &p);
            put_str(
                &mut o,
                tags::TEMPORAL_POSITION_IDENTIFIER,
                VR::IS,
                &(t + 1).to_string(),
            );
            put_str(
                &mut o,
                tags::NUMBER_OF_TEMPORAL_POSITIONS,
                VR::IS,
                &PERFUSION_TIMES.to_string(),
            );
            objects.push((format!("IM{n:04}.dcm"), o));
        }
    }
    write_all(dir, objects)
}

/// 3-plane localizer: 3 sagittal, 3 coronal and 3 axial slices, ImageType …\LOCALIZER.
pub fn localizer_3plane(dir: &Path, seed: u64) -> std::io::Result<Vec<PathBuf>> {
    let case = Case::new(
        seed,
        "localizer_3plane",
        1,
        "localizer",
        "SIEMENS",
        "Prisma",
    );
    let mut rng = case.rng();
    let p = MrParams {
        image_type: "ORIGINAL\\PRIMARY\\LOCALIZER",
        scanning_sequence: "GR",
        sequence_variant: "SP",
        sequence_name: "*fl2d1",
        tr: 8.6,
        te: 4.0,
        echo_number: 1,
        acquisition_number: 1,
        acquisition_time: 0.0,
    };
    let mut objects = Vec::new();
    for (pi, plane) in [Plane::Sagittal, Plane::Coronal, Plane::Axial]
        .into_iter()
        .enumerate()
    {
        let slab = Slab::new(plane, 128, 128, 260.0, 3, 20.0);
        for k in 0..slab.slices {
            let px = slab.render(k, &tissue, &mut rng);
            let n = pi * 3 + k + 1;
            let o = mr_image(&case, &n.to_string(), &slab, k, &px, n, &p);
            objects.push((format!("IM{n:04}.dcm"), o));
        }
    }
    write_all(dir, objects)
}

/// Siemens mosaic geometry: 9 slices of 72×72 tiled 3×3 in a 216×216 image.
pub const MOSAIC_TILE: u16 = 72;
pub const MOSAIC_GRID: u16 = 3;
pub const MOSAIC_SLICES: usize = 9;
pub const MOSAIC_VOLUMES: usize = 3;

/// Siemens mosaic EPI: 3 volumes (files), each a 216×216 image tiling 9 slices of 72×72;
/// NumberOfImagesInMosaic and SliceNormalVector in the CSA image header, and
/// ImagePositionPatient as Siemens gives it: the top-left of the whole mosaic taken as
/// one image of the tile's pixel size centred where the slice stack is.
pub fn siemens_mosaic(dir: &Path, seed: u64, opt: Mosaic) -> std::io::Result<Vec<PathBuf>> {
    let case = Case::new(seed, "siemens_mosaic", 7, "ep2d_bold", "SIEMENS", "Prisma");
    let slab = Slab::new(
        Plane::Axial,
        MOSAIC_TILE,
        MOSAIC_TILE,
        216.0,
        MOSAIC_SLICES,
        4.0,
    );
    let side = MOSAIC_TILE * MOSAIC_GRID;
    let (row_sp, col_sp) = slab.pixel_spacing;
    // Siemens' mosaic position: slice 0's position moved back by half the mosaic less
    // half a tile, along rows and columns.
    let shift = (side - MOSAIC_TILE) as f64 / 2.0;
    let first = slab.ipp(0);
    let ipp: [f64; 3] =
        std::array::from_fn(|a| first[a] - shift * col_sp * slab.r[a] - shift * row_sp * slab.c[a]);
    let mosaic_slab = Slab {
        rows: side,
        cols: side,
        ..slab
    };
    let mut rng = case.rng();
    let images = opt.images_in_mosaic.unwrap_or(MOSAIC_SLICES as u32);
    let mut objects = Vec::new();
    for t in 0..MOSAIC_VOLUMES {
        let contrast = move |p: [f64; 3]| tissue(p) * (1.0 - 0.05 * t as f64);
        let mut mosaic = vec![0u16; side as usize * side as usize];
        for k in 0..MOSAIC_SLICES {
            let tile = slab.render(k, &contrast, &mut rng);
            let (ty, tx) = (k / MOSAIC_GRID as usize, k % MOSAIC_GRID as usize);
            for j in 0..MOSAIC_TILE as usize {
                let row = ty * MOSAIC_TILE as usize + j;
                let start = row * side as usize + tx * MOSAIC_TILE as usize;
                mosaic[start..start + MOSAIC_TILE as usize].copy_from_slice(
                    &tile[j * MOSAIC_TILE as usize..(j + 1) * MOSAIC_TILE as usize],
                );
            }
        }
        let p = MrParams {
            image_type: "ORIGINAL\\PRIMARY\\M\\ND\\MOSAIC",
            scanning_sequence: "EP",
            sequence_variant: "SK",
            sequence_name: "*epfid2d1_72",
            tr: 2000.0,
            te: 30.0,
            echo_number: 1,
            acquisition_number: t as u32 + 1,
            acquisition_time: t as f64 * 2.0,
        };
        let n = t + 1;
        let mut o = mr_image(&case, &n.to_string(), &mosaic_slab, 0, &mosaic, n, &p);
        put_str(&mut o, tags::IMAGE_POSITION_PATIENT, VR::DS, &ds(&ipp));
        put_str(&mut o, tags::SLICE_LOCATION, VR::DS, &ds(&[first[2]]));
        put_str(
            &mut o,
            tags::SPACING_BETWEEN_SLICES,
            VR::DS,
            &ds(&[slab.gap]),
        );
        // Rows of the acquisition matrix: the tile size a reader may check the count by.
        o.put(DataElement::new(
            tags::ACQUISITION_MATRIX,
            VR::US,
            PrimitiveValue::U16([0, MOSAIC_TILE, MOSAIC_TILE, 0].into_iter().collect()),
        ));
        let times: Vec<String> = (0..MOSAIC_SLICES)
            .map(|k| num(((k * 2) % MOSAIC_SLICES) as f64 * 2000.0 / MOSAIC_SLICES as f64))
            .collect();
        let elements = vec![
            csa("EchoLinePosition", "IS", &["36".to_string()]),
            csa("NumberOfImagesInMosaic", "US", &[images.to_string()]),
            csa("SliceNormalVector", "FD", slab.normal().map(num).as_ref()),
            csa("MosaicRefAcqTimes", "FD", &times),
            csa("PhaseEncodingDirectionPositive", "IS", &["1".to_string()]),
        ];
        put_csa(&mut o, csa2(&elements, opt.csa));
        private_creator(&mut o, 0x0019, "SIEMENS MR HEADER");
        o.put(DataElement::new(
            Tag(0x0019, 0x100A),
            VR::US,
            PrimitiveValue::from(images.min(u16::MAX as u32) as u16),
        ));
        objects.push((format!("IM{n:04}.dcm"), o));
    }
    write_all(dir, objects)
}

/// One frame of a multi-frame instance: where, what, and its frame content.
struct FrameSpec {
    slab: Slab,
    k: usize,
    stack: Option<&'static str>,
    in_stack: u32,
    temporal: Option<u32>,
    echo_time: Option<f64>,
    dims: Vec<u32>,
    contrast: Box<dyn Fn([f64; 3]) -> f64>,
}

/// Enhanced MR (one multi-frame instance) with a Dimension Index: the frame layouts real
/// scanners send, optionally with the index broken.
pub fn enhanced_mr(
    dir: &Path,
    seed: u64,
    layout: EnhancedLayout,
    fault: DimensionFault,
) -> std::io::Result<Vec<PathBuf>> {
    let name = match layout {
        EnhancedLayout::Plain => "enhanced_plain",
        EnhancedLayout::TwoStacks => "enhanced_two_stacks",
        EnhancedLayout::TimeSeries => "enhanced_time_series",
        EnhancedLayout::TwoEchoes => "enhanced_two_echoes",
    };
    let case = Case::new(seed, name, 20, name, "Philips Medical Systems", "Ingenia");
    let axial = |n| Slab::new(Plane::Axial, 64, 64, 230.0, n, 6.0);
    let mut frames = Vec::new();
    let frame = |slab: Slab,
                 k: usize,
                 stack: &'static str,
                 temporal: Option<u32>,
                 echo_time: Option<f64>,
                 contrast: Box<dyn Fn([f64; 3]) -> f64>| FrameSpec {
        slab,
        k,
        stack: Some(stack),
        in_stack: k as u32 + 1,
        temporal,
        echo_time,
        dims: Vec::new(),
        contrast,
    };
    // Dimension pointers (index tag, functional group sequence).
    let mut dimensions = vec![
        (STACK_ID, FRAME_CONTENT_SEQ),
        (IN_STACK_POSITION, FRAME_CONTENT_SEQ),
    ];
    match layout {
        EnhancedLayout::Plain => {
            let s = axial(12);
            for k in 0..s.slices {
                frames.push(frame(s, k, "1", None, None, Box::new(tissue)));
            }
        }
        EnhancedLayout::TwoStacks => {
            let a = axial(8);
            let c = Slab::new(Plane::Coronal, 64, 64, 230.0, 8, 8.0);
            for k in 0..a.slices {
                frames.push(frame(a, k, "1", None, None, Box::new(tissue)));
            }
            for k in 0..c.slices {
                let contrast = |p: [f64; 3]| 0.8 * tissue(p);
                frames.push(frame(c, k, "2", None, None, Box::new(contrast)));
            }
        }
        EnhancedLayout::TimeSeries => {
            dimensions.push((TEMPORAL_POSITION_INDEX, FRAME_CONTENT_SEQ));
            let s = axial(6);
            for t in 0..4u32 {
                for k in 0..s.slices {
                    let contrast = move |p: [f64; 3]| tissue(p) * (1.0 - 0.1 * t as f64);
                    frames.push(frame(s, k, "1", Some(t + 1), None, Box::new(contrast)));
                }
            }
        }
        EnhancedLayout::TwoEchoes => {
            dimensions.push((EFFECTIVE_ECHO_TIME, MR_ECHO_SEQ));
            let s = axial(8);
            for (e, te) in [10.0, 40.0].into_iter().enumerate() {
                for k in 0..s.slices {
                    let contrast = move |p: [f64; 3]| tissue(p) * (-te / 80.0f64).exp();
                    let mut f = frame(s, k, "1", None, Some(te), Box::new(contrast));
                    f.dims.push(e as u32 + 1);
                    frames.push(f);
                }
            }
        }
    }
    for f in &mut frames {
        let stack: u32 = f.stack.map(|s| s.parse().unwrap_or(1)).unwrap_or(1);
        let mut d = vec![stack, f.in_stack];
        if let Some(t) = f.temporal {
            d.push(t);
        }
        d.append(&mut f.dims);
        f.dims = d;
    }
    match fault {
        DimensionFault::None => {}
        DimensionFault::PointerToAbsentTag => {
            for f in &mut frames {
                f.temporal = None;
            }
            dimensions.push((Tag(0x0021, 0x10FF), Tag(0x0021, 0x10FE)));
            for f in &mut frames {
                f.dims.push(1);
            }
        }
        DimensionFault::ValueCountMismatch => {
            for (i, f) in frames.iter_mut().enumerate() {
                f.dims = vec![if i % 2 == 0 { 0 } else { u32::MAX }];
            }
        }
    }
    let o = multiframe(&case, ENHANCED_MR, &frames, Some(&dimensions));
    write_all(dir, vec![("IM0001.dcm".into(), o)])
}

/// Legacy Converted Enhanced MR: 14 axial single-frame images converted into one
/// multi-frame instance (no Dimension Index; per-frame positions and frame content).
pub fn legacy_converted_enhanced(dir: &Path, seed: u64) -> std::io::Result<Vec<PathBuf>> {
    let case = Case::new(
        seed,
        "legacy_converted",
        21,
        "T2 legacy",
        "SIEMENS",
        "Avanto",
    );
    let s = Slab::new(Plane::Axial, 64, 64, 230.0, 14, 5.0);
    let frames: Vec<FrameSpec> = (0..s.slices)
        .map(|k| FrameSpec {
            slab: s,
            k,
            stack: None,
            in_stack: k as u32 + 1,
            temporal: None,
            echo_time: None,
            dims: Vec::new(),
            contrast: Box::new(tissue),
        })
        .collect();
    let o = multiframe(&case, LEGACY_CONVERTED_ENHANCED_MR, &frames, None);
    write_all(dir, vec![("IM0001.dcm".into(), o)])
}

/// A multi-frame MR instance of `frames`; with `dimensions` an Enhanced MR with a
/// Dimension Index, without a Legacy Converted one.
fn multiframe(
    case: &Case,
    sop_class: &str,
    frames: &[FrameSpec],
    dimensions: Option<&[(Tag, Tag)]>,
) -> InMemDicomObject {
    let first = &frames[0].slab;
    let mut o = case.instance(sop_class, "mf", first.rows, first.cols);
    let mut rng = case.rng();
    let enhanced = dimensions.is_some();
    put_str(
        &mut o,
        tags::IMAGE_TYPE,
        VR::CS,
        "ORIGINAL\\PRIMARY\\VOLUME\\NONE",
    );
    put_str(&mut o, tags::INSTANCE_NUMBER, VR::IS, "1");
    put_str(&mut o, tags::ACQUISITION_NUMBER, VR::IS, "1");
    put_str(
        &mut o,
        tags::ACQUISITION_DATE_TIME,
        VR::DT,
        "20260101120000",
    );
    put_str(
        &mut o,
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        &frames.len().to_string(),
    );
    put_str(&mut o, tags::CONTENT_QUALIFICATION, VR::CS, "PRODUCT");
    put_str(&mut o, tags::BURNED_IN_ANNOTATION, VR::CS, "NO");
    put_str(&mut o, tags::PRESENTATION_LUT_SHAPE, VR::CS, "IDENTITY");
    put_str(&mut o, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    o.put(seq(tags::ACQUISITION_CONTEXT_SEQUENCE, vec![]));
    put_str(&mut o, tags::MAGNETIC_FIELD_STRENGTH, VR::DS, "3");
    put_str(&mut o, tags::RESONANT_NUCLEUS, VR::CS, "1H");
    put_str(&mut o, tags::K_SPACE_FILTERING, VR::CS, "NONE");
    put_str(
        &mut o,
        tags::APPLICABLE_SAFETY_STANDARD_AGENCY,
        VR::CS,
        "IEC",
    );
    fd(&mut o, tags::ACQUISITION_DURATION, &[60.0]);
    put_str(&mut o, tags::PIXEL_PRESENTATION, VR::CS, "MONOCHROME");
    put_str(&mut o, tags::VOLUMETRIC_PROPERTIES, VR::CS, "VOLUME");
    put_str(
        &mut o,
        tags::VOLUME_BASED_CALCULATION_TECHNIQUE,
        VR::CS,
        "NONE",
    );
    if enhanced {
        put_str(&mut o, tags::COMPLEX_IMAGE_COMPONENT, VR::CS, "MAGNITUDE");
        put_str(&mut o, tags::ACQUISITION_CONTRAST, VR::CS, "T2");
        put_mr_pulse_sequence(&mut o);
    }
    if let Some(dims) = dimensions {
        let org = uid(case.seed, &["vendor", case.name, "dimension-organization"]);
        o.put(seq(
            tags::DIMENSION_ORGANIZATION_SEQUENCE,
            vec![item(tags::DIMENSION_ORGANIZATION_UID, VR::UI, &org)],
        ));
        put_str(&mut o, tags::DIMENSION_ORGANIZATION_TYPE, VR::CS, "3D");
        let items = dims
            .iter()
            .map(|&(index, group)| {
                let mut i = item(tags::DIMENSION_ORGANIZATION_UID, VR::UI, &org);
                at(&mut i, tags::DIMENSION_INDEX_POINTER, index);
                at(&mut i, tags::FUNCTIONAL_GROUP_POINTER, group);
                i
            })
            .collect();
        o.put(seq(tags::DIMENSION_INDEX_SEQUENCE, items));
    }
    // Shared: pixel measures, orientation when every frame has the same, rescale,
    // timing, frame type.
    let one_orientation = frames.iter().all(|f| f.slab.iop() == first.iop());
    let mut shared = InMemDicomObject::new_empty();
    let mut pm = item(tags::PIXEL_SPACING, VR::DS, &first.spacing());
    put_str(&mut pm, tags::SLICE_THICKNESS, VR::DS, &ds(&[first.gap]));
    put_str(
        &mut pm,
        tags::SPACING_BETWEEN_SLICES,
        VR::DS,
        &ds(&[first.gap]),
    );
    shared.put(seq(tags::PIXEL_MEASURES_SEQUENCE, vec![pm]));
    if one_orientation {
        shared.put(seq(
            tags::PLANE_ORIENTATION_SEQUENCE,
            vec![item(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, &first.iop())],
        ));
    }
    let mut pv = item(tags::RESCALE_SLOPE, VR::DS, "1");
    put_str(&mut pv, tags::RESCALE_INTERCEPT, VR::DS, "0");
    put_str(&mut pv, tags::RESCALE_TYPE, VR::LO, "US");
    shared.put(seq(tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE, vec![pv]));
    shared.put(seq(tags::MR_IMAGE_FRAME_TYPE_SEQUENCE, vec![frame_type()]));
    if enhanced {
        put_shared_mr_macros(&mut shared, frames.iter().all(|f| f.echo_time.is_none()));
    }
    o.put(seq(SHARED_FG, vec![shared]));
    let mut pixels = Vec::new();
    let per_frame = frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            pixels.extend(f.slab.render(f.k, &*f.contrast, &mut rng));
            let mut pf = InMemDicomObject::new_empty();
            let mut fc = InMemDicomObject::new_empty();
            ul(&mut fc, tags::FRAME_ACQUISITION_NUMBER, &[1]);
            let t = f.temporal.unwrap_or(1) as f64 - 1.0;
            put_str(
                &mut fc,
                tags::FRAME_REFERENCE_DATE_TIME,
                VR::DT,
                &format!("20260101{}", tm(t * 2.0)),
            );
            put_str(
                &mut fc,
                tags::FRAME_ACQUISITION_DATE_TIME,
                VR::DT,
                &format!("20260101{}", tm(t * 2.0)),
            );
            fd(&mut fc, tags::FRAME_ACQUISITION_DURATION, &[2000.0]);
            if enhanced {
                ul(&mut fc, DIMENSION_INDEX_VALUES, &f.dims);
                if let Some(s) = f.stack {
                    put_str(&mut fc, STACK_ID, VR::SH, s);
                    ul(&mut fc, IN_STACK_POSITION, &[f.in_stack]);
                }
                if let Some(t) = f.temporal {
                    ul(&mut fc, TEMPORAL_POSITION_INDEX, &[t]);
                }
            }
            pf.put(seq(FRAME_CONTENT_SEQ, vec![fc]));
            pf.put(seq(
                tags::PLANE_POSITION_SEQUENCE,
                vec![item(
                    tags::IMAGE_POSITION_PATIENT,
                    VR::DS,
                    &ds(&f.slab.ipp(f.k)),
                )],
            ));
            if !one_orientation {
                pf.put(seq(
                    tags::PLANE_ORIENTATION_SEQUENCE,
                    vec![item(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, &f.slab.iop())],
                ));
            }
            if let Some(te) = f.echo_time {
                let mut e = InMemDicomObject::new_empty();
                fd(&mut e, EFFECTIVE_ECHO_TIME, &[te]);
                pf.put(seq(MR_ECHO_SEQ, vec![e]));
            }
            if !enhanced {
                let mut src = item(
                    tags::REFERENCED_SOP_CLASS_UID,
                    VR::UI,
                    uids::MR_IMAGE_STORAGE,
                );
                put_str(
                    &mut src,
                    tags::REFERENCED_SOP_INSTANCE_UID,
                    VR::UI,
                    &uid(case.seed, &["vendor", case.name, "source", &i.to_string()]),
                );
                pf.put(seq(tags::CONVERSION_SOURCE_ATTRIBUTES_SEQUENCE, vec![src]));
                pf.put(seq(
                    tags::UNASSIGNED_PER_FRAME_CONVERTED_ATTRIBUTES_SEQUENCE,
                    vec![InMemDicomObject::new_empty()],
                ));
            }
            pf
        })
        .collect();
    o.put(seq(PER_FRAME_FG, per_frame));
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::from(le_bytes(&pixels)),
    ));
    o
}

/// The MR Pulse Sequence module (required of ORIGINAL Enhanced MR images).
fn put_mr_pulse_sequence(o: &mut InMemDicomObject) {
    for (tag, vr, v) in [
        (tags::PULSE_SEQUENCE_NAME, VR::SH, "TSE"),
        (tags::MR_ACQUISITION_TYPE, VR::CS, "2D"),
        (tags::ECHO_PULSE_SEQUENCE, VR::CS, "SPIN"),
        (tags::MULTIPLE_SPIN_ECHO, VR::CS, "NO"),
        (tags::MULTI_PLANAR_EXCITATION, VR::CS, "YES"),
        (tags::PHASE_CONTRAST, VR::CS, "NO"),
        (tags::TIME_OF_FLIGHT_CONTRAST, VR::CS, "NO"),
        (tags::STEADY_STATE_PULSE_SEQUENCE, VR::CS, "NONE"),
        (tags::ECHO_PLANAR_PULSE_SEQUENCE, VR::CS, "NO"),
        (tags::SATURATION_RECOVERY, VR::CS, "NO"),
        (tags::SPECTRALLY_SELECTED_SUPPRESSION, VR::CS, "NONE"),
        (tags::OVERSAMPLING_PHASE, VR::CS, "NONE"),
        (tags::GEOMETRY_OF_K_SPACE_TRAVERSAL, VR::CS, "RECTILINEAR"),
        (tags::SEGMENTED_K_SPACE_TRAVERSAL, VR::CS, "SINGLE"),
        (tags::RECTILINEAR_PHASE_ENCODE_REORDERING, VR::CS, "LINEAR"),
    ] {
        put_str(o, tag, vr, v);
    }
    us(o, tags::NUMBER_OF_K_SPACE_TRAJECTORIES, 1);
}

/// The MR Image Frame Type macro of every frame.
fn frame_type() -> InMemDicomObject {
    let mut ft = item(tags::FRAME_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\VOLUME\\NONE");
    for (tag, v) in [
        (tags::PIXEL_PRESENTATION, "MONOCHROME"),
        (tags::VOLUMETRIC_PROPERTIES, "VOLUME"),
        (tags::VOLUME_BASED_CALCULATION_TECHNIQUE, "NONE"),
        (tags::COMPLEX_IMAGE_COMPONENT, "MAGNITUDE"),
        (tags::ACQUISITION_CONTRAST, "T2"),
    ] {
        put_str(&mut ft, tag, VR::CS, v);
    }
    ft
}

/// The MR functional group macros every frame of an ORIGINAL Enhanced MR image carries.
fn put_shared_mr_macros(shared: &mut InMemDicomObject, with_echo: bool) {
    let mut timing = InMemDicomObject::new_empty();
    put_str(&mut timing, tags::REPETITION_TIME, VR::DS, "3000");
    put_str(&mut timing, tags::FLIP_ANGLE, VR::DS, "90");
    put_str(&mut timing, tags::ECHO_TRAIN_LENGTH, VR::IS, "1");
    us(&mut timing, tags::RF_ECHO_TRAIN_LENGTH, 1);
    us(&mut timing, tags::GRADIENT_ECHO_TRAIN_LENGTH, 0);
    let modes = ["STATIC FIELD", "RF", "GRADIENT"].map(|t| {
        let mut m = item(tags::OPERATING_MODE_TYPE, VR::CS, t);
        put_str(&mut m, tags::OPERATING_MODE, VR::CS, "IEC_NORMAL");
        m
    });
    timing.put(seq(tags::OPERATING_MODE_SEQUENCE, modes.to_vec()));
    let mut sar = item(
        tags::SPECIFIC_ABSORPTION_RATE_DEFINITION,
        VR::CS,
        "IEC_WHOLE_BODY",
    );
    fd(&mut sar, tags::SPECIFIC_ABSORPTION_RATE_VALUE, &[0.5]);
    timing.put(seq(tags::SPECIFIC_ABSORPTION_RATE_SEQUENCE, vec![sar]));
    put_str(&mut timing, tags::GRADIENT_OUTPUT_TYPE, VR::CS, "DB_DT");
    fd(&mut timing, tags::GRADIENT_OUTPUT, &[10.0]);
    shared.put(seq(
        tags::MR_TIMING_AND_RELATED_PARAMETERS_SEQUENCE,
        vec![timing],
    ));
    if with_echo {
        let mut e = InMemDicomObject::new_empty();
        fd(&mut e, EFFECTIVE_ECHO_TIME, &[90.0]);
        shared.put(seq(MR_ECHO_SEQ, vec![e]));
    }
    let mut fov = item(tags::IN_PLANE_PHASE_ENCODING_DIRECTION, VR::CS, "COLUMN");
    us(&mut fov, tags::MR_ACQUISITION_FREQUENCY_ENCODING_STEPS, 64);
    us(
        &mut fov,
        tags::MR_ACQUISITION_PHASE_ENCODING_STEPS_IN_PLANE,
        64,
    );
    put_str(&mut fov, tags::PERCENT_SAMPLING, VR::DS, "100");
    put_str(&mut fov, tags::PERCENT_PHASE_FIELD_OF_VIEW, VR::DS, "100");
    shared.put(seq(tags::MRFOV_GEOMETRY_SEQUENCE, vec![fov]));
    let mut m = item(tags::INVERSION_RECOVERY, VR::CS, "NO");
    put_str(&mut m, tags::FLOW_COMPENSATION, VR::CS, "NONE");
    put_str(&mut m, tags::SPOILING, VR::CS, "NONE");
    put_str(&mut m, tags::T2_PREPARATION, VR::CS, "NO");
    put_str(&mut m, tags::SPECTRALLY_SELECTED_EXCITATION, VR::CS, "NONE");
    put_str(&mut m, tags::SPATIAL_PRESATURATION, VR::CS, "NONE");
    put_str(&mut m, tags::PARTIAL_FOURIER, VR::CS, "NO");
    put_str(&mut m, tags::PARALLEL_ACQUISITION, VR::CS, "NO");
    shared.put(seq(tags::MR_MODIFIER_SEQUENCE, vec![m]));
    let mut im = item(tags::MAGNETIZATION_TRANSFER, VR::CS, "NONE");
    put_str(&mut im, tags::BLOOD_SIGNAL_NULLING, VR::CS, "NO");
    put_str(&mut im, tags::TAGGING, VR::CS, "NONE");
    fd(&mut im, tags::TRANSMITTER_FREQUENCY, &[127.7]);
    put_str(&mut im, tags::PIXEL_BANDWIDTH, VR::DS, "200");
    shared.put(seq(tags::MR_IMAGING_MODIFIER_SEQUENCE, vec![im]));
    let mut rc = item(tags::RECEIVE_COIL_NAME, VR::SH, "HEAD");
    put_str(&mut rc, tags::RECEIVE_COIL_MANUFACTURER_NAME, VR::LO, "");
    put_str(&mut rc, tags::RECEIVE_COIL_TYPE, VR::CS, "VOLUME");
    put_str(&mut rc, tags::QUADRATURE_RECEIVE_COIL, VR::CS, "NO");
    shared.put(seq(tags::MR_RECEIVE_COIL_SEQUENCE, vec![rc]));
    let mut tc = item(tags::TRANSMIT_COIL_NAME, VR::SH, "BODY");
    put_str(&mut tc, tags::TRANSMIT_COIL_MANUFACTURER_NAME, VR::LO, "");
    put_str(&mut tc, tags::TRANSMIT_COIL_TYPE, VR::CS, "BODY");
    shared.put(seq(tags::MR_TRANSMIT_COIL_SEQUENCE, vec![tc]));
    let mut av = InMemDicomObject::new_empty();
    put_str(&mut av, tags::NUMBER_OF_AVERAGES, VR::DS, "1");
    shared.put(seq(tags::MR_AVERAGES_SEQUENCE, vec![av]));
    let mut an = item(tags::FRAME_LATERALITY, VR::CS, "B");
    an.put(seq(
        tags::ANATOMIC_REGION_SEQUENCE,
        vec![{
            let mut c = item(tags::CODE_VALUE, VR::SH, "12738006");
            put_str(&mut c, tags::CODING_SCHEME_DESIGNATOR, VR::SH, "SCT");
            put_str(&mut c, tags::CODE_MEANING, VR::LO, "Brain");
            c
        }],
    ));
    shared.put(seq(tags::FRAME_ANATOMY_SEQUENCE, vec![an]));
}

/// Mixed matrix: 15 slices of 256×256 and 5 of 320×320 (same field of view) in one
/// series, at interleaved positions (every fourth slice position is 320×320).
pub fn mixed_matrix(dir: &Path, seed: u64) -> std::io::Result<Vec<PathBuf>> {
    let case = Case::new(seed, "mixed_matrix", 14, "AX T2 mixed", "SIEMENS", "Prisma");
    let small = Slab::new(Plane::Axial, 256, 256, 230.0, 20, 5.0);
    let large = Slab::new(Plane::Axial, 320, 320, 230.0, 20, 5.0);
    let mut rng = case.rng();
    let p = MrParams {
        image_type: "ORIGINAL\\PRIMARY\\M\\ND\\NORM",
        scanning_sequence: "SE",
        sequence_variant: "SK\\SP",
        sequence_name: "*tse2d1_15",
        tr: 5000.0,
        te: 90.0,
        echo_number: 1,
        acquisition_number: 1,
        acquisition_time: 0.0,
    };
    let objects = (0..20)
        .map(|k| {
            let slab = if k % 4 == 3 { &large } else { &small };
            let px = slab.render(k, &tissue, &mut rng);
            let o = mr_image(&case, &k.to_string(), slab, k, &px, k + 1, &p);
            (format!("IM{:04}.dcm", k + 1), o)
        })
        .collect();
    write_all(dir, objects)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csa_header_layout_is_csa2() {
        let h = csa2(&[csa("B_value", "IS", &["1000".into()])], CsaFault::None);
        assert_eq!(&h[..4], b"SV10");
        assert_eq!(u32::from_le_bytes(h[8..12].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(h[12..16].try_into().unwrap()), 77);
        assert_eq!(&h[16..23], b"B_value");
        // Tag: name 64, VM 4, VR 4, SyngoDT 4, items 4, 77 4; then one item.
        let item = 16 + 84;
        assert_eq!(
            u32::from_le_bytes(h[16 + 76..16 + 80].try_into().unwrap()),
            1
        );
        assert_eq!(
            u32::from_le_bytes(h[item + 4..item + 8].try_into().unwrap()),
            5
        );
        assert_eq!(&h[item + 16..item + 21], b"1000\0");
        assert_eq!(h.len(), item + 16 + 8);
    }

    #[test]
    fn csa_faults_break_what_they_say() {
        let e = [csa("A", "IS", &["1".into()]), csa("B", "IS", &["2".into()])];
        let good = csa2(&e, CsaFault::None);
        assert!(csa2(&e, CsaFault::Truncated).len() < good.len());
        let huge = csa2(&e, CsaFault::TagCountHuge);
        assert_eq!(
            u32::from_le_bytes(huge[8..12].try_into().unwrap()),
            1_000_000
        );
        assert_eq!(&csa2(&e, CsaFault::NotSv10)[..4], b"XV99");
    }

    #[test]
    fn mosaic_position_is_the_whole_mosaics_corner() {
        let d = tempfile::tempdir().unwrap();
        let files = siemens_mosaic(d.path(), 1, Mosaic::default()).unwrap();
        assert_eq!(files.len(), MOSAIC_VOLUMES);
        let obj = dicom_object::open_file(&files[0]).unwrap();
        let ipp: Vec<f64> = obj
            .element(tags::IMAGE_POSITION_PATIENT)
            .unwrap()
            .to_multi_float64()
            .unwrap();
        let slab = Slab::new(Plane::Axial, 72, 72, 216.0, 9, 4.0);
        // 72 pixels of 3 mm: the mosaic corner is one tile (216 mm) left and up of the
        // first slice's corner.
        let first = slab.ipp(0);
        assert!(
            (ipp[0] - (first[0] - 216.0)).abs() < 1e-6,
            "{ipp:?} {first:?}"
        );
        assert!((ipp[1] - (first[1] - 216.0)).abs() < 1e-6);
        assert!((ipp[2] - first[2]).abs() < 1e-6);
    }

    #[test]
    fn every_case_writes_readable_files() {
        let d = tempfile::tempdir().unwrap();
        for case in cases().iter().chain(hostile_cases().iter()) {
            let files = write_case(case, d.path(), 3).unwrap();
            assert!(!files.is_empty(), "{}", case.name);
            for f in files {
                dicom_object::open_file(&f).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            }
        }
    }
}
