//! ITK's image geometry arithmetic, reproduced operation by operation
//! (docs/prima-inference-spec.md §1.7, §3.1, §3.2).
//!
//! Integer-typed series are truncated after interpolation, so a continuous index of
//! `k − 1e−15` instead of `k` changes a voxel by one raw unit. Only the exact sequence of
//! IEEE operations ITK performs gives the same indices, hence the LINPACK port below
//! instead of a closed-form inverse. Rust never contracts `a * b + c` into a fused
//! multiply-add unless asked to (`mul_add`), which is what ITK's x86-64 builds do too.
//!
//! The port keeps LINPACK's structure (1-based indices, the same loops and tests in the
//! same order, `dsvdc` as one function) so it can be read against the original line by
//! line; that is why this file and `linpack::dsvdc3` are longer than the project's limits.
use super::Geometry;

pub type Mat3 = [[f64; 3]; 3];

#[inline]
fn cross(a: &[f64; 3], b: &[f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// vnl's `normalize`: squared norm accumulated from zero, then one reciprocal square root
/// multiplied into each component.
#[inline]
fn normalize(v: &[f64; 3]) -> [f64; 3] {
    let t = ((0.0 + v[0] * v[0]) + v[1] * v[1]) + v[2] * v[2];
    if t != 0.0 {
        let f = 1.0 / t.sqrt();
        [f * v[0], f * v[1], f * v[2]]
    } else {
        *v
    }
}

/// Direction matrix GDCM/ITK derive from ImageOrientationPatient (§1.7): the slice axis
/// is always r × c and the matrix is re-orthogonalised in this exact order.
/// `D[i][j]` = component `i` of image axis `j`.
pub fn direction_from_iop(iop: &[f64; 6]) -> Mat3 {
    let r0 = [iop[0], iop[1], iop[2]];
    let c = [iop[3], iop[4], iop[5]];
    let s = normalize(&cross(&r0, &c));
    let r = normalize(&cross(&c, &s));
    let c = cross(&s, &r);
    let mut d = [[0.0; 3]; 3];
    for i in 0..3 {
        d[i][0] = r[i];
        d[i][1] = c[i];
        d[i][2] = s[i];
    }
    d
}

/// `vnl_matrix_fixed` 3×3 product: the accumulator starts from the first term, not 0.
fn mat_mul_fixed(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut out = [[0.0; 3]; 3];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, o) in row.iter_mut().enumerate() {
            let mut acc = a[i][0] * b[0][j];
            for k in 1..3 {
                acc += a[i][k] * b[k][j];
            }
            *o = acc;
        }
    }
    out
}

/// Dynamic `vnl_matrix` product: the accumulator starts from 0.0.
fn mat_mul_dyn(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut out = [[0.0; 3]; 3];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, o) in row.iter_mut().enumerate() {
            let mut acc = 0.0;
            for k in 0..3 {
                acc += a[i][k] * b[k][j];
            }
            *o = acc;
        }
    }
    out
}

/// ITK's index-to-physical matrix `D · diag(spacing)` (`ImageBase::ComputeIndexToPhysicalPointMatrices`).
pub fn index_to_physical(geom: &Geometry) -> Mat3 {
    let mut scale = [[0.0; 3]; 3];
    for (i, row) in scale.iter_mut().enumerate() {
        row[i] = geom.spacing[i];
    }
    mat_mul_fixed(&geom.direction, &scale)
}

/// ITK's physical-to-index matrix: `vnl_matrix_inverse` of [`index_to_physical`].
pub fn physical_to_index(geom: &Geometry) -> Mat3 {
    vnl_inverse(&index_to_physical(geom))
}

/// `TransformIndexToPhysicalPoint` with the index already converted to double.
#[inline]
pub fn index_to_point(origin: &[f64; 3], m: &Mat3, idx: &[f64; 3]) -> [f64; 3] {
    let mut p = [0.0; 3];
    for r in 0..3 {
        p[r] = origin[r];
        for c in 0..3 {
            p[r] += m[r][c] * idx[c];
        }
    }
    p
}

/// `TransformPhysicalPointToContinuousIndex`.
#[inline]
pub fn point_to_continuous_index(origin: &[f64; 3], p_mat: &Mat3, point: &[f64; 3]) -> [f64; 3] {
    let v = [
        point[0] - origin[0],
        point[1] - origin[1],
        point[2] - origin[2],
    ];
    let mut ci = [0.0; 3];
    for r in 0..3 {
        let mut acc = 0.0;
        for c in 0..3 {
            acc += p_mat[r][c] * v[c];
        }
        ci[r] = acc;
    }
    ci
}

