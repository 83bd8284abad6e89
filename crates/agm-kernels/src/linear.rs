//! `y = x · wᵀ + b`, PyTorch's `nn.Linear`, as one op with gemm products both ways.
//!
//! Built from candle ops the weight is used transposed, so its gradient arrives as a transposed
//! view, and candle's gradient accumulation then adds it element by element through strides; the
//! bias gradient is a strided single-threaded reduction. For a transformer's 768×3072 layers those
//! two dominated the backward pass. Here every gradient leaves the op contiguous. On CUDA the
//! products are cuBLAS calls on the same contiguous buffers and the bias add and bias gradient
//! small kernels, so the graph and the gradients' layout are the same as on the CPU.

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

use crate::backward::param_grad;
use crate::cpu::{check_real, check_same_dtype, dispatch_real, matmul, same_storage_dtype, slice, transpose, Real};
use crate::own_kernels;

/// `x [N, F] · w [O, F]ᵀ (+ b [O])` → `[N, O]`. On the CPU (f32, f64) and CUDA (f32, f64, with
/// cuBLAS products) a custom op; elsewhere, and for other dtypes on CUDA, [`linear_ref`].
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (_, f) = x.dims2()?;
    let (o, wf) = w.dims2()?;
    if wf != f {
        candle_core::bail!("linear: input has {f} features but the weight expects {wf}");
    }
    if let Some(b) = b {
        if b.dims() != [o] {
            candle_core::bail!("linear: bias {:?} must have one value per output ({o})", b.dims());
        }
    }
    if crate::precision::wants_bf16(x) {
        return linear_bf16(x, w, b);
    }
    linear_op(x, w, b)
}

/// [`linear`] with bf16 operands and result ([`crate::Precision::Bf16`]): cuBLAS's bf16 product
/// on CUDA, the f32 op between roundings on the CPU.
fn linear_bf16(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    use crate::precision::round_bf16;
    if x.device().is_cuda() {
        let bf16 = |t: &Tensor| t.to_dtype(DType::BF16);
        let b = b.map(bf16).transpose()?;
        return linear_ref(&bf16(x)?, &bf16(w)?, b.as_ref())?.to_dtype(DType::F32);
    }
    let b = b.map(round_bf16).transpose()?;
    round_bf16(&linear_op(&round_bf16(x)?, &round_bf16(w)?, b.as_ref())?)
}

/// [`linear`] in the operands' own dtype.
fn linear_op(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let same_device = x.device().same_device(w.device()) && b.is_none_or(|b| b.device().same_device(x.device()));
    // The CPU rejects other dtypes below; CUDA leaves them (f16, bf16) to candle's matmul.
    let own =
        own_kernels(x.device()) && same_device && (x.device().is_cpu() || matches!(x.dtype(), DType::F32 | DType::F64));
    if !own {
        return linear_ref(x, w, b);
    }
    check_real(x, "linear")?;
    let mut all = vec![x, w];
    all.extend(b);
    check_same_dtype(&all, "linear")?;
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, Linear),
        None => x.apply_op2(&w, Linear),
    }
}

/// [`linear`] from candle ops.
pub fn linear_ref(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.matmul(&w.t()?)?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// The forward product, with or without a bias.
struct Linear;

impl Linear {
    fn forward(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, f) = xl.shape().dims2()?;
        let (o, _) = wl.shape().dims2()?;
        same_storage_dtype(xs, ws, "linear")?;
        dispatch_real!(xs, "linear", T => {
            let x = slice::<T>(xs, xl, "linear")?;
            let w = slice::<T>(ws, wl, "linear")?;
            // gemm runs `x · wᵀ` (w stored [O, F]) at a third to four fifths of the speed it
            // has with both operands row-major, the lower the fewer rows (measured on ResNet and
            // Transformer shapes). So the product runs row-major, after transposing whichever
            // side is smaller: `x` and `y` for `(w · xᵀ)ᵀ`, or `w`.
            let mut y = if n * (f + o) <= o * f {
                transpose(&matmul((o, n, f), w, false, &transpose(x, n, f), false), o, n)
            } else {
                matmul((n, o, f), x, false, &transpose(w, o, f), false)
            };
            if let Some((bs, bl)) = bias {
                same_storage_dtype(xs, bs, "linear")?;
                let b = slice::<T>(bs, bl, "linear")?;
                for row in y.chunks_exact_mut(o) {
                    for (v, &bv) in row.iter_mut().zip(b) {
                        *v += bv;
                    }
                }
            }
            Ok((T::to_cpu_storage_owned(y), Shape::from((n, o))))
        })
    }

    /// [`Self::forward`] on CUDA: one cuBLAS product, then the bias added in place.
    #[cfg(feature = "cuda")]
    fn cuda_forward(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
        bias: Option<(&CudaStorage, &Layout)>,
    ) -> Result<(CudaStorage, Shape)> {
        let (n, f) = xl.shape().dims2()?;
        let (o, _) = wl.shape().dims2()?;
        dispatch_real!(xs, "linear", T => {
            let y = gpu::linear::<T>((n, o, f), (xs, xl), (ws, wl), bias)?;
            Ok((y, Shape::from((n, o))))
        })
    }

    fn grads(x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = if x.track_op() { Some(grad.apply_op2_no_bwd(w, &Product { transpose_lhs: false })?) } else { None };
        let dw = if w.track_op() {
            param_grad(w, grad.apply_op2_no_bwd(x, &Product { transpose_lhs: true })?)?
        } else {
            None
        };
        Ok((dx, dw))
    }
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "agm-linear"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        self.forward(xs, xl, ws, wl, None)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout, ws: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        self.cuda_forward(xs, xl, ws, wl, None)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Self::grads(x, w, grad)
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "agm-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward(xs, xl, ws, wl, Some((bs, bl)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.cuda_forward(xs, xl, ws, wl, Some((bs, bl)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = Self::grads(x, w, grad)?;
        let db = if b.track_op() { param_grad(b, grad.contiguous()?.apply_op1_no_bwd(&ColumnSums)?)? } else { None };
        Ok((dx, dw, db))
    }
}

