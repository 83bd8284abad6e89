//! Kind `method_steps` (tests/fixtures/golden/METHODS.md): any registered method, replayed
//! through the real [`crate::Trainer`] on the format's tiny network, against its official code.
//!
//! The case names the method (`method`, as `--method` spells it) and its settings
//! (`method_config`, its `config.toml` section); the replay trains the stored training split in
//! stored order and, after every step and epoch, compares the parameters, the loss and the
//! method's own numbers (`coefficients` with [`Modulator::coefficients`], any other name with the
//! field of that name in [`Modulator::state`]).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;

use agm_core::{BatchSource, MultimodalBatch, MultimodalModel, NamedVar};
use agm_fusion::{EncoderLayer, EncoderSpec, FusionModel, LateConcatConfig};
use agm_modulation::{
    registry, BuildCx, EpochAction, EpochCx, ForwardPlan, MethodSettings, Modulator, Objective, StepCx, TrainStartCx,
};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::report::{CaseReport, Checker};
use super::ParityError;
use crate::optim::{AdamConfig, OptimizerConfig, ScheduleConfig, SgdConfig};
use crate::{Callback, Flow, StepSummary, Trainer, TrainerOptions};

#[derive(Debug, Deserialize)]
struct Case {
    dtype: String,
    method: String,
    #[serde(default)]
    method_config: Map<String, Value>,
    modalities: Vec<String>,
    sizes: Sizes,
    optimizer: OptimizerSpec,
    parameters: Vec<Parameter>,
    steps: Vec<StepSpec>,
    #[serde(default)]
    epochs: Vec<EpochSpec>,
    #[serde(default)]
    seed: u64,
}

#[derive(Debug, Deserialize)]
struct Sizes {
    batch: usize,
    classes: usize,
    hidden: usize,
    input_dims: Vec<usize>,
    epochs: usize,
    steps_per_epoch: usize,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum OptimizerSpec {
    Sgd {
        lr: f64,
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        weight_decay: f64,
    },
    Adam {
        lr: f64,
        #[serde(default = "adam_betas")]
        betas: [f64; 2],
        #[serde(default = "adam_eps")]
        eps: f64,
        #[serde(default)]
        weight_decay: f64,
    },
}

fn adam_betas() -> [f64; 2] {
    [0.9, 0.999]
}

fn adam_eps() -> f64 {
    1e-8
}

#[derive(Debug, Deserialize)]
struct Parameter {
    name: String,
    shape: Vec<usize>,
}

#[derive(Debug, Deserialize)]
struct StepSpec {
    step: usize,
    loss: f64,
    #[serde(default)]
    values: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct EpochSpec {
    epoch: usize,
    #[serde(default)]
    values: Map<String, Value>,
}

/// What the replay saw after each step and each epoch end.
#[derive(Default)]
struct Log {
    /// After each step: the method's coefficients and state.
    steps: Vec<(Option<Vec<f64>>, Value)>,
    /// After each epoch's end hook: the method's state.
    epochs: Vec<Value>,
    /// Each step's objective: the value of the total loss the step differentiates (the fused
    /// cross-entropy plus whatever terms the method adds).
    objective_losses: Vec<f64>,
}

/// Delegates every hook to the method and records its state after each step and epoch end.
struct Recorder<'a> {
    inner: Box<dyn Modulator + 'a>,
    log: Rc<RefCell<Log>>,
}

impl Modulator for Recorder<'_> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn attach(&mut self, model: &dyn MultimodalModel) -> candle_core::Result<Vec<NamedVar>> {
        self.inner.attach(model)
    }
    fn forward_plan(&self) -> ForwardPlan {
        self.inner.forward_plan()
    }
    fn objective(&mut self, cx: &StepCx<'_>) -> candle_core::Result<Objective> {
        let objective = self.inner.objective(cx)?;
        let loss = objective.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        self.log.borrow_mut().objective_losses.push(loss);
        Ok(objective)
    }
    fn backward(&mut self, cx: &StepCx<'_>, objective: &Objective) -> candle_core::Result<GradStore> {
        self.inner.backward(cx, objective)
    }
    fn after_backward(&mut self, cx: &StepCx<'_>, grads: &mut GradStore) -> candle_core::Result<()> {
        self.inner.after_backward(cx, grads)?;
        // The last hook of a step: the optimizer step that follows leaves the method alone.
        self.log.borrow_mut().steps.push((self.inner.coefficients(), self.inner.state()));
        Ok(())
    }
    fn clip_rule(&self) -> Option<agm_modulation::ClipRule> {
        self.inner.clip_rule()
    }
    fn on_train_start(&mut self, cx: &TrainStartCx<'_>) -> candle_core::Result<()> {
        self.inner.on_train_start(cx)
    }
    fn on_epoch_start(&mut self, epoch: usize, steps: usize, first_step: usize) -> candle_core::Result<()> {
        self.inner.on_epoch_start(epoch, steps, first_step)
    }
    fn on_epoch_end(&mut self, cx: &EpochCx<'_>) -> candle_core::Result<Vec<EpochAction>> {
        let actions = self.inner.on_epoch_end(cx)?;
        self.log.borrow_mut().epochs.push(self.inner.state());
        Ok(actions)
    }
    fn coefficients(&self) -> Option<Vec<f64>> {
        self.inner.coefficients()
    }
    fn predict(
        &self,
        model: &dyn MultimodalModel,
        pass: &agm_core::ModelOutput,
    ) -> candle_core::Result<Option<Tensor>> {
        self.inner.predict(model, pass)
    }
    fn state(&self) -> Value {
        self.inner.state()
    }
    fn load_state(&mut self, state: &Value) -> candle_core::Result<()> {
        self.inner.load_state(state)
    }
    fn on_restored(&mut self, tag: &str, state: &Value) -> candle_core::Result<()> {
        self.inner.on_restored(tag, state)
    }
}