/// `vnl_matrix_inverse<double>(M)` as ITK's `Matrix::GetInverse` computes it: LINPACK
/// `dsvdc` (job 21) on M in column-major order, `W⁻¹` with zero tolerance 0, then
/// `(V · diag(W⁻¹)) · Uᵀ` with dynamic-matrix products.
pub fn vnl_inverse(m: &Mat3) -> Mat3 {
    let mut x = [0.0; 9];
    for j in 0..3 {
        for i in 0..3 {
            x[i + 3 * j] = m[i][j];
        }
    }
    let svd = linpack::dsvdc3(&mut x);
    let mut u = [[0.0; 3]; 3];
    let mut v = [[0.0; 3]; 3];
    for j in 0..3 {
        for i in 0..3 {
            u[i][j] = svd.u[i + 3 * j];
            v[i][j] = svd.v[i + 3 * j];
        }
    }
    // vnl_svd keeps |w| (std::abs, so +0.0 for zeros) and zero_out_absolute(0).
    let mut winv = [[0.0; 3]; 3];
    let mut rank = 3;
    let mut inv_diag = [0.0; 3];
    for (inv, &s) in inv_diag.iter_mut().zip(&svd.s[1..]) {
        let w = s.abs();
        if w <= 0.0 {
            rank -= 1;
        } else {
            *inv = 1.0 / w;
        }
    }
    // pinverse(rank): only the first `rank` inverse weights are kept.
    for k in 0..rank {
        winv[k][k] = inv_diag[k];
    }
    let mut ut = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            ut[i][j] = u[j][i];
        }
    }
    mat_mul_dyn(&mat_mul_dyn(&v, &winv), &ut)
}

/// A 3×3 port of LINPACK `dsvdc` and the reference BLAS level-1 routines it calls, as
/// translated by f2c in VXL's `v3p/netlib`. Indices are 1-based like the Fortran to keep
/// the control flow recognisable; column-major 3×3 arrays.
// Index loops mirror the Fortran; the negated comparison keeps its NaN behaviour.
#[allow(clippy::needless_range_loop, clippy::neg_cmp_op_on_partial_ord)]
mod linpack {
    const N: usize = 3;
    const P: usize = 3;

    /// f2c's `abs` macro: keeps the sign of a negative zero, unlike `f64::abs`.
    #[inline]
    fn fabs(x: f64) -> f64 {
        if x >= 0.0 {
            x
        } else {
            -x
        }
    }

    #[inline]
    fn fmax(a: f64, b: f64) -> f64 {
        if a >= b {
            a
        } else {
            b
        }
    }

    /// libf2c `d_sign`.
    #[inline]
    fn d_sign(a: f64, b: f64) -> f64 {
        let x = if a >= 0.0 { a } else { -a };
        if b >= 0.0 {
            x
        } else {
            -x
        }
    }

    /// Offset of X(i, j) (1-based) in a column-major 3×3 array.
    #[inline]
    fn ix(i: usize, j: usize) -> usize {
        (i - 1) + (j - 1) * N
    }

    /// Scaled sum-of-squares `dnrm2` (Hammarling 1982/1993).
    fn dnrm2(n: usize, x: &[f64], off: usize) -> f64 {
        if n < 1 {
            return 0.0;
        }
        if n == 1 {
            return fabs(x[off]);
        }
        let mut scale = 0.0;
        let mut ssq = 1.0;
        for &xi in &x[off..off + n] {
            if xi != 0.0 {
                let absxi = fabs(xi);
                if scale < absxi {
                    let d = scale / absxi;
                    ssq = ssq * (d * d) + 1.0;
                    scale = absxi;
                } else {
                    let d = absxi / scale;
                    ssq += d * d;
                }
            }
        }
        scale * ssq.sqrt()
    }

    /// `ddot`: sequential for n < 5 (the only case here).
    fn ddot(n: usize, a: &[f64], ao: usize, b: &[f64], bo: usize) -> f64 {
        debug_assert!(n < 5);
        let mut t = 0.0;
        for i in 0..n {
            t += a[ao + i] * b[bo + i];
        }
        t
    }

