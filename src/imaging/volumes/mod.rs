//! One series → the 3D volumes it holds, the way dcm2niix separates them, and which of them
//! Prima reads (docs/architecture.md, "From series to volumes").
//!
//! Scanners keep several volumes in one series: diffusion b-values and directions, echoes,
//! magnitude and phase, time points, localizer planes, a mixed matrix. Images are grouped by
//! what distinguishes volumes ([`GroupKey`]: orientation, matrix, pixel spacing, image
//! type, echo, b-value, gradient, stack, Enhanced MR dimension indices); a group whose
//! positions repeat is a 4D series, split by temporal position (or acquisition order);
//! every volume must then have uniform slice spacing. [`choose`] decides, as a pure
//! function of the volumes, which ones the model reads and why the others are not used.

use std::collections::BTreeMap;

use super::header::SliceMeta;
use super::itk;
use super::stack::{mosaic_tiles, sort_by_position};

/// Orientation cosines that differ by less than this are one orientation (scanners write
/// them rounded to a few decimals, differently per slice on some).
const ORIENTATION_TOLERANCE: f64 = 1e-3;
/// Positions along the normal closer than this (mm) are the same slice position.
const POSITION_TOLERANCE: f64 = 0.01;
/// Slice gaps may differ from their median by this fraction (plus 0.05 mm): rounding of
/// positions, not a missing slice.
const SPACING_TOLERANCE: f64 = 0.1;
/// A 3-plane localizer has a handful of images per plane; a volume with more in a series
/// that also holds localizer planes is a real acquisition (as in upstream's Study A, where
/// 20 sagittal images share a series with three localizer images).
const LOCALIZER_MAX_SLICES: usize = 7;

/// ImageType words that name a computed map or projection: a volume of its own.
const DERIVED_KINDS: [&str; 13] = [
    "ADC",
    "EADC",
    "TRACEW",
    "TRACE",
    "FA",
    "EXP",
    "MIP",
    "MNIP",
    "MPR",
    "CPR",
    "SUB",
    "PROJECTION IMAGE",
    "T2MAP",
];

/// The complex component an image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Magnitude,
    Phase,
    Real,
    Imaginary,
}

impl Component {
    fn label(self) -> &'static str {
        match self {
            Component::Magnitude => "mag",
            Component::Phase => "ph",
            Component::Real => "real",
            Component::Imaginary => "imag",
        }
    }
}

/// ImageType value 3 and later (or Enhanced MR's ComplexImageComponent) name the
/// component: Siemens M/P/R/I, GE and others MAGNITUDE/PHASE…, Philips M_FFE/P_SE….
pub fn component(image_type: &[String], complex: Option<&str>) -> Component {
    let of = |w: &str| match w {
        "P" | "PHASE" | "PHASE MAP" => Some(Component::Phase),
        "R" | "REAL" => Some(Component::Real),
        "I" | "IMAGINARY" => Some(Component::Imaginary),
        w if w.starts_with("P_") => Some(Component::Phase),
        w if w.starts_with("R_") => Some(Component::Real),
        w if w.starts_with("I_") => Some(Component::Imaginary),
        _ => None,
    };
    if let Some(c) = complex {
        return of(c.trim()).unwrap_or(Component::Magnitude);
    }
    image_type
        .iter()
        .skip(2)
        .find_map(|w| of(w))
        .unwrap_or(Component::Magnitude)
}

/// What distinguishes one volume of a series from another (orientation aside, which is
/// compared with a tolerance).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupKey {
    pub matrix: (u32, u32),
    /// PixelSpacing in µm.
    pub spacing: Option<[i64; 2]>,
    pub component: Component,
    pub derived: Vec<String>,
    pub localizer: bool,
    /// EchoNumbers where the scanner gives it.
    pub echo: Option<i64>,
    /// Else the echo time, in hundredths of a ms (Enhanced MR's EffectiveEchoTime).
    pub echo_time: Option<i64>,
    /// b-value in s/mm² (rounded).
    pub b_value: Option<i64>,
    /// Gradient direction, thousandths.
    pub gradient: Option<[i64; 3]>,
    pub isotropic: bool,
    pub stack: Option<String>,
    pub dimensions: Vec<u32>,
}

