//! criterion benches: one AGM training step against one joint step on the default model, and the
//! grad-scale kernel. Run with `cargo bench`.

use agm_benches::{av_digits_batch, interleaved_medians, StepBench};
use candle_core::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn steps(c: &mut Criterion) {
    // The process set up as `cargo xtask` sets it up (first call wins).
    agm_kernels::tune_cpu_runtime();
    let dev = Device::Cpu;
    let batch = av_digits_batch(64, &dev).expect("embedded data");
    let mut group = c.benchmark_group("cpu_train_step_f32_b64");
    for method in ["joint", "agm"] {
        let mut bench = StepBench::new(method, &dev).expect("default model");
        group.bench_function(method, |b| b.iter(|| bench.step(&batch).expect("step")));
    }
    group.finish();
    // The ratio itself, measured interleaved in this run.
    let mut arms = vec![StepBench::new("joint", &dev).unwrap(), StepBench::new("agm", &dev).unwrap()];
    let t = interleaved_medians(&mut arms, &batch, 50).unwrap();
    println!("AGM/joint step-time ratio (median of 50 interleaved steps): {:.2}x", t[1] / t[0]);
}

fn grad_scale(c: &mut Criterion) {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::ones((64, 512), candle_core::DType::F32, &dev).unwrap()).unwrap();
    let mut group = c.benchmark_group("cpu_grad_scale_f32");
    group.throughput(Throughput::Bytes((64 * 512 * 4) as u64));
    group.bench_function("forward_backward", |b| {
        b.iter(|| {
            let y = agm_kernels::grad_scale(x.as_tensor(), 0.7).unwrap();
            y.sum_all().unwrap().backward().unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, steps, grad_scale);
criterion_main!(benches);
