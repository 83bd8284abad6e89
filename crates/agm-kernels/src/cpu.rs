//! Plumbing shared by the CPU kernels: the float types they run on, views of contiguous storage,
//! strided access with one bounds check per run, and a parallel loop over output chunks that
//! stays serial when the work is too small to split.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Result, Tensor, WithDType};
use rayon::prelude::*;

/// The element types the kernels support: f32 and f64.
pub(crate) trait Real: WithDType {
    const ZERO: Self;
    const ONE: Self;
    const NEG_INF: Self;
    fn sqrt(self) -> Self;
    fn is_nan(self) -> bool;
    /// The elements of `storage` when it holds this type, for in-place ops.
    fn storage_mut(storage: &mut CpuStorage) -> Option<&mut [Self]>;
}

macro_rules! real {
    ($t:ty, $variant:ident) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INF: Self = <$t>::NEG_INFINITY;
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            fn storage_mut(storage: &mut CpuStorage) -> Option<&mut [Self]> {
                match storage {
                    CpuStorage::$variant(data) => Some(data),
                    _ => None,
                }
            }
        }
    };
}
real!(f32, F32);
real!(f64, F64);

/// Fails with a clear message unless `t` is f32 or f64.
pub(crate) fn check_real(t: &Tensor, op: &str) -> Result<()> {
    match t.dtype() {
        DType::F32 | DType::F64 => Ok(()),
        d => candle_core::bail!("{op}: only f32 and f64 are supported, got {d:?}"),
    }
}

/// Fails unless every tensor has the dtype of the first.
pub(crate) fn check_same_dtype(ts: &[&Tensor], op: &str) -> Result<()> {
    let d = ts[0].dtype();
    if let Some(t) = ts.iter().find(|t| t.dtype() != d) {
        candle_core::bail!("{op}: dtypes differ ({d:?} and {:?})", t.dtype());
    }
    Ok(())
}

/// The elements of a contiguous `storage` of type `T`, writable, for in-place ops; `len` is the
/// number the op expects.
pub(crate) fn slice_mut<'a, T: Real>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
    len: usize,
    op: &str,
) -> Result<&'a mut [T]> {
    let Some(data) = T::storage_mut(storage) else { candle_core::bail!("{op}: operands have different dtypes") };
    match layout.contiguous_offsets() {
        Some((start, end)) if end - start == len => Ok(&mut data[start..end]),
        _ => candle_core::bail!("{op}: the updated tensor must be contiguous with {len} elements"),
    }
}

/// The elements of a contiguous `storage` of type `T`.
pub(crate) fn slice<'a, T: Real>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [T]> {
    let data = storage.as_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: the kernel needs a contiguous input"),
    }
}

/// Runs `$body` with `$t` bound to the Rust type of `$storage`'s dtype (f32 or f64).
macro_rules! dispatch_real {
    ($storage:expr, $op:expr, $t:ident => $body:expr) => {{
        #[allow(unused_imports)]
        use candle_core::{backend::BackendStorage as _, WithDType as _};
        match $storage.dtype() {
            candle_core::DType::F32 => {
                type $t = f32;
                $body
            }
            candle_core::DType::F64 => {
                type $t = f64;
                $body
            }
            d => candle_core::bail!("{}: only f32 and f64 are supported, got {d:?}", $op),
        }
    }};
}
pub(crate) use dispatch_real;

/// Fails unless `b` has the dtype of `a` (the kernels take all operands in one dtype), on any
/// backend.
pub(crate) fn same_storage_dtype<S: BackendStorage>(a: &S, b: &S, op: &str) -> Result<()> {
    if a.dtype() != b.dtype() {
        candle_core::bail!("{op}: dtypes differ ({:?} and {:?})", a.dtype(), b.dtype());
    }
    Ok(())
}

/// Below this many inner-loop steps a job runs on the calling thread: rayon's hand-off costs
/// more than it saves.
const PAR_MIN_WORK: usize = 1 << 15;

