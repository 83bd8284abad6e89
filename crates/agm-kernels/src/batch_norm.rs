//! Batch normalisation over the channel dimension as one fused op.
//!
//! Built from plain candle ops, the backward of a 4-D batch norm reduces full-size gradients
//! over dimensions 0, 2 and 3 several times with candle's single-threaded strided reduction; in a
//! ResNet-18 step that dominated the backward pass. Here one op computes the output, and one
//! backward pass yields the gradients of the input, the weight and the bias.
//!
//! A call runs in two steps: a statistics op computes, per channel, everything the
//! normalisation needs (the batch moments, the running statistics the evaluation rows read,
//! and the running statistics after this batch) into one small tensor on the input's device;
//! the normalisation and its backward read that tensor. On CUDA nothing goes to the host, so a
//! training step never waits for the GPU inside a batch norm.

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp3, DType, InplaceOp1, InplaceOp2, Layout, Result, Shape, Tensor, Var,
};
use rayon::prelude::*;

use crate::backward::param_grad;
use crate::cpu::{
    check_real, check_same_dtype, collect_chunks, dispatch_real, for_each_chunk, same_storage_dtype, slice, slice_mut,
    Real,
};
use crate::own_kernels;
use crate::relu::relu_grad;

/// Per-channel statistics of a training-mode pass (for the running averages).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchStats {
    /// Batch mean of each channel, length `C`.
    pub mean: Vec<f64>,
    /// Biased variance (divided by the element count per channel).
    pub var: Vec<f64>,
    /// Elements per channel (`B · H · W`).
    pub count: usize,
}

/// The running mean and variance after a training pass, on the input's device:
/// [`RunningStats::store`] writes them into a layer's buffers.
#[derive(Clone, Debug)]
pub struct RunningStats {
    /// On the CPU and CUDA rows of the statistics op's f64 output, holding values of `dtype`.
    mean: Tensor,
    var: Tensor,
    dtype: DType,
}

impl RunningStats {
    /// The running mean, in the input's dtype.
    pub fn mean(&self) -> Result<Tensor> {
        self.mean.to_dtype(self.dtype)
    }

    /// The running variance (unbiased, as PyTorch keeps it), in the input's dtype.
    pub fn var(&self) -> Result<Tensor> {
        self.var.to_dtype(self.dtype)
    }

    /// What PyTorch's `BatchNorm` does to its buffers after a training batch: writes the
    /// running mean and variance into `mean` and `var` and adds one to the counter `batches`
    /// (`num_batches_tracked`). On the CPU and CUDA in place, one kernel each and nothing
    /// allocated, where a conversion, a copy and the counter's addition would launch six.
    pub fn store(&self, mean: &Var, var: &Var, batches: &Var) -> Result<()> {
        if !own_kernels(mean.device()) {
            mean.set(&self.mean()?)?;
            var.set(&self.var()?)?;
            return batches.set(&(batches.as_tensor() + 1.0)?);
        }
        mean.as_tensor().inplace_op2(&self.mean, &StoreRunning)?;
        var.as_tensor().inplace_op2(&self.var, &StoreRunning)?;
        batches.as_tensor().inplace_op1(&CountBatch)
    }
}

/// `(x − mean) / sqrt(var + eps) · weight + bias` per channel of `x [B, C, ...]`.
///
/// `running = None` is training mode: the batch's own mean and biased variance normalise, and
/// they are returned (PyTorch's `BatchNorm` in `train()`; on CUDA returning them copies them to
/// the host, which [`batch_norm_train`] avoids). `running = Some((mean, var))` is evaluation
/// mode with those constants. Gradients reach `x`, `weight` and `bias` in both modes. On the
/// CPU and CUDA a fused custom op (f32, f64); on other devices [`batch_norm_ref`].
pub fn batch_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running: Option<(&Tensor, &Tensor)>,
    eps: f64,
) -> Result<(Tensor, Option<BatchStats>)> {
    batch_norm_fn(x, weight, bias, running, eps, false)
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
    batch_norm_fn(x, weight, bias, running, eps, true)
}