/// `(g [N, O], m) → g · m` (`m = w [O, F]`: the input gradient `[N, F]`) or, transposing the
/// left side, `gᵀ · m` (`m = x [N, F]`: the weight gradient `[O, F]`).
struct Product {
    transpose_lhs: bool,
}

impl Product {
    /// The output's `(rows, cols, inner)`, checking that the operands fit.
    fn dims(&self, gl: &Layout, ml: &Layout) -> Result<(usize, usize, usize)> {
        let (gr, gc) = gl.shape().dims2()?;
        let (mr, mc) = ml.shape().dims2()?;
        let (rows, inner) = if self.transpose_lhs { (gc, gr) } else { (gr, gc) };
        if mr != inner {
            candle_core::bail!("agm-linear-grad: gradient {:?} does not fit operand {:?}", gl.dims(), ml.dims());
        }
        Ok((rows, mc, inner))
    }
}

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        "agm-linear-grad"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, ms: &CpuStorage, ml: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, mc, inner) = self.dims(gl, ml)?;
        same_storage_dtype(gs, ms, self.name())?;
        dispatch_real!(gs, self.name(), T => {
            let g = slice::<T>(gs, gl, self.name())?;
            let m = slice::<T>(ms, ml, self.name())?;
            let out = matmul((rows, mc, inner), g, self.transpose_lhs, m, false);
            Ok((T::to_cpu_storage_owned(out), Shape::from((rows, mc))))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, gs: &CudaStorage, gl: &Layout, ms: &CudaStorage, ml: &Layout) -> Result<(CudaStorage, Shape)> {
        let (rows, cols, inner) = self.dims(gl, ml)?;
        dispatch_real!(gs, self.name(), T => {
            let g = crate::cuda::view::<T>(gs, gl, self.name())?;
            let m = crate::cuda::view::<T>(ms, ml, self.name())?;
            let out = gpu::matmul::<T>(gs.device(), (rows, cols, inner), &g, self.transpose_lhs, &m, false)?;
            Ok((crate::cuda::storage(out, gs.device()), Shape::from((rows, cols))))
        })
    }
}

