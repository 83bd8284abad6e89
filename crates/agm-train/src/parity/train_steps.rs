//! Kind `train_steps` (FORMAT.md §1): replays every step through [`crate::train_step`].
//!
//! Method `AGM` runs [`Agm`]; method `OGM-GE` runs [`OgmGe`] in `reference` mode with its noise
//! off (the fixtures disable it, FORMAT.md §1.8), and the AGM quantities the official code
//! computes for every method (scores, ratios, coefficients, running scores) come from an AGM
//! bookkeeping fed with the step's mono-modal outputs that never installs its coefficients.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use agm_core::{ForwardOpts, MultimodalBatch, MultimodalModel, NamedVar, ShapleyMode, Subset};
use agm_fusion::{EncoderLayer, EncoderSpec, FusionModel, LateConcatConfig};
use agm_modulation::{
    ogm_noise_std, shapley, Agm, AgmConfig, AgmStepStats, ClipRule, Modulator, Objective, OgmGe, OgmGeConfig, OgmMode,
    OgmStepStats, StepForward, UniModal, OGM_NOISE_STD_EPS,
};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use serde_json::{Map, Value};

use super::case::{TrainStepsCase, USED_FIELDS};
use super::report::{CaseReport, Checker};
use super::ParityError;
use crate::optim::{ConstantLr, LrSchedule, Optimizer, ParamGroup, Sgd, SgdConfig, StepLr};
use crate::step::{train_step, ClipReport, GradStage, StepObserver, StepOutcome, StepParts};

/// The clipping epsilon of the training step (`max_norm / (N + 1e-6)`).
const CLIP_EPS: f64 = 1e-6;
/// BatchNorm settings of FORMAT.md §1.3 when the network description does not spell them out.
const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

/// Per-modality scalar fields of `steps[k]` (FORMAT.md §1.4).
const PER_MODALITY_FLOATS: &[&str] =
    &["scores", "running_score_before", "running_score_after", "ratio", "opt_ratio", "coeff", "hook_scale_in_effect"];

fn stage_name(stage: GradStage) -> &'static str {
    match stage {
        GradStage::Backward => "backward",
        GradStage::Modulated => "modulated",
        GradStage::Final => "final",
    }
}

/// Captures, under the key a step's tensors have below `stepK/`, what the step computed.
struct Capture<'a> {
    model: &'a dyn MultimodalModel,
    inputs: &'a [Tensor],
    params: &'a [NamedVar],
    tensors: BTreeMap<String, Tensor>,
}

impl StepObserver for Capture<'_> {
    fn forward(&mut self, forward: &StepForward, objective: &Objective) -> candle_core::Result<()> {
        let set = self.model.modalities();
        let m = set.len();
        let mut put = |k: String, t: &Tensor| {
            self.tensors.insert(k, t.detach());
        };
        put(format!("pass/keep_{}", set.letters(Subset::full(m))), &forward.full.logits);
        for (s, t) in &forward.masked {
            put(format!("pass/keep_{}", set.letters(*s)), t);
        }
        put("feature".into(), &forward.full.fused_feature);
        put("out".into(), &objective.output);
        // f(∅): evaluation mode, after the full pass updated the BatchNorm statistics and before
        // the optimizer step, as the reference computes it (it never enters the loss).
        let none_key = format!("pass/keep_{}", set.letters(Subset::empty()));
        let none = match self.tensors.get(&none_key) {
            Some(t) => t.clone(),
            None => {
                let opts = ForwardOpts::eval(m).with_present(Subset::empty());
                let t = self.model.forward(self.inputs, &opts)?.logits.detach();
                self.tensors.insert(none_key, t.clone());
                t
            }
        };
        // A method that leaves the objective alone (OGM-GE) reports no mono-modal outputs; they
        // are then those of the passes, as the reference computes them for every method.
        let mono = match &objective.mono {
            Some(mono) => mono.clone(),
            None if !forward.masked.is_empty() => shapley::mono_outputs(m, |s| forward.logits(s, m))?,
            None => return Ok(()),
        };
        for (name, mx) in set.names().iter().zip(&mono) {
            self.tensors.insert(format!("m/{name}"), mx.detach());
        }
        for (name, mc) in set.names().iter().zip(shapley::exact_shapley(&mono, &none)?) {
            self.tensors.insert(format!("m_mc/{name}"), mc.detach());
        }
        Ok(())
    }

    fn grads(&mut self, stage: GradStage, grads: &GradStore) -> candle_core::Result<()> {
        let stage = stage_name(stage);
        for p in self.params {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                self.tensors.insert(format!("grad_{stage}/{}", p.name), g.detach());
            }
        }
        Ok(())
    }
}

