//! InfoReg, information acquisition regulation (Huang, Wei, Yang and Hu, "Adaptive Unimodal
//! Regulation for Balanced Multimodal Information Acquisition", CVPR 2025), as a [`Modulator`],
//! following the official code (GeWu-Lab/InfoReg_CVPR2025, commit `939b2ed`, `main.py:
//! train_epoch`, `--modulation Ours`).
//!
//! # One step
//!
//! - Uni-modal outputs `o_m` ([`InfoRegUnimodal`]): with `head-split` (the official code) the
//!   fused head read per modality, `o_m = f_m · W_mᵀ + b / M`, where `f_m` is modality `m`'s
//!   encoder feature from the training pass and `W_m` the head weight's columns over `f_m` (a
//!   late concat head, `Linear(Σ d_m, C)`); with `shapley` agm's mono-modal outputs
//!   ([`crate::shapley::mono_outputs`]), which any fusion has and which equal the head split for
//!   a late concat head when every encoder maps a zero input to a zero feature.
//! - Loss `L = CE(fused) + Σ_m CE(o_m)` (the official code backpropagates the three losses).
//! - Scores `s_m = Σ_i softmax(o_m)_i[y_i]`, a sum over the batch, in f64.
//! - Inside the prime learning window (`k > threshold`, below), every modality whose score
//!   exceeds the lowest one is regulated with `β_m = c_m · exp(tanh(s_m − s_min))`; the others
//!   get `β_m = 0`. For M = 2 this is the official rule exactly: `s_a > s_v` regulates audio with
//!   `c_a = 0.95`, `s_v > s_a` regulates visual with `c_v = 0.1`, a tie regulates nothing. For
//!   M > 2 the rule is our choice (the official code has two modalities only), the same as
//!   agm's OGM-GE and PMR use: every modality ahead of the weakest, each by its own gap.
//! - The regulation is a proximal term `β_m/2 · ‖θ_m − θ_m⁰‖²` whose gradient
//!   `β_m (θ_m − θ_m⁰)` is added to the gradient of every trainable variable of modality `m`'s
//!   encoder group, `θ_m⁰` being the values at the start of the epoch (the official
//!   `global_model = deepcopy(model)`). A variable without a gradient gets the term alone.
//! - Fisher information: after the proximal term, `Σ_v mean(g_v²)` over the variables of rank
//!   ≥ 2 of each modality's group (the official Linear/Conv weights; biases and normalisation
//!   weights excluded) is added to that modality's trace of the epoch.
//!
//! # The prime learning window (`on_epoch_end`)
//!
//! Each epoch's traces are appended to a history pre-filled with `window` zeros (the official
//! `[0] * 10`). With `T` the trace list the window reads ([`WindowTrace`]: the first modality's,
//! as the official code reads audio's, or the sum over modalities),
//! `k = (mean(T[-W:]) − mean(T[-W-1:-1])) / mean(T[-W:])` is the relative change of the
//! averaged trace, computed at the end of an epoch for the next one; the first epoch has
//! `k = 1`. Regulation happens only in epochs with `k > threshold` (official 0.05). Where the
//! last `W` traces are all zero (the official code divides by zero) `k = 0`: no window.
//!
//! # State
//!
//! [`Modulator::state`] holds the trace history, the current epoch's partial traces, `k`, the
//! last step's scores and coefficients and, between the first step of an epoch inside the
//! window and its end, the epoch-start values `θ⁰` of every modality's variables, so a run
//! resumed mid-epoch continues exactly. Epoch-end checkpoints carry no `θ⁰` (the next epoch
//! starts from the current values).
//!
//! M ≥ 2; a single modality is refused ([`MethodError`]).

use agm_core::MultimodalModel;
use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::concat_head::ConcatHead;
use crate::shared::{labels_u32, require_two};
use crate::{shapley, EpochAction, EpochCx, ForwardPlan, MethodError, Modulator, Objective, StepCx};

/// How the uni-modal outputs are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InfoRegUnimodal {
    /// The official code: `f_m · W_mᵀ + b/M` from the late concat head (its weight is
    /// `ParamGroups::head_weight`, its bias the variable of the same path ending in `bias`).
    HeadSplit,
    /// agm's Shapley mono-modal outputs (masked passes): any fusion.
    Shapley,
}

/// Which Fisher trace the window statistic reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WindowTrace {
    /// The first modality's encoder (the official code reads audio's).
    First,
    /// The sum over every modality's encoder.
    Sum,
}

