//! Batch normalisation over the channel dimension as one fused op.
//!
//! Built from plain candle ops, the backward of a 4-D batch norm reduces full-size gradients
//! over dimensions 0, 2 and 3 several times with candle's single-threaded strided reduction; in a
//! ResNet-18 step that dominated the backward pass. Here one op computes the output, and one
//! backward pass yields the gradients of the input, the weight and the bias.

use std::sync::{Arc, Mutex};

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::backward::param_grad;
use crate::cpu::{
    check_real, check_same_dtype, collect_chunks, dispatch_real, for_each_chunk, same_storage_dtype, slice, Real,
};
use crate::own_kernels;
use crate::relu::relu_grad;

/// Per-channel statistics of a training-mode pass (for the running averages).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchStats {
    pub mean: Vec<f64>,
    /// Biased variance (divided by the element count per channel).
    pub var: Vec<f64>,
    /// Elements per channel (`B · H · W`).
    pub count: usize,
}

/// `(x − mean) / sqrt(var + eps) · weight + bias` per channel of `x [B, C, ...]`.
///
/// `running = None` is training mode: the batch's own mean and biased variance normalise, and
/// they are returned for the running averages (PyTorch's `BatchNorm` in `train()`).
/// `running = Some((mean, var))` is evaluation mode with those constants. Gradients reach `x`,
/// `weight` and `bias` in both modes. On the CPU and CUDA a fused custom op (f32, f64); on other
/// devices [`batch_norm_ref`].
pub fn batch_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running: Option<(&Tensor, &Tensor)>,
    eps: f64,
) -> Result<(Tensor, Option<BatchStats>)> {
    batch_norm_op(x, weight, bias, running, None, eps, false)
}

/// `relu(batch_norm(…))` as one op (a ResNet's `bn → relu`): the normalised activation never
/// becomes a separate tensor in candle's graph. Same arguments and statistics as [`batch_norm`];
/// on devices other than the CPU and CUDA `batch_norm_ref` then candle's ReLU.
pub fn batch_norm_relu(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running: Option<(&Tensor, &Tensor)>,
    eps: f64,
) -> Result<(Tensor, Option<BatchStats>)> {
    batch_norm_op(x, weight, bias, running, None, eps, true)
}

/// Training-mode batch norm over the first `B − tail` samples of `x` and evaluation mode over
/// the last `tail`: one call for a batch that carries extra evaluation-mode samples along (the
/// fast Shapley path's zero sample). The evaluation rows see the running statistics as they are
/// after this batch updates them (`momentum`, PyTorch's rule with the unbiased variance), as if
/// the training rows had run first and the evaluation rows after, and as constants. The
/// statistics returned are the training rows'. Followed by a ReLU when `relu`. On the CPU and
/// CUDA one fused custom op; on other devices it is two calls on the two parts.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_mixed(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running: (&Tensor, &Tensor),
    momentum: f64,
    tail: usize,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Option<BatchStats>)> {
    let b = x.dims().first().copied().unwrap_or(0);
    if tail >= b {
        candle_core::bail!("batch_norm: {tail} evaluation rows leave no training rows in a batch of {b}");
    }
    if !own_kernels(x.device()) {
        let op = if relu { batch_norm_relu } else { batch_norm };
        let (head, stats) = op(&x.narrow(0, 0, b - tail)?, weight, bias, None, eps)?;
        let stats = stats.ok_or_else(|| candle_core::Error::Msg("batch norm returned no statistics".into()))?;
        let (mean, var) = updated_running(&to_f64(running.0)?, &to_f64(running.1)?, &stats, momentum);
        let dev = x.device();
        let mean = Tensor::from_vec(mean, weight.dims1()?, dev)?.to_dtype(x.dtype())?;
        let var = Tensor::from_vec(var, weight.dims1()?, dev)?.to_dtype(x.dtype())?;
        let (rest, _) = op(&x.narrow(0, b - tail, tail)?, weight, bias, Some((&mean, &var)), eps)?;
        return Ok((Tensor::cat(&[head, rest], 0)?, Some(stats)));
    }
    batch_norm_op(x, weight, bias, Some(running), Some((tail, momentum)), eps, relu)
}

