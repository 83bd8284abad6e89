//! 2-D convolution whose backward is right for every stride, padding and input size.
//!
//! candle 0.11's conv2d backward fails when `(H + 2p − k) % s != (W + 2p − k) % s` (it takes
//! `output_padding` from one dimension only), which a 257×188 spectrogram hits at the ResNet stem.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use crate::cpu::{
    add_strided, check_real, check_same_dtype, dispatch_real, for_each_chunk, slice, strided, valid_range, Real,
};

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
///
/// On the CPU this is im2col (a custom op whose backward is an exact col2im scatter-add, right
/// for every stride, padding and input size) followed by candle's differentiable batched matmul
/// with the reshaped weight. An `x` that candle does not track (a raw image, not a `Var` or
/// derived from one) gets no col2im in the backward pass. f32 and f64 only.
///
/// On other devices (the `cuda` feature) this calls [`conv2d_ref`], i.e. candle's own conv.
pub fn conv2d(x: &Tensor, w: &Tensor, spec: Conv2dSpec) -> Result<Tensor> {
    let (b, c, h, wd) = x.dims4()?;
    let (o, wc, kh, kw) = w.dims4()?;
    let Conv2dSpec { stride: s, padding: p } = spec;
    if wc != c {
        candle_core::bail!("conv2d: input has {c} channels but the kernel expects {wc}");
    }
    if s == 0 {
        candle_core::bail!("conv2d: stride must be positive");
    }
    if kh == 0 || kw == 0 {
        candle_core::bail!("conv2d: empty kernel {kh}×{kw}");
    }
    if h + 2 * p < kh || wd + 2 * p < kw {
        candle_core::bail!("conv2d: input {h}×{wd} with padding {p} is smaller than the kernel {kh}×{kw}");
    }
    if !x.device().same_device(w.device()) {
        candle_core::bail!("conv2d: input and kernel are on different devices");
    }
    if !x.device().is_cpu() {
        return conv2d_ref(x, w, spec);
    }
    check_real(x, "conv2d")?;
    check_same_dtype(&[x, w], "conv2d")?;
    let geom = Geometry { c, h, w: wd, kh, kw, stride: s, pad: p, oh: spec.out_len(h, kh), ow: spec.out_len(wd, kw) };
    let k = c * kh * kw;
    let cols = if kh == 1 && kw == 1 && s == 1 && p == 0 {
        // A 1×1 stride-1 conv reads every pixel once: the columns are the input itself.
        x.reshape((b, c, h * wd))?
    } else {
        x.contiguous()?.apply_op1(Im2Col(geom))?
    };
    let l = geom.cols();
    if o <= l {
        // A stride-0 batch on the weight: candle's matmul loops over the batch without copying
        // it, and the broadcast's backward sums the per-sample weight gradients ([B, O, K]).
        let wm = w.reshape((o, k))?.broadcast_as((b, o, k))?;
        wm.matmul(&cols)?.reshape((b, o, geom.oh, geom.ow))
    } else {
        // Few output positions per sample (deep layers): one GEMM over the whole batch,
        // `[O, K] · [K, B·L]`, whose weight gradient is one GEMM too; that beats summing B
        // per-sample [O, K] gradients once O > L.
        let cols = cols.transpose(0, 1)?.contiguous()?.reshape((k, b * l))?;
        let y = w.reshape((o, k))?.matmul(&cols)?.reshape((o, b, l))?;
        y.transpose(0, 1)?.contiguous()?.reshape((b, o, geom.oh, geom.ow))
    }
}

/// Everything the im2col and col2im kernels need besides the batch size.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    oh: usize,
    ow: usize,
}

impl Geometry {
    fn rows(&self) -> usize {
        self.c * self.kh * self.kw
    }

    fn cols(&self) -> usize {
        self.oh * self.ow
    }

    fn check_input(&self, layout: &Layout, op: &str) -> Result<usize> {
        match layout.dims() {
            &[b, c, h, w] if (c, h, w) == (self.c, self.h, self.w) => Ok(b),
            d => candle_core::bail!("{op}: expected [B, {}, {}, {}], got {d:?}", self.c, self.h, self.w),
        }
    }

    fn check_columns(&self, layout: &Layout, op: &str) -> Result<usize> {
        match layout.dims() {
            &[b, k, n] if (k, n) == (self.rows(), self.cols()) => Ok(b),
            d => candle_core::bail!("{op}: expected [B, {}, {}], got {d:?}", self.rows(), self.cols()),
        }
    }

