//! LFM's learned weights on a paper model: the finite-difference hypergradient in f32 against the
//! same model in f64 (the step is small enough to stay off most ReLU and max-pool kinks and large
//! enough to stay above f32 rounding).

use agm_core::MultimodalBatch;
use agm_fusion::{build_preset, PresetOptions};
use agm_modulation::{encoder_feature_dims, Lfm, LfmConfig, Modulator};
use candle_core::{DType, Device, Tensor};

/// Deterministic inputs in [-1, 1).
fn inputs(seed: u64, shape: (usize, usize, usize, usize), dtype: DType) -> Tensor {
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let v: Vec<f64> = (0..n as u64).map(|i| ((i * 2_654_435_761 + seed * 97) % 1000) as f64 / 500.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

fn hypergradient(seed: u64, dtype: DType) -> f64 {
    let dev = Device::Cpu;
    let shape = (3, 1, 28, 28);
    let opts = PresetOptions { input_shapes: Some(vec![vec![1, 28, 28]; 2]), ..PresetOptions::default() };
    let model = build_preset("avmnist-late", &opts, 0, dtype, &dev).unwrap();
    let labels = Tensor::new(&[0u32, 3, 7], &dev).unwrap();
    let batch =
        MultimodalBatch::new(vec![inputs(seed, shape, dtype), inputs(seed + 11, shape, dtype)], labels).unwrap();
    let dims = encoder_feature_dims(model.as_ref(), &batch).unwrap();
    let mut lfm = Lfm::new(LfmConfig::learned(), 2).unwrap().with_feature_dims(dims).unwrap();
    lfm.attach(model.as_ref()).unwrap();
    lfm.hypergradient(model.as_ref(), &batch).unwrap()
}

#[test]
fn the_f32_hypergradient_on_avmnist_late_agrees_with_f64() {
    for seed in [1, 3] {
        let exact = hypergradient(seed, DType::F64);
        let f32 = hypergradient(seed, DType::F32);
        // The run's bf16 products do not reach the difference.
        let bf16 = {
            let _bf16 = agm_kernels::PrecisionGuard::new(agm_kernels::Precision::Bf16);
            hypergradient(seed, DType::F32)
        };
        for (what, value) in [("f32", f32), ("f32 under --precision bf16", bf16)] {
            let rel = (value - exact).abs() / exact.abs();
            // A step of 1e-2 gave the wrong sign here; 1e-4 drowned in rounding.
            assert!(rel < 1e-2, "seed {seed}, {what}: {value:e} against f64 {exact:e} ({rel:.1e} relative)");
        }
    }
}
