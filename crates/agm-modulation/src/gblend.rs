//! G-Blending (Wang, Tran and Feiszli, "What Makes Training Multi-Modal Classification Networks
//! Hard?", CVPR 2020) as a [`Modulator`].
//!
//! # What one step computes
//!
//! The method owns one linear uni-modal head per modality (`Linear(d_m → classes)` over the
//! flattened encoder feature `ModelOutput::encoder_features[m]`, created in [`Modulator::attach`],
//! not by the model). The loss is the blend
//!
//! `L = Σ_m w_m · CE(head_m(h_m), y) + w_fused · CE(T, y)`
//!
//! with `T` the model's fused logits, weights positive and summing to 1. Before the first
//! estimate every weight is `1/(M+1)`.
//!
//! # The estimator: online, on the training trajectory
//!
//! Every super-epoch (`super_epoch` epochs; at the end of epochs `S, 2S, …`), for every output
//! `k` (each uni-modal head, then the fused output) the model is measured in evaluation mode
//! (no dropout, BatchNorm running statistics), without gradients:
//!
//! - `L^T_k`: mean cross-entropy on the training split (all of it, or a fixed seeded subset of
//!   `train_samples` samples, the same at every measurement);
//! - `L^V_k`: mean cross-entropy on the held-out split ([`EpochCx::holdout`], which must be
//!   disjoint from the training data; the run is rejected without one);
//! - `O_k = L^V_k − L^T_k` (overfitting).
//!
//! Both losses are per-sample means, so `O` does not depend on the split sizes (BalanceMM sums
//! batch losses over loaders of different sizes, so its `O` mostly reflects the sizes).
//!
//! With `N` the previous measurement and `N+S` this one, the raw weight is
//!
//! - [`GBlendEstimator::Delta`] (the paper's `ΔG/ΔO²`; MultiBench with `delta = True`; BalanceMM):
//!   `ΔG_k = L^V_{k,N} − L^V_{k,N+S}`, `ΔO_k = O_{k,N+S} − O_{k,N}`,
//!   `w_k = |ΔG_k| / max(|ΔO_k|, 1e-4)²`. It needs two measurements: the first is taken before
//!   training ([`Modulator::on_train_start`]), so the first estimate is made at the end of epoch
//!   `S`.
//! - [`GBlendEstimator::Final`] (MultiBench's default `delta = False`):
//!   `w_k = |L^V_{k,N+S}| / max(O_{k,N+S}, 1e-4)²`, first made at the end of epoch `S`.
//!   (MultiBench floors only a negative `O`; `max` also keeps an `O` in `[0, 1e-4)` finite.)
//!
//! The raw weights are normalised to sum to 1 and mixed with a floor,
//! `w_k ← f + (1 − (M+1)·f)·w_k` (`weight_floor = f`), so every weight is at least `f` and the
//! sum stays 1: a zero weight would stop training that output for a whole super-epoch. When the
//! raw weights cannot be normalised (all zero, or not finite), the previous weights stay.
//! The new weights are used from the next step on, i.e. during the next super-epoch.
//!
//! **Difference from the reference implementations.** MultiBench (`gb_estimate`) and BalanceMM
//! (`super_epoch_origin`) deep-copy the uni-modal models and the multimodal model at the start
//! of each super-epoch and train the copies for `n` epochs on their own to get the `N` and
//! `N+n` losses. The [`Modulator`] hooks cannot clone a model or run an inner training loop (no
//! optimizer is reachable from [`EpochCx`]), so the `N` and `N+S` measurements are taken here on
//! the jointly trained model itself at consecutive super-epoch boundaries (the first before
//! training): the weights for super-epoch `k+1` come from how each output's generalisation and
//! overfitting moved during super-epoch `k`, and the first super-epoch trains with equal
//! weights, where the references train it with weights from their copies.
//!
//! # Encoder feature sizes
//!
//! [`agm_core::MultimodalModel`] does not report the size of its encoder features, and the
//! heads must exist before training (the optimizer is built from [`Modulator::attach`]). Give
//! the sizes with [`GBlend::with_feature_dims`]; [`encoder_feature_dims`] measures them from one
//! batch.
//!

use agm_core::{BatchSource, ForwardOpts, MultimodalModel, NamedVar};
use candle_core::{Device, Result, Tensor};
use serde::{Deserialize, Serialize};

