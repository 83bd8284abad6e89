//! `torch.optim.SGD`'s update, in place and in one pass over memory (on CUDA one kernel for up
//! to 32 parameters), and the squared norms that gradient clipping needs.
//!
//! Written with plain candle ops the update allocates and walks a parameter-sized tensor seven
//! times per step; for a 22M-parameter ResNet pair that was a tenth of a training step.

use candle_core::{CpuStorage, InplaceOp1, InplaceOp2, Layout, Result, Tensor, Var};

use crate::cpu::{for_each_chunk, slice, slice_mut};
use crate::own_kernels;

/// Elements per parallel job of the update loops.
const CHUNK: usize = 1 << 15;

/// SGD's hyper-parameters for one update (`lr` already includes any per-group multiplier).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdUpdate {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor; 0 keeps no momentum buffer.
    pub momentum: f64,
    /// Dampening of the momentum (PyTorch's `dampening`); the new gradient is weighted `1 − dampening`.
    pub dampening: f64,
    /// L2 penalty: `weight_decay · p` is added to the gradient.
    pub weight_decay: f64,
    /// Nesterov momentum: the step uses `d + momentum·buf` instead of `buf`.
    pub nesterov: bool,
}

/// One SGD step for `param` with gradient `grad`, exactly as PyTorch orders the arithmetic:
/// `d = g + wd·p`; with momentum, `buf = d` on the first step (`buf` is `None`) and
/// `buf = momentum·buf + (1 − dampening)·d` after, then `d = d + momentum·buf` (nesterov) or
/// `d = buf`; finally `p ← p − lr·d`. Returns the momentum buffer to keep (`None` without
/// momentum).
///
/// On the CPU and CUDA (f32, f64, contiguous) `param` and `buf` are updated in place, in one pass
/// (one kernel); elsewhere the same arithmetic runs as candle ops and `param` is set.
pub fn sgd_update(param: &Var, grad: &Tensor, buf: Option<Tensor>, u: SgdUpdate) -> Result<Option<Tensor>> {
    let mut bufs = sgd_update_all(vec![SgdParam { param, grad: grad.clone(), buf, update: u }])?;
    Ok(bufs.pop().flatten())
}

/// One parameter's part of [`sgd_update_all`].
pub struct SgdParam<'a> {
    /// The variable updated in place.
    pub param: &'a Var,
    /// Its gradient, of the parameter's shape.
    pub grad: Tensor,
    /// The buffer [`sgd_update`] returned last step (`None` on the first).
    pub buf: Option<Tensor>,
    /// The hyper-parameters of this parameter's update.
    pub update: SgdUpdate,
}