fn batch_norm_fn(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running: Option<(&Tensor, &Tensor)>,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Option<BatchStats>)> {
    check_args(x, weight, bias, running, eps)?;
    if running.is_none() {
        check_values_per_channel(x, x.dim(0)?)?;
    }
    if !own_kernels(x.device()) {
        let (y, stats) = batch_norm_ref(x, weight, bias, running, eps)?;
        return Ok((if relu { y.relu()? } else { y }, stats));
    }
    let rows = Rows { running: running.map(|(m, v)| (m.clone(), v.clone())), tail: None };
    let head = rows.batch_rows(x.dim(0)?);
    let (y, stats) = batch_norm_op(x, weight, bias, rows, eps, relu)?;
    if head == 0 {
        return Ok((y, None));
    }
    let moments = stats.narrow(0, row::MEAN, 2)?.to_vec2::<f64>()?;
    let (mean, var) = (moments[0].clone(), moments[1].clone());
    Ok((y, Some(BatchStats { mean, var, count: x.elem_count() / x.dim(1)? })))
}

/// PyTorch's `BatchNorm` in `train()`, returning the output and the running statistics after
/// this batch (the caller stores them): the batch's own statistics normalise the first
/// `B − eval_tail` samples and update `running` with `momentum` (PyTorch's rule, with the
/// unbiased variance); the last `eval_tail` samples ride along in evaluation mode (the fast
/// Shapley path's zero sample), normalised by the running statistics as this batch leaves them,
/// as constants, as if the training rows had run first and the evaluation rows after. Followed
/// by a ReLU when `relu`. On the CPU and CUDA agm's fused ops, which leave everything on the
/// input's device; on other devices separate calls.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running: (&Tensor, &Tensor),
    momentum: f64,
    eval_tail: usize,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, RunningStats)> {
    check_args(x, weight, bias, Some(running), eps)?;
    let b = x.dim(0)?;
    if eval_tail >= b {
        candle_core::bail!("batch_norm: {eval_tail} evaluation rows leave no training rows in a batch of {b}");
    }
    check_values_per_channel(x, b - eval_tail)?;
    if !own_kernels(x.device()) {
        return batch_norm_train_apart(x, weight, bias, running, momentum, eval_tail, eps, relu);
    }
    let rows = Rows { running: Some((running.0.clone(), running.1.clone())), tail: Some((eval_tail, momentum)) };
    let (y, stats) = batch_norm_op(x, weight, bias, rows, eps, relu)?;
    let (mean, var) = (stats.get(row::RUNNING_MEAN)?, stats.get(row::RUNNING_VAR)?);
    Ok((y, RunningStats { mean, var, dtype: x.dtype() }))
}

/// [`batch_norm_train`] on devices without agm's kernels: the training rows, then the
/// evaluation rows with the updated statistics.
#[allow(clippy::too_many_arguments)]
fn batch_norm_train_apart(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running: (&Tensor, &Tensor),
    momentum: f64,
    eval_tail: usize,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, RunningStats)> {
    let b = x.dim(0)?;
    let op = if relu { batch_norm_relu } else { batch_norm };
    let (head, stats) = op(&x.narrow(0, 0, b - eval_tail)?, weight, bias, None, eps)?;
    let stats = stats.ok_or_else(|| candle_core::Error::Msg("batch norm returned no statistics".into()))?;
    let (dtype, dev, shape) = (x.dtype(), x.device(), weight.dims1()?);
    let (m, n) = (momentum, stats.count as f64);
    let batch_var: Vec<f64> = stats.var.iter().map(|&v| unbiased(v, n)).collect();
    let batch_mean = Tensor::from_vec(stats.mean.clone(), shape, dev)?.to_dtype(dtype)?;
    let batch_var = Tensor::from_vec(batch_var, shape, dev)?.to_dtype(dtype)?;
    let stored = RunningStats {
        mean: ((running.0.detach() * (1.0 - m))? + (batch_mean * m)?)?,
        var: ((running.1.detach() * (1.0 - m))? + (batch_var * m)?)?,
        dtype,
    };
    if eval_tail == 0 {
        return Ok((head, stored));
    }
    let (mean, var) = updated_running(&to_f64(running.0)?, &to_f64(running.1)?, &stats, momentum);
    let mean = Tensor::from_vec(mean, shape, dev)?.to_dtype(dtype)?;
    let var = Tensor::from_vec(var, shape, dev)?.to_dtype(dtype)?;
    let (rest, _) = op(&x.narrow(0, b - eval_tail, eval_tail)?, weight, bias, Some((&mean, &var)), eps)?;
    Ok((Tensor::cat(&[head, rest], 0)?, stored))
}

