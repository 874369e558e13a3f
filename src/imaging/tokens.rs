//! Oriented volume → patches, "otsu" values and VQ-VAE input tokens
//! (docs/prima-inference-spec.md §5, §7).
use super::Array3;

/// Voxels per patch (4·32·32 whatever the thin axis): the denominator of the otsu value.
const PATCH_VOXELS: f64 = 4096.0;

/// A tokenised series: the padded, scaled float32 volume and its patch grid.
#[derive(Debug, Clone)]
pub struct Tokenized {
    /// (z, y, x)
    pub padded_shape: [usize; 3],
    /// Patch shape before the 4 → 8 resize, (z, y, x).
    pub patch_shape: [usize; 3],
    pub thin_axis: usize,
    /// Patches per axis (z, y, x).
    pub grid: [usize; 3],
    /// Start voxel (z, y, x) of each patch in the padded volume, patch order.
    pub coords: Vec<[i64; 3]>,
    /// 100 × fraction of masked voxels per patch, computed as upstream does.
    pub otsu: Vec<f64>,
    scaled: Vec<f32>,
}

/// The axis Prima treats as the slice axis: upstream takes the first axis whose size is
/// not 256 (§5 step 1). When all three are 256 (a 256-slice series) upstream crashes; we
/// use `slice_axis` (where the acquisition's slice axis landed after orientation).
pub fn thin_axis(shape: [usize; 3], slice_axis: usize) -> usize {
    shape.iter().position(|&s| s != 256).unwrap_or(slice_axis)
}

pub fn tokenize(vol: &Array3<f64>, thin: usize) -> Tokenized {
    let mut ps = [32usize; 3];
    ps[thin] = 4;
    let shape = vol.shape;
    let mut padded_shape = [0usize; 3];
    let mut before = [0usize; 3];
    for a in 0..3 {
        let p = (ps[a] - shape[a] % ps[a]) % ps[a];
        before[a] = p / 2;
        padded_shape[a] = shape[a] + p;
    }
    let [pz, py, px] = padded_shape;
    let mut padded = vec![0f32; pz * py * px];
    for z in 0..shape[0] {
        for y in 0..shape[1] {
            let src = (z * shape[1] + y) * shape[2];
            let dst = ((z + before[0]) * py + (y + before[1])) * px + before[2];
            for (d, s) in padded[dst..dst + shape[2]]
                .iter_mut()
                .zip(&vol.data[src..src + shape[2]])
            {
                *d = *s as f32;
            }
        }
    }
    let max = padded.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let thr: f32 = if max < 5.0 { 0.5 } else { 50.0 };
    let grid = [pz / ps[0], py / ps[1], px / ps[2]];
    let n = grid[0] * grid[1] * grid[2];
    let mut coords = Vec::with_capacity(n);
    let mut otsu = Vec::with_capacity(n);
    for iz in 0..grid[0] {
        for iy in 0..grid[1] {
            for ix in 0..grid[2] {
                let (z0, y0, x0) = (iz * ps[0], iy * ps[1], ix * ps[2]);
                let mut count = 0usize;
                for z in z0..z0 + ps[0] {
                    for y in y0..y0 + ps[1] {
                        let row = (z * py + y) * px;
                        count += padded[row + x0..row + x0 + ps[2]]
                            .iter()
                            .filter(|&&v| v > thr)
                            .count();
                    }
                }
                coords.push([z0 as i64, y0 as i64, x0 as i64]);
                otsu.push((count as f64 / PATCH_VOXELS) * 100.0);
            }
        }
    }
    if max > 0.0 {
        for v in &mut padded {
            *v /= max;
        }
    }
    Tokenized {
        padded_shape,
        patch_shape: ps,
        thin_axis: thin,
        grid,
        coords,
        otsu,
        scaled: padded,
    }
}

impl Tokenized {
    pub fn n_patches(&self) -> usize {
        self.coords.len()
    }

    /// Token shape after the 4 → 8 resize (§7).
    pub fn token_shape(&self) -> [usize; 3] {
        let mut s = self.patch_shape;
        s[self.thin_axis] = 8;
        s
    }

    /// Appends patch `n` as a VQ-VAE input token: MONAI's `area` resize 4 → 8 on the thin
    /// axis, which duplicates every slice (out[2q] = out[2q+1] = in[q]).
    pub fn push_token(&self, n: usize, out: &mut Vec<f32>) {
        let [z0, y0, x0] = self.coords[n].map(|c| c as usize);
        let ps = self.patch_shape;
        let [_, py, px] = self.padded_shape;
        let rep = |a: usize| if a == self.thin_axis { 2 } else { 1 };
        for z in 0..ps[0] * rep(0) {
            let zz = z0 + z / rep(0);
            for y in 0..ps[1] * rep(1) {
                let yy = y0 + y / rep(1);
                let row = (zz * py + yy) * px + x0;
                if rep(2) == 1 {
                    out.extend_from_slice(&self.scaled[row..row + ps[2]]);
                } else {
                    for x in 0..ps[2] * 2 {
                        out.push(self.scaled[row + x / 2]);
                    }
                }
            }
        }
    }

    /// Tokens for `ids` (in that order), row-major (len, d0, d1, d2).
    pub fn tokens(&self, ids: &[usize]) -> Vec<f32> {
        let ts = self.token_shape();
        let mut out = Vec::with_capacity(ids.len() * ts[0] * ts[1] * ts[2]);
        for &n in ids {
            self.push_token(n, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thin_axis_and_padding() {
        let vol = Array3 {
            shape: [3, 256, 256],
            data: vec![100.0; 3 * 256 * 256],
        };
        let t = tokenize(&vol, 0);
        assert_eq!(t.padded_shape, [4, 256, 256]);
        assert_eq!(t.n_patches(), 64);
        // one padded zero slice of four: 75 % masked
        assert_eq!(t.otsu[0], 75.0);
        assert_eq!(t.token_shape(), [8, 32, 32]);
        let tok = t.tokens(&[0]);
        assert_eq!(tok.len(), 8 * 32 * 32);
        // padding goes 0 before, 1 after; slices duplicated pairwise
        assert_eq!(tok[0], 1.0);
        assert_eq!(tok[7 * 1024], 0.0);
        assert_eq!(thin_axis([256, 256, 256], 2), 2);
        assert_eq!(thin_axis([256, 22, 256], 0), 1);
    }

    #[test]
    fn low_intensity_volumes_use_half_threshold() {
        let mut data = vec![0.0; 4 * 32 * 32];
        data[0] = 1.0;
        data[1] = 0.4;
        let t = tokenize(
            &Array3 {
                shape: [4, 32, 32],
                data,
            },
            0,
        );
        assert_eq!(t.otsu[0], (1.0 / 4096.0) * 100.0);
    }
}