fn key_of(s: &SliceMeta) -> GroupKey {
    let a = &s.acquisition;
    let derived: Vec<String> = DERIVED_KINDS
        .iter()
        .filter(|k| a.image_type.iter().any(|t| t == *k))
        .map(|k| k.to_string())
        .collect();
    GroupKey {
        matrix: (s.cols, s.rows),
        spacing: s.pixel_spacing.map(|p| {
            [
                (p[0] * 1000.0).round() as i64,
                (p[1] * 1000.0).round() as i64,
            ]
        }),
        component: component(&a.image_type, a.complex_component.as_deref()),
        derived,
        localizer: a
            .image_type
            .iter()
            .any(|t| t == "LOCALIZER" || t == "SCOUT"),
        echo: a.echo_number,
        echo_time: a
            .echo_time
            .filter(|_| a.echo_number.is_none())
            .map(|t| (t * 100.0).round() as i64),
        b_value: a.b_value.map(|b| b.round() as i64),
        gradient: a
            .gradient
            // A zero vector is "no direction" (b = 0 or a trace image).
            .filter(|g| g.iter().any(|v| v.abs() > 1e-6))
            .map(|g| g.map(|v| (v * 1000.0).round() as i64)),
        isotropic: a
            .directionality
            .as_deref()
            .is_some_and(|d| d.eq_ignore_ascii_case("ISOTROPIC")),
        stack: a.stack_id.clone(),
        dimensions: a.dimension_values.clone(),
    }
}

fn same_orientation(a: Option<[f64; 6]>, b: Option<[f64; 6]>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a
            .iter()
            .zip(&b)
            .all(|(x, y)| (x - y).abs() <= ORIENTATION_TOLERANCE),
        (None, None) => true,
        _ => false,
    }
}

/// One volume of a series: its images in stacking order.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitVolume {
    /// What tells it apart from the series' other volumes ("" when the series is one
    /// volume): e.g. "b1000", "e2", "ph", "t3", "i2".
    pub label: String,
    pub key: GroupKey,
    /// Index of its orientation among the series' orientations (0-based).
    pub plane: usize,
    /// Planes the series holds.
    pub planes: usize,
    /// Time point (0-based) and time points of its group, for a 4D series.
    pub time: Option<(usize, usize)>,
    pub slices: Vec<SliceMeta>,
    /// Why these images are not one volume, if they are not.
    pub not_a_volume: Option<NotAVolume>,
}

/// Why a group of images cannot be stacked into one volume.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NotAVolume {
    #[error("{0}")]
    Header(#[from] super::acquisition::HeaderDefect),
    #[error("positions repeat unevenly ({min} to {max} images at one position)")]
    UnevenRepeats { min: usize, max: usize },
    #[error("slice spacing varies ({min:.3} to {max:.3} mm)")]
    Spacing { min: f64, max: f64 },
}

/// Why a volume is not given to the model. The texts are output (run record, SR, status
/// page).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NotUsed {
    #[error("not a volume: {0}")]
    NotAVolume(NotAVolume),
    #[error("{} image: Prima reads magnitude images", .0.label())]
    Component(Component),
    #[error("localizer")]
    Localizer,
    #[error("3-plane localizer ({0} orientations in one series)")]
    ThreePlane(usize),
    #[error("time point {} of {} of a 4D series: the first time point is used", .0 + 1, .1)]
    LaterTimePoint(usize, usize),
    #[error("diffusion direction at b={b}: the isotropic (trace) image is used")]
    DirectionWithTrace { b: i64 },
    #[error("diffusion direction {index} of {of} at b={b}: the first direction is used")]
    LaterDirection { b: i64, index: usize, of: usize },
}

