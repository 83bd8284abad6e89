//! Max and average pooling with padding and correct gradients.
//!
//! candle 0.11's `max_pool2d` has no padding, no backward when kernel ≠ stride, and scales the
//! gradient by 1/k²; its `avg_pool2d` backward fails when kernel ≠ stride.

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};

use crate::cpu::{
    add_strided, check_real, collect_chunks, dispatch_real, same_storage_dtype, slice, strided, valid_range, Real,
};
use crate::own_kernels;

/// Square pooling window: PyTorch's `kernel_size`, `stride`, `padding` (floor mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dSpec {
    /// Window side length; at least 1.
    pub kernel: usize,
    /// Step between windows, the same along height and width; at least 1.
    pub stride: usize,
    /// Padding on each side of both spatial dimensions, at most `kernel / 2` (as PyTorch requires).
    pub padding: usize,
}

impl Pool2dSpec {
    /// A spec with this kernel size, stride and padding.
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Self {
        Self { kernel, stride, padding }
    }

    /// Output size of one spatial dimension of length `n` (floor mode).
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
///
/// On the CPU a custom op: floor mode, and PyTorch's tie rule in the backward pass (the first
/// maximal element of a window in row-major order gets the whole gradient; NaN wins). f32 and
/// f64 only. On CUDA (the `cuda` feature) the same op with CUDA kernels and the same semantics;
/// elsewhere (Metal) this calls [`max_pool2d_ref`].
pub fn max_pool2d(x: &Tensor, spec: Pool2dSpec) -> Result<Tensor> {
    let geom = PoolGeometry::new(x, spec)?;
    if !own_kernels(x.device()) {
        return max_pool2d_ref(x, spec);
    }
    check_real(x, "max_pool2d")?;
    x.contiguous()?.apply_op1(MaxPool(geom))
}

/// Average pooling of `x [B, C, H, W]`; padding counts as zeros in the mean
/// (PyTorch's `count_include_pad=True`).
///
/// On the CPU a custom op with an exact backward for every kernel, stride and padding. f32 and
/// f64 only. On CUDA (the `cuda` feature) the same op with CUDA kernels and the same semantics;
/// elsewhere (Metal) this calls [`avg_pool2d_ref`].
pub fn avg_pool2d(x: &Tensor, spec: Pool2dSpec) -> Result<Tensor> {
    let geom = PoolGeometry::new(x, spec)?;
    if !own_kernels(x.device()) {
        return avg_pool2d_ref(x, spec);
    }
    check_real(x, "avg_pool2d")?;
    x.contiguous()?.apply_op1(AvgPool(geom))
}

/// One pooling problem without its batch and channel sizes.
#[derive(Clone, Copy, Debug)]
struct PoolGeometry {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    k: usize,
    s: usize,
    p: usize,
}

impl PoolGeometry {
    fn new(x: &Tensor, spec: Pool2dSpec) -> Result<Self> {
        let (_, _, h, w) = x.dims4()?;
        spec.check(h, w)?;
        if h == 0 || w == 0 {
            // All-padding windows would have no element to send the gradient to.
            candle_core::bail!("pool2d: empty input {h}×{w}");
        }
        let (k, s, p) = (spec.kernel, spec.stride, spec.padding);
        Ok(Self { h, w, oh: spec.out_len(h), ow: spec.out_len(w), k, s, p })
    }

    /// `[B, C]` of a layout `[B, C, H, W]` with this geometry's `H, W` (or `OH, OW` for outputs).
    fn planes(&self, layout: &Layout, output: bool, op: &str) -> Result<(usize, usize)> {
        let (h, w) = if output { (self.oh, self.ow) } else { (self.h, self.w) };
        match layout.dims() {
            &[b, c, hh, ww] if (hh, ww) == (h, w) => Ok((b, c)),
            d => candle_core::bail!("{op}: expected [B, C, {h}, {w}], got {d:?}"),
        }
    }

    /// The input rows (or columns, with `n = W`) covered by output row `o`, clipped to the input.
    /// Never empty: the padding is at most half the kernel.
    #[inline]
    fn window(&self, o: usize, n: usize) -> (usize, usize) {
        let start = o * self.s;
        (start.saturating_sub(self.p), (start + self.k - self.p).min(n))
    }

