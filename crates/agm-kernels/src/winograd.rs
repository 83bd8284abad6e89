//! Winograd F(2×2, 3×3): the CPU's 3×3 stride-1 convolutions with 2.25× fewer multiplications.
//!
//! Each 4×4 input tile (stride 2, so neighbouring tiles overlap by two pixels) becomes 16
//! transformed points `Bᵀ d B`, each 3×3 kernel becomes 16 points `G g Gᵀ`, and the output's 2×2
//! tile is `Aᵀ [Σ_c U ⊙ V] A`. The sum over channels is 16 independent GEMMs, one per point,
//! `[O, C] · [C, tiles]`, against im2col's one GEMM `[O, 9C] · [9C, positions]` with four times
//! as many columns. The backward pass runs the adjoints: the output gradient's points
//! `A dy Aᵀ` multiply the kernel's points for the input gradient (then `B · Bᵀ`, overlapping
//! tiles added) and the input's points for the kernel's (then `Gᵀ · G`).
//!
//! The transforms' entries are 0, ±1 and ±½, so the result differs from the direct sum by
//! rounding only (a few ulps of the largest term). `fp32-strict` keeps the direct im2col path.
//!
//! Buffers of points are laid out `[16, rows, n]`: point-major, so that each point's operand is
//! one row-major matrix for the GEMM. The transforms split a padded plane into quadrants (even
//! or odd rows, even or odd columns), where a tile's neighbours in both directions are fixed
//! offsets: each step is one flat, unit-stride loop over a whole plane, with one unused slot per
//! tile row (see [`Winograd::slots`]), compiled for AVX-512 where the CPU has it.

use rayon::prelude::*;

use crate::cpu::{add_into, collect_chunks, matmul_into, transpose, Groups, Real};

/// Calls the method `$body` of `self` compiled for AVX-512 where the CPU has it (the default
/// target has SSE2 only): the transforms' loops are plain enough to vectorise at any width.
macro_rules! wide {
    ($self:ident.$body:ident($($arg:ident: $ty:ty),*)) => {{
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512<T: Real>(wg: &Winograd, $($arg: $ty),*) {
                wg.$body($($arg),*)
            }
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { avx512($self, $($arg),*) };
        }
        $self.$body($($arg),*)
    }};
}

/// Transformed points per tile (4×4).
const POINTS: usize = 16;

/// Tiles per plane below which im2col is faster: on small planes (7×7 and less in ResNet-18's
/// later stages, which also have the most channels) the kernels' transform and the thin GEMMs
/// cost more than the multiplications saved.
const MIN_TILES: usize = 25;

/// The geometry of a 3×3, stride-1 convolution of `[C, H, W]` planes with zero padding `pad`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Winograd {
    c: usize,
    h: usize,
    w: usize,
    pad: usize,
    oh: usize,
    ow: usize,
    /// Tile rows and columns per plane: each tile gives a 2×2 output block.
    th: usize,
    tw: usize,
}

impl Winograd {
    /// The Winograd form of a 3×3 convolution at `pad`, `None` where it would not pay: an
    /// output of fewer than [`MIN_TILES`] tiles per plane.
    pub(crate) fn new((c, h, w): (usize, usize, usize), pad: usize) -> Option<Self> {
        let (oh, ow) = ((h + 2 * pad).checked_sub(2)?, (w + 2 * pad).checked_sub(2)?);
        let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
        (th * tw >= MIN_TILES).then_some(Self { c, h, w, pad, oh, ow, th, tw })
    }

    /// [`Self::new`] without its size threshold, for the tests' small planes.
    #[cfg(test)]
    pub(crate) fn any_size((c, h, w): (usize, usize, usize), pad: usize) -> Self {
        let (oh, ow) = (h + 2 * pad - 2, w + 2 * pad - 2);
        Self { c, h, w, pad, oh, ow, th: oh.div_ceil(2), tw: ow.div_ceil(2) }
    }

    /// Columns per plane in a buffer of points: a tile row holds its `tw` tiles and one unused
    /// slot, so that the transforms run as flat loops over whole planes (see
    /// [`Self::input_plane`]). The unused slots of the output gradient's points are zero, so
    /// the gradients' sums over tiles ignore them.
    fn slots(&self) -> usize {
        self.th * (self.tw + 1)
    }

    /// Samples per group: enough that each group's GEMMs have [`MIN_GROUP_TILES`] columns.
    fn group_size(&self) -> usize {
        MIN_GROUP_TILES.div_ceil(self.slots())
    }