/// [`sgd_update`] of each parameter, returning their momentum buffers in order. On CUDA the
/// parameters of one dtype update together, one kernel per 32 (as PyTorch's foreach SGD does),
/// where one each would launch 122 for AV-MNIST's two ResNet-18s; the arithmetic is the same.
pub fn sgd_update_all(params: Vec<SgdParam<'_>>) -> Result<Vec<Option<Tensor>>> {
    let mut bufs = Vec::with_capacity(params.len());
    #[cfg(feature = "cuda")]
    let mut tables = gpu::Tables::default();
    for SgdParam { param, grad, buf, update } in params {
        let p = param.as_tensor();
        if grad.dims() != p.dims() {
            candle_core::bail!(
                "sgd_update: gradient shape {:?} differs from the parameter's {:?}",
                grad.dims(),
                p.dims()
            );
        }
        let fused = own_kernels(p.device())
            && grad.device().same_device(p.device())
            && matches!(p.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
            && grad.dtype() == p.dtype()
            && p.is_contiguous();
        if !fused {
            bufs.push(sgd_update_ref(param, &grad, buf, update)?);
            continue;
        }
        let step = Step::new(p, &grad, buf, update)?;
        bufs.push(step.buf.clone());
        #[cfg(feature = "cuda")]
        if p.device().is_cuda() {
            tables.push(p, step)?;
            continue;
        }
        step.run_on_cpu(p)?;
    }
    #[cfg(feature = "cuda")]
    tables.launch()?;
    Ok(bufs)
}

/// A parameter's step, ready to run: its gradient (contiguous), its momentum buffer (zeros on
/// the first step, `None` without momentum) and the scalars of this step.
struct Step {
    grad: Tensor,
    buf: Option<Tensor>,
    momentum_update: MomentumUpdate,
    param_update: SgdUpdate,
}

impl Step {
    fn new(p: &Tensor, grad: &Tensor, buf: Option<Tensor>, u: SgdUpdate) -> Result<Self> {
        let grad = grad.contiguous()?;
        if u.momentum == 0.0 {
            return Ok(Self { grad, buf: None, momentum_update: MomentumUpdate::NONE, param_update: u });
        }
        let (buf, first) = match buf {
            Some(buf) => (buf, false),
            None => (p.zeros_like()?, true),
        };
        // A first step is the general update of a zero buffer with no momentum and no dampening.
        let (momentum, dampening) = if first { (0.0, 0.0) } else { (u.momentum, u.dampening) };
        Ok(Self { grad, buf: Some(buf), momentum_update: MomentumUpdate { momentum, dampening }, param_update: u })
    }

    /// The step on the CPU, in place, in one pass over the parameter and its buffer.
    fn run_on_cpu(&self, p: &Tensor) -> Result<()> {
        let (momentum_update, param_update) = (self.momentum_update, self.param_update);
        match &self.buf {
            None => p.inplace_op2(&self.grad, &ParamStep { buf: None.into(), momentum_update, param_update }),
            Some(buf) => buf.inplace_op1(&MomentumStep { param: p, grad: &self.grad, momentum_update, param_update }),
        }
    }
}

/// `buf ← momentum·buf + (1 − dampening)·(g + wd·p)`: the momentum and dampening of this step's
/// buffer update (both 0 on the first step).
#[derive(Clone, Copy)]
struct MomentumUpdate {
    momentum: f64,
    dampening: f64,
}

impl MomentumUpdate {
    /// Stands in where there is no buffer.
    const NONE: Self = Self { momentum: 0.0, dampening: 0.0 };
}

/// A step's scalars converted to `T` once, for the CPU loop and the CUDA kernel alike, so both
/// round the same values.
#[derive(Clone, Copy)]
struct Scalars<T> {
    lr: T,
    weight_decay: T,
    momentum: T,
    /// `1 − dampening`.
    damp_scale: T,
    /// The momentum Nesterov's step adds (the configured one, also on the first step).
    nesterov_m: T,
    decay: bool,
    damped: bool,
    nesterov: bool,
}

impl<T: crate::cpu::Real> Scalars<T> {
    fn new(mu: MomentumUpdate, u: SgdUpdate) -> Self {
        Self {
            lr: T::from_f64(u.lr),
            weight_decay: T::from_f64(u.weight_decay),
            momentum: T::from_f64(mu.momentum),
            damp_scale: T::from_f64(1.0 - mu.dampening),
            nesterov_m: T::from_f64(u.momentum),
            decay: u.weight_decay != 0.0,
            damped: mu.dampening != 0.0,
            nesterov: u.nesterov,
        }
    }
}

/// The momentum step, in place on the buffer, whose elements it lends to [`ParamStep`], an
/// in-place op on the parameter (candle lets an op write only its first operand, and the
/// buffer's lock is held while the parameter's is taken).
struct MomentumStep<'a> {
    param: &'a Tensor,
    grad: &'a Tensor,
    momentum_update: MomentumUpdate,
    param_update: SgdUpdate,
}

impl MomentumStep<'_> {
    fn lend(&self, buf: Buffer<'_>) -> Result<()> {
        let step =
            ParamStep { buf: Some(buf).into(), momentum_update: self.momentum_update, param_update: self.param_update };
        self.param.inplace_op2(self.grad, &step)
    }
}

impl InplaceOp1 for MomentumStep<'_> {
    fn name(&self) -> &'static str {
        "agm-sgd-momentum-step"
    }

    fn cpu_fwd(&self, bs: &mut CpuStorage, bl: &Layout) -> Result<()> {
        use candle_core::backend::BackendStorage;
        let n = bl.shape().elem_count();
        self.lend(match bs.dtype() {
            candle_core::DType::F32 => Buffer::F32(slice_mut::<f32>(bs, bl, n, self.name())?),
            candle_core::DType::F64 => Buffer::F64(slice_mut::<f64>(bs, bl, n, self.name())?),
            d => candle_core::bail!("{}: only f32 and f64 are supported, got {d:?}", self.name()),
        })
    }
}