/// Whether a key below `stepK/` is one the runner compares (FORMAT.md §7).
fn is_compared(rest: &str, grad_stages: &[String]) -> bool {
    match rest.split_once('/') {
        None => matches!(rest, "feature" | "out"),
        Some((group, name)) => {
            !name.is_empty()
                && match group {
                    "pass" | "m" | "m_mc" | "params_after" | "momentum_after" | "buffers_after" => true,
                    g => g.strip_prefix("grad_").is_some_and(|s| grad_stages.iter().any(|x| x == s)),
                }
        }
    }
}

pub(super) fn run(
    case_path: &Path,
    tensors_path: &Path,
    json: &Value,
    tensors: &HashMap<String, Tensor>,
) -> Result<CaseReport, ParityError> {
    let case: TrainStepsCase = serde_json::from_value(json.clone())
        .map_err(|e| ParityError::invalid(case_path, format!("not a valid `train_steps` case: {e}")))?;
    let invalid = |m: String| ParityError::invalid(case_path, m);
    let bad_tensor = |m: String| ParityError::invalid(tensors_path, m);
    if case.dtype != "float64" {
        return Err(invalid(format!("dtype `{}` is not supported (only float64)", case.dtype)));
    }
    let m = case.modalities.len();
    if !(2..=Subset::MAX_MODALITIES).contains(&m) {
        return Err(invalid(format!(
            "modalities: {m} names; a `train_steps` case has 2 to {} modalities",
            Subset::MAX_MODALITIES
        )));
    }
    for s in &case.grad_stages {
        if !matches!(s.as_str(), "backward" | "modulated" | "final") {
            return Err(invalid(format!("grad_stages: unknown stage `{s}` (allowed: backward, modulated, final)")));
        }
    }
    let name = super::case_name(json, case_path);
    let mut report = CaseReport {
        case: name.clone(),
        kind: "train_steps".into(),
        method: Some(case.method.clone()),
        ..CaseReport::default()
    };
    if let Some(obj) = json.as_object() {
        for k in obj.keys().filter(|k| !USED_FIELDS.contains(&k.as_str())) {
            report.note(format!("case.json: {k}"));
        }
    }

    // The network, its variables and their initial values.
    let model = build_model(case_path, &case)?;
    check_variables(case_path, &case, &model)?;
    let mut init = HashMap::new();
    for (key, t) in tensors {
        let var = key.strip_prefix("init/params/").or_else(|| key.strip_prefix("init/buffers/"));
        match var {
            Some(v) => {
                let t = t.to_dtype(DType::F64).map_err(|e| bad_tensor(format!("tensor `{key}`: {e}")))?;
                init.insert(v.to_string(), t);
            }
            None if !key.starts_with("step") => report.note(format!("tensors: {key}")),
            None => {}
        }
    }
    model.load(&init).map_err(|e| bad_tensor(format!("initial values (init/params, init/buffers): {e}")))?;
    let groups = model.param_groups();
    let trainable = groups.trainable();
    let buffers = groups.buffers.clone();

    // The modulator, optimizer and schedule.
    let h = &case.hyper;
    let clip = match &h.clip {
        None => None,
        Some(c) => {
            if let Some(eps) = c.eps {
                if eps != CLIP_EPS {
                    return Err(invalid(format!("hyper.clip.eps = {eps} is not supported (the step uses {CLIP_EPS})")));
                }
            }
            Some(ClipRule::outside_band(c.threshold_on_head_weight_grad, c.max_norm))
        }
    };
    let [lo, hi] = h.modulation_window_epochs;
    let agm_cfg = AgmConfig {
        alpha: h.alpha,
        window_start: lo,
        window_end: Some(hi),
        coeff_clamp: h.coeff_clamp,
        prob_floor: h.prob_floor,
        clip,
    };
    let mut replay = match case.method.as_str() {
        "OGM-GE" => {
            if let Some(noise) = &h.ogm_noise {
                if !noise.starts_with("disabled") {
                    return Err(invalid(format!(
                        "hyper.ogm_noise = `{noise}` is not supported: random draws cannot be matched across \
                         languages, so the runner replays OGM-GE with its noise disabled"
                    )));
                }
            }
            let ogm_cfg = OgmGeConfig {
                mode: OgmMode::Reference,
                alpha: h.ogm_alpha.unwrap_or(h.alpha),
                noise: false,
                seed: 0,
                window_start: lo,
                window_end: Some(hi),
                clip: agm_cfg.clip,
                // The case runs the early-fusion wrapper, whose uni-modal outputs are Shapley's.
                uni_modal: UniModal::Shapley,
            };
            let ogm = OgmGe::new(ogm_cfg, m).map_err(|e| invalid(format!("hyper: {e}")))?;
            let shadow_cfg = AgmConfig { window_start: usize::MAX, window_end: None, clip: None, ..agm_cfg };
            let shadow = Agm::new(shadow_cfg, m).map_err(|e| invalid(format!("hyper: {e}")))?;
            Replay::Ogm { ogm, shadow }
        }
        _ => Replay::Agm(Agm::new(agm_cfg, m).map_err(|e| invalid(format!("hyper: {e}")))?),
    };
    let sgd_cfg = SgdConfig {
        lr: h.lr,
        momentum: h.momentum,
        dampening: h.dampening,
        weight_decay: h.weight_decay,
        nesterov: h.nesterov,
    };
    let mut sgd = Sgd::new(vec![ParamGroup::new(trainable.clone())], sgd_cfg)
        .map_err(|e| invalid(format!("hyper (SGD settings): {e}")))?;
    let schedule: Box<dyn LrSchedule> = match &h.lr_schedule {
        None => Box::new(ConstantLr),
        Some(s) if s.kind == "StepLR" => {
            let (Some(step_size), Some(gamma)) = (s.step_size_epochs, s.gamma) else {
                return Err(invalid("hyper.lr_schedule: StepLR needs step_size_epochs and gamma".into()));
            };
            Box::new(StepLr::new(step_size, gamma).map_err(|e| invalid(format!("hyper.lr_schedule: {e}")))?)
        }
        Some(s) => {
            return Err(invalid(format!("hyper.lr_schedule.kind `{}` is not supported (allowed: StepLR)", s.kind)))
        }
    };

    // Steps, in order, from step 1 (the running scores and momentum start there).
    let mut steps: Vec<(usize, usize, usize, &Map<String, Value>)> = Vec::new();
    for (i, s) in case.steps.iter().enumerate() {
        let num = |f: &str| {
            s.get(f)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| invalid(format!("steps[{i}].{f}: missing or not a non-negative integer")))
        };
        let (step, epoch) = (num("step")?, num("epoch")?);
        if epoch == 0 {
            return Err(invalid(format!("steps[{i}].epoch: epochs are 1-based, got 0")));
        }
        if let Some(g) = s.get("global_step") {
            if g.as_u64() != Some(step as u64) {
                return Err(invalid(format!("steps[{i}].global_step = {g} differs from step = {step}")));
            }
        }
        steps.push((step, epoch, i, s));
    }
    steps.sort_by_key(|s| s.0);
    for (n, s) in steps.iter().enumerate() {
        if s.0 != n + 1 {
            return Err(invalid(format!("steps must be numbered 1, 2, ... without gaps; found step {}", s.0)));
        }
    }
    if steps.is_empty() {
        return Err(invalid("steps is empty: nothing to replay".into()));
    }
    let replayed: HashSet<String> = steps.iter().map(|s| format!("step{}", s.0)).collect();
    for key in tensors.keys() {
        if let Some((head, _)) = key.split_once('/') {
            if head.starts_with("step") && !replayed.contains(head) {
                report.note(format!("tensors: {key}"));
            }
        }
    }

    let mut chk = Checker::new(report, tensors).map_err(|e| bad_tensor(e.to_string()))?;
    for &(k, epoch, index, fields) in &steps {
        let replay_err = |source| ParityError::Replay { case: name.clone(), step: k, source };
        let lr = schedule.lr_at_epoch(h.lr, epoch - 1);
        sgd.set_learning_rate(lr);
        let batch = read_batch(tensors_path, tensors, &case, k)?;
        let mut capture =
            Capture { model: &model, inputs: &batch.inputs, params: &trainable, tensors: BTreeMap::new() };
        let outcome = {
            let mut parts = StepParts {
                model: &model,
                modulator: replay.modulator(),
                optimizer: &mut sgd,
                trainable: &trainable,
                shapley: ShapleyMode::Faithful,
                loss_reduction: Default::default(),
            };
            train_step(&mut parts, &batch, k, epoch, 0, &mut capture).map_err(replay_err)?
        };
        let mut computed = std::mem::take(&mut capture.tensors);
        if let Replay::Ogm { shadow, .. } = &mut replay {
            let labels = batch.labels.to_vec1::<u32>().map_err(replay_err)?;
            let mut scores = Vec::with_capacity(m);
            for name in &case.modalities {
                let mx = computed
                    .get(&format!("m/{name}"))
                    .ok_or_else(|| replay_err(candle_core::Error::Msg(format!("no mono-modal output for `{name}`"))))?;
                scores.push(shapley::score(mx, &labels, h.prob_floor).map_err(replay_err)?);
            }
            shadow.update(&scores, k, epoch);
        }
        for p in &trainable {
            computed.insert(format!("params_after/{}", p.name), p.var.as_tensor().copy().map_err(replay_err)?);
        }
        for (key, t) in sgd.state().map_err(replay_err)? {
            if let Some(p) = key.strip_suffix("/momentum_buffer") {
                computed.insert(format!("momentum_after/{p}"), t);
            }
        }
        for b in &buffers {
            computed.insert(format!("buffers_after/{}", b.name), b.var.as_tensor().copy().map_err(replay_err)?);
        }

        // Tensors.
        let prefix = format!("step{k}/");
        let mut stored: Vec<&String> = tensors.keys().filter(|key| key.starts_with(&prefix)).collect();
        stored.sort();
        for key in stored {
            let rest = &key[prefix.len()..];
            if rest == "label" || rest.starts_with("input/") {
                continue;
            }
            if is_compared(rest, &case.grad_stages) {
                chk.tensor(key, &tensors[key], computed.get(rest)).map_err(|e| bad_tensor(format!("`{key}`: {e}")))?;
            } else {
                chk.report.note(format!("tensors: {key}"));
            }
        }
        for rest in required_tensors(&case, &trainable, &buffers, h.momentum != 0.0) {
            let key = format!("{prefix}{rest}");
            if !tensors.contains_key(&key) {
                chk.missing(&key, "FORMAT.md requires this tensor but tensors.safetensors does not hold it");
            }
        }

        // Scalars.
        let (agm_stats, ogm_stats) = replay.stats();
        compare_scalars(&mut chk, index, fields, &case, lr, &outcome, agm_stats, ogm_stats, &computed);
    }
    Ok(chk.report)
}

