//! LFM's learned weights on a paper model: the finite-difference hypergradient in f32 against the
//! same model in f64 (the step is small enough to stay off most ReLU and max-pool kinks and large
//! enough to stay above f32 rounding), in both of the model's modes; and the first epoch's
//! measurement in training mode, as the official code makes it.

use agm_core::{BatchSource, ForwardOpts, MultimodalBatch, MultimodalModel};
use agm_fusion::{build_preset, PresetOptions};
use agm_modulation::{encoder_feature_dims, Lfm, LfmConfig, LfmPassMode, Modulator, TrainStartCx};
use candle_core::{DType, Device, Tensor};

/// Deterministic inputs in [-1, 1).
fn inputs(seed: u64, shape: (usize, usize, usize, usize), dtype: DType) -> Tensor {
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let v: Vec<f64> = (0..n as u64).map(|i| ((i * 2_654_435_761 + seed * 97) % 1000) as f64 / 500.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

fn hypergradient(seed: u64, dtype: DType, mode: LfmPassMode) -> f64 {
    let dev = Device::Cpu;
    // Training mode normalises by the batch's own statistics, which over 3 samples bend the
    // loss too sharply for an f32 difference; the official code measures on 8.
    let n = if mode == LfmPassMode::Train { 8 } else { 3 };
    let shape = (n, 1, 28, 28);
    let opts = PresetOptions { input_shapes: Some(vec![vec![1, 28, 28]; 2]), ..PresetOptions::default() };
    let model = build_preset("avmnist-late", &opts, 0, dtype, &dev).unwrap();
    let labels: Vec<u32> = (0..n as u32).map(|i| (i * 3) % 10).collect();
    let labels = Tensor::new(labels.as_slice(), &dev).unwrap();
    let batch =
        MultimodalBatch::new(vec![inputs(seed, shape, dtype), inputs(seed + 11, shape, dtype)], labels).unwrap();
    let dims = encoder_feature_dims(model.as_ref(), &batch).unwrap();
    let mut lfm = Lfm::new(LfmConfig::learned(), 2).unwrap().with_feature_dims(dims).unwrap();
    lfm.attach(model.as_ref()).unwrap();
    lfm.hypergradient(model.as_ref(), &batch, mode).unwrap()
}

#[test]
fn the_f32_hypergradient_on_avmnist_late_agrees_with_f64() {
    for (seed, mode) in [(1, LfmPassMode::Eval), (3, LfmPassMode::Eval), (1, LfmPassMode::Train)] {
        let exact = hypergradient(seed, DType::F64, mode);
        let f32 = hypergradient(seed, DType::F32, mode);
        // The run's bf16 products do not reach the difference.
        let bf16 = {
            let _bf16 = agm_kernels::PrecisionGuard::new(agm_kernels::Precision::Bf16);
            hypergradient(seed, DType::F32, mode)
        };
        for (what, value) in [("f32", f32), ("f32 under --precision bf16", bf16)] {
            let rel = (value - exact).abs() / exact.abs();
            // A step of 1e-2 gave the wrong sign here; 1e-4 drowned in rounding.
            assert!(rel < 1e-2, "seed {seed}, {mode:?}, {what}: {value:e} against f64 {exact:e} ({rel:.1e} relative)");
        }
    }
}

/// The official code measures the first epoch's weights on the freshly built model, in training
/// mode: batch statistics of the measured samples, and BatchNorm's running statistics moved by
/// that one forward. Later epochs are measured in evaluation mode.
#[test]
fn the_first_epochs_weights_are_measured_in_training_mode_moving_batch_norm_once() {
    let dev = Device::Cpu;
    let shape = (4, 1, 28, 28);
    let opts = PresetOptions { input_shapes: Some(vec![vec![1, 28, 28]; 2]), ..PresetOptions::default() };
    let build = || build_preset("avmnist-late", &opts, 0, DType::F32, &dev).unwrap();
    let labels = Tensor::new(&[0u32, 3, 7, 3], &dev).unwrap();
    let batch =
        MultimodalBatch::new(vec![inputs(5, shape, DType::F32), inputs(16, shape, DType::F32)], labels).unwrap();
    let buffers = |model: &dyn MultimodalModel| -> Vec<Vec<f64>> {
        let groups = model.param_groups();
        assert!(!groups.buffers.is_empty(), "avmnist-late has batch norm");
        groups
            .buffers
            .iter()
            .map(|b| b.var.as_tensor().flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap())
            .collect()
    };

    // The run's path: `on_train_start` on a held-out split of these four samples.
    let model = build();
    let dims = encoder_feature_dims(model.as_ref(), &batch).unwrap();
    let cfg = LfmConfig { alpha_samples: 4, ..LfmConfig::learned() };
    let mut lfm = Lfm::new(cfg.clone(), 2).unwrap().with_feature_dims(dims.clone()).unwrap();
    lfm.attach(model.as_ref()).unwrap();
    let untouched = buffers(model.as_ref());
    let holdout = Rows(batch.clone());
    lfm.on_train_start(&TrainStartCx { model: model.as_ref(), device: &dev, train: &holdout, holdout: Some(&holdout) })
        .unwrap();
    let measured = lfm.lfm_state().alpha_grad.unwrap();

    // The same measurement by hand on an identical model, in each mode.
    let twin = build();
    let mut probe = Lfm::new(cfg, 2).unwrap().with_feature_dims(dims).unwrap();
    probe.attach(twin.as_ref()).unwrap();
    let eval = probe.hypergradient(twin.as_ref(), &batch, LfmPassMode::Eval).unwrap();
    assert_eq!(buffers(twin.as_ref()), untouched, "an evaluation-mode measurement moves no statistics");
    let train = probe.hypergradient(twin.as_ref(), &batch, LfmPassMode::Train).unwrap();
    assert_eq!(measured, train);
    assert!(
        (train - eval).abs() > 1e-3 * eval.abs(),
        "batch statistics change the hypergradient: {train:e} vs {eval:e}"
    );

    // Running statistics moved once, by one training-mode forward over the samples.
    let once = build();
    once.forward(&batch.inputs, &ForwardOpts::train(2, 0)).unwrap();
    assert_ne!(buffers(once.as_ref()), untouched);
    assert_eq!(buffers(model.as_ref()), buffers(once.as_ref()));
    assert_eq!(buffers(twin.as_ref()), buffers(once.as_ref()));
}

struct Rows(MultimodalBatch);

impl BatchSource for Rows {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn batch(&self, indices: &[usize], device: &Device) -> candle_core::Result<MultimodalBatch> {
        let idx = Tensor::from_vec(indices.iter().map(|&i| i as u32).collect::<Vec<_>>(), indices.len(), device)?;
        let inputs = self.0.inputs.iter().map(|x| x.index_select(&idx, 0)).collect::<candle_core::Result<Vec<_>>>()?;
        MultimodalBatch::new(inputs, self.0.labels.index_select(&idx, 0)?)
    }
}