    /// `daxpy` with x and y in different arrays.
    fn daxpy(n: usize, da: f64, x: &[f64], xo: usize, y: &mut [f64], yo: usize) {
        if n == 0 || da == 0.0 {
            return;
        }
        for i in 0..n {
            y[yo + i] += da * x[xo + i];
        }
    }

    /// `daxpy` with x and y being distinct columns of the same array.
    fn daxpy_same(n: usize, da: f64, a: &mut [f64], xo: usize, yo: usize) {
        if n == 0 || da == 0.0 {
            return;
        }
        for i in 0..n {
            a[yo + i] += da * a[xo + i];
        }
    }

    fn dscal(n: usize, da: f64, a: &mut [f64], off: usize) {
        for v in &mut a[off..off + n] {
            *v *= da;
        }
    }

    fn dswap(n: usize, a: &mut [f64], xo: usize, yo: usize) {
        for i in 0..n {
            a.swap(xo + i, yo + i);
        }
    }

    fn drot(n: usize, a: &mut [f64], xo: usize, yo: usize, c: f64, s: f64) {
        for i in 0..n {
            let dx = a[xo + i];
            let dy = a[yo + i];
            let t = c * dx + s * dy;
            a[yo + i] = c * dy - s * dx;
            a[xo + i] = t;
        }
    }

    /// `drotg`: overwrites `da` with r and `db` with z.
    fn drotg(da: &mut f64, db: &mut f64, c: &mut f64, s: &mut f64) {
        let (a, b) = (*da, *db);
        let mut roe = b;
        if fabs(a) > fabs(b) {
            roe = a;
        }
        let scale = fabs(a) + fabs(b);
        let (r, z);
        if scale == 0.0 {
            *c = 1.0;
            *s = 0.0;
            r = 0.0;
            z = 0.0;
        } else {
            let d1 = a / scale;
            let d2 = b / scale;
            let rr = scale * (d1 * d1 + d2 * d2).sqrt();
            r = d_sign(1.0, roe) * rr;
            *c = a / r;
            *s = b / r;
            let mut zz = 1.0;
            if fabs(a) > fabs(b) {
                zz = *s;
            }
            if fabs(b) >= fabs(a) && *c != 0.0 {
                zz = 1.0 / *c;
            }
            z = zz;
        }
        *da = r;
        *db = z;
    }

    pub struct Svd {
        /// Singular values, 1-based (index 0 unused).
        pub s: [f64; 4],
        /// Column-major 3×3.
        pub u: [f64; 9],
        pub v: [f64; 9],
        #[allow(dead_code)]
        pub info: usize,
    }

