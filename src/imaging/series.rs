//! Reading a study's DICOM instances into series (docs/prima-inference-spec.md §1): which
//! files form a series, slice order, pixel values and type, geometry, series name.
//!
//! Two slice orders:
//! - [`SliceOrder::Position`] (the node's default): every SeriesInstanceUID found is a
//!   series; slices are ordered by ImagePositionPatient projected on the slice normal
//!   (ties by InstanceNumber). This is a deliberate difference from upstream, which has
//!   file names and folders to go by; the node receives instances over the network.
//! - [`SliceOrder::FileName`]: upstream's behaviour on a folder tree, for parity testing —
//!   each sub-folder is a candidate series, only its smallest SeriesInstanceUID is read,
//!   files are stacked in natural-sort order of their paths (§1.3–§1.5).
//!
//! Enhanced MR (multi-frame) files are split into one slice per frame (`super::header`).
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::frames::{allocate_volume, append_stored, open};
use super::header::file_name;
/// The images a series is made of, and how they are read: re-exported because every stage
/// after this one speaks of slices in a series.
pub use super::header::{read_slice_headers, SliceHeaderError, SliceMeta};
use super::natsort;
/// Every stage that gives up on a series reports it in these terms.
pub use super::skip::{SeriesSkip, SkipReason};
use super::stack::sort_by_position;
use super::volumes::{self, NotUsed};
use super::{itk, Geometry, PixelType, Volume};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SliceOrder {
    #[default]
    Position,
    FileName,
}

/// One volume ready to load: its slices in stacking order.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesCandidate {
    /// Folder name (file-name mode) or SeriesInstanceUID (position mode).
    pub key: String,
    pub series_instance_uid: String,
    /// Which volume of its series this is ([`super::volumes::SplitVolume::label`]; "" when
    /// the series is one volume).
    pub volume: String,
    /// Images of the series UID before the size filter (GDCM's file count).
    pub images_found: usize,
    pub slices: Vec<SliceMeta>,
    pub name: String,
}

