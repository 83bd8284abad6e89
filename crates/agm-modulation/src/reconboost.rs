//! ReconBoost (Hua, Xu, Bao, Yang and Huang, "ReconBoost: Boosting Can Achieve Modality
//! Reconcilement", ICML 2024) as a [`Modulator`], following the official code
//! (<https://github.com/huacong/ReconBoost>, commit `14ab57a`: `train.py` for two modalities,
//! `train_MSA.py` for three, the ensemble in `models/dynamic_net.py`).
//!
//! # Learners, shared head, ensemble
//!
//! Modality `m`'s learner is `f_m(x) = g(h_m(x))`: the model's encoder `h_m` (its flattened
//! feature `ModelOutput::encoder_features[m]`) followed by a head `g` that every learner shares
//! (the official `common_space = True`: `DynamicNet.head` replaces each uni-modal net's `fc`).
//! `g` and the boost rate are method-owned variables ([`Modulator::attach`]):
//!
//! - `reconboost.head.fc1` `Linear(d, head_hidden)`, ReLU, `reconboost.head.fc2`
//!   `Linear(head_hidden, C)` (the official `Head`, CREMA-D / AVE / ModelNet40, `head_hidden` 256),
//!   or, with `head_hidden = 0`, one `reconboost.head.fc` `Linear(d, C)` (the official `MHead`,
//!   MOSI / MOSEI / SIMS);
//! - `reconboost.boost_rate` `β`, shape `[1]` (officially a 0-d parameter), starting at
//!   `boost_rate`.
//!
//! Every encoder must give the same feature size `d` (the head is shared). The ensemble of a set
//! of learners `S` predicts `F_S(x) = β · Σ_{m ∈ S} g(h_m(x))` (`DynamicNet.forward_grad`). The
//! model's own fusion (`T`, its head) is not part of the method: it gets no gradient and is never
//! trained.
//!
//! # Stages (`train.py`'s `while check_status(stage)` loop)
//!
//! Training runs in stages of `epochs_per_stage + correct_epochs` epochs (1-based epoch `e` is in
//! stage `s = (e − 1) div (epochs_per_stage + correct_epochs)`). Stage `s` picks the learner
//! `ℓ = schedule[s mod M]` (the official fixed schedule: audio, visual, audio, …; text, visual,
//! audio, … for three modalities). The ensemble before stage `s` holds the learners picked in
//! earlier stages, `E_s = {schedule[k mod M] : k < s}` (`DynamicNet.add`).
//!
//! 1. **Boosting** (the stage's first `epochs_per_stage` epochs): only `h_ℓ` and `g` are trained
//!    (the official `optim.SGD(model.parameters())`), with the reconcilement loss
//!
//!    `L = (1/B) Σ_i (1/C) · (−w1 + w2 · p_i) · log softmax(f_ℓ(x_i))[y_i]  +  α · GA`
//!
//!    where `p_i = softmax(F_{E_s ∖ {ℓ}}(x_i))[y_i]` is the other learners' ensemble's
//!    probability of the label, without gradient (`net_ensemble.forward(data, mask_model=ℓ)`);
//!    with no other learner in the ensemble (stage 0) the official ensemble is one constant
//!    logit `c0`, whose softmax is 1, so `p_i = 1`. The `1/C` is the official
//!    `(target * log_softmax).mean(-1)`. The learner is pushed hardest on the samples the others
//!    get wrong (`w1 = 5`, `w2 = 1`: weight 4 when the ensemble is sure of the label, 5 when it
//!    gives it no mass). `GA = MSE(softmax(f_ℓ), softmax(f_prev))` over all `B × C` entries,
//!    `prev = schedule[(s − 1) mod M]` (the official `pre_model`), from stage 1 on when `use_ga`:
//!    the official code detaches both sides (`out_obj.detach()`, `pre_out_obj.detach()`), so the
//!    term is in the loss's value only, never in a gradient; so it is here.
//! 2. **Global rectification** (the next `correct_epochs` epochs): `h_m` for
//!    `m ∈ E_s ∪ {ℓ}`, `g` and `β` are trained with `CE(F_{E_s ∪ {ℓ}}(x), y)` (the official
//!    `optim.SGD(net_ensemble.parameters())`).
//!
//! A modality outside the phase's set keeps its parameters exactly: [`Modulator::after_backward`]
//! removes their gradients (and the fusion head's, and `β`'s while boosting), and agm's
//! optimizers skip a variable without a gradient, as PyTorch skips `grad is None`, which is
//! what the official per-phase optimizers over a subset of the parameters amount to.
//!
//! # Reported numbers
//!
//! The objective's `output` (whose cross-entropy the trainer reports as the step's loss) is the
//! ensemble the stage ends with, `F_{E_s ∪ {ℓ}}`: in rectification exactly the differentiated
//! loss, in boosting a number the official code does not print. [`Modulator::state`] holds the
//! last step's [`ReconBoostStep`] (the differentiated `loss`, `boosting_loss`, `ga_loss`, the
//! stage, phase, learner, ensemble and `β`); [`Modulator::coefficients`] is 1 for each modality
//! whose encoder the step trained, else 0. Everything the method does is a function of the epoch,
//! so a resumed run continues exactly (the state is for logs only).
//!
//! # M = 2 and M = 3
//!
//! Any `M ≥ 2` (the definition is per learner); the official code runs M = 2 (`train.py`) and
//! M = 3 (`train_MSA.py`). `schedule` names the modalities in the order they are boosted (empty:
//! model order); it must name each modality of the model once. `M = 1` is refused.
//!
//! # Where agm's run differs from the official loop (the trainer has no hook for these)
//!
//! - The official code builds a fresh SGD at every phase, so momentum buffers restart at each
//!   phase; agm keeps one optimizer and, with `fresh_optimizer_per_phase` (the default), asks
//!   the trainer to forget its state when a phase starts (`EpochAction::ResetOptimizer`), which
//!   is the same. The golden cases run the official momentum 0.9.
//! - The official learning rates are per phase (`m_lr`, `e_lr`, equal in every official run) and
//!   decay per stage (CREMA-D ×0.1 every 30 stages, AVE ×0.5 at stage 40): set the trainer's
//!   learning-rate schedule in epochs (`30 · (epochs_per_stage + correct_epochs)`).
//! - The official evaluation and model selection use `F_{all}`; agm's evaluation (accuracy,
//!   Shapley accuracy, model selection) scores [`Modulator::predict`], `β · Σ g(h_m)` over the
//!   learners trained so far (all of them before the first step and once every modality has had
//!   a stage), not the model's fused logits, which this method does not train.
//! - The official code runs every learner separately, so BatchNorm running statistics of the
//!   other encoders move in the no-gradient ensemble pass too (the GA partner's twice); agm's
//!   full pass moves each encoder's once per step, including those the official code has not
//!   run yet (modalities neither learning nor in the ensemble, as in the first stage); their
//!   weights are frozen then, and the difference fades as `(1 − momentum)^steps` once they train.
//! - The official `--use_pretrain` start (uni-modal checkpoints, their own `fc` heads in the
//!   ensemble until replaced) is not modelled: stage 0 starts from an empty ensemble.