/// A row of running statistics (f64 holding values of the buffer's dtype) written into a
/// layer's buffer, in place.
struct StoreRunning;

impl InplaceOp2 for StoreRunning {
    fn name(&self) -> &'static str {
        "agm-batch-norm-store"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dl: &Layout, src: &CpuStorage, sl: &Layout) -> Result<()> {
        let src = slice::<f64>(src, sl, self.name())?;
        dispatch_real!(dst, self.name(), T => {
            let dst = slice_mut::<T>(dst, dl, src.len(), self.name())?;
            dst.iter_mut().zip(src).for_each(|(d, &s)| *d = T::from_f64(s));
            Ok(())
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, dst: &mut CudaStorage, dl: &Layout, src: &CudaStorage, sl: &Layout) -> Result<()> {
        dispatch_real!(dst, self.name(), T => gpu::store::<T>(self.name(), (dst, dl), (src, sl)))
    }
}

/// One more batch on a layer's counter, in place.
struct CountBatch;

impl InplaceOp1 for CountBatch {
    fn name(&self) -> &'static str {
        "agm-batch-norm-count"
    }

    fn cpu_fwd(&self, counter: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let n = layout.shape().elem_count();
        dispatch_real!(counter, self.name(), T => {
            slice_mut::<T>(counter, layout, n, self.name())?.iter_mut().for_each(|v| *v += T::ONE);
            Ok(())
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, counter: &mut CudaStorage, layout: &Layout) -> Result<()> {
        dispatch_real!(counter, self.name(), T => gpu::count::<T>(self.name(), (counter, layout)))
    }
}

/// PyTorch's running-statistics update: `(1 − m)·running + m·batch`, with the unbiased variance.
pub fn updated_running(mean: &[f64], var: &[f64], stats: &BatchStats, momentum: f64) -> (Vec<f64>, Vec<f64>) {
    let n = stats.count as f64;
    (
        mean.iter().zip(&stats.mean).map(|(&r, &b)| moved(r, b, momentum)).collect(),
        var.iter().zip(&stats.var).map(|(&r, &v)| moved(r, unbiased(v, n), momentum)).collect(),
    )
}

/// `(1 − m)·running + m·batch` in f64.
fn moved(running: f64, batch: f64, m: f64) -> f64 {
    running * (1.0 - m) + batch * m
}

/// The unbiased variance of `count` elements from the biased one.
fn unbiased(var: f64, count: f64) -> f64 {
    var * count / (count - 1.0).max(1.0)
}

/// [`moved`] rounded to `T` at every step, as candle's ops on `T` tensors compute it (the
/// stored running statistics: PyTorch keeps them in the parameters' dtype too).
fn moved_in<T: Real>(running: f64, batch: f64, m: f64) -> f64 {
    let (keep, take) = (T::from_f64(1.0 - m), T::from_f64(m));
    (T::from_f64(running) * keep + T::from_f64(batch) * take).to_f64()
}

/// Training mode needs two values per channel or more: one value has no variance, and PyTorch
/// refuses it ("Expected more than 1 value per channel when training").
fn check_values_per_channel(x: &Tensor, training_rows: usize) -> Result<()> {
    let per_sample: usize = x.dims()[2..].iter().product();
    if training_rows * per_sample == 1 {
        candle_core::bail!(
            "batch norm in training mode got 1 value per channel (input {:?}): a batch of 1 sample reached a \
             layer whose feature map is 1 value per channel, which has no variance (PyTorch refuses it too: \
             \"Expected more than 1 value per channel when training\"); choose a batch size that leaves no batch \
             of 1 sample",
            x.dims()
        );
    }
    Ok(())
}

/// Shapes, dtypes and `eps` of a batch-norm call.
fn check_args(x: &Tensor, weight: &Tensor, bias: &Tensor, running: Option<(&Tensor, &Tensor)>, eps: f64) -> Result<()> {
    let dims = x.dims();
    if dims.len() < 2 || dims[1] == 0 || dims[0] == 0 {
        candle_core::bail!("batch_norm: input {dims:?} needs a batch and a channel dimension");
    }
    let c = dims[1];
    let running_pair = running.into_iter().flat_map(|(m, v)| [("running mean", m), ("running var", v)]);
    for (name, t) in [("weight", weight), ("bias", bias)].into_iter().chain(running_pair.clone()) {
        if t.dims() != [c] {
            candle_core::bail!("batch_norm: {name} {:?} must have one value per channel ({c})", t.dims());
        }
    }
    if !(eps >= 0.0 && eps.is_finite()) {
        candle_core::bail!("batch_norm: eps must be finite and non-negative, got {eps}");
    }
    if own_kernels(x.device()) {
        check_real(x, "batch_norm")?;
        let mut all = vec![x, weight, bias];
        all.extend(running_pair.map(|(_, t)| t));
        check_same_dtype(&all, "batch_norm")?;
    }
    Ok(())
}

/// The statistics op, then the normalisation reading its output; returns both.
fn batch_norm_op(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    rows: Rows,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor)> {
    let x = x.contiguous()?;
    let head = rows.batch_rows(x.dim(0)?);
    let stats = x.detach().apply_op1_no_bwd(&BatchNormStats { rows, eps })?;
    let op = BatchNormOp { head, relu, stats: stats.clone() };
    let y = x.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?;
    Ok((y, stats))
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    t.detach().to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
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

/// The rows of the statistics tensor `[row::COUNT, C]` (f64) that [`BatchNormStats`] writes; a
/// row with nothing to hold is zero.
mod row {
    /// The batch rows' mean and biased variance.
    pub const MEAN: usize = 0;
    pub const VAR: usize = 1;
    /// `1/sqrt(var + eps)` of the batch rows.
    pub const RSTD: usize = 2;
    /// The mean and `1/sqrt(var + eps)` the evaluation rows use (the running statistics, updated
    /// by this batch first when it asks for that).
    pub const FIXED_MEAN: usize = 3;
    pub const FIXED_RSTD: usize = 4;
    /// The running statistics to store after this batch, rounded to the input's dtype.
    pub const RUNNING_MEAN: usize = 5;
    pub const RUNNING_VAR: usize = 6;
    pub const COUNT: usize = 7;
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
    /// The running mean and variance, when any row uses them or this batch updates them.
    running: Option<(Tensor, Tensor)>,
    /// How many trailing rows use `running`, updated first with this momentum; `None` means all
    /// rows use `running` as it is (evaluation mode).
    tail: Option<(usize, f64)>,
}

impl Rows {
    /// How many leading samples of a batch of `b` are normalised by the batch statistics.
    fn batch_rows(&self, b: usize) -> usize {
        match (&self.running, self.tail) {
            (None, _) => b,
            (Some(_), None) => 0,
            (Some(_), Some((t, _))) => b.saturating_sub(t),
        }
    }
}

/// Everything a batch norm's forward and backward passes need per channel, as the rows of
/// [`row`]: `x [B, C, ...]` to `[row::COUNT, C]` (f64).
struct BatchNormStats {
    rows: Rows,
    eps: f64,
}

impl BatchNormStats {
    /// The running statistics as host values (on the CPU).
    fn running_on_host(&self) -> Result<Option<(Vec<f64>, Vec<f64>)>> {
        self.rows.running.as_ref().map(|(m, v)| Ok((to_f64(m)?, to_f64(v)?))).transpose()
    }
}

impl CustomOp1 for BatchNormStats {
    fn name(&self) -> &'static str {
        "agm-batch-norm-stats"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, s) = geometry(layout);
        let head = self.rows.batch_rows(b);
        let running = self.running_on_host()?;
        dispatch_real!(storage, self.name(), T => {
            let x = slice::<T>(storage, layout, self.name())?;
            let mut out = vec![0.0; row::COUNT * c];
            if head > 0 {
                let (mean, var) = channel_moments(&x[..head * c * s], head, c, s);
                let rstd = var.iter().map(|v| 1.0 / (v + self.eps).sqrt());
                out[row::MEAN * c..][..c].copy_from_slice(&mean);
                out[row::VAR * c..][..c].copy_from_slice(&var);
                out[row::RSTD * c..][..c].iter_mut().zip(rstd).for_each(|(o, r)| *o = r);
            }
            if let Some((mean, var)) = running {
                let (n, update) = ((head * s) as f64, self.rows.tail.filter(|_| head > 0));
                for ch in 0..c {
                    let (batch_mean, batch_var) = (out[row::MEAN * c + ch], unbiased(out[row::VAR * c + ch], n));
                    let (fixed_mean, fixed_var, stored_mean, stored_var) = match update {
                        Some((_, m)) => (
                            moved(mean[ch], batch_mean, m),
                            moved(var[ch], batch_var, m),
                            moved_in::<T>(mean[ch], batch_mean, m),
                            moved_in::<T>(var[ch], batch_var, m),
                        ),
                        None => (mean[ch], var[ch], mean[ch], var[ch]),
                    };
                    out[row::FIXED_MEAN * c + ch] = fixed_mean;
                    out[row::FIXED_RSTD * c + ch] = 1.0 / (fixed_var + self.eps).sqrt();
                    out[row::RUNNING_MEAN * c + ch] = stored_mean;
                    out[row::RUNNING_VAR * c + ch] = stored_var;
                }
            }
            Ok((CpuStorage::F64(out), Shape::from((row::COUNT, c))))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        dispatch_real!(storage, self.name(), T => gpu::stats::<T>(self, (storage, layout)))
    }
}

/// The statistics rows of [`BatchNormStats`] on the host.
fn host_rows(stats: &Tensor) -> Result<Vec<f64>> {
    stats.flatten_all()?.to_vec1::<f64>()
}

struct BatchNormOp {
    /// Samples normalised by the batch statistics (the leading ones).
    head: usize,
    /// Followed by a ReLU.
    relu: bool,
    /// The [`BatchNormStats`] of the input.
    stats: Tensor,
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
        let (_, c, s) = geometry(l1);
        same_storage_dtype(s1, s2, self.name())?;
        same_storage_dtype(s1, s3, self.name())?;
        let (head, stats) = (self.head, host_rows(&self.stats)?);
        let at = |r: usize| &stats[r * c..(r + 1) * c];
        dispatch_real!(s1, self.name(), T => {
            let x = slice::<T>(s1, l1, self.name())?;
            let w = slice::<T>(s2, l2, self.name())?;
            let bias = slice::<T>(s3, l3, self.name())?;
            // y = x · scale + shift per channel, one pair for batch rows and one for running rows.
            let affine = |mean: &[f64], rstd: &[f64]| -> (Vec<f64>, Vec<f64>) {
                let scale: Vec<f64> = (0..c).map(|ch| rstd[ch] * w[ch].to_f64()).collect();
                let shift = (0..c).map(|ch| bias[ch].to_f64() - mean[ch] * scale[ch]).collect();
                (scale, shift)
            };
            let batch = affine(at(row::MEAN), at(row::RSTD));
            let fixed = affine(at(row::FIXED_MEAN), at(row::FIXED_RSTD));
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
        let bwd = BatchNormBwd { head: self.head, stats: self.stats.clone() };
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
    head: usize,
    /// The forward pass's [`BatchNormStats`].
    stats: Tensor,
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
        let (head, stats) = (self.head, host_rows(&self.stats)?);
        let at = |r: usize| &stats[r * c..(r + 1) * c];
        let (mean, rstd, fmean, frstd) = (at(row::MEAN), at(row::RSTD), at(row::FIXED_MEAN), at(row::FIXED_RSTD));
        dispatch_real!(s1, self.name(), T => {
            let x = slice::<T>(s1, l1, self.name())?;
            let w = slice::<T>(s2, l2, self.name())?;
            let g = slice::<T>(s3, l3, self.name())?;
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
            let (sum_g, sum_gx) = sums(&x[..split], &g[..split], head, mean, rstd);
            let (tail_g, tail_gx) = sums(&x[split..], &g[split..], b - head, fmean, frstd);
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

/// The CUDA paths of [`BatchNormStats`], [`BatchNormOp`] and [`BatchNormBwd`]
/// (`cuda/batch_norm.cu`): the statistics stay on the device, where the normalisation and its
/// backward read them, so no kernel here waits for the GPU. Each per-channel reduction runs as
/// blocks over parts of each channel, then one thread per channel adding its parts in order.
#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{CudaView, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Storage, Tensor};

    use super::{geometry, row, BatchNormBwd, BatchNormOp, BatchNormStats};
    use crate::cuda::{alloc, elementwise, per_row_parts, storage, view, view_mut, CudaReal, BATCH_NORM};

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

    /// Runs `f` on the CUDA storage of a tensor that an op reads besides its operands.
    fn with_cuda<R>(t: &Tensor, op: &str, f: impl FnOnce(Operand<'_>) -> Result<R>) -> Result<R> {
        let (guard, layout) = t.storage_and_layout();
        match &*guard {
            Storage::Cuda(s) => f((s, layout)),
            _ => candle_core::bail!("{op}: the batch-norm statistics are on another device than the input"),
        }
    }

    /// Elements a block of a per-channel reduction takes at least.
    const PART_MIN: usize = 8192;
    /// Blocks a per-channel reduction aims at in all (enough to fill a large GPU).
    const REDUCTION_BLOCKS: usize = 1024;

    /// Blocks per channel for reducing `count` elements of each of `c` channels: one per channel
    /// where that fills the GPU or the channel is small, more for a few large channels.
    fn parts(count: usize, c: usize) -> usize {
        count.div_ceil(PART_MIN).clamp(1, (REDUCTION_BLOCKS / c.max(1)).max(1))
    }

    pub(super) fn stats<T: CudaReal>(op: &BatchNormStats, x: Operand<'_>) -> Result<(CudaStorage, Shape)> {
        let name = op.name();
        let dev = x.0.device();
        let (b, c, s) = geometry(x.1);
        let head = op.rows.batch_rows(b);
        let xs = view::<T>(x.0, x.1, name)?;
        // Evaluation mode has no batch rows to reduce: no parts, and zero batch statistics.
        let parts = if head == 0 { 0 } else { parts(head * s, c) };
        let mut partials = alloc::<f64>(dev, 3 * c * parts)?;
        if parts > 0 {
            let func = BATCH_NORM.func::<T>(dev, "batch_norm_partial_moments")?;
            let mut launch = func.builder();
            launch.arg(&head).arg(&c).arg(&s).arg(&parts).arg(&xs).arg(&mut partials);
            // SAFETY: block (ch, p) reads part `p` of channel `ch` of the first `head` rows of `x`
            // and writes its three partial moments, so the grid writes all `3 · c · parts`.
            unsafe { launch.launch(per_row_parts(c, parts)) }.w()?;
        }
        let mut out = alloc::<f64>(dev, row::COUNT * c)?;
        let update = op.rows.running.is_some() && op.rows.tail.is_some();
        let momentum = op.rows.tail.map_or(0.0, |(_, m)| m);
        let count = head * s;
        let launch = |mean: &CudaView<'_, T>, var: &CudaView<'_, T>, out: &mut _| -> Result<()> {
            let func = BATCH_NORM.func::<T>(dev, "batch_norm_stats")?;
            let mut launch = func.builder();
            let (has_running, update) = (i32::from(op.rows.running.is_some()), i32::from(update));
            launch.arg(&count).arg(&c).arg(&parts).arg(&partials).arg(mean).arg(var);
            launch.arg(&has_running).arg(&update).arg(&momentum).arg(&op.eps).arg(out);
            // SAFETY: thread `ch` of `c` reads channel `ch`'s partial moments and, with running
            // statistics, element `ch` of each; it writes element `ch` of each of the
            // `row::COUNT` rows of `out`.
            unsafe { launch.launch(elementwise(c)) }.w()?;
            Ok(())
        };
        match &op.rows.running {
            Some((mean, var)) => with_cuda(mean, name, |m| {
                with_cuda(var, name, |v| {
                    launch(&per_channel::<T>(m, c, name)?, &per_channel::<T>(v, c, name)?, &mut out)
                })
            })?,
            // Nothing reads the running statistics: the input stands in for them.
            None => launch(&xs, &xs, &mut out)?,
        }
        Ok((storage(out, dev), Shape::from((row::COUNT, c))))
    }

    /// [`super::StoreRunning`]: the f64 row `src` written into the buffer `dst` of `T`.
    pub(super) fn store<T: CudaReal>(name: &str, dst: (&mut CudaStorage, &Layout), src: Operand<'_>) -> Result<()> {
        let dev = src.0.device().clone();
        let src = view::<f64>(src.0, src.1, name)?;
        let n = src.len();
        let mut dst = view_mut::<T>(dst.0, dst.1, n, name)?;
        let func = BATCH_NORM.func::<T>(&dev, "batch_norm_store")?;
        let mut launch = func.builder();
        launch.arg(&n).arg(&src).arg(&mut dst);
        // SAFETY: the kernel reads `n` elements of `src` and writes `n` of `dst`.
        unsafe { launch.launch(elementwise(n)) }.w().map(drop)
    }

    /// [`super::CountBatch`]: one added to every element of `counter`.
    pub(super) fn count<T: CudaReal>(name: &str, (s, l): (&mut CudaStorage, &Layout)) -> Result<()> {
        let dev = s.device().clone();
        let n = l.shape().elem_count();
        let mut counter = view_mut::<T>(s, l, n, name)?;
        let func = BATCH_NORM.func::<T>(&dev, "batch_norm_count")?;
        let mut launch = func.builder();
        launch.arg(&n).arg(&mut counter);
        // SAFETY: the kernel reads and writes `n` elements of `counter`.
        unsafe { launch.launch(elementwise(n)) }.w().map(drop)
    }

    /// The `[row::COUNT · c]` statistics of an op's input, as one device view.
    fn stats_view<'a>(s: Operand<'a>, c: usize, op: &str) -> Result<CudaView<'a, f64>> {
        let v = view::<f64>(s.0, s.1, op)?;
        if v.len() != row::COUNT * c {
            candle_core::bail!("{op}: {} statistics for {c} channels", v.len());
        }
        Ok(v)
    }

    pub(super) fn forward<T: CudaReal>(
        op: &BatchNormOp,
        x: Operand<'_>,
        weight: Operand<'_>,
        bias: Operand<'_>,
    ) -> Result<(CudaStorage, Shape)> {
        let name = op.name();
        let dev = x.0.device();
        let (_, c, s) = geometry(x.1);
        let xs = view::<T>(x.0, x.1, name)?;
        let (w, bias) = (per_channel::<T>(weight, c, name)?, per_channel::<T>(bias, c, name)?);
        let n = xs.len();
        let head_elems = op.head * c * s;
        let relu = i32::from(op.relu);
        let mut y = alloc::<T>(dev, n)?;
        with_cuda(&op.stats, name, |st| {
            let stats = stats_view(st, c, name)?;
            let at = |r: usize| stats.slice(r * c..(r + 1) * c);
            let func = BATCH_NORM.func::<T>(dev, "batch_norm_apply")?;
            let mut launch = func.builder();
            let (mean, rstd, fixed_mean, fixed_rstd) =
                (at(row::MEAN), at(row::RSTD), at(row::FIXED_MEAN), at(row::FIXED_RSTD));
            launch.arg(&n).arg(&c).arg(&s).arg(&head_elems).arg(&xs).arg(&w).arg(&bias);
            launch.arg(&mean).arg(&rstd).arg(&fixed_mean).arg(&fixed_rstd).arg(&relu).arg(&mut y);
            // SAFETY: the kernel reads `n` elements of `x`, `c` of every per-channel operand and
            // writes `n` of `y`.
            unsafe { launch.launch(elementwise(n)) }.w()?;
            Ok(())
        })?;
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
        let head = op.head;
        let (xs, g) = (view::<T>(x.0, x.1, name)?, view::<T>(grad.0, grad.1, name)?);
        let w = per_channel::<T>(weight, c, name)?;
        let n = xs.len();
        let mut out = alloc::<T>(dev, n + 2 * c)?;
        let mut batch_sums = alloc::<f64>(dev, 2 * c)?;
        let parts = parts(b * s, c);
        let mut partials = alloc::<f64>(dev, 4 * c * parts)?;
        with_cuda(&op.stats, name, |st| {
            let stats = stats_view(st, c, name)?;
            let at = |r: usize| stats.slice(r * c..(r + 1) * c);
            let (mean, rstd, fixed_mean, fixed_rstd) =
                (at(row::MEAN), at(row::RSTD), at(row::FIXED_MEAN), at(row::FIXED_RSTD));
            {
                let func = BATCH_NORM.func::<T>(dev, "batch_norm_partial_grad_sums")?;
                let mut launch = func.builder();
                launch.arg(&b).arg(&head).arg(&c).arg(&s).arg(&parts).arg(&xs).arg(&g);
                launch.arg(&mean).arg(&rstd).arg(&fixed_mean).arg(&fixed_rstd).arg(&mut partials);
                // SAFETY: block (ch, p) reads part `p` of channel `ch` of `x` and `g` (`b` rows)
                // and writes its four partial sums, so the grid writes all `4 · c · parts`.
                unsafe { launch.launch(per_row_parts(c, parts)) }.w()?;
            }
            {
                let mut dparams = out.slice_mut(n..);
                let func = BATCH_NORM.func::<T>(dev, "batch_norm_grad_sums")?;
                let mut launch = func.builder();
                launch.arg(&c).arg(&parts).arg(&partials).arg(&mut batch_sums).arg(&mut dparams);
                // SAFETY: thread `ch` of `c` reads channel `ch`'s partial sums and writes element
                // `ch` and `c + ch` of `batch_sums` and of the `2c` parameter gradients.
                unsafe { launch.launch(elementwise(c)) }.w()?;
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
            Ok(())
        })?;
        Ok((storage(out, dev), Shape::from(n + 2 * c)))
    }
}
