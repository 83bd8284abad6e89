//! OGM-GE, MSLR, MSES and stacks: properties that can fail, on small synthetic models.
//!
//! The steps below run the trainer's order by hand (full pass in training mode, the plan's
//! masked passes in evaluation mode, objective, backward, gradient edits, plain SGD), so these
//! tests need no trainer.

use std::collections::HashMap;

use agm_core::{BatchSource, ForwardOpts, MultimodalBatch, MultimodalModel};
use agm_fusion::{EncoderLayer, EncoderSpec, FusionKind, FusionModel, LateConcatConfig};
use agm_modulation::registry;
use agm_modulation::{
    check_composable, mses_snapshot_tag, ogm_coefficients, Agm, AgmConfig, ClipRule, EpochAction, EpochCx,
    FirstEpochPolicy, ForwardPlan, Hooks, Joint, Modulator, Mses, MsesConfig, MsesSchedule, Mslr, MslrConfig,
    MslrSchedule, OgmGe, OgmGeConfig, OgmMode, Stack, StackMember, StepCx, StepForward, UniModal,
};
use agm_modulation::{ogm_score_sum, shapley};
use agm_modulation::{BuildCx, MethodSettings};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};

const NAMES: [&str; 3] = ["audio", "visual", "text"];
const BATCH: usize = 8;
const CLASSES: usize = 4;

/// Uniform numbers in [-1, 1) from a fixed LCG.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.next()).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Enc {
    Mlp,
    Conv,
}

fn input_shape(enc: Enc) -> Vec<usize> {
    match enc {
        Enc::Mlp => vec![BATCH, 6],
        Enc::Conv => vec![BATCH, 1, 5, 5],
    }
}

/// A late concat model over `m` modalities with BatchNorm in every encoder.
fn model(m: usize, enc: Enc, seed: u64) -> FusionModel {
    model_with(m, enc, seed, &FusionKind::LateConcat)
}

/// [`model`]'s encoders joined by `fusion`.
fn model_with(m: usize, enc: Enc, seed: u64, fusion: &FusionKind) -> FusionModel {
    let layers = match enc {
        Enc::Mlp => vec![
            EncoderLayer::Flatten,
            EncoderLayer::Linear { in_dim: 6, out_dim: 8 },
            EncoderLayer::BatchNorm { channels: 8, eps: 1e-5 },
            EncoderLayer::Relu,
        ],
        Enc::Conv => vec![
            EncoderLayer::Conv2d { in_ch: 1, out_ch: 2, kernel: 3 },
            EncoderLayer::Relu,
            EncoderLayer::Flatten,
            EncoderLayer::Linear { in_dim: 18, out_dim: 8 },
            EncoderLayer::BatchNorm { channels: 8, eps: 1e-5 },
            EncoderLayer::Relu,
        ],
    };
    let encoders = NAMES[..m].iter().map(|n| EncoderSpec { modality: n.to_string(), layers: layers.clone() }).collect();
    let cfg = LateConcatConfig { encoders, num_classes: CLASSES, prefix: "net".into() };
    FusionModel::sequential(&cfg, fusion, seed, DType::F64, &Device::Cpu).unwrap()
}

/// Batches whose modalities carry different amounts of signal (modality 0 the most).
fn batches(m: usize, enc: Enc, n: usize, seed: u64) -> Vec<MultimodalBatch> {
    let mut rng = Lcg(seed);
    (0..n)
        .map(|_| {
            let labels: Vec<u32> = (0..BATCH).map(|i| (i % CLASSES) as u32).collect();
            let inputs = (0..m)
                .map(|x| {
                    let shape = input_shape(enc);
                    let per: usize = shape[1..].iter().product();
                    let mut v = rng.vec(BATCH * per);
                    for (i, &y) in labels.iter().enumerate() {
                        v[i * per + y as usize] += 2.0 / (1.0 + x as f64);
                    }
                    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
                })
                .collect();
            MultimodalBatch::new(inputs, Tensor::new(labels.as_slice(), &Device::Cpu).unwrap()).unwrap()
        })
        .collect()
}

fn forward(model: &dyn MultimodalModel, modulator: &dyn Modulator, batch: &MultimodalBatch) -> StepForward {
    let m = model.modalities().len();
    let full = model.forward(&batch.inputs, &ForwardOpts::train(m, 0)).unwrap();
    let masked = modulator
        .forward_plan()
        .masked_subsets(m)
        .into_iter()
        .map(|s| (s, model.forward(&batch.inputs, &ForwardOpts::eval(m).with_present(s)).unwrap().logits))
        .collect();
    StepForward { full, masked }
}

fn snapshot(model: &dyn MultimodalModel, grads: &GradStore) -> HashMap<String, Vec<f64>> {
    model
        .param_groups()
        .trainable()
        .into_iter()
        .filter_map(|v| {
            grads.get(v.var.as_tensor()).map(|g| (v.name, g.flatten_all().unwrap().to_vec1::<f64>().unwrap()))
        })
        .collect()
}

/// One step: returns the gradients before and after the modulator's edits; applies plain SGD.
fn step(
    model: &dyn MultimodalModel,
    modulator: &mut dyn Modulator,
    batch: &MultimodalBatch,
    k: usize,
) -> (HashMap<String, Vec<f64>>, HashMap<String, Vec<f64>>) {
    step_in_epoch(model, modulator, batch, k, 1)
}

/// [`step`] in epoch `epoch`.
fn step_in_epoch(
    model: &dyn MultimodalModel,
    modulator: &mut dyn Modulator,
    batch: &MultimodalBatch,
    k: usize,
    epoch: usize,
) -> (HashMap<String, Vec<f64>>, HashMap<String, Vec<f64>>) {
    let fwd = forward(model, modulator, batch);
    let cx = StepCx { model, batch, forward: &fwd, step: k, epoch };
    let objective = modulator.objective(&cx).unwrap();
    let mut grads = modulator.backward(&cx, &objective).unwrap();
    let before = snapshot(model, &grads);
    modulator.after_backward(&cx, &mut grads).unwrap();
    let after = snapshot(model, &grads);
    for v in model.param_groups().trainable() {
        if let Some(g) = grads.get(v.var.as_tensor()) {
            v.var.set(&(v.var.as_tensor() - g.affine(0.1, 0.0).unwrap()).unwrap()).unwrap();
        }
    }
    (before, after)
}

