//! criterion benches: one AGM training step (faithful and fast Shapley passes) against one joint
//! step, for M = 2 and M = 3 modalities under late and early fusion, and the grad-scale kernel.
//! Run with `cargo bench`.

use std::time::Duration;

use agm_benches::{av_digits_batch, interleaved_medians, preset_batch, StepBench};
use agm_fusion::PresetOptions;
use candle_core::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// The models the step benches time: AV-Digits (M = 2, the default model's MLP encoders, real
/// data, batch 64) and UR-Funny (M = 3 transformers at the test suite's small scale, synthetic
/// data, batch 16), each under late and early fusion.
const STEP_MODELS: [(&str, usize); 4] =
    [("av-digits-late", 64), ("av-digits-early", 64), ("urfunny-late", 16), ("urfunny-early", 16)];

fn steps(c: &mut Criterion) {
    // The process set up as `cargo xtask` sets it up (first call wins).
    agm_kernels::tune_cpu_runtime();
    let dev = Device::Cpu;
    for (preset, batch_size) in STEP_MODELS {
        let opts = if preset.starts_with("av-digits") { PresetOptions::default() } else { PresetOptions::small() };
        let batch = if preset.starts_with("av-digits") {
            av_digits_batch(batch_size, &dev).expect("embedded data")
        } else {
            preset_batch(preset, &opts, batch_size, &dev).expect("synthetic batch")
        };
        let arms = ["joint", "agm", "agm-fast"];
        let build = |method| StepBench::for_preset(preset, &opts, method, &dev).expect("preset");
        let mut group = c.benchmark_group(format!("cpu_train_step_{preset}_b{batch_size}"));
        group.sample_size(10).measurement_time(Duration::from_secs(3));
        for method in arms {
            let mut bench = build(method);
            group.bench_function(method, |b| b.iter(|| bench.step(&batch).expect("step")));
        }
        group.finish();
        // The ratios themselves, measured interleaved in this run, on a pool thread as `cargo
        // xtask` steps (criterion's own loop stays on the main thread: it cannot move).
        let t = agm_kernels::on_cpu_workers(|| {
            let mut benches: Vec<StepBench> = arms.iter().map(|&m| build(m)).collect();
            interleaved_medians(&mut benches, &batch, 21).expect("steps")
        });
        println!(
            "{preset}: AGM/joint step-time ratio (median of 21 interleaved steps): faithful {:.2}x, fast {:.2}x",
            t[1] / t[0],
            t[2] / t[0]
        );
    }
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