    /// `y [B, O, OH, OW]` of `x [B, C, H, W]` and `w [O, C, 3, 3]`.
    pub(crate) fn forward<T: Real>(&self, x: &[T], w: &[T], (b, o): (usize, usize)) -> Vec<T> {
        let kernel = self.kernel_points(w, o);
        let (input_len, output_len) = (self.c * self.h * self.w, o * self.oh * self.ow);
        let mut y = vec![T::ZERO; b * output_len];
        by_group(&mut y, output_len, self.group_size(), |scratch, first, s, y, parallel| {
            let n = s * self.slots();
            let [input, products] = carve(scratch, [POINTS * self.c * n, POINTS * o * n]);
            self.input_points(&x[first * input_len..(first + s) * input_len], s, input, parallel);
            point_products(&kernel, input, products, (o, n, self.c), (false, false), false, parallel);
            self.output_from_points(products, s, o, y, parallel);
        });
        y
    }

    /// `dx [B, C, H, W]` of `dy [B, O, OH, OW]` and `w`.
    pub(crate) fn input_grad<T: Real>(&self, dy: &[T], w: &[T], (b, o): (usize, usize)) -> Vec<T> {
        let kernel = self.kernel_points(w, o);
        let (input_len, output_len) = (self.c * self.h * self.w, o * self.oh * self.ow);
        let mut dx = vec![T::ZERO; b * input_len];
        by_group(&mut dx, input_len, self.group_size(), |scratch, first, s, dx, parallel| {
            let n = s * self.slots();
            let [grad, products] = carve(scratch, [POINTS * o * n, POINTS * self.c * n]);
            self.grad_points(&dy[first * output_len..(first + s) * output_len], s, o, grad, parallel);
            point_products(&kernel, grad, products, (self.c, n, o), (true, false), false, parallel);
            self.input_from_points(products, s, dx, parallel);
        });
        dx
    }

    /// `dw [O, C, 3, 3]` of `dy` and `x`. Each thread sums its groups' products into its own
    /// `[16, O, C]`, and the threads' sums add up.
    pub(crate) fn weight_grad<T: Real>(&self, dy: &[T], x: &[T], (b, o): (usize, usize)) -> Vec<T> {
        let (input_len, output_len) = (self.c * self.h * self.w, o * self.oh * self.ow);
        let sum_len = POINTS * o * self.c;
        // Adds the products of samples first..first + s onto `sum`.
        let add_products = |scratch: &mut Vec<T>, sum: &mut [T], first: usize, s: usize, parallel: bool| {
            let n = s * self.slots();
            let [grad, input] = carve(scratch, [POINTS * o * n, POINTS * self.c * n]);
            self.grad_points(&dy[first * output_len..(first + s) * output_len], s, o, grad, parallel);
            self.input_points(&x[first * input_len..(first + s) * input_len], s, input, parallel);
            point_products(grad, input, sum, (o, self.c, n), (false, true), true, parallel);
        };
        let groups = Groups::plan(b, self.group_size());
        let (size, grouped) = groups.map_or((1, 0), |g| (g.size, g.samples));
        let mut sum = (0..groups.map_or(0, |g| g.count()))
            .into_par_iter()
            .with_min_len(groups.map_or(1, |g| g.per_thread()))
            .fold(
                || (Vec::new(), vec![T::ZERO; sum_len]),
                |(mut scratch, mut sum), i| {
                    add_products(&mut scratch, &mut sum, i * size, size, false);
                    (scratch, sum)
                },
            )
            .map(|(_, sum)| sum)
            .reduce_with(add_into)
            .unwrap_or_else(|| vec![T::ZERO; sum_len]);
        if grouped < b {
            add_products(&mut Vec::new(), &mut sum, grouped, b - grouped, true);
        }
        self.kernel_from_points(&sum, o)
    }