/// Records every parameter after each step.
struct ParamsAfter<'a> {
    vars: &'a [NamedVar],
    after: Vec<BTreeMap<String, Tensor>>,
}

impl Callback for ParamsAfter<'_> {
    fn on_step(&mut self, _: &StepSummary) -> Flow {
        // The optimizer updates variables in place: keep a copy.
        let copies = self.vars.iter().filter_map(|v| Some((v.name.clone(), v.var.as_tensor().copy().ok()?)));
        self.after.push(copies.collect());
        Flow::Continue
    }
}

/// A stored split, batched as it is stored (float64 inputs, as the network).
struct CaseSplit {
    inputs: Vec<Tensor>,
    labels: Tensor,
}

impl BatchSource for CaseSplit {
    fn len(&self) -> usize {
        self.labels.dims()[0]
    }

    fn batch(&self, indices: &[usize], device: &Device) -> candle_core::Result<MultimodalBatch> {
        let idx = Tensor::from_vec(indices.iter().map(|&i| i as u32).collect::<Vec<_>>(), indices.len(), device)?;
        let inputs = self.inputs.iter().map(|t| t.index_select(&idx, 0)).collect::<candle_core::Result<_>>()?;
        MultimodalBatch::new(inputs, self.labels.index_select(&idx, 0)?)
    }
}