/// The method a case replays (one per replay, so the variants' sizes do not matter).
#[allow(clippy::large_enum_variant)]
enum Replay {
    Agm(Agm),
    /// OGM-GE, with the AGM bookkeeping whose numbers the official code stores for every method.
    Ogm {
        ogm: OgmGe,
        shadow: Agm,
    },
}

impl Replay {
    fn modulator(&mut self) -> &mut dyn Modulator {
        match self {
            Replay::Agm(a) => a,
            Replay::Ogm { ogm, .. } => ogm,
        }
    }

    fn stats(&self) -> (Option<&AgmStepStats>, Option<&OgmStepStats>) {
        match self {
            Replay::Agm(a) => (a.last_stats(), None),
            Replay::Ogm { ogm, shadow } => (shadow.last_stats(), ogm.last_stats()),
        }
    }
}

/// The keys below `stepK/` that every case of this shape must store.
fn required_tensors(
    case: &TrainStepsCase,
    trainable: &[NamedVar],
    buffers: &[NamedVar],
    momentum: bool,
) -> Vec<String> {
    let m = case.modalities.len();
    let set = agm_core::ModalitySet::new(case.modalities.iter().cloned());
    let mut keys =
        vec!["feature".to_string(), "out".to_string(), format!("pass/keep_{}", set.letters(Subset::full(m)))];
    for s in shapley::masked_subsets(m) {
        keys.push(format!("pass/keep_{}", set.letters(s)));
    }
    for name in &case.modalities {
        keys.push(format!("m/{name}"));
    }
    // f(∅) and the exact Shapley values are stored from three modalities on (FORMAT.md §1.2).
    if m >= 3 {
        keys.push(format!("pass/keep_{}", set.letters(Subset::empty())));
        for name in &case.modalities {
            keys.push(format!("m_mc/{name}"));
        }
    }
    for p in trainable {
        for s in &case.grad_stages {
            keys.push(format!("grad_{s}/{}", p.name));
        }
        keys.push(format!("params_after/{}", p.name));
        if momentum {
            keys.push(format!("momentum_after/{}", p.name));
        }
    }
    for b in buffers {
        keys.push(format!("buffers_after/{}", b.name));
    }
    keys
}