    /// `U = G g Gᵀ` of every kernel: `[16, O, C]`.
    fn kernel_points<T: Real>(&self, w: &[T], o: usize) -> Vec<T> {
        let c = self.c;
        let mut points = vec![T::ZERO; POINTS * o * c];
        fill_points(&mut points, o, c, true, |_, i, mut rows| {
            // The kernels' taps as nine rows over the input channels.
            let taps = transpose(&w[i * c * 9..(i + 1) * c * 9], c, 9);
            // Down the kernel's columns, then along the four rows.
            let mut t = vec![T::ZERO; 12 * c];
            let tap = |ki: usize, kj: usize| &taps[(3 * ki + kj) * c..(3 * ki + kj + 1) * c];
            for j in 0..3 {
                let mut column = t.chunks_exact_mut(c).skip(j).step_by(3);
                let mut next = || column.next().expect("four rows");
                g_apply(tap(0, j), tap(1, j), tap(2, j), next(), next(), next(), next());
            }
            for (r, t) in t.chunks_exact(3 * c).enumerate() {
                let [u0, u1, u2, u3] = &mut rows[4 * r..4 * r + 4] else { unreachable!("16 points") };
                g_apply(&t[..c], &t[c..2 * c], &t[2 * c..], u0, u1, u2, u3);
            }
        });
        points
    }

    /// The adjoint of [`Self::kernel_points`]: `Gᵀ dU G` of `[16, O, C]`, as `[O, C, 3, 3]`.
    fn kernel_from_points<T: Real>(&self, points: &[T], o: usize) -> Vec<T> {
        let c = self.c;
        collect_chunks(o * c * 9, c * 9, c * 9 * POINTS, |i, dst| {
            let u = |p: usize| &points[(p * o + i) * c..(p * o + i + 1) * c];
            // Along each of the four rows, then down the three columns.
            let mut t = vec![T::ZERO; 12 * c];
            for (r, t) in t.chunks_exact_mut(3 * c).enumerate() {
                let [t0, t1, t2] = thirds(t);
                g_transpose(u(4 * r), u(4 * r + 1), u(4 * r + 2), u(4 * r + 3), t0, t1, t2);
            }
            let mut taps = vec![T::ZERO; 9 * c];
            for j in 0..3 {
                let row = |r: usize| &t[(3 * r + j) * c..(3 * r + j + 1) * c];
                let mut column = taps.chunks_exact_mut(c).skip(j).step_by(3);
                let mut next = || column.next().expect("three rows");
                g_transpose(row(0), row(1), row(2), row(3), next(), next(), next());
            }
            dst.copy_from_slice(&transpose(&taps, 9, c));
        })
    }

    /// `V = Bᵀ d B` of every input tile: `[16, C, B·tiles]`.
    fn input_points<T: Real>(&self, x: &[T], b: usize, points: &mut [T], parallel: bool) {
        let (c, plane, tiles) = (self.c, self.h * self.w, self.slots());
        fill_points(points, c * b, tiles, parallel, |scratch, i, mut rows| {
            let (ci, bi) = (i / b, i % b);
            let start = (bi * c + ci) * plane;
            self.input_plane(&x[start..start + plane], &mut rows, scratch);
        })
    }

    /// Elements of one quadrant of a padded plane: `[th + 1, tw + 1]`, and one more so that a
    /// shifted add may run over the whole quadrant.
    fn quadrant_len(&self) -> usize {
        (self.th + 1) * (self.tw + 1) + 1
    }

    /// The 16 points of every tile of one input plane, tile `(ty, tx)` at slot `ty·(tw + 1) + tx`
    /// of each row.
    ///
    /// Works on quadrants `[th + 1, tw + 1]` of the padded plane (even or odd rows, even or odd
    /// columns), where tile `(ty, tx)` reads elements `ty·(tw + 1) + tx` and the next in the
    /// row and column: every step is one flat loop over a whole quadrant, and the slot after
    /// each tile row's last tile gets a value no one reads.
    fn input_plane<T: Real>(&self, plane: &[T], rows: &mut [&mut [T]], scratch: &mut Vec<T>) {
        wide!(self.input_plane_body(plane: &[T], rows: &mut [&mut [T]], scratch: &mut Vec<T>))
    }

    #[inline(always)]
    fn input_plane_body<T: Real>(&self, plane: &[T], rows: &mut [&mut [T]], scratch: &mut Vec<T>) {
        let (half, len, n) = (self.tw + 1, self.quadrant_len(), self.slots());
        let [quads, h] = carve(scratch, [4 * len, 8 * len]);
        self.split_quadrants(plane, quads);
        // Along every padded row: h[parity][k] = (d B)[k] of the tile starting there.
        for (q, h) in quads.chunks_exact(2 * len).zip(h.chunks_exact_mut(4 * len)) {
            let (e, o) = q.split_at(len);
            let [h0, h1, h2, h3] = quarters(h);
            let m = len - 1;
            b_transpose(&e[..m], &o[..m], &e[1..], &o[1..], &mut h0[..m], h1, h2, h3);
        }
        // Down the rows (even, odd, next even, next odd): point (i, k).
        let (even, odd) = h.split_at(4 * len);
        for k in 0..4 {
            let (e, o) = (&even[k * len..(k + 1) * len], &odd[k * len..(k + 1) * len]);
            let [v0, v1, v2, v3] = column_of_points(rows, k);
            b_transpose(&e[..n], &o[..n], &e[half..], &o[half..], v0, v1, v2, v3);
        }
    }

