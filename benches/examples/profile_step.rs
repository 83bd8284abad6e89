//! Runs training steps of one preset in a loop, for profilers (`perf record`):
//! `cargo run --release -p agm-benches --example profile_step -- avmnist-late joint 8 20`, and a
//! precision after the step count (`fp32-strict`) to compare with the default.

use agm_benches::{preset_batch, StepBench};
use candle_core::Device;

fn main() -> candle_core::Result<()> {
    agm_kernels::tune_cpu_runtime();
    let args: Vec<String> = std::env::args().collect();
    let preset = args.get(1).map_or("avmnist-late", String::as_str);
    let method: &'static str = match args.get(2).map_or("joint", String::as_str) {
        "agm" => "agm",
        "agm-fast" => "agm-fast",
        _ => "joint",
    };
    let batch_size = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(8);
    let steps = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(20);
    let precision: agm_kernels::Precision =
        args.get(5).map_or(Ok(agm_kernels::Precision::Fp32), |p| p.parse()).map_err(candle_core::Error::msg)?;
    // The shapes `cargo xtask bench` times, with its default sequence length.
    let opts = agm_benches::reference_shapes(20);
    // As `cargo xtask` runs: on a thread of the pool the kernels split their work on.
    let mut times = agm_kernels::on_cpu_workers(|| -> candle_core::Result<Vec<f64>> {
        // The precision is per thread: set it on the one that steps.
        let _precision = agm_kernels::PrecisionGuard::new(precision);
        let device = Device::Cpu;
        let batch = preset_batch(preset, &opts, batch_size, &device)?;
        let mut bench = StepBench::for_preset(preset, &opts, method, &device)?;
        bench.step(&batch)?;
        let mut times = Vec::new();
        for _ in 0..steps {
            let started = std::time::Instant::now();
            bench.step(&batch)?;
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
        Ok(times)
    })?;
    times.sort_by(f64::total_cmp);
    println!(
        "{preset} {method} {precision} batch {batch_size}: median {:.1} ms, min {:.1} ms",
        times[times.len() / 2],
        times[0]
    );
    if std::env::var_os("PROFILE_STEP_ALL").is_some() {
        println!("{times:.0?}");
    }
    Ok(())
}