fn train(model: &dyn MultimodalModel, modulator: &mut dyn Modulator, batches: &[MultimodalBatch]) {
    for (i, b) in batches.iter().enumerate() {
        step(model, modulator, b, i + 1);
    }
}

/// Every variable's bits, by name.
fn bits(model: &dyn MultimodalModel) -> Vec<(String, Vec<u64>)> {
    model
        .param_groups()
        .all_sorted()
        .into_iter()
        .map(|v| {
            let t = v.var.as_tensor().to_dtype(DType::F64).unwrap().flatten_all().unwrap();
            (v.name, t.to_vec1::<f64>().unwrap().iter().map(|x| x.to_bits()).collect())
        })
        .collect()
}

fn ogm(mode: OgmMode, noise: bool, m: usize) -> OgmGe {
    let cfg = OgmGeConfig { mode, noise, alpha: 0.5, window_start: 0, window_end: None, ..OgmGeConfig::av_digits() };
    OgmGe::new(cfg, m).unwrap()
}

struct NoData;
impl BatchSource for NoData {
    fn len(&self) -> usize {
        0
    }
    fn batch(&self, _: &[usize], _: &Device) -> candle_core::Result<MultimodalBatch> {
        candle_core::bail!("no data")
    }
}

fn epoch_cx<'a>(model: &'a dyn MultimodalModel, epoch: usize, acc: &[f64], loss: &[f64]) -> EpochCx<'a> {
    static DEV: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    static DATA: NoData = NoData;
    EpochCx {
        model,
        device: DEV.get_or_init(|| Device::Cpu),
        train: &DATA,
        holdout: None,
        epoch,
        accuracy: 0.5,
        modality_accuracy: acc.to_vec(),
        modality_loss: loss.to_vec(),
        head_accuracy: Vec::new(),
        head_loss: Vec::new(),
    }
}

// ---------------------------------------------------------------- OGM-GE

#[test]
fn ogm_coefficients_are_in_unit_interval_and_damp_only_the_dominant() {
    let mut rng = Lcg(7);
    for trial in 0..2000 {
        let m = 2 + trial % 3;
        let alpha = 0.01 + 5.0 * (rng.next() + 1.0);
        // Score sums of a batch of 8 spread over many orders of magnitude.
        let s: Vec<f64> = (0..m).map(|_| 8.0 * 10f64.powf(4.0 * rng.next())).collect();
        let c = ogm_coefficients(alpha, &s);
        assert!(c.coeff.iter().all(|&k| k > 0.0 && k <= 1.0), "{s:?} {c:?}");
        let weakest = (0..m).min_by(|&a, &b| s[a].total_cmp(&s[b])).unwrap();
        assert_eq!(c.weakest, weakest);
        assert_eq!(c.coeff[weakest], 1.0);
        for x in (0..m).filter(|&x| x != weakest) {
            assert!(c.coeff[x] < 1.0, "modality {x} dominates but is not damped: {s:?} {c:?}");
        }
        if m == 2 {
            let dominant = 1 - weakest;
            assert_eq!(c.coeff.iter().filter(|&&k| k < 1.0).count(), 1);
            assert!(s[dominant] >= s[weakest]);
        }
    }
}

#[test]
fn ogm_edits_only_the_dominant_modality_and_only_its_selected_parameters() {
    for (mode, enc) in [(OgmMode::Reference, Enc::Conv), (OgmMode::Paper, Enc::Conv), (OgmMode::Paper, Enc::Mlp)] {
        let net = model(2, enc, 3);
        let mut o = ogm(mode, false, 2);
        let batch = &batches(2, enc, 1, 11)[0];
        let (before, after) = step(&net, &mut o, batch, 1);
        let stats = o.last_stats().unwrap().clone();
        let dominant = 1 - stats.weakest;
        let k = stats.coeff[dominant];
        assert!(k > 0.0 && k < 1.0, "{stats:?}");
        assert_eq!(stats.coeff[stats.weakest], 1.0);
        let groups = net.param_groups();
        for (name, g) in &before {
            let owner = groups.modality_of(name);
            let rank = groups.find(name).unwrap().var.rank();
            let selected = owner.is_some() && (mode == OgmMode::Paper || rank == 4);
            let want: Vec<f64> =
                if selected && owner == Some(dominant) { g.iter().map(|v| v * k).collect() } else { g.clone() };
            assert_eq!(after[name], want, "{mode:?} {enc:?} {name}");
            assert_eq!(stats.modulated.contains(name), selected, "{mode:?} {name}");
        }
        assert_eq!(o.coefficients().unwrap(), stats.coeff);
    }
}

