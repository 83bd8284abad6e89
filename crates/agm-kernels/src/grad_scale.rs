//! Gradient scaling: identity forward, gradient times `s` backward.
//!
//! This is AGM's backward hook as an op. Unlike `affine(s, 0)`, a scale of exactly 0 still
//! yields a real zero gradient (candle prunes the path at `affine(0, ·)`, so optimizers would skip
//! momentum and weight decay for those parameters).

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

struct GradScale {
    scale: f64,
}

/// Copies `storage` (any strides or offset) into fresh contiguous storage.
fn copy_contiguous<S>(storage: &S, layout: &Layout) -> Result<(S, Shape)>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
    let shape = layout.shape().clone();
    // SAFETY: every element of `dst` is written by the strided copy right below.
    let mut dst = unsafe { storage.device().alloc_uninit(&shape, storage.dtype())? };
    storage.copy_strided_src(&mut dst, 0, layout)?;
    Ok((dst, shape))
}

impl CustomOp1 for GradScale {
    fn name(&self) -> &'static str {
        "grad-scale"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        copy_contiguous(storage, layout)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        copy_contiguous(storage, layout)
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // Never `Ok(None)`: candle panics when an intermediate node gets no gradient.
        Ok(Some(grad_res.affine(self.scale, 0.0)?))
    }
}

/// Identity in the forward pass; multiplies the incoming gradient by `scale` in the backward pass.
/// The forward output is bit-identical to `x`.
pub fn grad_scale(x: &Tensor, scale: f64) -> Result<Tensor> {
    if !scale.is_finite() {
        candle_core::bail!("grad_scale: scale must be finite, got {scale}");
    }
    x.apply_op1(GradScale { scale })
}

/// Reference built from plain ops: `x.detach() + (s·x − (s·x).detach())`. Same forward and
/// backward, except that a scale of 0 prunes the gradient instead of producing zeros.
pub fn grad_scale_ref(x: &Tensor, scale: f64) -> Result<Tensor> {
    let scaled = x.affine(scale, 0.0)?;
    x.detach() + (&scaled - scaled.detach())?
}