    /// `plane [H, W]` zero-padded (padding `pad` before, as much as the last tile needs after)
    /// and split into quadrants by row and column parity: `quads` holds even rows' even and odd
    /// columns, then odd rows' (each [`Self::quadrant_len`]).
    #[inline(always)]
    fn split_quadrants<T: Real>(&self, plane: &[T], quads: &mut [T]) {
        let (p, half, len) = (self.pad, self.tw + 1, self.quadrant_len());
        quads.fill(T::ZERO);
        for (iy, src) in plane.chunks_exact(self.w).enumerate() {
            let (parity, row) = ((iy + p) % 2, (iy + p) / 2 * half);
            let (e, o) = quads[2 * parity * len..(2 * parity + 2) * len].split_at_mut(len);
            let (e, o) = (&mut e[row..row + half], &mut o[row..row + half]);
            // Column ix lands at padded column ix + p.
            if p % 2 == 0 {
                deinterleave(src, &mut e[p / 2..], &mut o[p / 2..]);
            } else {
                o[p / 2] = src[0];
                deinterleave(&src[1..], &mut e[p / 2 + 1..], &mut o[p / 2 + 1..]);
            }
        }
    }

    /// The adjoint of [`Self::input_points`]: `B dV Bᵀ` of every tile of `[16, C, B·tiles]`,
    /// overlapping tiles added, the padding cropped: `[B, C, H, W]`.
    fn input_from_points<T: Real>(&self, points: &[T], b: usize, dx: &mut [T], parallel: bool) {
        self.planes_from_points(points, (b, self.c, self.h * self.w), dx, parallel, Self::input_grad_plane);
    }

    /// Each plane `(b, x)` of `out [B, X, plane]` written by `plane_of(rows, plane, scratch)`
    /// from its 16 rows of `points [16, X, B·slots]`.
    fn planes_from_points<T: Real>(
        &self,
        points: &[T],
        (b, x, plane): (usize, usize, usize),
        out: &mut [T],
        parallel: bool,
        plane_of: impl Fn(&Self, &[&[T]; POINTS], &mut [T], &mut Vec<T>) + Sync + Send,
    ) {
        let slots = self.slots();
        let n = b * slots;
        each_chunk(out, plane, parallel, |scratch, i, dst| {
            let (bi, xi) = (i / x, i % x);
            let rows: [&[T]; POINTS] = std::array::from_fn(|p| &points[(p * x + xi) * n + bi * slots..][..slots]);
            plane_of(self, &rows, dst, scratch);
        })
    }

    /// One plane of [`Self::input_from_points`], on quadrants as in [`Self::input_plane`].
    fn input_grad_plane<T: Real>(&self, rows: &[&[T]; POINTS], dst: &mut [T], scratch: &mut Vec<T>) {
        wide!(self.input_grad_plane_body(rows: &[&[T]; POINTS], dst: &mut [T], scratch: &mut Vec<T>))
    }

