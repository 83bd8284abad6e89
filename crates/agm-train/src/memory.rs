//! Peak memory of a run: bytes live on the heap when the binary installs [`CountingAlloc`],
//! otherwise the process's peak resident size where the OS reports it.
//!
//! On a CUDA device, [`device_peak_memory_bytes`] reads the high-water mark of the memory pool
//! that candle's stream-ordered allocations come from: live device bytes, like PyTorch's
//! `max_memory_allocated`.
//!
//! The resident size overstates a run once the allocator keeps freed blocks for reuse (as
//! `agm_kernels::tune_cpu_runtime` asks it to), and it cannot be reset between the arms of a
//! benchmark; the counter measures live data and can.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting live and peak bytes. Install it in a binary:
/// `#[global_allocator] static ALLOC: agm_train::memory::CountingAlloc = agm_train::memory::CountingAlloc;`
pub struct CountingAlloc;

impl CountingAlloc {
    fn grew(size: usize) {
        let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
        PEAK.fetch_max(live, Ordering::Relaxed);
    }
}

// SAFETY: every call forwards to the system allocator unchanged; the counters are atomics.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            Self::grew(new_size);
        }
        p
    }
}

/// Whether the counter is the global allocator: it has seen an allocation.
fn counting() -> bool {
    PEAK.load(Ordering::Relaxed) > 0
}

/// The peak since the start or the last [`reset_peak_memory`]: live heap bytes under
/// [`CountingAlloc`], else the peak resident size (Linux `VmHWM`), else `None`.
pub fn peak_memory_bytes() -> Option<u64> {
    if counting() {
        return Some(PEAK.load(Ordering::Relaxed) as u64);
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Starts a new peak from the present: the live bytes, or the resident size (Linux).
pub fn reset_peak_memory() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The peak on `device` since the last [`reset_device_peak_memory`]: on the CPU
/// [`peak_memory_bytes`]; on CUDA the used-bytes high-water mark of the device's memory pool
/// (`None` where the driver has no stream-ordered allocator).
pub fn device_peak_memory_bytes(device: &candle_core::Device) -> Option<u64> {
    match device {
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(cuda) => cuda_pool::used_high(cuda),
        _ => peak_memory_bytes(),
    }
}

/// Starts a new peak on `device` from the present.
pub fn reset_device_peak_memory(device: &candle_core::Device) {
    match device {
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(cuda) => cuda_pool::reset_used_high(cuda),
        _ => reset_peak_memory(),
    }
}

#[cfg(feature = "cuda")]
mod cuda_pool {
    use candle_core::cuda::cudarc::driver::{result, sys};
    use candle_core::CudaDevice;

    /// The pool `cuMemAllocAsync` draws from, once the stream's queued work (and frees) is done.
    fn pool(cuda: &CudaDevice) -> Option<sys::CUmemoryPool> {
        let stream = cuda.cuda_stream();
        let context = stream.context();
        if !context.has_async_alloc() {
            return None;
        }
        stream.synchronize().ok()?;
        context.bind_to_thread().ok()?;
        // SAFETY: the device handle comes from a live context.
        unsafe { result::device::get_mem_pool(context.cu_device()) }.ok()
    }

    pub(super) fn used_high(cuda: &CudaDevice) -> Option<u64> {
        let pool = pool(cuda)?;
        let mut bytes: u64 = 0;
        // SAFETY: the attribute is a cuuint64_t, written into `bytes`.
        unsafe {
            result::mem_pool::get_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&mut bytes as *mut u64).cast(),
            )
        }
        .ok()?;
        Some(bytes)
    }

    pub(super) fn reset_used_high(cuda: &CudaDevice) {
        let Some(pool) = pool(cuda) else { return };
        // The driver accepts only 0 here: it restarts the mark from the bytes in use now.
        let mut zero: u64 = 0;
        // SAFETY: as in `used_high`.
        let _ = unsafe {
            result::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&mut zero as *mut u64).cast(),
            )
        };
    }
}