#[test]
fn ogm_noise_is_seeded_by_step_and_has_the_gradient_std() {
    let enc = Enc::Conv;
    let data = batches(2, enc, 1, 5);
    let run = |seed: u64, k: usize| {
        let net = model(2, enc, 3);
        let mut o = ogm(OgmMode::Paper, true, 2).with_run_seed(seed);
        let (before, after) = step(&net, &mut o, &data[0], k);
        (before, after, o.last_stats().unwrap().clone())
    };
    let (b1, a1, s1) = run(1, 1);
    let (_, a1_again, _) = run(1, 1);
    assert_eq!(a1, a1_again, "same seed and step must draw the same noise");
    let (_, a2, _) = run(1, 2);
    let (_, a3, _) = run(2, 1);
    assert_ne!(a1, a2, "another step draws other noise");
    assert_ne!(a1, a3, "another run seed draws other noise");
    // Noise on both modalities (the weakest too), with std(grad) + 1e-8 as its scale.
    assert_eq!(s1.modulated.len(), s1.noise_std.len());
    let groups = model(2, enc, 3).param_groups();
    for x in 0..2 {
        let name = &groups.per_modality[x].iter().find(|v| v.var.rank() == 4).unwrap().name;
        assert_ne!(b1[name], a1[name], "modality {x} got no noise");
    }
    // The weakest modality keeps k = 1, so its edit is the noise alone: scaled by each
    // parameter's std + 1e-8 it must look standard normal.
    let mut z = Vec::new();
    for (name, sigma) in s1.modulated.iter().zip(&s1.noise_std) {
        if groups.modality_of(name) == Some(s1.weakest) {
            let g = &b1[name];
            let n = g.len() as f64;
            let mean = g.iter().sum::<f64>() / n;
            let std = (g.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
            assert!((sigma - (std + 1e-8)).abs() <= 1e-12 * sigma.max(1e-8), "{name}: {sigma} vs {std}");
            z.extend(a1[name].iter().zip(g).map(|(a, b)| (a - b) / sigma));
        }
    }
    let n = z.len() as f64;
    let mean = z.iter().sum::<f64>() / n;
    let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    assert!(n > 100.0 && mean.abs() < 0.3 && (0.7..1.4).contains(&var), "n {n}, mean {mean}, var {var}");
}

#[test]
fn ogm_reads_a_summed_model_s_own_heads_and_the_shapley_outputs_elsewhere() {
    let batch = &batches(2, Enc::Mlp, 1, 11)[0];
    let labels = batch.labels.to_vec1::<u32>().unwrap();
    // The reference's `out_a, out_v` of a `_Sum` model: each head on its encoder's
    // training-mode feature; the step needs no masked pass once it has seen them.
    let net = model_with(2, Enc::Mlp, 3, &FusionKind::LateSum);
    let full =
        model_with(2, Enc::Mlp, 3, &FusionKind::LateSum).forward(&batch.inputs, &ForwardOpts::train(2, 0)).unwrap();
    let heads = net.modality_logits(&full).unwrap().unwrap();
    let sum = (&heads[0] + &heads[1]).unwrap();
    assert_eq!(sum.to_vec2::<f64>().unwrap(), full.logits.to_vec2::<f64>().unwrap());
    let want: Vec<f64> = heads.iter().map(|h| ogm_score_sum(h, &labels).unwrap()).collect();
    let mut o = ogm(OgmMode::Paper, false, 2);
    assert_eq!(o.forward_plan(), ForwardPlan::Shapley, "not known before the first step");
    step(&net, &mut o, batch, 1);
    assert_eq!(o.last_stats().unwrap().score_sum, want);
    assert_eq!(o.forward_plan(), ForwardPlan::Full);
    // `uni_modal = "shapley"` on the same model, and `auto` on a concat model: the Shapley
    // outputs of the masked passes, which differ from the heads'.
    let shapley = |fusion: &FusionKind, uni_modal| {
        let cfg = OgmGeConfig { uni_modal, noise: false, ..OgmGeConfig::av_digits() };
        let mut o = OgmGe::new(cfg, 2).unwrap();
        // The passes on a twin: a training pass moves the running statistics.
        let fwd = forward(&model_with(2, Enc::Mlp, 3, fusion), &o, batch);
        let mono = shapley::mono_outputs(2, |s| fwd.logits(s, 2)).unwrap();
        step(&model_with(2, Enc::Mlp, 3, fusion), &mut o, batch, 1);
        assert_eq!(o.forward_plan(), ForwardPlan::Shapley);
        let want: Vec<f64> = mono.iter().map(|h| ogm_score_sum(h, &labels).unwrap()).collect();
        assert_eq!(o.last_stats().unwrap().score_sum, want);
        want
    };
    let on_sum = shapley(&FusionKind::LateSum, UniModal::Shapley);
    assert!(on_sum.iter().zip(&o.last_stats().unwrap().score_sum).all(|(a, b)| (a - b).abs() > 1e-6), "{on_sum:?}");
    shapley(&FusionKind::LateConcat, UniModal::Auto);
}

#[test]
fn ogm_outside_its_window_edits_nothing() {
    let net = model(2, Enc::Conv, 3);
    let cfg =
        OgmGeConfig { mode: OgmMode::Reference, window_start: 2, window_end: Some(3), ..OgmGeConfig::av_digits() };
    let mut o = OgmGe::new(cfg, 2).unwrap();
    let (before, after) = step(&net, &mut o, &batches(2, Enc::Conv, 1, 2)[0], 1);
    assert_eq!(before, after);
    assert!(!o.last_stats().unwrap().applied);
    assert_eq!(o.coefficients().unwrap(), vec![1.0, 1.0]);
}

#[test]
fn bad_ogm_settings_are_rejected_with_the_field() {
    for alpha in [0.0, -1.0, f64::NAN] {
        let err = OgmGe::new(OgmGeConfig { alpha, ..OgmGeConfig::av_digits() }, 2).unwrap_err().to_string();
        assert!(err.contains("ogm_ge.alpha") && err.contains("> 0"), "{err}");
    }
    let err = OgmGe::new(OgmGeConfig::av_digits(), 1).unwrap_err().to_string();
    assert!(err.contains("at least 2 modalities"), "{err}");
    let err = OgmGe::new(OgmGeConfig { window_start: 5, window_end: Some(2), ..OgmGeConfig::av_digits() }, 2)
        .unwrap_err()
        .to_string();
    assert!(err.contains("ogm_ge.window_end"), "{err}");
    let err = ogm(OgmMode::Paper, false, 2).with_fixed_coefficients(vec![1.0, 0.0]).unwrap_err().to_string();
    assert!(err.contains("(0, 1]"), "{err}");
}

/// A clip rule is checked where it is set, naming the method's key: an infinite threshold was
/// accepted and refused only at the first step, without the key.
#[test]
fn clip_rules_and_agms_clamp_are_checked_by_key_before_training() {
    let bad = [
        (ClipRule::outside_band(f64::INFINITY, 1.0), "clip.threshold must be finite and >= 0, got inf"),
        (ClipRule::outside_band(-1.0, 1.0), "clip.threshold must be finite and >= 0, got -1"),
        (ClipRule::outside_band(0.5, 0.0), "clip.max_norm must be finite and > 0, got 0"),
        (ClipRule::outside_band(0.5, f64::NAN), "clip.max_norm must be finite and > 0, got NaN"),
    ];
    for (rule, message) in bad {
        let errors = [
            ("agm", AgmConfig { clip: Some(rule), ..AgmConfig::av_digits() }.validate().unwrap_err().to_string()),
            (
                "ogm_ge",
                OgmGeConfig { clip: Some(rule), ..OgmGeConfig::av_digits() }.validate().unwrap_err().to_string(),
            ),
            ("joint", agm_modulation::JointConfig { clip: Some(rule) }.validate().unwrap_err().to_string()),
        ];
        for (section, err) in errors {
            assert_eq!(err, format!("{section}.{message}"));
        }
    }
    ClipRule::outside_band(0.0, 1.0).validate("agm").unwrap();
    for clamp in [-1.0, f64::NAN] {
        let err = AgmConfig { coeff_clamp: Some(clamp), ..AgmConfig::av_digits() }.validate().unwrap_err().to_string();
        assert!(err.contains("agm.coeff_clamp must be finite and >= 0"), "{err}");
    }
}

// ---------------------------------------------------------------- neutral modulators

#[test]
fn modulators_whose_coefficients_are_all_one_equal_joint_training_bitwise() {
    for (m, enc) in [(2, Enc::Conv), (3, Enc::Mlp)] {
        let data = batches(m, enc, 4, 21);
        let reference = model(m, enc, 9);
        train(&reference, &mut Joint::new(), &data);
        let neutral: Vec<(&str, Box<dyn Modulator>)> = vec![
            (
                "ogm-ge, noise off, coefficients 1",
                Box::new(ogm(OgmMode::Paper, false, m).with_fixed_coefficients(vec![1.0; m]).unwrap()),
            ),
            (
                "mslr, multipliers 1",
                Box::new(Mslr::new(&MslrConfig { init: vec![1.0; m], window: 5, ..MslrConfig::avmnist() }, m).unwrap()),
            ),
            ("mses before any stop", Box::new(Mses::new(&MsesConfig::avmnist(), m).unwrap())),
        ];
        for (what, mut modulator) in neutral {
            let net = model(m, enc, 9);
            train(&net, modulator.as_mut(), &data);
            assert_eq!(bits(&net), bits(&reference), "M = {m}: {what} differs from joint training");
        }
    }
}

#[test]
fn a_stack_with_a_neutral_second_member_equals_the_first_alone() {
    let m = 2;
    let data = batches(m, Enc::Conv, 4, 33);
    let agm = || Box::new(Agm::new(AgmConfig::av_digits(), m).unwrap()) as Box<dyn Modulator>;
    let alone = model(m, Enc::Conv, 4);
    let mut first = agm();
    train(&alone, first.as_mut(), &data);
    let seconds: Vec<(&str, Box<dyn Modulator>)> = vec![
        (
            "mslr",
            Box::new(Mslr::new(&MslrConfig { init: vec![1.0; m], window: 5, ..MslrConfig::avmnist() }, m).unwrap()),
        ),
        ("ogm-ge", Box::new(ogm(OgmMode::Reference, false, m).with_fixed_coefficients(vec![1.0; m]).unwrap())),
    ];
    for (name, second) in seconds {
        let net = model(m, Enc::Conv, 4);
        let mut stack = Stack::new(vec![
            StackMember::new("agm", agm(), Hooks::OBJECTIVE),
            StackMember::new(name, second, Hooks::EDITS),
        ])
        .unwrap();
        assert_eq!(stack.label(), format!("agm+{name}"));
        train(&net, &mut stack, &data);
        assert_eq!(bits(&net), bits(&alone), "agm+{name} differs from agm alone");
        // The coefficients are the last member's that has them (the neutral one's ones); each
        // member's are logged by name.
        assert_eq!(stack.coefficients(), Some(vec![1.0; m]));
        let agm_coefficients = first.coefficients().unwrap();
        assert!(agm_coefficients.iter().any(|&c| c != 1.0), "AGM modulated: {agm_coefficients:?}");
        let expected = vec![("agm".to_string(), agm_coefficients), (name.to_string(), vec![1.0; m])];
        assert_eq!(stack.coefficients_by_method(), expected);
    }
    // A stack with one member that has coefficients logs them as `coefficients` alone.
    let mut lone = Stack::new(vec![StackMember::new("agm", agm(), Hooks::OBJECTIVE)]).unwrap();
    train(&model(m, Enc::Conv, 4), &mut lone, &data);
    assert!(lone.coefficients().is_some() && lone.coefficients_by_method().is_empty());
}

#[test]
fn a_stacked_method_returning_an_undeclared_objective_is_refused_at_its_first_step() {
    /// Doubles the loss but declares only gradient edits, so a stack would skip its objective.
    struct Doubled;
    impl Modulator for Doubled {
        fn name(&self) -> &'static str {
            "doubled"
        }
        fn objective(&mut self, cx: &StepCx<'_>) -> candle_core::Result<agm_modulation::Objective> {
            let output = cx.forward.full.logits.clone();
            let loss = (candle_nn::loss::cross_entropy(&output, &cx.batch.labels)? * 2.0)?;
            Ok(agm_modulation::Objective { loss, output, mono: None })
        }
    }
    let (m, data) = (2, batches(2, Enc::Mlp, 1, 3));
    let net = model(m, Enc::Mlp, 4);
    let agm = Box::new(Agm::new(AgmConfig::av_digits(), m).unwrap());
    let mut stack = Stack::new(vec![
        StackMember::new("agm", agm, Hooks::OBJECTIVE),
        StackMember::new("doubled", Box::new(Doubled), Hooks::EDITS),
    ])
    .unwrap();
    let fwd = forward(&net, &stack, &data[0]);
    let cx = StepCx { model: &net, batch: &data[0], forward: &fwd, step: 1, epoch: 1 };
    let err = stack.objective(&cx).expect_err("refused").to_string();
    assert!(err.contains("`doubled` returns an objective of its own") && err.contains("Hooks::OBJECTIVE"), "{err}");
}