/// Split one series' images (already known to share a SeriesInstanceUID) into volumes.
/// A series that is one clean volume comes back as one volume with its images sorted as
/// [`super::series`] always sorted them.
pub fn split(slices: Vec<SliceMeta>) -> Vec<SplitVolume> {
    // Group by (orientation within tolerance, key).
    let mut orientations: Vec<Option<[f64; 6]>> = Vec::new();
    let mut groups: Vec<((usize, GroupKey), Vec<SliceMeta>)> = Vec::new();
    for s in slices.into_iter().flat_map(mosaic_tiles) {
        let plane = match orientations
            .iter()
            .position(|o| same_orientation(*o, s.iop))
        {
            Some(p) => p,
            None => {
                orientations.push(s.iop);
                orientations.len() - 1
            }
        };
        let k = (plane, key_of(&s));
        match groups.iter_mut().find(|(gk, _)| *gk == k) {
            Some((_, v)) => v.push(s),
            None => groups.push((k, vec![s])),
        }
    }
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    let planes = orientations.len();
    let mut out = Vec::new();
    for ((plane, key), group) in groups {
        for (time, mut slices) in split_time(group) {
            sort_by_position(&mut slices);
            let not_a_volume = match &time {
                Err(e) => Some(e.clone()),
                Ok(_) => slices
                    .iter()
                    .find_map(|s| s.acquisition.defect.clone())
                    .map(NotAVolume::Header)
                    .or_else(|| uneven_spacing(&slices)),
            };
            out.push(SplitVolume {
                label: String::new(),
                key: key.clone(),
                plane,
                planes,
                time: time.ok().flatten(),
                slices,
                not_a_volume,
            });
        }
    }
    label(&mut out);
    out
}

/// A group whose positions repeat holds several time points: the k-th image at each
/// position (in temporal position, then acquisition order) belongs to time point k.
#[allow(clippy::type_complexity)]
fn split_time(
    group: Vec<SliceMeta>,
) -> Vec<(Result<Option<(usize, usize)>, NotAVolume>, Vec<SliceMeta>)> {
    let mut at: Vec<(f64, Vec<SliceMeta>)> = Vec::new();
    let normal = group.iter().find_map(|s| s.iop).map(|iop| {
        let d = itk::direction_from_iop(&iop);
        [d[0][2], d[1][2], d[2][2]]
    });
    let pos = |s: &SliceMeta| match (normal, s.ipp) {
        (Some(n), Some(p)) => Some(p[0] * n[0] + p[1] * n[1] + p[2] * n[2]),
        _ => None,
    };
    let Some(first) = group.first() else {
        return Vec::new();
    };
    if first.acquisition.mosaic.is_some() {
        return mosaic_time_points(group);
    }
    if group.iter().any(|s| pos(s).is_none()) || pos(first).is_none() {
        return vec![(Ok(None), group)];
    }
    for s in group {
        let p = pos(&s).unwrap_or_default();
        match at
            .iter_mut()
            .find(|(q, _)| (p - *q).abs() <= POSITION_TOLERANCE)
        {
            Some((_, v)) => v.push(s),
            None => at.push((p, vec![s])),
        }
    }
    let counts: Vec<usize> = at.iter().map(|(_, v)| v.len()).collect();
    let (min, max) = (
        *counts.iter().min().unwrap_or(&1),
        *counts.iter().max().unwrap_or(&1),
    );
    if max == 1 {
        return vec![(Ok(None), at.into_iter().flat_map(|(_, v)| v).collect())];
    }
    if min != max {
        return vec![(
            Err(NotAVolume::UnevenRepeats { min, max }),
            at.into_iter().flat_map(|(_, v)| v).collect(),
        )];
    }
    let mut times: Vec<Vec<SliceMeta>> = (0..max).map(|_| Vec::new()).collect();
    for (_, mut v) in at {
        v.sort_by(acquisition_order);
        for (t, s) in v.into_iter().enumerate() {
            times[t].push(s);
        }
    }
    times
        .into_iter()
        .enumerate()
        .map(|(t, v)| (Ok(Some((t, max))), v))
        .collect()
}

/// Each mosaic image is a whole volume (dcm2niix makes a time point of each): the tiles of
/// one instance stay together, instances in acquisition order.
#[allow(clippy::type_complexity)]
fn mosaic_time_points(
    group: Vec<SliceMeta>,
) -> Vec<(Result<Option<(usize, usize)>, NotAVolume>, Vec<SliceMeta>)> {
    let mut files: Vec<Vec<SliceMeta>> = Vec::new();
    for s in group {
        match files
            .iter_mut()
            .find(|f| f[0].sop_instance_uid == s.sop_instance_uid && f[0].path == s.path)
        {
            Some(f) => f.push(s),
            None => files.push(vec![s]),
        }
    }
    files.sort_by(|a, b| acquisition_order(&a[0], &b[0]));
    let n = files.len();
    if n == 1 {
        return vec![(Ok(None), files.remove(0))];
    }
    files
        .into_iter()
        .enumerate()
        .map(|(t, v)| (Ok(Some((t, n))), v))
        .collect()
}