/// Inputs (`stepK/input/<m>`, float64) and labels (`stepK/label`, integers in `[0, C)`).
fn read_batch(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    case: &TrainStepsCase,
    k: usize,
) -> Result<MultimodalBatch, ParityError> {
    let get =
        |key: String| tensors.get(&key).ok_or_else(|| ParityError::invalid(path, format!("missing tensor `{key}`")));
    let wrap = |key: &str, e: candle_core::Error| ParityError::invalid(path, format!("tensor `{key}`: {e}"));
    let mut inputs = Vec::new();
    for m in &case.modalities {
        let key = format!("step{k}/input/{m}");
        inputs.push(get(key.clone())?.to_dtype(DType::F64).map_err(|e| wrap(&key, e))?);
    }
    let key = format!("step{k}/label");
    let labels = get(key.clone())?;
    if labels.dtype().is_float() || labels.rank() != 1 {
        return Err(ParityError::invalid(path, format!("`{key}` must be a 1-D integer tensor")));
    }
    let raw = labels.to_dtype(DType::I64).and_then(|t| t.to_vec1::<i64>()).map_err(|e| wrap(&key, e))?;
    let c = case.sizes.classes as i64;
    if let Some(bad) = raw.iter().find(|&&y| y < 0 || y >= c) {
        return Err(ParityError::invalid(path, format!("`{key}` holds label {bad}, outside [0, {c})")));
    }
    let labels = Tensor::from_vec(raw.iter().map(|&y| y as u32).collect::<Vec<_>>(), raw.len(), &Device::Cpu)
        .map_err(|e| wrap(&key, e))?;
    MultimodalBatch::new(inputs, labels).map_err(|e| ParityError::invalid(path, format!("step {k}: {e}")))
}

