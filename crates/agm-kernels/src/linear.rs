//! `y = x · wᵀ + b`, PyTorch's `nn.Linear`, as one op with gemm products both ways.
//!
//! Built from candle ops the weight is used transposed, so its gradient arrives as a transposed
//! view, and candle's gradient accumulation then adds it element by element through strides; the
//! bias gradient is a strided single-threaded reduction. For a transformer's 768×3072 layers those
//! two dominated the backward pass. Here every gradient leaves the op contiguous.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use crate::cpu::{check_real, check_same_dtype, dispatch_real, matmul, same_storage_dtype, slice, Real};

/// `x [N, F] · w [O, F]ᵀ (+ b [O])` → `[N, O]`. On the CPU (f32, f64) a custom op; elsewhere
/// [`linear_ref`].
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
    let on_cpu = x.device().is_cpu() && w.device().is_cpu() && b.is_none_or(|b| b.device().is_cpu());
    if !on_cpu {
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
            let mut y = matmul((n, o, f), x, false, w, true);
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

    fn grads(x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = if x.track_op() { Some(grad.apply_op2_no_bwd(w, &Product { transpose_lhs: false })?) } else { None };
        let dw = if w.track_op() { Some(grad.apply_op2_no_bwd(x, &Product { transpose_lhs: true })?) } else { None };
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

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = Self::grads(x, w, grad)?;
        let db = if b.track_op() { Some(grad.contiguous()?.apply_op1_no_bwd(&ColumnSums)?) } else { None };
        Ok((dx, dw, db))
    }
}

/// `(g [N, O], m) → g · m` (`m = w [O, F]`: the input gradient `[N, F]`) or, transposing the
/// left side, `gᵀ · m` (`m = x [N, F]`: the weight gradient `[O, F]`).
struct Product {
    transpose_lhs: bool,
}

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        "agm-linear-grad"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, ms: &CpuStorage, ml: &Layout) -> Result<(CpuStorage, Shape)> {
        let (gr, gc) = gl.shape().dims2()?;
        let (mr, mc) = ml.shape().dims2()?;
        let (rows, inner) = if self.transpose_lhs { (gc, gr) } else { (gr, gc) };
        if mr != inner {
            candle_core::bail!("{}: gradient {:?} does not fit operand {:?}", self.name(), gl.dims(), ml.dims());
        }
        same_storage_dtype(gs, ms, self.name())?;
        dispatch_real!(gs, self.name(), T => {
            let g = slice::<T>(gs, gl, self.name())?;
            let m = slice::<T>(ms, ml, self.name())?;
            let out = matmul((rows, mc, inner), g, self.transpose_lhs, m, false);
            Ok((T::to_cpu_storage_owned(out), Shape::from((rows, mc))))
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
}