use agm_core::{MultimodalModel, NamedVar};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::shared::{model_dtype_device, require_two, scalar_f64};
use crate::{EpochAction, EpochCx, MethodError, Modulator, Objective, StepCx};

/// ReconBoost settings (see the module docs); missing keys in a config file take the official
/// `train.py` defaults ([`ReconBoostConfig::official`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconBoostConfig {
    /// `w1`, the weight of the learner's own log-likelihood (official `--weight1`); finite.
    pub weight1: f64,
    /// `w2`, the weight of the ensemble-weighted log-likelihood (official `--weight2`); finite.
    pub weight2: f64,
    /// `α`, the weight of the (value-only) GA term (official `--alpha`); finite, >= 0.
    pub alpha: f64,
    /// Add `α · GA` from stage 1 on (official `--use_ga`).
    pub use_ga: bool,
    /// Initial value of the learnable boost rate `β` (official `--boost_rate`); finite.
    pub boost_rate: f64,
    /// Boosting epochs per stage (official `--epochs_per_stage`); >= 1.
    pub epochs_per_stage: usize,
    /// Global rectification epochs per stage (official `--correct_epoch`); 0 skips it.
    pub correct_epochs: usize,
    /// Hidden width of the shared head `Linear(d, head_hidden) → ReLU → Linear(head_hidden, C)`
    /// (official `Head`: 256); 0 for one `Linear(d, C)` (official `MHead`).
    pub head_hidden: usize,
    /// Modality names in boosting order; empty: model order.
    pub schedule: Vec<String>,
    /// Reset the optimizer's state (momentum) when a phase starts, as the official code builds a
    /// fresh SGD for every boosting and rectification phase.
    pub fresh_optimizer_per_phase: bool,
}

impl Default for ReconBoostConfig {
    fn default() -> Self {
        Self::official()
    }
}

impl ReconBoostConfig {
    /// The official `train.py` argument defaults: `w1 = 5`, `w2 = 1`, `α = 0.5`, GA on,
    /// `β = 1`, 4 boosting + 4 rectification epochs per stage, the 256-wide `Head`, model order.
    pub fn official() -> Self {
        Self {
            weight1: 5.0,
            weight2: 1.0,
            alpha: 0.5,
            use_ga: true,
            boost_rate: 1.0,
            epochs_per_stage: 4,
            correct_epochs: 4,
            head_hidden: 256,
            schedule: Vec::new(),
            fresh_optimizer_per_phase: true,
        }
    }

    /// The README's CREMA-D command: the defaults, audio boosted first.
    pub fn paper_cremad() -> Self {
        Self { schedule: vec!["audio".into(), "visual".into()], ..Self::official() }
    }

    /// The README's AVE command: `--weight1 4`.
    pub fn paper_ave() -> Self {
        Self { weight1: 4.0, ..Self::paper_cremad() }
    }

    /// `train_MSA.py` (MOSI / MOSEI / SIMS): `w1 = 1`, `w2 = 0.25`, the one-layer `MHead`, text
    /// boosted first (its schedule is text, visual, audio; agm's MOSEI model has text and audio).
    pub fn paper_mosei() -> Self {
        Self {
            weight1: 1.0,
            weight2: 0.25,
            head_hidden: 0,
            schedule: vec!["text".into(), "audio".into()],
            ..Self::official()
        }
    }

    /// The preset names [`ReconBoostConfig::preset`] accepts.
    pub const PRESETS: &'static [&'static str] = &["official", "cremad", "ave", "mosei"];

    /// The preset called `name` (one of [`ReconBoostConfig::PRESETS`]); `None` for any other name.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "official" => Some(Self::official()),
            "cremad" => Some(Self::paper_cremad()),
            "ave" => Some(Self::paper_ave()),
            "mosei" => Some(Self::paper_mosei()),
            _ => None,
        }
    }

    /// The widest shared head `validate` takes.
    pub const MAX_HEAD_HIDDEN: usize = 1 << 16;

    /// Checks every field without a model; the error names the field and the allowed values.
    pub fn validate(&self) -> std::result::Result<(), MethodError> {
        for (name, v) in [("weight1", self.weight1), ("weight2", self.weight2), ("boost_rate", self.boost_rate)] {
            if !v.is_finite() {
                return Err(format!("reconboost.{name} must be a finite number, got {v}").into());
            }
        }
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return Err(format!("reconboost.alpha must be a finite number >= 0, got {}", self.alpha).into());
        }
        if self.epochs_per_stage == 0 {
            return Err("reconboost.epochs_per_stage must be >= 1 (boosting epochs per stage), got 0".into());
        }
        if self.head_hidden > Self::MAX_HEAD_HIDDEN {
            return Err(format!(
                "reconboost.head_hidden must be at most {} (0: one linear layer; the official head: 256), got {}",
                Self::MAX_HEAD_HIDDEN,
                self.head_hidden
            )
            .into());
        }
        for (i, name) in self.schedule.iter().enumerate() {
            if self.schedule[..i].contains(name) {
                return Err(format!(
                    "reconboost.schedule names `{name}` twice; each modality is boosted once per round"
                )
                .into());
            }
        }
        Ok(())
    }

    /// Epochs per stage.
    pub fn stage_epochs(&self) -> usize {
        self.epochs_per_stage + self.correct_epochs
    }
}