/// Calls `f(i, chunk)` for the `i`-th `chunk`-sized piece of `out`, in parallel when the whole job
/// (`work_per_chunk` steps per piece) is big enough.
pub(crate) fn for_each_chunk<T, F>(out: &mut [T], chunk: usize, work_per_chunk: usize, f: F)
where
    T: Send,
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    if chunk == 0 || out.is_empty() {
        return;
    }
    let pieces = out.len().div_ceil(chunk);
    if pieces <= 1 || pieces.saturating_mul(work_per_chunk) < PAR_MIN_WORK {
        out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        let min_len = (PAR_MIN_WORK / 4 / work_per_chunk.max(1)).max(1);
        out.par_chunks_mut(chunk).enumerate().with_min_len(min_len).for_each(|(i, c)| f(i, c));
    }
}

/// A new vector of `len` elements, zeros that `f` then writes chunk by chunk as in
/// [`for_each_chunk`]. Each job zeroes its own chunk, in cache and in parallel: a `vec![0; len]`
/// first would zero the whole vector on one thread while the others wait.
pub(crate) fn collect_chunks<T, F>(len: usize, chunk: usize, work_per_chunk: usize, f: F) -> Vec<T>
where
    T: Real,
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    collect_chunks_reserving(len, 0, chunk, work_per_chunk, f)
}

/// [`collect_chunks`] with room for `extra` more elements, which the caller appends without
/// a reallocation (that would copy the vector, and could double its capacity).
pub(crate) fn collect_chunks_reserving<T, F>(
    len: usize,
    extra: usize,
    chunk: usize,
    work_per_chunk: usize,
    f: F,
) -> Vec<T>
where
    T: Real,
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    let mut out = Vec::with_capacity(len + extra);
    if chunk == 0 {
        out.resize(len, T::ZERO);
        return out;
    }
    for_each_chunk(&mut out.spare_capacity_mut()[..len], chunk, work_per_chunk, |i, dst| {
        dst.fill(std::mem::MaybeUninit::new(T::ZERO));
        // SAFETY: every element of `dst` was initialised just above.
        f(i, unsafe { &mut *(dst as *mut [std::mem::MaybeUninit<T>] as *mut [T]) })
    });
    // SAFETY: `for_each_chunk` hands out every chunk of the `len` elements, and each was filled.
    unsafe { out.set_len(len) };
    out
}

/// Elements per parallel job of [`map_into`]'s memory-bound loops.
const MAP_CHUNK: usize = 1 << 14;

/// A new vector of `n` elements filled in parallel chunks: `f(start, dst)` writes the elements
/// `start..start + dst.len()`.
pub(crate) fn map_into<T: Real>(n: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) -> Vec<T> {
    collect_chunks(n, MAP_CHUNK, MAP_CHUNK, |i, dst| f(i * MAP_CHUNK, dst))
}

/// [`for_each_chunk`] over two outputs at once: `f(i, a_chunk, b_chunk)` for the `i`-th
/// `chunk_a`-sized piece of `a` and `chunk_b`-sized piece of `b`.
pub(crate) fn for_each_chunk_pair<T, F>(a: &mut [T], chunk_a: usize, b: &mut [T], chunk_b: usize, work: usize, f: F)
where
    T: Send,
    F: Fn(usize, &mut [T], &mut [T]) + Sync + Send,
{
    if chunk_a == 0 || chunk_b == 0 || a.is_empty() {
        return;
    }
    let pieces = a.len().div_ceil(chunk_a);
    let pairs = a.chunks_mut(chunk_a).zip(b.chunks_mut(chunk_b));
    if pieces <= 1 || pieces.saturating_mul(work) < PAR_MIN_WORK {
        pairs.enumerate().for_each(|(i, (x, y))| f(i, x, y));
    } else {
        let min_len = (PAR_MIN_WORK / 4 / work.max(1)).max(1);
        a.par_chunks_mut(chunk_a)
            .zip(b.par_chunks_mut(chunk_b))
            .enumerate()
            .with_min_len(min_len)
            .for_each(|(i, (x, y))| f(i, x, y));
    }
}