    #[inline(always)]
    fn input_grad_plane_body<T: Real>(&self, rows: &[&[T]; POINTS], dst: &mut [T], scratch: &mut Vec<T>) {
        let (half, len, p, n) = (self.tw + 1, self.quadrant_len(), self.pad, self.slots());
        let [v, c, quads] = carve(scratch, [POINTS * n, 4 * n, 4 * len]);
        // Up the rows: v[r][k] = (B dV)[r][k]. The unused slots are zero (the output gradient's
        // are, and the products are linear in them), so they add nothing to the last column.
        for k in 0..4 {
            let q = |i: usize| rows[4 * i + k];
            let mut column = v.chunks_exact_mut(n).skip(k).step_by(4);
            let mut next = || column.next().expect("four rows");
            b_apply(q(0), q(1), q(2), q(3), next(), next(), next(), next());
        }
        // Along the rows, added onto the quadrants: row r of a tile is padded row 2·ty + r.
        quads.fill(T::ZERO);
        for (r, v) in v.chunks_exact(4 * n).enumerate() {
            let [c0, c1, c2, c3] = quarters(c);
            b_apply(&v[..n], &v[n..2 * n], &v[2 * n..3 * n], &v[3 * n..], c0, c1, c2, c3);
            let (parity, offset) = (r % 2, r / 2 * half);
            let (e, o) = quads[2 * parity * len..(2 * parity + 2) * len].split_at_mut(len);
            add_to(&mut e[offset..offset + n], c0);
            add_to(&mut o[offset..offset + n], c1);
            add_to(&mut e[offset + 1..offset + 1 + n], c2);
            add_to(&mut o[offset + 1..offset + 1 + n], c3);
        }
        for (iy, out) in dst.chunks_exact_mut(self.w).enumerate() {
            let (parity, row) = ((iy + p) % 2, (iy + p) / 2 * half);
            let (e, o) = quads[2 * parity * len..(2 * parity + 2) * len].split_at(len);
            let (e, o) = (&e[row..row + half], &o[row..row + half]);
            if p % 2 == 0 {
                interleave(&e[p / 2..], &o[p / 2..], out);
            } else {
                out[0] = o[p / 2];
                interleave(&e[p / 2 + 1..], &o[p / 2 + 1..], &mut out[1..]);
            }
        }
    }

    /// `A dy Aᵀ` of every output tile: `[16, O, B·tiles]` (points of the cropped part are zero
    /// gradients).
    fn grad_points<T: Real>(&self, dy: &[T], b: usize, o: usize, points: &mut [T], parallel: bool) {
        let (tiles, plane) = (self.slots(), self.oh * self.ow);
        fill_points(points, o * b, tiles, parallel, |scratch, i, mut rows| {
            let (oi, bi) = (i / b, i % b);
            self.grad_plane(&dy[(bi * o + oi) * plane..][..plane], &mut rows, scratch);
        })
    }

    /// The 16 points of every tile of one output-gradient plane.
    fn grad_plane<T: Real>(&self, src: &[T], rows: &mut [&mut [T]], scratch: &mut Vec<T>) {
        wide!(self.grad_plane_body(src: &[T], rows: &mut [&mut [T]], scratch: &mut Vec<T>))
    }

    #[inline(always)]
    fn grad_plane_body<T: Real>(&self, src: &[T], rows: &mut [&mut [T]], scratch: &mut Vec<T>) {
        let (half, tiles) = (self.tw + 1, self.slots());
        let [quads, h] = carve(scratch, [4 * tiles, 8 * tiles]);
        // Quadrants [th, tw + 1] of the gradient by row and column parity, zero past its edge
        // and in the unused slots.
        quads.fill(T::ZERO);
        for (y, line) in src.chunks_exact(self.ow).enumerate() {
            let (e, o) = quads[2 * (y % 2) * tiles..(2 * (y % 2) + 2) * tiles].split_at_mut(tiles);
            let row = y / 2 * half;
            deinterleave(line, &mut e[row..row + half], &mut o[row..row + half]);
        }
        // Along the rows, then down them straight into the points.
        for (q, h) in quads.chunks_exact(2 * tiles).zip(h.chunks_exact_mut(4 * tiles)) {
            let [h0, h1, h2, h3] = quarters(h);
            a_apply(&q[..tiles], &q[tiles..], h0, h1, h2, h3);
        }
        for k in 0..4 {
            let [v0, v1, v2, v3] = column_of_points(rows, k);
            a_apply(&h[k * tiles..(k + 1) * tiles], &h[(4 + k) * tiles..(5 + k) * tiles], v0, v1, v2, v3);
        }
    }

    /// `Aᵀ M A` of every tile of `[16, O, B·tiles]`, cropped to `[B, O, OH, OW]`.
    fn output_from_points<T: Real>(&self, points: &[T], b: usize, o: usize, y: &mut [T], parallel: bool) {
        self.planes_from_points(points, (b, o, self.oh * self.ow), y, parallel, Self::output_plane);
    }

    /// One plane of [`Self::output_from_points`].
    fn output_plane<T: Real>(&self, rows: &[&[T]; POINTS], dst: &mut [T], scratch: &mut Vec<T>) {
        wide!(self.output_plane_body(rows: &[&[T]; POINTS], dst: &mut [T], scratch: &mut Vec<T>))
    }

