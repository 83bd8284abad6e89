//! AGM with alpha = 0 is plain joint training: every coefficient is exactly 1, so only the full
//! pass receives gradient.

use agm_core::{MultimodalBatch, MultimodalModel};
use agm_fusion::{FusionKind, FusionModel};
use agm_modulation::{Agm, AgmConfig, ClipRule, Joint, Modulator};
use agm_train::optim::{OptimizerConfig, ParamGroup, SgdConfig};
use agm_train::step::NoObserver;
use agm_train::{train_step, LossReduction, StepParts};
use candle_core::DType;

mod common;

fn model(m: usize) -> FusionModel {
    common::tiny_model(m, &FusionKind::LateConcat, true, 4, DType::F64)
}

fn batches(m: usize, n: usize) -> Vec<MultimodalBatch> {
    common::tiny_batches(m, n, 8, 4, DType::F64, 5)
}

/// Trains `steps` steps and returns every variable afterwards.
fn train(m: usize, modulator: Box<dyn Modulator>) -> Vec<(String, Vec<f64>)> {
    train_with(m, modulator, SgdConfig::agm_reference(0.1), LossReduction::Mean)
}

fn train_with(
    m: usize,
    mut modulator: Box<dyn Modulator>,
    sgd: SgdConfig,
    loss_reduction: LossReduction,
) -> Vec<(String, Vec<f64>)> {
    let model = model(m);
    let trainable = model.param_groups().trainable();
    let mut opt = OptimizerConfig::Sgd(sgd).build(vec![ParamGroup::new(trainable.clone())]).unwrap();
    for (i, batch) in batches(m, 6).iter().enumerate() {
        let mut parts = StepParts {
            model: &model,
            modulator: modulator.as_mut(),
            optimizer: opt.as_mut(),
            trainable: &trainable,
            shapley: Default::default(),
            loss_reduction,
        };
        train_step(&mut parts, batch, i + 1, 1, 0, &mut NoObserver).unwrap();
    }
    model
        .param_groups()
        .all_sorted()
        .into_iter()
        .map(|v| (v.name, v.var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap()))
        .collect()
}

fn agm_alpha0(m: usize, clip: Option<ClipRule>) -> Box<dyn Modulator> {
    Box::new(Agm::new(AgmConfig { alpha: 0.0, clip, ..AgmConfig::paper_avmnist() }, m).unwrap())
}

#[test]
fn two_modalities_bit_for_bit() {
    // A clip threshold low enough that clipping fires, so both paths clip the same way.
    let clip = Some(ClipRule::outside_band(0.01, 0.5));
    let agm = train(2, agm_alpha0(2, clip));
    let joint = train(2, Box::new(Joint::with_clip(clip)));
    assert_eq!(agm, joint);
}

#[test]
fn three_modalities_within_1e_12() {
    let clip = Some(ClipRule::outside_band(5.0, 5.0));
    let agm = train(3, agm_alpha0(3, clip));
    let joint = train(3, Box::new(Joint::with_clip(clip)));
    for ((na, a), (_, b)) in agm.iter().zip(&joint) {
        let scale = b.iter().fold(0f64, |s, v| s.max(v.abs())).max(1e-300);
        let err = a.iter().zip(b).fold(0f64, |s, (x, y)| s.max((x - y).abs())) / scale;
        assert!(err <= 1e-12, "{na}: relative difference {err}");
    }
}

#[test]
fn nonzero_alpha_does_modulate() {
    let agm = train(2, Box::new(Agm::new(AgmConfig { alpha: 2.0, ..AgmConfig::paper_avmnist() }, 2).unwrap()));
    let joint = train(2, Box::new(Joint::with_clip(AgmConfig::paper_avmnist().clip)));
    assert_ne!(agm, joint, "a real alpha must change the updates");
}

#[test]
fn a_summed_loss_steps_as_the_mean_at_the_batch_size_times_the_learning_rate() {
    // Plain SGD (no momentum or weight decay, which the batch size does not scale): summing the
    // batch of 8 at lr 0.1 / 8 is the mean at lr 0.1, exactly (8 is a power of two); with
    // clipping firing on the head, which the summed gradients reach first.
    let plain = |lr| SgdConfig { lr, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false };
    for clip in [None, Some(ClipRule::outside_band(0.05, 0.5))] {
        let agm = || Box::new(Agm::new(AgmConfig { alpha: 2.0, clip, ..AgmConfig::paper_avmnist() }, 2).unwrap());
        let mean = train_with(2, agm(), plain(0.1), LossReduction::Mean);
        let sum = train_with(2, agm(), plain(0.1 / 8.0), LossReduction::Sum);
        if clip.is_none() {
            assert_eq!(mean, sum);
        } else {
            // Clipping rescales to a norm, so the sum's larger gradients take other steps.
            assert_ne!(mean, sum);
        }
    }
}