/// PyTorch's running-statistics update: `(1 − m)·running + m·batch`, with the unbiased variance.
pub fn updated_running(mean: &[f64], var: &[f64], stats: &BatchStats, momentum: f64) -> (Vec<f64>, Vec<f64>) {
    let n = stats.count as f64;
    let m = momentum;
    let mean = mean.iter().zip(&stats.mean).map(|(r, b)| r * (1.0 - m) + b * m).collect();
    let var = var.iter().zip(&stats.var).map(|(r, v)| r * (1.0 - m) + (v * n / (n - 1.0).max(1.0)) * m).collect();
    (mean, var)
}

/// `running` normalises the last `tail.0` rows, updated with momentum `tail.1` (all rows, as
/// they are, when `tail` is `None`); the batch's own statistics normalise the others.
fn batch_norm_op(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running: Option<(&Tensor, &Tensor)>,
    tail: Option<(usize, f64)>,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Option<BatchStats>)> {
    let dims = x.dims();
    if dims.len() < 2 || dims[1] == 0 || dims[0] == 0 {
        candle_core::bail!("batch_norm: input {dims:?} needs a batch and a channel dimension");
    }
    let c = dims[1];
    let running_pair = running.into_iter().flat_map(|(m, v)| [("running mean", m), ("running var", v)]);
    for (name, t) in [("weight", weight), ("bias", bias)].into_iter().chain(running_pair) {
        if t.dims() != [c] {
            candle_core::bail!("batch_norm: {name} {:?} must have one value per channel ({c})", t.dims());
        }
    }
    if !(eps >= 0.0 && eps.is_finite()) {
        candle_core::bail!("batch_norm: eps must be finite and non-negative, got {eps}");
    }
    if !own_kernels(x.device()) {
        let (y, stats) = batch_norm_ref(x, weight, bias, running, eps)?;
        return Ok((if relu { y.relu()? } else { y }, stats));
    }
    check_real(x, "batch_norm")?;
    check_same_dtype(&[x, weight, bias], "batch_norm")?;
    let fixed = match running {
        Some((m, v)) => Some((to_f64(m)?, to_f64(v)?)),
        None => None,
    };
    let saved = Arc::new(Mutex::new(None));
    let rows = Rows { fixed, tail };
    let op = BatchNormOp { eps, rows, relu, saved: saved.clone(), norm: Mutex::new(None) };
    let y = x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?;
    let stats = saved.lock().expect("batch-norm statistics").take();
    Ok((y, stats))
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    t.detach().to_dtype(candle_core::DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// Reference from plain differentiable ops (the statistics are computed over a transposed copy).
pub fn batch_norm_ref(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running: Option<(&Tensor, &Tensor)>,
    eps: f64,
) -> Result<(Tensor, Option<BatchStats>)> {
    let c = x.dim(1)?;
    let mut cshape = vec![1; x.rank()];
    cshape[1] = c;
    let (mean, var, stats) = match running {
        Some((m, v)) => (m.detach(), v.detach(), None),
        None => {
            let flat = if x.rank() == 2 { x.clone() } else { x.transpose(1, x.rank() - 1)?.reshape(((), c))? };
            let mean = flat.mean(0)?;
            let var = flat.broadcast_sub(&mean)?.sqr()?.mean(0)?;
            let stats = BatchStats { mean: to_f64(&mean)?, var: to_f64(&var)?, count: flat.dim(0)? };
            (mean, var, Some(stats))
        }
    };
    let mean = mean.reshape(cshape.as_slice())?;
    let inv_std = (var + eps)?.sqrt()?.recip()?.reshape(cshape.as_slice())?;
    let w = weight.reshape(cshape.as_slice())?;
    let b = bias.reshape(cshape.as_slice())?;
    let y = x.broadcast_sub(&mean)?.broadcast_mul(&inv_std)?.broadcast_mul(&w)?.broadcast_add(&b)?;
    Ok((y, stats))
}

/// `B`, `C` and the elements per (sample, channel) plane of a layout.
fn geometry(layout: &Layout) -> (usize, usize, usize) {
    let dims = layout.dims();
    (dims[0], dims[1], dims[2..].iter().product())
}

/// Every element of channel `ch` of `t [b, c, s]`, sample by sample.
fn channel<T>(t: &[T], (b, c, s): (usize, usize, usize), ch: usize) -> impl Iterator<Item = &T> + '_ {
    (0..b).flat_map(move |bi| &t[(bi * c + ch) * s..(bi * c + ch + 1) * s])
}

/// Mean and biased variance of every channel, accumulated in f64 (two passes).
fn channel_moments<T: Real>(x: &[T], b: usize, c: usize, s: usize) -> (Vec<f64>, Vec<f64>) {
    let n = (b * s) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let mean = channel(x, (b, c, s), ch).fold(0.0, |a, v| a + v.to_f64()) / n;
            let var = channel(x, (b, c, s), ch).fold(0.0, |a, v| a + (v.to_f64() - mean).powi(2)) / n;
            (mean, var)
        })
        .unzip()
}