/// A study's volumes, in model order, and the ones that could not be used.
#[derive(Debug, Clone, Default)]
pub struct StudyScan {
    /// The volumes the model reads.
    pub series: Vec<SeriesCandidate>,
    /// Volumes split from a series that the model does not read, and why (also in
    /// `skipped`, as text).
    pub not_used: Vec<(SeriesCandidate, NotUsed)>,
    pub skipped: Vec<SeriesSkip>,
    pub study_instance_uid: Option<String>,
    pub study_description: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImagingError {
    #[error("cannot read directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Spec §1.8 `sanitize`.
fn sanitize(t: &str) -> String {
    t.replace('+', "_plus_")
        .replace('*', "_star_")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Series name from the first slice's header (§1.8). `fallback` is used when a
/// description/protocol attribute is multi-valued (upstream falls back to the folder name).
pub fn series_name(first: &SliceMeta, fallback: &str) -> String {
    let (sd, pn) = match (&first.series_description, &first.protocol_name) {
        (Ok(sd), Ok(pn)) => (
            sanitize(sd.as_deref().unwrap_or("")),
            sanitize(pn.as_deref().unwrap_or("")),
        ),
        _ => return fallback.to_string(),
    };
    match (sd.is_empty(), pn.is_empty()) {
        (false, false) if sd == pn => sd,
        (false, false) => format!("{sd}-{pn}-Protocol"),
        (false, true) => sd,
        (true, false) => format!("{pn}-Protocol"),
        (true, true) => {
            if first.series_instance_uid.is_empty() {
                let u = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
                format!("UNK-{}", &u[..8])
            } else {
                format!("UNK-{}", first.series_instance_uid)
            }
        }
    }
}

/// Keep the most common (Columns, Rows) group (§1.4). `order` is the order used to break
/// ties (the first size seen wins).
fn most_common_size(slices: Vec<SliceMeta>) -> Vec<SliceMeta> {
    let mut counts: Vec<((u32, u32), usize)> = Vec::new();
    for s in &slices {
        let k = (s.cols, s.rows);
        match counts.iter_mut().find(|(kk, _)| *kk == k) {
            Some((_, n)) => *n += 1,
            None => counts.push((k, 1)),
        }
    }
    let best = counts
        .iter()
        .fold(None::<((u32, u32), usize)>, |acc, &(k, n)| match acc {
            Some((_, bn)) if bn >= n => acc,
            _ => Some((k, n)),
        });
    match best {
        Some((k, _)) => slices
            .into_iter()
            .filter(|s| (s.cols, s.rows) == k)
            .collect(),
        None => slices,
    }
}

fn list_files(dir: &Path, recursive: bool) -> Result<Vec<PathBuf>, ImagingError> {
    let mut out = Vec::new();
    let walker = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .max_depth(if recursive { usize::MAX } else { 1 })
        .follow_links(false);
    for entry in walker {
        let entry = entry.map_err(|e| ImagingError::ReadDir {
            path: dir.to_path_buf(),
            source: e.into(),
        })?;
        if entry.file_type().is_file() {
            out.push(entry.into_path());
        }
    }
    Ok(out)
}

/// Scan a study folder tree into series.
pub fn scan_study(dir: &Path, order: SliceOrder) -> Result<StudyScan, ImagingError> {
    match order {
        SliceOrder::FileName => scan_by_folder(dir),
        SliceOrder::Position => {
            let files = list_files(dir, true)?;
            let mut headers = Vec::new();
            for f in files {
                if let Ok(h) = read_slice_headers(&f) {
                    headers.extend(h);
                }
            }
            Ok(group_by_series_uid(headers))
        }
    }
}

/// Position mode on already-read headers (the node passes the spool's instances).
pub fn group_by_series_uid(headers: Vec<SliceMeta>) -> StudyScan {
    let mut scan = StudyScan::default();
    let mut groups: HashMap<String, Vec<SliceMeta>> = HashMap::new();
    for h in headers {
        if scan.study_instance_uid.is_none() && !h.study_instance_uid.is_empty() {
            scan.study_instance_uid = Some(h.study_instance_uid.clone());
        }
        if scan.study_description.is_none() {
            scan.study_description = h.study_description.clone();
        }
        groups
            .entry(h.series_instance_uid.clone())
            .or_default()
            .push(h);
    }
    let mut keys: Vec<(Option<i64>, String)> = groups
        .iter()
        .map(|(k, v)| (v.iter().filter_map(|s| s.series_number).min(), k.clone()))
        .collect();
    // Series order does not change the embedding beyond rounding (§12.4); SeriesNumber
    // then UID keeps it stable and readable.
    keys.sort_by(|a, b| {
        a.0.unwrap_or(i64::MAX)
            .cmp(&b.0.unwrap_or(i64::MAX))
            .then_with(|| natsort::key(&a.1).cmp(&natsort::key(&b.1)))
    });
    for (_, uid) in keys {
        let slices = groups.remove(&uid).unwrap_or_default();
        let found = slices.len();
        let split = volumes::split(slices);
        let verdicts = volumes::choose(&split);
        let used = verdicts.iter().filter(|v| v.is_ok()).count();
        for (v, verdict) in split.into_iter().zip(verdicts) {
            let base = series_name(&v.slices[0], &format!("UNK-{uid}"));
            // The series' name as always when one volume of it is used; the volume's label
            // added when several are, so the text encoder can tell them apart.
            let name = if used > 1 && !v.label.is_empty() {
                format!("{base}_{}", sanitize(&v.label))
            } else {
                base
            };
            let c = SeriesCandidate {
                key: uid.clone(),
                series_instance_uid: uid.clone(),
                volume: v.label,
                images_found: found,
                slices: v.slices,
                name,
            };
            match verdict {
                Ok(()) => scan.series.push(c),
                Err(why) => {
                    scan.skipped.push(
                        SeriesSkip::new(
                            c.key.clone(),
                            Some(uid.clone()),
                            &SkipReason::NotUsed(why.clone()),
                        )
                        .volume(&c.volume, c.slices.len()),
                    );
                    scan.not_used.push((c, why));
                }
            }
        }
    }
    scan
}

/// Upstream's folder walk (§1.1–§1.5).
fn scan_by_folder(dir: &Path) -> Result<StudyScan, ImagingError> {
    let mut scan = StudyScan::default();
    let rd = std::fs::read_dir(dir).map_err(|e| ImagingError::ReadDir {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let mut folders: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.path())
        .collect();
    natsort::sort_by_key(&mut folders, |p| file_name(p));
    for folder in folders {
        let key = file_name(&folder);
        let files = list_files(&folder, false)?;
        let mut headers: Vec<SliceMeta> = Vec::new();
        for f in files {
            if let Ok(h) = read_slice_headers(&f) {
                headers.extend(h);
            }
        }
        if headers.is_empty() {
            scan.skipped
                .push(SeriesSkip::new(key, None, &SkipReason::NoImageInFolder));
            continue;
        }
        if scan.study_instance_uid.is_none() {
            scan.study_instance_uid = Some(headers[0].study_instance_uid.clone());
            scan.study_description = headers[0].study_description.clone();
        }
        // GDCM reads only the group with the smallest SeriesInstanceUID (byte order).
        let uid = headers
            .iter()
            .map(|h| h.series_instance_uid.clone())
            .min()
            .unwrap_or_default();
        let mut group: Vec<SliceMeta> = headers
            .into_iter()
            .filter(|h| h.series_instance_uid == uid)
            .collect();
        let found = group.len();
        sort_by_position(&mut group); // GDCM's order, used only to break size ties
        let mut kept = most_common_size(group);
        kept.sort_by_cached_key(|s| (natsort::key(&s.path.to_string_lossy()), s.frame));
        let name = series_name(&kept[0], &key);
        scan.series.push(SeriesCandidate {
            key,
            series_instance_uid: uid,
            volume: String::new(),
            images_found: found,
            slices: kept,
            name,
        });
    }
    Ok(scan)
}

pub use super::skip::{MAX_PATCHES, MAX_VOLUME_VALUES};

/// Patches a series of `n` slices yields after the in-plane resample: the two in-plane
/// axes are 256 (8 patches each); the slice axis is padded to a multiple of 4.
pub fn patch_count(n_slices: usize) -> usize {
    64 * n_slices.div_ceil(4)
}

/// Stack a series into an ITK-like volume (§1.6–§1.7). Errors are skip reasons.
pub fn load_volume(c: &SeriesCandidate) -> Result<Volume, SkipReason> {
    let first = c.slices.first().ok_or(SkipReason::NoSlices)?;
    check_stackable(c, first)?;
    let geometry = stacked_geometry(c, first)?;
    let pixel_type = PixelType::from_rescale(
        first.slope,
        first.intercept,
        first.bits_stored,
        first.signed,
    );
    let size = [first.cols as usize, first.rows as usize, c.slices.len()];
    let mut data = allocate_volume(size)?;
    read_pixels(c, size, pixel_type, &mut data)?;
    Ok(Volume {
        size,
        data,
        pixel_type,
        geometry,
    })
}

/// What the model can take at all: one sample per pixel, and few enough slices.
fn check_stackable(c: &SeriesCandidate, first: &SliceMeta) -> Result<(), SkipReason> {
    if first.samples_per_pixel != 1 {
        return Err(SkipReason::Colour {
            samples_per_pixel: first.samples_per_pixel,
        });
    }
    let n = c.slices.len();
    if patch_count(n) > MAX_PATCHES {
        return Err(SkipReason::TooManySlices {
            slices: n,
            patches: patch_count(n),
        });
    }
    Ok(())
}

/// Origin, direction and spacing of the stacked slices, as GDCM/ITK derive them (§1.7).
fn stacked_geometry(c: &SeriesCandidate, first: &SliceMeta) -> Result<Geometry, SkipReason> {
    let iop = first.iop.ok_or(SkipReason::MissingOrientation)?;
    let origin = first.ipp.ok_or(SkipReason::MissingPosition)?;
    let ps = first.pixel_spacing.ok_or(SkipReason::MissingPixelSpacing)?;
    if c.slices.iter().any(|s| s.ipp.is_none()) {
        return Err(SkipReason::PositionMissingOnSomeSlices);
    }
    let direction = itk::direction_from_iop(&iop);
    if direction.iter().flatten().any(|v| !v.is_finite())
        || (direction[0][2] == 0.0 && direction[1][2] == 0.0 && direction[2][2] == 0.0)
    {
        return Err(SkipReason::DegenerateOrientation);
    }
    let spacing_z = slice_spacing(c, origin);
    if !(ps[0] > 0.0 && ps[1] > 0.0 && ps[0].is_finite() && ps[1].is_finite()) {
        return Err(SkipReason::InvalidPixelSpacing(ps));
    }
    Ok(Geometry {
        origin,
        direction,
        spacing: [ps[1], ps[0], spacing_z],
    })
}

/// Spacing along the slice axis: first-to-last distance over the gaps (ITK's sum order),
/// SpacingBetweenSlices for a single slice.
fn slice_spacing(c: &SeriesCandidate, origin: [f64; 3]) -> f64 {
    let n = c.slices.len();
    if n > 1 {
        let last = c.slices[n - 1].ipp.unwrap();
        let d = [
            last[0] - origin[0],
            last[1] - origin[1],
            last[2] - origin[2],
        ];
        let norm = (((0.0 + d[0] * d[0]) + d[1] * d[1]) + d[2] * d[2]).sqrt();
        if norm < 1e-12 {
            1.0
        } else {
            norm / (n as f64 - 1.0)
        }
    } else {
        c.slices[0].spacing_between_slices.unwrap_or(1.0)
    }
}

/// Each slice's pixels, rescaled by its own file's slope and intercept, then cast to the
/// volume's type T as ITK does, appended to `data`.
fn read_pixels(
    c: &SeriesCandidate,
    [w, h, _]: [usize; 3],
    pixel_type: PixelType,
    data: &mut Vec<f64>,
) -> Result<(), SkipReason> {
    // Files are opened once even when several frames of a multi-frame file are used.
    let mut cache: Option<(PathBuf, dicom_object::DefaultDicomObject)> = None;
    for s in &c.slices {
        if cache.as_ref().map(|(p, _)| p != &s.path).unwrap_or(true) {
            cache = Some((s.path.clone(), open(&s.path)?));
        }
        let obj = &cache.as_ref().unwrap().1;
        let before = data.len();
        append_stored(obj, s, [w, h], data)?;
        for v in &mut data[before..] {
            *v = pixel_type.cast(s.slope * *v + s.intercept);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_spec_examples() {
        let mut m = SliceMeta {
            series_instance_uid: "1.2.3".into(),
            series_description: Ok(Some("Ax 3D T1 MPRAGE +C".into())),
            protocol_name: Ok(Some("t1_mprage_tra_iso+C".into())),
            ..SliceMeta::blank()
        };
        assert_eq!(
            series_name(&m, "F"),
            "Ax_3D_T1_MPRAGE__plus_C-t1_mprage_tra_iso_plus_C-Protocol"
        );
        m.series_description = Ok(Some("AX T2 FLAIR".into()));
        m.protocol_name = Ok(Some("AX T2 FLAIR".into()));
        assert_eq!(series_name(&m, "F"), "AX_T2_FLAIR");
        m.series_description = Ok(Some("COR T2 / FSE".into()));
        m.protocol_name = Ok(Some(String::new()));
        assert_eq!(series_name(&m, "F"), "COR_T2___FSE");
        m.series_description = Ok(None);
        m.protocol_name = Ok(Some("ep2d_diff_3scan_trace_p2".into()));
        assert_eq!(series_name(&m, "F"), "ep2d_diff_3scan_trace_p2-Protocol");
        m.protocol_name = Ok(None);
        assert_eq!(series_name(&m, "F"), "UNK-1.2.3");
        m.series_description = Err(());
        assert_eq!(series_name(&m, "folder"), "folder");
        m.series_description = Ok(Some("é".into()));
        assert_eq!(series_name(&m, "F"), "_");
    }

    #[test]
    fn patch_counts() {
        assert_eq!(patch_count(24), 384);
        assert_eq!(patch_count(1), 64);
        assert!(patch_count(312) <= MAX_PATCHES && patch_count(313) > MAX_PATCHES);
    }
}