    #[inline(always)]
    fn output_plane_body<T: Real>(&self, m: &[&[T]; POINTS], dst: &mut [T], scratch: &mut Vec<T>) {
        let (half, tiles) = (self.tw + 1, self.slots());
        let [s, out] = carve(scratch, [8 * tiles, 4 * tiles]);
        // Down the rows: s[a][k] = (Aᵀ M)[a][k]; then along them: out[a] = even and odd
        // columns of output row a of every tile.
        for k in 0..4 {
            let (s0, s1) = s.split_at_mut(4 * tiles);
            let (s0, s1) = (&mut s0[k * tiles..(k + 1) * tiles], &mut s1[k * tiles..(k + 1) * tiles]);
            a_transpose(m[k], m[4 + k], m[8 + k], m[12 + k], s0, s1);
        }
        for (s, out) in s.chunks_exact(4 * tiles).zip(out.chunks_exact_mut(2 * tiles)) {
            let (e, o) = out.split_at_mut(tiles);
            a_transpose(&s[..tiles], &s[tiles..2 * tiles], &s[2 * tiles..3 * tiles], &s[3 * tiles..], e, o);
        }
        for (y, line) in dst.chunks_exact_mut(self.ow).enumerate() {
            let (e, o) = out[2 * (y % 2) * tiles..(2 * (y % 2) + 2) * tiles].split_at(tiles);
            let row = y / 2 * half;
            interleave(&e[row..row + half], &o[row..row + half], line);
        }
    }
}

// The transforms along one direction, for every tile of a row at once. Each takes its rows as
// separate slices, which the compiler knows do not overlap, so the loops vectorise.

/// `Bᵀ` on `(d0, d1, d2, d3)`: `(d0 − d2, d1 + d2, d2 − d1, d1 − d3)`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn b_transpose<T: Real>(
    d0: &[T],
    d1: &[T],
    d2: &[T],
    d3: &[T],
    h0: &mut [T],
    h1: &mut [T],
    h2: &mut [T],
    h3: &mut [T],
) {
    let n = h0.len();
    let (d0, d1, d2, d3) = (&d0[..n], &d1[..n], &d2[..n], &d3[..n]);
    let (h1, h2, h3) = (&mut h1[..n], &mut h2[..n], &mut h3[..n]);
    for t in 0..n {
        h0[t] = d0[t] - d2[t];
        h1[t] = d1[t] + d2[t];
        h2[t] = d2[t] - d1[t];
        h3[t] = d1[t] - d3[t];
    }
}

/// `B`, the adjoint of [`b_transpose`]: `(q0, q1 − q2 + q3, q1 + q2 − q0, −q3)`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn b_apply<T: Real>(q0: &[T], q1: &[T], q2: &[T], q3: &[T], v0: &mut [T], v1: &mut [T], v2: &mut [T], v3: &mut [T]) {
    let n = v0.len();
    let (q0, q1, q2, q3) = (&q0[..n], &q1[..n], &q2[..n], &q3[..n]);
    let (v1, v2, v3) = (&mut v1[..n], &mut v2[..n], &mut v3[..n]);
    for t in 0..n {
        v0[t] = q0[t];
        v1[t] = q1[t] - q2[t] + q3[t];
        v2[t] = q1[t] + q2[t] - q0[t];
        v3[t] = T::ZERO - q3[t];
    }
}

/// `A`, the adjoint of [`a_transpose`]: `(y0, y0 + y1, y0 − y1, −y1)`.
#[inline(always)]
fn a_apply<T: Real>(y0: &[T], y1: &[T], v0: &mut [T], v1: &mut [T], v2: &mut [T], v3: &mut [T]) {
    let n = v0.len();
    let (y0, y1) = (&y0[..n], &y1[..n]);
    let (v1, v2, v3) = (&mut v1[..n], &mut v2[..n], &mut v3[..n]);
    for t in 0..n {
        v0[t] = y0[t];
        v1[t] = y0[t] + y1[t];
        v2[t] = y0[t] - y1[t];
        v3[t] = T::ZERO - y1[t];
    }
}

/// `Aᵀ` on `(m0, m1, m2, m3)`: `(m0 + m1 + m2, m1 − m2 − m3)`.
#[inline(always)]
fn a_transpose<T: Real>(m0: &[T], m1: &[T], m2: &[T], m3: &[T], s0: &mut [T], s1: &mut [T]) {
    let n = s0.len();
    let (m0, m1, m2, m3) = (&m0[..n], &m1[..n], &m2[..n], &m3[..n]);
    let s1 = &mut s1[..n];
    for t in 0..n {
        s0[t] = m0[t] + m1[t] + m2[t];
        s1[t] = m1[t] - m2[t] - m3[t];
    }
}