/// Temporal position, then acquisition number and time, then instance number and frame.
fn acquisition_order(a: &SliceMeta, b: &SliceMeta) -> std::cmp::Ordering {
    let (x, y) = (&a.acquisition, &b.acquisition);
    x.temporal_position
        .cmp(&y.temporal_position)
        .then_with(|| x.acquisition_number.cmp(&y.acquisition_number))
        .then_with(|| x.acquisition_time.cmp(&y.acquisition_time))
        .then_with(|| a.instance_number.cmp(&b.instance_number))
        .then_with(|| a.frame.cmp(&b.frame))
}

/// Gaps between consecutive slices (sorted) must agree with their median.
fn uneven_spacing(slices: &[SliceMeta]) -> Option<NotAVolume> {
    let p: Vec<f64> = slices
        .iter()
        .filter_map(|s| s.position_along_normal())
        .collect();
    if p.len() < 3 || p.len() != slices.len() {
        return None;
    }
    let mut gaps: Vec<f64> = p.windows(2).map(|w| (w[1] - w[0]).abs()).collect();
    gaps.sort_by(f64::total_cmp);
    let median = gaps[gaps.len() / 2];
    let (min, max) = (gaps[0], gaps[gaps.len() - 1]);
    let tol = median * SPACING_TOLERANCE + 0.05;
    (max - median > tol || median - min > tol).then_some(NotAVolume::Spacing { min, max })
}

/// Labels from the key parts that vary within the series.
fn label(volumes: &mut [SplitVolume]) {
    if volumes.len() < 2 {
        return;
    }
    let varies = |f: &dyn Fn(&SplitVolume) -> String| {
        let first = f(&volumes[0]);
        volumes.iter().any(|v| f(v) != first)
    };
    type Part = (bool, Box<dyn Fn(&SplitVolume) -> String>);
    let matrix_varies = varies(&|v| format!("{:?}", v.key.matrix));
    let others_vary = varies(&|v| {
        let mut k = v.key.clone();
        k.dimensions.clear();
        format!("{:?}{}", k, v.plane)
    });
    let parts: Vec<Part> = vec![
        (
            varies(&|v| v.plane.to_string()),
            Box::new(|v| format!("i{}", v.plane + 1)),
        ),
        (
            matrix_varies,
            Box::new(|v| format!("{}x{}", v.key.matrix.0, v.key.matrix.1)),
        ),
        (
            !matrix_varies && varies(&|v| format!("{:?}", v.key.spacing)),
            Box::new(|v| match v.key.spacing {
                Some([r, c]) => format!("ps{r}x{c}um"),
                None => "ps".into(),
            }),
        ),
        (
            varies(&|v| format!("{:?}", v.key.stack)),
            Box::new(|v| format!("s{}", v.key.stack.clone().unwrap_or_default())),
        ),
        (
            varies(&|v| format!("{:?}", v.key.component)),
            Box::new(|v| v.key.component.label().to_string()),
        ),
        (
            varies(&|v| v.key.derived.join("+")),
            Box::new(|v| v.key.derived.join("+").to_ascii_lowercase()),
        ),
        (
            varies(&|v| v.key.localizer.to_string()),
            Box::new(|v| {
                if v.key.localizer {
                    "loc".into()
                } else {
                    String::new()
                }
            }),
        ),
        (
            varies(&|v| format!("{:?}", v.key.echo)),
            Box::new(|v| match v.key.echo {
                Some(e) => format!("e{e}"),
                None => String::new(),
            }),
        ),
        (
            varies(&|v| format!("{:?}", v.key.echo_time)),
            Box::new(|v| match v.key.echo_time {
                Some(t) => format!("te{}", t as f64 / 100.0),
                None => String::new(),
            }),
        ),
        (
            varies(&|v| format!("{:?}", v.key.b_value)),
            Box::new(|v| match v.key.b_value {
                Some(b) => format!("b{b}"),
                None => String::new(),
            }),
        ),
        (
            varies(&|v| format!("{:?}{}", v.key.gradient, v.key.isotropic)),
            Box::new(|v| match v.key.gradient {
                Some(g) => format!("g{}_{}_{}", g[0], g[1], g[2]).replace('-', "m"),
                None if v.key.isotropic => "iso".into(),
                None => String::new(),
            }),
        ),
        (
            // Dimension index values only where nothing above tells the volumes apart.
            !others_vary && varies(&|v| format!("{:?}", v.key.dimensions)),
            Box::new(|v| {
                let d: Vec<String> = v.key.dimensions.iter().map(|d| d.to_string()).collect();
                format!("d{}", d.join("."))
            }),
        ),
        (
            varies(&|v| format!("{:?}", v.time)),
            Box::new(|v| match v.time {
                Some((t, _)) => format!("t{}", t + 1),
                None => String::new(),
            }),
        ),
    ];
    let labels: Vec<String> = volumes
        .iter()
        .map(|v| {
            parts
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, f)| f(v))
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("_")
        })
        .collect();
    for (v, l) in volumes.iter_mut().zip(labels) {
        v.label = l;
    }
}