#[test]
fn agm_built_for_another_modality_count_than_the_models_says_so() {
    for (model_m, m) in [(2, 3), (2, 4), (3, 2)] {
        let (net, data) = (model(model_m, Enc::Mlp, 4), batches(model_m, Enc::Mlp, 1, 3));
        let mut agm = Agm::new(AgmConfig::av_digits(), m).unwrap();
        let fwd = forward(&net, &agm, &data[0]);
        let cx = StepCx { model: &net, batch: &data[0], forward: &fwd, step: 1, epoch: 1 };
        let err = agm.objective(&cx).expect_err("refused").to_string();
        assert!(err.contains(&format!("agm was built for {m} modalities, the model has {model_m}")), "{err}");
    }
}

#[test]
fn a_stack_composes_edits_in_order_and_keeps_state_per_member() {
    let m = 2;
    let net = model(m, Enc::Conv, 4);
    let mut stack = Stack::new(vec![
        StackMember::new(
            "mslr",
            Box::new(Mslr::new(&MslrConfig { init: vec![2.0, 0.5], window: 1, ..MslrConfig::avmnist() }, m).unwrap()),
            Hooks::EDITS,
        ),
        StackMember::new("ogm-ge", Box::new(ogm(OgmMode::Reference, false, m)), Hooks::EDITS),
    ])
    .unwrap();
    assert_eq!(stack.forward_plan(), agm_modulation::ForwardPlan::Shapley);
    let (before, after) = step(&net, &mut stack, &batches(m, Enc::Conv, 1, 3)[0], 1);
    let ogm_coeff = stack.coefficients().unwrap();
    let groups = net.param_groups();
    for (name, g) in &before {
        let want: Vec<f64> = match groups.modality_of(name) {
            Some(x) => {
                let k = if groups.find(name).unwrap().var.rank() == 4 { ogm_coeff[x] } else { 1.0 };
                let mult = [2.0, 0.5][x];
                g.iter().map(|v| (v * mult) * k).collect()
            }
            None => g.clone(),
        };
        let err = after[name].iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(err <= 1e-15 * want.iter().map(|v| v.abs()).fold(1.0, f64::max), "{name}: {err}");
    }
    // Epoch actions concatenated in order; state is one JSON entry per member.
    let acts = stack.on_epoch_end(&epoch_cx(&net, 1, &[0.5, 0.5], &[1.0, 1.0])).unwrap();
    assert!(acts.is_empty());
    let state = stack.state();
    assert_eq!(state.as_array().map(Vec::len), Some(2));
    stack.load_state(&state).unwrap();
    let err = stack.load_state(&serde_json::json!([null])).unwrap_err().to_string();
    assert!(err.contains("holds 1 methods") && err.contains("mslr+ogm-ge"), "{err}");
}