/// The tiny network of FORMAT.md §1.3, from `modalities`, `sizes`, `network` and `parameters`.
fn build_model(path: &Path, case: &TrainStepsCase) -> Result<FusionModel, ParityError> {
    let invalid = |m: String| ParityError::invalid(path, m);
    let head = case
        .parameters
        .iter()
        .find(|p| p.name == "head.fc.weight" || p.name.ends_with(".head.fc.weight"))
        .ok_or_else(|| invalid("parameters: no `head.fc.weight` (the fusion head)".into()))?;
    let prefix = head.name.strip_suffix("head.fc.weight").unwrap_or("").trim_end_matches('.').to_string();
    let var_name = |rest: &str| if prefix.is_empty() { rest.to_string() } else { format!("{prefix}.{rest}") };
    let (mut eps, mut momentum) = (BN_EPS, BN_MOMENTUM);
    if let Some(net) = &case.network {
        if let Some(v) = net.batch_norm_setting("eps") {
            eps = v.map_err(&invalid)?;
        }
        if let Some(v) = net.batch_norm_setting("momentum") {
            momentum = v.map_err(&invalid)?;
        }
    }
    if momentum != BN_MOMENTUM {
        return Err(invalid(format!("network: BatchNorm momentum {momentum} is not supported (only {BN_MOMENTUM})")));
    }
    let hidden = case.sizes.hidden;
    let cc = case.sizes.conv_channels;
    let mut encoders = Vec::new();
    for m in &case.modalities {
        let shape = case
            .sizes
            .input_shapes
            .get(m)
            .ok_or_else(|| invalid(format!("sizes.input_shapes has no entry for modality `{m}`")))?;
        if shape.len() < 2 {
            return Err(invalid(format!("sizes.input_shapes.{m} = {shape:?}: needs a batch and a feature dimension")));
        }
        let layers = if cc == 0 {
            let in_dim = shape[1..].iter().product();
            vec![
                EncoderLayer::Flatten,
                EncoderLayer::Linear { in_dim, out_dim: hidden },
                EncoderLayer::BatchNorm { channels: hidden, eps },
                EncoderLayer::Relu,
            ]
        } else {
            let &[_, in_ch, height, width] = shape.as_slice() else {
                return Err(invalid(format!("sizes.input_shapes.{m} = {shape:?}: a conv encoder needs [B, C, H, W]")));
            };
            let conv = var_name(&format!("{m}_encoder.0.weight"));
            let kernel =
                case.parameters.iter().find(|p| p.name == conv).and_then(|p| p.shape.get(2).copied()).unwrap_or(3);
            if kernel == 0 || kernel > height || kernel > width {
                return Err(invalid(format!(
                    "parameters: `{conv}` has kernel {kernel}, too large for {height}×{width}"
                )));
            }
            let in_dim = cc * (height - kernel + 1) * (width - kernel + 1);
            vec![
                EncoderLayer::Conv2d { in_ch, out_ch: cc, kernel },
                EncoderLayer::Relu,
                EncoderLayer::Flatten,
                EncoderLayer::Linear { in_dim, out_dim: hidden },
                EncoderLayer::BatchNorm { channels: hidden, eps },
                EncoderLayer::Relu,
            ]
        };
        encoders.push(EncoderSpec { modality: m.clone(), layers });
    }
    let cfg = LateConcatConfig { encoders, num_classes: case.sizes.classes, prefix };
    FusionModel::late_concat(&cfg, 0, DType::F64, &Device::Cpu)
        .map_err(|e| invalid(format!("cannot build the network: {e}")))
}