pub use crate::shared::encoder_feature_dims;
use crate::shared::{for_each_batch, mix_seed, require_two, scalar_f64, seeded_permutation};
use crate::uni_heads::UniHeads;
use crate::{EpochAction, EpochCx, MethodError, Modulator, Objective, StepCx, TrainStartCx};

// ------------------------------------------------------------------------------------------
// G-Blending
// ------------------------------------------------------------------------------------------

/// Floor on `|ΔO|` and on `O` in the weight formulas (MultiBench's `0.0001`).
pub const GBLEND_O_FLOOR: f64 = 1e-4;

/// Which overfitting-to-generalisation ratio G-Blending estimates (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum GBlendEstimator {
    /// `|ΔG| / ΔO²` between consecutive super-epoch boundaries (the paper).
    Delta,
    /// `L^V / O²` at the boundary (MultiBench's default).
    Final,
}

impl GBlendEstimator {
    /// The names a config file accepts for `gblend.estimator`.
    pub const NAMES: &'static [&'static str] = &["delta", "final"];

    /// The estimator's name in a config file (`delta`, `final`).
    pub fn as_str(self) -> &'static str {
        match self {
            GBlendEstimator::Delta => "delta",
            GBlendEstimator::Final => "final",
        }
    }
}

impl TryFrom<String> for GBlendEstimator {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.as_str() {
            "delta" => Ok(GBlendEstimator::Delta),
            "final" => Ok(GBlendEstimator::Final),
            _ => Err(format!("gblend.estimator = `{s}` is not known; allowed: {}", GBlendEstimator::NAMES.join(", "))),
        }
    }
}

impl From<GBlendEstimator> for String {
    fn from(e: GBlendEstimator) -> String {
        e.as_str().to_string()
    }
}

/// G-Blending settings. Use a named preset; in a config file missing keys take the AV-Digits
/// preset's values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default = "GBlendConfig::av_digits")]
pub struct GBlendConfig {
    /// Epochs per super-epoch: the weights are re-estimated at the end of epochs `S, 2S, …`.
    pub super_epoch: usize,
    /// `delta` (the paper's `ΔG/ΔO²`) or `final` (MultiBench's default `L^V/O²`).
    pub estimator: GBlendEstimator,
    /// Training samples the train loss is measured on (a fixed seeded subset); `None`: all.
    #[serde(with = "agm_core::serde_none")]
    pub train_samples: Option<usize>,
    /// Batch size of the measurements.
    pub eval_batch_size: usize,
    /// Every weight is at least this (see the module docs); in `(0, 1/(M+1))`.
    pub weight_floor: f64,
}

impl GBlendConfig {
    /// The paper's estimator (`ΔG/ΔO²`) with MultiBench's super-epoch of 20 epochs.
    pub fn paper() -> Self {
        Self {
            super_epoch: 20,
            estimator: GBlendEstimator::Delta,
            train_samples: None,
            eval_batch_size: 256,
            weight_floor: 1e-3,
        }
    }

    /// MultiBench's defaults: `gb_epoch = 20`, `delta = False`.
    pub fn multibench() -> Self {
        Self { estimator: GBlendEstimator::Final, ..Self::paper() }
    }

    /// The embedded AV-Digits default: the paper's estimator re-estimated every 2 epochs (runs are
    /// short), train loss on at most 2000 samples.
    pub fn av_digits() -> Self {
        Self { super_epoch: 2, train_samples: Some(2000), ..Self::paper() }
    }

    /// The preset names [`GBlendConfig::preset`] accepts.
    pub const PRESETS: &'static [&'static str] = &["paper", "multibench", "av-digits"];

    /// The preset called `name` (one of [`GBlendConfig::PRESETS`]); `None` for any other name.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "paper" => Some(Self::paper()),
            "multibench" => Some(Self::multibench()),
            "av-digits" => Some(Self::av_digits()),
            _ => None,
        }
    }

    /// Checks every field; the error names the field and the allowed values.
    pub fn validate(&self) -> std::result::Result<(), MethodError> {
        if self.super_epoch == 0 {
            return Err("gblend.super_epoch must be >= 1 (epochs between weight estimates), got 0".into());
        }
        if self.train_samples == Some(0) {
            return Err("gblend.train_samples must be >= 1 when set (omit it to use the whole training split)".into());
        }
        if self.eval_batch_size == 0 {
            return Err("gblend.eval_batch_size must be >= 1, got 0".into());
        }
        let f = self.weight_floor;
        if !(f.is_finite() && f > 0.0 && f < 1.0 / 3.0) {
            return Err(format!("gblend.weight_floor must be in (0, 1/(M+1)) (below 1/3 for M = 2), got {f}").into());
        }
        Ok(())
    }
}

