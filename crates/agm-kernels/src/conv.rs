//! 2-D convolution whose backward is right for every stride, padding and input size.
//!
//! candle 0.11's conv2d backward fails when `(H + 2p − k) % s != (W + 2p − k) % s` (it takes
//! `output_padding` from one dimension only), which a 257×188 spectrogram hits at the ResNet stem.

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
#[cfg(any(test, feature = "cuda"))]
use candle_core::CustomOp1;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use crate::backward::param_grad;
use crate::cpu::{
    add_into, add_strided, check_real, check_same_dtype, collect_chunks, collect_chunks_reserving, dispatch_real,
    matmul, matmul_into, same_storage_dtype, slice, strided, valid_range, Groups, Real,
};
use crate::own_kernels;
use crate::winograd::Winograd;
use rayon::prelude::*;

/// Square-kernel 2-D convolution parameters, PyTorch's `nn.Conv2d(stride, padding)` with one
/// value for both spatial dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dSpec {
    /// Step between kernel positions, the same along height and width; at least 1.
    pub stride: usize,
    /// Zeros added on each side of both spatial dimensions.
    pub padding: usize,
}

impl Conv2dSpec {
    /// A spec with this stride and padding.
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
/// On the CPU this is one custom op. f32 3×3 stride-1 convolutions whose output has 25 or more
/// 2×2 tiles (10×10 and up) run as Winograd F(2×2, 3×3) (`winograd.rs`: 16 GEMMs over the
/// transformed tiles, 2.25× fewer multiplications, the same samples-per-thread grouping, a
/// result within a few ulps of the direct sum) unless the precision is `fp32-strict`. Every
/// other convolution is im2col into columns `[C·kh·kw, OH·OW]` per sample and a GEMM with the
/// weight. Each thread takes whole samples (or groups of a few small ones), so their
/// columns stay in its cache; a batch with fewer groups than threads runs as one multithreaded
/// GEMM over the whole batch's columns. The op saves only its input (which candle's graph holds
/// anyway), not the columns, which are `kh·kw / stride²` times larger: its backward recomputes
/// them from the input for the weight gradient's GEMM, and the input gradient is a GEMM and an
/// exact col2im scatter-add, right for every stride, padding and input size. Neither the columns
/// nor their gradient ever enter candle's graph, so the backward pass never zero-fills and
/// accumulates those large tensors. An `x` that candle does not track (a raw image, not a `Var`
/// or derived from one) gets no input gradient. f32 and f64 only.
///
/// On CUDA (the `cuda` feature) it is one op whose forward and two gradients are cuDNN calls
/// (saving, like the CPU op, only its operands). Without cuDNN it is a composition that candle's
/// autograd differentiates: an im2col op (whose backward is the col2im gather), cuBLAS's GEMM
/// through candle's matmul, and a reorder to `[B, O, OH, OW]`. An untracked `x` gets no input
/// gradient on either path. Elsewhere (Metal) this calls [`conv2d_ref`], i.e. candle's own conv.
///
/// The thread's [`crate::Precision`] applies: TF32 on CUDA unless strict, bf16 operands and
/// result for `bf16`.
pub fn conv2d(x: &Tensor, w: &Tensor, spec: Conv2dSpec) -> Result<Tensor> {
    let (_, c, h, wd) = x.dims4()?;
    let (_, wc, kh, kw) = w.dims4()?;
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
    if !own_kernels(x.device()) {
        return conv2d_ref(x, w, spec);
    }
    check_real(x, "conv2d")?;
    check_same_dtype(&[x, w], "conv2d")?;
    let geom = Geometry::new((c, h, wd), (kh, kw), spec);
    if crate::precision::wants_bf16(x) {
        return conv2d_bf16(x, w, geom);
    }
    conv2d_op(x, w, geom)
}

/// [`conv2d`] in the operands' dtype: the fused op on the CPU; on CUDA cuDNN, or the im2col
/// composition where cuDNN is missing.
fn conv2d_op(x: &Tensor, w: &Tensor, geom: Geometry) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        if let Some(y) = cudnn_ops::try_conv(x, w, geom)? {
            return Ok(y);
        }
        return im2col_matmul(x, w, geom);
    }
    let winograd = geom.winograd(x.dtype());
    x.contiguous()?.apply_op2(&w.contiguous()?, Conv2d { geom, winograd })
}

/// [`conv2d`] with bf16 operands and result ([`crate::Precision::Bf16`]): cuDNN's bf16
/// convolution on CUDA; elsewhere (the CPU, or CUDA without cuDNN) the f32 op between roundings.
fn conv2d_bf16(x: &Tensor, w: &Tensor, geom: Geometry) -> Result<Tensor> {
    use crate::precision::round_bf16;
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        let (xb, wb) = (x.to_dtype(candle_core::DType::BF16)?, w.to_dtype(candle_core::DType::BF16)?);
        if let Some(y) = cudnn_ops::try_conv(&xb, &wb, geom)? {
            return y.to_dtype(candle_core::DType::F32);
        }
    }
    round_bf16(&conv2d_op(&round_bf16(x)?, &round_bf16(w)?, geom)?)
}

/// [`conv2d`] through the im2col composition even where cuDNN is available: the reference the
/// CUDA tests compare cuDNN with, and the path taken without cuDNN.
#[cfg(feature = "cuda")]
pub fn conv2d_im2col(x: &Tensor, w: &Tensor, spec: Conv2dSpec) -> Result<Tensor> {
    let (_, c, h, wd) = x.dims4()?;
    let (_, _, kh, kw) = w.dims4()?;
    im2col_matmul(x, w, Geometry::new((c, h, wd), (kh, kw), spec))
}