/// `parameters` must list exactly the model's variables, with their shapes and kinds.
fn check_variables(path: &Path, case: &TrainStepsCase, model: &FusionModel) -> Result<(), ParityError> {
    let groups = model.param_groups();
    let trainable: HashSet<String> = groups.trainable().into_iter().map(|v| v.name).collect();
    let mut listed = HashSet::new();
    for p in &case.parameters {
        let var = groups.find(&p.name).ok_or_else(|| {
            ParityError::invalid(
                path,
                format!("parameters: `{}` is not a variable of the network built from `sizes`", p.name),
            )
        })?;
        let kind = if trainable.contains(&p.name) { "parameter" } else { "buffer" };
        if p.kind != kind {
            return Err(ParityError::invalid(
                path,
                format!("parameters: `{}` has kind `{}`, the network has a {kind}", p.name, p.kind),
            ));
        }
        if var.var.dims() != p.shape.as_slice() {
            return Err(ParityError::invalid(
                path,
                format!(
                    "parameters: `{}` has shape {:?}, the network built from `sizes` has {:?}",
                    p.name,
                    p.shape,
                    var.var.dims()
                ),
            ));
        }
        listed.insert(p.name.clone());
    }
    if let Some(missing) = groups.all_sorted().into_iter().find(|v| !listed.contains(&v.name)) {
        return Err(ParityError::invalid(
            path,
            format!("parameters: the network has `{}`, which the case does not list", missing.name),
        ));
    }
    Ok(())
}

