//! criterion bench: batches per second of the AV-MNIST loader (generated folder of 4,000
//! training rows in the real shapes) against the `avmnist-late` joint training step at the same
//! batch size. Run with `cargo bench -p agm-benches --bench loader`.

use agm_benches::loader::{load_avmnist, loader_and_step_seconds, seconds_per_batch, write_avmnist};
use candle_core::Device;
use criterion::{criterion_group, criterion_main, Criterion};

const BATCH: usize = 16;

fn loader(c: &mut Criterion) {
    // The process set up as `cargo xtask` sets it up (first call wins).
    agm_kernels::tune_cpu_runtime();
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().expect("temp dir");
    write_avmnist(dir.path(), 4000, 400, 0).expect("generated AV-MNIST");
    let data = load_avmnist(dir.path()).expect("loads");
    let mut group = c.benchmark_group("cpu_avmnist_loader");
    group.sample_size(10);
    group.bench_function("epoch_b16_prefetch", |b| b.iter(|| seconds_per_batch(&data, BATCH, &dev).expect("epoch")));
    group.finish();

    let (per_batch, per_step) = loader_and_step_seconds(4000, BATCH, &dev).expect("loader and step");
    println!(
        "AV-MNIST loader {:.1} batches/s vs avmnist-late joint step {:.2} steps/s at batch {BATCH}: loader/step rate ratio {:.0}x",
        1.0 / per_batch,
        1.0 / per_step,
        per_step / per_batch
    );
}

criterion_group!(benches, loader);
criterion_main!(benches);