    /// The column taps of the window: for kernel column `kj`, the output columns `lo..hi` that
    /// read input columns `start, start + s, …`. Taps that only see padding are left out; the
    /// rest stay in `kj` order, so a scan over window rows and then taps is row-major.
    fn taps(&self) -> Vec<(usize, usize, usize)> {
        (0..self.k)
            .filter_map(|kj| {
                let (lo, hi) = valid_range(self.w, self.ow, kj, self.s, self.p);
                (lo < hi).then(|| (lo, hi, lo * self.s + kj - self.p))
            })
            .collect()
    }

    /// Max pooling of one plane `[H, W]` into `out [OH, OW]`, one output row at a time so the
    /// inner loop runs along a row without branches on the window's edges. NaN wins, as in PyTorch.
    fn max_plane<T: Real>(&self, taps: &[(usize, usize, usize)], plane: &[T], out: &mut [T]) {
        let mut gathered = Vec::new();
        for (oy, row) in out.chunks_exact_mut(self.ow).enumerate() {
            row.fill(T::NEG_INF);
            let (y0, y1) = self.window(oy, self.h);
            for src in plane[y0 * self.w..y1 * self.w].chunks_exact(self.w) {
                for &(lo, hi, start) in taps {
                    let values = self.tap_values(src, start, hi - lo, &mut gathered);
                    for (m, &v) in row[lo..hi].iter_mut().zip(values) {
                        *m = if v > *m || v.is_nan() { v } else { *m };
                    }
                }
            }
        }
    }

    /// The `n` input elements of row `src` that a tap reads from column `start` on, `s` apart:
    /// the row itself at stride 1, else gathered into `buf`, so the loops over them are
    /// contiguous and vectorise.
    #[inline]
    fn tap_values<'a, T: Real>(&self, src: &'a [T], start: usize, n: usize, buf: &'a mut Vec<T>) -> &'a [T] {
        if self.s == 1 {
            return &src[start..start + n];
        }
        buf.clear();
        buf.extend(strided(src, start, self.s, n));
        buf
    }

    /// Adds each output gradient of one plane at its window's argmax, PyTorch's: the first element
    /// in row-major order equal to the window's max `maxes` (the forward output), found in one
    /// row-wise pass. Windows whose max is NaN, or that no longer hold their max (the input was
    /// changed after the forward pass), fall back to [`Self::argmax_window`].
    fn max_bwd_plane<T: Real>(
        &self,
        taps: &[(usize, usize, usize)],
        plane: &[T],
        maxes: &[T],
        grad: &[T],
        dx: &mut [T],
    ) {
        // Plane indices as u32 (planes are far smaller), so the search vectorises in wide lanes.
        const NONE: u32 = u32::MAX;
        assert!(plane.len() < NONE as usize, "max pool: plane too large");
        let (mut at, mut gathered) = (vec![NONE; self.ow], Vec::new());
        for (oy, (m, g)) in maxes.chunks_exact(self.ow).zip(grad.chunks_exact(self.ow)).enumerate() {
            let (y0, y1) = self.window(oy, self.h);
            at.fill(NONE);
            for (y, src) in (y0..y1).zip(plane[y0 * self.w..y1 * self.w].chunks_exact(self.w)) {
                for &(lo, hi, start) in taps {
                    let values = self.tap_values(src, start, hi - lo, &mut gathered);
                    let first = (y * self.w + start) as u32;
                    for (j, ((a, &mx), &v)) in at[lo..hi].iter_mut().zip(&m[lo..hi]).zip(values).enumerate() {
                        let index = first + (j * self.s) as u32;
                        *a = if v == mx && *a == NONE { index } else { *a };
                    }
                }
            }
            for (ox, (&a, &g)) in at.iter().zip(g).enumerate() {
                let a = if a == NONE { self.argmax_window(plane, oy, ox) } else { a as usize };
                dx[a] += g;
            }
        }
    }

    /// The argmax of one window by PyTorch's scan: strict `>` in row-major order, so the first
    /// maximal element wins; NaN always wins, so the last NaN does; the first element if all are −∞.
    fn argmax_window<T: Real>(&self, plane: &[T], oy: usize, ox: usize) -> usize {
        let ((y0, y1), (x0, x1)) = (self.window(oy, self.h), self.window(ox, self.w));
        let (mut best, mut best_at) = (T::NEG_INF, y0 * self.w + x0);
        for y in y0..y1 {
            for (x, &v) in plane[y * self.w + x0..y * self.w + x1].iter().enumerate() {
                if v > best || v.is_nan() {
                    best = v;
                    best_at = y * self.w + x0 + x;
                }
            }
        }
        best_at
    }