/// The scalars of `steps[index]` (FORMAT.md §7); unknown fields are informational.
#[allow(clippy::too_many_arguments)]
fn compare_scalars(
    chk: &mut Checker,
    index: usize,
    fields: &Map<String, Value>,
    case: &TrainStepsCase,
    lr: f64,
    outcome: &StepOutcome,
    stats: Option<&AgmStepStats>,
    ogm: Option<&OgmStepStats>,
    computed: &BTreeMap<String, Tensor>,
) {
    let clip: Option<&ClipReport> = outcome.clip.as_ref();
    let mut required = vec!["lr", "loss"];
    required.extend_from_slice(PER_MODALITY_FLOATS);
    if case.hyper.clip.is_some() {
        required.extend_from_slice(&["head_grad_max", "head_grad_min", "clip_fired"]);
    }
    if case.hyper.coeff_clamp.is_some() {
        required.push("clamp_fired");
    }
    if fields.get("clip_fired").and_then(Value::as_bool) == Some(true) {
        required.extend_from_slice(&["clip_total_norm", "clip_coef"]);
    }
    if case.method == "OGM-GE" {
        required.push("ogm");
    }
    for f in required {
        if fields.get(f).is_none_or(Value::is_null) {
            chk.missing(&format!("steps[{index}].{f}"), "FORMAT.md requires this field but case.json does not hold it");
        }
    }

    for (field, value) in fields {
        let loc = format!("steps[{index}].{field}");
        let f = field.as_str();
        match f {
            "step" | "epoch" | "global_step" | "step_in_epoch" => {}
            "lr" => float(chk, f, &loc, value, Some(lr)),
            "loss" => float(chk, f, &loc, value, Some(outcome.loss)),
            "head_grad_max" => float(chk, f, &loc, value, clip.map(|c| c.head_grad_max)),
            "head_grad_min" => float(chk, f, &loc, value, clip.map(|c| c.head_grad_min)),
            // Only stored (non-null) when the reference's clipping fired.
            "clip_total_norm" if !value.is_null() => float(chk, f, &loc, value, clip.and_then(|c| c.total_norm)),
            "clip_coef" if !value.is_null() => float(chk, f, &loc, value, clip.and_then(|c| c.coef)),
            "clip_total_norm" | "clip_coef" => {}
            "clip_fired" => flag(chk, f, &loc, value, clip.map(|c| c.fired)),
            "ogm" if case.method == "OGM-GE" => compare_ogm(chk, &loc, value, case, ogm, computed),
            "clamp_fired" => {
                let computed = stats.map(|s| s.clamp_fired.clone());
                per_modality(chk, f, &loc, value, case, |i| {
                    computed.as_ref().and_then(|v| v.get(i)).map(|&b| Value::Bool(b))
                });
            }
            _ if PER_MODALITY_FLOATS.contains(&f) => {
                let computed: Option<&Vec<f64>> = stats.map(|s| match f {
                    "scores" => &s.scores,
                    "running_score_before" => &s.running_before,
                    "running_score_after" => &s.running_after,
                    "ratio" => &s.ratio,
                    "opt_ratio" => &s.opt_ratio,
                    "coeff" => &s.coeff,
                    _ => &s.scales_in_effect,
                });
                per_modality(chk, f, &loc, value, case, |i| {
                    computed.and_then(|v| v.get(i)).and_then(|&x| serde_json::Number::from_f64(x).map(Value::Number))
                });
            }
            _ => chk.report.note(format!("case.json: {loc}")),
        }
    }
}

