//! ReLU and the residual `relu(a + b)` as single ops whose backward is one masked copy.
//!
//! candle's own ReLU backward builds a zero tensor, a comparison, a dtype cast and a product,
//! four full-size passes for every activation of a ResNet. Here the backward is PyTorch's
//! `threshold_backward`: the gradient where the output is positive, zero elsewhere.

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use crate::cpu::{check_real, check_same_dtype, dispatch_real, map_into, same_storage_dtype, slice, Real};
use crate::own_kernels;

/// `max(x, 0)`. On the CPU and CUDA (f32, f64) a custom op; elsewhere [`relu_ref`].
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if !own_kernels(x.device()) {
        return relu_ref(x);
    }
    check_real(x, "relu")?;
    x.contiguous()?.apply_op1(Relu)
}

/// candle's ReLU (its backward passes the gradient at exactly 0 too).
pub fn relu_ref(x: &Tensor) -> Result<Tensor> {
    x.relu()
}

/// `max(a + b, 0)` for `a` and `b` of one shape: a residual connection and its activation. On the
/// CPU and CUDA (f32, f64) one custom op; elsewhere [`add_relu_ref`].
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() != b.dims() {
        candle_core::bail!("add_relu: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    if !own_kernels(a.device()) || !a.device().same_device(b.device()) {
        return add_relu_ref(a, b);
    }
    check_real(a, "add_relu")?;
    check_same_dtype(&[a, b], "add_relu")?;
    a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
}

/// [`add_relu`] from candle ops.
pub fn add_relu_ref(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    (a + b)?.relu()
}

/// `grad` where `out > 0`, zero elsewhere: the gradient through a ReLU whose output was `out`.
pub(crate) fn relu_grad(grad: &Tensor, out: &Tensor) -> Result<Tensor> {
    grad.contiguous()?.apply_op2_no_bwd(&out.contiguous()?, &ReluGrad)
}

struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "agm-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch_real!(s, self.name(), T => {
            let x = slice::<T>(s, l, self.name())?;
            let y = map_into::<T>(x.len(), |start, dst| {
                for (d, &v) in dst.iter_mut().zip(&x[start..]) {
                    *d = if v > T::ZERO { v } else { T::ZERO };
                }
            });
            Ok((T::to_cpu_storage_owned(y), l.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        dispatch_real!(s, self.name(), T => gpu::map::<T>("relu_fwd", &[(s, l)], l, self.name()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(relu_grad(grad, res)?))
    }
}

struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "agm-add-relu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        same_storage_dtype(s1, s2, self.name())?;
        dispatch_real!(s1, self.name(), T => {
            let (a, b) = (slice::<T>(s1, l1, self.name())?, slice::<T>(s2, l2, self.name())?);
            let y = map_into::<T>(a.len(), |start, dst| {
                for ((d, &u), &v) in dst.iter_mut().zip(&a[start..]).zip(&b[start..]) {
                    let s = u + v;
                    *d = if s > T::ZERO { s } else { T::ZERO };
                }
            });
            Ok((T::to_cpu_storage_owned(y), l1.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        same_storage_dtype(s1, s2, self.name())?;
        dispatch_real!(s1, self.name(), T => gpu::map::<T>("add_relu_fwd", &[(s1, l1), (s2, l2)], l1, self.name()))
    }

    fn bwd(&self, _a: &Tensor, _b: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = relu_grad(grad, res)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// `(grad, out) → grad · [out > 0]`, selecting rather than multiplying (an infinite gradient
/// where the output is zero stays out).
struct ReluGrad;

impl ReluGrad {
    /// Fails unless the gradient `l1` and the output `l2` have one shape (on every backend).
    fn check_shapes(&self, l1: &Layout, l2: &Layout) -> Result<()> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("{}: gradient {:?} and output {:?} differ", self.name(), l1.dims(), l2.dims());
        }
        Ok(())
    }
}

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "agm-relu-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        same_storage_dtype(s1, s2, self.name())?;
        self.check_shapes(l1, l2)?;
        dispatch_real!(s1, self.name(), T => {
            let (g, y) = (slice::<T>(s1, l1, self.name())?, slice::<T>(s2, l2, self.name())?);
            let dx = map_into::<T>(g.len(), |start, dst| {
                for ((d, &gv), &yv) in dst.iter_mut().zip(&g[start..]).zip(&y[start..]) {
                    *d = if yv > T::ZERO { gv } else { T::ZERO };
                }
            });
            Ok((T::to_cpu_storage_owned(dx), l1.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        same_storage_dtype(s1, s2, self.name())?;
        self.check_shapes(l1, l2)?;
        dispatch_real!(s1, self.name(), T => gpu::map::<T>("relu_grad", &[(s1, l1), (s2, l2)], l1, self.name()))
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, Layout, Result, Shape};

    use crate::cuda::{alloc, elementwise, storage, view, CudaReal, RELU};

    /// Runs the elementwise kernel `kernel(n, inputs…, out)` of `cuda/relu.cu` on same-sized
    /// contiguous inputs; the output has `layout`'s shape.
    pub(super) fn map<T: CudaReal>(
        kernel: &str,
        inputs: &[(&CudaStorage, &Layout)],
        layout: &Layout,
        op: &str,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = inputs[0].0.device();
        let n = layout.shape().elem_count();
        let views = inputs.iter().map(|(s, l)| view::<T>(s, l, op)).collect::<Result<Vec<_>>>()?;
        let mut out = alloc::<T>(dev, n)?;
        let func = RELU.func::<T>(dev, kernel)?;
        let mut launch = func.builder();
        launch.arg(&n);
        for v in &views {
            launch.arg(v);
        }
        launch.arg(&mut out);
        // SAFETY: the kernel reads `n` elements of each input and writes `n` of `out`.
        unsafe { launch.launch(elementwise(n)) }.w()?;
        Ok((storage(out, dev), layout.shape().clone()))
    }
}
