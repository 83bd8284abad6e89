//! criterion benches: the agm-kernels CPU ops against their plain-candle `*_ref` references,
//! forward plus backward with gradients to every input. Run with
//! `cargo bench -p agm-benches --bench kernels`.

use agm_benches::kernels::{kernel_cases, kernel_ratios};
use candle_core::Device;
use criterion::{criterion_group, criterion_main, Criterion};

fn kernels(c: &mut Criterion) {
    // The process set up as `cargo xtask` sets it up (first call wins).
    agm_kernels::tune_cpu_runtime();
    let dev = Device::Cpu;
    for case in kernel_cases(&dev).expect("inputs") {
        let mut group = c.benchmark_group(format!("cpu_{}_fwd_bwd", case.name));
        group.sample_size(10);
        group.bench_function("ours", |b| b.iter(|| case.run(false).expect("ours")));
        group.bench_function("candle_ref", |b| b.iter(|| case.run(true).expect("reference")));
        group.finish();
    }
    report(&dev);
}

/// The ratios themselves, measured interleaved in this run.
#[allow(clippy::print_stdout)] // the bench's summary
fn report(dev: &Device) {
    for r in kernel_ratios(dev, 15).expect("ratios") {
        println!(
            "{}: ours {:.2} ms, candle ref {:.2} ms, speed-up {:.2}x (median of 15 interleaved runs)",
            r.name,
            r.ours_ms,
            r.reference_ms,
            r.speedup()
        );
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
