//! Whole-tensor reductions accumulated in f64 that methods take of gradients every step: the
//! Gram matrix of a few tensors (MMPareto's cosines and norms) and the unbiased standard
//! deviation (OGM-GE's noise scale).
//!
//! On the CPU (f32, f64) each is one parallel pass per input without a converted copy, and
//! deterministic: fixed chunks, eight accumulators per chunk, the chunks' partials added in
//! order, whatever the thread count. Elsewhere they are candle ops in f64 (f32 on Metal).

use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

use crate::cpu::{dispatch_real, slice, Real};

/// Elements per parallel job.
const CHUNK: usize = 1 << 15;
/// Independent accumulators per job, so the sums vectorise.
const LANES: usize = 8;

/// `Σ f(a[i], b[i])` in f64 with [`LANES`] accumulators (element `i` into lane `i mod LANES`),
/// then the lanes in order.
#[inline(always)]
fn lane_sum<T: Real>(a: &[T], b: &[T], f: impl Fn(T, T) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += f(x[l], y[l]);
        }
    }
    for (l, (&x, &y)) in ra.iter().zip(rb).enumerate() {
        acc[l] += f(x, y);
    }
    acc.iter().sum()
}

/// Sums `part(range)` (`k` values) over fixed chunks of `0..n`, in parallel, adding the
/// chunks' partials in order.
fn chunked_sums(n: usize, k: usize, part: impl Fn(std::ops::Range<usize>) -> Vec<f64> + Sync) -> Vec<f64> {
    let parts: Vec<Vec<f64>> =
        (0..n.div_ceil(CHUNK)).into_par_iter().map(|c| part(c * CHUNK..((c + 1) * CHUNK).min(n))).collect();
    parts.iter().fold(vec![0.0; k], |mut acc, part| {
        acc.iter_mut().zip(part).for_each(|(a, v)| *a += v);
        acc
    })
}

/// `Σ xs[p]·xs[q]` in f64 for each of `pairs`, over equal-length slices, in one pass (products
/// of f32 values are exact in f64).
fn pair_sums<T: Real>(xs: &[&[T]], pairs: &[(usize, usize)]) -> Vec<f64> {
    let n = xs.first().map_or(0, |x| x.len());
    chunked_sums(n, pairs.len(), |r| {
        pairs
            .iter()
            .map(|&(p, q)| lane_sum(&xs[p][r.clone()], &xs[q][r.clone()], |x, y| x.to_f64() * y.to_f64()))
            .collect()
    })
}

/// Whether `t` takes the CPU path: an f32 or f64 CPU tensor.
fn on_cpu(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// `Σ a·b` over every element (row-major), in f64. The tensors must have the same number of
/// elements and dtype.
pub fn dot(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.id() == b.id() {
        return crate::sum_squares(a);
    }
    Ok(products(&[a.clone(), b.clone()], &[(0, 1)], "dot")?[0])
}

/// The Gram matrix of `ts` (row-major, `k × k`): entry `(p, q)` is [`dot`] of tensors `p` and
/// `q`. On the CPU one pass reads every tensor once (each chunk's pairs while it is in cache).
pub fn gram(ts: &[Tensor]) -> Result<Vec<f64>> {
    let k = ts.len();
    let pairs: Vec<(usize, usize)> = (0..k).flat_map(|p| (p..k).map(move |q| (p, q))).collect();
    let mut out = vec![0.0; k * k];
    for (&(p, q), v) in pairs.iter().zip(products(ts, &pairs, "gram")?) {
        out[p * k + q] = v;
        out[q * k + p] = v;
    }
    Ok(out)
}

/// `Σ ts[p]·ts[q]` for each of `pairs`: on the CPU one pass over every tensor, elsewhere each
/// tensor converted once and every sum read back in one copy (one wait on CUDA).
pub(crate) fn products(ts: &[Tensor], pairs: &[(usize, usize)], op: &str) -> Result<Vec<f64>> {
    let Some(first) = ts.first() else { return Ok(Vec::new()) };
    if let Some(t) = ts.iter().find(|t| t.elem_count() != first.elem_count() || t.dtype() != first.dtype()) {
        candle_core::bail!("{op}: {:?} {:?} against {:?} {:?}", t.shape(), t.dtype(), first.shape(), first.dtype());
    }
    if ts.iter().all(on_cpu) {
        let ts = ts.iter().map(|t| t.contiguous()).collect::<Result<Vec<_>>>()?;
        let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
        let cpu: Vec<_> = guards
            .iter()
            .filter_map(|(s, l)| match &**s {
                candle_core::Storage::Cpu(s) => Some((s, *l)),
                _ => None,
            })
            .collect();
        if cpu.len() == ts.len() {
            return dispatch_real!(cpu[0].0, op, T => {
                let xs = cpu.iter().map(|(s, l)| slice::<T>(s, l, op)).collect::<Result<Vec<_>>>()?;
                Ok(pair_sums(&xs, pairs))
            });
        }
    }
    let acc = accumulation_dtype(first);
    let flat = ts.iter().map(|t| t.flatten_all()?.to_dtype(acc)).collect::<Result<Vec<_>>>()?;
    let sums = pairs.iter().map(|&(p, q)| (&flat[p] * &flat[q])?.sum_all()).collect::<Result<Vec<_>>>()?;
    Tensor::stack(&sums, 0)?.to_dtype(DType::F64)?.to_vec1::<f64>()
}

/// The unbiased standard deviation of every element (PyTorch's `Tensor.std()`), in f64, by two
/// passes (the mean, then the centred squares); 0 for fewer than two elements, where PyTorch
/// gives NaN.
pub fn std_unbiased(t: &Tensor) -> Result<f64> {
    let n = t.elem_count();
    if n < 2 {
        return Ok(0.0);
    }
    fn two_pass<T: Real>(x: &[T]) -> f64 {
        let sum = chunked_sums(x.len(), 1, |r| vec![lane_sum(&x[r.clone()], &x[r], |v, _| v.to_f64())])[0];
        let mean = sum / x.len() as f64;
        chunked_sums(x.len(), 1, |r| vec![lane_sum(&x[r.clone()], &x[r], |v, _| (v.to_f64() - mean).powi(2))])[0]
    }
    if on_cpu(t) {
        let t = t.contiguous()?;
        let (storage, layout) = t.storage_and_layout();
        if let candle_core::Storage::Cpu(storage) = &*storage {
            let centred =
                dispatch_real!(storage, "std_unbiased", T => two_pass(slice::<T>(storage, layout, "std_unbiased")?));
            return Ok((centred / (n - 1) as f64).sqrt());
        }
    }
    let x = t.flatten_all()?.to_dtype(accumulation_dtype(t))?;
    let mean = x.mean_all()?;
    let centred = x.broadcast_sub(&mean)?.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok((centred / (n - 1) as f64).sqrt())
}

/// f64, except on Metal, which has none.
fn accumulation_dtype(t: &Tensor) -> DType {
    if t.device().is_metal() {
        DType::F32
    } else {
        DType::F64
    }
}