/// `G` on a kernel's `(g0, g1, g2)`: `(g0, (g0 + g1 + g2)/2, (g0 − g1 + g2)/2, g2)`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn g_apply<T: Real>(g0: &[T], g1: &[T], g2: &[T], u0: &mut [T], u1: &mut [T], u2: &mut [T], u3: &mut [T]) {
    let (n, half) = (u0.len(), T::from_f64(0.5));
    let (g0, g1, g2) = (&g0[..n], &g1[..n], &g2[..n]);
    let (u1, u2, u3) = (&mut u1[..n], &mut u2[..n], &mut u3[..n]);
    for t in 0..n {
        u0[t] = g0[t];
        u1[t] = (g0[t] + g1[t] + g2[t]) * half;
        u2[t] = (g0[t] - g1[t] + g2[t]) * half;
        u3[t] = g2[t];
    }
}

/// `Gᵀ`, the adjoint of [`g_apply`]: `(u0 + (u1 + u2)/2, (u1 − u2)/2, (u1 + u2)/2 + u3)`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn g_transpose<T: Real>(u0: &[T], u1: &[T], u2: &[T], u3: &[T], g0: &mut [T], g1: &mut [T], g2: &mut [T]) {
    let (n, half) = (g0.len(), T::from_f64(0.5));
    let (u0, u1, u2, u3) = (&u0[..n], &u1[..n], &u2[..n], &u3[..n]);
    let (g1, g2) = (&mut g1[..n], &mut g2[..n]);
    for t in 0..n {
        let mean = (u1[t] + u2[t]) * half;
        g0[t] = u0[t] + mean;
        g1[t] = (u1[t] - u2[t]) * half;
        g2[t] = mean + u3[t];
    }
}

/// `dst += src`.
#[inline(always)]
fn add_to<T: Real>(dst: &mut [T], src: &[T]) {
    dst.iter_mut().zip(src).for_each(|(d, s)| *d += *s);
}

/// `src`'s even elements into `even`, odd ones into `odd` (as many as fit).
#[inline(always)]
fn deinterleave<T: Real>(src: &[T], even: &mut [T], odd: &mut [T]) {
    let mut pairs = src.chunks_exact(2);
    for ((pair, e), o) in pairs.by_ref().zip(even.iter_mut()).zip(odd.iter_mut()) {
        *e = pair[0];
        *o = pair[1];
    }
    if let ([last], Some(e)) = (pairs.remainder(), even.get_mut(src.len() / 2)) {
        *e = *last;
    }
}

/// The inverse of [`deinterleave`]: `dst[2i] = even[i]`, `dst[2i + 1] = odd[i]`.
#[inline(always)]
fn interleave<T: Real>(even: &[T], odd: &[T], dst: &mut [T]) {
    let mut pairs = dst.chunks_exact_mut(2);
    for ((pair, e), o) in pairs.by_ref().zip(even).zip(odd) {
        pair[0] = *e;
        pair[1] = *o;
    }
    let n = dst.len();
    if n % 2 == 1 {
        dst[n - 1] = even[n / 2];
    }
}

/// The three equal thirds of `s`.
fn thirds<T>(s: &mut [T]) -> [&mut [T]; 3] {
    let n = s.len() / 3;
    let (a, rest) = s.split_at_mut(n);
    let (b, c) = rest.split_at_mut(n);
    [a, b, c]
}

/// The four equal quarters of `s`.
fn quarters<T>(s: &mut [T]) -> [&mut [T]; 4] {
    let n = s.len() / 4;
    let (a, rest) = s.split_at_mut(n);
    let (b, rest) = rest.split_at_mut(n);
    let (c, d) = rest.split_at_mut(n);
    [a, b, c, d]
}

/// Points `(0, k)`, `(1, k)`, `(2, k)`, `(3, k)` of one row of a point buffer: the four slices a
/// transform writes for column `k` of its tiles.
fn column_of_points<'a, T>(rows: &'a mut [&mut [T]], k: usize) -> [&'a mut [T]; 4] {
    let mut column = rows.iter_mut().skip(k).step_by(4).map(|row| &mut **row);
    std::array::from_fn(|_| column.next().expect("16 points per tile"))
}