/// The losses of every output at one super-epoch boundary, in the order of the weights:
/// modality `0..M`, then the fused output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GBlendMeasure {
    /// 1-based epoch at whose end the losses were measured.
    pub epoch: usize,
    /// `L^T_k`: each output's mean cross-entropy on the training split (or its fixed subset).
    #[serde(with = "agm_core::serde_f64::seq")]
    pub train_loss: Vec<f64>,
    /// `L^V_k`: each output's mean cross-entropy on the held-out split.
    #[serde(with = "agm_core::serde_f64::seq")]
    pub holdout_loss: Vec<f64>,
}

impl GBlendMeasure {
    /// `O_k = L^V_k − L^T_k`.
    pub fn overfitting(&self) -> Vec<f64> {
        self.holdout_loss.iter().zip(&self.train_loss).map(|(v, t)| v - t).collect()
    }
}

/// The blend weights from one (or two) measurements, normalised and floored; `None` when the
/// estimator cannot produce weights (no earlier measurement for `delta`, or raw weights that
/// are all zero or not finite). See the module docs for the formulas.
pub fn gblend_weights(
    estimator: GBlendEstimator,
    before: Option<&GBlendMeasure>,
    after: &GBlendMeasure,
    weight_floor: f64,
) -> Option<Vec<f64>> {
    let o_after = after.overfitting();
    let raw: Vec<f64> = match estimator {
        GBlendEstimator::Delta => {
            let before = before?;
            let o_before = before.overfitting();
            (0..o_after.len())
                .map(|k| {
                    let dg = before.holdout_loss[k] - after.holdout_loss[k];
                    let d_o = (o_after[k] - o_before[k]).abs().max(GBLEND_O_FLOOR);
                    dg.abs() / (d_o * d_o)
                })
                .collect()
        }
        GBlendEstimator::Final => (0..o_after.len())
            .map(|k| {
                let o = o_after[k].max(GBLEND_O_FLOOR);
                after.holdout_loss[k].abs() / (o * o)
            })
            .collect(),
    };
    let sum: f64 = raw.iter().sum();
    if !(sum.is_finite() && sum > 0.0) || raw.iter().any(|w| !w.is_finite()) {
        return None;
    }
    let n = raw.len() as f64;
    Some(raw.iter().map(|w| weight_floor + (1.0 - n * weight_floor) * (w / sum)).collect())
}

/// What the last super-epoch boundary did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GBlendEstimate {
    /// The losses measured at this boundary.
    pub measure: GBlendMeasure,
    /// The new weights, or `None` when the previous ones stayed.
    pub weights: Option<Vec<f64>>,
}

/// The checkpointed state.
#[derive(Serialize, Deserialize)]
struct GBlendState {
    #[serde(with = "agm_core::serde_f64::seq")]
    weights: Vec<f64>,
    last_measure: Option<GBlendMeasure>,
    /// Absent from checkpoints written before it was kept.
    #[serde(default)]
    last_estimate: Option<GBlendEstimate>,
}

/// Gradient blending with method-owned uni-modal heads (see the module docs).
#[derive(Debug)]
pub struct GBlend {
    cfg: GBlendConfig,
    m: usize,
    seed: u64,
    feature_dims: Option<Vec<usize>>,
    heads: Option<UniHeads>,
    /// Modalities `0..M`, then the fused output.
    weights: Vec<f64>,
    last_measure: Option<GBlendMeasure>,
    last_estimate: Option<GBlendEstimate>,
}

impl GBlend {
    /// G-Blending over `m` modalities (at least 2).
    pub fn new(cfg: GBlendConfig, m: usize) -> std::result::Result<Self, MethodError> {
        cfg.validate()?;
        require_two("gblend", m)?;
        if (m as f64 + 1.0) * cfg.weight_floor >= 1.0 {
            return Err(format!(
                "gblend.weight_floor ({}) times the {} outputs (M + 1) must be below 1",
                cfg.weight_floor,
                m + 1
            )
            .into());
        }
        Ok(Self {
            cfg,
            m,
            seed: 0,
            feature_dims: None,
            heads: None,
            weights: vec![1.0 / (m as f64 + 1.0); m + 1],
            last_measure: None,
            last_estimate: None,
        })
    }

