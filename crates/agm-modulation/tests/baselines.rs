//! Property tests for G-Blending, PMR and MMPareto on a tiny late-concat model with MLP encoders
//! (f64 unless stated), driven by a minimal step loop: full pass → objective → backward →
//! after_backward → plain SGD on the returned gradients.

use agm_core::{BatchSource, ForwardOpts, MultimodalBatch, MultimodalModel, NamedVar};
use agm_fusion::{EncoderLayer, EncoderSpec, FusionModel, LateConcatConfig};
use agm_modulation::{
    encoder_feature_dims, gblend_weights, min_norm_2, pareto_combine, prototype_logits, EpochCx, GBlend, GBlendConfig,
    GBlendEstimator, GBlendMeasure, MmPareto, MmParetoConfig, Modulator, Objective, ParetoRescale, Pmr, PmrConfig,
    StepCx, StepForward, TrainStartCx,
};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor};

const CLASSES: usize = 3;
const IN_DIMS: [usize; 3] = [6, 5, 4];
const FEAT_DIMS: [usize; 3] = [5, 4, 3];
const NAMES: [&str; 3] = ["audio", "visual", "text"];
/// How strongly each modality's input carries the label (modality 0 dominates).
const SIGNAL: [f64; 3] = [1.5, 0.6, 0.3];

fn cpu() -> Device {
    Device::Cpu
}

fn model(m: usize, dtype: DType) -> FusionModel {
    let encoders = (0..m)
        .map(|i| EncoderSpec {
            modality: NAMES[i].into(),
            layers: vec![
                EncoderLayer::Linear { in_dim: IN_DIMS[i], out_dim: 7 },
                EncoderLayer::Relu,
                EncoderLayer::Linear { in_dim: 7, out_dim: FEAT_DIMS[i] },
            ],
        })
        .collect();
    let cfg = LateConcatConfig { encoders, num_classes: CLASSES, prefix: String::new() };
    FusionModel::late_concat(&cfg, 11, dtype, &cpu()).unwrap()
}

/// A deterministic uniform stream in [-0.5, 0.5).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }
}

/// In-memory split: per-modality rows `[N, IN_DIMS[m]]` and labels.
struct Synth {
    x: Vec<Vec<f64>>,
    y: Vec<u32>,
    m: usize,
    dtype: DType,
}

impl Synth {
    /// `n` samples; `signal` scales the class-dependent part of every modality's input.
    fn new(m: usize, n: usize, seed: u64, signal: f64, dtype: DType) -> Self {
        let mut r = Lcg(seed);
        let y: Vec<u32> = (0..n).map(|i| ((i as u64 + seed) % CLASSES as u64) as u32).collect();
        let x = (0..m)
            .map(|mm| {
                let d = IN_DIMS[mm];
                let mut v = Vec::with_capacity(n * d);
                for &yi in &y {
                    for j in 0..d {
                        let class_part = if j % CLASSES == yi as usize { SIGNAL[mm] * signal } else { 0.0 };
                        v.push(class_part + r.next());
                    }
                }
                v
            })
            .collect();
        Self { x, y, m, dtype }
    }
}

impl BatchSource for Synth {
    fn len(&self) -> usize {
        self.y.len()
    }

    fn batch(&self, indices: &[usize], device: &Device) -> Result<MultimodalBatch> {
        let inputs = (0..self.m)
            .map(|mm| {
                let d = IN_DIMS[mm];
                let rows: Vec<f64> = indices.iter().flat_map(|&i| self.x[mm][i * d..(i + 1) * d].to_vec()).collect();
                Tensor::from_vec(rows, (indices.len(), d), device)?.to_dtype(self.dtype)
            })
            .collect::<Result<Vec<_>>>()?;
        let labels = Tensor::from_vec(indices.iter().map(|&i| self.y[i]).collect::<Vec<u32>>(), indices.len(), device)?;
        MultimodalBatch::new(inputs, labels)
    }
}

fn all_batch(src: &Synth) -> MultimodalBatch {
    src.batch(&(0..src.len()).collect::<Vec<_>>(), &cpu()).unwrap()
}

fn feature_dims(model: &FusionModel, src: &Synth) -> Vec<usize> {
    encoder_feature_dims(model, &src.batch(&[0], &cpu()).unwrap()).unwrap()
}

fn epoch_cx<'a>(
    model: &'a dyn MultimodalModel,
    device: &'a Device,
    train: &'a dyn BatchSource,
    holdout: Option<&'a dyn BatchSource>,
    epoch: usize,
) -> EpochCx<'a> {
    EpochCx {
        model,
        device,
        train,
        holdout,
        epoch,
        accuracy: 0.0,
        modality_accuracy: Vec::new(),
        modality_loss: Vec::new(),
        head_accuracy: Vec::new(),
        head_loss: Vec::new(),
    }
}

/// The passes of one step, as the trainer runs them.
fn forward(
    model: &dyn MultimodalModel,
    modulator: &dyn Modulator,
    batch: &MultimodalBatch,
    step: usize,
) -> StepForward {
    let m = model.modalities().len();
    let full = model.forward(&batch.inputs, &ForwardOpts::train(m, step as u64)).unwrap();
    let masked = modulator
        .forward_plan()
        .masked_subsets(m)
        .into_iter()
        .map(|s| (s, model.forward(&batch.inputs, &ForwardOpts::eval(m).with_present(s)).unwrap().logits))
        .collect();
    StepForward { full, masked }
}

