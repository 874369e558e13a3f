//! Synthetic brain-MR studies: a head phantom sampled in patient coordinates, written as
//! DICOM MR (or Enhanced MR) files. Used by the demo (`prima-node synth-study`), tests
//! of edge cases (256 slices, oblique, multi-frame, …) and benchmarks. Deterministic for
//! a given seed. Contains no patient data.
pub mod vendor;

use std::path::{Path, PathBuf};

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, Length, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Plane {
    Axial,
    Coronal,
    Sagittal,
    /// Axial tilted about the patient's left-right axis by this many degrees.
    ObliqueAxial(f64),
}

#[derive(Debug, Clone)]
pub struct SynthSeries {
    pub number: i32,
    pub description: String,
    pub protocol: String,
    pub plane: Plane,
    pub rows: u16,
    pub cols: u16,
    pub slices: usize,
    /// (row spacing, column spacing) in mm
    pub pixel_spacing: (f64, f64),
    pub slice_spacing: f64,
    pub signed: bool,
    pub slope: f64,
    pub intercept: f64,
    /// File names in reverse spatial order (`IM<n>` with n decreasing along the normal).
    pub reversed_names: bool,
    /// One Enhanced MR Image Storage file with per-frame functional groups.
    pub enhanced_multiframe: bool,
    pub monochrome1: bool,
    /// Signal scale (the phantom's brightest tissue).
    pub intensity: f64,
    /// The phantom's bright lesion is visible in this series (a study with it in one
    /// series only tests what an explanation points at).
    pub lesion: bool,
}