/// InfoReg settings. Use a named preset; in a config file missing keys take the AV-Digits
/// preset's values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InfoRegConfig {
    /// Regulation strength `c_m`: one value for every modality, or one per modality in model
    /// order (official CREMA-D: audio 0.95, visual 0.1). Each finite and ≥ 0.
    pub strength: Vec<f64>,
    /// Regulation only in epochs whose window statistic `k` exceeds this (official 0.05).
    pub threshold: f64,
    /// Averaging length `W` of the trace history, which starts with `W` zeros (official 10).
    pub window: usize,
    /// `first` (official) or `sum`.
    pub window_trace: WindowTrace,
    /// `head-split` (official, late concat heads) or `shapley` (any fusion).
    pub unimodal: InfoRegUnimodal,
}

impl Default for InfoRegConfig {
    fn default() -> Self {
        Self::av_digits()
    }
}

impl InfoRegConfig {
    /// The official code's CREMA-D run: strengths 0.95 (audio) and 0.1 (visual), threshold 0.05
    /// on the audio trace's change averaged over 10 epochs, uni-modal outputs from the head.
    pub fn paper_cremad() -> Self {
        Self {
            strength: vec![0.95, 0.1],
            threshold: 0.05,
            window: 10,
            window_trace: WindowTrace::First,
            unimodal: InfoRegUnimodal::HeadSplit,
        }
    }

    /// Every other dataset (any M, any fusion): the official window, the official strength of the
    /// information-sufficient modality (0.95) for every modality, Shapley uni-modal outputs.
    pub fn av_digits() -> Self {
        Self { strength: vec![0.95], unimodal: InfoRegUnimodal::Shapley, ..Self::paper_cremad() }
    }

    /// The preset names [`InfoRegConfig::preset`] accepts.
    pub const PRESETS: &'static [&'static str] = &["paper-cremad", "av-digits"];

    /// The preset called `name` (one of [`InfoRegConfig::PRESETS`]); `None` for any other name.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "paper-cremad" => Some(Self::paper_cremad()),
            "av-digits" => Some(Self::av_digits()),
            _ => None,
        }
    }

    /// Checks every field; the error names the field and the allowed values.
    pub fn validate(&self) -> std::result::Result<(), MethodError> {
        if self.strength.is_empty() {
            return Err("inforeg.strength needs one value, or one per modality; got none".into());
        }
        if let Some(c) = self.strength.iter().find(|c| !(c.is_finite() && **c >= 0.0)) {
            return Err(format!("inforeg.strength values must be finite and >= 0, got {c}").into());
        }
        if !self.threshold.is_finite() {
            return Err(format!("inforeg.threshold must be a finite number, got {}", self.threshold).into());
        }
        if !(1..=Self::MAX_WINDOW).contains(&self.window) {
            return Err(
                format!("inforeg.window must be in 1..={} epochs, got {}", Self::MAX_WINDOW, self.window).into()
            );
        }
        Ok(())
    }

    /// The longest window `validate` takes (epochs; the official one is 10).
    pub const MAX_WINDOW: usize = 1_000_000;

    /// `c_m` for each of `m` modalities.
    pub fn strengths(&self, m: usize) -> std::result::Result<Vec<f64>, MethodError> {
        match self.strength.len() {
            1 => Ok(vec![self.strength[0]; m]),
            n if n == m => Ok(self.strength.clone()),
            n => Err(format!("inforeg.strength has {n} values for a model with {m} modalities; give one value or {m}")
                .into()),
        }
    }
}

/// The window statistic `k` after the traces `history` (oldest first), with `window` zeros
/// before them: `(mean(last W) − mean(the W before the last)) / mean(last W)`; 1 before any
/// epoch; 0 where the last `W` traces are all zero.
pub fn window_statistic(history: &[f64], window: usize) -> f64 {
    if history.is_empty() {
        return 1.0;
    }
    // The official list: `window` zeros, then the history; sums run oldest first. The zeros
    // add nothing (0 + x is x exactly), so only the history's part of a range is summed.
    let n = history.len() as i128;
    let w = window as i128;
    let sum =
        |from: i128, to: i128| history[from.max(0) as usize..to.max(0) as usize].iter().fold(0.0, |acc, h| acc + h);
    let tr1 = sum(n - w, n) / window as f64;
    let tr2 = sum(n - w - 1, n - 1) / window as f64;
    if tr1 == 0.0 {
        return 0.0;
    }
    (tr1 - tr2) / tr1
}

/// The regulation coefficients `β_m = c_m · exp(tanh(s_m − s_min))` for every modality whose
/// score exceeds the lowest; 0 for the others and everywhere when the window is closed.
pub fn regulation_coefficients(scores: &[f64], strengths: &[f64], window_open: bool) -> Vec<f64> {
    let s_min = scores.iter().copied().fold(f64::INFINITY, f64::min);
    scores
        .iter()
        .zip(strengths)
        .map(|(&s, &c)| if window_open && s > s_min { c * (s - s_min).tanh().exp() } else { 0.0 })
        .collect()
}