/// A momentum buffer's elements, lent by [`MomentumStep`].
enum Buffer<'a> {
    F32(&'a mut [f32]),
    F64(&'a mut [f64]),
}

/// With `d = g + wd·p`: `buf ← momentum·buf + (1 − dampening)·d` when there is a buffer, then
/// `p ← p − lr·s` with `s = buf`, `d + momentum·buf` (nesterov) or `d` (no buffer), per
/// element in one pass.
struct ParamStep<'b> {
    buf: std::sync::Mutex<Option<Buffer<'b>>>,
    momentum_update: MomentumUpdate,
    param_update: SgdUpdate,
}

impl<'b> ParamStep<'b> {
    fn run<T: crate::cpu::Real>(&self, p: &mut [T], g: &[T], buf: Option<&mut [T]>) -> Result<()> {
        if g.len() != p.len() || buf.as_ref().is_some_and(|b| b.len() != p.len()) {
            candle_core::bail!("agm-sgd-step: parameter, gradient and buffer sizes differ");
        }
        let s = Scalars::<T>::new(self.momentum_update, self.param_update);
        let decayed = |g: T, p: T| if s.decay { g + s.weight_decay * p } else { g };
        let Some(buf) = buf else {
            for_each_chunk(p, CHUNK, CHUNK, |i, p| {
                let g = &g[i * CHUNK..i * CHUNK + p.len()];
                for (p, &g) in p.iter_mut().zip(g) {
                    *p -= s.lr * decayed(g, *p);
                }
            });
            return Ok(());
        };
        crate::cpu::for_each_chunk_pair(p, CHUNK, buf, CHUNK, CHUNK, |i, p, buf| {
            let g = &g[i * CHUNK..i * CHUNK + p.len()];
            for ((p, b), &g) in p.iter_mut().zip(buf.iter_mut()).zip(g) {
                let d = decayed(g, *p);
                *b = s.momentum * *b + if s.damped { s.damp_scale * d } else { d };
                let step = if s.nesterov { d + s.nesterov_m * *b } else { *b };
                *p -= s.lr * step;
            }
        });
        Ok(())
    }

    fn buffer(&self) -> std::sync::MutexGuard<'_, Option<Buffer<'b>>> {
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl InplaceOp2 for ParamStep<'_> {
    fn name(&self) -> &'static str {
        "agm-sgd-step"
    }