impl SynthSeries {
    pub fn new(
        number: i32,
        description: &str,
        plane: Plane,
        rows: u16,
        cols: u16,
        slices: usize,
    ) -> Self {
        SynthSeries {
            number,
            description: description.into(),
            protocol: description.to_lowercase().replace(' ', "_"),
            plane,
            rows,
            cols,
            slices,
            pixel_spacing: (230.0 / rows as f64, 230.0 / cols as f64),
            slice_spacing: 150.0 / slices.max(1) as f64,
            signed: true,
            slope: 1.0,
            intercept: 0.0,
            reversed_names: false,
            enhanced_multiframe: false,
            monochrome1: false,
            intensity: 1000.0,
            lesion: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SynthStudy {
    pub seed: u64,
    pub patient_name: String,
    pub patient_id: String,
    pub study_description: String,
    pub accession_number: String,
    pub series: Vec<SynthSeries>,
}

impl SynthStudy {
    /// A small, typical brain protocol: axial FLAIR, axial T1, coronal T2, sagittal T1.
    pub fn brain(seed: u64) -> Self {
        SynthStudy {
            seed,
            patient_name: "SYNTHETIC^PHANTOM".into(),
            patient_id: format!("SYN{seed:06}"),
            study_description: "MRI BRAIN WO CONTRAST".into(),
            accession_number: format!("ACC{seed:06}"),
            series: vec![
                SynthSeries::new(2, "AX T2 FLAIR", Plane::Axial, 256, 256, 24),
                SynthSeries::new(3, "AX T1", Plane::Axial, 192, 192, 20),
                SynthSeries::new(4, "COR T2", Plane::Coronal, 256, 256, 20),
                SynthSeries::new(5, "SAG T1", Plane::Sagittal, 256, 256, 20),
            ],
        }
    }

    /// The benchmarks' study: `instances` single-frame axial instances of `rows`×`cols`
    /// pixels over `series` series (the first `instances % series` get one more), in
    /// folders `S1`, `S2`, … (what `scripts/bench-*.sh` send).
    pub fn bench(seed: u64, instances: usize, series: usize, rows: u16, cols: u16) -> Self {
        assert!(series > 0, "a study needs at least one series");
        SynthStudy {
            seed,
            patient_name: "BENCH^PHANTOM".into(),
            patient_id: format!("BENCH{seed:04}"),
            study_description: "MRI BRAIN BENCH".into(),
            accession_number: format!("BENCH{seed:04}"),
            series: (0..series)
                .map(|i| {
                    let slices = instances / series + usize::from(i < instances % series);
                    let number = i as i32 + 1;
                    let name = format!("AX BENCH {number}");
                    SynthSeries::new(number, &name, Plane::Axial, rows, cols, slices)
                })
                .filter(|s| s.slices > 0)
                .collect(),
        }
    }
}

fn uid(seed: u64, parts: &[&str]) -> String {
    let ns = uuid::Uuid::from_u128(0x7072_696d_615f_6e6f_6465_5f73_796e_7468);
    crate::uid::from_name(&ns, &format!("{seed}/{}", parts.join("/")))
}

/// (row direction, column direction) for a plane, as DICOM IOP.
fn orientation(plane: Plane) -> ([f64; 3], [f64; 3]) {
    match plane {
        Plane::Axial => ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0]),
        Plane::Coronal => ([1.0, 0.0, 0.0], [0.0, 0.0, -1.0]),
        Plane::Sagittal => ([0.0, 1.0, 0.0], [0.0, 0.0, -1.0]),
        Plane::ObliqueAxial(deg) => {
            let t = deg.to_radians();
            ([1.0, 0.0, 0.0], [0.0, t.cos(), -t.sin()])
        }
    }
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// Where the phantom's lesion is, in patient coordinates (mm), and its radius.
pub const LESION_CENTRE: [f64; 3] = [25.0, 30.0, 25.0];
pub const LESION_RADIUS: f64 = 9.0;

/// Head phantom value at patient position p (mm, origin at the head centre).
fn phantom(p: [f64; 3], scale: f64, lesion: bool) -> f64 {
    let e = |c: [f64; 3], r: [f64; 3]| {
        ((p[0] - c[0]) / r[0]).powi(2)
            + ((p[1] - c[1]) / r[1]).powi(2)
            + ((p[2] - c[2]) / r[2]).powi(2)
    };
    if e([0.0, 0.0, 0.0], [72.0, 92.0, 78.0]) > 1.0 {
        return 0.0;
    }
    if e([0.0, 0.0, 0.0], [66.0, 86.0, 72.0]) > 1.0 {
        return 0.35 * scale; // skull/scalp
    }
    if e([-12.0, -5.0, 10.0], [6.0, 22.0, 10.0]) <= 1.0
        || e([12.0, -5.0, 10.0], [6.0, 22.0, 10.0]) <= 1.0
    {
        return 0.15 * scale; // ventricles
    }
    if lesion && e(LESION_CENTRE, [LESION_RADIUS; 3]) <= 1.0 {
        return 1.0 * scale; // a bright lesion
    }
    0.7 * scale
}

struct Lcg(u64);
impl Lcg {
    fn next_unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64) / ((1u64 << 53) as f64)
    }
}

fn put_str(obj: &mut InMemDicomObject, tag: Tag, vr: VR, v: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
}

fn ds(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{}", (x * 1e6).round() / 1e6))
        .collect::<Vec<_>>()
        .join("\\")
}

/// Write the study under `out/<series folder>/…`. Returns the files written.
pub fn write_study(study: &SynthStudy, out: &Path) -> std::io::Result<Vec<PathBuf>> {
    let study_uid = uid(study.seed, &["study"]);
    let mut files = Vec::new();
    for s in &study.series {
        let dir = out.join(format!("S{}", s.number));
        std::fs::create_dir_all(&dir)?;
        files.extend(write_series(study, s, &study_uid, &dir)?);
    }
    Ok(files)
}

fn write_series(
    study: &SynthStudy,
    s: &SynthSeries,
    study_uid: &str,
    dir: &Path,
) -> std::io::Result<Vec<PathBuf>> {
    let series_uid = uid(study.seed, &["series", &s.number.to_string()]);
    let header = SeriesHeader {
        study,
        s,
        study_uid,
        series_uid: &series_uid,
    };
    let mut slices = SliceMaker::new(study.seed, s);
    if s.enhanced_multiframe {
        write_enhanced(&header, &mut slices, dir)
    } else {
        write_single_frames(&header, &mut slices, dir)
    }
}