/// Which phase of a stage a step is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReconBoostPhase {
    /// The stage's learner alone, with the reconcilement loss.
    Boost,
    /// The whole ensemble, with cross-entropy (the official global rectification).
    Rectify,
}

/// What a step does, a function of its epoch (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagePlan {
    /// 0-based stage.
    pub stage: usize,
    /// Boosting the learner alone, or rectifying the ensemble.
    pub phase: ReconBoostPhase,
    /// The stage's learner `ℓ` (modality index).
    pub learner: usize,
    /// Per modality: in the ensemble the step's loss uses (boosting: `E_s ∖ {ℓ}`; rectifying:
    /// `E_s ∪ {ℓ}`).
    pub ensemble: Vec<bool>,
    /// Per modality: its encoder is trained by this step.
    pub updated: Vec<bool>,
    /// The previous stage's learner (the GA partner), from stage 1 on.
    pub previous: Option<usize>,
}

/// The numbers of the last step, as [`Modulator::state`] reports them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReconBoostStep {
    /// 1-based epoch of the step.
    pub epoch: usize,
    /// 0-based stage.
    pub stage: usize,
    /// The phase of the step.
    pub phase: ReconBoostPhase,
    /// The stage's learner (modality index).
    pub learner: usize,
    /// Per modality: in the ensemble the step's loss used.
    pub ensemble: Vec<bool>,
    /// The batch mean of the reconcilement loss without the GA term (0 while rectifying).
    #[serde(with = "agm_core::serde_f64")]
    pub boosting_loss: f64,
    /// The GA term's value (0 at stage 0, without `use_ga`, and while rectifying).
    #[serde(with = "agm_core::serde_f64")]
    pub ga_loss: f64,
    /// The value the step differentiated: `boosting_loss + α · ga_loss`, or the rectification
    /// cross-entropy.
    #[serde(with = "agm_core::serde_f64")]
    pub loss: f64,
    /// `β` during the step.
    #[serde(with = "agm_core::serde_f64")]
    pub boost_rate: f64,
}

/// The shared head `g`: linear layers with ReLU between them.
#[derive(Clone, Debug)]
struct SharedHead {
    layers: Vec<(String, Var, Var)>,
}

impl SharedHead {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, (_, w, b)) in self.layers.iter().enumerate() {
            if i > 0 {
                h = agm_kernels::relu(&h)?;
            }
            h = agm_kernels::linear(&h, w.as_tensor(), Some(b.as_tensor()))?;
        }
        Ok(h)
    }
}

/// A variable uniform in `±bound` (PyTorch's `nn.Linear` initialisation for `bound = 1/√fan_in`),
/// drawn from a ChaCha8 stream seeded with `seed ^ FNV-1a(name)`, as agm-fusion seeds a model's
/// variables.
fn seeded_uniform(name: &str, shape: &[usize], bound: f64, seed: u64, dtype: DType, device: &Device) -> Result<Var> {
    let n: usize = shape.iter().product();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ agm_core::stable_name_hash(name));
    let values: Vec<f64> = (0..n).map(|_| rng.random_range(-bound..=bound)).collect();
    Var::from_tensor(&Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?)
}

/// Alternating boosting with modality reconcilement (see the module docs).
#[derive(Debug)]
pub struct ReconBoost {
    cfg: ReconBoostConfig,
    m: usize,
    /// `schedule` as modality indices.
    order: Vec<usize>,
    seed: u64,
    feature_dim: Option<usize>,
    head: Option<SharedHead>,
    boost_rate: Option<Var>,
    last: Option<ReconBoostStep>,
}

impl ReconBoost {
    /// ReconBoost over the modalities `names` (model order; at least 2).
    pub fn new(cfg: ReconBoostConfig, names: &[String]) -> std::result::Result<Self, MethodError> {
        cfg.validate()?;
        let m = names.len();
        require_two("reconboost", m)?;
        let order = if cfg.schedule.is_empty() {
            (0..m).collect()
        } else {
            let mut order = Vec::with_capacity(m);
            for name in &cfg.schedule {
                let i = names.iter().position(|n| n == name).ok_or_else(|| {
                    MethodError::from(format!(
                        "reconboost.schedule names `{name}`, which is not a modality of the model ({})",
                        names.join(", ")
                    ))
                })?;
                order.push(i);
            }
            if let Some(missing) = names.iter().enumerate().find(|(i, _)| !order.contains(i)) {
                return Err(format!(
                    "reconboost.schedule ({}) leaves out modality `{}`; it must name every modality of the model once \
                     (or be empty for model order)",
                    cfg.schedule.join(", "),
                    missing.1
                )
                .into());
            }
            order
        };
        Ok(Self { cfg, m, order, seed: 0, feature_dim: None, head: None, boost_rate: None, last: None })
    }