/// `steps[k].ogm` (FORMAT.md §1.8): score sums, pairwise ratios, coefficients, the edited
/// parameters, and the noise standard deviation the official code would draw with,
/// `std(grad) + 1e-8` (informational in FORMAT.md; compared here with the function the noise
/// uses, on the backward gradient).
fn compare_ogm(
    chk: &mut Checker,
    loc: &str,
    value: &Value,
    case: &TrainStepsCase,
    stats: Option<&OgmStepStats>,
    computed: &BTreeMap<String, Tensor>,
) {
    let Some(obj) = value.as_object() else {
        chk.missing(loc, format!("expected an object in case.json, found {value}"));
        return;
    };
    let num = |x: f64| serde_json::Number::from_f64(x).map(Value::Number);
    let index_of = |letter: &str| {
        case.modalities.iter().position(|m| m.chars().next().map(String::from).as_deref() == Some(letter))
    };
    for (field, v) in obj {
        let key = format!("{loc}.{field}");
        match field.as_str() {
            "score_sum" => per_modality(chk, "ogm.score_sum", &key, v, case, |i| {
                stats.and_then(|s| s.score_sum.get(i).copied()).and_then(num)
            }),
            "coeff" => per_modality(chk, "ogm.coeff", &key, v, case, |i| {
                stats.and_then(|s| s.coeff.get(i).copied()).and_then(num)
            }),
            f if f.starts_with("ratio_") && f.contains("_over_") => {
                let (x, y) = f["ratio_".len()..].split_once("_over_").unwrap_or(("", ""));
                let got = match (index_of(x), index_of(y), stats) {
                    (Some(x), Some(y), Some(s)) => Some(s.score_sum[x] / s.score_sum[y]),
                    _ => None,
                };
                float(chk, "ogm.ratio", &key, v, got);
            }
            "modulated_params" => {
                let mut expected: Vec<String> = v
                    .as_array()
                    .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
                    .unwrap_or_default();
                expected.sort();
                let got = stats.map(|s| {
                    let mut names = s.modulated.clone();
                    names.sort();
                    Value::from(names)
                });
                chk.exact("ogm.modulated_params", &key, &Value::from(expected), got.as_ref());
            }
            "noise_std_that_official_would_use" => {
                let Some(map) = v.as_object() else {
                    chk.report.note(format!("case.json: {key}"));
                    continue;
                };
                for (name, std) in map {
                    let got = computed
                        .get(&format!("grad_backward/{name}"))
                        .and_then(|g| ogm_noise_std(g).ok())
                        .map(|s| s + OGM_NOISE_STD_EPS);
                    float(chk, "ogm.noise_std", &format!("{key}.{name}"), std, got);
                }
            }
            _ => chk.report.note(format!("case.json: {key}")),
        }
    }
}

fn float(chk: &mut Checker, field: &str, loc: &str, value: &Value, computed: Option<f64>) {
    match value.as_f64() {
        Some(x) => chk.float(field, loc, x, computed),
        None => chk.missing(loc, format!("expected a number in case.json, found {value}")),
    }
}

fn flag(chk: &mut Checker, field: &str, loc: &str, value: &Value, computed: Option<bool>) {
    match value.as_bool() {
        Some(x) => chk.flag(field, loc, x, computed),
        None => chk.missing(loc, format!("expected a boolean in case.json, found {value}")),
    }
}

/// A `{modality: value}` map: numbers compared relatively, booleans exactly. `computed(i)` gives
/// modality i's value as JSON (`None`: not computed, or not finite).
fn per_modality<F>(chk: &mut Checker, field: &str, loc: &str, value: &Value, case: &TrainStepsCase, computed: F)
where
    F: Fn(usize) -> Option<Value>,
{
    let Some(map) = value.as_object() else {
        chk.missing(loc, format!("expected a {{modality: value}} object in case.json, found {value}"));
        return;
    };
    for (i, m) in case.modalities.iter().enumerate() {
        let key = format!("{loc}.{m}");
        let Some(v) = map.get(m) else {
            chk.missing(&key, "modality missing from the case.json map");
            continue;
        };
        let got = computed(i);
        if v.is_boolean() {
            flag(chk, field, &key, v, got.as_ref().and_then(Value::as_bool));
        } else {
            // A non-finite computed value cannot be written as JSON; report it as not computed.
            float(chk, field, &key, v, got.as_ref().and_then(Value::as_f64));
        }
    }
    for k in map.keys().filter(|k| !case.modalities.contains(k)) {
        chk.report.note(format!("case.json: {loc}.{k}"));
    }
}

#[cfg(test)]
mod tests {
    use super::super::report::values;
    use super::*;

    #[test]
    fn compared_keys() {
        let stages = vec!["backward".to_string(), "final".to_string()];
        for k in ["pass/keep_av", "feature", "out", "m/audio", "m_mc/text", "grad_final/w", "params_after/w"] {
            assert!(is_compared(k, &stages), "{k}");
        }
        for k in ["grad_modulated/w", "feature/x", "pass", "noise_std/w", "label"] {
            assert!(!is_compared(k, &stages), "{k}");
        }
    }

    #[test]
    fn values_reads_integers() {
        let t = Tensor::new(&[3i64], &Device::Cpu).unwrap();
        assert_eq!(values(&t).unwrap(), vec![3.0]);
    }
}