/// `N` slices of the given lengths from `scratch`, grown as needed; they hold whatever an
/// earlier use left.
fn carve<T: Real, const N: usize>(scratch: &mut Vec<T>, lens: [usize; N]) -> [&mut [T]; N] {
    let total = lens.iter().sum();
    if scratch.len() < total {
        scratch.resize(total, T::ZERO);
    }
    let mut rest = &mut scratch[..total];
    lens.map(|n| {
        let (slice, tail) = std::mem::take(&mut rest).split_at_mut(n);
        rest = tail;
        slice
    })
}

/// Writes a `[16, rows, len]` buffer of points (in parallel if asked) by `fill(r, slices)`,
/// which gets the 16 slices `[p, r, ..]` of row `r`.
fn fill_points<T: Real>(
    points: &mut [T],
    rows: usize,
    len: usize,
    parallel: bool,
    fill: impl Fn(&mut Vec<T>, usize, Vec<&mut [T]>) + Sync + Send,
) {
    if len == 0 {
        return;
    }
    let mut by_row: Vec<Vec<&mut [T]>> = (0..rows).map(|_| Vec::with_capacity(POINTS)).collect();
    for point in points.chunks_exact_mut(rows * len) {
        for (slices, row) in by_row.iter_mut().zip(point.chunks_exact_mut(len)) {
            slices.push(row);
        }
    }
    if parallel {
        by_row.into_par_iter().enumerate().for_each_init(Vec::new, |scratch, (r, slices)| fill(scratch, r, slices));
    } else {
        let mut scratch = Vec::new();
        by_row.into_iter().enumerate().for_each(|(r, slices)| fill(&mut scratch, r, slices));
    }
}

/// `f(scratch, i, chunk)` for every `chunk`-sized piece of `out`, in parallel if asked.
fn each_chunk<T: Real>(
    out: &mut [T],
    chunk: usize,
    parallel: bool,
    f: impl Fn(&mut Vec<T>, usize, &mut [T]) + Sync + Send,
) {
    if parallel {
        out.par_chunks_mut(chunk).enumerate().for_each_init(Vec::new, |scratch, (i, c)| f(scratch, i, c));
    } else {
        let mut scratch = Vec::new();
        out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(&mut scratch, i, c));
    }
}

/// The 16 point-wise products `a[p] · b[p]` of `[16, m, k]` and `[16, k, n]` operands (each
/// stored transposed where its flag says so), written to `out [16, m, n]` or, with
/// `accumulate`, added to it: single-threaded GEMMs, one point per job when `parallel`.
#[allow(clippy::too_many_arguments)]
fn point_products<T: Real>(
    a: &[T],
    b: &[T],
    out: &mut [T],
    (m, n, k): (usize, usize, usize),
    (a_t, b_t): (bool, bool),
    accumulate: bool,
    parallel: bool,
) {
    let (a_len, b_len) = (m * k, k * n);
    each_chunk(out, m * n, parallel, |_, p, dst| {
        let (a, b) = (&a[p * a_len..(p + 1) * a_len], &b[p * b_len..(p + 1) * b_len]);
        matmul_into(dst, (m, n, k), (a, a_t), (b, b_t), accumulate)
    });
}

/// Columns (tile slots) a group's GEMMs span at least; fewer make them too thin.
const MIN_GROUP_TILES: usize = 48;

/// Runs `f(scratch, first, count, out_chunk, parallel)` over a batch whose output `out` holds
/// `per_sample` elements per sample: groups of `size` samples, each on one thread
/// (single-threaded, its buffers staying in that core's cache), then the samples left over
/// together, multithreaded.
fn by_group<T: Real>(
    out: &mut [T],
    per_sample: usize,
    size: usize,
    f: impl Fn(&mut Vec<T>, usize, usize, &mut [T], bool) + Sync + Send,
) {
    let b = out.len() / per_sample.max(1);
    let groups = Groups::plan(b, size);
    let grouped = groups.map_or(0, |g| g.samples);
    let (head, rest) = out.split_at_mut(grouped * per_sample);
    if let Some(g) = groups {
        head.par_chunks_mut(g.size * per_sample)
            .enumerate()
            .with_min_len(g.per_thread())
            .for_each_init(Vec::new, |scratch, (i, chunk)| f(scratch, i * g.size, g.size, chunk, false));
    }
    if grouped < b {
        f(&mut Vec::new(), grouped, b - grouped, rest, true);
    }
}
