//! Process-wide settings under which candle's CPU backend trains fastest. For binaries: a library
//! never calls this on its user's behalf.

/// Sets up this process for CPU training; call it first thing in `main`, before other threads
/// start (it writes an environment variable). Each setting the user already made is kept.
///
/// * `CANDLE_BARRIER_POOL_SPIN_LIMIT=100`: after each parallel elementwise op candle's helper
///   threads spin 25,000 times before they sleep. On a machine with few cores that spinning
///   takes the cores the matrix products need; measured on 2 cores it cost a third of a
///   ResNet-18 training step.
/// * glibc's allocator keeps freed blocks of up to 32 MiB and stops returning freed memory to
///   the system (`M_MMAP_THRESHOLD`, `M_TRIM_THRESHOLD`). A training step allocates and frees
///   the same activation-sized tensors every time; otherwise each one comes back as fresh pages
///   the kernel must fault in and zero. Skipped when `MALLOC_MMAP_THRESHOLD_` or
///   `MALLOC_TRIM_THRESHOLD_` is set.
pub fn tune_cpu_runtime() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "100");
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() && std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_none() {
        // SAFETY: mallopt only changes allocator parameters; both values are in glibc's range
        // (the mmap threshold's maximum on 64-bit is 32 MiB).
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}