/// The output positions `o` (of `n_out`) whose tap at offset `k` lands inside `0..n_in`, where the
/// input index is `o · stride + k − pad`: a half-open range, so the hot loops need no bounds tests.
#[inline]
pub(crate) fn valid_range(n_in: usize, n_out: usize, k: usize, stride: usize, pad: usize) -> (usize, usize) {
    let lo = if k >= pad { 0 } else { (pad - k).div_ceil(stride) };
    let hi = if n_in + pad <= k { 0 } else { (n_in + pad - k).div_ceil(stride) };
    let hi = hi.min(n_out);
    (lo.min(hi), hi)
}

/// `n` elements of `src` from `start` on, `step` apart, with one bounds check for all of them.
#[inline(always)]
pub(crate) fn strided<T: Copy>(src: &[T], start: usize, step: usize, n: usize) -> impl Iterator<Item = T> + '_ {
    assert!(n == 0 || start + (n - 1) * step < src.len(), "strided read out of bounds");
    // SAFETY: j < n, and the assert above bounds the largest index start + (n − 1)·step.
    (0..n).map(move |j| unsafe { *src.get_unchecked(start + j * step) })
}

/// Adds the first `n` of `values` to `dst[start]`, `dst[start + step]`, …, with one bounds check.
#[inline(always)]
pub(crate) fn add_strided<T: Real>(
    dst: &mut [T],
    start: usize,
    step: usize,
    n: usize,
    values: impl Iterator<Item = T>,
) {
    assert!(n == 0 || start + (n - 1) * step < dst.len(), "strided write out of bounds");
    for (j, v) in values.take(n).enumerate() {
        // SAFETY: j < n, and the assert above bounds the largest index start + (n − 1)·step.
        unsafe { *dst.get_unchecked_mut(start + j * step) += v };
    }
}

/// `lhs · rhs` as a new row-major `[m, n]`, with `lhs [m, k]` (stored `[k, m]` when `lhs_t`) and
/// `rhs [k, n]` (stored `[n, k]` when `rhs_t`): gemm's multithreaded kernels (AVX-512 where the
/// CPU has it) on plain slices, so an op can multiply without building candle tensors.
///
/// gemm splits the work over output blocks only, so a small output with a long inner dimension
/// (a weight gradient: `[O, K]` summed over every position of the batch) would run on one
/// thread; such products are split over the inner dimension instead and the parts added.
pub(crate) fn matmul<T: Real>(
    (m, n, k): (usize, usize, usize),
    lhs: &[T],
    lhs_t: bool,
    rhs: &[T],
    rhs_t: bool,
) -> Vec<T> {
    assert!(lhs.len() == m * k && rhs.len() == k * n, "matmul: slice sizes do not match");
    let threads = rayon::current_num_threads();
    if threads > 1 && k >= 2048 && m * n <= 16 * k {
        let parts = threads.min(k / 1024).max(1);
        let step = k.div_ceil(parts);
        let partials: Vec<Vec<T>> = (0..parts)
            .into_par_iter()
            .map(|i| {
                let (lo, hi) = (i * step, ((i + 1) * step).min(k));
                let len = hi - lo;
                // Column block lo..hi of lhs [m, k] and row block lo..hi of rhs [k, n].
                let l = Operand::of(lhs, m, k, lhs_t).cols_from(lo);
                let r = Operand::of(rhs, k, n, rhs_t).rows_from(lo);
                gemm_new((m, n, len), l, r, false)
            })
            .collect();
        return partials.into_iter().reduce(add_into).expect("at least one part");
    }
    gemm_new((m, n, k), Operand::of(lhs, m, k, lhs_t), Operand::of(rhs, k, n, rhs_t), threads > 1)
}

/// How a batch is split for per-thread work: the first `samples` samples in groups of `size`,
/// the same number of groups for every thread; the samples after them run apart (together, on
/// all threads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Groups {
    pub size: usize,
    pub samples: usize,
}