    /// Columns `[kw, OH·OW]` for kernel row `ki` of one input plane `[H, W]`.
    fn im2col_row<T: Real>(&self, plane: &[T], ki: usize, dst: &mut [T]) {
        let (s, p, ow) = (self.stride, self.pad, self.ow);
        let (oy_lo, oy_hi) = valid_range(self.h, self.oh, ki, s, p);
        for (kj, row) in dst.chunks_exact_mut(self.cols()).enumerate() {
            let (ox_lo, ox_hi) = valid_range(self.w, ow, kj, s, p);
            if ox_lo == ox_hi {
                // This tap reads only padding.
                row.fill(T::ZERO);
                continue;
            }
            row[..oy_lo * ow].fill(T::ZERO);
            row[oy_hi * ow..].fill(T::ZERO);
            for (oy, out) in row.chunks_exact_mut(ow).enumerate().take(oy_hi).skip(oy_lo) {
                let iy = oy * s + ki - p;
                let src = &plane[iy * self.w..(iy + 1) * self.w];
                out[..ox_lo].fill(T::ZERO);
                out[ox_hi..].fill(T::ZERO);
                let start = ox_lo * s + kj - p;
                let out = &mut out[ox_lo..ox_hi];
                if s == 1 {
                    out.copy_from_slice(&src[start..start + out.len()]);
                } else {
                    let n = out.len();
                    for (d, v) in out.iter_mut().zip(strided(src, start, s, n)) {
                        *d = v;
                    }
                }
            }
        }
    }

    /// Adds the columns `[kh·kw, OH·OW]` of one channel back onto its input plane `[H, W]`.
    fn col2im_plane<T: Real>(&self, cols: &[T], plane: &mut [T]) {
        let (s, p, ow) = (self.stride, self.pad, self.ow);
        plane.fill(T::ZERO);
        for (r, row) in cols.chunks_exact(self.cols()).enumerate() {
            let (ki, kj) = (r / self.kw, r % self.kw);
            let (oy_lo, oy_hi) = valid_range(self.h, self.oh, ki, s, p);
            let (ox_lo, ox_hi) = valid_range(self.w, ow, kj, s, p);
            if ox_lo == ox_hi {
                continue;
            }
            for (oy, src) in row.chunks_exact(ow).enumerate().take(oy_hi).skip(oy_lo) {
                let iy = oy * s + ki - p;
                let dst = &mut plane[iy * self.w..(iy + 1) * self.w];
                let start = ox_lo * s + kj - p;
                let src = &src[ox_lo..ox_hi];
                if s == 1 {
                    for (d, v) in dst[start..start + src.len()].iter_mut().zip(src) {
                        *d += *v;
                    }
                } else {
                    add_strided(dst, start, s, src.len(), src.iter().copied());
                }
            }
        }
    }
}

/// `x [B, C, H, W]` to columns `[B, C·kh·kw, OH·OW]`: row `(c, ki, kj)` holds the input pixel
/// under kernel tap `(ki, kj)` of channel `c` for every output position, zero in the padding.
struct Im2Col(Geometry);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "agm-im2col"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let b = g.check_input(layout, self.name())?;
        dispatch_real!(storage, self.name(), T => {
            let x = slice::<T>(storage, layout, self.name())?;
            let mut out = vec![T::ZERO; b * g.rows() * g.cols()];
            let plane = g.h * g.w;
            // One job per (sample, channel, kernel row): enough pieces to split a batch of one.
            for_each_chunk(&mut out, g.kw * g.cols(), g.kw * g.cols(), |i, dst| {
                let bc = i / g.kh;
                g.im2col_row(&x[bc * plane..(bc + 1) * plane], i % g.kh, dst);
            });
            Ok((T::to_cpu_storage_owned(out), Shape::from((b, g.rows(), g.cols()))))
        })
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&Col2Im(self.0))?))
    }
}

/// The adjoint of [`Im2Col`]: columns `[B, C·kh·kw, OH·OW]` scatter-added onto `[B, C, H, W]`.
struct Col2Im(Geometry);

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "agm-col2im"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let b = g.check_columns(layout, self.name())?;
        dispatch_real!(storage, self.name(), T => {
            let cols = slice::<T>(storage, layout, self.name())?;
            let mut out = vec![T::ZERO; b * g.c * g.h * g.w];
            let per_channel = g.kh * g.kw * g.cols();
            // One job per (sample, channel) plane: planes never overlap, so no atomics.
            for_each_chunk(&mut out, g.h * g.w, per_channel, |i, plane| {
                g.col2im_plane(&cols[i * per_channel..(i + 1) * per_channel], plane);
            });
            Ok((T::to_cpu_storage_owned(out), Shape::from((b, g.c, g.h, g.w))))
        })
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&Im2Col(self.0))?))
    }
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