/// One variable's epoch-start values, by name (the form the state stores).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct SavedVar {
    name: String,
    #[serde(with = "agm_core::serde_f64::seq")]
    values: Vec<f64>,
}

/// The epoch-start values `θ⁰` of every modality's variables.
#[derive(Clone, Debug)]
enum Anchor {
    /// Copies of the variables, per modality in group order.
    Tensors(Vec<Vec<(String, Tensor)>>),
    /// Loaded from a checkpoint; turned into tensors at the next step (the model is needed).
    Saved(Vec<Vec<SavedVar>>),
}

/// The checkpointed state.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct InfoRegState {
    /// `k` of the current epoch.
    #[serde(with = "agm_core::serde_f64")]
    window_k: f64,
    /// `k > threshold`.
    window_open: bool,
    /// The last step's scores `s_m`.
    #[serde(with = "agm_core::serde_f64::seq")]
    scores: Vec<f64>,
    /// The last step's coefficients `β_m`.
    #[serde(with = "agm_core::serde_f64::seq")]
    beta: Vec<f64>,
    /// The last finished epoch's traces, per modality (empty before the first epoch end).
    #[serde(with = "agm_core::serde_f64::seq")]
    traces: Vec<f64>,
    /// Every finished epoch's traces, per modality, oldest first.
    #[serde(with = "agm_core::serde_f64::nested")]
    trace_history: Vec<Vec<f64>>,
    /// The current epoch's traces so far.
    #[serde(with = "agm_core::serde_f64::seq")]
    epoch_trace: Vec<f64>,
    /// The epoch whose start `anchor` holds.
    anchor_epoch: Option<usize>,
    /// `θ⁰` per modality (absent outside a regulated epoch).
    anchor: Option<Vec<Vec<SavedVar>>>,
}

/// Information acquisition regulation (see the module docs).
#[derive(Debug)]
pub struct InfoReg {
    cfg: InfoRegConfig,
    m: usize,
    strengths: Vec<f64>,
    window_k: f64,
    scores: Vec<f64>,
    beta: Vec<f64>,
    trace_history: Vec<Vec<f64>>,
    epoch_trace: Vec<f64>,
    anchor_epoch: Option<usize>,
    anchor: Option<Anchor>,
}

impl InfoReg {
    /// InfoReg over `m` modalities (at least 2).
    pub fn new(cfg: InfoRegConfig, m: usize) -> std::result::Result<Self, MethodError> {
        cfg.validate()?;
        require_two("inforeg", m)?;
        let strengths = cfg.strengths(m)?;
        Ok(Self {
            cfg,
            m,
            strengths,
            window_k: 1.0,
            scores: vec![0.0; m],
            beta: vec![0.0; m],
            trace_history: vec![Vec::new(); m],
            epoch_trace: vec![0.0; m],
            anchor_epoch: None,
            anchor: None,
        })
    }

    /// The settings it was built with.
    pub fn config(&self) -> &InfoRegConfig {
        &self.cfg
    }

    /// `k` of the current epoch.
    pub fn window_k(&self) -> f64 {
        self.window_k
    }

    /// Whether the current epoch is inside the prime learning window.
    pub fn window_open(&self) -> bool {
        self.window_k > self.cfg.threshold
    }

    /// The last step's scores `s_m`.
    pub fn scores(&self) -> &[f64] {
        &self.scores
    }

    /// Every finished epoch's Fisher traces, per modality.
    pub fn trace_history(&self) -> &[Vec<f64>] {
        &self.trace_history
    }

    /// The trace list the window reads.
    fn window_series(&self) -> Vec<f64> {
        match self.cfg.window_trace {
            WindowTrace::First => self.trace_history[0].clone(),
            WindowTrace::Sum => {
                let epochs = self.trace_history[0].len();
                (0..epochs).map(|e| self.trace_history.iter().map(|h| h[e]).sum()).collect()
            }
        }
    }

    /// The uni-modal outputs of this step.
    fn unimodal_outputs(&self, cx: &StepCx<'_>) -> Result<Vec<Tensor>> {
        match self.cfg.unimodal {
            InfoRegUnimodal::Shapley => shapley::mono_outputs(self.m, |s| cx.forward.logits(s, self.m)),
            InfoRegUnimodal::HeadSplit => head_split_outputs(cx.model, &cx.forward.full.encoder_features),
        }
    }

    /// Copies of every modality's variables (their values now).
    fn take_anchor(model: &dyn MultimodalModel) -> Result<Anchor> {
        let groups = model.param_groups();
        let per = groups
            .per_modality
            .iter()
            .map(|g| g.iter().map(|v| Ok((v.name.clone(), v.var.as_tensor().copy()?))).collect::<Result<Vec<_>>>())
            .collect::<Result<Vec<_>>>()?;
        Ok(Anchor::Tensors(per))
    }

