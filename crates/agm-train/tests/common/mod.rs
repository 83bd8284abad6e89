//! Tiny models and seeded batches shared by the step tests: per modality a 2×3 input, flattened,
//! `Linear(6, 5)`, optional batch norm, ReLU; any fusion; M = 1 to 3.

#![allow(dead_code)]

use agm_core::MultimodalBatch;
use agm_fusion::{EncoderLayer, EncoderSpec, FusionKind, FusionModel, LateConcatConfig};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};

/// Every fusion, sized for the tiny encoders.
pub const FUSIONS: [FusionKind; 6] = [
    FusionKind::LateConcat,
    FusionKind::LateSum,
    FusionKind::Early { first_hidden: 8, second_hidden: 6 },
    FusionKind::Film,
    FusionKind::Gated { dim: 5 },
    FusionKind::CrossModal { dim: 8, heads: 2 },
];

/// A tiny model over `m` modalities (`audio`, `visual`, `text`) with `classes` outputs.
pub fn tiny_model(m: usize, fusion: &FusionKind, batch_norm: bool, classes: usize, dtype: DType) -> FusionModel {
    let names = ["audio", "visual", "text"];
    let encoders = (0..m)
        .map(|i| {
            let mut layers = vec![EncoderLayer::Flatten, EncoderLayer::Linear { in_dim: 6, out_dim: 5 }];
            if batch_norm {
                layers.push(EncoderLayer::BatchNorm { channels: 5, eps: 1e-5 });
            }
            layers.push(EncoderLayer::Relu);
            EncoderSpec { modality: names[i].into(), layers }
        })
        .collect();
    let cfg = LateConcatConfig { encoders, num_classes: classes, prefix: "net".into() };
    FusionModel::sequential(&cfg, fusion, 11, dtype, &Device::Cpu).unwrap()
}

/// `count` batches of `size` samples with inputs uniform in [−2, 2) and random labels.
pub fn tiny_batches(
    m: usize,
    count: usize,
    size: usize,
    classes: u32,
    dtype: DType,
    seed: u64,
) -> Vec<MultimodalBatch> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let inputs = (0..m)
                .map(|_| {
                    let v: Vec<f64> = (0..size * 6).map(|_| rng.random_range(-2.0..2.0)).collect();
                    Tensor::from_vec(v, (size, 2, 3), &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
                })
                .collect();
            let labels: Vec<u32> = (0..size).map(|_| rng.random_range(0..classes)).collect();
            MultimodalBatch::new(inputs, Tensor::new(labels, &Device::Cpu).unwrap()).unwrap()
        })
        .collect()
}

/// Sets a variable to NaN after global step `.1`, as a diverged run would.
pub struct PoisonAfter(pub candle_core::Var, pub usize);

impl agm_train::Callback for PoisonAfter {
    fn on_step(&mut self, s: &agm_train::StepSummary) -> agm_train::Flow {
        if s.global_step == self.1 {
            let nan = (self.0.as_tensor().ones_like().unwrap() * f64::NAN).unwrap();
            self.0.set(&nan).unwrap();
        }
        agm_train::Flow::Continue
    }
}

/// Stops training once global step `.0` is done, as a Ctrl-C does: also the training of a
/// concept that a whole run does first.
pub struct StopAt(pub usize);

impl agm_train::Callback for StopAt {
    fn on_step(&mut self, s: &agm_train::StepSummary) -> agm_train::Flow {
        if s.global_step >= self.0 {
            agm_train::Flow::Stop
        } else {
            agm_train::Flow::Continue
        }
    }
    fn on_concept_step(&mut self, _modality: &str, s: &agm_train::StepSummary) -> agm_train::Flow {
        self.on_step(s)
    }
}