    /// `dsvdc(x, 3, 3, 3, s, e, u, 3, v, 3, work, 21, info)`.
    pub fn dsvdc3(x: &mut [f64; 9]) -> Svd {
        let n = N;
        let p = P;
        let mut s = [0.0f64; 4];
        let mut e = [0.0f64; 4];
        let mut u = [0.0f64; 9];
        let mut v = [0.0f64; 9];
        let mut work = [0.0f64; 4];
        let maxit = 1000;
        let job = 21;
        let jobu = job % 100 / 10;
        let ncu = if jobu > 1 { n.min(p) } else { n };
        let wantu = jobu != 0;
        let wantv = job % 10 != 0;
        let mut info = 0;

        // Reduce x to bidiagonal form.
        let nct = (n - 1).min(p);
        let nrt = 0.max((p as isize - 2).min(n as isize)) as usize;
        let lu = nct.max(nrt);
        for l in 1..=lu {
            let lp1 = l + 1;
            if l <= nct {
                s[l] = dnrm2(n - l + 1, x, ix(l, l));
                if s[l] != 0.0 {
                    if x[ix(l, l)] != 0.0 {
                        s[l] = d_sign(s[l], x[ix(l, l)]);
                    }
                    dscal(n - l + 1, 1.0 / s[l], x, ix(l, l));
                    x[ix(l, l)] += 1.0;
                }
                s[l] = -s[l];
            }
            if p >= lp1 {
                for j in lp1..=p {
                    if l <= nct && s[l] != 0.0 {
                        let t = -ddot(n - l + 1, x, ix(l, l), x, ix(l, j)) / x[ix(l, l)];
                        daxpy_same(n - l + 1, t, x, ix(l, l), ix(l, j));
                    }
                    e[j] = x[ix(l, j)];
                }
            }
            if wantu && l <= nct {
                for i in l..=n {
                    u[ix(i, l)] = x[ix(i, l)];
                }
            }
            if l <= nrt {
                e[l] = dnrm2(p - l, &e, lp1);
                if e[l] != 0.0 {
                    if e[lp1] != 0.0 {
                        e[l] = d_sign(e[l], e[lp1]);
                    }
                    dscal(p - l, 1.0 / e[l], &mut e, lp1);
                    e[lp1] += 1.0;
                }
                e[l] = -e[l];
                if !(lp1 > n || e[l] == 0.0) {
                    for w in work.iter_mut().take(n + 1).skip(lp1) {
                        *w = 0.0;
                    }
                    for j in lp1..=p {
                        daxpy(n - l, e[j], x, ix(lp1, j), &mut work, lp1);
                    }
                    for j in lp1..=p {
                        let d = -e[j] / e[lp1];
                        daxpy(n - l, d, &work, lp1, x, ix(lp1, j));
                    }
                }
                if wantv {
                    for i in lp1..=p {
                        v[ix(i, l)] = e[i];
                    }
                }
            }
        }

        // Final bidiagonal matrix of order m.
        let mut m = p.min(n + 1);
        let nctp1 = nct + 1;
        let nrtp1 = nrt + 1;
        if nct < p {
            s[nctp1] = x[ix(nctp1, nctp1)];
        }
        if n < m {
            s[m] = 0.0;
        }
        if nrtp1 < m {
            e[nrtp1] = x[ix(nrtp1, m)];
        }
        e[m] = 0.0;

        // Generate u.
        if wantu {
            if ncu >= nctp1 {
                for j in nctp1..=ncu {
                    for i in 1..=n {
                        u[ix(i, j)] = 0.0;
                    }
                    u[ix(j, j)] = 1.0;
                }
            }
            for ll in 1..=nct {
                let l = nct - ll + 1;
                if s[l] != 0.0 {
                    let lp1 = l + 1;
                    if ncu >= lp1 {
                        for j in lp1..=ncu {
                            let t = -ddot(n - l + 1, &u, ix(l, l), &u, ix(l, j)) / u[ix(l, l)];
                            daxpy_same(n - l + 1, t, &mut u, ix(l, l), ix(l, j));
                        }
                    }
                    dscal(n - l + 1, -1.0, &mut u, ix(l, l));
                    u[ix(l, l)] += 1.0;
                    for i in 1..l {
                        u[ix(i, l)] = 0.0;
                    }
                } else {
                    for i in 1..=n {
                        u[ix(i, l)] = 0.0;
                    }
                    u[ix(l, l)] = 1.0;
                }
            }
        }

        // Generate v.
        if wantv {
            for ll in 1..=p {
                let l = p - ll + 1;
                let lp1 = l + 1;
                if l <= nrt && e[l] != 0.0 {
                    for j in lp1..=p {
                        let t = -ddot(p - l, &v, ix(lp1, l), &v, ix(lp1, j)) / v[ix(lp1, l)];
                        daxpy_same(p - l, t, &mut v, ix(lp1, l), ix(lp1, j));
                    }
                }
                for i in 1..=p {
                    v[ix(i, l)] = 0.0;
                }
                v[ix(l, l)] = 1.0;
            }
        }

        // Main iteration loop for the singular values.
        let mm = m;
        let mut iter = 0;
        loop {
            if m == 0 {
                break;
            }
            if iter >= maxit {
                info = m;
                break;
            }
            // Inspect for negligible elements; set kase and l.
            let mut l = 0;
            for ll in 1..=m {
                l = m - ll;
                if l == 0 {
                    break;
                }
                let test = fabs(s[l]) + fabs(s[l + 1]);
                let ztest = test + fabs(e[l]);
                if ztest == test {
                    e[l] = 0.0;
                    break;
                }
            }
            let kase;
            if l == m - 1 {
                kase = 4;
            } else {
                let lp1 = l + 1;
                let mp1 = m + 1;
                let mut ls = l;
                for lls in lp1..=mp1 {
                    ls = m + lp1 - lls;
                    if ls == l {
                        break;
                    }
                    let mut test = 0.0;
                    if ls != m {
                        test += fabs(e[ls]);
                    }
                    if ls != l + 1 {
                        test += fabs(e[ls - 1]);
                    }
                    let ztest = test + fabs(s[ls]);
                    if ztest == test {
                        s[ls] = 0.0;
                        break;
                    }
                }
                if ls == l {
                    kase = 3;
                } else if ls == m {
                    kase = 1;
                } else {
                    kase = 2;
                    l = ls;
                }
            }
            l += 1;

            let (mut cs, mut sn) = (0.0, 0.0);
            match kase {
                1 => {
                    // Deflate negligible s(m).
                    let mm1 = m - 1;
                    let mut f = e[m - 1];
                    e[m - 1] = 0.0;
                    for kk in l..=mm1 {
                        let k = mm1 - kk + l;
                        let mut t1 = s[k];
                        drotg(&mut t1, &mut f, &mut cs, &mut sn);
                        s[k] = t1;
                        if k != l {
                            f = -sn * e[k - 1];
                            e[k - 1] *= cs;
                        }
                        if wantv {
                            drot(p, &mut v, ix(1, k), ix(1, m), cs, sn);
                        }
                    }
                }
                2 => {
                    // Split at negligible s(l).
                    let mut f = e[l - 1];
                    e[l - 1] = 0.0;
                    for k in l..=m {
                        let mut t1 = s[k];
                        drotg(&mut t1, &mut f, &mut cs, &mut sn);
                        s[k] = t1;
                        f = -sn * e[k];
                        e[k] *= cs;
                        if wantu {
                            drot(n, &mut u, ix(1, k), ix(1, l - 1), cs, sn);
                        }
                    }
                }
                3 => {
                    // One QR step: shift.
                    let scale = fmax(
                        fmax(
                            fmax(fmax(fabs(s[m]), fabs(s[m - 1])), fabs(e[m - 1])),
                            fabs(s[l]),
                        ),
                        fabs(e[l]),
                    );
                    let sm = s[m] / scale;
                    let smm1 = s[m - 1] / scale;
                    let emm1 = e[m - 1] / scale;
                    let sl = s[l] / scale;
                    let el = e[l] / scale;
                    let b = ((smm1 + sm) * (smm1 - sm) + emm1 * emm1) / 2.0;
                    let c = (sm * emm1) * (sm * emm1);
                    let mut shift = 0.0;
                    if !(b == 0.0 && c == 0.0) {
                        shift = (b * b + c).sqrt();
                        if b < 0.0 {
                            shift = -shift;
                        }
                        shift = c / (b + shift);
                    }
                    let mut f = (sl + sm) * (sl - sm) + shift;
                    let mut g = sl * el;
                    // Chase zeros.
                    let mm1 = m - 1;
                    for k in l..=mm1 {
                        drotg(&mut f, &mut g, &mut cs, &mut sn);
                        if k != l {
                            e[k - 1] = f;
                        }
                        f = cs * s[k] + sn * e[k];
                        e[k] = cs * e[k] - sn * s[k];
                        g = sn * s[k + 1];
                        s[k + 1] *= cs;
                        if wantv {
                            drot(p, &mut v, ix(1, k), ix(1, k + 1), cs, sn);
                        }
                        drotg(&mut f, &mut g, &mut cs, &mut sn);
                        s[k] = f;
                        f = cs * e[k] + sn * s[k + 1];
                        s[k + 1] = -sn * e[k] + cs * s[k + 1];
                        g = sn * e[k + 1];
                        e[k + 1] *= cs;
                        if wantu && k < n {
                            drot(n, &mut u, ix(1, k), ix(1, k + 1), cs, sn);
                        }
                    }
                    e[m - 1] = f;
                    iter += 1;
                }
                _ => {
                    // Convergence: make the singular value positive, then order.
                    if s[l] < 0.0 {
                        s[l] = -s[l];
                        if wantv {
                            dscal(p, -1.0, &mut v, ix(1, l));
                        }
                    }
                    while l != mm && !(s[l] >= s[l + 1]) {
                        s.swap(l, l + 1);
                        if wantv && l < p {
                            dswap(p, &mut v, ix(1, l), ix(1, l + 1));
                        }
                        if wantu && l < n {
                            dswap(n, &mut u, ix(1, l), ix(1, l + 1));
                        }
                        l += 1;
                    }
                    iter = 0;
                    m -= 1;
                }
            }
        }
        Svd { s, u, v, info }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_aligned_inverse_is_reciprocal_spacing() {
        let g = Geometry {
            origin: [0.0; 3],
            direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            spacing: [0.6875, 0.6875, 6.0],
        };
        let p = physical_to_index(&g);
        assert_eq!(p[0][0], 1.0 / 0.6875);
        assert_eq!(p[2][2], 1.0 / 6.0);
        assert_eq!(p[0][1], 0.0);
    }
}