/// `g [N, O] → Σ_rows g [O]`: the bias gradient.
struct ColumnSums;

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "agm-linear-bias-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, o) = l.shape().dims2()?;
        dispatch_real!(s, self.name(), T => {
            let g = slice::<T>(s, l, self.name())?;
            let mut sums = vec![T::ZERO; o];
            for row in g.chunks_exact(o) {
                for (acc, &v) in sums.iter_mut().zip(row) {
                    *acc += v;
                }
            }
            Ok((T::to_cpu_storage_owned(sums), Shape::from(o)))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let (n, o) = l.shape().dims2()?;
        dispatch_real!(s, self.name(), T => Ok((gpu::column_sums::<T>(s, l, (n, o))?, Shape::from(o))))
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::cublas::sys::cublasOperation_t;
    use candle_core::cuda_backend::cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaDevice, CudaStorage, Layout, Result};

    use crate::cuda::{alloc, elementwise, storage, view, zeros, CudaReal, BLOCK, LINEAR};

    /// cuBLAS wants its sizes as C ints.
    fn c_int(v: usize) -> Result<i32> {
        i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("linear: size {v} is too large for cuBLAS")))
    }

    /// `op(a) · op(b)` as a new row-major `[rows, cols]`, with `a [rows, inner]` (stored
    /// `[inner, rows]` when `a_t`) and `b [inner, cols]` (stored `[cols, inner]` when `b_t`).
    ///
    /// cuBLAS is column-major, and a row-major `[r, c]` buffer read column-major is its `c × r`
    /// transpose; so the row-major `out = a·b` is computed as the column-major
    /// `outᵀ = bᵀ·aᵀ`, each operand's buffer taken as it is (`N`) or transposed (`T`).
    pub(super) fn matmul<T: CudaReal>(
        dev: &CudaDevice,
        (rows, cols, inner): (usize, usize, usize),
        a: &CudaView<'_, T>,
        a_t: bool,
        b: &CudaView<'_, T>,
        b_t: bool,
    ) -> Result<CudaSlice<T>>
    where
        CudaBlas: Gemm<T>,
    {
        if rows == 0 || cols == 0 || inner == 0 {
            // An empty sum is zero; cuBLAS is not asked about empty matrices.
            return zeros::<T>(dev, rows * cols);
        }
        let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
        let cfg = GemmConfig {
            transa: op(b_t),
            transb: op(a_t),
            m: c_int(cols)?,
            n: c_int(rows)?,
            k: c_int(inner)?,
            alpha: T::ONE,
            lda: c_int(if b_t { inner } else { cols })?,
            ldb: c_int(if a_t { rows } else { inner })?,
            beta: T::ZERO,
            ldc: c_int(cols)?,
        };
        let mut out = alloc::<T>(dev, rows * cols)?;
        let blas = dev.cublas_handle();
        crate::precision::apply_to_cublas(Some(&blas));
        // SAFETY: `b` holds `inner · cols` elements and `a` `rows · inner`, read with the leading
        // dimensions above; beta = 0, so cuBLAS writes all `rows · cols` of `out` without reading it.
        unsafe { blas.gemm(cfg, b, a, &mut out) }.w()?;
        Ok(out)
    }

    /// `x [n, f] · w [o, f]ᵀ (+ b [o])`: the product, then the bias added to each row in place
    /// (after the product, like the CPU, so each element is rounded the same way).
    pub(super) fn linear<T: CudaReal>(
        (n, o, f): (usize, usize, usize),
        (xs, xl): (&CudaStorage, &Layout),
        (ws, wl): (&CudaStorage, &Layout),
        bias: Option<(&CudaStorage, &Layout)>,
    ) -> Result<CudaStorage>
    where
        CudaBlas: Gemm<T>,
    {
        let dev = xs.device();
        let (x, w) = (view::<T>(xs, xl, "linear")?, view::<T>(ws, wl, "linear")?);
        let mut y = matmul::<T>(dev, (n, o, f), &x, false, &w, true)?;
        if let Some((bs, bl)) = bias {
            let b = view::<T>(bs, bl, "linear")?;
            let len = n * o;
            let func = LINEAR.func::<T>(dev, "add_row_bias")?;
            let mut launch = func.builder();
            launch.arg(&len).arg(&o).arg(&mut y).arg(&b);
            // SAFETY: the kernel updates the `n · o` elements of `y` and reads the `o` of `b`.
            unsafe { launch.launch(elementwise(len)) }.w()?;
        }
        Ok(storage(y, dev))
    }

    /// `Σ_rows g` of a contiguous `g [rows, cols]`: one block per 32 columns.
    pub(super) fn column_sums<T: CudaReal>(
        s: &CudaStorage,
        l: &Layout,
        (rows, cols): (usize, usize),
    ) -> Result<CudaStorage> {
        let dev = s.device();
        let g = view::<T>(s, l, "agm-linear-bias-grad")?;
        let mut sums = alloc::<T>(dev, cols)?;
        let func = LINEAR.func::<T>(dev, "column_sums")?;
        let mut launch = func.builder();
        launch.arg(&rows).arg(&cols).arg(&g).arg(&mut sums);
        let blocks = cols.div_ceil(32).max(1);
        let blocks = u32::try_from(blocks).map_err(|_| candle_core::Error::Msg(format!("linear: {cols} columns")))?;
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: block `i` reads columns `32i..32i + 32` (those below `cols`) of the `rows · cols`
        // elements of `g` and writes the same columns of `sums`, so all `cols` are written.
        unsafe { launch.launch(cfg) }.w()?;
        Ok(storage(sums, dev))
    }
}