    /// The run's seed: seeds the heads' initial values and the train-loss subset.
    pub fn with_run_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The flattened size of each encoder feature (see [`encoder_feature_dims`]); required
    /// before [`Modulator::attach`].
    pub fn with_feature_dims(mut self, dims: Vec<usize>) -> std::result::Result<Self, MethodError> {
        if dims.len() != self.m {
            return Err(format!("gblend: {} encoder feature sizes for {} modalities", dims.len(), self.m).into());
        }
        self.feature_dims = Some(dims);
        Ok(self)
    }

    /// G-Blending cannot run without a held-out split; drivers check this before training.
    pub const fn requires_holdout() -> bool {
        true
    }

    /// The settings it was built with.
    pub fn config(&self) -> &GBlendConfig {
        &self.cfg
    }

    /// The weights in force: modality `0..M`, then the fused output.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// The last super-epoch boundary's losses and weights; `None` until a boundary has passed
    /// (checkpoints keep it, so a resumed run reports it too).
    pub fn last_estimate(&self) -> Option<&GBlendEstimate> {
        self.last_estimate.as_ref()
    }

    fn heads(&self) -> Result<&UniHeads> {
        self.heads.as_ref().ok_or_else(|| candle_core::Error::Msg("gblend: attach was not called".into()))
    }

    /// Mean cross-entropy of every output (modalities, then fused) over `indices` of `source`.
    fn measure_losses(
        &self,
        model: &dyn MultimodalModel,
        source: &dyn BatchSource,
        indices: &[usize],
        device: &Device,
    ) -> Result<Vec<f64>> {
        let heads = self.heads()?;
        let m = self.m;
        let mut sums = vec![0.0f64; m + 1];
        let mut n = 0usize;
        for_each_batch(source, indices, self.cfg.eval_batch_size, device, |batch| {
            let out = model.forward(&batch.inputs, &ForwardOpts::eval(m))?;
            let b = batch.len() as f64;
            for (x, logits) in heads.forward_all(&out.encoder_features)?.iter().enumerate() {
                sums[x] += b * scalar_f64(&candle_nn::loss::cross_entropy(&logits.detach(), &batch.labels)?)?;
            }
            sums[m] += b * scalar_f64(&candle_nn::loss::cross_entropy(&out.logits.detach(), &batch.labels)?)?;
            n += batch.len();
            Ok(true)
        })?;
        if n == 0 {
            candle_core::bail!("gblend: cannot measure losses on an empty split");
        }
        Ok(sums.into_iter().map(|s| s / n as f64).collect())
    }

    /// Every output's losses on the training samples and the held-out split, at `epoch`.
    fn measure(
        &self,
        model: &dyn MultimodalModel,
        train: &dyn BatchSource,
        holdout: Option<&dyn BatchSource>,
        epoch: usize,
        device: &Device,
    ) -> Result<GBlendMeasure> {
        let holdout = holdout.ok_or_else(|| {
            crate::shared::no_holdout("gblend", "needs a held-out split to estimate its blend weights")
        })?;
        let holdout_idx: Vec<usize> = (0..holdout.len()).collect();
        Ok(GBlendMeasure {
            epoch,
            train_loss: self.measure_losses(model, train, &self.train_indices(train.len()), device)?,
            holdout_loss: self.measure_losses(model, holdout, &holdout_idx, device)?,
        })
    }

    fn train_indices(&self, n: usize) -> Vec<usize> {
        match self.cfg.train_samples {
            Some(k) if k < n => {
                let mut idx = seeded_permutation(n, mix_seed(self.seed, 0x6762_6c65_6e64));
                idx.truncate(k);
                idx.sort_unstable();
                idx
            }
            _ => (0..n).collect(),
        }
    }
}

