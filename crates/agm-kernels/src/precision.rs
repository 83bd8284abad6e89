//! The arithmetic of matrix products and convolutions: `--precision`.
//!
//! PyTorch runs cuDNN convolutions in TF32 by default and offers bf16 autocast; agm does the same
//! through one per-thread setting that [`linear`](crate::linear), [`conv2d`](crate::conv2d) and
//! [`matmul`] read when they are called. Everything else (activations, normalisation, losses,
//! Shapley scores, optimizer state, master weights) stays in the tensors' own dtype.
//!
//! The setting is per thread, so tests and runs on different threads cannot change each other's
//! numbers; a training run sets it on the thread that runs it.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Result, Tensor};

/// How f32 matrix products and convolutions are computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 tensors; on CUDA the products and convolutions may use TF32 tensor cores (10-bit
    /// mantissa inputs, f32 accumulation), as PyTorch's cuDNN convolutions do by default. On the
    /// CPU, 3×3 stride-1 convolutions on planes of 10×10 and more run as Winograd F(2×2, 3×3),
    /// within a few ulps of the direct sum.
    #[default]
    Fp32,
    /// f32 everywhere, TF32 off, direct (im2col) convolutions on the CPU: a CUDA run computes
    /// what the CPU does, to rounding.
    Fp32Strict,
    /// Products and convolutions take bf16 operands and give a bf16 result (f32 accumulation),
    /// like PyTorch's bf16 autocast; weights, optimizer state, losses and the rest stay f32. On
    /// CUDA they run as bf16 kernels; on the CPU the rounding is emulated around the f32 kernels
    /// (the same numbers, no speed gain).
    Bf16,
}

/// Values `--precision` accepts.
pub const PRECISIONS: &[&str] = &["fp32", "fp32-strict", "bf16"];

impl Precision {
    /// The name `--precision` and [`Precision::from_str`](std::str::FromStr::from_str) use
    /// (`fp32`, `fp32-strict` or `bf16`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Fp32Strict => "fp32-strict",
            Self::Bf16 => "bf16",
        }
    }

    /// Whether f32 products may run in TF32 on CUDA.
    pub fn allows_tf32(self) -> bool {
        self == Self::Fp32
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "fp32" => Ok(Self::Fp32),
            "fp32-strict" => Ok(Self::Fp32Strict),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!("precision `{other}` is not known; allowed: {}", PRECISIONS.join(", "))),
        }
    }
}

thread_local! {
    static PRECISION: Cell<Precision> = const { Cell::new(Precision::Fp32) };
}

/// This thread's precision ([`Precision::Fp32`] until set).
pub fn precision() -> Precision {
    PRECISION.with(Cell::get)
}

/// Sets this thread's precision and returns the one it replaces. On CUDA it also sets candle's
/// process-wide TF32 switch for its own matmuls, which agm's ops set again on every call.
pub fn set_precision(p: Precision) -> Precision {
    let previous = PRECISION.with(|c| c.replace(p));
    #[cfg(feature = "cuda")]
    apply_to_cublas(None);
    previous
}

/// Sets this thread's precision until the guard drops.
#[must_use = "the precision reverts when the guard drops"]
pub struct PrecisionGuard(Precision);

impl PrecisionGuard {
    /// Sets this thread's precision to `p`; the previous one comes back when the guard drops.
    pub fn new(p: Precision) -> Self {
        Self(set_precision(p))
    }
}

impl Drop for PrecisionGuard {
    fn drop(&mut self) {
        set_precision(self.0);
    }
}

/// Whether an op on `t` computes with bf16 operands: the thread asks for bf16 and `t` is f32.
pub(crate) fn wants_bf16(t: &Tensor) -> bool {
    precision() == Precision::Bf16 && t.dtype() == DType::F32
}

/// `t` rounded to bf16 and back to f32, differentiably (its gradient is rounded the same way):
/// the CPU's emulation of a bf16 operand or result.
pub(crate) fn round_bf16(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::BF16)?.to_dtype(DType::F32)
}

