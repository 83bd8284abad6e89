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
/// * rayon's global pool gets [`WORKER_STACK`] of stack per thread (its own default is 2 MiB),
///   so work moved onto it by [`on_cpu_workers`] has at least the main thread's room: candle's
///   backward walks the graph recursively. Skipped when the pool already exists.
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
    // The pool's size still comes from `RAYON_NUM_THREADS` or the core count.
    let _ = rayon::ThreadPoolBuilder::new().stack_size(WORKER_STACK).build_global();
}

/// The stack of each thread of rayon's global pool, as set by [`tune_cpu_runtime`]; address
/// space only until used.
pub const WORKER_STACK: usize = 64 << 20;

/// Runs `f` on a thread of rayon's global pool (directly when already on a pool's thread), and
/// returns its result.
///
/// The CPU kernels, gemm and candle's matrix products split their work on that pool. Started from
/// a thread outside it, each such op hands its work to the pool and sleeps until the pool wakes
/// it again: two thread wake-ups per op, hundreds of times a training step. Started from a pool
/// thread, the starting thread does its share and the others steal the rest. Measured on 2 cores,
/// batch 8: a UR-Funny transformer step about 10 % faster, the embedded default's AGM step about
/// 25 %; an AV-MNIST ResNet step, fewer and larger ops, within the machine's noise.
/// Binaries run their work through this; libraries never move a caller's work themselves.
pub fn on_cpu_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    rayon::scope(|_| f())
}

#[cfg(test)]
mod tests {
    use super::on_cpu_workers;

    #[test]
    fn work_runs_on_a_pool_thread_once_and_panics_reach_the_caller() {
        let (outer, inner) = on_cpu_workers(|| {
            let outer = rayon::current_thread_index();
            (outer, on_cpu_workers(rayon::current_thread_index))
        });
        assert!(outer.is_some(), "not on a pool thread");
        assert_eq!(inner, outer, "a nested call must run where it is");
        let caught = std::panic::catch_unwind(|| on_cpu_workers(|| panic!("inside")));
        assert!(caught.is_err());
    }
}