    /// The run's seed: seeds the shared head's initial values.
    pub fn with_run_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The flattened size of each encoder feature; they must all be equal (the head is shared).
    pub fn with_feature_dims(mut self, dims: &[usize]) -> std::result::Result<Self, MethodError> {
        if dims.len() != self.m {
            return Err(format!("reconboost: {} encoder feature sizes for {} modalities", dims.len(), self.m).into());
        }
        if dims[0] == 0 || dims.iter().any(|&d| d != dims[0]) {
            return Err(format!(
                "reconboost shares one head across the modalities' learners (the official common space), so every \
                 encoder must give the same nonzero feature size; this model's are {dims:?}"
            )
            .into());
        }
        self.feature_dim = Some(dims[0]);
        Ok(self)
    }

    /// The settings it was built with.
    pub fn config(&self) -> &ReconBoostConfig {
        &self.cfg
    }

    /// The boosting order as modality indices.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// The numbers of the last step.
    pub fn last_step(&self) -> Option<&ReconBoostStep> {
        self.last.as_ref()
    }

    /// What a step of 1-based `epoch` does.
    pub fn plan(&self, epoch: usize) -> StagePlan {
        let e = epoch.max(1) - 1;
        let per = self.cfg.stage_epochs();
        let stage = e / per;
        let phase = if e % per < self.cfg.epochs_per_stage { ReconBoostPhase::Boost } else { ReconBoostPhase::Rectify };
        let learner = self.order[stage % self.m];
        let mut before = vec![false; self.m];
        for k in 0..stage.min(self.m) {
            before[self.order[k % self.m]] = true;
        }
        let (ensemble, updated) = match phase {
            ReconBoostPhase::Boost => {
                let ensemble = (0..self.m).map(|i| before[i] && i != learner).collect();
                let updated = (0..self.m).map(|i| i == learner).collect();
                (ensemble, updated)
            }
            ReconBoostPhase::Rectify => {
                let members: Vec<bool> = (0..self.m).map(|i| before[i] || i == learner).collect();
                (members.clone(), members)
            }
        };
        let previous = (stage > 0).then(|| self.order[(stage - 1) % self.m]);
        StagePlan { stage, phase, learner, ensemble, updated, previous }
    }

    fn parts(&self) -> Result<(&SharedHead, &Var)> {
        match (&self.head, &self.boost_rate) {
            (Some(h), Some(b)) => Ok((h, b)),
            _ => candle_core::bail!("reconboost: attach was not called"),
        }
    }
}

/// `Σ_{m ∈ members} g(feature_m)`, `None` for no member.
fn sum_logits(logits: &[Tensor], members: &[bool]) -> Result<Option<Tensor>> {
    let mut sum: Option<Tensor> = None;
    for (l, _) in logits.iter().zip(members).filter(|(_, &on)| on) {
        sum = Some(match sum {
            None => l.clone(),
            Some(s) => (s + l)?,
        });
    }
    Ok(sum)
}

/// Per-sample weights of the reconcilement loss over the per-sample cross-entropy `−log p(y)`:
/// `(w1 − w2 · p_i) / (B · C)`, so that `L = Σ_i weight_i · CE_i` is the official batch mean.
pub fn reconcilement_weights(ensemble_prob: &[f64], weight1: f64, weight2: f64, classes: usize) -> Vec<f64> {
    let scale = (ensemble_prob.len() * classes) as f64;
    ensemble_prob.iter().map(|p| (weight1 - weight2 * p) / scale).collect()
}

/// The probability `softmax(logits)[i, y_i]` of each sample's label, in f64, without gradient.
fn label_probs(logits: &Tensor, labels: &[u32]) -> Result<Vec<f64>> {
    let p = candle_nn::ops::softmax_last_dim(&logits.detach())?.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    Ok(p.iter().zip(labels).map(|(row, &y)| row[y as usize]).collect())
}

/// `mean((softmax(a) − softmax(b))²)` over every entry, without gradient (the official GA term).
fn ga_mse(a: &Tensor, b: &Tensor) -> Result<f64> {
    let pa = candle_nn::ops::softmax_last_dim(&a.detach())?;
    let pb = candle_nn::ops::softmax_last_dim(&b.detach())?;
    scalar_f64(&(pa - pb)?.sqr()?.mean_all()?)
}