/// The phantom sampled on one series' slices. Slices are made in order k = 0, 1, … from
/// one random stream; single-frame series write each as it is made, so a long series
/// never has all its pixels in memory.
struct SliceMaker<'a> {
    s: &'a SynthSeries,
    /// Row, column and slice-normal directions.
    r: [f64; 3],
    c: [f64; 3],
    n: [f64; 3],
    /// Half extents of the slab, which is centred on the head.
    half_w: f64,
    half_h: f64,
    half_d: f64,
    stored_max: f64,
    rng: Lcg,
}

impl<'a> SliceMaker<'a> {
    fn new(seed: u64, s: &'a SynthSeries) -> Self {
        let (r, c) = orientation(s.plane);
        let (row_sp, col_sp) = s.pixel_spacing;
        SliceMaker {
            s,
            r,
            c,
            n: cross(r, c),
            half_w: (s.cols as f64 - 1.0) * col_sp / 2.0,
            half_h: (s.rows as f64 - 1.0) * row_sp / 2.0,
            half_d: (s.slices as f64 - 1.0) * s.slice_spacing / 2.0,
            stored_max: if s.signed {
                i16::MAX as f64
            } else {
                u16::MAX as f64
            },
            rng: Lcg(seed ^ (s.number as u64).wrapping_mul(0x9e37_79b9)),
        }
    }

    /// Slice `k`'s stored pixel values (16-bit little endian) and its position.
    fn slice(&mut self, k: usize) -> (Vec<u8>, [f64; 3]) {
        let (s, r, c, n) = (self.s, self.r, self.c, self.n);
        let (rows, cols) = (s.rows as usize, s.cols as usize);
        let (row_sp, col_sp) = s.pixel_spacing;
        let (half_w, half_h) = (self.half_w, self.half_h);
        let off = k as f64 * s.slice_spacing - self.half_d;
        let ipp = [
            -half_w * r[0] - half_h * c[0] + off * n[0],
            -half_w * r[1] - half_h * c[1] + off * n[1],
            -half_w * r[2] - half_h * c[2] + off * n[2],
        ];
        let mut bytes = Vec::with_capacity(rows * cols * 2);
        for j in 0..rows {
            for i in 0..cols {
                let p = [
                    ipp[0] + i as f64 * col_sp * r[0] + j as f64 * row_sp * c[0],
                    ipp[1] + i as f64 * col_sp * r[1] + j as f64 * row_sp * c[1],
                    ipp[2] + i as f64 * col_sp * r[2] + j as f64 * row_sp * c[2],
                ];
                let v = phantom(p, s.intensity, s.lesion) + 20.0 * self.rng.next_unit();
                let stored = ((v - s.intercept) / s.slope)
                    .round()
                    .clamp(0.0, self.stored_max);
                if s.signed {
                    bytes.extend_from_slice(&(stored as i16).to_le_bytes());
                } else {
                    bytes.extend_from_slice(&(stored as u16).to_le_bytes());
                }
            }
        }
        (bytes, ipp)
    }

    /// ImageOrientationPatient as written.
    fn iop(&self) -> String {
        let (r, c) = (self.r, self.c);
        ds(&[r[0], r[1], r[2], c[0], c[1], c[2]])
    }

    /// PixelSpacing as written.
    fn pixel_spacing(&self) -> String {
        let (row_sp, col_sp) = self.s.pixel_spacing;
        ds(&[row_sp, col_sp])
    }
}

/// What every instance of a series says about the patient, study, series and image.
struct SeriesHeader<'a> {
    study: &'a SynthStudy,
    s: &'a SynthSeries,
    study_uid: &'a str,
    series_uid: &'a str,
}