/// [`conv2d`] as `w · im2col(x)` from an im2col op and candle's matmul, differentiated by
/// candle: the CUDA path without cuDNN (cuBLAS does the GEMMs), also run on the CPU by the unit
/// tests.
#[cfg(any(test, feature = "cuda"))]
fn im2col_matmul(x: &Tensor, w: &Tensor, geom: Geometry) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        crate::precision::apply_to_cublas(None);
    }
    let (b, o) = (x.dim(0)?, w.dim(0)?);
    // candle's graph keeps `cols` for the weight gradient (matmul's backward); the CPU op
    // recomputes them instead.
    let cols = x.contiguous()?.apply_op1(Im2Col(geom))?;
    let y = w.reshape((o, geom.rows()))?.matmul(&cols)?;
    y.reshape((o, b, geom.oh, geom.ow))?.transpose(0, 1)?.contiguous()
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
    /// The geometry of input planes `(C, H, W)` under a `(kh, kw)` kernel.
    fn new((c, h, w): (usize, usize, usize), (kh, kw): (usize, usize), spec: Conv2dSpec) -> Self {
        let Conv2dSpec { stride, padding: pad } = spec;
        Self { c, h, w, kh, kw, stride, pad, oh: spec.out_len(h, kh), ow: spec.out_len(w, kw) }
    }

    /// The Winograd form of this convolution, where the CPU op takes it: 3×3 f32 kernels at
    /// stride 1 on planes large enough to pay, unless the thread's precision is
    /// [`crate::Precision::Fp32Strict`]. f64 stays on the direct im2col path, the exact
    /// reference the tests compare with.
    fn winograd(&self, dtype: candle_core::DType) -> Option<Winograd> {
        let eligible = dtype == candle_core::DType::F32
            && (self.kh, self.kw, self.stride) == (3, 3, 1)
            && crate::precision() != crate::Precision::Fp32Strict;
        eligible.then(|| Winograd::new((self.c, self.h, self.w), self.pad)).flatten()
    }

    /// Rows of the column matrix: `C·kh·kw`.
    fn rows(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Input elements per sample: `C·H·W`.
    fn sample_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Output positions per sample: `OH·OW`.
    fn positions(&self) -> usize {
        self.oh * self.ow
    }

    fn check_input(&self, layout: &Layout, op: &str) -> Result<usize> {
        match layout.dims() {
            &[b, c, h, w] if (c, h, w) == (self.c, self.h, self.w) => Ok(b),
            d => candle_core::bail!("{op}: expected input [B, {}, {}, {}], got {d:?}", self.c, self.h, self.w),
        }
    }

    /// `(B, O)` of an output gradient `[B, O, OH, OW]`.
    fn check_output_grad(&self, layout: &Layout, op: &str) -> Result<(usize, usize)> {
        match layout.dims() {
            &[b, o, oh, ow] if (oh, ow) == (self.oh, self.ow) => Ok((b, o)),
            d => candle_core::bail!("{op}: expected gradient [B, O, {}, {}], got {d:?}", self.oh, self.ow),
        }
    }

    fn check_kernel(&self, layout: &Layout, op: &str) -> Result<usize> {
        match layout.dims() {
            &[o, c, kh, kw] if (c, kh, kw) == (self.c, self.kh, self.kw) => Ok(o),
            d => candle_core::bail!("{op}: expected kernel [O, {}, {}, {}], got {d:?}", self.c, self.kh, self.kw),
        }
    }

    /// Columns `[C·kh·kw, B·OH·OW]` of the batch `x [B, C, H, W]`: row `(c, ki, kj)` holds the
    /// input pixel under kernel tap `(ki, kj)` of channel `c` for every sample and output
    /// position, zero in the padding.
    fn im2col<T: Real>(&self, x: &[T], b: usize) -> Vec<T> {
        let n = b * self.positions();
        // One job per (channel, kernel row): enough pieces to split a batch of one.
        collect_chunks(self.rows() * n, self.kw * n, self.kw * n, |i, dst| self.im2col_rows(x, b, i, dst))
    }

    /// [`Self::im2col`] on the calling thread, into `dst` (`C·kh·kw · B·OH·OW` elements).
    fn im2col_into<T: Real>(&self, x: &[T], b: usize, dst: &mut [T]) {
        let n = b * self.positions();
        for (i, rows) in dst.chunks_exact_mut(self.kw * n).enumerate() {
            self.im2col_rows(x, b, i, rows);
        }
    }

    /// The `kw` column rows of channel `i / kh`, kernel row `i % kh`.
    fn im2col_rows<T: Real>(&self, x: &[T], b: usize, i: usize, dst: &mut [T]) {
        let (n, plane) = (b * self.positions(), self.h * self.w);
        let (c, ki) = (i / self.kh, i % self.kh);
        for (kj, row) in dst.chunks_exact_mut(n).enumerate() {
            for (bi, out) in row.chunks_exact_mut(self.positions()).enumerate() {
                let start = (bi * self.c + c) * plane;
                self.im2col_tap(&x[start..start + plane], ki, kj, out);
            }
        }
    }

    /// The `OH·OW` pixels of one input plane `[H, W]` under kernel tap `(ki, kj)`.
    fn im2col_tap<T: Real>(&self, plane: &[T], ki: usize, kj: usize, out: &mut [T]) {
        let (s, p, ow) = (self.stride, self.pad, self.ow);
        let (oy_lo, oy_hi) = valid_range(self.h, self.oh, ki, s, p);
        let (ox_lo, ox_hi) = valid_range(self.w, ow, kj, s, p);
        if ox_lo == ox_hi {
            // This tap reads only padding.
            out.fill(T::ZERO);
            return;
        }
        out[..oy_lo * ow].fill(T::ZERO);
        out[oy_hi * ow..].fill(T::ZERO);
        if s == 1 && ow == self.w {
            // Input and output rows have one length, so the tap is the plane shifted by a
            // constant: one copy for all rows (short rows would each be a call), then the
            // columns that wrapped into a neighbouring row zeroed.
            let shift = (ki * self.w + kj) as isize - (p * self.w + p) as isize;
            let (start, end) = (oy_lo * ow, oy_hi * ow);
            let lo = start.max((-shift).max(0) as usize).min(end);
            let hi = end.min((plane.len() as isize - shift).max(0) as usize).max(lo);
            out[start..lo].fill(T::ZERO);
            out[hi..end].fill(T::ZERO);
            if lo < hi {
                out[lo..hi].copy_from_slice(&plane[(lo as isize + shift) as usize..(hi as isize + shift) as usize]);
            }
            for row in out[start..end].chunks_exact_mut(ow) {
                row[..ox_lo].fill(T::ZERO);
                row[ox_hi..].fill(T::ZERO);
            }
            return;
        }
        for (oy, out) in out.chunks_exact_mut(ow).enumerate().take(oy_hi).skip(oy_lo) {
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

    /// The adjoint of [`Self::im2col`]: columns `[C·kh·kw, B·OH·OW]` scatter-added onto
    /// `[B, C, H, W]`.
    fn col2im<T: Real>(&self, cols: &[T], b: usize) -> Vec<T> {
        let taps = self.kh * self.kw;
        // One job per (sample, channel) plane: planes never overlap, so no atomics.
        collect_chunks(b * self.sample_len(), self.h * self.w, taps * self.positions(), |i, plane| {
            self.col2im_job(cols, b, i, plane)
        })
    }

    /// [`Self::col2im`] on the calling thread, added onto `dst` (`[B, C, H, W]`).
    fn col2im_add<T: Real>(&self, cols: &[T], b: usize, dst: &mut [T]) {
        for (i, plane) in dst.chunks_exact_mut(self.h * self.w).enumerate() {
            self.col2im_job(cols, b, i, plane);
        }
    }

    /// Plane `i` (sample `i / C`, channel `i % C`) of [`Self::col2im`].
    fn col2im_job<T: Real>(&self, cols: &[T], b: usize, i: usize, plane: &mut [T]) {
        let (n, taps) = (b * self.positions(), self.kh * self.kw);
        let (bi, c) = (i / self.c, i % self.c);
        let channel = &cols[c * taps * n..(c + 1) * taps * n];
        self.col2im_plane(channel, n, bi * self.positions(), plane);
    }

    /// Adds the `kh·kw` rows of one channel (`n` apart, this sample's positions from `offset`)
    /// back onto its input plane `[H, W]`.
    fn col2im_plane<T: Real>(&self, channel: &[T], n: usize, offset: usize, plane: &mut [T]) {
        let (s, p, ow) = (self.stride, self.pad, self.ow);
        for r in 0..self.kh * self.kw {
            let (ki, kj) = (r / self.kw, r % self.kw);
            let (oy_lo, oy_hi) = valid_range(self.h, self.oh, ki, s, p);
            let (ox_lo, ox_hi) = valid_range(self.w, ow, kj, s, p);
            if ox_lo == ox_hi {
                continue;
            }
            let row = &channel[r * n + offset..r * n + offset + self.positions()];
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

/// Output columns a sample group spans at least: fewer make each GEMM too thin to keep the
/// vector units busy.
const MIN_GROUP_COLUMNS: usize = 96;

/// The three products of a convolution on CPU slices: `x [B, C, H, W]`, `w [O, C·kh·kw]`,
/// `y` and `dy [B, O, OH·OW]`. Each runs by sample group, as [`Geometry::groups`] plans, and
/// the whole batch (or what the groups leave) as one GEMM.
impl Geometry {
    /// The sample groups of a batch of `b`, `None` when it runs as one GEMM.
    ///
    /// Grouped, each thread takes whole sample groups: their columns (one sample's, or a few
    /// small ones') stay in cache between im2col and the single-threaded GEMM that reads them,
    /// where the whole batch's columns would go out to memory and back. Every thread gets the
    /// same number of groups, each of at least [`MIN_GROUP_COLUMNS`] columns; the samples left
    /// over (AGM's zero sample after a batch of 8 on 2 threads) run as one multithreaded GEMM,
    /// as does a batch too small for a group per thread (or a small image), which also splits
    /// large weights better.
    fn groups(&self, b: usize) -> Option<Groups> {
        Groups::plan(b, MIN_GROUP_COLUMNS.div_ceil(self.positions().max(1)))
    }

    fn forward<T: Real>(&self, x: &[T], w: &[T], (b, o): (usize, usize), groups: Option<Groups>) -> Vec<T> {
        let (k, l) = (self.rows(), self.positions());
        let Some(Groups { size: g, samples }) = groups else {
            // y as [O, B·L], then reordered to [B, O, L].
            let y = matmul((o, b * l, k), w, false, &self.im2col(x, b), false);
            return swap_leading(&y, o, b, l);
        };
        let mut y =
            collect_chunks_reserving(samples * o * l, (b - samples) * o * l, g * o * l, g * o * l * k, |i, y| {
                let cols = self.group_columns(x, i * g, g);
                if g == 1 {
                    matmul_into(y, (o, l, k), (w, false), (&cols, false), false);
                } else {
                    let mut ys = vec![T::ZERO; o * g * l];
                    matmul_into(&mut ys, (o, g * l, k), (w, false), (&cols, false), false);
                    swap_leading_into(&ys, o, g, l, y);
                }
            });
        if samples < b {
            y.extend(self.forward(&x[samples * self.sample_len()..], w, (b - samples, o), None));
        }
        y
    }

    /// `dx [B, C, H, W]`: col2im of `wᵀ · dy`.
    fn input_grad<T: Real>(&self, dy: &[T], w: &[T], (b, o): (usize, usize), groups: Option<Groups>) -> Vec<T> {
        let (k, l, sample) = (self.rows(), self.positions(), self.sample_len());
        let Some(Groups { size: g, samples }) = groups else {
            let dcols = matmul((k, b * l, o), w, true, &swap_leading(dy, b, o, l), false);
            return self.col2im(&dcols, b);
        };
        let mut dx =
            collect_chunks_reserving(samples * sample, (b - samples) * sample, g * sample, g * o * l * k, |i, dx| {
                let dy = channel_major(&dy[i * g * o * l..(i + 1) * g * o * l], g, o, l);
                let mut dcols = vec![T::ZERO; k * g * l];
                matmul_into(&mut dcols, (k, g * l, o), (w, true), (&dy, false), false);
                self.col2im_add(&dcols, g, dx);
            });
        if samples < b {
            dx.extend(self.input_grad(&dy[samples * o * l..], w, (b - samples, o), None));
        }
        dx
    }

    /// `dw [O, C·kh·kw]`: `dy · colsᵀ`, the columns recomputed from `x`. Grouped, each thread
    /// sums its groups' products into its own gradient, and the threads' gradients add up.
    fn weight_grad<T: Real>(&self, dy: &[T], x: &[T], (b, o): (usize, usize), groups: Option<Groups>) -> Vec<T> {
        let (k, l) = (self.rows(), self.positions());
        let Some(plan @ Groups { size: g, samples }) = groups else {
            return matmul((o, k, b * l), &swap_leading(dy, b, o, l), false, &self.im2col(x, b), true);
        };
        let mut dw = (0..plan.count())
            .into_par_iter()
            // One gradient per thread.
            .with_min_len(plan.per_thread())
            .fold(
                || vec![T::ZERO; o * k],
                |mut dw, i| {
                    let cols = self.group_columns(x, i * g, g);
                    let dy = channel_major(&dy[i * g * o * l..(i + 1) * g * o * l], g, o, l);
                    matmul_into(&mut dw, (o, k, g * l), (&dy, false), (&cols, true), true);
                    dw
                },
            )
            .reduce_with(add_into)
            .unwrap_or_else(|| vec![T::ZERO; o * k]);
        if samples < b {
            let rest =
                self.weight_grad(&dy[samples * o * l..], &x[samples * self.sample_len()..], (b - samples, o), None);
            dw = add_into(dw, rest);
        }
        dw
    }

    /// The columns `[C·kh·kw, s·L]` of the `s` samples from `first` on, built on this thread.
    fn group_columns<T: Real>(&self, x: &[T], first: usize, s: usize) -> Vec<T> {
        let len = self.sample_len();
        let mut cols = vec![T::ZERO; self.rows() * s * self.positions()];
        self.im2col_into(&x[first * len..(first + s) * len], s, &mut cols);
        cols
    }
}

/// `[S, O, L]` as `[O, S·L]`, borrowed when `S` is one.
fn channel_major<T: Real>(dy: &[T], s: usize, o: usize, l: usize) -> std::borrow::Cow<'_, [T]> {
    if s == 1 {
        return std::borrow::Cow::Borrowed(dy);
    }
    let mut out = vec![T::ZERO; dy.len()];
    swap_leading_into(dy, s, o, l, &mut out);
    std::borrow::Cow::Owned(out)
}

/// `[R, C, L]` to `[C, R, L]`: swaps the two leading dimensions, in parallel.
fn swap_leading<T: Real>(src: &[T], rows: usize, cols: usize, len: usize) -> Vec<T> {
    collect_chunks(src.len(), len, len, |i, dst| swap_leading_row(src, rows, cols, len, i, dst))
}

/// [`swap_leading`] on the calling thread, into `dst`.
fn swap_leading_into<T: Real>(src: &[T], rows: usize, cols: usize, len: usize, dst: &mut [T]) {
    for (i, d) in dst.chunks_exact_mut(len).enumerate() {
        swap_leading_row(src, rows, cols, len, i, d);
    }
}

/// Row `i` of [`swap_leading`]'s output.
fn swap_leading_row<T: Real>(src: &[T], rows: usize, cols: usize, len: usize, i: usize, dst: &mut [T]) {
    let (c, r) = (i / rows, i % rows);
    dst.copy_from_slice(&src[(r * cols + c) * len..(r * cols + c + 1) * len]);
}

/// The convolution `(x, w) → y`. It holds nothing beyond its geometry: the backward pass
/// recomputes the columns from `x`, so a convolution in the graph costs its input, not its
/// columns.
struct Conv2d {
    geom: Geometry,
    winograd: Option<Winograd>,
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "agm-conv2d"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.geom;
        let b = g.check_input(xl, self.name())?;
        let o = g.check_kernel(wl, self.name())?;
        same_storage_dtype(xs, ws, self.name())?;
        dispatch_real!(xs, self.name(), T => {
            let x = slice::<T>(xs, xl, self.name())?;
            let w = slice::<T>(ws, wl, self.name())?;
            let y = match self.winograd {
                Some(wg) => wg.forward(x, w, (b, o)),
                None => g.forward(x, w, (b, o), g.groups(b)),
            };
            Ok((T::to_cpu_storage_owned(y), Shape::from((b, o, g.oh, g.ow))))
        })
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = grad.contiguous()?;
        let (geom, winograd) = (self.geom, self.winograd);
        let dx = if x.track_op() { Some(dy.apply_op2_no_bwd(w, &Conv2dInputGrad(geom, winograd))?) } else { None };
        let dw = if w.track_op() {
            param_grad(w, dy.apply_op2_no_bwd(x, &Conv2dWeightGrad(geom, winograd))?)?
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// `(dy [B, O, OH, OW], w [O, C, kh, kw]) → dx [B, C, H, W]`.
struct Conv2dInputGrad(Geometry, Option<Winograd>);

impl CustomOp2 for Conv2dInputGrad {
    fn name(&self) -> &'static str {
        "agm-conv2d-input-grad"
    }

    fn cpu_fwd(&self, ds: &CpuStorage, dl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let o = g.check_kernel(wl, self.name())?;
        let (b, grad_o) = g.check_output_grad(dl, self.name())?;
        if grad_o != o {
            candle_core::bail!("{}: gradient has {grad_o} channels but the kernel {o}", self.name());
        }
        same_storage_dtype(ds, ws, self.name())?;
        dispatch_real!(ds, self.name(), T => {
            let dy = slice::<T>(ds, dl, self.name())?;
            let w = slice::<T>(ws, wl, self.name())?;
            let dx = match self.1 {
                Some(wg) => wg.input_grad(dy, w, (b, o)),
                None => g.input_grad(dy, w, (b, o), g.groups(b)),
            };
            Ok((T::to_cpu_storage_owned(dx), Shape::from((b, g.c, g.h, g.w))))
        })
    }
}

/// `(dy [B, O, OH, OW], x [B, C, H, W]) → dw [O, C, kh, kw]`.
struct Conv2dWeightGrad(Geometry, Option<Winograd>);

impl CustomOp2 for Conv2dWeightGrad {
    fn name(&self) -> &'static str {
        "agm-conv2d-weight-grad"
    }

    fn cpu_fwd(&self, ds: &CpuStorage, dl: &Layout, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let b = g.check_input(xl, self.name())?;
        let (grad_b, o) = g.check_output_grad(dl, self.name())?;
        if grad_b != b {
            candle_core::bail!("{}: gradient and input batch sizes differ", self.name());
        }
        same_storage_dtype(ds, xs, self.name())?;
        dispatch_real!(ds, self.name(), T => {
            let dy = slice::<T>(ds, dl, self.name())?;
            let x = slice::<T>(xs, xl, self.name())?;
            let dw = match self.1 {
                Some(wg) => wg.weight_grad(dy, x, (b, o)),
                None => g.weight_grad(dy, x, (b, o), g.groups(b)),
            };
            Ok((T::to_cpu_storage_owned(dw), Shape::from((o, g.c, g.kh, g.kw))))
        })
    }
}

/// `x [B, C, H, W] → cols [C·kh·kw, B·OH·OW]` ([`Geometry::im2col`]) as an op whose backward is
/// [`Col2Im`].
#[cfg(any(test, feature = "cuda"))]
struct Im2Col(Geometry);

#[cfg(any(test, feature = "cuda"))]
impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "agm-im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let b = g.check_input(l, self.name())?;
        dispatch_real!(s, self.name(), T => {
            let cols = g.im2col(slice::<T>(s, l, self.name())?, b);
            Ok((T::to_cpu_storage_owned(cols), Shape::from((g.rows(), b * g.positions()))))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let g = self.0;
        let b = g.check_input(l, self.name())?;
        let n_cols = b * g.positions();
        dispatch_real!(s, self.name(), T => {
            let cols = gpu::run::<T>("im2col", &g, g.rows() * n_cols, n_cols, (s, l), self.name())?;
            Ok((cols, Shape::from((g.rows(), n_cols))))
        })
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&Col2Im(self.0))?))
    }
}

/// `cols [C·kh·kw, B·OH·OW] → [B, C, H, W]`, the adjoint of [`Im2Col`] ([`Geometry::col2im`]).
#[cfg(any(test, feature = "cuda"))]
struct Col2Im(Geometry);

#[cfg(any(test, feature = "cuda"))]
impl Col2Im {
    /// The batch size of columns `[C·kh·kw, B·OH·OW]`.
    fn batch(&self, layout: &Layout) -> Result<usize> {
        let g = self.0;
        match layout.dims() {
            &[rows, n] if rows == g.rows() && n % g.positions() == 0 => Ok(n / g.positions()),
            d => candle_core::bail!("agm-col2im: expected columns [{}, B·{}], got {d:?}", g.rows(), g.positions()),
        }
    }
}

#[cfg(any(test, feature = "cuda"))]
impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "agm-col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let b = self.batch(l)?;
        dispatch_real!(s, self.name(), T => {
            let dx = g.col2im(slice::<T>(s, l, self.name())?, b);
            Ok((T::to_cpu_storage_owned(dx), Shape::from((b, g.c, g.h, g.w))))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let g = self.0;
        let b = self.batch(l)?;
        let n_cols = b * g.positions();
        dispatch_real!(s, self.name(), T => {
            let dx = gpu::run::<T>("col2im", &g, b * g.c * g.h * g.w, n_cols, (s, l), self.name())?;
            Ok((dx, Shape::from((b, g.c, g.h, g.w))))
        })
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

/// The convolution and its two gradients as cuDNN calls ([`crate::cudnn`]); f32, f64 and bf16.
#[cfg(feature = "cuda")]
mod cudnn_ops {
    use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, Result, Shape, Tensor};

    use super::Geometry;
    use crate::backward::param_grad;
    use crate::cudnn::{self, Call, Direction, Shapes};

    impl Geometry {
        fn shapes(&self, b: usize, o: usize) -> Shapes {
            Shapes {
                input: [b, self.c, self.h, self.w],
                kernel: [o, self.c, self.kh, self.kw],
                output: [b, o, self.oh, self.ow],
                stride: self.stride,
                pad: self.pad,
            }
        }
    }

    /// The convolution through cuDNN, or `None` where cuDNN is not available or has just failed
    /// (then never tried again in this process).
    pub(super) fn try_conv(x: &Tensor, w: &Tensor, geom: Geometry) -> Result<Option<Tensor>> {
        if cudnn::available().is_err() {
            return Ok(None);
        }
        match x.contiguous()?.apply_op2(&w.contiguous()?, Conv(geom)) {
            Ok(y) => Ok(Some(y)),
            Err(e) => {
                cudnn::give_up(&e);
                Ok(None)
            }
        }
    }

    /// `(x, w) → y`; its backward is two [`Grad`] calls.
    struct Conv(Geometry);

    impl CustomOp2 for Conv {
        fn name(&self) -> &'static str {
            "agm-conv2d-cudnn"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            candle_core::bail!("{}: runs on CUDA only", self.name())
        }

        fn cuda_fwd(
            &self,
            xs: &CudaStorage,
            xl: &Layout,
            ws: &CudaStorage,
            wl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let g = self.0;
            let b = g.check_input(xl, self.name())?;
            let o = g.check_kernel(wl, self.name())?;
            let shapes = g.shapes(b, o);
            let call = Call {
                direction: Direction::Forward,
                shapes,
                a: (xs, xl),
                b: (ws, wl),
                out_len: b * o * g.positions(),
            };
            let y = cudnn::run(call)?;
            Ok((y, Shape::from(&shapes.output)))
        }

        fn bwd(
            &self,
            x: &Tensor,
            w: &Tensor,
            _res: &Tensor,
            grad: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>)> {
            let grad = grad.contiguous()?;
            let dx = if x.track_op() {
                Some(w.apply_op2_no_bwd(&grad, &Grad(self.0, Direction::BackwardData))?)
            } else {
                None
            };
            let dw = if w.track_op() {
                param_grad(w, x.apply_op2_no_bwd(&grad, &Grad(self.0, Direction::BackwardFilter))?)?
            } else {
                None
            };
            Ok((dx, dw))
        }
    }

    /// `(w, dy) → dx` (`BackwardData`) or `(x, dy) → dw` (`BackwardFilter`).
    struct Grad(Geometry, Direction);

    impl CustomOp2 for Grad {
        fn name(&self) -> &'static str {
            "agm-conv2d-cudnn-grad"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            candle_core::bail!("{}: runs on CUDA only", self.name())
        }

        fn cuda_fwd(&self, s: &CudaStorage, l: &Layout, ds: &CudaStorage, dl: &Layout) -> Result<(CudaStorage, Shape)> {
            let Grad(g, direction) = *self;
            let (b, o) = g.check_output_grad(dl, self.name())?;
            let shapes = g.shapes(b, o);
            let out = match direction {
                Direction::BackwardData => {
                    g.check_kernel(l, self.name())?;
                    shapes.input
                }
                _ => {
                    if g.check_input(l, self.name())? != b {
                        candle_core::bail!("{}: gradient and input batch sizes differ", self.name());
                    }
                    shapes.kernel
                }
            };
            let result = cudnn::run(Call { direction, shapes, a: (s, l), b: (ds, dl), out_len: out.iter().product() })?;
            Ok((result, Shape::from(&out)))
        }
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, Layout, Result};

    use super::Geometry;
    use crate::cuda::{alloc, elementwise, storage, view, CudaReal, CONV};

    /// Runs `kernel(total, n_cols, geometry…, src, out)` of `cuda/conv.cu` (im2col or col2im),
    /// one thread per each of the `total` output elements; `n_cols` is the columns' `B·OH·OW`.
    pub(super) fn run<T: CudaReal>(
        kernel: &str,
        g: &Geometry,
        total: usize,
        n_cols: usize,
        (src, layout): (&CudaStorage, &Layout),
        op: &str,
    ) -> Result<CudaStorage> {
        let dev = src.device();
        let input = view::<T>(src, layout, op)?;
        let mut out = alloc::<T>(dev, total)?;
        let func = CONV.func::<T>(dev, kernel)?;
        let Geometry { c, h, w, kh, kw, stride, pad, oh, ow } = *g;
        let mut launch = func.builder();
        launch.arg(&total).arg(&n_cols).arg(&c).arg(&h).arg(&w).arg(&kh).arg(&kw);
        launch.arg(&stride).arg(&pad).arg(&oh).arg(&ow).arg(&input).arg(&mut out);
        // SAFETY: both kernels read within the `[B, C, H, W]` input or `[C·kh·kw, n_cols]` columns
        // that `layout` checked, and write each of the `total` elements of `out` once.
        unsafe { launch.launch(elementwise(total)) }.w()?;
        Ok(storage(out, dev))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Result, Tensor, Var};

    use super::{conv2d, im2col_matmul, Conv2dSpec, Geometry, Groups, Winograd};

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
    }

    fn wave(n: usize, scale: f64, shift: f64) -> Vec<f64> {
        (0..n).map(|i| (i as f64 * scale + shift).sin()).collect()
    }

    fn max_gap(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    /// Every grouping (one sample per group up to the whole batch in one group, with the rest of
    /// the batch as one GEMM) gives the whole-batch GEMM's output and gradients, also when the
    /// work runs on several threads.
    #[test]
    fn sample_groups_match_the_whole_batch() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("thread pool");
        pool.install(|| {
            for (b, c, h, w, o, k, s, p) in [
                (5, 3, 9, 8, 4, 3, 1, 1),
                (4, 1, 37, 28, 3, 7, 2, 3),
                (3, 2, 6, 11, 5, 1, 2, 0),
                (7, 2, 5, 8, 3, 3, 2, 2),
            ] {
                let g = Geometry::new((c, h, w), (k, k), Conv2dSpec::new(s, p));
                let x = wave(b * c * h * w, 0.37, 0.1);
                let kernel = wave(o * g.rows(), 0.53, 0.7);
                let dy = wave(b * o * g.positions(), 0.29, 0.3);
                let y = g.forward(&x, &kernel, (b, o), None);
                let dx = g.input_grad(&dy, &kernel, (b, o), None);
                let dw = g.weight_grad(&dy, &x, (b, o), None);
                for size in 1..=b {
                    for samples in (size..=b).step_by(size) {
                        let groups = Some(Groups { size, samples });
                        let case = format!("case {b} {c} {h} {w} {o} {k} {s} {p}, {groups:?}");
                        assert!(max_gap(&y, &g.forward(&x, &kernel, (b, o), groups)) < 1e-12, "output, {case}");
                        assert!(max_gap(&dx, &g.input_grad(&dy, &kernel, (b, o), groups)) < 1e-12, "dx, {case}");
                        assert!(max_gap(&dw, &g.weight_grad(&dy, &x, (b, o), groups)) < 1e-12, "dw, {case}");
                    }
                }
            }
        });
    }

    /// Every thread gets as many groups as the others, each with enough columns; the samples
    /// left over, or a batch too small for a group per thread, run as one GEMM.
    #[test]
    fn groups_give_every_thread_the_same_work() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("thread pool");
        pool.install(|| {
            let spec = Conv2dSpec::new(1, 1);
            let large = Geometry::new((8, 28, 28), (3, 3), spec);
            assert_eq!(large.groups(8), Some(Groups { size: 1, samples: 8 }));
            assert_eq!(large.groups(9), Some(Groups { size: 1, samples: 8 }));
            assert_eq!(large.groups(1), None);
            // 7×7 outputs: two samples reach the minimum of columns.
            let small = Geometry::new((8, 7, 7), (3, 3), spec);
            assert_eq!(small.groups(9), Some(Groups { size: 2, samples: 8 }));
            assert_eq!(small.groups(3), None);
            // 4×4 outputs: six samples per group, fewer than two groups in a batch of 8.
            assert_eq!(Geometry::new((8, 4, 4), (3, 3), spec).groups(8), None);
        });
    }

    /// The Winograd form gives the direct convolution's output and both gradients to f64
    /// rounding: odd and even sizes, paddings 0 to 2, one-tile planes, batches that leave
    /// samples over after the groups, on pools of 1 and 3 threads.
    #[test]
    fn winograd_matches_the_direct_convolution() {
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
            pool.install(|| {
                for (b, c, h, w, o, p) in [
                    (2, 3, 7, 9, 4, 1),
                    (1, 2, 5, 5, 3, 0),
                    (5, 4, 6, 8, 5, 2),
                    (7, 5, 3, 4, 2, 1),
                    (1, 1, 1, 1, 1, 1),
                    (7, 2, 12, 11, 3, 1),
                ] {
                    let g = Geometry::new((c, h, w), (3, 3), Conv2dSpec::new(1, p));
                    let wg = Winograd::any_size((c, h, w), p);
                    let x = wave(b * c * h * w, 0.37, 0.1);
                    let kernel = wave(o * g.rows(), 0.53, 0.7);
                    let dy = wave(b * o * g.positions(), 0.29, 0.3);
                    let case = format!("case {b} {c} {h} {w} {o} {p} on {threads} threads");
                    let gap = max_gap(&g.forward(&x, &kernel, (b, o), None), &wg.forward(&x, &kernel, (b, o)));
                    assert!(gap < 1e-12, "output off by {gap:e}, {case}");
                    let gap = max_gap(&g.input_grad(&dy, &kernel, (b, o), None), &wg.input_grad(&dy, &kernel, (b, o)));
                    assert!(gap < 1e-12, "dx off by {gap:e}, {case}");
                    let gap = max_gap(&g.weight_grad(&dy, &x, (b, o), None), &wg.weight_grad(&dy, &x, (b, o)));
                    assert!(gap < 1e-12, "dw off by {gap:e}, {case}");
                }
            });
        }
    }

    /// Winograd takes f32 3×3 stride-1 convolutions on planes of 25 tiles or more (ResNet-18's
    /// 14×14 stage, not its 7×7 one), except under `fp32-strict`; f64 stays direct.
    #[test]
    fn winograd_only_where_it_pays_and_never_when_strict() {
        use candle_core::DType::{F32, F64};
        let spec = Conv2dSpec::new(1, 1);
        assert!(Geometry::new((128, 14, 14), (3, 3), spec).winograd(F32).is_some());
        assert!(Geometry::new((1, 257, 188), (3, 3), spec).winograd(F32).is_some());
        assert!(Geometry::new((256, 7, 7), (3, 3), spec).winograd(F32).is_none());
        assert!(Geometry::new((128, 14, 14), (3, 3), spec).winograd(F64).is_none());
        assert!(Geometry::new((128, 28, 28), (3, 3), Conv2dSpec::new(2, 1)).winograd(F32).is_none());
        assert!(Geometry::new((128, 28, 28), (5, 5), Conv2dSpec::new(1, 2)).winograd(F32).is_none());
        let _strict = crate::PrecisionGuard::new(crate::Precision::Fp32Strict);
        assert!(Geometry::new((128, 14, 14), (3, 3), spec).winograd(F32).is_none());
    }

    /// f32 convolutions through Winograd stay within f32 rounding of the f64 direct result.
    #[test]
    fn f32_winograd_convolution_is_close_to_f64() -> Result<()> {
        let dev = Device::Cpu;
        let (b, c, h, o) = (3, 8, 16, 6);
        let x = Var::from_slice(&wave(b * c * h * h, 0.37, 0.1), (b, c, h, h), &dev)?;
        let w = Var::from_slice(&wave(o * c * 9, 0.53, 0.7), (o, c, 3, 3), &dev)?;
        let spec = Conv2dSpec::new(1, 1);
        assert!(Geometry::new((c, h, h), (3, 3), spec).winograd(candle_core::DType::F32).is_some());
        let r = Tensor::from_slice(&wave(b * o * h * h, 0.29, 0.3), (b, o, h, h), &dev)?;
        let y = conv2d(x.as_tensor(), w.as_tensor(), spec)?;
        let g = crate::backward(&(&y * &r)?.sum_all()?)?;
        let (x32, w32) = (
            Var::from_tensor(&x.to_dtype(candle_core::DType::F32)?)?,
            Var::from_tensor(&w.to_dtype(candle_core::DType::F32)?)?,
        );
        let y32 = conv2d(x32.as_tensor(), w32.as_tensor(), spec)?;
        let g32 = crate::backward(&(&y32 * &r.to_dtype(candle_core::DType::F32)?)?.sum_all()?)?;
        let f64_of = |t: &Tensor| t.to_dtype(candle_core::DType::F64);
        // Sums of 72 products of magnitude ≤ 1 (output, dx) and 768 (dw), in f32.
        assert!(max_abs_diff(&y, &f64_of(&y32)?)? < 1e-5);
        assert!(max_abs_diff(g.get(x.as_tensor()).unwrap(), &f64_of(g32.get(x32.as_tensor()).unwrap())?)? < 1e-5);
        assert!(max_abs_diff(g.get(w.as_tensor()).unwrap(), &f64_of(g32.get(w32.as_tensor()).unwrap())?)? < 1e-4);
        Ok(())
    }

    /// The im2col composition (the CUDA path, here run on the CPU) agrees with the fused CPU op in
    /// its output and both gradients, unequal stride remainders included.
    #[test]
    fn im2col_composition_matches_the_fused_op() -> Result<()> {
        let dev = Device::Cpu;
        for (b, c, h, w, o, k, s, p) in
            [(2, 3, 9, 8, 4, 3, 1, 1), (1, 1, 37, 28, 3, 7, 2, 3), (3, 2, 6, 11, 5, 1, 2, 0), (2, 2, 5, 8, 3, 3, 2, 2)]
        {
            let spec = Conv2dSpec::new(s, p);
            let n = b * c * h * w;
            let x = Var::from_tensor(
                &Tensor::arange(0.0, n as f64, &dev)?.affine(0.37, 0.1)?.sin()?.reshape((b, c, h, w))?,
            )?;
            let m = o * c * k * k;
            let kernel = Tensor::arange(0.0, m as f64, &dev)?.affine(0.53, 0.7)?.cos()?.reshape((o, c, k, k))?;
            let wv = Var::from_tensor(&kernel)?;
            let geom = Geometry::new((c, h, w), (k, k), spec);
            let fused = conv2d(x.as_tensor(), wv.as_tensor(), spec)?;
            let composed = im2col_matmul(x.as_tensor(), wv.as_tensor(), geom)?;
            assert_eq!(fused.dims(), composed.dims());
            assert!(max_abs_diff(&fused, &composed)? < 1e-12, "output, case {b} {c} {h} {w} {o} {k} {s} {p}");
            let weight = Tensor::arange(0.0, fused.elem_count() as f64, &dev)?
                .affine(0.29, 0.0)?
                .sin()?
                .reshape(fused.dims())?;
            let g_fused = (&fused * &weight)?.sum_all()?.backward()?;
            let g_composed = (&composed * &weight)?.sum_all()?.backward()?;
            for (what, v) in [("x", x.as_tensor()), ("w", wv.as_tensor())] {
                let (want, got) =
                    (g_fused.get(v).expect("fused gradient"), g_composed.get(v).expect("composed gradient"));
                assert!(max_abs_diff(want, got)? < 1e-12, "gradient of {what}, case {b} {c} {h} {w} {o} {k} {s} {p}");
            }
        }
        Ok(())
    }
}
