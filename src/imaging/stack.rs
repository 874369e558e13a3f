//! Slices in space: the order a volume's slices stack in, and the slices a Siemens mosaic
//! image holds. Shared by the series scan (both slice orders) and the volume split.

use super::header::SliceMeta;
use super::itk;

/// Spatial order: projection on the slice normal, ties by InstanceNumber then frame.
pub fn sort_by_position(slices: &mut [SliceMeta]) {
    let normal = slices
        .iter()
        .min_by_key(|s| (s.instance_number.unwrap_or(i64::MAX), s.frame))
        .and_then(|s| s.iop)
        .map(|iop| {
            let d = itk::direction_from_iop(&iop);
            [d[0][2], d[1][2], d[2][2]]
        });
    let pos = |s: &SliceMeta| match (normal, s.ipp) {
        (Some(n), Some(p)) => p[0] * n[0] + p[1] * n[1] + p[2] * n[2],
        _ => 0.0,
    };
    slices.sort_by(|a, b| {
        pos(a)
            .total_cmp(&pos(b))
            .then_with(|| a.instance_number.cmp(&b.instance_number))
            .then_with(|| a.frame.cmp(&b.frame))
    });
}

/// The slices of one mosaic image: `base` (the whole image's header, with the tiling in
/// `base.acquisition.mosaic`) → one header per tile, each with the tile's size and position.
/// Siemens gives ImagePositionPatient for the top-left corner of the whole mosaic as if it
/// were one slice; the first tile's corner is half the unused width and height further
/// along the row and column directions (nibabel's and dcm2niix's correction); slices follow
/// along the CSA SliceNormalVector at SpacingBetweenSlices (or SliceThickness).
pub fn mosaic_tiles(base: SliceMeta) -> Vec<SliceMeta> {
    let Some(m) = base.acquisition.mosaic_layout else {
        return vec![base];
    };
    let (cols, rows) = (m.full_cols / m.across, m.full_rows / m.across);
    // The correction uses the unrounded tile size (nibabel's rule; dcm2niix agrees).
    let (exact_cols, exact_rows) = (
        m.full_cols as f64 / m.across as f64,
        m.full_rows as f64 / m.across as f64,
    );
    let mut first = base.ipp;
    if let (Some(ipp), Some(iop), Some(ps)) = (base.ipp, base.iop, base.pixel_spacing) {
        let (dr, dc) = (
            (m.full_rows as f64 - exact_rows) / 2.0,
            (m.full_cols as f64 - exact_cols) / 2.0,
        );
        let mut p = ipp;
        for k in 0..3 {
            // PixelSpacing is (row spacing, column spacing); IOP is (row dir, column dir).
            p[k] += iop[3 + k] * ps[0] * dr + iop[k] * ps[1] * dc;
        }
        first = Some(p);
    }
    let normal = m.normal.or_else(|| {
        base.iop.map(|iop| {
            let d = itk::direction_from_iop(&iop);
            [d[0][2], d[1][2], d[2][2]]
        })
    });
    let dz = base
        .spacing_between_slices
        .or(base.acquisition.slice_thickness)
        .unwrap_or(1.0);
    (0..m.images)
        .map(|k| {
            let mut s = base.clone();
            s.cols = cols;
            s.rows = rows;
            s.acquisition.mosaic = Some(super::acquisition::MosaicTile { index: k, ..m });
            if let (Some(p), Some(n)) = (first, normal) {
                s.ipp = Some([
                    p[0] + n[0] * dz * k as f64,
                    p[1] + n[1] * dz * k as f64,
                    p[2] + n[2] * dz * k as f64,
                ]);
            }
            s
        })
        .collect()
}