#[test]
fn stacks_the_hooks_cannot_compose_are_rejected_with_the_reason() {
    let err = check_composable(&[("agm", Hooks::OBJECTIVE), ("gblend", Hooks::OBJECTIVE)]).unwrap_err().to_string();
    assert!(err.contains("`agm` and `gblend` both define the training objective"), "{err}");
    let err = check_composable(&[("agm", Hooks::OBJECTIVE), ("mmpareto", Hooks::OBJECTIVE_AND_BACKWARD)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("both define the training objective"), "{err}");
    let err = check_composable(&[("agm", Hooks::OBJECTIVE), ("x", Hooks { objective: false, backward: true })])
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot differentiate the objective of `agm`"), "{err}");
    let err = check_composable(&[("mslr", Hooks::EDITS), ("mslr", Hooks::EDITS)]).unwrap_err().to_string();
    assert!(err.contains("appears twice"), "{err}");
    assert!(check_composable(&[("agm", Hooks::OBJECTIVE), ("ogm-ge", Hooks::EDITS), ("mses", Hooks::EDITS)]).is_ok());

    // Two different clippings cannot both apply.
    let clip = |t: f64| OgmGeConfig { clip: Some(ClipRule::outside_band(t, t)), ..OgmGeConfig::av_digits() };
    let members = |t: f64| {
        vec![
            StackMember::new("agm", Box::new(Agm::new(AgmConfig::av_digits(), 2).unwrap()), Hooks::OBJECTIVE),
            StackMember::new("ogm-ge", Box::new(OgmGe::new(clip(t), 2).unwrap()), Hooks::EDITS),
        ]
    };
    let err = Stack::new(members(5.0)).err().unwrap().to_string();
    assert!(err.contains("one clipping"), "{err}");
    assert!(Stack::new(members(1.0)).is_ok(), "the same clip rule composes");
}

// ---------------------------------------------------------------- MSLR

#[test]
fn mslr_scales_each_modality_group_by_init_times_ratio() {
    let m = 3;
    let net = model(m, Enc::Mlp, 2);
    let mut mslr = Mslr::new(&MslrConfig::urfunny(), m).unwrap();
    let (before, after) = step(&net, &mut mslr, &batches(m, Enc::Mlp, 1, 4)[0], 1);
    let groups = net.param_groups();
    for (name, g) in &before {
        let k = groups.modality_of(name).map_or(1.0, |x| [0.9, 1.4, 0.7][x]);
        assert_eq!(after[name], g.iter().map(|v| v * k).collect::<Vec<_>>(), "{name}");
    }
    // Five epochs fill the memory, the sixth sets the ratios, which act from then on.
    for e in 1..=5 {
        mslr.on_epoch_end(&epoch_cx(&net, e, &[0.5, 0.4, 0.2], &[1.0; 3])).unwrap();
        assert_eq!(mslr.coefficients().unwrap(), vec![0.9, 1.4, 0.7]);
    }
    mslr.on_epoch_end(&epoch_cx(&net, 6, &[0.25, 0.4, 0.3], &[1.0; 3])).unwrap();
    let r = mslr.schedule().ratios();
    assert!((r[0] - 0.5).abs() < 1e-15 && (r[1] - 1.0).abs() < 1e-15 && (r[2] - 1.5).abs() < 1e-15, "{r:?}");
    assert_eq!(mslr.schedule().memory(0), vec![0.5, 0.5, 0.5, 0.5, 0.25]);
    let c = mslr.coefficients().unwrap();
    assert!((c[0] - 0.45).abs() < 1e-15 && (c[2] - 1.05).abs() < 1e-15, "{c:?}");
    // Resume: the state round-trips.
    let mut other = Mslr::new(&MslrConfig::urfunny(), m).unwrap();
    other.load_state(&mslr.state()).unwrap();
    assert_eq!(other.schedule(), mslr.schedule());
}

#[test]
fn mslr_and_mses_read_the_model_s_own_heads_where_it_sums_them() {
    // The reference's Sum models report each head's accuracy and loss; MSLR and MSES read those,
    // and the Shapley outputs only on models without such heads.
    let net = model(2, Enc::Mlp, 1);
    let with_heads = |epoch, acc: &[f64], loss: &[f64]| EpochCx {
        head_accuracy: acc.to_vec(),
        head_loss: loss.to_vec(),
        ..epoch_cx(&net, epoch, &[0.5, 0.5], &[1.0, 1.0])
    };
    let mut mslr = Mslr::new(&MslrConfig { window: 1, ..MslrConfig::avmnist() }, 2).unwrap();
    mslr.on_epoch_end(&with_heads(1, &[0.4, 0.2], &[1.0, 1.0])).unwrap();
    mslr.on_epoch_end(&with_heads(2, &[0.2, 0.2], &[1.0, 1.0])).unwrap();
    assert_eq!(mslr.schedule().ratios(), [0.5, 1.0]);
    let cx = with_heads(1, &[0.4, 0.2], &[0.3, 0.7]);
    assert_eq!((cx.uni_modal_accuracy(), cx.uni_modal_loss()), (&[0.4, 0.2][..], &[0.3, 0.7][..]));
    let cx = epoch_cx(&net, 1, &[0.5, 0.5], &[1.0, 1.0]);
    assert_eq!((cx.uni_modal_accuracy(), cx.uni_modal_loss()), (&[0.5, 0.5][..], &[1.0, 1.0][..]));
    // MSES: the Shapley losses stay flat, the visual head's rises, so visual stops.
    let mut mses = Mses::new(&MsesConfig { patience: 0, ..MsesConfig::urfunny() }, 2).unwrap();
    mses.on_epoch_end(&with_heads(1, &[0.0; 2], &[1.0, 1.0])).unwrap();
    mses.on_epoch_end(&with_heads(2, &[0.0; 2], &[0.5, 2.0])).unwrap();
    assert_eq!(mses.coefficients().unwrap(), vec![1.0, 0.0]);
}

#[test]
fn mslr_settings_are_checked_against_the_model() {
    let err = MslrSchedule::new(&MslrConfig::avmnist(), 3).unwrap_err().to_string();
    assert!(err.contains("mslr.init has 2 values but the model has 3"), "{err}");
    let err = MslrSchedule::new(&MslrConfig { init: vec![1.0, -1.0], window: 5, ..MslrConfig::avmnist() }, 2)
        .unwrap_err()
        .to_string();
    assert!(err.contains("mslr.init"), "{err}");
    let err = MslrSchedule::new(&MslrConfig { init: vec![1.0, 1.0], window: 0, ..MslrConfig::avmnist() }, 2)
        .unwrap_err()
        .to_string();
    assert!(err.contains("mslr.window"), "{err}");
}

// ---------------------------------------------------------------- MSES

#[test]
fn mses_stops_restores_and_ends_training() {
    let mut s = MsesSchedule::new(
        &MsesConfig { patience: 2, best_at_first_epoch: FirstEpochPolicy::Restore, ..MsesConfig::avmnist() },
        2,
    )
    .unwrap();
    // Epoch 1: a snapshot of every modality (the state the reference never saved).
    let up = s.end_epoch(1, &[1.0, 1.0]).unwrap();
    let tags: Vec<EpochAction> = (0..2).map(|x| EpochAction::SaveSnapshot(mses_snapshot_tag(x))).collect();
    assert_eq!(up.actions, tags);
    // Audio improves (0.6·1.0 + 0.4·0.5 = 0.8), visual never does.
    let up = s.end_epoch(2, &[0.5, 2.0]).unwrap();
    assert_eq!(up.improved, vec![true, false]);
    assert_eq!(up.actions, vec![EpochAction::SaveSnapshot(mses_snapshot_tag(0))]);
    s.end_epoch(3, &[0.5, 2.0]).unwrap();
    // Epoch 4: visual's best is still epoch 1 and 4 − 1 > 2: it stops and epoch 1 is restored,
    // where the AV-MNIST reference crashes.
    let up = s.end_epoch(4, &[0.5, 2.0]).unwrap();
    assert_eq!(up.stopped, vec![(1, 1, true)]);
    assert_eq!(up.actions, vec![EpochAction::RestoreSnapshot(mses_snapshot_tag(1))]);
    assert_eq!(s.ratios(), &[1.0, 0.0]);
    // Audio's best is epoch 3 (smoothed 0.5 < 0.8); it stops at epoch 6, then training ends.
    assert!(s.end_epoch(5, &[0.6, 2.0]).unwrap().actions.is_empty());
    let up = s.end_epoch(6, &[0.6, 2.0]).unwrap();
    assert_eq!(up.stopped, vec![(0, 3, true)]);
    assert_eq!(up.actions, vec![EpochAction::RestoreSnapshot(mses_snapshot_tag(0)), EpochAction::Stop]);
    assert!(up.all_stopped);

    // UR-Funny's policy: no snapshot at epoch 1 and no reload of it.
    let mut s = MsesSchedule::new(
        &MsesConfig { patience: 0, best_at_first_epoch: FirstEpochPolicy::Skip, ..MsesConfig::avmnist() },
        1,
    )
    .unwrap();
    assert!(s.end_epoch(1, &[1.0]).unwrap().actions.is_empty());
    let up = s.end_epoch(2, &[3.0]).unwrap();
    assert_eq!(up.stopped, vec![(0, 1, false)]);
    assert_eq!(up.actions, vec![EpochAction::Stop]);
}

#[test]
fn mses_keeps_its_schedule_across_its_own_restores_but_loads_checkpoints() {
    let net = model(2, Enc::Mlp, 1);
    let mut mses = Mses::new(
        &MsesConfig { patience: 0, best_at_first_epoch: FirstEpochPolicy::Restore, ..MsesConfig::avmnist() },
        2,
    )
    .unwrap();
    mses.on_epoch_end(&epoch_cx(&net, 1, &[0.0; 2], &[1.0, 1.0])).unwrap();
    let at_epoch_one = mses.state();
    let acts = mses.on_epoch_end(&epoch_cx(&net, 2, &[0.0; 2], &[0.5, 2.0])).unwrap();
    assert_eq!(
        acts,
        vec![
            EpochAction::SaveSnapshot(mses_snapshot_tag(0)),
            EpochAction::RestoreSnapshot(mses_snapshot_tag(1)),
            // And says so, by the modality's name, for the epoch's metrics row.
            EpochAction::Note(
                "mses: visual stopped (its smoothed loss last improved at epoch 1); the model, the optimizer and the \
                 learning rate restored to epoch 1, its best"
                    .into()
            ),
        ]
    );
    // The trainer restores the snapshot of epoch 1 and says so: visual stays stopped.
    mses.on_restored(&mses_snapshot_tag(1), &at_epoch_one).unwrap();
    assert_eq!(mses.coefficients().unwrap(), vec![1.0, 0.0]);
    // A checkpoint load (resume) takes the saved schedule.
    mses.load_state(&at_epoch_one).unwrap();
    assert_eq!(mses.coefficients().unwrap(), vec![1.0, 1.0]);
}

#[test]
fn mses_zeroes_the_gradients_of_a_stopped_modality_only() {
    let net = model(2, Enc::Mlp, 1);
    let mut mses =
        Mses::new(&MsesConfig { patience: 0, best_at_first_epoch: FirstEpochPolicy::Skip, ..MsesConfig::avmnist() }, 2)
            .unwrap();
    mses.on_epoch_end(&epoch_cx(&net, 1, &[0.0; 2], &[1.0, 1.0])).unwrap();
    mses.on_epoch_end(&epoch_cx(&net, 2, &[0.0; 2], &[0.5, 2.0])).unwrap();
    let (before, after) = step(&net, &mut mses, &batches(2, Enc::Mlp, 1, 8)[0], 1);
    let groups = net.param_groups();
    for (name, g) in &before {
        let want: Vec<f64> = match groups.modality_of(name) {
            Some(1) => g.iter().map(|v| v * 0.0).collect(),
            _ => g.clone(),
        };
        assert_eq!(after[name], want, "{name}");
    }
}

#[test]
fn mslr_and_mses_scale_only_inside_their_modulation_window() {
    let net = model(2, Enc::Mlp, 1);
    let batch = &batches(2, Enc::Mlp, 1, 8)[0];
    let scaled = |modulator: &mut dyn Modulator, epoch: usize| {
        modulator.on_epoch_start(epoch, 1, 0).unwrap();
        let (before, after) = step_in_epoch(&net, modulator, batch, 1, epoch);
        (before != after, modulator.coefficients().unwrap())
    };
    let mut mslr = Mslr::new(&MslrConfig { window_start: 2, window_end: Some(3), ..MslrConfig::avmnist() }, 2).unwrap();
    assert_eq!(scaled(&mut mslr, 1), (false, vec![1.0, 1.0]));
    assert_eq!(scaled(&mut mslr, 2), (true, vec![1.3, 0.7]));
    assert_eq!(scaled(&mut mslr, 3), (true, vec![1.3, 0.7]));
    assert_eq!(scaled(&mut mslr, 4), (false, vec![1.0, 1.0]));

    // A stopped modality trains again after the window, as in the reference.
    let cfg = MsesConfig {
        patience: 0,
        best_at_first_epoch: FirstEpochPolicy::Skip,
        window_end: Some(2),
        ..MsesConfig::avmnist()
    };
    let mut mses = Mses::new(&cfg, 2).unwrap();
    mses.on_epoch_end(&epoch_cx(&net, 1, &[0.0; 2], &[1.0, 1.0])).unwrap();
    mses.on_epoch_end(&epoch_cx(&net, 2, &[0.0; 2], &[0.5, 2.0])).unwrap();
    assert_eq!(mses.schedule().ratios(), &[1.0, 0.0]);
    assert_eq!(scaled(&mut mses, 2), (true, vec![1.0, 0.0]));
    assert_eq!(scaled(&mut mses, 3), (false, vec![1.0, 1.0]));

    let err = Mslr::new(&MslrConfig { window_start: 5, window_end: Some(4), ..MslrConfig::avmnist() }, 2).unwrap_err();
    assert!(err.to_string().contains("mslr.window_end (4) must be >= mslr.window_start (5)"), "{err}");
    let err = Mses::new(&MsesConfig { window_start: 3, window_end: Some(1), ..MsesConfig::avmnist() }, 2).unwrap_err();
    assert!(err.to_string().contains("mses.window_end (1)"), "{err}");
}

// ---------------------------------------------------------------- registry

#[test]
fn every_method_and_stack_runs_two_steps_for_two_and_three_modalities() {
    let specs = ["joint", "agm", "ogm-ge", "mslr", "mses", "agm+ogm-ge", "ogm-ge+mslr", "agm+mslr+mses"];
    for m in [2, 3] {
        for enc in [Enc::Mlp, Enc::Conv] {
            let mut cfgs = MethodSettings::av_digits();
            cfgs.set::<Mslr>(&MslrConfig { init: vec![1.1; m], window: 5, ..MslrConfig::avmnist() });
            if enc == Enc::Conv {
                cfgs.set::<OgmGe>(&OgmGeConfig { mode: OgmMode::Reference, ..OgmGeConfig::av_digits() });
            }
            for spec in specs {
                let net = model(m, enc, 5);
                let mut modulator =
                    registry::build(spec, &cfgs, &BuildCx::new(&net, 0)).unwrap_or_else(|e| panic!("{spec}: {e}"));
                let data = batches(m, enc, 2, 6);
                train(&net, modulator.as_mut(), &data);
                modulator.on_epoch_end(&epoch_cx(&net, 1, &vec![0.5; m], &vec![1.0; m])).unwrap();
                for (name, b) in bits(&net) {
                    assert!(b.iter().all(|&x| f64::from_bits(x).is_finite()), "{spec}, M = {m}, {enc:?}: {name}");
                }
            }
        }
    }
}

#[test]
fn the_registry_rejects_what_it_cannot_build_with_the_reason() {
    let cfgs = MethodSettings::av_digits();
    let mlp = model(2, Enc::Mlp, 1);
    let mlp3 = model(3, Enc::Mlp, 1);
    let mlp1 = model(1, Enc::Mlp, 1);
    let (mlp, mlp3, mlp1) = (BuildCx::new(&mlp, 0), BuildCx::new(&mlp3, 0), BuildCx::new(&mlp1, 0));
    let mut reference = cfgs.clone();
    reference.set::<OgmGe>(&OgmGeConfig { mode: OgmMode::Reference, ..OgmGeConfig::av_digits() });
    let err = registry::build("ogm-ge", &reference, &mlp).err().unwrap().to_string();
    assert!(err.contains("4-D") && err.contains("mode = paper"), "{err}");
    let err = registry::build("mslr", &cfgs, &mlp3).err().unwrap().to_string();
    assert!(err.contains("mslr.init"), "{err}");
    let err = registry::build("ogm-ge", &cfgs, &mlp1).err().unwrap().to_string();
    assert!(err.contains("at least 2 modalities"), "{err}");
    let err = registry::build("magic", &cfgs, &mlp).err().unwrap().to_string();
    assert!(err.contains("`magic` is not known") && err.contains("joint, agm, ogm-ge, mslr, mses"), "{err}");
    let err = registry::build("mses+mses", &cfgs, &mlp).err().unwrap().to_string();
    assert!(err.contains("cannot be stacked") && err.contains("twice"), "{err}");
    let mut bad = cfgs;
    bad.set::<OgmGe>(&OgmGeConfig { alpha: 0.0, ..OgmGeConfig::av_digits() });
    assert!(bad.validate().unwrap_err().to_string().contains("ogm_ge.alpha"));
}

/// `Method::HOOKS` must declare the hooks a method overrides, or a stack would silently skip
/// them: a method that does not declare `objective` must return plain cross-entropy, and one
/// that does not declare `backward` must differentiate as the default does.
#[test]
fn every_registered_method_declares_the_hooks_it_overrides() {
    for entry in registry::entries() {
        for step in 1..=2 {
            let net = model(2, Enc::Mlp, 4);
            let data = batches(2, Enc::Mlp, 1, 8);
            let dims = agm_modulation::encoder_feature_dims(&net, &data[0]).unwrap();
            let cx = BuildCx::new(&net, 0).with_feature_dims(&dims);
            let mut method = entry.build(&MethodSettings::av_digits(), &cx).unwrap();
            method.attach(&net).unwrap();
            let forward = forward(&net, method.as_ref(), &data[0]);
            let cx = StepCx { model: &net, batch: &data[0], forward: &forward, step, epoch: 1 };
            let objective = method.objective(&cx).unwrap();
            // AGM's loss has plain cross-entropy's value: compare what it differentiates to.
            let plain = candle_nn::loss::cross_entropy(&forward.full.logits, &data[0].labels).unwrap();
            let same_objective = snapshot(&net, &agm_kernels::backward(&objective.loss).unwrap())
                == snapshot(&net, &agm_kernels::backward(&plain).unwrap());
            if entry.name == "agm" {
                assert!(!same_objective, "the check cannot tell AGM's objective from plain training");
            }
            if !entry.hooks.objective {
                assert!(same_objective, "`{}` changes the objective but does not declare Hooks.objective", entry.name);
            }
            if !entry.hooks.backward {
                let got = snapshot(&net, &method.backward(&cx, &objective).unwrap());
                let want = snapshot(&net, &agm_kernels::backward(&objective.loss).unwrap());
                assert_eq!(got, want, "`{}` changes the backward but does not declare Hooks.backward", entry.name);
            }
        }
    }
}

/// Reports the seed it was built with as its one coefficient.
struct SeedProbe(u64);

impl Modulator for SeedProbe {
    fn name(&self) -> &'static str {
        <Self as agm_modulation::Method>::NAME
    }
    fn coefficients(&self) -> Option<Vec<f64>> {
        Some(vec![self.0 as f64])
    }
}