impl Modulator for GBlend {
    fn name(&self) -> &'static str {
        "gblend"
    }

    fn attach(&mut self, model: &dyn MultimodalModel) -> Result<Vec<NamedVar>> {
        if model.modalities().len() != self.m {
            candle_core::bail!(
                "gblend was built for {} modalities, the model has {}",
                self.m,
                model.modalities().len()
            );
        }
        let dims = self.feature_dims.as_ref().ok_or_else(|| {
            candle_core::Error::Msg(
                "gblend needs the encoder feature sizes to build its uni-modal heads: call \
                 GBlend::with_feature_dims (agm_modulation::encoder_feature_dims measures them from one batch)"
                    .into(),
            )
        })?;
        let heads = UniHeads::create("gblend", model, dims, self.seed)?;
        let vars = heads.named_vars();
        self.heads = Some(heads);
        Ok(vars)
    }

    fn objective(&mut self, cx: &StepCx<'_>) -> Result<Objective> {
        let full = &cx.forward.full;
        let uni = self.heads()?.forward_all(&full.encoder_features)?;
        let labels = &cx.batch.labels;
        let mut loss = candle_nn::loss::cross_entropy(&full.logits, labels)?.affine(self.weights[self.m], 0.0)?;
        for (logits, &w) in uni.iter().zip(&self.weights) {
            loss = (loss + candle_nn::loss::cross_entropy(logits, labels)?.affine(w, 0.0)?)?;
        }
        Ok(Objective { loss, output: full.logits.clone(), mono: Some(uni.iter().map(Tensor::detach).collect()) })
    }

    /// The untrained model's losses, the `N` of the first estimate, so that `ΔG/ΔO²` is first
    /// estimated at the end of the first super-epoch (`Final` needs no earlier measurement).
    fn on_train_start(&mut self, cx: &TrainStartCx<'_>) -> Result<()> {
        if self.cfg.estimator == GBlendEstimator::Delta {
            self.last_measure = Some(self.measure(cx.model, cx.train, cx.holdout, 0, cx.device)?);
        }
        Ok(())
    }

    fn on_epoch_end(&mut self, cx: &EpochCx<'_>) -> Result<Vec<EpochAction>> {
        // Without a held-out split, `measure` refuses at the first epoch's end at the latest.
        if cx.holdout.is_some() && !cx.epoch.is_multiple_of(self.cfg.super_epoch) {
            return Ok(Vec::new());
        }
        let measure = self.measure(cx.model, cx.train, cx.holdout, cx.epoch, cx.device)?;
        let weights = gblend_weights(self.cfg.estimator, self.last_measure.as_ref(), &measure, self.cfg.weight_floor);
        match &weights {
            Some(w) => self.weights.clone_from(w),
            None if self.last_measure.is_some() || self.cfg.estimator == GBlendEstimator::Final => {
                tracing::warn!(epoch = cx.epoch, "gblend: degenerate weight estimate; keeping the previous weights")
            }
            None => {}
        }
        self.last_measure = Some(measure.clone());
        self.last_estimate = Some(GBlendEstimate { measure, weights });
        Ok(Vec::new())
    }

    fn coefficients(&self) -> Option<Vec<f64>> {
        Some(self.weights.clone())
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(GBlendState {
            weights: self.weights.clone(),
            last_measure: self.last_measure.clone(),
            last_estimate: self.last_estimate.clone(),
        })
        .expect("plain numbers serialize")
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let s: GBlendState = serde_json::from_value(state.clone())
            .map_err(|e| candle_core::Error::Msg(format!("gblend state in checkpoint: {e}")))?;
        let n = self.m + 1;
        let measure_ok = |mm: &GBlendMeasure| mm.train_loss.len() == n && mm.holdout_loss.len() == n;
        let lens_ok = s.weights.len() == n
            && s.last_measure.as_ref().is_none_or(measure_ok)
            && s.last_estimate
                .as_ref()
                .is_none_or(|e| measure_ok(&e.measure) && e.weights.as_ref().is_none_or(|w| w.len() == n));
        if !lens_ok {
            candle_core::bail!("gblend state in checkpoint is not for {} modalities", self.m);
        }
        self.weights = s.weights;
        self.last_measure = s.last_measure;
        self.last_estimate = s.last_estimate;
        Ok(())
    }
}

impl crate::Method for GBlend {
    const NAME: &'static str = "gblend";
    const HOOKS: crate::Hooks = crate::Hooks::OBJECTIVE;
    type Config = GBlendConfig;

    fn preset(_dataset: &str) -> GBlendConfig {
        GBlendConfig::av_digits()
    }

    fn validate(config: &GBlendConfig) -> std::result::Result<(), MethodError> {
        config.validate()
    }

    fn build(config: &GBlendConfig, cx: &crate::BuildCx<'_>) -> std::result::Result<Self, MethodError> {
        crate::shared::require_holdout(cx, "gblend", "estimates its blend weights on a held-out split")?;
        let g = GBlend::new(config.clone(), cx.modalities())?.with_run_seed(cx.seed);
        g.with_feature_dims(cx.feature_dims(Self::NAME)?)
    }
}