    /// The anchor as tensors, materialising one loaded from a checkpoint.
    fn anchor_tensors(&mut self, model: &dyn MultimodalModel) -> Result<&[Vec<(String, Tensor)>]> {
        if let Some(Anchor::Saved(saved)) = &self.anchor {
            let groups = model.param_groups();
            if saved.len() != groups.per_modality.len() {
                candle_core::bail!("inforeg state: the saved epoch-start values are for {} modalities", saved.len());
            }
            let mut per = Vec::new();
            for (group, saved) in groups.per_modality.iter().zip(saved) {
                let mut vars = Vec::new();
                for s in saved {
                    let v = group.iter().find(|v| v.name == s.name).ok_or_else(|| {
                        candle_core::Error::Msg(format!("inforeg state: `{}` is not a variable of the model", s.name))
                    })?;
                    let t = Tensor::from_slice(&s.values, v.var.shape(), v.var.device())?.to_dtype(v.var.dtype())?;
                    vars.push((s.name.clone(), t));
                }
                per.push(vars);
            }
            self.anchor = Some(Anchor::Tensors(per));
        }
        match &self.anchor {
            Some(Anchor::Tensors(t)) => Ok(t),
            _ => candle_core::bail!("inforeg: no epoch-start values"),
        }
    }

    fn saved_anchor(&self) -> Option<Vec<Vec<SavedVar>>> {
        match self.anchor.as_ref()? {
            Anchor::Saved(s) => Some(s.clone()),
            Anchor::Tensors(per) => Some(
                per.iter()
                    .map(|g| {
                        g.iter()
                            .map(|(name, t)| SavedVar {
                                name: name.clone(),
                                values: t
                                    .to_dtype(DType::F64)
                                    .and_then(|t| t.flatten_all())
                                    .and_then(|t| t.to_vec1::<f64>())
                                    .expect("a variable copy converts to f64"),
                            })
                            .collect()
                    })
                    .collect(),
            ),
        }
    }
}

/// `f_m · W_mᵀ + b/M` for every modality, from the late concat head (gradients reach the head).
pub fn head_split_outputs(model: &dyn MultimodalModel, features: &[Tensor]) -> Result<Vec<Tensor>> {
    match ConcatHead::find(model, None) {
        Some(head) => head.uni_logits(features, false),
        None => candle_core::bail!("{HEAD_SPLIT_NEEDS}"),
    }
}

/// Why `head-split` cannot run on a model.
const HEAD_SPLIT_NEEDS: &str =
    "inforeg.unimodal = head-split needs a late concat head (a Linear over the concatenated \
                                encoder features, with its bias); use unimodal = shapley";

