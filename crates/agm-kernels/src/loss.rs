//! Per-sample cross-entropy, fused: one pass over the logits forward and one backward.
//!
//! candle-nn's `cross_entropy` only returns the batch mean; AGM-style methods need each sample's
//! loss, and composing `log_softmax` + `gather` costs several passes and temporaries.

use std::sync::{Arc, Mutex};

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};

use crate::cpu::{check_real, collect_chunks, dispatch_real, for_each_chunk_pair, same_storage_dtype, slice, Real};
use crate::own_kernels;

/// Checks `logits [B, K]` against `labels u32 [B]` and returns the labels.
fn checked_labels(logits: &Tensor, labels: &Tensor, op: &str) -> Result<Vec<u32>> {
    let (b, k) = logits.dims2()?;
    if k == 0 {
        candle_core::bail!("{op}: logits {:?} have no classes", logits.dims());
    }
    if labels.dtype() != DType::U32 {
        candle_core::bail!("{op}: labels must be u32, got {:?}", labels.dtype());
    }
    if labels.dims() != [b] {
        candle_core::bail!("{op}: labels {:?} must be [{b}] to match logits {:?}", labels.dims(), logits.dims());
    }
    let values = labels.to_vec1::<u32>()?;
    if let Some(bad) = values.iter().find(|&&l| l as usize >= k) {
        candle_core::bail!("{op}: label {bad} is out of range for {k} classes");
    }
    Ok(values)
}

/// Per-sample cross-entropy `−log softmax(logits)[label]` of `logits [B, K]` and `labels u32 [B]`,
/// as a `[B]` tensor with gradients to `logits` (`(softmax − onehot) · g`).
///
/// On the CPU and CUDA (f32, f64) a fused, max-subtracted custom op; elsewhere
/// [`cross_entropy_per_sample_ref`]. Labels are read to the host once and checked against `K`
/// (on CUDA the op then copies them to the device once for both passes).
pub fn cross_entropy_per_sample(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    const OP: &str = "cross_entropy_per_sample";
    if !own_kernels(logits.device()) {
        return cross_entropy_per_sample_ref(logits, labels);
    }
    let labels = checked_labels(logits, labels, OP)?;
    check_real(logits, OP)?;
    logits.contiguous()?.apply_op1(CrossEntropy { labels: labels.into(), probs: Mutex::new(None) })
}

/// Reference from plain differentiable ops: max-subtracted `log_softmax`, then `gather`.
pub fn cross_entropy_per_sample_ref(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    checked_labels(logits, labels, "cross_entropy_per_sample_ref")?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let log_probs = shifted.broadcast_sub(&lse)?;
    log_probs.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?.neg()
}

/// The softmax that the forward pass keeps for the backward pass, where it was computed.
#[derive(Clone)]
enum Probs {
    Cpu(Arc<CpuStorage>),
    /// Kept on the GPU (with the labels already copied there): the backward pass then needs no
    /// `exp` and no second copy, as on the CPU.
    #[cfg(feature = "cuda")]
    Cuda(Arc<gpu::Kept>),
}

impl Probs {
    /// The softmax kept on the CPU; none where the forward pass ran elsewhere.
    fn on_cpu(&self) -> Option<&Arc<CpuStorage>> {
        match self {
            Probs::Cpu(probs) => Some(probs),
            #[cfg(feature = "cuda")]
            Probs::Cuda(_) => None,
        }
    }
}

/// The forward pass also keeps the softmax of every row, so the backward pass needs no `exp`.
/// The checked labels live in the op, not in the graph: they never need a gradient.
struct CrossEntropy {
    labels: Arc<[u32]>,
    probs: Mutex<Option<Probs>>,
}

impl CrossEntropy {
    fn stash(&self) -> Result<std::sync::MutexGuard<'_, Option<Probs>>> {
        self.probs.lock().map_err(|_| candle_core::Error::Msg("cross entropy: poisoned lock".into()))
    }
}

