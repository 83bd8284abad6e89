//! Plumbing shared by the CUDA kernels (the `cuda` feature): the PTX modules that `build.rs`
//! compiles from `cuda/*.cu`, typed views of contiguous device storage, and launch shapes.
//!
//! Each `.cu` file is one module; each kernel exists as `<name>_f32` and `<name>_f64`.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, DeviceRepr, LaunchArgs, LaunchConfig, ValidAsZeroBits,
};
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaDevice, CudaStorage, Layout, Result};

use crate::cpu::Real;

/// The PTX text of every `cuda/*.cu` file, as constants named after the file (`RELU`, …).
mod ptx {
    include!(concat!(env!("OUT_DIR"), "/ptx.rs"));
}

/// One compiled `.cu` file.
#[derive(Clone, Copy)]
pub(crate) struct Module {
    name: &'static str,
    ptx: &'static str,
}

pub(crate) const BATCH_NORM: Module = Module { name: "agm-batch-norm", ptx: ptx::BATCH_NORM };
pub(crate) const CONV: Module = Module { name: "agm-conv", ptx: ptx::CONV };
pub(crate) const DROPOUT: Module = Module { name: "agm-dropout", ptx: ptx::DROPOUT };
pub(crate) const LINEAR: Module = Module { name: "agm-linear", ptx: ptx::LINEAR };
pub(crate) const LOSS: Module = Module { name: "agm-loss", ptx: ptx::LOSS };
pub(crate) const NOISE: Module = Module { name: "agm-noise", ptx: ptx::NOISE };
pub(crate) const NORM: Module = Module { name: "agm-norm", ptx: ptx::NORM };
pub(crate) const POOL: Module = Module { name: "agm-pool", ptx: ptx::POOL };
pub(crate) const RELU: Module = Module { name: "agm-relu", ptx: ptx::RELU };
pub(crate) const SGD: Module = Module { name: "agm-sgd", ptx: ptx::SGD };

impl Module {
    /// The kernel `<kernel>_<f32|f64>` of this module, loaded once per device.
    pub(crate) fn func<T: CudaReal>(&self, dev: &CudaDevice, kernel: &str) -> Result<Kernel> {
        let func = dev.get_or_load_custom_func(&format!("{kernel}_{}", T::SUFFIX), self.name, self.ptx)?;
        Ok(Kernel { func: func.into_cuda_function(), stream: dev.cuda_stream() })
    }
}

/// A loaded kernel and the device's stream it runs on.
pub(crate) struct Kernel {
    func: CudaFunction,
    stream: Arc<CudaStream>,
}

impl Kernel {
    /// Starts a launch on the device's stream; push the arguments in the kernel's order.
    pub(crate) fn builder(&self) -> LaunchArgs<'_> {
        self.stream.launch_builder(&self.func)
    }
}

/// The float types the CUDA kernels are instantiated for.
pub(crate) trait CudaReal: Real + CudaDType + DeviceRepr + ValidAsZeroBits + Unpin {
    /// The suffix of this type's kernel names.
    const SUFFIX: &'static str;
}

impl CudaReal for f32 {
    const SUFFIX: &'static str = "f32";
}

impl CudaReal for f64 {
    const SUFFIX: &'static str = "f64";
}

/// The elements of a contiguous `storage` of type `T`.
pub(crate) fn view<'a, T: CudaReal>(storage: &'a CudaStorage, layout: &Layout, op: &str) -> Result<CudaView<'a, T>> {
    let data = storage.as_cuda_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(data.slice(start..end)),
        None => candle_core::bail!("{op}: the kernel needs a contiguous input"),
    }
}

/// The elements of a contiguous `storage` of type `T`, writable, for in-place ops; `len` is the
/// number the op expects.
pub(crate) fn view_mut<'a, T: CudaReal>(
    storage: &'a mut CudaStorage,
    layout: &Layout,
    len: usize,
    op: &str,
) -> Result<CudaViewMut<'a, T>> {
    let data = storage.as_cuda_slice_mut::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) if end - start == len => Ok(data.slice_mut(start..end)),
        _ => candle_core::bail!("{op}: the updated tensor must be contiguous with {len} elements"),
    }
}

/// A device buffer of `len` elements whose every element the caller's kernel writes. At least
/// one element: CUDA refuses empty allocations, and an empty tensor's storage may be longer.
pub(crate) fn alloc<T: CudaReal>(dev: &CudaDevice, len: usize) -> Result<CudaSlice<T>> {
    // SAFETY: callers launch a kernel that writes all `len` elements before any read.
    unsafe { dev.alloc::<T>(len.max(1)) }
}

/// A zero-filled device buffer, for kernels that accumulate (at least one element, as [`alloc`]).
pub(crate) fn zeros<T: CudaReal>(dev: &CudaDevice, len: usize) -> Result<CudaSlice<T>> {
    dev.alloc_zeros::<T>(len.max(1))
}

/// Wraps a kernel's output buffer as candle storage on `dev`.
pub(crate) fn storage<T: CudaReal>(slice: CudaSlice<T>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(slice, dev.clone())
}

/// Threads per block of the row-wise kernels; `AGM_BLOCK` in `cuda/common.cuh`.
pub(crate) const BLOCK: u32 = 256;

/// A launch for the grid-stride elementwise kernels over `n` elements.
pub(crate) fn elementwise(n: usize) -> LaunchConfig {
    // Grid-stride loops cover any `n`, so the grid is capped well below CUDA's limit.
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 65_535) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// A launch with one block of [`BLOCK`] threads per row (or channel): block `i` handles row `i`.
pub(crate) fn per_row(rows: usize) -> LaunchConfig {
    per_row_parts(rows, 1)
}

/// A launch with `parts` blocks of [`BLOCK`] threads per row (or channel): block `(i, p)`
/// handles part `p` of row `i`.
pub(crate) fn per_row_parts(rows: usize, parts: usize) -> LaunchConfig {
    let grid_dim = (rows.max(1) as u32, parts.max(1) as u32, 1);
    LaunchConfig { grid_dim, block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}
