//! Layer norm and softmax over the last dimension that keep the autograd graph.
//!
//! candle 0.11's fused `layer_norm` and `softmax_last_dim` are built with `apply_op*_no_bwd`:
//! backward silently returns no gradient through them.

use candle_core::{Result, Tensor, D};

/// `(x − mean) / sqrt(var + eps) · gamma + beta` over the last dimension (biased variance,
/// PyTorch's `nn.LayerNorm`). `gamma` and `beta` have the size of the last dimension.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    layer_norm_ref(x, gamma, beta, eps)
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
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    softmax_ref(x)
}

/// Reference from plain differentiable ops (max-subtracted for stability).
pub fn softmax_ref(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}