    fn cpu_fwd(&self, ps: &mut CpuStorage, pl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<()> {
        use candle_core::{backend::BackendStorage, DType};
        let (n, name) = (pl.shape().elem_count(), self.name());
        match (&mut *self.buffer(), gs.dtype()) {
            (None, DType::F32) => self.run(slice_mut::<f32>(ps, pl, n, name)?, slice(gs, gl, name)?, None),
            (None, DType::F64) => self.run(slice_mut::<f64>(ps, pl, n, name)?, slice(gs, gl, name)?, None),
            (Some(Buffer::F32(b)), _) => self.run(slice_mut::<f32>(ps, pl, n, name)?, slice(gs, gl, name)?, Some(b)),
            (Some(Buffer::F64(b)), _) => self.run(slice_mut::<f64>(ps, pl, n, name)?, slice(gs, gl, name)?, Some(b)),
            (_, d) => candle_core::bail!("{name}: only f32 and f64 in host memory are supported, got {d:?}"),
        }
    }
}

/// [`sgd_update`] from candle ops, for other devices and dtypes.
pub fn sgd_update_ref(param: &Var, grad: &Tensor, buf: Option<Tensor>, u: SgdUpdate) -> Result<Option<Tensor>> {
    // Detached so that the buffer and the new value carry no autograd graph.
    let p = param.as_tensor().detach();
    let grad = grad.detach();
    let mut d = if u.weight_decay != 0.0 { grad.add(&p.affine(u.weight_decay, 0.0)?)? } else { grad };
    let mut kept = None;
    if u.momentum != 0.0 {
        let buf = match buf {
            // PyTorch clones d on the first step: no dampening applied.
            None => d.copy()?,
            Some(buf) => {
                let scaled = if u.dampening != 0.0 { d.affine(1.0 - u.dampening, 0.0)? } else { d.clone() };
                buf.affine(u.momentum, 0.0)?.add(&scaled)?
            }
        };
        d = if u.nesterov { d.add(&buf.affine(u.momentum, 0.0)?)? } else { buf.clone() };
        kept = Some(buf);
    }
    param.set(&p.sub(&d.affine(u.lr, 0.0)?)?)?;
    Ok(kept)
}

/// `Σ t²` over every element, accumulated in f64: the square of a gradient's L2 norm for
/// clipping, in one parallel, deterministic pass on the CPU (f32, f64) without a converted copy,
/// and on CUDA (f32, f64) as a deterministic two-kernel reduction; elsewhere candle ops (in f32
/// on Metal, which has no f64).
pub fn sum_squares(t: &Tensor) -> Result<f64> {
    #[cfg(feature = "cuda")]
    if let Some(sums) = gpu::sum_squares_each(std::slice::from_ref(t))? {
        return Ok(sums[0]);
    }
    sum_squares_apart(t)
}

/// [`sum_squares`] of each tensor. On CUDA, when all are f32 (or all f64) on one device, the
/// sums come back in one copy, so clipping waits for the GPU once per step rather than once per
/// parameter; otherwise one tensor at a time.
pub fn sum_squares_each(ts: &[Tensor]) -> Result<Vec<f64>> {
    #[cfg(feature = "cuda")]
    if let Some(sums) = gpu::sum_squares_each(ts)? {
        return Ok(sums);
    }
    ts.iter().map(sum_squares).collect()
}

/// [`sum_squares`] of one tensor off CUDA: the Gram pass of the tensor with itself.
fn sum_squares_apart(t: &Tensor) -> Result<f64> {
    Ok(crate::reduce::products(&[t.detach()], &[(0, 0)], "sum_squares")?[0])
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::cudarc::driver::{
        CudaStream, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg, SyncOnDrop,
    };
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{DType, Layout, Result, Storage, Tensor};

    use super::{Scalars, Step};
    use crate::cuda::{alloc, per_row, view, zeros, CudaReal, BLOCK, SGD};

    /// Blocks of the first pass of [`sum_squares_each`]: enough to fill a large GPU, few enough
    /// for one block to add their partial sums.
    const SUM_BLOCKS: usize = 1024;

    /// Tensors per launch of `table_step`; `SGD_TABLE_LEN` in `cuda/sgd.cu`.
    const TABLE_LEN: usize = 32;
    /// Elements per block of `table_step`; `SGD_TABLE_CHUNK` in `cuda/sgd.cu`.
    const TABLE_CHUNK: usize = 4096;
    /// The flags of a tensor's step; `SGD_DECAY`, … in `cuda/sgd.cu`.
    const DECAY: i32 = 1;
    const DAMPED: i32 = 2;
    const NESTEROV: i32 = 4;

    /// The argument of `table_step`: the kernel's `SgdTable<T>`, field for field (device
    /// pointers and `size_t` as `u64`). Tensor `k` owns blocks `first_block[k]..first_block[k+1]`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct SgdTable<T> {
        p: [u64; TABLE_LEN],
        g: [u64; TABLE_LEN],
        buf: [u64; TABLE_LEN],
        n: [u64; TABLE_LEN],
        first_block: [u64; TABLE_LEN + 1],
        lr: [T; TABLE_LEN],
        momentum: [T; TABLE_LEN],
        weight_decay: [T; TABLE_LEN],
        damp_scale: [T; TABLE_LEN],
        nesterov_m: [T; TABLE_LEN],
        flags: [i32; TABLE_LEN],
        count: i32,
    }

    // The kernel asserts the same sizes, so the two layouts cannot drift apart unnoticed.
    const _: () = assert!(size_of::<SgdTable<f32>>() == 2064 && size_of::<SgdTable<f64>>() == 2704);

    // SAFETY: plain `repr(C)` data with the layout of the kernel's parameter.
    unsafe impl<T: CudaReal> DeviceRepr for SgdTable<T> {}

    /// The CUDA parameters' steps of one [`super::sgd_update_all`], launched together.
    #[derive(Default)]
    pub(super) struct Tables {
        steps: Vec<(Tensor, Step)>,
    }