impl Modulator for InfoReg {
    fn name(&self) -> &'static str {
        "inforeg"
    }

    fn forward_plan(&self) -> ForwardPlan {
        match self.cfg.unimodal {
            InfoRegUnimodal::Shapley => ForwardPlan::Shapley,
            InfoRegUnimodal::HeadSplit => ForwardPlan::Full,
        }
    }

    fn objective(&mut self, cx: &StepCx<'_>) -> Result<Objective> {
        let output = cx.forward.full.logits.clone();
        let outs = self.unimodal_outputs(cx)?;
        let labels = labels_u32(cx.batch)?;
        let mut loss = candle_nn::loss::cross_entropy(&output, &cx.batch.labels)?;
        for o in &outs {
            loss = (loss + candle_nn::loss::cross_entropy(o, &cx.batch.labels)?)?;
        }
        self.scores = outs
            .iter()
            .map(|o| Ok(shapley::true_class_probs(&o.detach(), &labels)?.iter().sum()))
            .collect::<Result<_>>()?;
        self.beta = regulation_coefficients(&self.scores, &self.strengths, self.window_open());
        Ok(Objective { loss, output, mono: Some(outs) })
    }

    fn after_backward(&mut self, cx: &StepCx<'_>, grads: &mut GradStore) -> Result<()> {
        let open = self.window_open();
        if !open {
            self.anchor = None;
            self.anchor_epoch = None;
        } else if self.anchor_epoch != Some(cx.epoch) || self.anchor.is_none() {
            // The first step of a regulated epoch: the variables still hold the epoch's start.
            self.anchor = Some(Self::take_anchor(cx.model)?);
            self.anchor_epoch = Some(cx.epoch);
        }
        let groups = cx.model.param_groups();
        let beta = self.beta.clone();
        if open && beta.iter().any(|&b| b != 0.0) {
            let anchor = self.anchor_tensors(cx.model)?.to_vec();
            for ((group, anchor), &b) in groups.per_modality.iter().zip(&anchor).zip(&beta) {
                if b == 0.0 {
                    continue;
                }
                for v in group {
                    let Some((_, start)) = anchor.iter().find(|(n, _)| *n == v.name) else {
                        candle_core::bail!("inforeg: `{}` has no epoch-start value", v.name);
                    };
                    let t = v.var.as_tensor();
                    let prox = (t - start)?.affine(b, 0.0)?;
                    let g = match grads.get(t) {
                        Some(g) => (g + prox)?,
                        None => prox,
                    };
                    grads.insert(t, g);
                }
            }
        }
        for (x, group) in groups.per_modality.iter().enumerate() {
            // The trace term of each weight is its gradient's mean square, summed in f64.
            let gs: Vec<Tensor> = group
                .iter()
                .filter(|v| v.var.rank() >= 2)
                .filter_map(|v| grads.get(v.var.as_tensor()).cloned())
                .collect();
            if !gs.is_empty() {
                let sums = agm_kernels::sum_squares_each(&gs)?;
                self.epoch_trace[x] += gs.iter().zip(sums).map(|(g, s)| s / g.elem_count() as f64).sum::<f64>();
            }
        }
        Ok(())
    }

    fn on_epoch_end(&mut self, _cx: &EpochCx<'_>) -> Result<Vec<EpochAction>> {
        for (h, t) in self.trace_history.iter_mut().zip(&mut self.epoch_trace) {
            h.push(*t);
            *t = 0.0;
        }
        self.window_k = window_statistic(&self.window_series(), self.cfg.window);
        self.anchor = None;
        self.anchor_epoch = None;
        Ok(Vec::new())
    }

    fn coefficients(&self) -> Option<Vec<f64>> {
        Some(self.beta.clone())
    }

    fn state(&self) -> serde_json::Value {
        let state = InfoRegState {
            window_k: self.window_k,
            window_open: self.window_open(),
            scores: self.scores.clone(),
            beta: self.beta.clone(),
            traces: self.trace_history.iter().filter_map(|h| h.last().copied()).collect(),
            trace_history: self.trace_history.clone(),
            epoch_trace: self.epoch_trace.clone(),
            anchor_epoch: self.anchor_epoch,
            anchor: self.saved_anchor(),
        };
        serde_json::to_value(state).expect("plain numbers serialize")
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let s: InfoRegState = serde_json::from_value(state.clone())
            .map_err(|e| candle_core::Error::Msg(format!("inforeg state in checkpoint: {e}")))?;
        let m = self.m;
        if s.scores.len() != m || s.beta.len() != m || s.trace_history.len() != m || s.epoch_trace.len() != m {
            candle_core::bail!("inforeg state in checkpoint is not for {m} modalities");
        }
        if let Some(a) = &s.anchor {
            if a.len() != m {
                candle_core::bail!(
                    "inforeg state in checkpoint holds epoch-start values for {} modalities, not {m}",
                    a.len()
                );
            }
        }
        self.window_k = s.window_k;
        self.scores = s.scores;
        self.beta = s.beta;
        self.trace_history = s.trace_history;
        self.epoch_trace = s.epoch_trace;
        self.anchor_epoch = s.anchor_epoch;
        self.anchor = s.anchor.map(Anchor::Saved);
        Ok(())
    }
}

impl crate::Method for InfoReg {
    const NAME: &'static str = "inforeg";
    const HOOKS: crate::Hooks = crate::Hooks::OBJECTIVE;
    type Config = InfoRegConfig;

    fn preset(dataset: &str) -> InfoRegConfig {
        match dataset {
            "cremad" => InfoRegConfig::paper_cremad(),
            _ => InfoRegConfig::av_digits(),
        }
    }

    fn validate(config: &InfoRegConfig) -> std::result::Result<(), MethodError> {
        config.validate()
    }

