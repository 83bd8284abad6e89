//! Gaussian noise whose draws are a hash of the seed and the element index, so the CPU and CUDA
//! draw the same noise (to their `ln`/`sin`/`cos` rounding), in parallel, from any thread count.
//!
//! OGM-GE adds noise of each gradient's standard deviation to every modulated gradient, every
//! step. A sequential host generator would spend most of an OGM-GE step drawing it and, on CUDA,
//! upload every modulated gradient's noise each step.

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use crate::cpu::{dispatch_real, map_into, slice, Real};
use crate::dropout::mix_seed;
use crate::own_kernels;

/// Standard normal draws `2·first_pair ..` of stream `seed` into `out` (draw `i` at `out[i − 2·first_pair]`).
///
/// Pair `p` (draws `2p`, `2p + 1`) is Box–Muller on the two 32-bit halves of one hash of `p`:
/// `u1 ∈ (0, 1]` from the high half, `u2 ∈ [0, 1)` from the low one, `r = √(−2 ln u1)`, the draws
/// `r·cos(2π u2)` and `r·sin(2π u2)`, computed in `T` with `wide`'s vectorised `ln` and
/// `sin_cos`, a batch of pairs at a time; every pair takes the same lane arithmetic wherever it
/// falls, so a draw depends on `seed` and its index alone. `cuda/noise.cu` computes the same
/// with CUDA's `log` and `sincos`. The 32-bit uniforms bound a draw by `√(64 ln 2) ≈ 6.7`, which a
/// noise term never misses.
pub(crate) fn fill_normal<T: NoiseReal>(seed: u64, first_pair: usize, out: &mut [T]) {
    let mut u = [[0.0f64; 2]; 8];
    for (b, batch) in out.chunks_mut(2 * T::LANES).enumerate() {
        let first = first_pair + b * T::LANES;
        for (l, u) in u.iter_mut().take(T::LANES).enumerate() {
            let h = mix_seed(seed, (first + l) as u64);
            *u = [((h >> 32) + 1) as f64, (h & 0xffff_ffff) as f64];
        }
        T::box_muller(&u[..T::LANES], batch);
    }
}

/// The element types of the noise kernel, with their vectorised Box–Muller.
pub(crate) trait NoiseReal: Real {
    /// Pairs per batch.
    const LANES: usize;
    /// Writes the pairs of `u` (hash halves as integers in f64) interleaved into `out`, as many
    /// as fit (`out` holds at most `2 · LANES`).
    fn box_muller(u: &[[f64; 2]], out: &mut [Self]);
}

const TWO_POW_M32: f64 = 1.0 / 4_294_967_296.0;

macro_rules! noise_real {
    ($t:ty, $simd:ty, $lanes:expr) => {
        impl NoiseReal for $t {
            const LANES: usize = $lanes;
            #[inline(always)]
            fn box_muller(u: &[[f64; 2]], out: &mut [Self]) {
                let lane = |k: usize| -> $simd {
                    let mut a = [0.0 as $t; $lanes];
                    a.iter_mut().zip(u).for_each(|(a, u)| *a = u[k] as $t);
                    <$simd>::from(a) * <$simd>::splat(TWO_POW_M32 as $t)
                };
                let (u1, u2) = (lane(0), lane(1));
                let r = (<$simd>::splat(-2.0) * u1.ln()).sqrt();
                let (sin, cos) = (<$simd>::splat(std::f64::consts::TAU as $t) * u2).sin_cos();
                let (z0, z1) = ((r * cos).to_array(), (r * sin).to_array());
                for (i, o) in out.iter_mut().enumerate() {
                    *o = if i % 2 == 0 { z0[i / 2] } else { z1[i / 2] };
                }
            }
        }
    };
}
noise_real!(f32, wide::f32x8, 8);
noise_real!(f64, wide::f64x4, 4);

/// `scale · x + std · z`, where `z[i]` is standard normal draw `i` (row-major) of stream `seed`:
/// a function of `seed` and the index alone. On the CPU and CUDA (f32, f64) one custom op;
/// elsewhere (other devices or dtypes) [`add_gaussian_noise_ref`]. The gradient with respect to
/// `x` is `scale`.
pub fn add_gaussian_noise(x: &Tensor, scale: f64, std: f64, seed: u64) -> Result<Tensor> {
    if !own_kernels(x.device()) || !matches!(x.dtype(), DType::F32 | DType::F64) {
        return add_gaussian_noise_ref(x, scale, std, seed);
    }
    x.contiguous()?.apply_op1(GaussianNoise { scale, std, seed })
}

/// [`add_gaussian_noise`] from plain candle ops, the draws made on the host (in f32 for every
/// dtype but f64).
pub fn add_gaussian_noise_ref(x: &Tensor, scale: f64, std: f64, seed: u64) -> Result<Tensor> {
    fn draws<T: NoiseReal>(seed: u64, n: usize) -> Vec<T> {
        let mut z = vec![T::ZERO; n];
        fill_normal(seed, 0, &mut z);
        z
    }
    let (n, shape, dev) = (x.elem_count(), x.shape(), x.device());
    let z = match x.dtype() {
        DType::F64 => Tensor::from_vec(draws::<f64>(seed, n), shape, dev)?,
        _ => Tensor::from_vec(draws::<f32>(seed, n), shape, dev)?.to_dtype(x.dtype())?,
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
                // Chunks start at even indices, so a chunk's draws start with a whole pair.
                fill_normal(seed, start / 2, dst);
                for (d, &v) in dst.iter_mut().zip(&x[start..]) {
                    *d = v * scale + *d * std;
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