/// One step with plain SGD; returns the objective and the gradients the optimizer consumed.
fn step(
    model: &dyn MultimodalModel,
    modulator: &mut dyn Modulator,
    trainable: &[NamedVar],
    batch: &MultimodalBatch,
    step: usize,
    epoch: usize,
    lr: f64,
) -> (Objective, GradStore) {
    let fwd = forward(model, modulator, batch, step);
    let cx = StepCx { model, batch, forward: &fwd, step, epoch };
    let objective = modulator.objective(&cx).unwrap();
    let mut grads = modulator.backward(&cx, &objective).unwrap();
    modulator.after_backward(&cx, &mut grads).unwrap();
    for v in trainable {
        if let Some(g) = grads.get(v.var.as_tensor()) {
            let new = (v.var.as_tensor() - g.affine(lr, 0.0).unwrap()).unwrap();
            v.var.set(&new).unwrap();
        }
    }
    (objective, grads)
}

/// One epoch over `src` in batches of 8 (global step counter in `n`).
fn epoch(
    model: &dyn MultimodalModel,
    modulator: &mut dyn Modulator,
    trainable: &[NamedVar],
    src: &Synth,
    epoch_no: usize,
    n: &mut usize,
) {
    let idx: Vec<usize> = (0..src.len()).collect();
    for chunk in idx.chunks(8) {
        *n += 1;
        let batch = src.batch(chunk, &cpu()).unwrap();
        step(model, modulator, trainable, &batch, *n, epoch_no, 0.2);
    }
}

fn attach(model: &FusionModel, modulator: &mut dyn Modulator) -> Vec<NamedVar> {
    let extra = modulator.attach(model).unwrap();
    let mut trainable = model.param_groups().trainable();
    trainable.extend(extra);
    trainable
}

