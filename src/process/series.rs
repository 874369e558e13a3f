//! One series → Prima's inputs (docs/prima-inference-spec.md §1–§7): decode, resample,
//! orient, tokenise, select. Pure Rust, no model. Every preparation in the process, job,
//! folder or background, draws on one memory budget for decoded volumes.
use crate::imaging::otsu::{self, Attempt, Selection};
use crate::imaging::series::{self, SeriesCandidate, SkipReason, SliceMeta};
use crate::imaging::tokens::{self, Tokenized};
use crate::imaging::{orient, resample, text, Array3, Geometry, PixelType};

/// A series turned into selected VQ-VAE input tokens.
#[derive(Debug, Clone)]
pub struct PreparedSeries {
    pub key: String,
    pub series_instance_uid: String,
    /// Which volume of its series ("" when the series is one volume).
    pub volume: String,
    pub name: String,
    pub name_ids: Vec<i64>,
    /// Images used, in stacking order.
    pub slices: Vec<SliceMeta>,
    pub images_found: usize,
    pub pixel_type: PixelType,
    /// Orientation code of the acquired volume (e.g. "LPS", "PIR").
    pub orientation_code: String,
    /// (z, y, x) after resample + DICOMOrient.
    pub oriented_shape: [usize; 3],
    /// Geometry of the resampled volume before DICOMOrient (x, y = the source images'
    /// columns and rows at 256 × 256, z = `slices`): where a token lies in the patient.
    pub resampled: Geometry,
    pub tokenized: Tokenized,
    pub selection: Selection,
}

impl PreparedSeries {
    pub fn attempts(&self) -> &[Attempt] {
        &self.selection.attempts
    }

    /// Selected tokens, row-major (K, d0, d1, d2).
    pub fn selected_tokens(&self) -> Vec<f32> {
        self.tokenized.tokens(&self.selection.ids)
    }

    /// What maps this series' tokens back to its source images.
    pub fn geometry(&self) -> crate::explain::regions::SeriesGeometry<'_> {
        crate::explain::regions::SeriesGeometry {
            slices: &self.slices,
            direction: &self.resampled.direction,
            oriented_shape: self.oriented_shape,
            padded_shape: self.tokenized.padded_shape,
            patch_shape: self.tokenized.patch_shape,
        }
    }

    /// (z, y, x) start coordinates of the selected patches.
    pub fn selected_coords(&self) -> Vec<[i64; 3]> {
        self.selection
            .ids
            .iter()
            .map(|&i| self.tokenized.coords[i])
            .collect()
    }
}

/// Array axis (z=0, y=1, x=2) that the acquisition's slice axis lands on after
/// DICOMOrient: the code's third letter names the physical axis it points along.
fn slice_array_axis(code: &str) -> usize {
    match code.chars().nth(2) {
        Some('L') | Some('R') => 2,
        Some('P') | Some('A') => 1,
        _ => 0,
    }
}

/// Decode, resample, orient, tokenise and select one series (spec §1–§7).
/// `Err` is the reason the series is skipped.
pub fn prepare_series(c: &SeriesCandidate) -> Result<PreparedSeries, SkipReason> {
    prepare_series_until(c, &|| false).unwrap_or(Err(SkipReason::Cancelled))
}

/// [`prepare_series`] that gives up (`None`) when `cancelled` says so; it is asked between
/// the stages (decode, resample, orient, tokenise), so background work on a series that
/// changed stops within one stage.
pub fn prepare_series_until(
    c: &SeriesCandidate,
    cancelled: &dyn Fn() -> bool,
) -> Option<Result<PreparedSeries, SkipReason>> {
    let vol = match series::load_volume(c) {
        Ok(v) => v,
        Err(e) => return Some(Err(e)),
    };
    if cancelled() {
        return None;
    }
    let resampled = resample::resample_inplane_256(&vol);
    drop(vol);
    if cancelled() {
        return None;
    }
    let (oriented, code): (Array3<f64>, String) = orient::orient_lps(&resampled);
    let pixel_type = resampled.pixel_type;
    let resampled_geometry = resampled.geometry;
    drop(resampled);
    if cancelled() {
        return None;
    }
    let thin = tokens::thin_axis(oriented.shape, slice_array_axis(&code));
    let tokenized = tokens::tokenize(&oriented, thin);
    if tokenized.n_patches() > series::MAX_PATCHES {
        return Some(Err(SkipReason::TooManyPatches {
            patches: tokenized.n_patches(),
        }));
    }
    let bins = otsu::bins(&tokenized.otsu, tokenized.grid);
    let selection = otsu::select_tokens(&bins);
    Some(Ok(PreparedSeries {
        key: c.key.clone(),
        series_instance_uid: c.series_instance_uid.clone(),
        volume: c.volume.clone(),
        name_ids: text::chartovec(&c.name),
        name: c.name.clone(),
        slices: c.slices.clone(),
        images_found: c.images_found,
        pixel_type,
        orientation_code: code,
        oriented_shape: oriented.shape,
        resampled: resampled_geometry,
        tokenized,
        selection,
    }))
}

/// [`prepare_series_until`] holding the series' share of the process-wide decoded-volume
/// budget while it runs (the node's background preparation shares it with the worker).
pub fn prepare_series_budgeted(
    c: &SeriesCandidate,
    cancelled: &dyn Fn() -> bool,
) -> Option<Result<PreparedSeries, SkipReason>> {
    let _share = BudgetShare::take(&BUDGET, volume_bytes(c));
    if cancelled() {
        return None;
    }
    prepare_series_until(c, cancelled)
}

/// Series volumes are decoded as f64 (ITK parity), so preparing two 512×512×300 series at
/// once held ~1.3 GB (measured: 2.1 GB peak RSS for a 3,000-instance study). Series are
/// prepared in parallel only while their decoded volumes fit this budget together; a
/// series larger than the budget runs alone. One budget for the whole process: the node's
/// background preparation of a study still arriving draws on it too.
const PREPARE_BUDGET_BYTES: usize = 1 << 30;

type Budget = (std::sync::Mutex<usize>, std::sync::Condvar);
static BUDGET: Budget = (std::sync::Mutex::new(0), std::sync::Condvar::new());

/// Bytes of a series' decoded f64 volume.
fn volume_bytes(c: &series::SeriesCandidate) -> usize {
    c.slices
        .first()
        .map_or(0, |s| s.rows as usize * s.cols as usize)
        .saturating_mul(c.slices.len())
        .saturating_mul(8)
}

/// A share of [`PREPARE_BUDGET_BYTES`], given back on drop (also when a series panics, so
/// the other threads never wait forever).
struct BudgetShare<'a> {
    budget: &'a Budget,
    bytes: usize,
}

impl<'a> BudgetShare<'a> {
    fn take(budget: &'a Budget, bytes: usize) -> Self {
        let (m, cv) = budget;
        let mut used = m.lock().unwrap_or_else(|e| e.into_inner());
        while *used > 0 && used.saturating_add(bytes) > PREPARE_BUDGET_BYTES {
            used = cv.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += bytes;
        BudgetShare { budget, bytes }
    }
}

impl Drop for BudgetShare<'_> {
    fn drop(&mut self) {
        let (m, cv) = self.budget;
        *m.lock().unwrap_or_else(|e| e.into_inner()) -= self.bytes;
        cv.notify_all();
    }
}
