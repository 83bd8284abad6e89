//! Every fusion × every method × M = 2 and 3 trains two steps: finite losses, every parameter
//! finite, and the model changes.

use agm_core::{MultimodalBatch, MultimodalModel, ShapleyMode};
use agm_fusion::{FusionKind, FusionModel};
use agm_modulation::MslrConfig;
use agm_modulation::{registry, BuildCx, MethodSettings, Mslr};
use agm_train::optim::{OptimizerConfig, ParamGroup, SgdConfig};
use agm_train::step::NoObserver;
use agm_train::{train_step, StepParts};
use candle_core::DType;

mod common;

fn model(m: usize, fusion: &FusionKind) -> FusionModel {
    common::tiny_model(m, fusion, true, 3, DType::F32)
}

fn batch(m: usize, seed: u64) -> MultimodalBatch {
    common::tiny_batches(m, 1, 6, 3, DType::F32, seed).remove(0)
}

fn values(model: &FusionModel) -> Vec<f32> {
    model
        .param_groups()
        .trainable()
        .iter()
        .flat_map(|v| v.var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

#[test]
fn every_fusion_trains_two_steps_under_every_method_with_two_and_three_modalities() {
    for m in [2, 3] {
        for fusion in &common::FUSIONS {
            for method in registry::names() {
                for shapley in [ShapleyMode::Faithful, ShapleyMode::Fast] {
                    if shapley == ShapleyMode::Fast && method != "agm" {
                        continue;
                    }
                    let net = model(m, fusion);
                    let mut cfgs = MethodSettings::av_digits();
                    cfgs.set::<Mslr>(&MslrConfig { init: vec![1.1; m], window: 5, ..MslrConfig::avmnist() });
                    let dims = agm_modulation::encoder_feature_dims(&net, &batch(m, 0)).unwrap();
                    let what = format!("{fusion:?}, {method}, M = {m}, {shapley:?}");
                    let mut modulator =
                        match registry::build(method, &cfgs, &BuildCx::new(&net, 0).with_feature_dims(&dims)) {
                            Ok(modulator) => modulator,
                            // A method defined for two modalities says so when built for three.
                            Err(e) if m > 2 && e.to_string().contains("modalities") => continue,
                            Err(e) => panic!("{what}: {e}"),
                        };
                    let mut trainable = net.param_groups().trainable();
                    trainable.extend(modulator.attach(&net).unwrap());
                    let mut opt = OptimizerConfig::Sgd(SgdConfig::agm_reference(0.05))
                        .build(vec![ParamGroup::new(trainable.clone())])
                        .unwrap();
                    let before = values(&net);
                    for step in 1..=2 {
                        let mut parts = StepParts {
                            model: &net,
                            modulator: modulator.as_mut(),
                            optimizer: opt.as_mut(),
                            trainable: &trainable,
                            shapley,
                            loss_reduction: Default::default(),
                        };
                        let out = train_step(&mut parts, &batch(m, step as u64), step, 1, 7, &mut NoObserver).unwrap();
                        assert!(out.loss.is_finite(), "{what}: loss {}", out.loss);
                    }
                    let after = values(&net);
                    assert!(after.iter().all(|v| v.is_finite()), "{what}: a parameter is not finite");
                    assert!(before != after, "{what}: nothing was updated");
                }
            }
        }
    }
}
