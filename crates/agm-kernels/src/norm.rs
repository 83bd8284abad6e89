//! Layer norm and softmax over the last dimension that keep the autograd graph.
//!
//! candle 0.11's fused `layer_norm` and `softmax_last_dim` are built with `apply_op*_no_bwd`:
//! backward silently returns no gradient through them.

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::backward::param_grad;
use crate::cpu::{check_real, check_same_dtype, collect_chunks, dispatch_real, same_storage_dtype, slice, Real};
use crate::own_kernels;

/// `(x − mean) / sqrt(var + eps) · gamma + beta` over the last dimension (biased variance,
/// PyTorch's `nn.LayerNorm`). `gamma` and `beta` have the size of the last dimension.
///
/// On the CPU and CUDA (f32, f64) a fused custom op whose backward (one fused pass on the CPU,
/// a row pass and a column pass on CUDA) gives the gradients of `x`, `gamma` and `beta`; elsewhere
/// [`layer_norm_ref`].
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let d = match x.dims().last() {
        Some(&d) if d > 0 => d,
        _ => candle_core::bail!("layer_norm: input {:?} needs a non-empty last dimension", x.dims()),
    };
    for (name, t) in [("gamma", gamma), ("beta", beta)] {
        if t.elem_count() != d || t.dims().last() != Some(&d) {
            candle_core::bail!("layer_norm: {name} {:?} must have the size of the last dimension {d}", t.dims());
        }
    }
    if !(eps >= 0.0 && eps.is_finite()) {
        candle_core::bail!("layer_norm: eps must be finite and non-negative, got {eps}");
    }
    if !own_kernels(x.device()) {
        return layer_norm_ref(x, gamma, beta, eps);
    }
    check_real(x, "layer_norm")?;
    check_same_dtype(&[x, gamma, beta], "layer_norm")?;
    x.contiguous()?.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, LayerNorm { eps })
}

/// Reference from plain differentiable ops.
pub fn layer_norm_ref(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(gamma)?.broadcast_add(beta)
}

/// Softmax over the last dimension.
///
/// On the CPU and CUDA (f32, f64) a fused custom op with backward `y · (g − Σ g·y)`; elsewhere
/// [`softmax_ref`].
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    match x.dims().last() {
        Some(&d) if d > 0 => {}
        _ => candle_core::bail!("softmax_last_dim: input {:?} needs a non-empty last dimension", x.dims()),
    }
    if !own_kernels(x.device()) {
        return softmax_ref(x);
    }
    check_real(x, "softmax_last_dim")?;
    x.contiguous()?.apply_op1(Softmax)
}

/// Reference from plain differentiable ops (max-subtracted for stability).
pub fn softmax_ref(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Length of the last dimension of a layout (its row length).
fn row_len(layout: &Layout, op: &str) -> Result<usize> {
    match layout.dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => candle_core::bail!("{op}: input {:?} needs a non-empty last dimension", layout.dims()),
    }
}

/// Mean and `1 / sqrt(var + eps)` of one row (two passes, biased variance).
#[inline]
fn moments<T: Real>(row: &[T], eps: T) -> (T, T) {
    let n = T::from_f64(row.len() as f64);
    let mean = row.iter().fold(T::ZERO, |a, &v| a + v) / n;
    let var = row.iter().fold(T::ZERO, |a, &v| a + (v - mean) * (v - mean)) / n;
    (mean, T::from_f64(1.0) / (var + eps).sqrt())
}

/// `(x, gamma, beta)` to the normalised, scaled and shifted `x`.
struct LayerNorm {
    eps: f64,
}