    impl Tables {
        pub(super) fn push(&mut self, param: &Tensor, step: Step) -> Result<()> {
            // A parameter listed twice steps twice, one after the other, as it would alone.
            if self.steps.iter().any(|(p, _)| p.id() == param.id()) {
                std::mem::take(self).launch()?;
            }
            self.steps.push((param.clone(), step));
            Ok(())
        }

        /// One kernel per 32 steps of one device and dtype.
        pub(super) fn launch(self) -> Result<()> {
            let mut groups: Vec<Vec<(Tensor, Step)>> = Vec::new();
            for (p, step) in self.steps {
                let same = |g: &&mut Vec<(Tensor, Step)>| {
                    let first = &g[0].0;
                    first.dtype() == p.dtype() && first.device().same_device(p.device())
                };
                match groups.iter_mut().find(same) {
                    Some(group) => group.push((p, step)),
                    None => groups.push(vec![(p, step)]),
                }
            }
            for group in &groups {
                for table in group.chunks(TABLE_LEN) {
                    match table[0].0.dtype() {
                        DType::F32 => launch_table::<f32>(table)?,
                        _ => launch_table::<f64>(table)?,
                    }
                }
            }
            Ok(())
        }
    }

    /// `table_step` over up to [`TABLE_LEN`] steps of `T` on one device.
    fn launch_table<T: CudaReal>(steps: &[(Tensor, Step)]) -> Result<()> {
        let candle_core::Device::Cuda(dev) = steps[0].0.device() else {
            candle_core::bail!("sgd_update: a parameter left the GPU")
        };
        let stream = dev.cuda_stream();
        // Every storage the kernel touches stays locked until it is launched.
        let locked: Vec<_> = steps
            .iter()
            .map(|(p, s)| [Some(p), Some(&s.grad), s.buf.as_ref()].map(|t| t.map(Tensor::storage_and_layout)))
            .collect();
        let mut syncs = Vec::new();
        let zero = [T::ZERO; TABLE_LEN];
        let mut table = SgdTable {
            p: [0; TABLE_LEN],
            g: [0; TABLE_LEN],
            buf: [0; TABLE_LEN],
            n: [0; TABLE_LEN],
            first_block: [0; TABLE_LEN + 1],
            lr: zero,
            momentum: zero,
            weight_decay: zero,
            damp_scale: zero,
            nesterov_m: zero,
            flags: [0; TABLE_LEN],
            count: steps.len() as i32,
        };
        let mut blocks = 0;
        for (k, ((_, step), storages)) in steps.iter().zip(&locked).enumerate() {
            let n = step.grad.elem_count();
            let mut addresses = [0; 3];
            for (address, storage) in addresses.iter_mut().zip(storages) {
                if let Some((storage, layout)) = storage {
                    *address = device_ptr::<T>(storage, layout, n, &stream, &mut syncs)?;
                }
            }
            [table.p[k], table.g[k], table.buf[k]] = addresses;
            (table.n[k], table.first_block[k]) = (n as u64, blocks as u64);
            blocks += n.div_ceil(TABLE_CHUNK);
            let s = Scalars::<T>::new(step.momentum_update, step.param_update);
            table.lr[k] = s.lr;
            table.weight_decay[k] = s.weight_decay;
            table.momentum[k] = s.momentum;
            table.damp_scale[k] = s.damp_scale;
            table.nesterov_m[k] = s.nesterov_m;
            let flag = |on: bool, bit: i32| if on { bit } else { 0 };
            table.flags[k] = flag(s.decay, DECAY) | flag(s.damped, DAMPED) | flag(s.nesterov, NESTEROV);
        }
        table.first_block[steps.len()] = blocks as u64;
        if blocks == 0 {
            return Ok(());
        }
        let func = SGD.func::<T>(dev, "table_step")?;
        let mut launch = func.builder();
        launch.arg(&table);
        let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: block `b` of tensor `k` reads and writes elements `[(b − first_block[k])·CHUNK,
        // …+CHUNK) ∩ [0, n[k])` of its parameter and buffer and reads those of its gradient, all
        // `n[k]` long (checked above); no tensor is in the table twice.
        unsafe { launch.launch(cfg) }.w()?;
        drop(syncs);
        Ok(())
    }

