//! Upstream's LIME masks: `RandomState(seed).randint(0, fracs + 1, n_tokens * samples)
//! .reshape(samples, n_tokens) / fracs`, row 0 all ones, any all-zero row all ones.
//!
//! The ranking LIME returns depends on every mask bit, so the stream is numpy's, bit for
//! bit: `RandomState(int)` seeds MT19937 with the reference `init_genrand`, and `randint`
//! for int64 over a range that fits 32 bits takes one fresh 32-bit draw per value (32-bit
//! draws are not buffered, unlike 8- and 16-bit ones), masks it with the smallest all-ones
//! mask covering the range, and rejects draws beyond the range.

const N: usize = 624;
const M: usize = 397;

/// The 32-bit Mersenne Twister, as numpy's legacy `RandomState` runs it.
pub struct Mt19937 {
    state: [u32; N],
    next: usize,
}

impl Mt19937 {
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; N];
        state[0] = seed;
        for i in 1..N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 { state, next: N }
    }

    fn twist(&mut self) {
        for i in 0..N {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % N] & 0x7fff_ffff);
            let mut v = self.state[(i + M) % N] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= 0x9908_b0df;
            }
            self.state[i] = v;
        }
        self.next = 0;
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.next >= N {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

/// `RandomState(seed).randint(low, high, n)` (int64) for `high - low` within 32 bits.
pub fn randint_legacy(seed: u32, low: i64, high: i64, n: usize) -> Vec<i64> {
    assert!(
        high > low && high - low <= 1 << 32,
        "range must fit 32 bits"
    );
    let range = (high - low - 1) as u32;
    if range == 0 {
        return vec![low; n];
    }
    let mask = u32::MAX >> range.leading_zeros();
    let mut rng = Mt19937::new(seed);
    (0..n)
        .map(|_| loop {
            let v = rng.next_u32() & mask;
            if v <= range {
                break low + v as i64;
            }
        })
        .collect()
}

/// `samples` rows of `n_tokens` values in [0, 1] (multiples of 1/`fracs`), upstream's
/// masks with its two fixes: row 0 is the unperturbed input, and no row removes the
/// whole series.
pub fn lime_masks(seed: u32, fracs: u32, samples: usize, n_tokens: usize) -> Vec<Vec<f32>> {
    assert!(fracs >= 1);
    let v = randint_legacy(seed, 0, fracs as i64 + 1, samples * n_tokens);
    let mut rows: Vec<Vec<f32>> = v
        .chunks(n_tokens.max(1))
        .take(samples)
        .map(|r| r.iter().map(|&x| x as f32 / fracs as f32).collect())
        .collect();
    for (i, r) in rows.iter_mut().enumerate() {
        if i == 0 || r.iter().all(|&x| x == 0.0) {
            r.iter_mut().for_each(|x| *x = 1.0);
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (sum, Σ i·v mod 1000003, first values) of numpy 2.x's
    /// `np.random.RandomState(seed).randint(0, high, n)`.
    fn digest(v: &[i64]) -> (i64, i64) {
        let s = v.iter().sum();
        let c = v
            .iter()
            .enumerate()
            .map(|(i, &x)| i as i64 * x)
            .sum::<i64>()
            % 1_000_003;
        (s, c)
    }

    #[test]
    fn mt19937_first_output_for_seed_0() {
        let mut r = Mt19937::new(0);
        let first: Vec<u32> = (0..5).map(|_| r.next_u32()).collect();
        assert_eq!(
            first,
            [2357136044, 2546248239, 3071714933, 3626093760, 2588848963]
        );
    }

    #[test]
    fn randint_matches_numpy() {
        let v = randint_legacy(0, 0, 2, 137_000);
        assert_eq!(&v[..16], &[0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0]);
        assert_eq!(digest(&v), (68560, 541273));
        let v = randint_legacy(1, 0, 2, 1000);
        assert_eq!(&v[..12], &[1, 1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 1]);
        assert_eq!(digest(&v), (478, 234979));
        // fracs = 3: a range of 4, mask 3, no rejection.
        let v = randint_legacy(12345, 0, 4, 3000);
        assert_eq!(&v[..12], &[2, 1, 1, 1, 0, 1, 2, 2, 1, 2, 1, 1]);
        assert_eq!(digest(&v), (4517, 822712));
        // A range of 3 under mask 3: draws of 3 are rejected.
        let v = randint_legacy(12345, 0, 3, 5000);
        assert_eq!(digest(&v), (5040, 592828));
    }

    #[test]
    fn lime_masks_fix_row_0_and_empty_rows() {
        let m = lime_masks(0, 1, 1000, 3);
        assert_eq!(m.len(), 1000);
        assert!(m[0].iter().all(|&x| x == 1.0));
        assert!(m.iter().all(|r| r.contains(&1.0)));
        // Row 1 is numpy's values 3..6 of the stream: [0, 1, 1].
        assert_eq!(m[1], [0.0, 1.0, 1.0]);
    }
}
