//! Batch normalisation over the channel dimension as one fused op.
//!
//! Built from plain candle ops, the backward of a 4-D batch norm reduces full-size gradients
//! over dimensions 0, 2 and 3 several times with candle's single-threaded strided reduction; in a
//! ResNet-18 step that dominated the backward pass. Here one op computes the output, and one
//! backward pass yields the gradients of the input, the weight and the bias.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{check_real, check_same_dtype, dispatch_real, for_each_chunk, same_storage_dtype, slice, Real};
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
/// `weight` and `bias` in both modes. On the CPU a fused custom op (f32, f64); on other devices
/// [`batch_norm_ref`].
pub fn batch_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running: Option<(&Tensor, &Tensor)>,
    eps: f64,
) -> Result<(Tensor, Option<BatchStats>)> {
    batch_norm_op(x, weight, bias, running, eps, false)
}

/// `relu(batch_norm(…))` as one op (a ResNet's `bn → relu`): the normalised activation never
/// becomes a separate tensor in candle's graph. Same arguments and statistics as [`batch_norm`];
/// on other devices `batch_norm_ref` then candle's ReLU.
pub fn batch_norm_relu(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running: Option<(&Tensor, &Tensor)>,
    eps: f64,
) -> Result<(Tensor, Option<BatchStats>)> {
    batch_norm_op(x, weight, bias, running, eps, true)
}

