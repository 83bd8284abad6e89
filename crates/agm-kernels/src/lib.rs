//! candle custom ops that agm needs and candle 0.11 lacks.
//!
//! Each op has a public function, a `*_ref` reference built from plain candle ops, and tests that
//! compare the two forward and backward.
//!
//! ```
//! # fn main() -> candle_core::Result<()> {
//! use candle_core::{Device, Var};
//! let x = Var::new(&[1.0f64, -2.0], &Device::Cpu)?;
//! let y = agm_kernels::grad_scale(x.as_tensor(), 0.5)?;
//! let grads = y.sum_all()?.backward()?;
//! assert_eq!(grads.get(&x).unwrap().to_vec1::<f64>()?, vec![0.5, 0.5]);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod backward;
mod batch_norm;
mod conv;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cuda")]
mod cudnn;
mod dropout;
mod grad_scale;
mod linear;
mod loss;
mod noise;
mod norm;
mod pool;
mod precision;
mod reduce;
mod relu;
mod runtime;
mod sgd;
mod winograd;

pub use backward::backward;
pub use batch_norm::{
    batch_norm, batch_norm_ref, batch_norm_relu, batch_norm_train, updated_running, BatchStats, RunningStats,
};
#[cfg(feature = "cuda")]
pub use conv::conv2d_im2col;
pub use conv::{conv2d, conv2d_ref, Conv2dSpec};
pub use dropout::{dropout, dropout_leading, dropout_leading_ref, mix_seed};
pub use grad_scale::{grad_scale, grad_scale_ref};
pub use linear::{linear, linear_ref};
pub use loss::{cross_entropy_per_sample, cross_entropy_per_sample_ref};
pub use noise::{add_gaussian_noise, add_gaussian_noise_ref};
pub use norm::{layer_norm, layer_norm_ref, softmax_last_dim, softmax_ref};
pub use pool::{avg_pool2d, avg_pool2d_ref, max_pool2d, max_pool2d_ref, Pool2dSpec};
pub use precision::{matmul, precision, set_precision, Precision, PrecisionGuard, PRECISIONS};
pub use reduce::{dot, gram, std_unbiased};
pub use relu::{add_relu, add_relu_ref, relu, relu_ref};
pub use runtime::{on_cpu_workers, tune_cpu_runtime, WORKER_STACK};
pub use sgd::{sgd_update, sgd_update_all, sgd_update_ref, sum_squares, sum_squares_each, SgdParam, SgdUpdate};

/// Whether convolutions on CUDA run through cuDNN; `Err` says why not (no `cuda` feature,
/// cuDNN not found, or `AGM_CUDNN=0`), in which case they take the im2col path.
pub fn cudnn_available() -> Result<(), String> {
    #[cfg(feature = "cuda")]
    return cudnn::available();
    #[cfg(not(feature = "cuda"))]
    Err("built without the `cuda` feature".into())
}

/// Whether agm's own kernels run on `device`: always on the CPU, and on CUDA devices when built
/// with the `cuda` feature. Elsewhere (Metal) each op runs its candle-op form.
pub(crate) fn own_kernels(device: &candle_core::Device) -> bool {
    device.is_cpu() || (cfg!(feature = "cuda") && device.is_cuda())
}
