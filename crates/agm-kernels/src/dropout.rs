//! Dropout whose mask is a hash of the seed and the element index, so the CPU and CUDA draw the
//! same mask, in parallel, without storing it: the backward recomputes it.
//!
//! A mask drawn by a sequential generator on the host costs one host draw per element and an
//! upload; for the UR-Funny transformers at batch 64 that was about 290 M draws, 3 s of every
//! 3.4 s GPU step.

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use crate::cpu::{check_real, dispatch_real, map_into, slice, Real};
use crate::own_kernels;

/// SplitMix64's output function applied to `seed` and the stream position `index`: well-spread
/// 64-bit values for nearby seeds and indices alike. `cuda/dropout.cu` computes the same.
pub fn mix_seed(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether element `index` is dropped: its uniform draw in [0, 1), 53 bits of the hash, is below `p`.
#[inline(always)]
fn dropped(seed: u64, index: usize, p: f64) -> bool {
    ((mix_seed(seed, index as u64) >> 11) as f64) * (1.0 / (1u64 << 53) as f64) < p
}

/// Inverted dropout in training: each element of `x` (in row-major order) is zeroed with
/// probability `p` and the rest scaled by `1 / (1 − p)`; the mask is a function of `seed` and the
/// element's index alone. On the CPU and CUDA (f32, f64) one custom op that stores no mask;
/// elsewhere [`dropout_leading_ref`], which gives the same values.
pub fn dropout(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    dropout_leading(x, p, seed, x.elem_count())
}

/// [`dropout`] on the first `count` elements of `x` (row-major); the rest pass unchanged. Since
/// the mask depends on the index alone, rows of training samples stacked before rows that run in
/// evaluation mode get exactly the mask [`dropout`] gives them alone.
pub fn dropout_leading(x: &Tensor, p: f64, seed: u64, count: usize) -> Result<Tensor> {
    check_probability(p)?;
    if !own_kernels(x.device()) {
        return dropout_leading_ref(x, p, seed, count);
    }
    check_real(x, "dropout")?;
    x.contiguous()?.apply_op1(Dropout { p, seed, count: count.min(x.elem_count()) })
}

/// [`dropout_leading`] as `x · mask`, the mask built on the host.
pub fn dropout_leading_ref(x: &Tensor, p: f64, seed: u64, count: usize) -> Result<Tensor> {
    check_probability(p)?;
    let keep = 1.0 / (1.0 - p);
    let factor = |i: usize| match i < count {
        true if dropped(seed, i, p) => 0.0,
        true => keep,
        false => 1.0,
    };
    let mask: Vec<f64> = (0..x.elem_count()).map(factor).collect();
    x * Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?
}

fn check_probability(p: f64) -> Result<()> {
    if !(0.0..1.0).contains(&p) {
        candle_core::bail!("dropout probability must be in [0, 1), got {p}");
    }
    Ok(())
}

struct Dropout {
    p: f64,
    seed: u64,
    /// Elements from this index on pass unchanged.
    count: usize,
}

impl Dropout {
    /// The factor of the kept elements, rounded to `T` as [`dropout_leading_ref`]'s mask is.
    fn keep<T: Real>(&self) -> T {
        T::from_f64(1.0 / (1.0 - self.p))
    }
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "agm-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Self { p, seed, count } = *self;
        dispatch_real!(s, self.name(), T => {
            let x = slice::<T>(s, l, self.name())?;
            let keep = self.keep::<T>();
            let y = map_into::<T>(x.len(), |start, dst| {
                for (j, (d, &v)) in dst.iter_mut().zip(&x[start..]).enumerate() {
                    let i = start + j;
                    *d = if i >= count { v } else { v * if dropped(seed, i, p) { T::ZERO } else { keep } };
                }
            });
            Ok((T::to_cpu_storage_owned(y), l.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        dispatch_real!(s, self.name(), T => gpu::dropout::<T>(s, l, self, self.keep::<T>()))
    }

    /// The same mask on the gradient: recomputed from the seed, nothing was stored.
    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, Layout, Result, Shape};

    use crate::cuda::{alloc, elementwise, storage, view, CudaReal, DROPOUT};

    pub(super) fn dropout<T: CudaReal>(
        s: &CudaStorage,
        l: &Layout,
        op: &super::Dropout,
        keep: T,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s.device();
        let n = l.shape().elem_count();
        let x = view::<T>(s, l, "dropout")?;
        let mut out = alloc::<T>(dev, n)?;
        let func = DROPOUT.func::<T>(dev, "dropout")?;
        let mut launch = func.builder();
        launch.arg(&n).arg(&op.count).arg(&op.seed).arg(&op.p).arg(&keep).arg(&x).arg(&mut out);
        // SAFETY: the kernel reads `n` elements of `x` and writes `n` of `out`.
        unsafe { launch.launch(elementwise(n)) }.w()?;
        Ok((storage(out, dev), l.shape().clone()))
    }
}