fn batch_norm_op(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running: Option<(&Tensor, &Tensor)>,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Option<BatchStats>)> {
    let dims = x.dims();
    if dims.len() < 2 || dims[1] == 0 || dims[0] == 0 {
        candle_core::bail!("batch_norm: input {dims:?} needs a batch and a channel dimension");
    }
    let c = dims[1];
    for (name, t) in [("weight", weight), ("bias", bias)].into_iter().chain(running.map(|(m, _)| ("running mean", m))) {
        if t.dims() != [c] {
            candle_core::bail!("batch_norm: {name} {:?} must have one value per channel ({c})", t.dims());
        }
    }
    if !(eps >= 0.0 && eps.is_finite()) {
        candle_core::bail!("batch_norm: eps must be finite and non-negative, got {eps}");
    }
    if !x.device().is_cpu() {
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
    let op = BatchNormOp { eps, fixed, relu, saved: saved.clone(), norm: Mutex::new(None) };
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

struct BatchNormOp {
    eps: f64,
    /// Evaluation mode: the running mean and variance.
    fixed: Option<(Vec<f64>, Vec<f64>)>,
    /// Followed by a ReLU.
    relu: bool,
    /// Training mode: where the forward leaves the batch statistics for the caller.
    saved: Arc<Mutex<Option<BatchStats>>>,
    /// The mean and `1/sqrt(var + eps)` the forward pass used, for the backward pass.
    norm: Mutex<Option<(Vec<f64>, Vec<f64>)>>,
}

impl BatchNormOp {
    /// The mean and `1/sqrt(var + eps)` that normalise `x`.
    fn norm_params<T: Real>(&self, x: &[T], b: usize, c: usize, s: usize) -> (Vec<f64>, Vec<f64>, Option<Vec<f64>>) {
        let (mean, var) = match &self.fixed {
            Some((m, v)) => (m.clone(), v.clone()),
            None => channel_moments(x, b, c, s),
        };
        let rstd = var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
        let batch_var = self.fixed.is_none().then_some(var);
        (mean, rstd, batch_var)
    }
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
        dispatch_real!(s1, self.name(), T => {
            let x = slice::<T>(s1, l1, self.name())?;
            let w = slice::<T>(s2, l2, self.name())?;
            let bias = slice::<T>(s3, l3, self.name())?;
            let (mean, rstd, batch_var) = self.norm_params(x, b, c, s);
            // y = x · scale + shift per channel.
            let scale: Vec<f64> = (0..c).map(|ch| rstd[ch] * w[ch].to_f64()).collect();
            let shift: Vec<f64> = (0..c).map(|ch| bias[ch].to_f64() - mean[ch] * scale[ch]).collect();
            let mut out = vec![T::ZERO; x.len()];
            for_each_chunk(&mut out, s, s, |i, dst| {
                let ch = i % c;
                let (k, m) = (scale[ch], shift[ch]);
                for (y, &v) in dst.iter_mut().zip(&x[i * s..(i + 1) * s]) {
                    *y = T::from_f64(v.to_f64() * k + m);
                }
                if self.relu {
                    dst.iter_mut().filter(|y| !(**y > T::ZERO)).for_each(|y| *y = T::ZERO);
                }
            });
            *self.norm.lock().unwrap_or_else(|e| e.into_inner()) = Some((mean.clone(), rstd));
            if let Some(var) = batch_var {
                *self.saved.lock().expect("batch-norm statistics") = Some(BatchStats { mean, var, count: b * s });
            }
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = x.elem_count();
        let c = weight.elem_count();
        let grad = if self.relu { relu_grad(grad_res, res)? } else { grad_res.contiguous()? };
        let norm = self.norm.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let bwd = BatchNormBwd { eps: self.eps, fixed: self.fixed.clone(), norm };
        let packed = x.apply_op3_no_bwd(weight, &grad, &bwd)?;
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = packed.narrow(0, n, c)?;
        let db = packed.narrow(0, n + c, c)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Gradient of [`BatchNormOp`]: `(x, weight, grad_out)` to one flat tensor holding `dx`, then
/// `dweight`, then `dbias`.
struct BatchNormBwd {
    eps: f64,
    fixed: Option<(Vec<f64>, Vec<f64>)>,
    /// The forward pass's mean and `1/sqrt(var + eps)`; recomputed from `x` when absent.
    norm: Option<(Vec<f64>, Vec<f64>)>,
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
        if l3.shape() != l1.shape() {
            candle_core::bail!("{}: gradient {:?} and input {:?} differ", self.name(), l3.dims(), l1.dims());
        }
        same_storage_dtype(s1, s2, self.name())?;
        same_storage_dtype(s1, s3, self.name())?;
        dispatch_real!(s1, self.name(), T => {
            let x = slice::<T>(s1, l1, self.name())?;
            let w = slice::<T>(s2, l2, self.name())?;
            let g = slice::<T>(s3, l3, self.name())?;
            let (mean, rstd) = match &self.norm {
                Some((mean, rstd)) if mean.len() == c => (mean.clone(), rstd.clone()),
                _ => {
                    let fwd = BatchNormOp {
                        eps: self.eps,
                        fixed: self.fixed.clone(),
                        relu: false,
                        saved: Arc::default(),
                        norm: Mutex::new(None),
                    };
                    let (mean, rstd, _) = fwd.norm_params(x, b, c, s);
                    (mean, rstd)
                }
            };
            // Per channel: Σ g and Σ g·x̂, the bias and weight gradients.
            let (sum_g, sum_gx): (Vec<f64>, Vec<f64>) = (0..c)
                .into_par_iter()
                .map(|ch| {
                    channel(g, (b, c, s), ch).zip(channel(x, (b, c, s), ch)).fold((0.0, 0.0), |(a, bb), (gv, xv)| {
                        let xhat = (xv.to_f64() - mean[ch]) * rstd[ch];
                        (a + gv.to_f64(), bb + gv.to_f64() * xhat)
                    })
                })
                .unzip();
            let count = (b * s) as f64;
            let train = self.fixed.is_none();
            let n = x.len();
            let mut out = vec![T::ZERO; n + 2 * c];
            let (dx, params) = out.split_at_mut(n);
            for_each_chunk(dx, s, s, |i, dst| {
                let ch = i % c;
                let k = w[ch].to_f64() * rstd[ch];
                let rows = (&g[i * s..(i + 1) * s]).iter().zip(&x[i * s..(i + 1) * s]);
                if train {
                    // dx = w·rstd·(g − mean(g) − x̂·mean(g·x̂)).
                    let (mg, mgx) = (sum_g[ch] / count, sum_gx[ch] / count);
                    for (o, (&gv, &xv)) in dst.iter_mut().zip(rows) {
                        let xhat = (xv.to_f64() - mean[ch]) * rstd[ch];
                        *o = T::from_f64(k * (gv.to_f64() - mg - xhat * mgx));
                    }
                } else {
                    for (o, (&gv, _)) in dst.iter_mut().zip(rows) {
                        *o = T::from_f64(k * gv.to_f64());
                    }
                }
            });
            for ch in 0..c {
                params[ch] = T::from_f64(sum_gx[ch]);
                params[c + ch] = T::from_f64(sum_g[ch]);
            }
            Ok((T::to_cpu_storage_owned(out), Shape::from(n + 2 * c)))
        })
    }
}