impl SeriesHeader<'_> {
    fn instance(&self, sop_class: &str, sop_uid: &str) -> InMemDicomObject {
        let mut o = InMemDicomObject::new_empty();
        put_str(&mut o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
        put_str(&mut o, tags::SOP_CLASS_UID, VR::UI, sop_class);
        put_str(&mut o, tags::SOP_INSTANCE_UID, VR::UI, sop_uid);
        self.put_patient_study_series(&mut o);
        self.put_image_pixel(&mut o);
        o
    }

    fn put_patient_study_series(&self, o: &mut InMemDicomObject) {
        let (study, s) = (self.study, self.s);
        put_str(o, tags::STUDY_DATE, VR::DA, "20260101");
        put_str(o, tags::STUDY_TIME, VR::TM, "120000");
        put_str(o, tags::ACCESSION_NUMBER, VR::SH, &study.accession_number);
        put_str(o, tags::MODALITY, VR::CS, "MR");
        put_str(o, tags::MANUFACTURER, VR::LO, "prima-node synthetic");
        put_str(o, tags::REFERRING_PHYSICIAN_NAME, VR::PN, "");
        put_str(o, tags::STUDY_DESCRIPTION, VR::LO, &study.study_description);
        put_str(o, tags::SERIES_DESCRIPTION, VR::LO, &s.description);
        put_str(o, tags::PATIENT_NAME, VR::PN, &study.patient_name);
        put_str(o, tags::PATIENT_ID, VR::LO, &study.patient_id);
        put_str(o, tags::PATIENT_BIRTH_DATE, VR::DA, "19700101");
        put_str(o, tags::PATIENT_SEX, VR::CS, "O");
        put_str(o, tags::PROTOCOL_NAME, VR::LO, &s.protocol);
        put_str(o, tags::STUDY_INSTANCE_UID, VR::UI, self.study_uid);
        put_str(o, tags::SERIES_INSTANCE_UID, VR::UI, self.series_uid);
        put_str(o, tags::STUDY_ID, VR::SH, "1");
        put_str(o, tags::SERIES_NUMBER, VR::IS, &s.number.to_string());
        put_str(
            o,
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            &uid(study.seed, &["for"]),
        );
    }

    /// The Image Pixel module: 16-bit monochrome samples.
    fn put_image_pixel(&self, o: &mut InMemDicomObject) {
        let s = self.s;
        let us = |o: &mut InMemDicomObject, tag: Tag, v: u16| {
            o.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
        };
        us(o, tags::SAMPLES_PER_PIXEL, 1);
        put_str(
            o,
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            if s.monochrome1 {
                "MONOCHROME1"
            } else {
                "MONOCHROME2"
            },
        );
        us(o, tags::ROWS, s.rows);
        us(o, tags::COLUMNS, s.cols);
        us(o, tags::BITS_ALLOCATED, 16);
        us(o, tags::BITS_STORED, 16);
        us(o, tags::HIGH_BIT, 15);
        us(o, tags::PIXEL_REPRESENTATION, if s.signed { 1 } else { 0 });
    }
}

/// One file per slice, `IM<n>.dcm`, each written as it is made.
fn write_single_frames(
    header: &SeriesHeader,
    slices: &mut SliceMaker,
    dir: &Path,
) -> std::io::Result<Vec<PathBuf>> {
    let (study, s) = (header.study, header.s);
    let iop = slices.iop();
    let spacing = slices.pixel_spacing();
    let mut written = Vec::new();
    for k in 0..s.slices {
        let (bytes, ipp) = slices.slice(k);
        let number = if s.reversed_names {
            s.slices - k
        } else {
            k + 1
        };
        let sop_uid = uid(
            study.seed,
            &["instance", &s.number.to_string(), &k.to_string()],
        );
        let mut o = header.instance(uids::MR_IMAGE_STORAGE, &sop_uid);
        put_str(&mut o, tags::INSTANCE_NUMBER, VR::IS, &(k + 1).to_string());
        put_str(&mut o, tags::IMAGE_POSITION_PATIENT, VR::DS, &ds(&ipp));
        put_str(&mut o, tags::IMAGE_ORIENTATION_PATIENT, VR::DS, &iop);
        put_str(&mut o, tags::PIXEL_SPACING, VR::DS, &spacing);
        put_str(
            &mut o,
            tags::SLICE_THICKNESS,
            VR::DS,
            &ds(&[s.slice_spacing]),
        );
        put_str(
            &mut o,
            tags::SPACING_BETWEEN_SLICES,
            VR::DS,
            &ds(&[s.slice_spacing]),
        );
        put_str(&mut o, tags::RESCALE_SLOPE, VR::DS, &ds(&[s.slope]));
        put_str(&mut o, tags::RESCALE_INTERCEPT, VR::DS, &ds(&[s.intercept]));
        o.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::from(bytes),
        ));
        let path = dir.join(format!("IM{number}.dcm"));
        write_part10(o, &path)?;
        written.push(path);
    }
    Ok(written)
}