impl agm_modulation::Method for SeedProbe {
    const NAME: &'static str = "seed-probe";
    const HOOKS: Hooks = Hooks::EDITS;
    type Config = std::collections::BTreeMap<String, f64>;
    fn preset(_dataset: &str) -> Self::Config {
        Self::Config::new()
    }
    fn build(_config: &Self::Config, cx: &BuildCx<'_>) -> Result<Self, agm_modulation::MethodError> {
        Ok(Self(cx.seed))
    }
}

#[test]
fn stacked_methods_after_the_first_draw_from_seeds_of_their_own() {
    registry::register::<SeedProbe>().unwrap();
    let net = model(2, Enc::Mlp, 4);
    let settings = MethodSettings::av_digits();
    let seed_in = |spec: &str| {
        let built = registry::build(spec, &settings, &BuildCx::new(&net, 7)).unwrap();
        built.coefficients().unwrap()[0]
    };
    // Alone or first, a method draws from the run's seed, as it would alone.
    assert_eq!(seed_in("seed-probe"), 7.0);
    assert_eq!(seed_in("seed-probe+joint"), 7.0);
    // Later in a stack, from a seed of its own for each position.
    let (second, third) = (seed_in("joint+seed-probe"), seed_in("joint+mslr+seed-probe"));
    assert!(second != 7.0 && third != 7.0 && second != third, "{second} {third}");
}