impl Groups {
    /// The groups of `size` samples in a batch of `b`, `None` when it has fewer than one
    /// group per thread.
    pub(crate) fn plan(b: usize, size: usize) -> Option<Self> {
        let per_round = rayon::current_num_threads() * size.max(1);
        let samples = b / per_round * per_round;
        (samples > 0).then_some(Self { size: size.max(1), samples })
    }

    /// How many groups there are.
    pub(crate) fn count(&self) -> usize {
        self.samples / self.size
    }

    /// rayon's minimum job length over the groups that keeps each thread's groups on it (rayon
    /// splits a range in halves down to this length).
    pub(crate) fn per_thread(&self) -> usize {
        (self.count() / rayon::current_num_threads()).max(1)
    }
}

/// `a + b`, elementwise, in `a`.
pub(crate) fn add_into<T: Real>(mut a: Vec<T>, b: Vec<T>) -> Vec<T> {
    a.iter_mut().zip(&b).for_each(|(a, b)| *a += *b);
    a
}

/// The transpose `[cols, rows]` of a row-major `[rows, cols]`, tile by tile so that reads and
/// writes both stay in cache.
pub(crate) fn transpose<T: Real>(src: &[T], rows: usize, cols: usize) -> Vec<T> {
    const TILE: usize = 32;
    assert_eq!(src.len(), rows * cols, "transpose: slice size does not match");
    // One job per band of TILE output rows (TILE input columns).
    collect_chunks(rows * cols, TILE * rows, TILE * rows, |band, dst| {
        let c0 = band * TILE;
        let width = dst.len() / rows.max(1);
        for r0 in (0..rows).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                let row = &src[r * cols + c0..r * cols + c0 + width];
                for (j, &v) in row.iter().enumerate() {
                    dst[j * rows + r] = v;
                }
            }
        }
    })
}

/// A strided matrix inside a slice: element `(i, j)` at `offset + i·rs + j·cs`.
#[derive(Clone, Copy)]
struct Operand<'a, T> {
    data: &'a [T],
    offset: usize,
    rs: usize,
    cs: usize,
}

impl<'a, T> Operand<'a, T> {
    /// The `[rows, cols]` matrix of `data`, row-major, or stored `[cols, rows]` when `transposed`.
    fn of(data: &'a [T], rows: usize, cols: usize, transposed: bool) -> Self {
        if transposed {
            Self { data, offset: 0, rs: 1, cs: rows }
        } else {
            Self { data, offset: 0, rs: cols, cs: 1 }
        }
    }

    /// The view from column `start` on.
    fn cols_from(self, start: usize) -> Self {
        Self { offset: self.offset + start * self.cs, ..self }
    }

    /// The view from row `start` on.
    fn rows_from(self, start: usize) -> Self {
        Self { offset: self.offset + start * self.rs, ..self }
    }

    /// Fails unless every index of an `[rows, cols]` view lies inside the slice.
    fn check(&self, rows: usize, cols: usize) {
        if rows > 0 && cols > 0 {
            let last = self.offset + (rows - 1) * self.rs + (cols - 1) * self.cs;
            assert!(last < self.data.len(), "matmul: operand view out of bounds");
        }
    }
}

/// `lhs [m, k] · rhs [k, n]` into a new row-major vector, written by gemm without zero-filling.
fn gemm_new<T: Real>(
    (m, n, k): (usize, usize, usize),
    lhs: Operand<'_, T>,
    rhs: Operand<'_, T>,
    parallel: bool,
) -> Vec<T> {
    if m == 0 || n == 0 || k == 0 {
        return vec![T::ZERO; m * n];
    }
    let mut out: Vec<T> = Vec::with_capacity(m * n);
    // SAFETY: the destination has capacity m·n and gemm writes every element of it without
    // reading (`accumulate` false), so `set_len` exposes initialised values only.
    unsafe {
        gemm_raw((m, n, k), out.as_mut_ptr(), lhs, rhs, false, parallel);
        out.set_len(m * n);
    }
    out
}

