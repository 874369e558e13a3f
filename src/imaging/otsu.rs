//! Otsu bins, hole filling and token selection (docs/prima-inference-spec.md §6).
//!
//! Holes are computed on the patch grid with 6-connectivity, which is exactly what
//! upstream's voxel-level `binary_fill_holes` + "patch fully filled" rule gives (§6.2), at
//! a tiny fraction of the cost. Selection implements the intended semantics of §6.3 (what
//! the model was trained with); upstream's pipeline raises instead when a used bin has
//! holes (§6.5), so such studies are flagged.
use std::collections::VecDeque;

/// Bins 0..=101 of width 1 % and, for bins ≤ 20, their holes.
#[derive(Debug, Clone)]
pub struct OtsuBins {
    /// Patch indices per bin, ascending.
    pub bins: Vec<Vec<usize>>,
    /// Hole patch indices per bin (empty above 20), ascending.
    pub holes: Vec<Vec<usize>>,
}

/// Highest bin that gets hole filling.
pub const MAX_HOLE_BIN: usize = 20;
/// Percentages tried in order; the first giving more than [`MIN_TOKENS`] wins.
pub const PERCENTAGES: [usize; 6] = [5, 4, 3, 2, 1, 0];
pub const MIN_TOKENS: usize = 25;

pub fn bins(otsu: &[f64], grid: [usize; 3]) -> OtsuBins {
    let mut bins = vec![Vec::new(); 102];
    for (n, &o) in otsu.iter().enumerate() {
        // t ≤ o < t + 1 ⟺ floor(o) = t, for o in [0, 100]
        let t = o.floor();
        if (0.0..102.0).contains(&t) {
            bins[t as usize].push(n);
        }
    }
    let holes = (0..102)
        .map(|t| {
            if t <= MAX_HOLE_BIN {
                holes_of(&bins[t], grid)
            } else {
                Vec::new()
            }
        })
        .collect();
    OtsuBins { bins, holes }
}

/// Unmarked patches not connected to the grid border through unmarked patches.
fn holes_of(marked_ids: &[usize], grid: [usize; 3]) -> Vec<usize> {
    let [nz, ny, nx] = grid;
    let n = nz * ny * nx;
    if marked_ids.is_empty() || n == 0 {
        return Vec::new();
    }
    let mut marked = vec![false; n];
    for &i in marked_ids {
        marked[i] = true;
    }
    let mut outside = vec![false; n];
    let mut queue = VecDeque::new();
    let idx = |z: usize, y: usize, x: usize| (z * ny + y) * nx + x;
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let border =
                    z == 0 || y == 0 || x == 0 || z == nz - 1 || y == ny - 1 || x == nx - 1;
                let i = idx(z, y, x);
                if border && !marked[i] {
                    outside[i] = true;
                    queue.push_back((z, y, x));
                }
            }
        }
    }
    while let Some((z, y, x)) = queue.pop_front() {
        let mut visit = |z: usize, y: usize, x: usize| {
            let i = idx(z, y, x);
            if !marked[i] && !outside[i] {
                outside[i] = true;
                queue.push_back((z, y, x));
            }
        };
        if z > 0 {
            visit(z - 1, y, x);
        }
        if z + 1 < nz {
            visit(z + 1, y, x);
        }
        if y > 0 {
            visit(z, y - 1, x);
        }
        if y + 1 < ny {
            visit(z, y + 1, x);
        }
        if x > 0 {
            visit(z, y, x - 1);
        }
        if x + 1 < nx {
            visit(z, y, x + 1);
        }
    }
    (0..n).filter(|&i| !marked[i] && !outside[i]).collect()
}

impl OtsuBins {
    /// `filtercoords` for percentage `p` (§6.3): bins p..=100, each bin's holes right
    /// after it; duplicates kept.
    pub fn select(&self, p: usize) -> Vec<usize> {
        let mut ids = Vec::new();
        for t in p..=100 {
            ids.extend_from_slice(&self.bins[t]);
            if t <= MAX_HOLE_BIN {
                ids.extend_from_slice(&self.holes[t]);
            }
        }
        ids
    }

    /// Whether any bin used at percentage `p` has holes (upstream's pipeline would have
    /// raised for this series, §6.5).
    pub fn used_bins_have_holes(&self, p: usize) -> bool {
        (p..=MAX_HOLE_BIN).any(|t| !self.holes[t].is_empty())
    }
}

/// One attempt of the fallback loop.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attempt {
    pub percent: usize,
    pub tokens_after: usize,
}

#[derive(Debug, Clone)]
pub struct Selection {
    pub percent: usize,
    pub ids: Vec<usize>,
    pub attempts: Vec<Attempt>,
    pub holes_used: bool,
}

/// The 5 → 0 % fallback (§6.4).
pub fn select_tokens(b: &OtsuBins) -> Selection {
    let mut attempts = Vec::new();
    let mut last = Vec::new();
    for p in PERCENTAGES {
        let ids = b.select(p);
        attempts.push(Attempt {
            percent: p,
            tokens_after: ids.len(),
        });
        if ids.len() > MIN_TOKENS || p == 0 {
            return Selection {
                percent: p,
                holes_used: b.used_bins_have_holes(p),
                ids,
                attempts,
            };
        }
        last = ids;
    }
    Selection {
        percent: 0,
        holes_used: b.used_bins_have_holes(0),
        ids: last,
        attempts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enclosed_cell_is_a_hole_only_with_all_six_faces() {
        let grid = [3, 3, 3];
        let c = |z: usize, y: usize, x: usize| (z * 3 + y) * 3 + x;
        let faces = vec![
            c(0, 1, 1),
            c(2, 1, 1),
            c(1, 0, 1),
            c(1, 2, 1),
            c(1, 1, 0),
            c(1, 1, 2),
        ];
        assert_eq!(holes_of(&faces, grid), vec![c(1, 1, 1)]);
        assert!(holes_of(&faces[..5], grid).is_empty());
    }

    #[test]
    fn fallback_stops_above_25() {
        let mut otsu = vec![0.0; 64];
        for o in otsu.iter_mut().take(10) {
            *o = 50.0;
        }
        let b = bins(&otsu, [1, 8, 8]);
        let s = select_tokens(&b);
        assert_eq!(s.percent, 0);
        assert_eq!(s.ids.len(), 64);
        assert_eq!(s.attempts.len(), 6);
    }
}
