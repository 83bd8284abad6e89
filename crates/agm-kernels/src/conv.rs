//! 2-D convolution whose backward is right for every stride, padding and input size.
//!
//! candle 0.11's conv2d backward fails when `(H + 2p − k) % s != (W + 2p − k) % s` (it takes
//! `output_padding` from one dimension only), which a 257×188 spectrogram hits at the ResNet stem.

use candle_core::{Result, Tensor};

/// Square-kernel 2-D convolution parameters, PyTorch's `nn.Conv2d(stride, padding)` with one
/// value for both spatial dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dSpec {
    pub stride: usize,
    pub padding: usize,
}

impl Conv2dSpec {
    pub fn new(stride: usize, padding: usize) -> Self {
        Self { stride, padding }
    }

    /// Output size of one spatial dimension of length `n` for a kernel of `k`.
    pub fn out_len(&self, n: usize, k: usize) -> usize {
        (n + 2 * self.padding - k) / self.stride + 1
    }
}

/// `x [B, C, H, W]` convolved with `w [O, C, kh, kw]` (no bias), gradients to both.
pub fn conv2d(x: &Tensor, w: &Tensor, spec: Conv2dSpec) -> Result<Tensor> {
    conv2d_ref(x, w, spec)
}

/// Reference from plain candle ops: when the two stride remainders differ, pad explicitly and
/// drop the trailing rows or columns the convolution never reads, then run an unpadded conv, so
/// candle's backward sees equal remainders (zero).
pub fn conv2d_ref(x: &Tensor, w: &Tensor, spec: Conv2dSpec) -> Result<Tensor> {
    let (_, _, h, wd) = x.dims4()?;
    let (_, _, kh, kw) = w.dims4()?;
    let Conv2dSpec { stride: s, padding: p } = spec;
    if h + 2 * p < kh || wd + 2 * p < kw {
        candle_core::bail!("conv2d: input {h}×{wd} with padding {p} is smaller than the kernel {kh}×{kw}");
    }
    let (rh, rw) = ((h + 2 * p - kh) % s, (wd + 2 * p - kw) % s);
    if rh == rw {
        return x.conv2d(w, p, s, 1, 1);
    }
    let padded = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
    let padded = padded.narrow(2, 0, h + 2 * p - rh)?.narrow(3, 0, wd + 2 * p - rw)?;
    padded.conv2d(w, 0, s, 1, 1)
}
