//! What a training step asks of a CUDA device, counted: kernels run, memory copies and memory
//! sets, from CUPTI's activity records (what PyTorch's profiler reads, so the two sides count
//! alike). CUPTI is opened at run time (`libcupti.so`, from a CUDA install or the
//! `nvidia-cuda-cupti` wheel on `LD_LIBRARY_PATH`); where it or the `cuda` feature is missing,
//! [`count_launches`] says why instead of counting.

use candle_core::{Device, Result};

/// Device work one call asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaunchCounts {
    /// Kernels, whichever library launched them (agm's, candle's, cuBLAS, cuDNN).
    pub kernels: u64,
    pub memcpys: u64,
    pub memsets: u64,
}

/// Runs `work` (which should leave the device idle, as [`crate::StepBench::step`] does) and
/// counts the device work it caused. The outer error is `work`'s; the inner one says why nothing
/// could be counted (not a CUDA device, no `cuda` feature, CUPTI missing or refusing), in which
/// case `work` may not have run.
pub fn count_launches(
    device: &Device,
    work: impl FnOnce() -> Result<()>,
) -> Result<std::result::Result<LaunchCounts, String>> {
    if !device.is_cuda() {
        return Ok(Err("launches are counted on CUDA devices only".into()));
    }
    #[cfg(feature = "cuda")]
    return cupti::count(device, work);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = work;
        Ok(Err("built without the `cuda` feature".into()))
    }
}

#[cfg(feature = "cuda")]
mod cupti {
    //! The CUPTI activity entry points used, bound by hand as `agm_kernels` binds cuDNN's.