/// The stored split `name` (`train`, `validation`), if the case has it.
fn split(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    name: &str,
    case: &Case,
) -> Result<Option<CaseSplit>, ParityError> {
    let invalid = |m: String| ParityError::invalid(path, m);
    let Some(labels) = tensors.get(&format!("{name}/label")) else { return Ok(None) };
    let raw: Vec<i64> =
        labels.to_dtype(DType::I64).and_then(|t| t.to_vec1()).map_err(|e| invalid(format!("`{name}/label`: {e}")))?;
    if let Some(bad) = raw.iter().find(|&&y| y < 0 || y as usize >= case.sizes.classes) {
        return Err(invalid(format!("`{name}/label` holds label {bad}, outside [0, {})", case.sizes.classes)));
    }
    let n = raw.len();
    let labels = Tensor::from_vec(raw.iter().map(|&y| y as u32).collect::<Vec<_>>(), n, &Device::Cpu)
        .map_err(|e| invalid(format!("`{name}/label`: {e}")))?;
    let mut inputs = Vec::new();
    for (m, &d) in case.modalities.iter().zip(&case.sizes.input_dims) {
        let key = format!("{name}/input/{m}");
        let t = tensors.get(&key).ok_or_else(|| invalid(format!("missing tensor `{key}`")))?;
        if t.dims() != [n, d] {
            return Err(invalid(format!("`{key}` has shape {:?}, expected [{n}, {d}]", t.dims())));
        }
        inputs.push(t.to_dtype(DType::F64).map_err(|e| invalid(format!("`{key}`: {e}")))?);
    }
    Ok(Some(CaseSplit { inputs, labels }))
}

/// The network of the format: per modality `Linear(d, H)` + ReLU, concat, `Linear(H·M, C)`.
fn build_model(path: &Path, case: &Case) -> Result<FusionModel, ParityError> {
    if !(1..=agm_core::Subset::MAX_MODALITIES).contains(&case.modalities.len()) {
        let max = agm_core::Subset::MAX_MODALITIES;
        return Err(ParityError::invalid(path, format!("modalities: a case has 1 to {max} modalities")));
    }
    if case.sizes.input_dims.len() != case.modalities.len() {
        return Err(ParityError::invalid(path, "sizes.input_dims needs one size per modality"));
    }
    let encoders = case
        .modalities
        .iter()
        .zip(&case.sizes.input_dims)
        .map(|(m, &d)| EncoderSpec {
            modality: m.clone(),
            layers: vec![EncoderLayer::Linear { in_dim: d, out_dim: case.sizes.hidden }, EncoderLayer::Relu],
        })
        .collect();
    let cfg = LateConcatConfig { encoders, num_classes: case.sizes.classes, prefix: "net".into() };
    FusionModel::late_concat(&cfg, 0, DType::F64, &Device::Cpu)
        .map_err(|e| ParityError::invalid(path, format!("cannot build the network: {e}")))
}

/// The method's settings from `method_config`, over its AV-Digits preset.
fn settings(path: &Path, case: &Case) -> Result<MethodSettings, ParityError> {
    let invalid = |m: String| ParityError::invalid(path, m);
    let mut settings = MethodSettings::av_digits();
    let table = toml::Table::try_from(&case.method_config)
        .map_err(|e| invalid(format!("method_config is not a table of settings: {e}")))?;
    let section = agm_modulation::method::section_of(&case.method);
    settings
        .set_section(&section, table)
        .map_err(|(key, message)| invalid(format!("method_config: `{key}`: {message}")))?;
    Ok(settings)
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "inf" => Some(f64::INFINITY),
            "-inf" => Some(f64::NEG_INFINITY),
            "NaN" => Some(f64::NAN),
            _ => None,
        },
        _ => None,
    }
}

/// Compares expected `values` with what the method reported, under `at` (`steps[3]`).
fn compare_values(
    checker: &mut Checker,
    at: &str,
    expected: &Map<String, Value>,
    coefficients: Option<&[f64]>,
    state: &Value,
) {
    for (name, want) in expected {
        let got = if name == "coefficients" {
            coefficients.map(|c| Value::from(c.to_vec()))
        } else {
            state.get(name).cloned()
        };
        let key = format!("{at}.values.{name}");
        match (want, &got) {
            (Value::Array(w), Some(Value::Array(g))) if w.len() == g.len() => {
                for (i, (w, g)) in w.iter().zip(g).enumerate() {
                    compare_one(checker, name, &format!("{key}[{i}]"), w, Some(g));
                }
            }
            (Value::Array(w), _) => {
                checker.missing(&key, format!("expected {} values, the method reported {got:?}", w.len()))
            }
            _ => compare_one(checker, name, &key, want, got.as_ref()),
        }
    }
}