    fn build(config: &InfoRegConfig, cx: &crate::BuildCx<'_>) -> std::result::Result<Self, MethodError> {
        let method = InfoReg::new(config.clone(), cx.modalities())?;
        if config.unimodal == InfoRegUnimodal::HeadSplit && ConcatHead::find(cx.model, cx.feature_dims).is_none() {
            return Err(HEAD_SPLIT_NEEDS.into());
        }
        if let Some(x) = cx.model.param_groups().per_modality.iter().position(Vec::is_empty) {
            return Err(format!(
                "inforeg cannot regulate modality `{}` of this model: it has no trainable parameters",
                cx.model.modalities().name(x)
            )
            .into());
        }
        Ok(method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_statistic_follows_the_official_lists() {
        // Epoch 1: k = 1; epochs 2..: the zero prefill makes k = t_last / Σ t while e ≤ W.
        assert_eq!(window_statistic(&[], 10), 1.0);
        assert_eq!(window_statistic(&[0.3], 10), 1.0);
        let k = window_statistic(&[0.3, 0.1], 10);
        assert!((k - 0.1 / 0.4).abs() < 1e-15);
        let k = window_statistic(&[0.3, 0.1, 0.02], 10);
        assert!((k - 0.02 / 0.42).abs() < 1e-15);
        // Past W epochs the oldest trace leaves the average: k = (t_e − t_{e−W}) / Σ last W.
        let h: Vec<f64> = (1..=5).map(|i| i as f64).collect();
        let k = window_statistic(&h, 3);
        assert!((k - (5.0 - 2.0) / (3.0 + 4.0 + 5.0)).abs() < 1e-15);
        // A falling trace closes the window (k < 0); all-zero traces give 0.
        assert!(window_statistic(&[4.0, 3.0, 2.0, 1.0], 2) < 0.0);
        assert_eq!(window_statistic(&[0.0, 0.0], 10), 0.0);
        // The zero prefill is not summed one by one: a huge window answers at once, as the
        // formula says (k = t_last / Σ t), and windows past the limit are refused.
        let k = window_statistic(&[0.3, 0.1], usize::MAX);
        assert!((k - 0.1 / 0.4).abs() < 1e-15, "{k}");
        let huge = InfoRegConfig { window: InfoRegConfig::MAX_WINDOW + 1, ..InfoRegConfig::av_digits() };
        assert!(huge.validate().unwrap_err().to_string().contains("inforeg.window must be in 1..=1000000"));
    }

    #[test]
    fn two_modalities_regulate_the_leader_as_the_official_branches() {
        let c = [0.95, 0.1];
        let b = regulation_coefficients(&[3.0, 2.5], &c, true);
        assert_eq!(b, vec![0.95 * 0.5f64.tanh().exp(), 0.0]);
        let b = regulation_coefficients(&[2.0, 4.0], &c, true);
        assert_eq!(b, vec![0.0, 0.1 * 2.0f64.tanh().exp()]);
        assert_eq!(regulation_coefficients(&[2.0, 2.0], &c, true), vec![0.0, 0.0]);
        assert_eq!(regulation_coefficients(&[3.0, 2.0], &c, false), vec![0.0, 0.0]);
    }

    #[test]
    fn three_modalities_regulate_everyone_ahead_of_the_weakest() {
        let b = regulation_coefficients(&[1.0, 3.0, 2.0], &[0.5, 0.5, 0.25], true);
        assert_eq!(b, vec![0.0, 0.5 * 2.0f64.tanh().exp(), 0.25 * 1.0f64.tanh().exp()]);
        // β grows with the gap and is bounded by c·e.
        assert!(b[1] > 0.5 * 1.0f64.tanh().exp() && b[1] < 0.5 * std::f64::consts::E);
    }

    #[test]
    fn strengths_broadcast_or_match_the_modalities() {
        let cfg = InfoRegConfig::av_digits();
        assert_eq!(cfg.strengths(3).unwrap(), vec![0.95; 3]);
        let cfg = InfoRegConfig::paper_cremad();
        assert_eq!(cfg.strengths(2).unwrap(), vec![0.95, 0.1]);
        assert!(cfg.strengths(3).unwrap_err().to_string().contains("2 values"));
        assert!(InfoReg::new(InfoRegConfig::av_digits(), 1).is_err());
        let bad = InfoRegConfig { strength: vec![-1.0], ..InfoRegConfig::av_digits() };
        assert!(bad.validate().is_err());
        let bad = InfoRegConfig { window: 0, ..InfoRegConfig::av_digits() };
        assert!(bad.validate().is_err());
    }

    use crate::StepForward;
    use agm_core::{ForwardOpts, MultimodalBatch, Subset};
    use agm_fusion::{EncoderLayer, EncoderSpec, FusionModel, LateConcatConfig};
    use candle_core::Device;

    /// Linear(d, 3) + ReLU per modality, concat, Linear(3M, 3); float64.
    fn tiny(dims: &[usize]) -> FusionModel {
        let encoders = dims
            .iter()
            .enumerate()
            .map(|(i, &d)| EncoderSpec {
                modality: ["audio", "visual", "text"][i].into(),
                layers: vec![EncoderLayer::Linear { in_dim: d, out_dim: 3 }, EncoderLayer::Relu],
            })
            .collect();
        let cfg = LateConcatConfig { encoders, num_classes: 3, prefix: "net".into() };
        FusionModel::late_concat(&cfg, 5, DType::F64, &Device::Cpu).unwrap()
    }

    fn batch(dims: &[usize]) -> MultimodalBatch {
        let b = 6;
        let inputs = dims
            .iter()
            .enumerate()
            .map(|(m, &d)| {
                let v: Vec<f64> = (0..b * d).map(|i| (((i * 7 + m * 3) % 11) as f64 - 5.0) / 4.0).collect();
                Tensor::from_vec(v, (b, d), &Device::Cpu).unwrap()
            })
            .collect();
        let labels = Tensor::from_vec(vec![0u32, 1, 2, 0, 1, 2], b, &Device::Cpu).unwrap();
        MultimodalBatch::new(inputs, labels).unwrap()
    }

    /// Forward, objective, backward and the method's edits of one step.
    fn step(method: &mut InfoReg, model: &FusionModel, batch: &MultimodalBatch, epoch: usize) -> GradStore {
        let m = batch.inputs.len();
        let subsets = method.forward_plan().masked_subsets(m);
        let full = model.forward(&batch.inputs, &ForwardOpts::train(m, 0)).unwrap();
        let masked = subsets
            .into_iter()
            .map(|s| (s, model.forward(&batch.inputs, &ForwardOpts::eval(m).with_present(s)).unwrap().logits))
            .collect();
        let forward = StepForward { full, masked };
        let cx = StepCx { model, batch, forward: &forward, step: 1, epoch };
        let objective = method.objective(&cx).unwrap();
        let mut grads = method.backward(&cx, &objective).unwrap();
        method.after_backward(&cx, &mut grads).unwrap();
        grads
    }

    /// Plain SGD on every trainable variable.
    fn sgd(model: &FusionModel, grads: &GradStore, lr: f64) {
        for v in model.param_groups().trainable() {
            if let Some(g) = grads.get(v.var.as_tensor()) {
                let new = (v.var.as_tensor() - g.affine(lr, 0.0).unwrap()).unwrap();
                v.var.set(&new).unwrap();
            }
        }
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
    }

    fn head_split() -> InfoRegConfig {
        InfoRegConfig { unimodal: InfoRegUnimodal::HeadSplit, ..InfoRegConfig::av_digits() }
    }

    #[test]
    fn proximal_term_pulls_the_regulated_encoder_to_its_epoch_start() {
        let dims = [4, 3];
        let model = tiny(&dims);
        let b = batch(&dims);
        let mut method = InfoReg::new(head_split(), 2).unwrap();
        let g1 = step(&mut method, &model, &b, 1);
        sgd(&model, &g1, 0.5);
        let start: Vec<Tensor> = match method.anchor.as_ref().unwrap() {
            Anchor::Tensors(per) => per.iter().flatten().map(|(_, t)| t.clone()).collect(),
            Anchor::Saved(_) => unreachable!(),
        };
        // The same step without regulation: a method whose window is closed.
        let mut plain = InfoReg::new(head_split(), 2).unwrap();
        plain.window_k = 0.0;
        let g_plain = step(&mut plain, &model, &b, 1);
        let g = step(&mut method, &model, &b, 1);
        let beta = method.coefficients().unwrap();
        assert!(beta.iter().any(|&x| x > 0.0), "the batch regulates a modality: {beta:?}");
        let groups = model.param_groups();
        let mut i = 0;
        for (x, group) in groups.per_modality.iter().enumerate() {
            for v in group {
                let t = v.var.as_tensor();
                let want = (grads_of(&g_plain, t) + ((t - &start[i]).unwrap().affine(beta[x], 0.0).unwrap())).unwrap();
                assert!(max_diff(&grads_of(&g, t), &want) < 1e-14, "{}", v.name);
                i += 1;
            }
        }
        // Shared (head) gradients are untouched.
        for v in &groups.shared {
            let t = v.var.as_tensor();
            assert!(max_diff(&grads_of(&g, t), &grads_of(&g_plain, t)) < 1e-15);
        }
        // The Fisher trace sums mean(g²) of the rank-2 weights after the edit, over both steps.
        for (x, group) in groups.per_modality.iter().enumerate() {
            let w = group.iter().find(|v| v.var.rank() == 2).unwrap().var.as_tensor();
            let mean_sq =
                |gs: &GradStore| grads_of(gs, w).sqr().unwrap().mean_all().unwrap().to_scalar::<f64>().unwrap();
            let want = mean_sq(&g1) + mean_sq(&g);
            assert!((method.epoch_trace[x] - want).abs() < 1e-15 * want.max(1.0));
        }
    }

    fn grads_of(g: &GradStore, t: &Tensor) -> Tensor {
        g.get(t).cloned().unwrap()
    }

    #[test]
    fn a_resumed_run_continues_exactly() {
        let dims = [4, 3, 2];
        let model = tiny(&dims);
        let b = batch(&dims);
        let cfg = InfoRegConfig { strength: vec![0.9, 0.5, 0.7], ..head_split() };
        let mut method = InfoReg::new(cfg.clone(), 3).unwrap();
        let g1 = step(&mut method, &model, &b, 1);
        sgd(&model, &g1, 0.5);
        let saved = method.state();
        assert!(saved["anchor"].is_array(), "mid-epoch state holds the epoch start");
        let mut resumed = InfoReg::new(cfg, 3).unwrap();
        resumed.load_state(&saved).unwrap();
        let g = step(&mut method, &model, &b, 1);
        let g_resumed = step(&mut resumed, &model, &b, 1);
        for v in model.param_groups().trainable() {
            let t = v.var.as_tensor();
            assert_eq!(max_diff(&grads_of(&g, t), &grads_of(&g_resumed, t)), 0.0, "{}", v.name);
        }
        assert_eq!(method.state(), resumed.state());
    }

    struct NoData;
    impl agm_core::BatchSource for NoData {
        fn len(&self) -> usize {
            0
        }
        fn batch(&self, _: &[usize], _: &Device) -> Result<MultimodalBatch> {
            unreachable!()
        }
    }

    #[test]
    fn the_epoch_end_moves_the_window_and_drops_the_epoch_start() {
        let dims = [4, 3];
        let model = tiny(&dims);
        let b = batch(&dims);
        let mut method = InfoReg::new(head_split(), 2).unwrap();
        let cx = |epoch| EpochCx {
            model: &model,
            device: &Device::Cpu,
            train: &NoData,
            holdout: None,
            epoch,
            accuracy: 0.0,
            modality_accuracy: vec![0.0; 2],
            modality_loss: vec![0.0; 2],
            head_accuracy: Vec::new(),
            head_loss: Vec::new(),
        };
        let mut traces = Vec::new();
        for epoch in 1..=3 {
            assert_eq!(method.window_k(), window_statistic(&traces, 10));
            step(&mut method, &model, &b, epoch);
            let t = method.epoch_trace[0];
            method.on_epoch_end(&cx(epoch)).unwrap();
            traces.push(t);
            let s = method.state();
            assert!(s["anchor"].is_null() && s["epoch_trace"] == serde_json::json!([0.0, 0.0]));
            assert_eq!(s["traces"][0].as_f64().unwrap(), t);
        }
        assert_eq!(method.trace_history()[0], traces);
        // A closed window regulates nothing and keeps no epoch start.
        method.window_k = -1.0;
        step(&mut method, &model, &b, 4);
        assert_eq!(method.coefficients().unwrap(), vec![0.0, 0.0]);
        assert!(method.anchor.is_none());
    }

    #[test]
    fn head_split_equals_the_shapley_outputs_when_zero_inputs_give_zero_features() {
        let dims = [4, 3, 2];
        let model = tiny(&dims);
        let b = batch(&dims);
        // Non-positive encoder biases: a zero input gives a zero feature.
        for group in model.param_groups().per_modality {
            for v in group.iter().filter(|v| v.var.rank() == 1) {
                v.var.set(&v.var.as_tensor().abs().unwrap().neg().unwrap()).unwrap();
            }
        }
        let m = 3;
        let full = model.forward(&b.inputs, &ForwardOpts::eval(m)).unwrap();
        let split = head_split_outputs(&model, &full.encoder_features).unwrap();
        let passes: Vec<(Subset, Tensor)> = Subset::all(m)
            .filter(|s| !s.is_empty())
            .map(|s| (s, model.forward(&b.inputs, &ForwardOpts::eval(m).with_present(s)).unwrap().logits))
            .collect();
        let mono = shapley::mono_outputs(m, |s| passes.iter().find(|(p, _)| *p == s).map(|(_, t)| t)).unwrap();
        for (a, s) in split.iter().zip(&mono) {
            assert!(max_diff(a, s) < 1e-12);
        }
        // The head split is the fused output's additive decomposition: Σ_m o_m = fused logits.
        let sum = split.iter().skip(1).fold(split[0].clone(), |acc, o| (acc + o).unwrap());
        assert!(max_diff(&sum, &full.logits) < 1e-12);
    }

    #[test]
    fn head_split_is_refused_without_a_late_concat_head() {
        let dims = [4, 3];
        let encoders = dims
            .iter()
            .enumerate()
            .map(|(i, &d)| EncoderSpec {
                modality: ["audio", "visual"][i].into(),
                layers: vec![EncoderLayer::Linear { in_dim: d, out_dim: 3 }, EncoderLayer::Relu],
            })
            .collect();
        let cfg = LateConcatConfig { encoders, num_classes: 3, prefix: "net".into() };
        let model = FusionModel::sequential(&cfg, &agm_fusion::FusionKind::Film, 5, DType::F64, &Device::Cpu).unwrap();
        let cx = crate::BuildCx::new(&model, 0).with_feature_dims(&[3, 3]);
        let err = <InfoReg as crate::Method>::build(&head_split(), &cx).unwrap_err().to_string();
        assert!(err.contains("late concat") && err.contains("shapley"), "{err}");
        <InfoReg as crate::Method>::build(&InfoRegConfig::av_digits(), &cx).unwrap();
    }
}