/// Which rows the batch's own statistics normalise and which the running ones do.
#[derive(Clone, Debug)]
struct Rows {
    /// The running mean and variance, when any row uses them.
    fixed: Option<(Vec<f64>, Vec<f64>)>,
    /// How many trailing rows use `fixed`, updated first with this momentum; `None` means all
    /// rows use `fixed` as it is (evaluation mode).
    tail: Option<(usize, f64)>,
}

impl Rows {
    /// How many leading samples of a batch of `b` are normalised by the batch statistics.
    fn batch_rows(&self, b: usize) -> usize {
        match (&self.fixed, self.tail) {
            (None, _) => b,
            (Some(_), None) => 0,
            (Some(_), Some((t, _))) => b.saturating_sub(t),
        }
    }

    /// The mean and `1/sqrt(var + eps)` of the running rows (zeros when there are none), after
    /// the update with the batch rows' `stats` when the op asks for one.
    fn fixed_norm(&self, c: usize, eps: f64, stats: Option<&BatchStats>) -> (Vec<f64>, Vec<f64>) {
        let Some((mean, var)) = &self.fixed else { return (vec![0.0; c], vec![0.0; c]) };
        let (mean, var) = match (self.tail, stats) {
            (Some((_, momentum)), Some(stats)) => updated_running(mean, var, stats, momentum),
            _ => (mean.clone(), var.clone()),
        };
        (mean, var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect())
    }
}

/// The normalisation a forward pass used, for its backward pass.
#[derive(Clone, Debug)]
struct Norms {
    /// Batch rows: mean and `1/sqrt(var + eps)`.
    batch: (Vec<f64>, Vec<f64>),
    /// Running rows: the same.
    fixed: (Vec<f64>, Vec<f64>),
}

struct BatchNormOp {
    eps: f64,
    rows: Rows,
    /// Followed by a ReLU.
    relu: bool,
    /// Training mode: where the forward leaves the batch statistics for the caller.
    saved: Arc<Mutex<Option<BatchStats>>>,
    /// What the forward pass normalised with, for the backward pass.
    norm: Mutex<Option<Norms>>,
}

