//! `torch.optim.SGD`'s update for one parameter, in place and in two passes over memory, and the
//! squared norm that gradient clipping needs.
//!
//! Written with plain candle ops the update allocates and walks a parameter-sized tensor seven
//! times per step; for a 22M-parameter ResNet pair that was a tenth of a training step.

use candle_core::{CpuStorage, InplaceOp3, Layout, Result, Tensor, Var};

use rayon::prelude::*;

use crate::cpu::{dispatch_real, for_each_chunk, slice, slice_mut};

/// Elements per parallel job of the update loops.
const CHUNK: usize = 1 << 15;

/// SGD's hyper-parameters for one update (`lr` already includes any per-group multiplier).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdUpdate {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

/// One SGD step for `param` with gradient `grad`, exactly as PyTorch orders the arithmetic:
/// `d = g + wd·p`; with momentum, `buf = d` on the first step (`buf` is `None`) and
/// `buf = momentum·buf + (1 − dampening)·d` after, then `d = d + momentum·buf` (nesterov) or
/// `d = buf`; finally `p ← p − lr·d`. Returns the momentum buffer to keep (`None` without
/// momentum).
///
/// On the CPU (f32, f64, contiguous) `param` and `buf` are updated in place; elsewhere the same
/// arithmetic runs as candle ops and `param` is set.
pub fn sgd_update(param: &Var, grad: &Tensor, buf: Option<Tensor>, u: SgdUpdate) -> Result<Option<Tensor>> {
    let p = param.as_tensor();
    if grad.dims() != p.dims() {
        candle_core::bail!("sgd_update: gradient shape {:?} differs from the parameter's {:?}", grad.dims(), p.dims());
    }
    let fused = p.device().is_cpu()
        && matches!(p.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
        && grad.dtype() == p.dtype()
        && p.is_contiguous();
    if !fused {
        return sgd_update_ref(param, grad, buf, u);
    }
    let grad = grad.contiguous()?;
    let buf = if u.momentum != 0.0 {
        let (buf, first) = match buf {
            Some(buf) => (buf, false),
            None => (p.zeros_like()?, true),
        };
        // A first step is the general update of a zero buffer with no momentum and no dampening.
        let (momentum, dampening) = if first { (0.0, 0.0) } else { (u.momentum, u.dampening) };
        buf.inplace_op3(&grad, p, &MomentumUpdate { momentum, dampening, weight_decay: u.weight_decay })?;
        Some(buf)
    } else {
        None
    };
    // Without momentum the third operand is unused; the gradient stands in for it.
    p.inplace_op3(&grad, buf.as_ref().unwrap_or(&grad), &ParamUpdate(u))?;
    Ok(buf)
}

/// [`sgd_update`] from candle ops, for other devices and dtypes.
pub fn sgd_update_ref(param: &Var, grad: &Tensor, buf: Option<Tensor>, u: SgdUpdate) -> Result<Option<Tensor>> {
    // Detached so that the buffer and the new value carry no autograd graph.
    let p = param.as_tensor().detach();
    let grad = grad.detach();
    let mut d = if u.weight_decay != 0.0 { grad.add(&p.affine(u.weight_decay, 0.0)?)? } else { grad };
    let mut kept = None;
    if u.momentum != 0.0 {
        let buf = match buf {
            // PyTorch clones d on the first step: no dampening applied.
            None => d.copy()?,
            Some(buf) => {
                let scaled = if u.dampening != 0.0 { d.affine(1.0 - u.dampening, 0.0)? } else { d.clone() };
                buf.affine(u.momentum, 0.0)?.add(&scaled)?
            }
        };
        d = if u.nesterov { d.add(&buf.affine(u.momentum, 0.0)?)? } else { buf.clone() };
        kept = Some(buf);
    }
    param.set(&p.sub(&d.affine(u.lr, 0.0)?)?)?;
    Ok(kept)
}

/// `buf ← momentum·buf + (1 − dampening)·(g + wd·p)`, in place on `buf`.
struct MomentumUpdate {
    momentum: f64,
    dampening: f64,
    weight_decay: f64,
}

impl InplaceOp3 for MomentumUpdate {
    fn name(&self) -> &'static str {
        "agm-sgd-momentum"
    }

    fn cpu_fwd(
        &self,
        bs: &mut CpuStorage,
        bl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> Result<()> {
        dispatch_real!(gs, self.name(), T => {
            let (g, p) = (slice::<T>(gs, gl, self.name())?, slice::<T>(ps, pl, self.name())?);
            let buf = slice_mut::<T>(bs, bl, g.len(), self.name())?;
            let (m, wd) = (T::from_f64(self.momentum), T::from_f64(self.weight_decay));
            let scale = T::from_f64(1.0 - self.dampening);
            let damped = self.dampening != 0.0;
            for_each_chunk(buf, CHUNK, CHUNK, |i, buf| {
                let range = i * CHUNK..i * CHUNK + buf.len();
                for ((b, &g), &p) in buf.iter_mut().zip(&g[range.clone()]).zip(&p[range]) {
                    let d = if self.weight_decay != 0.0 { g + wd * p } else { g };
                    *b = m * *b + if damped { scale * d } else { d };
                }
            });
            Ok(())
        })
    }
}

/// `p ← p − lr·d` with `d = buf`, `d = (g + wd·p) + momentum·buf` (nesterov) or `d = g + wd·p`
/// (no momentum), in place on `p`.
struct ParamUpdate(SgdUpdate);

impl InplaceOp3 for ParamUpdate {
    fn name(&self) -> &'static str {
        "agm-sgd-param"
    }

    fn cpu_fwd(
        &self,
        ps: &mut CpuStorage,
        pl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<()> {
        let u = self.0;
        dispatch_real!(gs, self.name(), T => {
            let (g, buf) = (slice::<T>(gs, gl, self.name())?, slice::<T>(bs, bl, self.name())?);
            let p = slice_mut::<T>(ps, pl, g.len(), self.name())?;
            let (lr, m, wd) = (T::from_f64(u.lr), T::from_f64(u.momentum), T::from_f64(u.weight_decay));
            for_each_chunk(p, CHUNK, CHUNK, |i, p| {
                let range = i * CHUNK..i * CHUNK + p.len();
                for ((p, &g), &b) in p.iter_mut().zip(&g[range.clone()]).zip(&buf[range]) {
                    let d = if u.momentum == 0.0 || u.nesterov {
                        let d = if u.weight_decay != 0.0 { g + wd * *p } else { g };
                        if u.momentum == 0.0 { d } else { d + m * b }
                    } else {
                        b
                    };
                    *p -= lr * d;
                }
            });
            Ok(())
        })
    }
}

/// `Σ t²` over every element, accumulated in f64: the square of a gradient's L2 norm for
/// clipping, in one parallel pass on the CPU (f32, f64) without a converted copy; elsewhere
/// candle ops (in f32 on Metal, which has no f64).
pub fn sum_squares(t: &Tensor) -> Result<f64> {
    let t = t.detach();
    if t.device().is_cpu() && matches!(t.dtype(), candle_core::DType::F32 | candle_core::DType::F64) {
        let t = t.contiguous()?;
        let (storage, layout) = t.storage_and_layout();
        if let candle_core::Storage::Cpu(storage) = &*storage {
            return dispatch_real!(storage, "sum_squares", T => {
                let x = slice::<T>(storage, layout, "sum_squares")?;
                Ok(x.par_chunks(CHUNK).map(|c| c.iter().map(|v| v.to_f64() * v.to_f64()).sum::<f64>()).sum())
            });
        }
    }
    let acc = if t.device().is_metal() { candle_core::DType::F32 } else { candle_core::DType::F64 };
    t.to_dtype(acc)?.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()
}
