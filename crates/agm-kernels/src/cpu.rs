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
pub(crate) fn slice_mut<'a, T: Real>(storage: &'a mut CpuStorage, layout: &Layout, len: usize, op: &str) -> Result<&'a mut [T]> {
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
        use candle_core::backend::BackendStorage as _;
        use candle_core::WithDType as _;
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

/// Fails unless `b` has the dtype of `a` (the kernels take all operands in one dtype).
pub(crate) fn same_storage_dtype(a: &CpuStorage, b: &CpuStorage, op: &str) -> Result<()> {
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
    let pieces = out.len() / chunk;
    if pieces <= 1 || pieces.saturating_mul(work_per_chunk) < PAR_MIN_WORK {
        out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        let min_len = (PAR_MIN_WORK / 4 / work_per_chunk.max(1)).max(1);
        out.par_chunks_mut(chunk).enumerate().with_min_len(min_len).for_each(|(i, c)| f(i, c));
    }
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
    let pieces = a.len() / chunk_a;
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

/// `dst [m, n] = lhs · rhs`, row-major, with `lhs [m, k]` (stored `[k, m]` when `lhs_t`) and
/// `rhs [k, n]` (stored `[n, k]` when `rhs_t`): gemm's multithreaded kernels (AVX-512 where the
/// CPU has it) on plain slices, so an op can multiply without building candle tensors.
pub(crate) fn matmul<T: Real>(dst: &mut [T], (m, n, k): (usize, usize, usize), lhs: &[T], lhs_t: bool, rhs: &[T], rhs_t: bool) {
    assert!(dst.len() == m * n && lhs.len() == m * k && rhs.len() == k * n, "matmul: slice sizes do not match");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst.fill(T::ZERO);
        return;
    }
    let (lhs_rs, lhs_cs) = if lhs_t { (1, m as isize) } else { (k as isize, 1) };
    let (rhs_rs, rhs_cs) = if rhs_t { (1, k as isize) } else { (n as isize, 1) };
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the assert above bounds every index the strides reach: (m−1, k−1) in lhs,
    // (k−1, n−1) in rhs and (m−1, n−1) in dst.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.as_ptr(),
            rhs_cs,
            rhs_rs,
            T::ZERO,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        )
    }
}