impl Modulator for ReconBoost {
    fn name(&self) -> &'static str {
        "reconboost"
    }

    fn attach(&mut self, model: &dyn MultimodalModel) -> Result<Vec<NamedVar>> {
        if model.modalities().len() != self.m {
            candle_core::bail!(
                "reconboost was built for {} modalities, the model has {}",
                self.m,
                model.modalities().len()
            );
        }
        let d = self.feature_dim.ok_or_else(|| {
            candle_core::Error::Msg(
                "reconboost needs the encoder feature size to build its shared head: call \
                 ReconBoost::with_feature_dims (agm_modulation::encoder_feature_dims measures it from one batch)"
                    .into(),
            )
        })?;
        let (dtype, device) = model_dtype_device(model)?;
        let classes = model.num_classes();
        let shapes: Vec<(&str, usize, usize)> = if self.cfg.head_hidden == 0 {
            vec![("fc", d, classes)]
        } else {
            vec![("fc1", d, self.cfg.head_hidden), ("fc2", self.cfg.head_hidden, classes)]
        };
        let mut layers = Vec::with_capacity(shapes.len());
        let mut vars = Vec::new();
        for (name, fan_in, out) in shapes {
            let base = format!("reconboost.head.{name}");
            let bound = 1.0 / (fan_in as f64).sqrt();
            let w = seeded_uniform(&format!("{base}.weight"), &[out, fan_in], bound, self.seed, dtype, &device)?;
            let b = seeded_uniform(&format!("{base}.bias"), &[out], bound, self.seed, dtype, &device)?;
            vars.push(NamedVar { name: format!("{base}.weight"), var: w.clone() });
            vars.push(NamedVar { name: format!("{base}.bias"), var: b.clone() });
            layers.push((base, w, b));
        }
        let beta = Var::from_tensor(&Tensor::new(&[self.cfg.boost_rate], &device)?.to_dtype(dtype)?)?;
        vars.push(NamedVar { name: "reconboost.boost_rate".into(), var: beta.clone() });
        self.head = Some(SharedHead { layers });
        self.boost_rate = Some(beta);
        Ok(vars)
    }

    fn objective(&mut self, cx: &StepCx<'_>) -> Result<Objective> {
        let plan = self.plan(cx.epoch);
        let (head, beta) = self.parts()?;
        let features = &cx.forward.full.encoder_features;
        if features.len() != self.m {
            candle_core::bail!(
                "reconboost: the model returned {} encoder features for {} modalities",
                features.len(),
                self.m
            );
        }
        let logits: Vec<Tensor> = features.iter().map(|f| head.forward(&f.flatten_from(1)?)).collect::<Result<_>>()?;
        let labels = cx.batch.labels.to_dtype(DType::U32)?;
        let label_vec = labels.to_vec1::<u32>()?;
        let beta_t = beta.as_tensor();
        let beta_value = scalar_f64(&beta_t.flatten_all()?.get(0)?)?;
        let mono = Some(logits.iter().map(Tensor::detach).collect());
        let (loss, output, boosting_loss, ga_loss) = match plan.phase {
            ReconBoostPhase::Rectify => {
                let sum = sum_logits(&logits, &plan.ensemble)?.expect("the stage's learner is in the ensemble");
                let output = sum.broadcast_mul(beta_t)?;
                let loss = agm_kernels::cross_entropy_per_sample(&output, &labels)?.mean_all()?;
                (loss, output, 0.0, 0.0)
            }
            ReconBoostPhase::Boost => {
                let own = &logits[plan.learner];
                let detached: Vec<Tensor> = logits.iter().map(Tensor::detach).collect();
                let others = sum_logits(&detached, &plan.ensemble)?;
                let probs = match &others {
                    Some(sum) => label_probs(&sum.broadcast_mul(&beta_t.detach())?, &label_vec)?,
                    None => vec![1.0; label_vec.len()],
                };
                let classes = own.dim(1)?;
                let weights = reconcilement_weights(&probs, self.cfg.weight1, self.cfg.weight2, classes);
                let weights = Tensor::from_vec(weights, label_vec.len(), own.device())?.to_dtype(own.dtype())?;
                let ce = agm_kernels::cross_entropy_per_sample(own, &labels)?;
                let boosting = (ce * weights)?.sum_all()?;
                let boosting_value = scalar_f64(&boosting)?;
                let ga = match plan.previous {
                    Some(prev) if self.cfg.use_ga => ga_mse(own, &logits[prev])?,
                    _ => 0.0,
                };
                let loss = if ga != 0.0 { boosting.affine(1.0, self.cfg.alpha * ga)? } else { boosting };
                // Reported: the ensemble this stage ends with, `F_{E_s ∪ {ℓ}}`.
                let with_own = match others {
                    Some(sum) => (sum + own.detach())?,
                    None => own.detach(),
                };
                (loss, with_own.broadcast_mul(&beta_t.detach())?, boosting_value, ga)
            }
        };
        self.last = Some(ReconBoostStep {
            epoch: cx.epoch,
            stage: plan.stage,
            phase: plan.phase,
            learner: plan.learner,
            ensemble: plan.ensemble,
            boosting_loss,
            ga_loss,
            loss: scalar_f64(&loss)?,
            boost_rate: beta_value,
        });
        Ok(Objective { loss, output, mono })
    }

    fn after_backward(&mut self, cx: &StepCx<'_>, grads: &mut GradStore) -> Result<()> {
        let plan = self.plan(cx.epoch);
        let groups = cx.model.param_groups();
        for (vars, &on) in groups.per_modality.iter().zip(&plan.updated) {
            if !on {
                for v in vars {
                    grads.remove(v.var.as_tensor());
                }
            }
        }
        for v in &groups.shared {
            grads.remove(v.var.as_tensor());
        }
        if plan.phase == ReconBoostPhase::Boost {
            if let Some(beta) = &self.boost_rate {
                grads.remove(beta.as_tensor());
            }
        }
        Ok(())
    }

    /// A new phase (boosting or rectification, of a new stage or not) starts with a fresh
    /// optimizer, as the official code builds one per phase.
    fn on_epoch_end(&mut self, cx: &EpochCx<'_>) -> Result<Vec<EpochAction>> {
        let (now, next) = (self.plan(cx.epoch), self.plan(cx.epoch + 1));
        let new_phase = (now.stage, now.phase) != (next.stage, next.phase);
        Ok(if new_phase && self.cfg.fresh_optimizer_per_phase { vec![EpochAction::ResetOptimizer] } else { Vec::new() })
    }

    /// The boosted ensemble `β · Σ g(h_m)` over the learners trained so far (the stage's learner
    /// and every earlier one; all of them before the first step), as the official evaluation
    /// scores the model.
    fn predict(&self, _model: &dyn MultimodalModel, pass: &agm_core::ModelOutput) -> Result<Option<Tensor>> {
        let (head, beta) = self.parts()?;
        let members = match &self.last {
            Some(last) => {
                let mut members = last.ensemble.clone();
                members[last.learner] = true;
                members
            }
            None => vec![true; self.m],
        };
        let logits: Vec<Tensor> =
            pass.encoder_features.iter().map(|f| head.forward(&f.flatten_from(1)?)).collect::<Result<_>>()?;
        match sum_logits(&logits, &members)? {
            Some(sum) => Ok(Some(sum.broadcast_mul(beta.as_tensor())?)),
            None => Ok(None),
        }
    }

    /// Per modality: 1 when the last step trained its encoder, else 0.
    fn coefficients(&self) -> Option<Vec<f64>> {
        let last = self.last.as_ref()?;
        let plan = self.plan(last.epoch);
        Some(plan.updated.iter().map(|&u| if u { 1.0 } else { 0.0 }).collect())
    }

    fn state(&self) -> serde_json::Value {
        match &self.last {
            // The last step's numbers at the top level, so logs and replays read them by name.
            Some(last) => serde_json::to_value(last).expect("plain numbers serialize"),
            None => serde_json::Value::Null,
        }
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        if state.is_null() {
            self.last = None;
            return Ok(());
        }
        let last: ReconBoostStep = serde_json::from_value(state.clone())
            .map_err(|e| candle_core::Error::Msg(format!("reconboost state in checkpoint: {e}")))?;
        if last.ensemble.len() != self.m || last.learner >= self.m {
            candle_core::bail!("reconboost state in checkpoint is not for {} modalities", self.m);
        }
        self.last = Some(last);
        Ok(())
    }
}