/// `dst [m, n] (+)= lhs [m, k] · rhs [k, n]` on the calling thread, for ops that split their
/// work themselves: `dst` row-major, the operands stored as in [`matmul`]; `accumulate` adds
/// the product to what `dst` holds instead of overwriting it.
pub(crate) fn matmul_into<T: Real>(
    dst: &mut [T],
    (m, n, k): (usize, usize, usize),
    (lhs, lhs_t): (&[T], bool),
    (rhs, rhs_t): (&[T], bool),
    accumulate: bool,
) {
    assert!(dst.len() == m * n && lhs.len() == m * k && rhs.len() == k * n, "matmul_into: slice sizes do not match");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(T::ZERO);
        }
        return;
    }
    // SAFETY: `dst` holds m·n initialised elements, which gemm may read and writes in full.
    unsafe {
        gemm_raw(
            (m, n, k),
            dst.as_mut_ptr(),
            Operand::of(lhs, m, k, lhs_t),
            Operand::of(rhs, k, n, rhs_t),
            accumulate,
            false,
        )
    }
}

/// gemm's `dst = (dst +) lhs · rhs` for a row-major `dst [m, n]` at `dst` (m, n, k > 0).
///
/// # Safety
/// `dst` must be valid for m·n writes, and for reads too when `accumulate`.
unsafe fn gemm_raw<T: Real>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    lhs: Operand<'_, T>,
    rhs: Operand<'_, T>,
    accumulate: bool,
    parallel: bool,
) {
    lhs.check(m, k);
    rhs.check(k, n);
    let parallelism =
        if parallel { gemm::Parallelism::Rayon(rayon::current_num_threads()) } else { gemm::Parallelism::None };
    // SAFETY: `check` bounds every index the strides reach in both operands; the caller vouches
    // for `dst`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr().add(lhs.offset),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr().add(rhs.offset),
            rhs.cs as isize,
            rhs.rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::matmul;

    fn naive(m: usize, n: usize, k: usize, a: &[f64], at: bool, b: &[f64], bt: bool) -> Vec<f64> {
        let at_ = |i: usize, p: usize| if at { a[p * m + i] } else { a[i * k + p] };
        let bt_ = |p: usize, j: usize| if bt { b[j * k + p] } else { b[p * n + j] };
        (0..m * n).map(|ij| (0..k).map(|p| at_(ij / n, p) * bt_(p, ij % n)).sum()).collect()
    }

    #[test]
    fn transpose_moves_every_element_across_tiles() {
        for (rows, cols) in [(1, 1), (3, 70), (37, 33), (64, 32)] {
            let src: Vec<f64> = (0..rows * cols).map(|i| i as f64).collect();
            let t = super::transpose(&src, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(t[c * rows + r], src[r * cols + c], "({r}, {c}) of {rows}×{cols}");
                }
            }
        }
    }

    #[test]
    fn matmul_matches_naive_with_and_without_the_inner_split() {
        // (3, 5, 7) runs as one gemm; (4, 6, 5000) is split over the inner dimension.
        for (m, n, k) in [(3, 5, 7), (4, 6, 5000), (2, 3, 0)] {
            let a: Vec<f64> = (0..m * k).map(|i| ((i * 7 + 3) % 11) as f64 - 5.0).collect();
            let b: Vec<f64> = (0..k * n).map(|i| ((i * 5 + 1) % 13) as f64 - 6.0).collect();
            for (at, bt) in [(false, false), (true, false), (false, true), (true, true)] {
                let got = rayon::ThreadPoolBuilder::new()
                    .num_threads(2)
                    .build()
                    .unwrap()
                    .install(|| matmul((m, n, k), &a, at, &b, bt));
                assert_eq!(got, naive(m, n, k, &a, at, &b, bt), "({m}, {n}, {k}) transposed {at} {bt}");
            }
        }
    }
}
