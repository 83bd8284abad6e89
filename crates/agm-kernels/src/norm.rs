//! Layer norm and softmax over the last dimension that keep the autograd graph.
//!
//! candle 0.11's fused `layer_norm` and `softmax_last_dim` are built with `apply_op*_no_bwd`:
//! backward silently returns no gradient through them.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::cpu::{check_real, check_same_dtype, dispatch_real, for_each_chunk, same_storage_dtype, slice, Real};

/// `(x − mean) / sqrt(var + eps) · gamma + beta` over the last dimension (biased variance,
/// PyTorch's `nn.LayerNorm`). `gamma` and `beta` have the size of the last dimension.
///
/// On the CPU a fused custom op whose backward (one fused pass) gives the gradients of `x`,
/// `gamma` and `beta`. f32 and f64 only. On other devices (the `cuda` feature) this calls
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
    if !x.device().is_cpu() {
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
/// On the CPU a fused custom op with backward `y · (g − Σ g·y)`. f32 and f64 only. On other
/// devices (the `cuda` feature) this calls [`softmax_ref`].
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    match x.dims().last() {
        Some(&d) if d > 0 => {}
        _ => candle_core::bail!("softmax_last_dim: input {:?} needs a non-empty last dimension", x.dims()),
    }
    if !x.device().is_cpu() {
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
        let d = row_len(l1, self.name())?;
        if l2.shape().elem_count() != d || l3.shape().elem_count() != d {
            candle_core::bail!("{}: gamma and beta need {d} elements", self.name());
        }
        same_storage_dtype(s1, s2, self.name())?;
        same_storage_dtype(s1, s3, self.name())?;
        dispatch_real!(s1, self.name(), T => {
            let x = slice::<T>(s1, l1, self.name())?;
            let gamma = slice::<T>(s2, l2, self.name())?;
            let beta = slice::<T>(s3, l3, self.name())?;
            let eps = T::from_f64(self.eps);
            let mut out = vec![T::ZERO; x.len()];
            for_each_chunk(&mut out, d, d, |i, dst| {
                let row = &x[i * d..(i + 1) * d];
                let (mean, rstd) = moments(row, eps);
                for (((y, &v), &g), &b) in dst.iter_mut().zip(row).zip(gamma).zip(beta) {
                    *y = (v - mean) * rstd * g + b;
                }
            });
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
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
        let dgamma = packed.narrow(0, rows, 1)?.reshape(gamma.shape())?;
        let dbeta = packed.narrow(0, rows + 1, 1)?.reshape(beta.shape())?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
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
        let d = row_len(l1, self.name())?;
        if l2.shape().elem_count() != d || l3.shape() != l1.shape() {
            candle_core::bail!("{}: shapes {:?}, {:?}, {:?} disagree", self.name(), l1.dims(), l2.dims(), l3.dims());
        }
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
            let mut out = vec![T::ZERO; x.len()];
            for_each_chunk(&mut out, d, d, |i, dst| {
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

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.detach().apply_op2_no_bwd(&grad_res.contiguous()?, &SoftmaxBwd)?))
    }
}

/// Gradient of [`Softmax`]: `(y, g)` to `y · (g − Σ g·y)` row by row.
struct SoftmaxBwd;

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "agm-softmax-last-dim-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = row_len(l1, self.name())?;
        if l1.shape() != l2.shape() {
            candle_core::bail!("{}: shapes {:?} and {:?} differ", self.name(), l1.dims(), l2.dims());
        }
        same_storage_dtype(s1, s2, self.name())?;
        dispatch_real!(s1, self.name(), T => {
            let y = slice::<T>(s1, l1, self.name())?;
            let grad = slice::<T>(s2, l2, self.name())?;
            let mut dx = vec![T::ZERO; y.len()];
            for_each_chunk(&mut dx, d, d, |i, dst| {
                let (yr, gr) = (&y[i * d..(i + 1) * d], &grad[i * d..(i + 1) * d]);
                let dot = yr.iter().zip(gr).fold(T::ZERO, |a, (&y, &g)| a + y * g);
                for ((o, &y), &g) in dst.iter_mut().zip(yr).zip(gr) {
                    *o = y * (g - dot);
                }
            });
            Ok((T::to_cpu_storage_owned(dx), l1.shape().clone()))
        })
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