/// `a · b` (batched as candle's `matmul`) under this thread's precision: with bf16 operands and
/// result on CUDA, emulated on the CPU; in TF32 on CUDA unless the precision is strict.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if wants_bf16(a) {
        if a.device().is_cuda() {
            return a.to_dtype(DType::BF16)?.matmul(&b.to_dtype(DType::BF16)?)?.to_dtype(DType::F32);
        }
        return round_bf16(&round_bf16(a)?.matmul(&round_bf16(b)?)?);
    }
    #[cfg(feature = "cuda")]
    if a.device().is_cuda() {
        apply_to_cublas(None);
    }
    a.matmul(b)
}

/// Makes cuBLAS follow this thread's precision: candle's matmul (its process-wide TF32 switch)
/// and, when given, a handle agm calls directly (its math mode).
#[cfg(feature = "cuda")]
pub(crate) fn apply_to_cublas(handle: Option<&candle_core::cuda_backend::cudarc::cublas::CudaBlas>) {
    use candle_core::cuda_backend::cudarc::cublas::sys;
    let tf32 = precision().allows_tf32();
    candle_core::cuda_backend::set_gemm_reduced_precision_f32(tf32);
    if let Some(blas) = handle {
        let mode =
            if tf32 { sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH } else { sys::cublasMath_t::CUBLAS_DEFAULT_MATH };
        // SAFETY: the handle is live (borrowed); setting its math mode only changes how later
        // calls on it compute. A failure leaves the mode as it was, which is still a valid result.
        let _ = unsafe { sys::cublasSetMathMode(*blas.handle(), mode) };
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;

    #[test]
    fn precision_names_round_trip_and_unknown_names_list_the_allowed_ones() {
        for name in PRECISIONS {
            assert_eq!(name.parse::<Precision>().unwrap().to_string(), *name);
        }
        let err = "tf16".parse::<Precision>().unwrap_err();
        assert!(err.contains("`tf16`") && err.contains("fp32, fp32-strict, bf16"), "{err}");
    }

    #[test]
    fn the_guard_restores_the_previous_precision_on_this_thread_only() {
        assert_eq!(precision(), Precision::Fp32);
        {
            let _g = PrecisionGuard::new(Precision::Bf16);
            assert_eq!(precision(), Precision::Bf16);
            let other = std::thread::spawn(precision).join().unwrap();
            assert_eq!(other, Precision::Fp32, "another thread keeps its own precision");
        }
        assert_eq!(precision(), Precision::Fp32);
    }

    /// bf16 matmul rounds operands and result to bf16; its gradient flows, rounded, to f32 vars.
    #[test]
    fn bf16_matmul_rounds_operands_and_result_and_keeps_f32_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::from_tensor(&Tensor::new(&[[1.0f32 + 1.0 / 512.0, 2.0], [3.0, -1.0]], &dev)?)?;
        let b = Tensor::new(&[[1.0f32], [1.0 / 1024.0]], &dev)?;
        let exact = matmul(a.as_tensor(), &b)?.to_vec2::<f32>()?;
        assert_eq!(exact[0][0], 1.0 + 1.0 / 512.0 + 2.0 / 1024.0);
        let _g = PrecisionGuard::new(Precision::Bf16);
        let y = matmul(a.as_tensor(), &b)?;
        assert_eq!(y.dtype(), DType::F32);
        // 1 + 2^-9 rounds to 1 in bf16 (8 significant bits); 1 + 2^-9 as a result too.
        assert_eq!(y.to_vec2::<f32>()?[0][0], 1.0);
        let grads = y.sum_all()?.backward()?;
        let g = grads.get(&a).expect("gradient reaches the f32 variable");
        assert_eq!(g.dtype(), DType::F32);
        assert_eq!(g.to_vec2::<f32>()?[0], vec![1.0, 1.0 / 1024.0]);
        Ok(())
    }
}
