//! Gaussian noise whose draws are a hash of the seed and the element index, so the CPU and CUDA
//! draw the same noise (to their `ln`/`sin`/`cos` rounding), in parallel, from any thread count.
//!
//! OGM-GE adds noise of each gradient's standard deviation to every modulated gradient, every
//! step. Drawn one element at a time on the host, that was two thirds of an AV-Digits OGM-GE run
//! and, for a ResNet-18 pair on CUDA, an upload of every encoder gradient per step.

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use crate::cpu::{check_real, dispatch_real, map_into, slice, Real};
use crate::dropout::mix_seed;
use crate::own_kernels;

/// The two standard normal draws of pair `pair` (elements `2·pair` and `2·pair + 1`): Box–Muller
/// on the two 32-bit halves of one hash, `u1 ∈ (0, 1]` from the high half and `u2 ∈ [0, 1)` from
/// the low one, computed in `T`. `cuda/noise.cu` computes the same. The 32-bit uniforms bound a
/// draw by `√(64 ln 2) ≈ 6.7`, which a noise term never misses.
#[inline(always)]
pub(crate) fn normal_pair<T: NoiseReal>(seed: u64, pair: u64) -> (T, T) {
    let h = mix_seed(seed, pair);
    let u1 = T::from_f64(((h >> 32) + 1) as f64) * T::from_f64(TWO_POW_M32);
    let u2 = T::from_f64((h & 0xffff_ffff) as f64) * T::from_f64(TWO_POW_M32);
    let r = (T::from_f64(-2.0) * u1.ln()).sqrt();
    let (sin, cos) = (T::from_f64(std::f64::consts::TAU) * u2).sin_cos();
    (r * cos, r * sin)
}

const TWO_POW_M32: f64 = 1.0 / 4_294_967_296.0;

/// The float operations the draws need, in the element type.
pub(crate) trait NoiseReal: Real + std::ops::Mul<Output = Self> + std::ops::Add<Output = Self> {
    fn ln(self) -> Self;
    fn sin_cos(self) -> (Self, Self);
}

macro_rules! noise_real {
    ($t:ty) => {
        impl NoiseReal for $t {
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sin_cos(self) -> (Self, Self) {
                <$t>::sin_cos(self)
            }
        }
    };
}
noise_real!(f32);
noise_real!(f64);

/// Standard normal draw `i` of stream `seed` (element `i` of a tensor filled from it).
#[inline(always)]
fn normal<T: NoiseReal>(seed: u64, i: usize) -> T {
    let (even, odd) = normal_pair::<T>(seed, (i / 2) as u64);
    if i.is_multiple_of(2) {
        even
    } else {
        odd
    }
}

/// `scale · x + std · z`, where `z[i]` is standard normal draw `i` (row-major) of stream `seed`:
/// a function of `seed` and the index alone. On the CPU and CUDA (f32, f64) one custom op;
/// elsewhere [`add_gaussian_noise_ref`]. The gradient with respect to `x` is `scale`.
pub fn add_gaussian_noise(x: &Tensor, scale: f64, std: f64, seed: u64) -> Result<Tensor> {
    if !own_kernels(x.device()) {
        return add_gaussian_noise_ref(x, scale, std, seed);
    }
    check_real(x, "add_gaussian_noise")?;
    x.contiguous()?.apply_op1(GaussianNoise { scale, std, seed })
}

/// [`add_gaussian_noise`] from plain candle ops, the draws made on the host (in f32 for every
/// dtype but f64).
pub fn add_gaussian_noise_ref(x: &Tensor, scale: f64, std: f64, seed: u64) -> Result<Tensor> {
    let n = x.elem_count();
    let z = match x.dtype() {
        DType::F64 => {
            Tensor::from_vec((0..n).map(|i| normal::<f64>(seed, i)).collect::<Vec<_>>(), x.shape(), x.device())?
        }
        _ => Tensor::from_vec((0..n).map(|i| normal::<f32>(seed, i)).collect::<Vec<_>>(), x.shape(), x.device())?
            .to_dtype(x.dtype())?,
    };
    x.affine(scale, 0.0)? + z.affine(std, 0.0)?
}

struct GaussianNoise {
    scale: f64,
    std: f64,
    seed: u64,
}

impl CustomOp1 for GaussianNoise {
    fn name(&self) -> &'static str {
        "agm-gaussian-noise"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Self { scale, std, seed } = *self;
        dispatch_real!(s, self.name(), T => {
            let x = slice::<T>(s, l, self.name())?;
            let (scale, std) = (T::from_f64(scale), T::from_f64(std));
            let y = map_into::<T>(x.len(), |start, dst| {
                // Chunks start at even indices, so each pair's draws are made once.
                for (j, (d, v)) in dst.chunks_mut(2).zip(x[start..].chunks(2)).enumerate() {
                    let (z0, z1) = normal_pair::<T>(seed, (start / 2 + j) as u64);
                    d[0] = v[0] * scale + z0 * std;
                    if let (Some(d1), Some(&v1)) = (d.get_mut(1), v.get(1)) {
                        *d1 = v1 * scale + z1 * std;
                    }
                }
            });
            Ok((T::to_cpu_storage_owned(y), l.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        dispatch_real!(s, self.name(), T => gpu::add_gaussian_noise::<T>(s, l, self))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.affine(self.scale, 0.0)?))
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, Layout, Result, Shape};

    use crate::cuda::{alloc, elementwise, storage, view, CudaReal, NOISE};

    pub(super) fn add_gaussian_noise<T: CudaReal>(
        s: &CudaStorage,
        l: &Layout,
        op: &super::GaussianNoise,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s.device();
        let n = l.shape().elem_count();
        let x = view::<T>(s, l, "add_gaussian_noise")?;
        let mut out = alloc::<T>(dev, n)?;
        let func = NOISE.func::<T>(dev, "add_gaussian_noise")?;
        let (scale, std) = (T::from_f64(op.scale), T::from_f64(op.std));
        let mut launch = func.builder();
        launch.arg(&n).arg(&op.seed).arg(&scale).arg(&std).arg(&x).arg(&mut out);
        // SAFETY: the kernel reads `n` elements of `x` and writes `n` of `out`, a pair per thread.
        unsafe { launch.launch(elementwise(n.div_ceil(2))) }.w()?;
        Ok((storage(out, dev), l.shape().clone()))
    }
}