fn snapshot(vars: &[NamedVar]) -> Vec<Vec<f64>> {
    vars.iter()
        .map(|v| v.var.as_tensor().to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap())
        .collect()
}

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_dtype(DType::F64).unwrap() * b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn ce(logits: &Tensor, labels: &Tensor) -> f64 {
    candle_nn::loss::cross_entropy(logits, labels).unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// The three methods, built for `model` and attached, with G-Blending re-estimating every epoch.
fn build(name: &str, model: &FusionModel, train: &Synth) -> (Box<dyn Modulator>, Vec<NamedVar>) {
    let m = model.modalities().len();
    let dims = feature_dims(model, train);
    let mut modulator: Box<dyn Modulator> = match name {
        "gblend" => Box::new(
            GBlend::new(GBlendConfig { super_epoch: 1, ..GBlendConfig::av_digits() }, m)
                .unwrap()
                .with_run_seed(3)
                .with_feature_dims(dims)
                .unwrap(),
        ),
        "pmr" => {
            let mut pmr = Pmr::new(PmrConfig::av_digits(), m).unwrap().with_run_seed(3);
            pmr.prime(model, train, &cpu()).unwrap();
            Box::new(pmr)
        }
        "mmpareto" => Box::new(
            MmPareto::new(MmParetoConfig::official(), m).unwrap().with_run_seed(3).with_feature_dims(dims).unwrap(),
        ),
        _ => unreachable!(),
    };
    let trainable = attach(model, modulator.as_mut());
    (modulator, trainable)
}

const METHODS: [&str; 3] = ["gblend", "pmr", "mmpareto"];

// ---------------------------------------------------------------------------------------------
// Every method
// ---------------------------------------------------------------------------------------------

#[test]
fn every_method_runs_two_steps_with_two_and_three_modalities_and_changes_the_parameters() {
    for dtype in [DType::F64, DType::F32] {
        for m in [2, 3] {
            for name in METHODS {
                let model = model(m, dtype);
                let train = Synth::new(m, 24, 1, 1.0, dtype);
                let (mut modulator, trainable) = build(name, &model, &train);
                let groups = model.param_groups();
                let model_vars = groups.trainable().len();
                assert!(trainable.len() >= model_vars);
                for v in &trainable[model_vars..] {
                    assert!(v.name.starts_with(&format!("{name}.")), "{name}: method variable `{}`", v.name);
                    assert!(groups.find(&v.name).is_none(), "{name}: the heads belong to the method, not the model");
                }
                let before = snapshot(&trainable);
                for s in 1..=2 {
                    let batch = train.batch(&[(s * 5) % 24, (s * 7 + 1) % 24, 2, 9, 13, 17], &cpu()).unwrap();
                    let (obj, _) = step(&model, modulator.as_mut(), &trainable, &batch, s, 1, 0.1);
                    let loss = obj.loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
                    assert!(loss.is_finite() && loss > 0.0, "{name} M={m} {dtype:?}: loss {loss}");
                    assert_eq!(obj.output.dims(), &[6, CLASSES]);
                }
                let after = snapshot(&trainable);
                // Every modality's encoder moved, and so did the shared head and the method's heads.
                for (x, group) in groups.per_modality.iter().enumerate() {
                    let moved = group.iter().any(|v| {
                        let i = trainable.iter().position(|t| t.name == v.name).unwrap();
                        before[i] != after[i]
                    });
                    assert!(moved, "{name} M={m} {dtype:?}: encoder {x} did not change");
                }
                for (i, v) in trainable.iter().enumerate().skip(model_vars) {
                    assert_ne!(before[i], after[i], "{name} M={m}: `{}` did not change", v.name);
                }
                let coeff = modulator.coefficients().unwrap();
                assert!(coeff.iter().all(|c| c.is_finite()), "{name}: {coeff:?}");
            }
        }
    }
}

#[test]
fn state_round_trips_through_json() {
    for m in [2, 3] {
        for name in METHODS {
            let model = model(m, DType::F64);
            let train = Synth::new(m, 24, 1, 1.0, DType::F64);
            let holdout = Synth::new(m, 12, 77, 1.0, DType::F64);
            let (mut a, trainable) = build(name, &model, &train);
            let mut n = 0;
            for e in 1..=2 {
                epoch(&model, a.as_mut(), &trainable, &train, e, &mut n);
                a.on_epoch_end(&epoch_cx(&model, &cpu(), &train, Some(&holdout), e)).unwrap();
            }
            let batch = train.batch(&[0, 1, 2, 3], &cpu()).unwrap();
            step(&model, a.as_mut(), &trainable, &batch, n + 1, 3, 0.1);
            let state = a.state();
            if name == "gblend" {
                assert!(state["last_estimate"]["measure"]["epoch"] == 2, "the last estimate is kept: {state}");
            }
            // Through text, as a checkpoint stores it.
            let text = state.to_string();
            let (mut b, _) = build(name, &model, &Synth::new(m, 24, 5, 1.0, DType::F64));
            b.load_state(&serde_json::from_str(&text).unwrap()).unwrap();
            assert_eq!(b.state(), state, "{name} M={m}");
            assert_eq!(b.coefficients(), a.coefficients(), "{name} M={m}");
            // A state for another number of modalities is refused.
            let other = if m == 2 { 3 } else { 2 };
            let other_model = self::model(other, DType::F64);
            let (mut c, _) = build(name, &other_model, &Synth::new(other, 24, 1, 1.0, DType::F64));
            if name != "mmpareto" || !state.is_null() {
                assert!(c.load_state(&state).is_err(), "{name}: a state for M={m} loaded into M={other}");
            }
        }
    }
}

#[test]
fn every_method_rejects_one_modality_and_bad_settings() {
    for (name, err) in [
        ("gblend", GBlend::new(GBlendConfig::av_digits(), 1).unwrap_err().to_string()),
        ("pmr", Pmr::new(PmrConfig::av_digits(), 1).unwrap_err().to_string()),
        ("mmpareto", MmPareto::new(MmParetoConfig::official(), 1).unwrap_err().to_string()),
    ] {
        assert!(err.contains(&format!("method = `{name}`")) && err.contains("at least 2 modalities"), "{err}");
    }
    let e = GBlend::new(GBlendConfig { super_epoch: 0, ..GBlendConfig::paper() }, 2).unwrap_err().to_string();
    assert!(e.contains("gblend.super_epoch"), "{e}");
    let e = GBlend::new(GBlendConfig { weight_floor: 0.3, ..GBlendConfig::paper() }, 3).unwrap_err().to_string();
    assert!(e.contains("gblend.weight_floor"), "{e}");
    let e = Pmr::new(PmrConfig { alpha: 0.0, ..PmrConfig::official() }, 2).unwrap_err().to_string();
    assert!(e.contains("pmr.alpha"), "{e}");
    let e = Pmr::new(PmrConfig { momentum: 1.0, ..PmrConfig::official() }, 2).unwrap_err().to_string();
    assert!(e.contains("pmr.momentum"), "{e}");
    let e = MmPareto::new(MmParetoConfig { gamma: -1.0, ..MmParetoConfig::official() }, 2).unwrap_err().to_string();
    assert!(e.contains("mmpareto.gamma"), "{e}");

    // Config files: unknown keys and values are refused with the field named; missing keys take
    // the AV-Digits preset.
    let e = serde_json::from_str::<GBlendConfig>(r#"{"estimator": "magic"}"#).unwrap_err().to_string();
    assert!(e.contains("gblend.estimator") && e.contains("delta"), "{e}");
    let e = serde_json::from_str::<MmParetoConfig>(r#"{"rescale": "global"}"#).unwrap_err().to_string();
    assert!(e.contains("mmpareto.rescale") && e.contains("per-tensor"), "{e}");
    assert!(serde_json::from_str::<PmrConfig>(r#"{"alpha": 2.0, "beta": 1}"#).is_err());
    let p: PmrConfig = serde_json::from_str(r#"{"alpha": 2.0}"#).unwrap();
    assert_eq!(p, PmrConfig { alpha: 2.0, ..PmrConfig::av_digits() });
    for name in GBlendConfig::PRESETS {
        GBlendConfig::preset(name).unwrap().validate().unwrap();
    }
    for name in PmrConfig::PRESETS {
        PmrConfig::preset(name).unwrap().validate().unwrap();
    }
    for name in MmParetoConfig::PRESETS {
        MmParetoConfig::preset(name).unwrap().validate().unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// G-Blending
// ---------------------------------------------------------------------------------------------

fn assert_simplex(w: &[f64], floor: f64) {
    assert!(w.iter().all(|&x| x >= floor * (1.0 - 1e-12) && x > 0.0), "{w:?}");
    let s: f64 = w.iter().sum();
    assert!((s - 1.0).abs() < 1e-12, "sum {s}: {w:?}");
}

#[test]
fn gblend_weights_are_positive_and_sum_to_one() {
    let mut r = Lcg(99);
    let mut produced = 0;
    for case in 0..400 {
        let n = 3 + case % 3;
        // Include exact ties (ΔG = 0, ΔO = 0) and negative overfitting.
        let mut v = |scale: f64| if case % 7 == 0 { 1.0 } else { 1.0 + scale * r.next() };
        let before = GBlendMeasure {
            epoch: 1,
            train_loss: (0..n).map(|_| v(1.0)).collect(),
            holdout_loss: (0..n).map(|_| v(1.0)).collect(),
        };
        let after = GBlendMeasure {
            epoch: 2,
            train_loss: (0..n).map(|_| v(1.0)).collect(),
            holdout_loss: (0..n).map(|_| v(1.0)).collect(),
        };
        for est in [GBlendEstimator::Delta, GBlendEstimator::Final] {
            for floor in [1e-3, 0.05] {
                if let Some(w) = gblend_weights(est, Some(&before), &after, floor) {
                    assert_eq!(w.len(), n);
                    assert_simplex(&w, floor);
                    produced += 1;
                }
            }
        }
    }
    assert!(produced > 1000);
    // `delta` needs two measurements; all-zero raw weights keep the previous weights.
    let m = GBlendMeasure { epoch: 1, train_loss: vec![0.5; 3], holdout_loss: vec![0.7; 3] };
    assert!(gblend_weights(GBlendEstimator::Delta, None, &m, 1e-3).is_none());
    assert!(gblend_weights(GBlendEstimator::Delta, Some(&m), &m, 1e-3).is_none());
    assert!(gblend_weights(GBlendEstimator::Final, None, &m, 1e-3).is_some());
    // Formula check (paper): w ∝ |ΔG| / ΔO².
    let b = GBlendMeasure { epoch: 1, train_loss: vec![1.0, 1.0], holdout_loss: vec![1.2, 1.2] };
    let a = GBlendMeasure { epoch: 2, train_loss: vec![0.5, 0.4], holdout_loss: vec![1.0, 1.1] };
    let w = gblend_weights(GBlendEstimator::Delta, Some(&b), &a, 1e-9).unwrap();
    let raw = [0.2 / (0.3f64 * 0.3), 0.1 / (0.5f64 * 0.5)];
    let expect0 = raw[0] / (raw[0] + raw[1]);
    assert!((w[0] - expect0).abs() < 1e-6, "{w:?} vs {expect0}");
}

#[test]
fn gblend_weights_change_after_a_super_epoch_and_only_at_its_end() {
    for m in [2, 3] {
        let model = model(m, DType::F64);
        let train = Synth::new(m, 32, 1, 1.0, DType::F64);
        let holdout = Synth::new(m, 16, 50, 1.0, DType::F64);
        let dims = feature_dims(&model, &train);
        let uniform = vec![1.0 / (m as f64 + 1.0); m + 1];

        // delta, super-epoch 2: the untrained model is measured before training, epoch 1 does
        // nothing, epoch 2 estimates, epoch 3 is inside the next super-epoch, epoch 4 estimates.
        // A driver that skips `on_train_start` has its first measurement at epoch 2 and its
        // first estimate at epoch 4.
        let cfg = GBlendConfig { super_epoch: 2, estimator: GBlendEstimator::Delta, ..GBlendConfig::av_digits() };
        let start = model.param_groups().trainable();
        let start_values = snapshot(&start);
        for starts in [true, false] {
            for (v, x) in start.iter().zip(&start_values) {
                v.var.set(&Tensor::new(x.as_slice(), &cpu()).unwrap().reshape(v.var.shape()).unwrap()).unwrap();
            }
            let mut gb = GBlend::new(cfg.clone(), m).unwrap().with_feature_dims(dims.clone()).unwrap();
            let trainable = attach(&model, &mut gb);
            if starts {
                let cx = TrainStartCx { model: &model, device: &cpu(), train: &train, holdout: Some(&holdout) };
                gb.on_train_start(&cx).unwrap();
            }
            let mut n = 0;
            let mut weights_at = Vec::new();
            for e in 1..=4 {
                epoch(&model, &mut gb, &trainable, &train, e, &mut n);
                gb.on_epoch_end(&epoch_cx(&model, &cpu(), &train, Some(&holdout), e)).unwrap();
                weights_at.push((gb.weights().to_vec(), gb.last_estimate().map(|x| x.measure.epoch)));
            }
            assert_eq!(weights_at[0], (uniform.clone(), None), "no estimate before the first boundary");
            let first = if starts { 1 } else { 3 };
            if !starts {
                assert_eq!(weights_at[1], (uniform.clone(), Some(2)), "delta needs a second measurement");
                assert_eq!(weights_at[2], (uniform.clone(), Some(2)), "epoch 3 is inside the super-epoch");
            }
            for (e, (w, at)) in weights_at.iter().enumerate().skip(first) {
                assert_eq!(*at, Some(2 * e.div_ceil(2)), "epoch {}", e + 1);
                assert_ne!(w, &uniform, "M={m}: weights did not change after a super-epoch (epoch {})", e + 1);
                assert_simplex(w, cfg.weight_floor);
            }
            if starts {
                assert_eq!(weights_at[2].0, weights_at[1].0, "epoch 3 is inside the super-epoch");
                assert_ne!(weights_at[3].0, weights_at[1].0, "epoch 4 estimates again");
            }
            assert_eq!(gb.coefficients().unwrap(), weights_at[3].0);
        }

        // final: held-out losses that differ give different weights from the same model.
        let other_holdout = Synth::new(m, 16, 51, 0.0, DType::F64);
        let fin = GBlendConfig { super_epoch: 1, estimator: GBlendEstimator::Final, ..GBlendConfig::av_digits() };
        let mut weights = Vec::new();
        for h in [&holdout, &other_holdout] {
            let mut g = GBlend::new(fin.clone(), m).unwrap().with_feature_dims(dims.clone()).unwrap();
            g.attach(&model).unwrap();
            g.on_epoch_end(&epoch_cx(&model, &cpu(), &train, Some(h), 1)).unwrap();
            let est = g.last_estimate().unwrap();
            assert_eq!(est.measure.train_loss.len(), m + 1);
            assert_ne!(g.weights(), uniform.as_slice());
            assert_simplex(g.weights(), fin.weight_floor);
            weights.push((g.weights().to_vec(), est.measure.holdout_loss.clone()));
        }
        assert_ne!(weights[0].1, weights[1].1);
        assert_ne!(weights[0].0, weights[1].0, "M={m}: different held-out losses gave the same weights");
    }
}

#[test]
fn gblend_loss_is_the_weighted_sum_and_measures_use_mean_losses() {
    let m = 2;
    let model = model(m, DType::F64);
    let train = Synth::new(m, 20, 1, 1.0, DType::F64);
    let holdout = Synth::new(m, 9, 8, 1.0, DType::F64);
    let cfg = GBlendConfig { super_epoch: 1, estimator: GBlendEstimator::Final, ..GBlendConfig::av_digits() };
    let mut gb = GBlend::new(cfg, m).unwrap().with_feature_dims(feature_dims(&model, &train)).unwrap();
    gb.attach(&model).unwrap();
    gb.on_epoch_end(&epoch_cx(&model, &cpu(), &train, Some(&holdout), 1)).unwrap();
    let w = gb.weights().to_vec();
    let batch = all_batch(&holdout);
    let fwd = forward(&model, &gb, &batch, 1);
    let cx = StepCx { model: &model, batch: &batch, forward: &fwd, step: 1, epoch: 2 };
    let obj = gb.objective(&cx).unwrap();
    let mono = obj.mono.clone().unwrap();
    let expect =
        w[m] * ce(&fwd.full.logits, &batch.labels) + (0..m).map(|x| w[x] * ce(&mono[x], &batch.labels)).sum::<f64>();
    let got = obj.loss.to_scalar::<f64>().unwrap();
    assert!((got - expect).abs() < 1e-12, "{got} vs {expect}");
    // The held-out measurement is the per-sample mean over the whole split (eval mode; the
    // encoders have no dropout, so the train-mode pass above is the same function).
    let measured = &gb.last_estimate().unwrap().measure.holdout_loss;
    assert!((measured[m] - ce(&fwd.full.logits, &batch.labels)).abs() < 1e-12);
    assert!((measured[0] - ce(&mono[0], &batch.labels)).abs() < 1e-12);
}

#[test]
fn gblend_without_holdout_or_feature_sizes_is_an_error() {
    let model = model(2, DType::F64);
    let train = Synth::new(2, 16, 1, 1.0, DType::F64);
    let mut gb = GBlend::new(GBlendConfig::av_digits(), 2).unwrap();
    let e = gb.attach(&model).unwrap_err().to_string();
    assert!(e.contains("with_feature_dims"), "{e}");
    let mut gb = gb.with_feature_dims(feature_dims(&model, &train)).unwrap();
    gb.attach(&model).unwrap();
    assert!(GBlend::requires_holdout());
    // Refused before the first step when a trainer starts it, else at the first epoch's end.
    let cx = TrainStartCx { model: &model, device: &cpu(), train: &train, holdout: None };
    let e = gb.on_train_start(&cx).unwrap_err().to_string();
    assert!(e.contains("held-out split") && e.contains("gblend"), "{e}");
    // Already at the end of epoch 1, even though the first super-epoch is 2 epochs long.
    let e = gb.on_epoch_end(&epoch_cx(&model, &cpu(), &train, None, 1)).unwrap_err().to_string();
    assert!(e.contains("held-out split") && e.contains("gblend"), "{e}");
    let e = GBlend::new(GBlendConfig::av_digits(), 2).unwrap().with_feature_dims(vec![5]).unwrap_err().to_string();
    assert!(e.contains("feature sizes"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// MMPareto
// ---------------------------------------------------------------------------------------------

/// Per encoder: (⟨g, g_mm⟩, ⟨g, g_uni⟩) for the gradient `g` the optimizer consumes.
fn encoder_dots(model: &FusionModel, g: &GradStore, g_mm: &GradStore, g_uni: &[GradStore]) -> Vec<(f64, f64)> {
    let groups = model.param_groups();
    groups
        .per_modality
        .iter()
        .enumerate()
        .map(|(x, vars)| {
            let mut d = (0.0, 0.0);
            for v in vars {
                let t = v.var.as_tensor();
                let Some(gf) = g.get(t) else { continue };
                if let Some(a) = g_mm.get(t) {
                    d.0 += dot(gf, a);
                }
                if let Some(b) = g_uni[x].get(t) {
                    d.1 += dot(gf, b);
                }
            }
            d
        })
        .collect()
}

#[test]
fn mmpareto_combined_gradient_is_a_common_descent_direction_on_random_batches() {
    let mut conflicts = 0;
    let mut checked = 0;
    for m in [2, 3] {
        for rescale in [ParetoRescale::PerTensor, ParetoRescale::PerEncoder] {
            let model = model(m, DType::F64);
            // Label-free inputs make the uni-modal and multimodal gradients disagree often.
            let train = Synth::new(m, 64, 5, 0.3, DType::F64);
            let dims = feature_dims(&model, &train);
            let cfg = MmParetoConfig { rescale, ..MmParetoConfig::official() };
            let mut mp = MmPareto::new(cfg, m).unwrap().with_feature_dims(dims).unwrap();
            let trainable = attach(&model, &mut mp);
            let mut r = Lcg(17 + m as u64);
            for s in 1..=8 {
                let idx: Vec<usize> = (0..6).map(|_| ((r.next() + 0.5) * 64.0) as usize % 64).collect();
                let batch = train.batch(&idx, &cpu()).unwrap();
                let fwd = forward(&model, &mp, &batch, s);
                let cx = StepCx { model: &model, batch: &batch, forward: &fwd, step: s, epoch: 1 };
                let obj = mp.objective(&cx).unwrap();
                // The two gradients of every encoder, computed independently.
                let g_mm = candle_nn::loss::cross_entropy(&fwd.full.logits, &batch.labels).unwrap().backward().unwrap();
                let uni = mp.uni_logits(&cx).unwrap();
                let g_uni: Vec<GradStore> = uni
                    .iter()
                    .map(|l| candle_nn::loss::cross_entropy(l, &batch.labels).unwrap().backward().unwrap())
                    .collect();
                let g = mp.backward(&cx, &obj).unwrap();
                let stats = mp.last_stats().unwrap().clone();
                let dots = encoder_dots(&model, &g, &g_mm, &g_uni);
                for (x, (enc, &(d_mm, d_uni))) in stats.encoders.iter().zip(&dots).enumerate() {
                    let tol = 1e-12 * (1.0 + d_mm.abs() + d_uni.abs());
                    // The Pareto direction always agrees with both gradients.
                    assert!(enc.dot_mm >= -tol && enc.dot_uni >= -tol, "M={m} step {s} encoder {x}: {enc:?}");
                    assert!((0.0..=1.0).contains(&enc.k_mm) && (enc.k_mm + enc.k_uni - 1.0).abs() < 1e-15);
                    // The gradient the optimizer gets keeps it: always with one factor per encoder,
                    // and with the official per-tensor factors whenever the two do not conflict.
                    if rescale == ParetoRescale::PerEncoder || !enc.conflict {
                        assert!(
                            d_mm >= -tol && d_uni >= -tol,
                            "M={m} {rescale:?} step {s} encoder {x}: {d_mm} {d_uni}"
                        );
                        checked += 1;
                    }
                    conflicts += enc.conflict as usize;
                }
                // Shared variables keep the summed gradient (here only L_mm reaches the fused head).
                let head = model.param_groups().shared[0].var.as_tensor().clone();
                let diff = (g.get(&head).unwrap() - g_mm.get(&head).unwrap()).unwrap().abs().unwrap();
                assert!(diff.max_all().unwrap().to_scalar::<f64>().unwrap() < 1e-14);
                for v in &trainable {
                    if let Some(gv) = g.get(v.var.as_tensor()) {
                        assert!(gv.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap().is_finite());
                    }
                }
            }
        }
    }
    assert!(checked > 40, "{checked}");
    // The property is vacuous without conflicts: make sure the min-norm branch was exercised.
    assert!(conflicts > 0, "no conflicting encoder gradients in any batch");
}

#[test]
fn mmpareto_min_norm_combination_on_conflicting_gradients() {
    let dev = cpu();
    let mut r = Lcg(4242);
    let mut conflicts = 0;
    for case in 0..200 {
        let shapes: [&[usize]; 3] = [&[3, 4], &[4], &[2, 2]];
        let mut rand_t = |shape: &[usize], s: f64| {
            let n: usize = shape.iter().product();
            Tensor::from_vec((0..n).map(|_| s * r.next()).collect::<Vec<f64>>(), shape, &dev).unwrap()
        };
        let g_mm: Vec<Tensor> = shapes.iter().map(|s| rand_t(s, 1.0)).collect();
        // Mostly opposed to g_mm, with a random part.
        let g_uni: Vec<Tensor> = g_mm
            .iter()
            .zip(shapes)
            .map(|(a, s)| (a.affine(-0.5 - (case % 5) as f64 * 0.3, 0.0).unwrap() + rand_t(s, 0.8)).unwrap())
            .collect();
        let g_sum: Vec<Tensor> = g_mm.iter().zip(&g_uni).map(|(a, b)| (a + b).unwrap()).collect();
        for rescale in [ParetoRescale::PerTensor, ParetoRescale::PerEncoder] {
            let (out, st) = pareto_combine(&g_mm, &g_uni, &g_sum, 1.5, rescale).unwrap();
            let v11: f64 = g_mm.iter().map(|a| dot(a, a)).sum();
            let v12: f64 = g_mm.iter().zip(&g_uni).map(|(a, b)| dot(a, b)).sum();
            let v22: f64 = g_uni.iter().map(|b| dot(b, b)).sum();
            assert_eq!(st.conflict, v12 <= 0.0);
            if st.conflict {
                conflicts += 1;
                // Closed form of the 2-task min-norm point.
                let c = min_norm_2(v11, v12, v22);
                assert!((st.k_mm - c).abs() < 1e-15);
                // It is the minimum over the segment.
                let norm = |k: f64| k * k * v11 + 2.0 * k * (1.0 - k) * v12 + (1.0 - k) * (1.0 - k) * v22;
                for t in 0..=100 {
                    assert!(norm(c) <= norm(t as f64 / 100.0) + 1e-12);
                }
            } else {
                assert_eq!((st.k_mm, st.k_uni), (0.5, 0.5));
            }
            assert!(st.dot_mm >= -1e-12 && st.dot_uni >= -1e-12, "{st:?}");
            // The official magnitude rule, tensor by tensor or encoder-wide.
            let dirs: Vec<Tensor> = g_mm
                .iter()
                .zip(&g_uni)
                .map(|(a, b)| (a.affine(2.0 * st.k_mm, 0.0).unwrap() + b.affine(2.0 * st.k_uni, 0.0).unwrap()).unwrap())
                .collect();
            let factor = |s2: f64, d2: f64| (s2.sqrt() / d2.sqrt()).max(1.0);
            let (ss, dd): (f64, f64) =
                dirs.iter().zip(&g_sum).fold((0.0, 0.0), |(a, b), (d, s)| (a + dot(s, s), b + dot(d, d)));
            for ((o, d), s) in out.iter().zip(&dirs).zip(&g_sum) {
                let f = match rescale {
                    ParetoRescale::PerTensor => factor(dot(s, s), dot(d, d)),
                    ParetoRescale::PerEncoder => factor(ss, dd),
                };
                let want = d.affine(1.5 * f, 0.0).unwrap();
                let err = (o - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
                assert!(err < 1e-12, "{rescale:?}: {err}");
            }
            if rescale == ParetoRescale::PerEncoder {
                let d_mm: f64 = out.iter().zip(&g_mm).map(|(o, a)| dot(o, a)).sum();
                let d_uni: f64 = out.iter().zip(&g_uni).map(|(o, b)| dot(o, b)).sum();
                assert!(d_mm >= -1e-12 && d_uni >= -1e-12);
            }
        }
    }
    assert!(conflicts > 100);
    // The solver's edge cases (a zero gradient) and cosine > 0 → equal weights.
    assert_eq!(min_norm_2(0.0, 0.0, 1.0), 0.999);
    assert_eq!(min_norm_2(1.0, 0.0, 0.0), 0.001);
}

#[test]
fn mmpareto_needs_its_objective_before_backward() {
    let model = model(2, DType::F64);
    let train = Synth::new(2, 8, 1, 1.0, DType::F64);
    let mut mp =
        MmPareto::new(MmParetoConfig::official(), 2).unwrap().with_feature_dims(feature_dims(&model, &train)).unwrap();
    mp.attach(&model).unwrap();
    let batch = all_batch(&train);
    let fwd = forward(&model, &mp, &batch, 1);
    let cx = StepCx { model: &model, batch: &batch, forward: &fwd, step: 1, epoch: 1 };
    let obj = Objective { loss: fwd.full.logits.sum_all().unwrap(), output: fwd.full.logits.clone(), mono: None };
    assert!(mp.backward(&cx, &obj).is_err());
}

// ---------------------------------------------------------------------------------------------
// PMR
// ---------------------------------------------------------------------------------------------

fn protos_after_epoch(model: &FusionModel, train: &Synth, holdout: &Synth, cfg: &PmrConfig) -> Vec<Vec<f64>> {
    let m = model.modalities().len();
    let mut pmr = Pmr::new(cfg.clone(), m).unwrap().with_run_seed(9);
    pmr.on_epoch_end(&epoch_cx(model, &cpu(), train, Some(holdout), 1)).unwrap();
    pmr.prototypes().unwrap().values.clone()
}

#[test]
fn pmr_prototypes_come_from_training_data_only() {
    for m in [2, 3] {
        let model = model(m, DType::F64);
        let train = Synth::new(m, 30, 1, 1.0, DType::F64);
        let other_train = Synth::new(m, 30, 2, 1.0, DType::F64);
        let holdout = Synth::new(m, 12, 3, 1.0, DType::F64);
        let other_holdout = Synth::new(m, 20, 4, 0.0, DType::F64);
        for cfg in [PmrConfig { sample_ratio: 1.0, ..PmrConfig::av_digits() }, PmrConfig::av_digits()] {
            let base = protos_after_epoch(&model, &train, &holdout, &cfg);
            assert_eq!(base, protos_after_epoch(&model, &train, &other_holdout, &cfg), "M={m}: holdout changed them");
            assert_ne!(base, protos_after_epoch(&model, &other_train, &holdout, &cfg), "M={m}: train did not matter");
        }

        // One prototype per class per modality, of the encoder feature size; with the whole split
        // read, each is the class mean of the training features (evaluation mode).
        let cfg = PmrConfig { sample_ratio: 1.0, ..PmrConfig::av_digits() };
        let mut pmr = Pmr::new(cfg, m).unwrap();
        pmr.on_epoch_end(&epoch_cx(&model, &cpu(), &train, None, 1)).unwrap();
        let p = pmr.prototypes().unwrap();
        assert_eq!((p.classes, p.dims.as_slice(), p.values.len()), (CLASSES, &FEAT_DIMS[..m], m));
        assert_eq!(p.counts.iter().sum::<usize>(), train.len());
        let out = model.forward(&all_batch(&train).inputs, &ForwardOpts::eval(m)).unwrap();
        for (x, &dim) in FEAT_DIMS.iter().enumerate().take(m) {
            assert_eq!(p.values[x].len(), CLASSES * dim);
            let t = p.tensor(x, DType::F64, &cpu()).unwrap();
            assert_eq!(t.dims(), &[CLASSES, dim]);
            let rows = out.encoder_features[x].to_vec2::<f64>().unwrap();
            for c in 0..CLASSES {
                let members: Vec<&Vec<f64>> =
                    rows.iter().zip(&train.y).filter(|(_, y)| **y as usize == c).map(|(r, _)| r).collect();
                for j in 0..dim {
                    let mean = members.iter().map(|r| r[j]).sum::<f64>() / members.len() as f64;
                    assert!((p.values[x][c * dim + j] - mean).abs() < 1e-12);
                }
            }
        }

        // A tenth of the split (3 samples) is read, and more, batch by batch, until every class
        // has a prototype.
        let mut pmr = Pmr::new(PmrConfig { eval_batch_size: 2, ..PmrConfig::av_digits() }, m).unwrap();
        pmr.prime(&model, &train, &cpu()).unwrap();
        let p = pmr.prototypes().unwrap();
        assert!(p.counts.iter().all(|&c| c > 0), "{:?}", p.counts);
        assert!(p.counts.iter().sum::<usize>() < train.len());
        assert_eq!(p.epoch, 0);
    }
}

#[test]
fn pmr_momentum_mixes_old_and_new_prototypes() {
    let m = 2;
    let model = model(m, DType::F64);
    let a = Synth::new(m, 30, 1, 1.0, DType::F64);
    let b = Synth::new(m, 30, 2, 1.0, DType::F64);
    let cfg = PmrConfig { sample_ratio: 1.0, momentum: 0.25, ..PmrConfig::av_digits() };
    let pa = protos_after_epoch(&model, &a, &a, &cfg);
    let pb = protos_after_epoch(&model, &b, &b, &cfg);
    let mut pmr = Pmr::new(cfg, m).unwrap().with_run_seed(9);
    // As the official code: nothing mixed in before training or after the first epoch.
    pmr.prime(&model, &b, &cpu()).unwrap();
    pmr.on_epoch_end(&epoch_cx(&model, &cpu(), &a, None, 1)).unwrap();
    let first = &pmr.prototypes().unwrap().values;
    for x in 0..m {
        for i in 0..first[x].len() {
            assert!((first[x][i] - pa[x][i]).abs() < 1e-12);
        }
    }
    pmr.on_epoch_end(&epoch_cx(&model, &cpu(), &b, None, 2)).unwrap();
    let mixed = &pmr.prototypes().unwrap().values;
    for x in 0..m {
        for i in 0..mixed[x].len() {
            let want = 0.75 * pb[x][i] + 0.25 * pa[x][i];
            assert!((mixed[x][i] - want).abs() < 1e-12);
        }
    }
}

#[test]
fn pmr_adds_the_prototype_loss_of_the_modalities_behind_the_leader() {
    for m in [2, 3] {
        let model = model(m, DType::F64);
        let train = Synth::new(m, 30, 1, 1.0, DType::F64);
        let cfg = PmrConfig { alpha: 1.7, ..PmrConfig::av_digits() };
        let mut pmr = Pmr::new(cfg.clone(), m).unwrap();
        let batch = train.batch(&(0..12).collect::<Vec<_>>(), &cpu()).unwrap();
        let fwd = forward(&model, &pmr, &batch, 1);
        let cx = StepCx { model: &model, batch: &batch, forward: &fwd, step: 1, epoch: 1 };
        let base = ce(&fwd.full.logits, &batch.labels);

        // No prototypes yet: joint training.
        let obj = pmr.objective(&cx).unwrap();
        assert!((obj.loss.to_scalar::<f64>().unwrap() - base).abs() < 1e-15);
        assert_eq!(pmr.coefficients().unwrap(), vec![0.0; m]);

        pmr.prime(&model, &train, &cpu()).unwrap();
        let obj = pmr.objective(&cx).unwrap();
        let st = pmr.last_stats().unwrap().clone();
        let lead = st.scores.iter().copied().fold(f64::MIN, f64::max);
        let mut expect = base;
        for x in 0..m {
            let c = pmr.prototypes().unwrap().tensor(x, DType::F64, &cpu()).unwrap();
            let logits = prototype_logits(&fwd.full.encoder_features[x], &c).unwrap();
            let probs = candle_nn::ops::softmax(&logits, 1).unwrap().to_vec2::<f64>().unwrap();
            let labels = batch.labels.to_vec1::<u32>().unwrap();
            let s: f64 = probs.iter().zip(&labels).map(|(p, &y)| p[y as usize]).sum();
            assert!((s - st.scores[x]).abs() < 1e-12);
            let beta = if st.scores[x] < lead { 1.7 } else { 0.0 };
            assert_eq!(st.beta[x], beta);
            expect += beta * ce(&logits, &batch.labels);
        }
        assert_eq!(st.beta.iter().filter(|&&b| b == 0.0).count(), 1, "M={m}: only the leader is left alone");
        assert!((obj.loss.to_scalar::<f64>().unwrap() - expect).abs() < 1e-12);

        // Outside the window: joint training again.
        let mut late = Pmr::new(PmrConfig { window_end: Some(3), ..cfg }, m).unwrap();
        late.prime(&model, &train, &cpu()).unwrap();
        let cx5 = StepCx { epoch: 5, ..cx };
        let obj = late.objective(&cx5).unwrap();
        assert!((obj.loss.to_scalar::<f64>().unwrap() - base).abs() < 1e-15);
    }
    // M = 2 is the official rule: ρ = s_a/s_v > 1 adds alpha·CE(P_v).
    let d = Device::Cpu;
    let f = Tensor::new(&[[0.0f64, 0.0], [1.0, 1.0]], &d).unwrap();
    let c = Tensor::new(&[[0.0f64, 0.0], [1.0, 1.0]], &d).unwrap();
    let p = prototype_logits(&f, &c).unwrap().to_vec2::<f64>().unwrap();
    assert!(p[0][0] == 0.0 && p[1][1] == 0.0 && p[0][1] == -(2f64.sqrt()) && p[1][0] == -(2f64.sqrt()));
}

#[test]
fn a_feature_on_its_prototype_has_distance_zero_and_a_zero_gradient() {
    // The official distance exactly (ReLU features of zeros sit on an all-zero prototype), with
    // a finite gradient where the official sqrt backward gives NaN.
    let d = Device::Cpu;
    let f =
        candle_core::Var::from_tensor(&Tensor::new(&[[0.0f64, 0.0], [3.0, 4.0], [1e-9, 0.0]], &d).unwrap()).unwrap();
    let c = Tensor::new(&[[0.0f64, 0.0], [3.0, 0.0]], &d).unwrap();
    let p = prototype_logits(f.as_tensor(), &c).unwrap();
    assert_eq!(p.to_vec2::<f64>().unwrap(), [[0.0, -3.0], [-5.0, -4.0], [-1e-9, -(9.0f64 - 6e-9 + 1e-18).sqrt()]]);
    let grads = p.sum_all().unwrap().backward().unwrap();
    let g = grads.get(f.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
    assert!(g.iter().flatten().all(|v| v.is_finite()), "{g:?}");
    // Row 0: only the distance to the second prototype, -(h - c)/‖h - c‖ = (1, 0).
    assert_eq!(g[0], [1.0, 0.0]);
}