    use std::alloc::Layout;
    use std::ffi::{c_char, c_void, CStr};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock};

    use candle_core::{Device, Result};

    use super::LaunchCounts;

    type Status = u32;
    type Requested = unsafe extern "C" fn(*mut *mut u8, *mut usize, *mut usize);
    type Completed = unsafe extern "C" fn(*mut c_void, u32, *mut u8, usize, usize);

    /// `CUpti_ActivityKind`s counted.
    const MEMCPY: u32 = 1;
    const MEMSET: u32 = 2;
    const KERNEL: u32 = 3;
    const CONCURRENT_KERNEL: u32 = 10;
    const KINDS: [u32; 3] = [CONCURRENT_KERNEL, MEMCPY, MEMSET];
    /// `CUPTI_ACTIVITY_FLAG_FLUSH_FORCED`.
    const FLUSH_FORCED: u32 = 1;
    /// Activity buffers: 1 MiB each (tens of thousands of records), aligned as CUPTI asks.
    const BUFFER: usize = 1 << 20;
    const ALIGN: usize = 8;

    struct Api {
        enable: unsafe extern "C" fn(u32) -> Status,
        disable: unsafe extern "C" fn(u32) -> Status,
        /// Records are `CUpti_Activity`, whose first field is its kind.
        next_record: unsafe extern "C" fn(*mut u8, usize, *mut *mut u32) -> Status,
        flush_all: unsafe extern "C" fn(u32) -> Status,
        result_string: unsafe extern "C" fn(Status, *mut *const c_char) -> Status,
        _lib: libloading::Library,
    }

    impl Api {
        /// CUPTI, with [`requested`] and [`completed`] registered as its buffer callbacks.
        fn load() -> std::result::Result<Self, String> {
            const NAMES: [&str; 3] = ["libcupti.so", "libcupti.so.13", "libcupti.so.12"];
            // SAFETY: loading CUPTI runs its initialisers, which only set up its own state.
            let lib = NAMES
                .iter()
                .find_map(|&name| unsafe { libloading::Library::new(name) }.ok())
                .ok_or_else(|| "CUPTI (libcupti.so) was not found on the library path".to_string())?;
            fn sym<F: Copy>(lib: &libloading::Library, name: &str) -> std::result::Result<F, String> {
                // SAFETY: each field's type is the C signature of the CUPTI function it names.
                unsafe { lib.get::<F>(name.as_bytes()) }.map(|s| *s).map_err(|e| format!("CUPTI lacks {name}: {e}"))
            }
            let register: unsafe extern "C" fn(Requested, Completed) -> Status =
                sym(&lib, "cuptiActivityRegisterCallbacks")?;
            let api = Self {
                enable: sym(&lib, "cuptiActivityEnable")?,
                disable: sym(&lib, "cuptiActivityDisable")?,
                next_record: sym(&lib, "cuptiActivityGetNextRecord")?,
                flush_all: sym(&lib, "cuptiActivityFlushAll")?,
                result_string: sym(&lib, "cuptiGetResultString")?,
                _lib: lib,
            };
            // SAFETY: both callbacks have the signatures CUPTI calls them with; no records flow
            // before a kind is enabled, by which time `CUPTI` holds this API.
            api.check(unsafe { register(requested, completed) }, "registering buffers")?;
            Ok(api)
        }

        fn check(&self, status: Status, what: &str) -> std::result::Result<(), String> {
            if status == 0 {
                return Ok(());
            }
            let mut text: *const c_char = std::ptr::null();
            // SAFETY: cuptiGetResultString points `text` at a static string, or leaves it null.
            let known = unsafe { (self.result_string)(status, &mut text) } == 0 && !text.is_null();
            let text = if known { unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned() } else { "?".into() };
            Err(format!("CUPTI {what}: {text} ({status})"))
        }
    }

    static CUPTI: OnceLock<std::result::Result<Api, String>> = OnceLock::new();

    /// Records counted since the last [`count`] began: kernels, copies, sets.
    static COUNTED: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

    fn buffer_layout() -> Layout {
        Layout::from_size_align(BUFFER, ALIGN).expect("a valid layout")
    }

    /// CUPTI asks for an empty buffer.
    unsafe extern "C" fn requested(buffer: *mut *mut u8, size: *mut usize, max_records: *mut usize) {
        // SAFETY: the layout has a non-zero size; CUPTI hands the buffer back to `completed`.
        let b = unsafe { std::alloc::alloc(buffer_layout()) };
        // SAFETY: CUPTI passes valid pointers to write the answer to.
        unsafe {
            *buffer = b;
            *size = if b.is_null() { 0 } else { BUFFER };
            *max_records = 0;
        }
    }

    /// CUPTI hands back a buffer of `valid` bytes of records: counted, then freed.
    unsafe extern "C" fn completed(_context: *mut c_void, _stream: u32, buffer: *mut u8, _size: usize, valid: usize) {
        if buffer.is_null() {
            return;
        }
        if let Some(Ok(api)) = CUPTI.get() {
            let mut record: *mut u32 = std::ptr::null_mut();
            // SAFETY: the buffer holds `valid` bytes of records CUPTI wrote; each starts with its kind.
            while unsafe { (api.next_record)(buffer, valid, &mut record) } == 0 && !record.is_null() {
                let slot = match unsafe { *record } {
                    KERNEL | CONCURRENT_KERNEL => 0,
                    MEMCPY => 1,
                    MEMSET => 2,
                    _ => continue,
                };
                COUNTED[slot].fetch_add(1, Ordering::Relaxed);
            }
        }
        // SAFETY: `requested` allocated the buffer with this layout.
        unsafe { std::alloc::dealloc(buffer, buffer_layout()) };
    }

    pub(super) fn count(
        device: &Device,
        work: impl FnOnce() -> Result<()>,
    ) -> Result<std::result::Result<LaunchCounts, String>> {
        // One count at a time: the records and the counters are the process's.
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let api = match CUPTI.get_or_init(Api::load) {
            Ok(api) => api,
            Err(why) => return Ok(Err(why.clone())),
        };
        // Work queued before the count is not the count's.
        device.synchronize()?;
        let enabled: std::result::Result<(), String> =
            // SAFETY: a plain call into CUPTI.
            KINDS.iter().try_for_each(|&kind| api.check(unsafe { (api.enable)(kind) }, "enabling activity records"));
        // Disabling a kind that is already off fails harmlessly.
        let disable = || {
            for kind in KINDS {
                // SAFETY: a plain call into CUPTI.
                let _ = unsafe { (api.disable)(kind) };
            }
        };
        if let Err(why) = enabled {
            disable();
            return Ok(Err(why));
        }
        COUNTED.iter().for_each(|c| c.store(0, Ordering::Relaxed));
        let worked = work().and_then(|()| device.synchronize());
        // SAFETY: the callbacks are registered; the forced flush delivers every buffer to them.
        let flushed = api.check(unsafe { (api.flush_all)(FLUSH_FORCED) }, "flushing activity records");
        disable();
        worked?;
        let [kernels, memcpys, memsets] = COUNTED.each_ref().map(|c| c.load(Ordering::Relaxed));
        // A step runs kernels: none counted means the records never arrived.
        Ok(flushed.and_then(|()| match kernels {
            0 => Err("CUPTI delivered no kernel record".into()),
            _ => Ok(LaunchCounts { kernels, memcpys, memsets }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_cuda_nothing_runs_and_the_reason_is_given() {
        let mut ran = false;
        let counted = count_launches(&Device::Cpu, || {
            ran = true;
            Ok(())
        })
        .unwrap();
        assert_eq!(counted, Err("launches are counted on CUDA devices only".to_string()));
        assert!(!ran);
    }
}
