//! The fast Shapley path (one encoder pass per modality, every subset through the fusion in one
//! batched call) against the faithful one (a whole-network pass per subset).

use agm_core::{ForwardOpts, MultimodalBatch, MultimodalModel, ShapleyMode};
use agm_fusion::{FusionKind, FusionModel};
use agm_modulation::{shapley::masked_subsets, Agm, AgmConfig};
use agm_train::optim::{OptimizerConfig, ParamGroup, SgdConfig};
use agm_train::step::NoObserver;
use agm_train::{train_step, StepParts};
use candle_core::{DType, Tensor};

mod common;

fn model(m: usize, fusion: &FusionKind, batch_norm: bool) -> FusionModel {
    common::tiny_model(m, fusion, batch_norm, 4, DType::F64)
}

fn batch(m: usize, seed: u64) -> MultimodalBatch {
    common::tiny_batches(m, 1, 8, 4, DType::F64, seed).remove(0)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()
}

/// Trains AGM for a few steps in one mode and returns every variable afterwards.
fn train(m: usize, fusion: &FusionKind, batch_norm: bool, mode: ShapleyMode) -> Vec<(String, Tensor)> {
    let model = model(m, fusion, batch_norm);
    let trainable = model.param_groups().trainable();
    let mut opt =
        OptimizerConfig::Sgd(SgdConfig::agm_reference(0.1)).build(vec![ParamGroup::new(trainable.clone())]).unwrap();
    let mut agm = Agm::new(AgmConfig { alpha: 1.0, ..AgmConfig::av_digits() }, m).unwrap();
    for step in 1..=4 {
        let mut parts = StepParts {
            model: &model,
            modulator: &mut agm,
            optimizer: opt.as_mut(),
            trainable: &trainable,
            shapley: mode,
            loss_reduction: Default::default(),
        };
        train_step(&mut parts, &batch(m, step as u64), step, 1, step as u64, &mut NoObserver).unwrap();
    }
    model.param_groups().all_sorted().into_iter().map(|v| (v.name, v.var.as_tensor().clone())).collect()
}

#[test]
fn fast_passes_equal_faithful_passes_for_every_fusion_without_mode_dependent_encoders() {
    for m in [2, 3] {
        for fusion in &common::FUSIONS {
            // Two identical models: each full pass updates the batch-norm statistics of the fusion.
            let (model, twin) = (model(m, fusion, false), model(m, fusion, false));
            assert!(model.fast_shapley_is_exact());
            let b = batch(m, 9);
            let subsets = masked_subsets(m);
            let opts = ForwardOpts::train(m, 17);
            let (full_a, passes_a) = model.shapley_passes(&b.inputs, &subsets, &opts, ShapleyMode::Faithful).unwrap();
            let (full_b, passes_b) = twin.shapley_passes(&b.inputs, &subsets, &opts, ShapleyMode::Fast).unwrap();
            assert!(max_abs_diff(&full_a.logits, &full_b.logits) < 1e-12, "{fusion:?} M={m}: full pass");
            assert_eq!(passes_a.len(), subsets.len());
            for ((a, b), s) in passes_a.iter().zip(&passes_b).zip(&subsets) {
                assert!(max_abs_diff(a, b) < 1e-12, "{fusion:?} M={m}: pass {s:?}");
            }
            // The batched faithful passes are the one-by-one passes of the reference.
            for (s, a) in subsets.iter().zip(&passes_a) {
                let one = model.forward(&b.inputs, &ForwardOpts::eval(m).with_present(*s)).unwrap().logits;
                assert!(max_abs_diff(a, &one) < 1e-12, "{fusion:?} M={m}: batched pass {s:?}");
            }
        }
    }
}

#[test]
fn agm_training_is_the_same_in_both_modes_to_1e_10() {
    for m in [2, 3] {
        for fusion in &common::FUSIONS {
            let faithful = train(m, fusion, false, ShapleyMode::Faithful);
            let fast = train(m, fusion, false, ShapleyMode::Fast);
            for ((name, a), (_, b)) in faithful.iter().zip(&fast) {
                let d = max_abs_diff(a, b);
                assert!(d < 1e-10, "{fusion:?} M={m}: {name} differs by {d}");
            }
        }
    }
}

#[test]
fn with_batch_norm_encoders_fast_is_a_different_documented_function() {
    let model = model(2, &FusionKind::LateConcat, true);
    assert!(!model.fast_shapley_is_exact());
    let faithful = train(2, &FusionKind::LateConcat, true, ShapleyMode::Faithful);
    let fast = train(2, &FusionKind::LateConcat, true, ShapleyMode::Fast);
    let worst = faithful.iter().zip(&fast).map(|((_, a), (_, b))| max_abs_diff(a, b)).fold(0.0, f64::max);
    assert!(worst > 1e-8, "masked passes reuse training-mode batch-norm features, so the runs differ");
    assert!(fast.iter().all(|(_, t)| t.flatten_all().unwrap().to_vec1::<f64>().unwrap().iter().all(|v| v.is_finite())));
}

#[test]
fn faithful_passes_equal_one_whole_network_pass_per_subset_with_batch_norm_encoders() {
    for m in [2, 3] {
        for fusion in &common::FUSIONS {
            let model = model(m, fusion, true);
            let b = batch(m, 5);
            let subsets = masked_subsets(m);
            let opts = ForwardOpts::train(m, 3);
            let (_, passes) = model.shapley_passes(&b.inputs, &subsets, &opts, ShapleyMode::Faithful).unwrap();
            // Evaluation mode after the training pass: the running statistics it left.
            for (s, a) in subsets.iter().zip(&passes) {
                let one = model.forward(&b.inputs, &ForwardOpts::eval(m).with_present(*s)).unwrap().logits;
                assert!(max_abs_diff(a, &one) < 1e-10, "{fusion:?} M={m}: pass {s:?}");
            }
        }
    }
}