impl LayerNorm {
    /// The row length of `x` (`l1`), checked against `gamma` (`l2`) and `beta` (`l3`), on every
    /// backend.
    fn checked_row_len(&self, l1: &Layout, l2: &Layout, l3: &Layout) -> Result<usize> {
        let d = row_len(l1, self.name())?;
        if l2.shape().elem_count() != d || l3.shape().elem_count() != d {
            candle_core::bail!("{}: gamma and beta need {d} elements", self.name());
        }
        Ok(d)
    }
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "agm-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = self.checked_row_len(l1, l2, l3)?;
        same_storage_dtype(s1, s2, self.name())?;
        same_storage_dtype(s1, s3, self.name())?;
        dispatch_real!(s1, self.name(), T => {
            let x = slice::<T>(s1, l1, self.name())?;
            let gamma = slice::<T>(s2, l2, self.name())?;
            let beta = slice::<T>(s3, l3, self.name())?;
            let eps = T::from_f64(self.eps);
            let out = collect_chunks(x.len(), d, d, |i, dst| {
                let row = &x[i * d..(i + 1) * d];
                let (mean, rstd) = moments(row, eps);
                for (((y, &v), &g), &b) in dst.iter_mut().zip(row).zip(gamma).zip(beta) {
                    *y = (v - mean) * rstd * g + b;
                }
            });
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let d = self.checked_row_len(l1, l2, l3)?;
        dispatch_real!(s1, self.name(), T => gpu::layer_norm::<T>((s1, l1), (s2, l2), (s3, l3), d, self.eps, self.name()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = gamma.elem_count();
        let rows = x.elem_count() / d;
        let packed = x.apply_op3_no_bwd(gamma, &grad_res.contiguous()?, &LayerNormBwd { eps: self.eps })?;
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        // Copies, so that stored parameter gradients do not hold `packed` (and `dx`) alive.
        let dgamma = param_grad(gamma, packed.narrow(0, rows, 1)?.reshape(gamma.shape())?.force_contiguous()?)?;
        let dbeta = param_grad(beta, packed.narrow(0, rows + 1, 1)?.reshape(beta.shape())?.force_contiguous()?)?;
        Ok((Some(dx), dgamma, dbeta))
    }
}

/// Gradient of [`LayerNorm`]: `(x, gamma, grad_out)` to one `[rows + 2, D]` tensor holding `dx`
/// row by row, then `dgamma`, then `dbeta`, so that one pass over the data yields all three.
struct LayerNormBwd {
    eps: f64,
}

/// Elements (rounded to whole rows) per parallel block of the layer-norm backward. Fixed, so that
/// the order in which the per-block `dgamma` and `dbeta` partial sums are added, and thus the
/// result, does not depend on the thread count.
const LN_BLOCK_ELEMS: usize = 1 << 13;

impl LayerNormBwd {
    /// The row length of `x` (`l1`), checked against `gamma` (`l2`) and the gradient (`l3`), on
    /// every backend.
    fn checked_row_len(&self, l1: &Layout, l2: &Layout, l3: &Layout) -> Result<usize> {
        let d = row_len(l1, self.name())?;
        if l2.shape().elem_count() != d || l3.shape() != l1.shape() {
            candle_core::bail!("{}: shapes {:?}, {:?}, {:?} disagree", self.name(), l1.dims(), l2.dims(), l3.dims());
        }
        Ok(d)
    }
}

impl CustomOp3 for LayerNormBwd {
    fn name(&self) -> &'static str {
        "agm-layer-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = self.checked_row_len(l1, l2, l3)?;
        same_storage_dtype(s1, s2, self.name())?;
        same_storage_dtype(s1, s3, self.name())?;
        dispatch_real!(s1, self.name(), T => {
            let x = slice::<T>(s1, l1, self.name())?;
            let gamma = slice::<T>(s2, l2, self.name())?;
            let grad = slice::<T>(s3, l3, self.name())?;
            let out = layer_norm_bwd(x, gamma, grad, T::from_f64(self.eps));
            Ok((T::to_cpu_storage_owned(out), Shape::from((x.len() / d + 2, d))))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let d = self.checked_row_len(l1, l2, l3)?;
        dispatch_real!(s1, self.name(), T => gpu::layer_norm_bwd::<T>((s1, l1), (s2, l2), (s3, l3), d, self.eps, self.name()))
    }
}

/// Softmax over the last dimension (max-subtracted).
struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "agm-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = row_len(layout, self.name())?;
        dispatch_real!(storage, self.name(), T => {
            let x = slice::<T>(storage, layout, self.name())?;
            let out = collect_chunks(x.len(), d, d, |i, dst| {
                let row = &x[i * d..(i + 1) * d];
                let max = row.iter().fold(T::NEG_INF, |m, &v| if v > m { v } else { m });
                let mut sum = T::ZERO;
                for (y, &v) in dst.iter_mut().zip(row) {
                    *y = (v - max).exp();
                    sum += *y;
                }
                let inv = T::from_f64(1.0) / sum;
                dst.iter_mut().for_each(|y| *y *= inv);
            });
            Ok((T::to_cpu_storage_owned(out), layout.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let d = row_len(layout, self.name())?;
        dispatch_real!(storage, self.name(), T => gpu::softmax::<T>("softmax_fwd", &[(storage, layout)], d, self.name()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.detach().apply_op2_no_bwd(&grad_res.contiguous()?, &SoftmaxBwd)?))
    }
}

/// Gradient of [`Softmax`]: `(y, g)` to `y · (g − Σ g·y)` row by row.
struct SoftmaxBwd;

impl SoftmaxBwd {
    /// The row length of the softmax (`l1`), checked against the gradient (`l2`), on every
    /// backend.
    fn checked_row_len(&self, l1: &Layout, l2: &Layout) -> Result<usize> {
        let d = row_len(l1, self.name())?;
        if l1.shape() != l2.shape() {
            candle_core::bail!("{}: shapes {:?} and {:?} differ", self.name(), l1.dims(), l2.dims());
        }
        Ok(d)
    }
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "agm-softmax-last-dim-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = self.checked_row_len(l1, l2)?;
        same_storage_dtype(s1, s2, self.name())?;
        dispatch_real!(s1, self.name(), T => {
            let y = slice::<T>(s1, l1, self.name())?;
            let grad = slice::<T>(s2, l2, self.name())?;
            let dx = collect_chunks(y.len(), d, d, |i, dst| {
                let (yr, gr) = (&y[i * d..(i + 1) * d], &grad[i * d..(i + 1) * d]);
                let dot = yr.iter().zip(gr).fold(T::ZERO, |a, (&y, &g)| a + y * g);
                for ((o, &y), &g) in dst.iter_mut().zip(yr).zip(gr) {
                    *o = y * (g - dot);
                }
            });
            Ok((T::to_cpu_storage_owned(dx), l1.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        let d = self.checked_row_len(l1, l2)?;
        dispatch_real!(s1, self.name(), T => gpu::softmax::<T>("softmax_bwd", &[(s1, l1), (s2, l2)], d, self.name()))
    }
}

/// The packed `[dx rows; dgamma; dbeta]` of [`LayerNormBwd`] for rows of `gamma.len()`.
fn layer_norm_bwd<T: Real>(x: &[T], gamma: &[T], grad: &[T], eps: T) -> Vec<T> {
    let d = gamma.len();
    let rows = x.len() / d;
    let inv_d = T::from_f64(1.0 / d as f64);
    let mut out = vec![T::ZERO; (rows + 2) * d];
    let (dx, dparams) = out.split_at_mut(rows * d);
    let block = (LN_BLOCK_ELEMS / d).max(1) * d;
    // dx for one block of rows; returns that block's [dgamma, dbeta] partial sums.
    let run = |bi: usize, dxb: &mut [T]| {
        let mut part = vec![T::ZERO; 2 * d];
        let (pg, pb) = part.split_at_mut(d);
        for (r, dxr) in dxb.chunks_exact_mut(d).enumerate() {
            let at = bi * block + r * d;
            let (xr, gr) = (&x[at..at + d], &grad[at..at + d]);
            let (mean, rstd) = moments(xr, eps);
            // a = mean(g·gamma), b = mean(g·gamma·xhat).
            let (mut a, mut b) = (T::ZERO, T::ZERO);
            let params = pg.iter_mut().zip(pb.iter_mut());
            for (((&v, &g), &w), (pg, pb)) in xr.iter().zip(gr).zip(gamma).zip(params) {
                let xhat = (v - mean) * rstd;
                a += g * w;
                b += g * w * xhat;
                *pg += g * xhat;
                *pb += g;
            }
            let (a, b) = (a * inv_d, b * inv_d);
            for (((o, &v), &g), &w) in dxr.iter_mut().zip(xr).zip(gr).zip(gamma) {
                let xhat = (v - mean) * rstd;
                *o = rstd * (g * w - a - xhat * b);
            }
        }
        part
    };
    let parts: Vec<Vec<T>> = if dx.len() <= block {
        vec![run(0, dx)]
    } else {
        dx.par_chunks_mut(block).enumerate().map(|(bi, dxb)| run(bi, dxb)).collect()
    };
    for part in &parts {
        for (o, &v) in dparams.iter_mut().zip(part) {
            *o += v;
        }
    }
    out
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, Layout, Result, Shape};

    use super::LN_BLOCK_ELEMS;
    use crate::cuda::{alloc, elementwise, per_row, storage, view, CudaReal, BLOCK, NORM};

    /// A storage and its layout, as candle hands them to `cuda_fwd`.
    type Input<'a> = (&'a CudaStorage, &'a Layout);

    /// Runs the row kernel `kernel(rows, d, inputs…, out)` of `cuda/norm.cu` (softmax forward or
    /// backward) on same-shaped contiguous inputs; the output has the first input's shape.
    pub(super) fn softmax<T: CudaReal>(
        kernel: &str,
        inputs: &[Input<'_>],
        d: usize,
        op: &str,
    ) -> Result<(CudaStorage, Shape)> {
        let (first, layout) = inputs[0];
        let dev = first.device();
        let n = layout.shape().elem_count();
        let rows = n / d;
        let views = inputs.iter().map(|(s, l)| view::<T>(s, l, op)).collect::<Result<Vec<_>>>()?;
        let mut out = alloc::<T>(dev, n)?;
        let func = NORM.func::<T>(dev, kernel)?;
        let mut launch = func.builder();
        launch.arg(&rows).arg(&d);
        for v in &views {
            launch.arg(v);
        }
        launch.arg(&mut out);
        // SAFETY: block `r` < rows reads row `r` (d elements) of each input and writes it in `out`.
        unsafe { launch.launch(per_row(rows)) }.w()?;
        Ok((storage(out, dev), layout.shape().clone()))
    }

    /// The layer-norm forward pass: one block per row of `x`.
    pub(super) fn layer_norm<T: CudaReal>(
        x: Input<'_>,
        gamma: Input<'_>,
        beta: Input<'_>,
        d: usize,
        eps: f64,
        op: &str,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = x.0.device();
        let n = x.1.shape().elem_count();
        let rows = n / d;
        let (xv, gv, bv) = (view::<T>(x.0, x.1, op)?, view::<T>(gamma.0, gamma.1, op)?, view::<T>(beta.0, beta.1, op)?);
        let eps = T::from_f64(eps);
        let mut out = alloc::<T>(dev, n)?;
        let func = NORM.func::<T>(dev, "layer_norm_fwd")?;
        let mut launch = func.builder();
        launch.arg(&rows).arg(&d).arg(&eps).arg(&xv).arg(&gv).arg(&bv).arg(&mut out);
        // SAFETY: block `r` < rows reads row `r` of `x`, all d of gamma and beta, writes row `r`.
        unsafe { launch.launch(per_row(rows)) }.w()?;
        Ok((storage(out, dev), x.1.shape().clone()))
    }

    /// The packed `[dx rows; dgamma; dbeta]` of the layer-norm backward pass, `[rows + 2, d]`:
    /// `dx` one block per row (which also keeps each row's mean and rstd), then per column the
    /// `dgamma` and `dbeta` sums over the CPU's blocks of rows, then those partial sums in order.
    pub(super) fn layer_norm_bwd<T: CudaReal>(
        x: Input<'_>,
        gamma: Input<'_>,
        grad: Input<'_>,
        d: usize,
        eps: f64,
        op: &str,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = x.0.device();
        let rows = x.1.shape().elem_count() / d;
        let (xv, gv, dv) = (view::<T>(x.0, x.1, op)?, view::<T>(gamma.0, gamma.1, op)?, view::<T>(grad.0, grad.1, op)?);
        let eps = T::from_f64(eps);
        let mut out = alloc::<T>(dev, (rows + 2) * d)?;
        // At least one pair, so that no allocation is empty.
        let mut stats = alloc::<T>(dev, 2 * rows.max(1))?;

        let func = NORM.func::<T>(dev, "layer_norm_bwd_rows")?;
        let mut launch = func.builder();
        launch.arg(&rows).arg(&d).arg(&eps).arg(&xv).arg(&gv).arg(&dv).arg(&mut out).arg(&mut stats);
        // SAFETY: block `r` < rows reads row `r` of `x` and `grad` and all of gamma, writes row `r`
        // of `out` (whose first rows · d elements are dx) and stats[2r], stats[2r + 1].
        unsafe { launch.launch(per_row(rows)) }.w()?;

        // The CPU's blocks of rows, so that the partial sums meet in the CPU's order.
        let rows_per_chunk = (LN_BLOCK_ELEMS / d).max(1);
        let chunks = rows.div_ceil(rows_per_chunk).max(1);
        let mut partial = alloc::<T>(dev, chunks * 2 * d)?;
        let func = NORM.func::<T>(dev, "layer_norm_bwd_params_partial")?;
        let mut launch = func.builder();
        launch.arg(&rows).arg(&d).arg(&rows_per_chunk).arg(&chunks).arg(&xv).arg(&dv).arg(&stats).arg(&mut partial);
        let cfg = LaunchConfig {
            // Column blocks in x; chunks in y, capped at CUDA's limit (the kernel strides over the rest).
            grid_dim: (d.div_ceil(BLOCK as usize) as u32, chunks.min(65_535) as u32, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: thread (j < d, chunk c) reads column j of its chunk's rows of `x`, `grad` and
        // their stats, and writes partial[c·2d + j] and partial[c·2d + d + j]; with rows = 0 the
        // one chunk is empty and its sums are zeros, so all chunks · 2d elements get written.
        unsafe { launch.launch(cfg) }.w()?;

        let func = NORM.func::<T>(dev, "layer_norm_bwd_params_sum")?;
        let mut launch = func.builder();
        launch.arg(&rows).arg(&d).arg(&chunks).arg(&partial).arg(&mut out);
        // SAFETY: reads chunks · 2d elements of `partial`, writes the last 2d elements of `out`.
        unsafe { launch.launch(elementwise(2 * d)) }.w()?;
        Ok((storage(out, dev), Shape::from((rows + 2, d))))
    }
}