/// Mean and `1/sqrt(var + eps)` of the first `head` samples' channels, and their biased variance.
fn batch_norm_params<T: Real>(x: &[T], head: usize, c: usize, s: usize, eps: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    if head == 0 {
        return (vec![0.0; c], vec![0.0; c], vec![0.0; c]);
    }
    let (mean, var) = channel_moments(&x[..head * c * s], head, c, s);
    let rstd = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    (mean, rstd, var)
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "agm-batch-norm"
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
        let (b, c, s) = geometry(l1);
        same_storage_dtype(s1, s2, self.name())?;
        same_storage_dtype(s1, s3, self.name())?;
        let head = self.rows.batch_rows(b);
        dispatch_real!(s1, self.name(), T => {
            let x = slice::<T>(s1, l1, self.name())?;
            let w = slice::<T>(s2, l2, self.name())?;
            let bias = slice::<T>(s3, l3, self.name())?;
            let (mean, rstd, var) = batch_norm_params(x, head, c, s, self.eps);
            let stats = (head > 0).then(|| BatchStats { mean: mean.clone(), var, count: head * s });
            let (fmean, frstd) = self.rows.fixed_norm(c, self.eps, stats.as_ref());
            // y = x · scale + shift per channel, one pair for batch rows and one for running rows.
            let affine = |mean: &[f64], rstd: &[f64]| -> (Vec<f64>, Vec<f64>) {
                let scale: Vec<f64> = (0..c).map(|ch| rstd[ch] * w[ch].to_f64()).collect();
                let shift = (0..c).map(|ch| bias[ch].to_f64() - mean[ch] * scale[ch]).collect();
                (scale, shift)
            };
            let (batch, fixed) = (affine(&mean, &rstd), affine(&fmean, &frstd));
            let out = collect_chunks(x.len(), s, s, |i, dst| {
                let (scale, shift) = if i / c < head { &batch } else { &fixed };
                let (k, m) = (scale[i % c], shift[i % c]);
                for (y, &v) in dst.iter_mut().zip(&x[i * s..(i + 1) * s]) {
                    *y = T::from_f64(v.to_f64() * k + m);
                }
                if self.relu {
                    // Zero unless positive, NaN included, as `relu` does.
                    dst.iter_mut().for_each(|y| *y = if *y > T::ZERO { *y } else { T::ZERO });
                }
            });
            if stats.is_some() {
                *self.saved.lock().expect("batch-norm statistics") = stats;
            }
            *self.norm.lock().unwrap_or_else(|e| e.into_inner()) = Some(Norms { batch: (mean, rstd), fixed: (fmean, frstd) });
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
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
        same_storage_dtype(s1, s2, self.name())?;
        same_storage_dtype(s1, s3, self.name())?;
        dispatch_real!(s1, self.name(), T => gpu::forward::<T>(self, (s1, l1), (s2, l2), (s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = x.elem_count();
        let c = weight.elem_count();
        let grad = if self.relu { relu_grad(grad_res, res)? } else { grad_res.contiguous()? };
        let norm = self.norm.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let bwd = BatchNormBwd { eps: self.eps, rows: self.rows.clone(), norm };
        let packed = x.apply_op3_no_bwd(weight, &grad, &bwd)?;
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        // Copies, so that stored parameter gradients do not hold `packed` (and `dx`) alive.
        let dw = param_grad(weight, packed.narrow(0, n, c)?.force_contiguous()?)?;
        let db = param_grad(bias, packed.narrow(0, n + c, c)?.force_contiguous()?)?;
        Ok((Some(dx), dw, db))
    }
}

/// Gradient of [`BatchNormOp`]: `(x, weight, grad_out)` to one flat tensor holding `dx`, then
/// `dweight`, then `dbias`.
struct BatchNormBwd {
    eps: f64,
    rows: Rows,
    /// The forward pass's normalisation; recomputed from `x` when absent.
    norm: Option<Norms>,
}

impl BatchNormBwd {
    /// Fails unless the gradient `l3` has the input `l1`'s shape (on every backend).
    fn check_grad(&self, l1: &Layout, l3: &Layout) -> Result<()> {
        if l3.shape() != l1.shape() {
            candle_core::bail!("{}: gradient {:?} and input {:?} differ", self.name(), l3.dims(), l1.dims());
        }
        Ok(())
    }
}

impl CustomOp3 for BatchNormBwd {
    fn name(&self) -> &'static str {
        "agm-batch-norm-bwd"
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
        let (b, c, s) = geometry(l1);
        self.check_grad(l1, l3)?;
        same_storage_dtype(s1, s2, self.name())?;
        same_storage_dtype(s1, s3, self.name())?;
        let head = self.rows.batch_rows(b);
        dispatch_real!(s1, self.name(), T => {
            let x = slice::<T>(s1, l1, self.name())?;
            let w = slice::<T>(s2, l2, self.name())?;
            let g = slice::<T>(s3, l3, self.name())?;
            let Norms { batch: (mean, rstd), fixed: (fmean, frstd) } = match &self.norm {
                Some(norm) if norm.batch.0.len() == c => norm.clone(),
                _ => {
                    let (mean, rstd, var) = batch_norm_params(x, head, c, s, self.eps);
                    let stats = (head > 0).then(|| BatchStats { mean: mean.clone(), var, count: head * s });
                    Norms { batch: (mean, rstd), fixed: self.rows.fixed_norm(c, self.eps, stats.as_ref()) }
                }
            };
            let split = head * c * s;
            // Per channel and row group: Σ g and Σ g·x̂ (x̂ with that group's statistics).
            let sums = |x: &[T], g: &[T], rows: usize, mean: &[f64], rstd: &[f64]| -> (Vec<f64>, Vec<f64>) {
                (0..c)
                    .into_par_iter()
                    .map(|ch| {
                        channel(g, (rows, c, s), ch).zip(channel(x, (rows, c, s), ch)).fold((0.0, 0.0), |(a, bb), (gv, xv)| {
                            let xhat = (xv.to_f64() - mean[ch]) * rstd[ch];
                            (a + gv.to_f64(), bb + gv.to_f64() * xhat)
                        })
                    })
                    .unzip()
            };
            let (sum_g, sum_gx) = sums(&x[..split], &g[..split], head, &mean, &rstd);
            let (tail_g, tail_gx) = sums(&x[split..], &g[split..], b - head, &fmean, &frstd);
            let count = (head * s) as f64;
            let n = x.len();
            let mut out = vec![T::ZERO; n + 2 * c];
            let (dx, params) = out.split_at_mut(n);
            for_each_chunk(dx, s, s, |i, dst| {
                let ch = i % c;
                let rows = g[i * s..(i + 1) * s].iter().zip(&x[i * s..(i + 1) * s]);
                if i / c < head {
                    // dx = w·rstd·(g − mean(g) − x̂·mean(g·x̂)) over the batch rows.
                    let k = w[ch].to_f64() * rstd[ch];
                    let (mg, mgx) = (sum_g[ch] / count, sum_gx[ch] / count);
                    for (o, (&gv, &xv)) in dst.iter_mut().zip(rows) {
                        let xhat = (xv.to_f64() - mean[ch]) * rstd[ch];
                        *o = T::from_f64(k * (gv.to_f64() - mg - xhat * mgx));
                    }
                } else {
                    // Running statistics are constants: dx = w·rstd·g.
                    let k = w[ch].to_f64() * frstd[ch];
                    for (o, (&gv, _)) in dst.iter_mut().zip(rows) {
                        *o = T::from_f64(k * gv.to_f64());
                    }
                }
            });
            for ch in 0..c {
                params[ch] = T::from_f64(sum_gx[ch] + tail_gx[ch]);
                params[c + ch] = T::from_f64(sum_g[ch] + tail_g[ch]);
            }
            Ok((T::to_cpu_storage_owned(out), Shape::from(n + 2 * c)))
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
        self.check_grad(l1, l3)?;
        same_storage_dtype(s1, s2, self.name())?;
        same_storage_dtype(s1, s3, self.name())?;
        dispatch_real!(s1, self.name(), T => gpu::backward::<T>(self, (s1, l1), (s2, l2), (s3, l3)))
    }
}

/// The CUDA paths of [`BatchNormOp`] and [`BatchNormBwd`] (`cuda/batch_norm.cu`). The
/// per-channel statistics are small, so they live on the host as on the CPU: the forward copies
/// the batch moments back once (the caller needs them as [`BatchStats`] anyway), and the backward
/// uploads the forward's [`Norms`] rather than keeping a device buffer alive in between.
#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaDevice, CudaStorage, CustomOp3, Layout, Result, Shape};

    use super::{geometry, BatchNormBwd, BatchNormOp, BatchStats, Norms};
    use crate::cuda::{alloc, elementwise, per_row, storage, view, CudaReal, BATCH_NORM};

    type Operand<'a> = (&'a CudaStorage, &'a Layout);

    /// The contiguous elements of a per-channel operand, checked to hold one value per channel
    /// (the kernels index it by channel).
    fn per_channel<'a, T: CudaReal>((s, l): Operand<'a>, c: usize, op: &str) -> Result<CudaView<'a, T>> {
        let v = view::<T>(s, l, op)?;
        if v.len() != c {
            candle_core::bail!("{op}: {} per-channel values for {c} channels", v.len());
        }
        Ok(v)
    }

    /// Mean, `1/sqrt(var + eps)` and biased variance of the channels of the first `head` rows of
    /// `x [b, c, s]`, on the host (as `batch_norm_params` on the CPU).
    fn batch_params<T: CudaReal>(
        dev: &CudaDevice,
        x: &CudaView<'_, T>,
        (head, c, s): (usize, usize, usize),
        eps: f64,
    ) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
        if head == 0 {
            return Ok((vec![0.0; c], vec![0.0; c], vec![0.0; c]));
        }
        let mut moments = alloc::<f64>(dev, 2 * c)?;
        let func = BATCH_NORM.func::<T>(dev, "batch_norm_moments")?;
        let mut launch = func.builder();
        launch.arg(&head).arg(&c).arg(&s).arg(x).arg(&mut moments);
        // SAFETY: block `ch` of `c` reads channel `ch` of the first `head` rows of `x` and writes
        // `moments[ch]` and `moments[c + ch]`.
        unsafe { launch.launch(per_row(c)) }.w()?;
        let mut moments = dev.clone_dtoh(&moments)?;
        let var = moments.split_off(c);
        let rstd = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        Ok((moments, rstd, var))
    }

    /// Mean and `1/sqrt(var + eps)` of the batch rows, then of the running rows, in one device
    /// buffer of `4c` values.
    fn upload_norms(dev: &CudaDevice, norms: &Norms) -> Result<CudaSlice<f64>> {
        let Norms { batch: (mean, rstd), fixed: (fmean, frstd) } = norms;
        dev.clone_htod(&[mean.as_slice(), rstd, fmean, frstd].concat())
    }

    pub(super) fn forward<T: CudaReal>(
        op: &BatchNormOp,
        x: Operand<'_>,
        weight: Operand<'_>,
        bias: Operand<'_>,
    ) -> Result<(CudaStorage, Shape)> {
        let name = op.name();
        let dev = x.0.device();
        let (b, c, s) = geometry(x.1);
        let head = op.rows.batch_rows(b);
        let xs = view::<T>(x.0, x.1, name)?;
        let (w, bias) = (per_channel::<T>(weight, c, name)?, per_channel::<T>(bias, c, name)?);
        let (mean, rstd, var) = batch_params(dev, &xs, (head, c, s), op.eps)?;
        let stats = (head > 0).then(|| BatchStats { mean: mean.clone(), var, count: head * s });
        let norms = Norms { batch: (mean, rstd), fixed: op.rows.fixed_norm(c, op.eps, stats.as_ref()) };
        let params = upload_norms(dev, &norms)?;
        let n = xs.len();
        let head_elems = head * c * s;
        let relu = i32::from(op.relu);
        let mut y = alloc::<T>(dev, n)?;
        let func = BATCH_NORM.func::<T>(dev, "batch_norm_apply")?;
        let mut launch = func.builder();
        let (mean, rstd) = (params.slice(0..c), params.slice(c..2 * c));
        let (fixed_mean, fixed_rstd) = (params.slice(2 * c..3 * c), params.slice(3 * c..4 * c));
        launch.arg(&n).arg(&c).arg(&s).arg(&head_elems).arg(&xs).arg(&w).arg(&bias);
        launch.arg(&mean).arg(&rstd).arg(&fixed_mean).arg(&fixed_rstd).arg(&relu).arg(&mut y);
        // SAFETY: the kernel reads `n` elements of `x`, `c` of every per-channel operand and
        // writes `n` of `y`.
        unsafe { launch.launch(elementwise(n)) }.w()?;
        if stats.is_some() {
            *op.saved.lock().expect("batch-norm statistics") = stats;
        }
        *op.norm.lock().unwrap_or_else(|e| e.into_inner()) = Some(norms);
        Ok((storage(y, dev), x.1.shape().clone()))
    }

    pub(super) fn backward<T: CudaReal>(
        op: &BatchNormBwd,
        x: Operand<'_>,
        weight: Operand<'_>,
        grad: Operand<'_>,
    ) -> Result<(CudaStorage, Shape)> {
        let name = op.name();
        let dev = x.0.device();
        let (b, c, s) = geometry(x.1);
        let head = op.rows.batch_rows(b);
        let (xs, g) = (view::<T>(x.0, x.1, name)?, view::<T>(grad.0, grad.1, name)?);
        let w = per_channel::<T>(weight, c, name)?;
        let norms = match &op.norm {
            Some(norm) if norm.batch.0.len() == c => norm.clone(),
            _ => {
                let (mean, rstd, var) = batch_params(dev, &xs, (head, c, s), op.eps)?;
                let stats = (head > 0).then(|| BatchStats { mean: mean.clone(), var, count: head * s });
                Norms { batch: (mean, rstd), fixed: op.rows.fixed_norm(c, op.eps, stats.as_ref()) }
            }
        };
        let params = upload_norms(dev, &norms)?;
        let (mean, rstd) = (params.slice(0..c), params.slice(c..2 * c));
        let (fixed_mean, fixed_rstd) = (params.slice(2 * c..3 * c), params.slice(3 * c..4 * c));
        let n = xs.len();
        let mut out = alloc::<T>(dev, n + 2 * c)?;
        let mut batch_sums = alloc::<f64>(dev, 2 * c)?;
        {
            let mut dparams = out.slice_mut(n..);
            let func = BATCH_NORM.func::<T>(dev, "batch_norm_grad_sums")?;
            let mut launch = func.builder();
            launch.arg(&b).arg(&head).arg(&c).arg(&s).arg(&xs).arg(&g);
            launch.arg(&mean).arg(&rstd).arg(&fixed_mean).arg(&fixed_rstd).arg(&mut batch_sums).arg(&mut dparams);
            // SAFETY: block `ch` of `c` reads channel `ch` of `x` and `g` (`b` rows) and writes
            // element `ch` and `c + ch` of `batch_sums` and of the `2c` parameter gradients.
            unsafe { launch.launch(per_row(c)) }.w()?;
        }
        let head_elems = head * c * s;
        let count = (head * s) as f64;
        let mut dx = out.slice_mut(..n);
        let func = BATCH_NORM.func::<T>(dev, "batch_norm_grad_input")?;
        let mut launch = func.builder();
        launch.arg(&n).arg(&c).arg(&s).arg(&head_elems).arg(&count).arg(&xs).arg(&w).arg(&g);
        launch.arg(&mean).arg(&rstd).arg(&fixed_rstd).arg(&batch_sums).arg(&mut dx);
        // SAFETY: the kernel reads `n` elements of `x` and `g`, `c` of `w` and every norm, `2c`
        // of `batch_sums`, and writes the first `n` elements of `out`.
        unsafe { launch.launch(elementwise(n)) }.w()?;
        Ok((storage(out, dev), Shape::from(n + 2 * c)))
    }
}