/// Which volumes of one series the model reads: `Ok` to use, `Err` why not. A pure function
/// of the split, documented in README and docs/architecture.md:
/// - images that are not one volume (uneven repeats, varying spacing, header defects);
/// - phase, real and imaginary images (Prima was trained on magnitude images);
/// - localizers (ImageType LOCALIZER/SCOUT, or a handful of images in one of three or more
///   orientations of a series);
/// - a 4D series: its first time point, the baseline before contrast arrives in a
///   perfusion series and an ordinary image of the anatomy in fMRI;
/// - diffusion: every b-value is its own volume; where a b-value has several gradient
///   directions, the isotropic (trace) image when the series has one, else the first
///   direction.
pub fn choose(volumes: &[SplitVolume]) -> Vec<Result<(), NotUsed>> {
    // b-value (with the rest of the key but the gradient) → directions present, trace?
    let diffusion_group = |v: &SplitVolume| {
        let mut k = v.key.clone();
        k.gradient = None;
        k.isotropic = false;
        (v.plane, k, v.time.map(|t| t.0))
    };
    // Per b-value group: the gradient directions present, and whether a trace is.
    type Directions = (Vec<Option<[i64; 3]>>, bool);
    let mut by_b: BTreeMap<String, Directions> = BTreeMap::new();
    for v in volumes {
        if v.key.b_value.is_some() {
            let e = by_b.entry(format!("{:?}", diffusion_group(v))).or_default();
            match v.key.gradient {
                Some(g) if !v.key.isotropic => e.0.push(Some(g)),
                _ => e.1 = true,
            }
        }
    }
    volumes
        .iter()
        .map(|v| {
            if let Some(e) = &v.not_a_volume {
                return Err(NotUsed::NotAVolume(e.clone()));
            }
            if v.key.component != Component::Magnitude {
                return Err(NotUsed::Component(v.key.component));
            }
            if v.key.localizer {
                return Err(NotUsed::Localizer);
            }
            if v.planes >= 3 && v.slices.len() <= LOCALIZER_MAX_SLICES {
                return Err(NotUsed::ThreePlane(v.planes));
            }
            if let Some((t, of)) = v.time {
                if t > 0 {
                    return Err(NotUsed::LaterTimePoint(t, of));
                }
            }
            if let (Some(b), Some(g)) = (v.key.b_value, v.key.gradient) {
                if !v.key.isotropic {
                    let (dirs, trace) = &by_b[&format!("{:?}", diffusion_group(v))];
                    if *trace {
                        return Err(NotUsed::DirectionWithTrace { b });
                    }
                    let index = dirs.iter().position(|d| *d == Some(g)).unwrap_or(0);
                    if index > 0 {
                        return Err(NotUsed::LaterDirection {
                            b,
                            index: index + 1,
                            of: dirs.len(),
                        });
                    }
                }
            }
            Ok(())
        })
        .collect()
}

#[cfg(test)]
mod tests;