impl crate::Method for ReconBoost {
    const NAME: &'static str = "reconboost";
    const HOOKS: crate::Hooks = crate::Hooks::OBJECTIVE;
    type Config = ReconBoostConfig;

    fn preset(dataset: &str) -> ReconBoostConfig {
        match dataset {
            "cremad" => ReconBoostConfig::paper_cremad(),
            "ave" => ReconBoostConfig::paper_ave(),
            "mosei" => ReconBoostConfig::paper_mosei(),
            _ => ReconBoostConfig::official(),
        }
    }

    fn validate(config: &ReconBoostConfig) -> std::result::Result<(), MethodError> {
        config.validate()
    }

    fn build(config: &ReconBoostConfig, cx: &crate::BuildCx<'_>) -> std::result::Result<Self, MethodError> {
        let names = cx.model.modalities().names().to_vec();
        ReconBoost::new(config.clone(), &names)?.with_run_seed(cx.seed).with_feature_dims(&cx.feature_dims(Self::NAME)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Method, StepForward};
    use agm_core::{ForwardOpts, MultimodalBatch};
    use agm_fusion::{EncoderLayer, EncoderSpec, FusionModel, LateConcatConfig};

    const NAMES: [&str; 3] = ["audio", "visual", "text"];
    const B: usize = 5;
    const C: usize = 3;
    const D: usize = 4;

    fn names(m: usize) -> Vec<String> {
        NAMES[..m].iter().map(|s| s.to_string()).collect()
    }

    fn cfg(e1: usize, e2: usize) -> ReconBoostConfig {
        ReconBoostConfig { epochs_per_stage: e1, correct_epochs: e2, head_hidden: 3, ..ReconBoostConfig::official() }
    }

    fn tiny(m: usize) -> FusionModel {
        let encoders = (0..m)
            .map(|i| EncoderSpec {
                modality: NAMES[i].into(),
                layers: vec![EncoderLayer::Linear { in_dim: 2 + i, out_dim: D }, EncoderLayer::Relu],
            })
            .collect();
        let cfg = LateConcatConfig { encoders, num_classes: C, prefix: "net".into() };
        FusionModel::late_concat(&cfg, 3, DType::F64, &Device::Cpu).unwrap()
    }

    fn batch(m: usize) -> MultimodalBatch {
        let inputs = (0..m)
            .map(|i| {
                let v: Vec<f64> = (0..B * (2 + i)).map(|k| ((k * 7 + i * 3) % 11) as f64 / 4.0 - 1.2).collect();
                Tensor::from_vec(v, (B, 2 + i), &Device::Cpu).unwrap()
            })
            .collect();
        MultimodalBatch::new(inputs, Tensor::new(&[0u32, 2, 1, 2, 0], &Device::Cpu).unwrap()).unwrap()
    }

    fn rows(t: &Tensor) -> Vec<Vec<f64>> {
        t.to_vec2::<f64>().unwrap()
    }

    fn softmax(row: &[f64]) -> Vec<f64> {
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = row.iter().map(|x| (x - max).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|x| x / s).collect()
    }

    /// One step's objective and edited gradients at `epoch`, with the learners' logits.
    fn step(rb: &mut ReconBoost, model: &FusionModel, epoch: usize) -> (f64, GradStore, Vec<Vec<Vec<f64>>>) {
        let m = model.modalities().len();
        let b = batch(m);
        let full = model.forward(&b.inputs, &ForwardOpts::train(m, 0)).unwrap();
        let forward = StepForward { full, masked: Vec::new() };
        let cx = StepCx { model, batch: &b, forward: &forward, step: 1, epoch };
        let obj = rb.objective(&cx).unwrap();
        let logits = obj.mono.as_ref().unwrap().iter().map(rows).collect();
        let mut grads = rb.backward(&cx, &obj).unwrap();
        rb.after_backward(&cx, &mut grads).unwrap();
        (obj.loss.to_scalar::<f64>().unwrap(), grads, logits)
    }

    fn built(m: usize, cfg: ReconBoostConfig, model: &FusionModel) -> ReconBoost {
        let mut rb = ReconBoost::new(cfg, &names(m)).unwrap().with_feature_dims(&vec![D; m]).unwrap();
        rb.attach(model).unwrap();
        rb
    }

    type Expected = (usize, ReconBoostPhase, usize, [bool; 2], [bool; 2], Option<usize>);

    fn has_grad(grads: &GradStore, v: &NamedVar) -> bool {
        grads.get(v.var.as_tensor()).is_some()
    }

    #[test]
    fn stages_alternate_the_learner_and_grow_the_ensemble() {
        let rb = ReconBoost::new(cfg(2, 1), &names(2)).unwrap();
        // (stage, phase, learner, ensemble, updated, previous) at epochs 1..=9.
        let want: [Expected; 9] = [
            (0, ReconBoostPhase::Boost, 0, [false, false], [true, false], None),
            (0, ReconBoostPhase::Boost, 0, [false, false], [true, false], None),
            (0, ReconBoostPhase::Rectify, 0, [true, false], [true, false], None),
            (1, ReconBoostPhase::Boost, 1, [true, false], [false, true], Some(0)),
            (1, ReconBoostPhase::Boost, 1, [true, false], [false, true], Some(0)),
            (1, ReconBoostPhase::Rectify, 1, [true, true], [true, true], Some(0)),
            (2, ReconBoostPhase::Boost, 0, [false, true], [true, false], Some(1)),
            (2, ReconBoostPhase::Boost, 0, [false, true], [true, false], Some(1)),
            (2, ReconBoostPhase::Rectify, 0, [true, true], [true, true], Some(1)),
        ];
        for (e, (stage, phase, learner, ensemble, updated, previous)) in want.into_iter().enumerate() {
            let p = rb.plan(e + 1);
            assert_eq!(
                (p.stage, p.phase, p.learner, p.ensemble.as_slice(), p.updated.as_slice(), p.previous),
                (stage, phase, learner, &ensemble[..], &updated[..], previous),
                "epoch {}",
                e + 1
            );
        }
        // M = 3 in the official MSA order (text, visual, audio), one epoch per phase.
        let c = ReconBoostConfig { schedule: vec!["text".into(), "visual".into(), "audio".into()], ..cfg(1, 1) };
        let rb = ReconBoost::new(c, &names(3)).unwrap();
        assert_eq!(rb.order(), &[2, 1, 0]);
        let p = rb.plan(1);
        assert_eq!((p.learner, p.ensemble, p.updated), (2, vec![false; 3], vec![false, false, true]));
        assert_eq!(rb.plan(2).ensemble, vec![false, false, true]);
        let p = rb.plan(3);
        assert_eq!((p.learner, p.ensemble, p.previous), (1, vec![false, false, true], Some(2)));
        let p = rb.plan(5);
        assert_eq!((p.learner, p.ensemble, p.previous), (0, vec![false, true, true], Some(1)));
        assert_eq!(rb.plan(6).updated, vec![true; 3]);
        let p = rb.plan(7);
        assert_eq!((p.stage, p.learner, p.ensemble, p.previous), (3, 2, vec![true, true, false], Some(0)));
        // Without rectification every epoch is a stage.
        let rb = ReconBoost::new(cfg(1, 0), &names(2)).unwrap();
        assert_eq!((rb.plan(4).stage, rb.plan(4).learner, rb.plan(4).phase), (3, 1, ReconBoostPhase::Boost));
    }

    #[test]
    fn the_schedule_and_the_feature_sizes_are_checked() {
        let err = |c: ReconBoostConfig, m: usize| ReconBoost::new(c, &names(m)).unwrap_err().to_string();
        let with = |s: &[&str]| ReconBoostConfig { schedule: s.iter().map(|x| x.to_string()).collect(), ..cfg(1, 1) };
        assert!(err(with(&["audio", "sound"]), 2).contains("`sound`"));
        assert!(err(with(&["visual"]), 2).contains("leaves out modality `audio`"));
        assert!(err(with(&["audio", "audio"]), 2).contains("twice"));
        assert!(err(cfg(1, 1), 1).contains("at least 2 modalities"));
        assert!(err(cfg(0, 1), 2).contains("epochs_per_stage"));
        assert!(err(ReconBoostConfig { alpha: -1.0, ..cfg(1, 1) }, 2).contains("alpha"));
        let rb = ReconBoost::new(cfg(1, 1), &names(2)).unwrap();
        let e = rb.with_feature_dims(&[4, 5]).unwrap_err().to_string();
        assert!(e.contains("same nonzero feature size"), "{e}");
        // Without sizes attach says what is missing.
        let mut rb = ReconBoost::new(cfg(1, 1), &names(2)).unwrap();
        assert!(rb.attach(&tiny(2)).unwrap_err().to_string().contains("with_feature_dims"));
    }

    #[test]
    fn reconcilement_weights_are_the_official_batch_mean() {
        // -(w1 t·logp).mean(-1) + (w2 t·q·logp).mean(-1), averaged over the batch, is
        // Σ_i (w1 - w2 p_i) / (B C) · CE_i.
        let w = reconcilement_weights(&[1.0, 0.0, 0.5], 5.0, 1.0, 4);
        assert_eq!(w, vec![4.0 / 12.0, 5.0 / 12.0, 4.5 / 12.0]);
    }

    #[test]
    fn boosting_is_the_reconcilement_loss_and_trains_only_the_learner_and_the_head() {
        let model = tiny(2);
        let c = ReconBoostConfig { boost_rate: 0.75, ..cfg(1, 1) };
        let (w1, w2, alpha, beta) = (c.weight1, c.weight2, c.alpha, c.boost_rate);
        let mut rb = built(2, c, &model);
        let groups = model.param_groups();
        let labels = [0usize, 2, 1, 2, 0];

        // Stage 0 (epoch 1): no other learner yet, p = 1: L = (w1 − w2)/C · mean CE(f_audio).
        let (loss, grads, logits) = step(&mut rb, &model, 1);
        let ce: Vec<f64> = logits[0].iter().zip(labels).map(|(r, y)| -softmax(r)[y].ln()).collect();
        let want = (w1 - w2) / C as f64 * ce.iter().sum::<f64>() / B as f64;
        assert!((loss - want).abs() < 1e-12, "{loss} vs {want}");
        assert_eq!(rb.last_step().unwrap().ga_loss, 0.0);
        assert!(groups.per_modality[0].iter().all(|v| has_grad(&grads, v)));
        assert!(!groups.per_modality[1].iter().any(|v| has_grad(&grads, v)));
        assert!(!groups.shared.iter().any(|v| has_grad(&grads, v)));
        let method = rb.head.as_ref().unwrap().layers.iter().flat_map(|(_, w, b)| [w.clone(), b.clone()]);
        assert!(method.clone().all(|v| grads.get(v.as_tensor()).is_some()));
        assert!(grads.get(rb.boost_rate.as_ref().unwrap().as_tensor()).is_none());
        assert_eq!(rb.coefficients(), Some(vec![1.0, 0.0]));

        // Stage 1 (epoch 3): visual learns against p = softmax(β f_audio)[y], plus α·GA.
        let (loss, grads, logits) = step(&mut rb, &model, 3);
        let mut boosting = 0.0;
        let mut ga = 0.0;
        for (i, y) in labels.into_iter().enumerate() {
            let ens: Vec<f64> = logits[0][i].iter().map(|x| beta * x).collect();
            let p = softmax(&ens)[y];
            let own = softmax(&logits[1][i]);
            boosting += (-w1 + w2 * p) * own[y].ln() / C as f64;
            let other = softmax(&logits[0][i]);
            ga += own.iter().zip(&other).map(|(a, b)| (a - b) * (a - b)).sum::<f64>();
        }
        boosting /= B as f64;
        ga /= (B * C) as f64;
        let last = rb.last_step().unwrap();
        assert!((last.boosting_loss - boosting).abs() < 1e-12);
        assert!((last.ga_loss - ga).abs() < 1e-14 && ga > 0.0);
        assert!((loss - (boosting + alpha * ga)).abs() < 1e-12);
        assert!(!groups.per_modality[0].iter().any(|v| has_grad(&grads, v)));
        assert!(groups.per_modality[1].iter().all(|v| has_grad(&grads, v)));
        assert_eq!((last.stage, last.learner, last.ensemble.clone()), (1, 1, vec![true, false]));

        // The GA term moves the value only: without it the gradients are the same.
        let mut plain = built(2, ReconBoostConfig { use_ga: false, boost_rate: 0.75, ..cfg(1, 1) }, &model);
        let (loss_plain, grads_plain, _) = step(&mut plain, &model, 3);
        assert!((loss - loss_plain - alpha * ga).abs() < 1e-12);
        for v in &groups.per_modality[1] {
            let a = grads.get(v.var.as_tensor()).unwrap();
            let b = grads_plain.get(v.var.as_tensor()).unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            assert_eq!(flat(a), flat(b), "{}", v.name);
        }
    }

    #[test]
    fn rectification_is_the_ensemble_cross_entropy_and_trains_the_boost_rate() {
        let model = tiny(3);
        let c = ReconBoostConfig { head_hidden: 0, boost_rate: 1.25, ..cfg(1, 1) };
        let mut rb = built(3, c, &model);
        let groups = model.param_groups();
        let labels = [0usize, 2, 1, 2, 0];
        // Epoch 4 = stage 1's rectification: the ensemble is {audio, visual}; text untouched.
        let (loss, grads, logits) = step(&mut rb, &model, 4);
        let want = labels
            .into_iter()
            .enumerate()
            .map(|(i, y)| {
                let out: Vec<f64> = (0..C).map(|k| 1.25 * (logits[0][i][k] + logits[1][i][k])).collect();
                -softmax(&out)[y].ln()
            })
            .sum::<f64>()
            / B as f64;
        assert!((loss - want).abs() < 1e-12, "{loss} vs {want}");
        assert!(groups.per_modality[0].iter().chain(&groups.per_modality[1]).all(|v| has_grad(&grads, v)));
        assert!(!groups.per_modality[2].iter().any(|v| has_grad(&grads, v)));
        assert!(!groups.shared.iter().any(|v| has_grad(&grads, v)));
        assert!(grads.get(rb.boost_rate.as_ref().unwrap().as_tensor()).is_some());
        assert_eq!(rb.coefficients(), Some(vec![1.0, 1.0, 0.0]));
        assert_eq!(rb.last_step().unwrap().phase, ReconBoostPhase::Rectify);
        // The one-layer head (official MHead) and the boost rate are the method's variables.
        let mut fresh = ReconBoost::new(cfg(1, 1), &names(3)).unwrap().with_feature_dims(&[D; 3]).unwrap();
        let names: Vec<String> = fresh.attach(&model).unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(
            names,
            [
                "reconboost.head.fc1.weight",
                "reconboost.head.fc1.bias",
                "reconboost.head.fc2.weight",
                "reconboost.head.fc2.bias",
                "reconboost.boost_rate"
            ]
        );
    }

    #[test]
    fn the_state_round_trips_and_presets_follow_the_official_commands() {
        let model = tiny(2);
        let mut rb = built(2, cfg(1, 1), &model);
        step(&mut rb, &model, 3);
        let state = rb.state();
        assert_eq!(state["phase"], "boost");
        let mut other = built(2, cfg(1, 1), &model);
        other.load_state(&state).unwrap();
        assert_eq!(other.state(), state);
        assert_eq!(other.coefficients(), Some(vec![0.0, 1.0]));
        assert!(built(3, cfg(1, 1), &tiny(3)).load_state(&state).is_err());

        for name in ReconBoostConfig::PRESETS {
            ReconBoostConfig::preset(name).unwrap().validate().unwrap();
        }
        // A head too wide to build is refused before any allocation (it panicked in one).
        let wide = ReconBoostConfig { head_hidden: usize::MAX, ..ReconBoostConfig::official() };
        assert!(wide.validate().unwrap_err().to_string().contains("reconboost.head_hidden must be at most 65536"));
        assert_eq!(ReconBoost::preset("ave").weight1, 4.0);
        assert_eq!(ReconBoost::preset("mosei").head_hidden, 0);
        assert_eq!(ReconBoost::preset("cremad").schedule, ["audio", "visual"]);
        let table: toml::Table = toml::from_str("weight1 = 2.0\nschedule = [\"visual\", \"audio\"]").unwrap();
        let c: ReconBoostConfig = toml::Value::Table(table).try_into().unwrap();
        assert_eq!((c.weight1, c.weight2, c.epochs_per_stage), (2.0, 1.0, 4));
        let bad: std::result::Result<ReconBoostConfig, _> = toml::from_str("weight3 = 1.0");
        assert!(bad.is_err());
    }
}