    /// The device address of a locked contiguous storage of `n` elements of `T`. The kernel
    /// writes through some of them although they are taken for reading: candle runs every op on
    /// the device's one stream, so stream order alone orders those writes.
    fn device_ptr<'a, T: CudaReal>(
        storage: &'a Storage,
        layout: &Layout,
        n: usize,
        stream: &'a CudaStream,
        syncs: &mut Vec<SyncOnDrop<'a>>,
    ) -> Result<u64> {
        let Storage::Cuda(storage) = storage else { candle_core::bail!("sgd_update: a tensor left the GPU") };
        let Some((start, _)) = layout.contiguous_offsets().filter(|(start, end)| end - start == n) else {
            candle_core::bail!("sgd_update: the parameter, gradient and buffer must be contiguous with {n} elements")
        };
        let (ptr, sync) = storage.as_cuda_slice::<T>()?.device_ptr(stream);
        syncs.push(sync);
        Ok(ptr + (start * size_of::<T>()) as u64)
    }

    /// [`super::sum_squares_each`] on CUDA, or `None` unless every tensor is f32 (or every one
    /// f64) on one CUDA device. Each tensor's per-block partial sums fill a row of
    /// [`SUM_BLOCKS`] (zeros past its blocks); one block per row then adds them in a fixed order
    /// (deterministic, unlike atomics), and the sums are copied back together.
    pub(super) fn sum_squares_each(ts: &[Tensor]) -> Result<Option<Vec<f64>>> {
        let Some(first) = ts.first() else { return Ok(None) };
        let candle_core::Device::Cuda(dev) = first.device() else { return Ok(None) };
        let dtype = first.dtype();
        let same = |t: &Tensor| t.device().same_device(first.device()) && t.dtype() == dtype;
        if !matches!(dtype, candle_core::DType::F32 | candle_core::DType::F64) || !ts.iter().all(same) {
            return Ok(None);
        }
        let sums = match dtype {
            candle_core::DType::F32 => sum_rows::<f32>(dev, ts)?,
            _ => sum_rows::<f64>(dev, ts)?,
        };
        Ok(Some(sums))
    }

    /// The sums of [`sum_squares_each`] for tensors of type `T` on `dev`. Each tensor's storage
    /// is read only while its own kernel is launched (a tensor may be passed twice).
    fn sum_rows<T: CudaReal>(dev: &candle_core::CudaDevice, ts: &[Tensor]) -> Result<Vec<f64>> {
        let mut partials = zeros::<f64>(dev, ts.len() * SUM_BLOCKS)?;
        let first = SGD.func::<T>(dev, "sum_squares_partial")?;
        for (i, t) in ts.iter().enumerate() {
            let t = t.contiguous()?;
            let (storage, layout) = t.storage_and_layout();
            let Storage::Cuda(storage) = &*storage else { candle_core::bail!("sum_squares: a tensor left the GPU") };
            let x = view::<T>(storage, layout, "sum_squares")?;
            let n = x.len();
            let blocks = n.div_ceil(BLOCK as usize).clamp(1, SUM_BLOCKS);
            let mut row = partials.slice_mut(i * SUM_BLOCKS..(i + 1) * SUM_BLOCKS);
            let mut launch = first.builder();
            launch.arg(&n).arg(&x).arg(&mut row);
            let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: the grid-stride loop reads `n` elements of `x`; block `j` writes `row[j]`,
            // and the grid has `blocks` ≤ SUM_BLOCKS blocks.
            unsafe { launch.launch(cfg) }.w()?;
        }
        let mut totals = alloc::<f64>(dev, ts.len())?;
        let second = SGD.func::<T>(dev, "sum_partials")?;
        let mut launch = second.builder();
        launch.arg(&SUM_BLOCKS).arg(&partials).arg(&mut totals);
        // SAFETY: block `i` reads row `i`'s SUM_BLOCKS partials and writes `totals[i]`.
        unsafe { launch.launch(per_row(ts.len())) }.w()?;
        let mut sums = dev.cuda_stream().clone_dtoh(&totals).w()?;
        sums.truncate(ts.len());
        Ok(sums)
    }
}