/// A sequence element holding `items`.
fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::new(items, Length::UNDEFINED))
}

/// A sequence item holding one text element.
fn item(tag: Tag, vr: VR, v: &str) -> InMemDicomObject {
    let mut i = InMemDicomObject::new_empty();
    put_str(&mut i, tag, vr, v);
    i
}

/// One Enhanced MR file, `IM1.dcm`, all slices as frames with per-frame positions.
fn write_enhanced(
    header: &SeriesHeader,
    slices: &mut SliceMaker,
    dir: &Path,
) -> std::io::Result<Vec<PathBuf>> {
    let (study, s) = (header.study, header.s);
    let sop_uid = uid(study.seed, &["instance", &s.number.to_string(), "mf"]);
    let mut o = header.instance(uids::ENHANCED_MR_IMAGE_STORAGE, &sop_uid);
    put_str(&mut o, tags::INSTANCE_NUMBER, VR::IS, "1");
    put_str(
        &mut o,
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        &s.slices.to_string(),
    );
    o.put(seq(
        Tag(0x5200, 0x9229),
        vec![shared_functional_groups(
            s,
            &slices.iop(),
            &slices.pixel_spacing(),
        )],
    ));
    let frames: Vec<(Vec<u8>, [f64; 3])> = (0..s.slices).map(|k| slices.slice(k)).collect();
    let per_frame: Vec<InMemDicomObject> = frames
        .iter()
        .map(|(_, ipp)| {
            let mut f = InMemDicomObject::new_empty();
            f.put(seq(
                tags::PLANE_POSITION_SEQUENCE,
                vec![item(tags::IMAGE_POSITION_PATIENT, VR::DS, &ds(ipp))],
            ));
            f
        })
        .collect();
    o.put(seq(Tag(0x5200, 0x9230), per_frame));
    let all: Vec<u8> = frames.iter().flat_map(|(b, _)| b.iter().copied()).collect();
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::from(all),
    ));
    let path = dir.join("IM1.dcm");
    write_part10(o, &path)?;
    Ok(vec![path])
}

/// The Shared Functional Groups item: orientation, pixel measures, rescale.
fn shared_functional_groups(s: &SynthSeries, iop: &str, spacing: &str) -> InMemDicomObject {
    let mut shared = InMemDicomObject::new_empty();
    shared.put(seq(
        tags::PLANE_ORIENTATION_SEQUENCE,
        vec![item(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, iop)],
    ));
    let mut pm = item(tags::PIXEL_SPACING, VR::DS, spacing);
    put_str(
        &mut pm,
        tags::SLICE_THICKNESS,
        VR::DS,
        &ds(&[s.slice_spacing]),
    );
    shared.put(seq(tags::PIXEL_MEASURES_SEQUENCE, vec![pm]));
    let mut pv = item(tags::RESCALE_SLOPE, VR::DS, &ds(&[s.slope]));
    put_str(
        &mut pv,
        tags::RESCALE_INTERCEPT,
        VR::DS,
        &ds(&[s.intercept]),
    );
    put_str(&mut pv, tags::RESCALE_TYPE, VR::LO, "US");
    shared.put(seq(tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE, vec![pv]));
    shared
}

fn write_part10(o: InMemDicomObject, path: &Path) -> std::io::Result<()> {
    let file = o
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .map_err(std::io::Error::other)?;
    file.write_to_file(path).map_err(std::io::Error::other)
}
