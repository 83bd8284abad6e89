//! Max and average pooling with padding and correct gradients.
//!
//! candle 0.11's `max_pool2d` has no padding, no backward when kernel ≠ stride, and scales the
//! gradient by 1/k²; its `avg_pool2d` backward fails when kernel ≠ stride.

use candle_core::{Result, Tensor};

/// Square pooling window: PyTorch's `kernel_size`, `stride`, `padding` (floor mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dSpec {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Pool2dSpec {
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Self {
        Self { kernel, stride, padding }
    }

    pub fn out_len(&self, n: usize) -> usize {
        (n + 2 * self.padding - self.kernel) / self.stride + 1
    }

    fn check(&self, h: usize, w: usize) -> Result<()> {
        if self.kernel == 0 || self.stride == 0 {
            candle_core::bail!("pool2d: kernel and stride must be positive, got {self:?}");
        }
        if 2 * self.padding > self.kernel {
            candle_core::bail!("pool2d: padding must be at most half the kernel, got {self:?}");
        }
        if h + 2 * self.padding < self.kernel || w + 2 * self.padding < self.kernel {
            candle_core::bail!("pool2d: input {h}×{w} is smaller than the window {self:?}");
        }
        Ok(())
    }
}

/// Max pooling of `x [B, C, H, W]`; padding counts as −∞ (PyTorch semantics).
pub fn max_pool2d(x: &Tensor, spec: Pool2dSpec) -> Result<Tensor> {
    max_pool2d_ref(x, spec)
}

/// Average pooling of `x [B, C, H, W]`; padding counts as zeros in the mean
/// (PyTorch's `count_include_pad=True`).
pub fn avg_pool2d(x: &Tensor, spec: Pool2dSpec) -> Result<Tensor> {
    avg_pool2d_ref(x, spec)
}

/// The k² strided views of the padded input, one per window offset.
fn window_views(padded: &Tensor, spec: Pool2dSpec, oh: usize, ow: usize) -> Result<Vec<Tensor>> {
    let dev = padded.device();
    let idx = |start: usize, n: usize| {
        let v: Vec<u32> = (0..n).map(|i| (start + i * spec.stride) as u32).collect();
        Tensor::from_vec(v, n, dev)
    };
    let mut views = Vec::with_capacity(spec.kernel * spec.kernel);
    for ki in 0..spec.kernel {
        let rows = padded.index_select(&idx(ki, oh)?, 2)?;
        for kj in 0..spec.kernel {
            views.push(rows.index_select(&idx(kj, ow)?, 3)?);
        }
    }
    Ok(views)
}

/// Reference from plain ops: pad with −∞, take the k² strided views, reduce with `maximum`
/// (ties split the gradient, unlike PyTorch's first-index rule).
pub fn max_pool2d_ref(x: &Tensor, spec: Pool2dSpec) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    spec.check(h, w)?;
    let p = spec.padding;
    let padded = if p == 0 {
        x.clone()
    } else {
        let neg = |shape: (usize, usize, usize, usize)| {
            Tensor::full(f32::NEG_INFINITY, shape, x.device())?.to_dtype(x.dtype())
        };
        let rows = Tensor::cat(&[neg((b, c, p, w))?, x.clone(), neg((b, c, p, w))?], 2)?;
        Tensor::cat(&[neg((b, c, h + 2 * p, p))?, rows, neg((b, c, h + 2 * p, p))?], 3)?
    };
    let views = window_views(&padded, spec, spec.out_len(h), spec.out_len(w))?;
    let mut acc = views[0].clone();
    for v in &views[1..] {
        acc = acc.maximum(v)?;
    }
    Ok(acc)
}

/// Reference from plain ops: zero-pad, sum the k² strided views, divide by k².
pub fn avg_pool2d_ref(x: &Tensor, spec: Pool2dSpec) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    spec.check(h, w)?;
    let p = spec.padding;
    let padded = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
    let views = window_views(&padded, spec, spec.out_len(h), spec.out_len(w))?;
    let mut acc = views[0].clone();
    for v in &views[1..] {
        acc = (acc + v)?;
    }
    acc.affine(1.0 / (spec.kernel * spec.kernel) as f64, 0.0)
}