    /// Window sums of one plane `[H, W]` times `scale` into `out [OH, OW]`, row by row.
    fn avg_plane<T: Real>(&self, taps: &[(usize, usize, usize)], plane: &[T], scale: T, out: &mut [T]) {
        for (oy, row) in out.chunks_exact_mut(self.ow).enumerate() {
            let (y0, y1) = self.window(oy, self.h);
            for src in plane[y0 * self.w..y1 * self.w].chunks_exact(self.w) {
                for &(lo, hi, start) in taps {
                    for (m, v) in row[lo..hi].iter_mut().zip(strided(src, start, self.s, hi - lo)) {
                        *m += v;
                    }
                }
            }
            row.iter_mut().for_each(|v| *v *= scale);
        }
    }

    /// Each output gradient of one plane times `scale`, added over its window in `dx [H, W]`.
    fn avg_bwd_plane<T: Real>(&self, taps: &[(usize, usize, usize)], grad: &[T], scale: T, dx: &mut [T]) {
        for (oy, g) in grad.chunks_exact(self.ow).enumerate() {
            let (y0, y1) = self.window(oy, self.h);
            for dst in dx[y0 * self.w..y1 * self.w].chunks_exact_mut(self.w) {
                for &(lo, hi, start) in taps {
                    add_strided(dst, start, self.s, hi - lo, g[lo..hi].iter().map(|&g| g * scale));
                }
            }
        }
    }
}

struct MaxPool(PoolGeometry);

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "agm-max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let (b, c) = g.planes(layout, false, self.name())?;
        dispatch_real!(storage, self.name(), T => {
            let x = slice::<T>(storage, layout, self.name())?;
            let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
            let taps = g.taps();
            let out = collect_chunks(b * c * plane_out, plane_out, plane_out * g.k * g.k, |i, dst| {
                g.max_plane(&taps, &x[i * plane_in..(i + 1) * plane_in], dst);
            });
            Ok((T::to_cpu_storage_owned(out), Shape::from((b, c, g.oh, g.ow))))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let g = self.0;
        let (b, c) = g.planes(layout, false, self.name())?;
        let shape = Shape::from((b, c, g.oh, g.ow));
        dispatch_real!(storage, self.name(), T => gpu::run::<T>("max_pool_fwd", &g, None, &[(storage, layout)], shape, self.name()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // `arg` is the contiguous input the forward saw and `res` its window maxima.
        Ok(Some(arg.apply_op3_no_bwd(&res.detach(), &grad_res.contiguous()?, &MaxPoolBwd(self.0))?))
    }
}

/// Gradient of [`MaxPool`]: `(x, grad_out)` to `dx`, each output gradient added at its window's
/// argmax.
struct MaxPoolBwd(PoolGeometry);

impl CustomOp3 for MaxPoolBwd {
    fn name(&self) -> &'static str {
        "agm-max-pool2d-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let (b, c) = self.planes(l1, l2, l3)?;
        same_storage_dtype(s1, s2, self.name())?;
        same_storage_dtype(s1, s3, self.name())?;
        dispatch_real!(s1, self.name(), T => {
            let x = slice::<T>(s1, l1, self.name())?;
            let y = slice::<T>(s2, l2, self.name())?;
            let grad = slice::<T>(s3, l3, self.name())?;
            let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
            let taps = g.taps();
            let dx = collect_chunks(b * c * plane_in, plane_in, plane_out * g.k * g.k, |i, dst| {
                let (src, out) = (&x[i * plane_in..(i + 1) * plane_in], i * plane_out..(i + 1) * plane_out);
                g.max_bwd_plane(&taps, src, &y[out.clone()], &grad[out], dst);
            });
            Ok((T::to_cpu_storage_owned(dx), Shape::from((b, c, g.h, g.w))))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let g = self.0;
        let (b, c) = self.planes(l1, l2, l3)?;
        let shape = Shape::from((b, c, g.h, g.w));
        let inputs = [(s1, l1), (s2, l2), (s3, l3)];
        dispatch_real!(s1, self.name(), T => gpu::run::<T>("max_pool_bwd", &g, None, &inputs, shape, self.name()))
    }
}

impl MaxPoolBwd {
    /// `[B, C]` of the input `l1`, once the window maxima `l2` and their gradient `l3` agree with it.
    fn planes(&self, l1: &Layout, l2: &Layout, l3: &Layout) -> Result<(usize, usize)> {
        let g = self.0;
        let (b, c) = g.planes(l1, false, self.name())?;
        if g.planes(l2, true, self.name())? != (b, c) || l3.shape() != l2.shape() {
            candle_core::bail!(
                "{}: input {:?}, output {:?} and gradient {:?} disagree",
                self.name(),
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        Ok((b, c))
    }
}

struct AvgPool(PoolGeometry);

impl CustomOp1 for AvgPool {
    fn name(&self) -> &'static str {
        "agm-avg-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let (b, c) = g.planes(layout, false, self.name())?;
        dispatch_real!(storage, self.name(), T => {
            let x = slice::<T>(storage, layout, self.name())?;
            let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
            // Floor mode with padding ≤ k/2 keeps every window inside the padded input, so the
            // divisor is always k² (count_include_pad=True).
            let scale = T::from_f64(1.0 / (g.k * g.k) as f64);
            let taps = g.taps();
            let out = collect_chunks(b * c * plane_out, plane_out, plane_out * g.k * g.k, |i, dst| {
                g.avg_plane(&taps, &x[i * plane_in..(i + 1) * plane_in], scale, dst);
            });
            Ok((T::to_cpu_storage_owned(out), Shape::from((b, c, g.oh, g.ow))))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let g = self.0;
        let (b, c) = g.planes(layout, false, self.name())?;
        let shape = Shape::from((b, c, g.oh, g.ow));
        dispatch_real!(storage, self.name(), T => {
            let scale = T::from_f64(1.0 / (g.k * g.k) as f64);
            gpu::run::<T>("avg_pool_fwd", &g, Some(scale), &[(storage, layout)], shape, self.name())
        })
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&AvgPoolBwd(self.0))?))
    }
}

/// Gradient of [`AvgPool`]: each output gradient spread as `g / k²` over its window.
struct AvgPoolBwd(PoolGeometry);

impl CustomOp1 for AvgPoolBwd {
    fn name(&self) -> &'static str {
        "agm-avg-pool2d-bwd"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let (b, c) = g.planes(layout, true, self.name())?;
        dispatch_real!(storage, self.name(), T => {
            let grad = slice::<T>(storage, layout, self.name())?;
            let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
            let scale = T::from_f64(1.0 / (g.k * g.k) as f64);
            let taps = g.taps();
            let dx = collect_chunks(b * c * plane_in, plane_in, plane_out * g.k * g.k, |i, dst| {
                g.avg_bwd_plane(&taps, &grad[i * plane_out..(i + 1) * plane_out], scale, dst);
            });
            Ok((T::to_cpu_storage_owned(dx), Shape::from((b, c, g.h, g.w))))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let g = self.0;
        let (b, c) = g.planes(layout, true, self.name())?;
        let shape = Shape::from((b, c, g.h, g.w));
        dispatch_real!(storage, self.name(), T => {
            let scale = T::from_f64(1.0 / (g.k * g.k) as f64);
            gpu::run::<T>("avg_pool_bwd", &g, Some(scale), &[(storage, layout)], shape, self.name())
        })
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, Layout, Result, Shape};

    use super::PoolGeometry;
    use crate::cuda::{alloc, elementwise, storage, view, CudaReal, POOL};

    /// Runs `kernel(n, H, W, OH, OW, k, s, p, [scale,] inputs…, out)` of `cuda/pool.cu`, one
    /// thread per each of the `n` elements of the output `shape` (an output window in the forward
    /// kernels, an input pixel in the backward ones); `scale` is the mean's 1/k².
    pub(super) fn run<T: CudaReal>(
        kernel: &str,
        g: &PoolGeometry,
        scale: Option<T>,
        inputs: &[(&CudaStorage, &Layout)],
        shape: Shape,
        op: &str,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = inputs[0].0.device();
        let n = shape.elem_count();
        let views = inputs.iter().map(|(s, l)| view::<T>(s, l, op)).collect::<Result<Vec<_>>>()?;
        let mut out = alloc::<T>(dev, n)?;
        let func = POOL.func::<T>(dev, kernel)?;
        let PoolGeometry { h, w, oh, ow, k, s, p } = *g;
        let mut launch = func.builder();
        launch.arg(&n).arg(&h).arg(&w).arg(&oh).arg(&ow).arg(&k).arg(&s).arg(&p);
        if let Some(scale) = &scale {
            launch.arg(scale);
        }
        for v in &views {
            launch.arg(v);
        }
        launch.arg(&mut out);
        // SAFETY: the callers checked every input's `[B, C, H, W]` or `[B, C, OH, OW]` shape against
        // `g`; the kernel reads within those planes and writes each of the `n` elements of `out` once.
        unsafe { launch.launch(elementwise(n)) }.w()?;
        Ok((storage(out, dev), shape))
    }
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