impl CrossEntropy {
    /// `(B, K)` of the logits, checked against the labels, on every backend.
    fn checked_dims(&self, layout: &Layout) -> Result<(usize, usize)> {
        let (b, k) = layout.shape().dims2()?;
        if b != self.labels.len() {
            candle_core::bail!("{}: {b} rows for {} labels", self.name(), self.labels.len());
        }
        Ok((b, k))
    }
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "agm-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, k) = self.checked_dims(layout)?;
        dispatch_real!(storage, self.name(), T => {
            let x = slice::<T>(storage, layout, self.name())?;
            let mut probs = vec![T::ZERO; b * k];
            let mut out = vec![T::ZERO; b];
            for_each_chunk_pair(&mut probs, k, &mut out, 1, 2 * k, |i, p, loss| {
                let row = &x[i * k..(i + 1) * k];
                let max = row.iter().fold(T::NEG_INF, |m, &v| if v > m { v } else { m });
                let mut sum = T::ZERO;
                for (p, &v) in p.iter_mut().zip(row) {
                    *p = (v - max).exp();
                    sum += *p;
                }
                // −log p[y] from the logits, not from the rounded (possibly underflowed) p[y].
                loss[0] = max + sum.ln() - row[self.labels[i] as usize];
                let inv = T::from_f64(1.0) / sum;
                p.iter_mut().for_each(|p| *p *= inv);
            });
            *self.stash()? = Some(Probs::Cpu(Arc::new(T::to_cpu_storage_owned(probs))));
            Ok((T::to_cpu_storage_owned(out), Shape::from(b)))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let (b, k) = self.checked_dims(layout)?;
        // The kernels index each row by its label: a bad one must stop here, before any launch.
        if let Some(bad) = self.labels.iter().find(|&&l| l as usize >= k) {
            candle_core::bail!("{}: label {bad} is out of range for {k} classes", self.name());
        }
        dispatch_real!(storage, self.name(), T => {
            let (loss, kept) = gpu::cross_entropy::<T>(storage, layout, &self.labels, self.name())?;
            *self.stash()? = Some(Probs::Cuda(Arc::new(kept)));
            Ok((loss, Shape::from(b)))
        })
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let Some(probs) = self.stash()?.clone() else {
            candle_core::bail!("{}: backward before forward", self.name());
        };
        let op = CrossEntropyBwd { labels: self.labels.clone(), probs };
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

/// Gradient of [`CrossEntropy`]: `g [B]` to `(softmax − onehot(label)) · g [B, K]`, with the
/// softmax kept by the forward pass.
struct CrossEntropyBwd {
    labels: Arc<[u32]>,
    probs: Probs,
}

impl CrossEntropyBwd {
    /// The batch size, checked against the incoming gradient `[B]`, on every backend.
    fn checked_rows(&self, layout: &Layout) -> Result<usize> {
        let b = self.labels.len();
        if layout.dims() != [b] {
            candle_core::bail!("{}: gradient {:?} for {b} labels", self.name(), layout.dims());
        }
        Ok(b)
    }
}

impl CustomOp1 for CrossEntropyBwd {
    fn name(&self) -> &'static str {
        "agm-cross-entropy-bwd"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let b = self.checked_rows(layout)?;
        let Some(probs) = self.probs.on_cpu() else {
            candle_core::bail!("{}: the forward pass ran on CUDA", self.name());
        };
        same_storage_dtype(storage, probs, self.name())?;
        dispatch_real!(storage, self.name(), T => {
            let grad = slice::<T>(storage, layout, self.name())?;
            let probs = probs.as_slice::<T>()?;
            let k = probs.len() / b.max(1);
            let dx = collect_chunks(b * k, k, k, |i, dst| {
                let g = grad[i];
                for (o, &p) in dst.iter_mut().zip(&probs[i * k..(i + 1) * k]) {
                    *o = p * g;
                }
                dst[self.labels[i] as usize] -= g;
            });
            Ok((T::to_cpu_storage_owned(dx), Shape::from((b, k))))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        self.checked_rows(layout)?;
        let kept = match &self.probs {
            Probs::Cuda(kept) => kept,
            Probs::Cpu(_) => candle_core::bail!("{}: the forward pass ran on the CPU", self.name()),
        };
        dispatch_real!(storage, self.name(), T => gpu::cross_entropy_bwd::<T>(storage, layout, kept, self.name()))
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, Layout, Result, Shape};

    use crate::cuda::{alloc, elementwise, per_row, storage, view, CudaReal, LOSS};

    /// What the forward pass leaves on the device for the backward pass.
    pub(super) struct Kept {
        /// The softmax of the logits, `[B, K]`, in the logits' dtype.
        probs: CudaStorage,
        /// The labels, checked against `K` on the host.
        labels: CudaSlice<u32>,
        rows: usize,
        classes: usize,
    }

    /// The per-sample losses `[B]` of contiguous `logits [B, K]` and the kept softmax; `labels`
    /// must all be below `K` (the caller checks).
    pub(super) fn cross_entropy<T: CudaReal>(
        logits: &CudaStorage,
        layout: &Layout,
        labels: &[u32],
        op: &str,
    ) -> Result<(CudaStorage, Kept)> {
        let dev = logits.device();
        let (rows, classes) = layout.shape().dims2()?;
        let x = view::<T>(logits, layout, op)?;
        let labels = dev.clone_htod(labels)?;
        let mut probs = alloc::<T>(dev, rows * classes)?;
        let mut loss = alloc::<T>(dev, rows)?;
        let func = LOSS.func::<T>(dev, "cross_entropy_fwd")?;
        let mut launch = func.builder();
        launch.arg(&rows).arg(&classes).arg(&x).arg(&labels).arg(&mut probs).arg(&mut loss);
        // SAFETY: block `r` < rows reads row `r` of the logits (K elements) and labels[r] < K,
        // and writes row `r` of `probs` and loss[r].
        unsafe { launch.launch(per_row(rows)) }.w()?;
        Ok((storage(loss, dev), Kept { probs: storage(probs, dev), labels, rows, classes }))
    }

    /// The gradient `(softmax − onehot(label)) · g [B, K]` of the losses for `grad [B]`.
    pub(super) fn cross_entropy_bwd<T: CudaReal>(
        grad: &CudaStorage,
        layout: &Layout,
        kept: &Kept,
        op: &str,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = grad.device();
        let Kept { rows, classes, .. } = *kept;
        let g = view::<T>(grad, layout, op)?;
        let probs = kept.probs.as_cuda_slice::<T>()?;
        let n = rows * classes;
        let mut dx = alloc::<T>(dev, n)?;
        let func = LOSS.func::<T>(dev, "cross_entropy_bwd")?;
        let mut launch = func.builder();
        launch.arg(&rows).arg(&classes).arg(&g).arg(probs).arg(&kept.labels).arg(&mut dx);
        // SAFETY: reads B of `grad` and labels (each < K) and B·K of `probs`, writes B·K of `dx`.
        unsafe { launch.launch(elementwise(n)) }.w()?;
        Ok((storage(dx, dev), Shape::from((rows, classes))))
    }
}