fn compare_one(checker: &mut Checker, field: &str, key: &str, want: &Value, got: Option<&Value>) {
    match (want, as_f64(want)) {
        (Value::Bool(w), _) => checker.flag(field, key, *w, got.and_then(Value::as_bool)),
        (_, Some(w)) => checker.float(field, key, w, got.and_then(as_f64)),
        _ => checker.exact(field, key, want, got),
    }
}

pub(super) fn run(
    case_path: &Path,
    tensors_path: &Path,
    json: &Value,
    tensors: &HashMap<String, Tensor>,
) -> Result<CaseReport, ParityError> {
    let case: Case = serde_json::from_value(json.clone())
        .map_err(|e| ParityError::invalid(case_path, format!("not a valid `method_steps` case: {e}")))?;
    let invalid = |m: String| ParityError::invalid(case_path, m);
    if case.dtype != "float64" {
        return Err(invalid(format!("dtype `{}` is not supported (only float64)", case.dtype)));
    }
    registry::parse(&case.method).map_err(|e| invalid(format!("method: {e}")))?;
    let name = super::case_name(json, case_path);
    let report = CaseReport {
        case: name.clone(),
        kind: "method_steps".into(),
        method: Some(case.method.clone()),
        ..CaseReport::default()
    };
    let replay = |step: usize| {
        let case = name.clone();
        move |source: candle_core::Error| ParityError::Replay { case, step, source }
    };

    let model = build_model(case_path, &case)?;
    let train =
        split(tensors_path, tensors, "train", &case)?.ok_or_else(|| invalid("missing tensor `train/label`".into()))?;
    if train.len() != case.sizes.batch * case.sizes.steps_per_epoch {
        return Err(invalid(format!(
            "the training split has {} rows, not batch × steps_per_epoch = {}",
            train.len(),
            case.sizes.batch * case.sizes.steps_per_epoch
        )));
    }
    let validation = split(tensors_path, tensors, "validation", &case)?;
    // A held-out split for methods that measure generalisation (`EpochCx::holdout`).
    let holdout = split(tensors_path, tensors, "holdout", &case)?;
    let settings = settings(case_path, &case)?;
    let probe = train.batch(&[0], &Device::Cpu).map_err(replay(0))?;
    let dims = agm_modulation::encoder_feature_dims(&model, &probe).map_err(replay(0))?;
    let cx = BuildCx::new(&model, case.seed).with_feature_dims(&dims).with_holdout(holdout.is_some());
    let modulator =
        registry::build(&case.method, &settings, &cx).map_err(|e| invalid(format!("method_config: {e}")))?;
    let log = Rc::new(RefCell::new(Log::default()));
    let recorder = Box::new(Recorder { inner: modulator, log: log.clone() });

    let optimizer = match case.optimizer {
        OptimizerSpec::Sgd { lr, momentum, weight_decay } => {
            OptimizerConfig::Sgd(SgdConfig { lr, momentum, weight_decay, dampening: 0.0, nesterov: false })
        }
        OptimizerSpec::Adam { lr, betas, eps, weight_decay } => {
            OptimizerConfig::Adam(AdamConfig { lr, beta1: betas[0], beta2: betas[1], eps, weight_decay })
        }
    };
    let opts = TrainerOptions {
        epochs: case.sizes.epochs,
        batch_size: case.sizes.batch,
        eval_batch_size: 256,
        seed: case.seed,
        base_lr: optimizer.lr(),
        schedule: ScheduleConfig::Constant {},
        checkpoint_every_steps: 0,
        shapley: agm_core::ShapleyMode::Faithful,
        shuffle: false,
        loss_reduction: Default::default(),
    };
    let mut trainer = Trainer::new(&model, recorder, |g| Ok(optimizer.build(g)?), opts, &Device::Cpu)
        .map_err(|e| invalid(format!("cannot set up the trainer: {e}")))?;
    if let Some(h) = &holdout {
        trainer = trainer.with_holdout(h);
    }

    // Every variable, the method's included, starts from the case.
    let mut vars = model.param_groups().trainable();
    vars.extend(trainer.method_vars().iter().cloned());
    let listed: Vec<&str> = case.parameters.iter().map(|p| p.name.as_str()).collect();
    for v in &vars {
        if !listed.contains(&v.name.as_str()) {
            return Err(invalid(format!("parameters: the replay has a variable `{}` the case does not list", v.name)));
        }
    }
    for p in &case.parameters {
        let var = vars.iter().find(|v| v.name == p.name).ok_or_else(|| {
            invalid(format!("parameters: `{}` is neither a network variable nor one the method adds", p.name))
        })?;
        let key = format!("init/params/{}", p.name);
        let init =
            tensors.get(&key).ok_or_else(|| ParityError::invalid(tensors_path, format!("missing tensor `{key}`")))?;
        if init.dims() != p.shape.as_slice() || var.var.dims() != p.shape.as_slice() {
            return Err(invalid(format!(
                "`{}`: the case says {:?}, the tensor is {:?}, the replay's variable {:?}",
                p.name,
                p.shape,
                init.dims(),
                var.var.dims()
            )));
        }
        var.var.set(&init.to_dtype(DType::F64).map_err(replay(0))?).map_err(replay(0))?;
    }

    let mut params = ParamsAfter { vars: &vars, after: Vec::new() };
    let validation_split: &dyn BatchSource = match &validation {
        Some(v) => v,
        None => &train,
    };
    trainer.fit(&train, validation_split, &mut params).map_err(|e| match e {
        crate::TrainError::Tensor(source) => {
            ParityError::Replay { case: report.case.clone(), step: params.after.len() + 1, source }
        }
        other => invalid(format!("the replay failed: {other}")),
    })?;

    let mut checker = Checker::new(report, tensors).map_err(replay(0))?;
    let log = log.borrow();
    for (k, spec) in case.steps.iter().enumerate() {
        let at = format!("steps[{k}]");
        if spec.step != k + 1 {
            checker.missing(&at, format!("step {} out of order (expected {})", spec.step, k + 1));
            continue;
        }
        // `loss` is the total loss the step differentiates (METHODS.md), not only the fused
        // cross-entropy the trainer reports.
        checker.float("loss", &format!("{at}.loss"), spec.loss, log.objective_losses.get(k).copied());
        match log.steps.get(k) {
            Some((coefficients, state)) => {
                compare_values(&mut checker, &at, &spec.values, coefficients.as_deref(), state)
            }
            None => checker.missing(&at, "the replay ran fewer steps"),
        }
        for p in &case.parameters {
            let key = format!("step{}/params_after/{}", spec.step, p.name);
            if let Some(want) = tensors.get(&key) {
                let got = params.after.get(k).and_then(|m| m.get(&p.name));
                checker.tensor(&key, want, got).map_err(replay(spec.step))?;
            }
        }
    }
    for (e, spec) in case.epochs.iter().enumerate() {
        let at = format!("epochs[{e}]");
        match log.epochs.get(spec.epoch.wrapping_sub(1)) {
            Some(state) => compare_values(&mut checker, &at, &spec.values, None, state),
            None => checker.missing(&at, format!("the replay ended before epoch {}", spec.epoch)),
        }
    }
    let mut report = checker.report;
    for key in tensors.keys() {
        let used = key.starts_with("init/params/")
            || key.starts_with("train/")
            || key.starts_with("validation/")
            || key.starts_with("holdout/")
            || (key.starts_with("step") && key.contains("/params_after/"));
        if !used {
            report.note(key.clone());
        }
    }
    Ok(report)
}
