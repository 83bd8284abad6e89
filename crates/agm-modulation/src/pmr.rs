//! PMR, prototypical modal rebalance (Fan et al., "PMR: Prototypical Modal Rebalance for
//! Multimodal Learning", CVPR 2023), as a [`Modulator`], following the official code
//! (`main_Prototype_grad.py`, `--modulation Proto`).
//!
//! # Prototypes (`calculate_prototype`)
//!
//! For every modality `m` and class `k`, `c_m[k]` is the mean encoder feature
//! (`ModelOutput::encoder_features[m]`, flattened; evaluation mode, no gradients) of training
//! samples of class `k`. They are computed **from the training split only**
//! ([`EpochCx::train`]; the held-out and validation splits are never read), at the end of every
//! epoch for the next one, which is the model state the official code computes them from at the
//! start of the next epoch. The official code reads the first tenth of the batches of its
//! shuffled loader (at least one batch); here a fresh seeded random subset of
//! `ceil(sample_ratio · N)` samples is read each time (extended until every class has a sample,
//! or the split is exhausted). With momentum `μ`, `c ← (1 − μ)·c_new + μ·c_old` (see below for
//! when). A class with no training sample keeps its previous prototype (zeros at first; the
//! official code divides by zero there).
//!
//! As in the official code, the first prototypes are computed before epoch 1, from the
//! untrained model ([`Modulator::on_train_start`]; [`Pmr::prime`] for a driver of its own), so
//! the prototype terms act from the first step. The momentum mixes in the previous prototypes
//! only from the computation after epoch 2 on: the official loop passes its 0-based epoch to
//! `calculate_prototype`, which skips the momentum for epoch `<= 0`, i.e. before training and
//! after the first epoch.
//!
//! # One step (`train_epoch`)
//!
//! - `P_m[i, k] = −‖h_m,i − c_m[k]‖₂` (prototype logits, the official distance exactly; a
//!   feature exactly on a prototype, which ReLU features reach on an all-zero prototype, gets a
//!   zero gradient there instead of the reference's `sqrt` backward at 0, NaN unless a ReLU
//!   masks it);
//! - `s_m = Σ_i softmax(P_m)_i[y_i]` (a sum over the batch, in f64);
//! - inside the modulation window (1-based, inclusive epochs):
//!   `L = CE(T, y) + Σ_m β_m · CE(P_m, y)` with `β_m = alpha` when `s_m < max_j s_j` and 0
//!   otherwise. For `M = 2` this is the official rule: `ρ = s_a/s_v > 1` adds `alpha·CE(P_v)`,
//!   `ρ < 1` adds `alpha·CE(P_a)`, `ρ = 1` adds nothing. For `M > 2` (our choice) every modality
//!   behind the leading one gets the prototype term; the official code has no `M > 2` rule.
//! - outside the window `L = CE(T, y)`.
//!
//! The paper's prototype-entropy regulariser is not in the official script and not here.

use crate::MethodError;
use agm_core::{BatchSource, ForwardOpts, MultimodalModel};
use candle_core::{DType, Device, Result, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::shared::{labels_u32, mix_seed, require_two, scalar_f64, seeded_permutation};
use crate::{shapley, EpochAction, EpochCx, Modulator, Objective, StepCx, TrainStartCx};

/// PMR settings. Use a named preset; in a config file missing keys take the AV-Digits preset's
/// values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default = "PmrConfig::av_digits")]
pub struct PmrConfig {
    /// Weight of the weak modalities' prototype cross-entropy; > 0.
    pub alpha: f64,
    /// Prototype momentum `μ` in `[0, 1)` (`c ← (1 − μ)·c_new + μ·c_old`).
    pub momentum: f64,
    /// Fraction of the training split the prototypes are computed from, in `(0, 1]`.
    pub sample_ratio: f64,
    /// First epoch (1-based, inclusive) with the prototype terms.
    pub window_start: usize,
    /// Last epoch (inclusive); `None` means until the end.
    #[serde(with = "agm_core::serde_none")]
    pub window_end: Option<usize>,
    /// Batch size of the prototype computation.
    pub eval_batch_size: usize,
}

impl PmrConfig {
    /// The official script's argument defaults: alpha 1, momentum 0.2, a tenth of the training
    /// batches, modulation in its 0-based epochs 0..=100, i.e. 1-based epochs 1..=101.
    pub fn official() -> Self {
        Self {
            alpha: 1.0,
            momentum: 0.2,
            sample_ratio: 0.1,
            window_start: 1,
            window_end: Some(101),
            eval_batch_size: 256,
        }
    }

    /// The embedded AV-Digits default: alpha 1, no momentum (as the official run scripts), a
    /// tenth of the training split, over the whole run.
    pub fn av_digits() -> Self {
        Self { momentum: 0.0, window_start: 0, window_end: None, ..Self::official() }
    }

    /// The preset names [`PmrConfig::preset`] accepts.
    pub const PRESETS: &'static [&'static str] = &["official", "av-digits"];

    /// The preset called `name` (one of [`PmrConfig::PRESETS`]); `None` for any other name.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "official" => Some(Self::official()),
            "av-digits" => Some(Self::av_digits()),
            _ => None,
        }
    }

    /// Whether the prototype terms are in the loss in 1-based epoch `epoch`: from `window_start`
    /// through `window_end` (no end when it is `None`).
    pub fn in_window(&self, epoch: usize) -> bool {
        crate::shared::in_window(self.window_start, self.window_end, epoch)
    }

    /// Checks every field; the error names the field and the allowed values.
    pub fn validate(&self) -> std::result::Result<(), MethodError> {
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(format!("pmr.alpha must be a finite number > 0, got {}", self.alpha).into());
        }
        if !(self.momentum >= 0.0 && self.momentum < 1.0) {
            return Err(format!("pmr.momentum must be in [0, 1), got {}", self.momentum).into());
        }
        if !(self.sample_ratio > 0.0 && self.sample_ratio <= 1.0) {
            return Err(format!("pmr.sample_ratio must be in (0, 1], got {}", self.sample_ratio).into());
        }
        crate::shared::check_window("pmr", self.window_start, self.window_end)?;
        if self.eval_batch_size == 0 {
            return Err("pmr.eval_batch_size must be >= 1, got 0".into());
        }
        Ok(())
    }
}

/// Per-class prototypes of every modality, in f64.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prototypes {
    /// Number of classes `K`: the rows of each modality's prototype matrix.
    pub classes: usize,
    /// Feature size of each modality.
    pub dims: Vec<usize>,
    /// `values[m]` is `classes × dims[m]`, row-major.
    #[serde(with = "agm_core::serde_f64::nested")]
    pub values: Vec<Vec<f64>>,
    /// Training samples of each class the last computation read.
    pub counts: Vec<usize>,
    /// 1-based epoch after which they were computed (0: before training, [`Pmr::prime`]).
    pub epoch: usize,
}

impl Prototypes {
    /// Modality `m`'s prototypes as a `[classes, dims[m]]` tensor.
    pub fn tensor(&self, m: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        Tensor::from_slice(&self.values[m], (self.classes, self.dims[m]), device)?.to_dtype(dtype)
    }
}

/// The numbers of one PMR step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PmrStepStats {
    /// `s_m = Σ_i softmax(P_m)_i[y_i]`.
    pub scores: Vec<f64>,
    /// `β_m` (alpha for the modalities behind the leading one, inside the window).
    pub beta: Vec<f64>,
    /// `CE(P_m, y)` for every modality.
    pub proto_loss: Vec<f64>,
}

/// The checkpointed state.
#[derive(Serialize, Deserialize)]
struct PmrState {
    prototypes: Option<Prototypes>,
    #[serde(with = "agm_core::serde_f64::seq")]
    beta: Vec<f64>,
}

/// Prototypical modal rebalance (see the module docs).
#[derive(Debug)]
pub struct Pmr {
    cfg: PmrConfig,
    m: usize,
    seed: u64,
    protos: Option<Prototypes>,
    /// The prototypes as tensors of the features' dtype and device.
    cache: Option<Vec<Tensor>>,
    beta: Vec<f64>,
    last: Option<PmrStepStats>,
}

impl Pmr {
    /// PMR over `m` modalities (at least 2).
    pub fn new(cfg: PmrConfig, m: usize) -> std::result::Result<Self, MethodError> {
        cfg.validate()?;
        require_two("pmr", m)?;
        Ok(Self { cfg, m, seed: 0, protos: None, cache: None, beta: vec![0.0; m], last: None })
    }

    /// The run's seed: seeds which training samples the prototypes are computed from.
    pub fn with_run_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The settings it was built with.
    pub fn config(&self) -> &PmrConfig {
        &self.cfg
    }

    /// The current prototypes; `None` until the first computation ([`Pmr::prime`], or the
    /// trainer's [`Modulator::on_train_start`]).
    pub fn prototypes(&self) -> Option<&Prototypes> {
        self.protos.as_ref()
    }

    /// The numbers of the last step with prototype terms; `None` before one and after a step
    /// without them (outside the window). Not saved in checkpoints.
    pub fn last_stats(&self) -> Option<&PmrStepStats> {
        self.last.as_ref()
    }

    /// Computes the first prototypes from the training split before training (the official
    /// code's epoch-0 prototypes, from the untrained model). The trainer does this itself
    /// ([`Modulator::on_train_start`]).
    pub fn prime(&mut self, model: &dyn MultimodalModel, train: &dyn BatchSource, device: &Device) -> Result<()> {
        self.update_prototypes(model, train, device, 0)
    }

    /// Recomputes the prototypes from `train` (see the module docs), mixing with the previous
    /// ones by the momentum.
    fn update_prototypes(
        &mut self,
        model: &dyn MultimodalModel,
        train: &dyn BatchSource,
        device: &Device,
        epoch: usize,
    ) -> Result<()> {
        let m = self.m;
        if model.modalities().len() != m {
            candle_core::bail!("pmr was built for {m} modalities, the model has {}", model.modalities().len());
        }
        let n = train.len();
        if n == 0 {
            candle_core::bail!("pmr: the training split is empty, no prototypes can be computed");
        }
        let k = model.num_classes();
        let target = ((self.cfg.sample_ratio * n as f64).ceil() as usize).clamp(1, n);
        let order = seeded_permutation(n, mix_seed(self.seed, 0x706d_7200 ^ epoch as u64));
        let mut sums: Vec<Vec<f64>> = Vec::new();
        let mut dims: Vec<usize> = Vec::new();
        let mut counts = vec![0usize; k];
        // The first `target` samples of the permutation, then more only while a class is missing.
        let bs = self.cfg.eval_batch_size;
        let first: Vec<&[usize]> = order[..target].chunks(bs).collect();
        let extra: Vec<&[usize]> = order[target..].chunks(bs).collect();
        for (i, chunk) in first.iter().chain(extra.iter()).enumerate() {
            if i >= first.len() && !counts.contains(&0) {
                break;
            }
            let batch = train.batch(chunk, device)?;
            let out = model.forward(&batch.inputs, &ForwardOpts::eval(m))?;
            let labels = labels_u32(&batch)?;
            if dims.is_empty() {
                dims = out.encoder_features.iter().map(|f| f.flatten_from(1)?.dim(1)).collect::<Result<_>>()?;
                sums = dims.iter().map(|&d| vec![0.0; k * d]).collect();
            }
            if let Some(&y) = labels.iter().find(|&&y| y as usize >= k) {
                candle_core::bail!("pmr: label {y} is out of range for {k} classes");
            }
            for (x, f) in out.encoder_features.iter().enumerate() {
                let rows = f.detach().flatten_from(1)?.to_dtype(DType::F64)?.to_vec2::<f64>()?;
                let d = dims[x];
                for (row, &y) in rows.iter().zip(&labels) {
                    let y = y as usize;
                    for (s, v) in sums[x][y * d..(y + 1) * d].iter_mut().zip(row) {
                        *s += v;
                    }
                }
            }
            for &y in &labels {
                counts[y as usize] += 1;
            }
        }
        let previous = self.protos.as_ref().filter(|p| p.classes == k && p.dims == dims);
        // The official code mixes nothing in before training or after the first epoch.
        let old = previous.filter(|_| epoch >= 2);
        let missing: Vec<usize> = (0..k).filter(|&c| counts[c] == 0).collect();
        if !missing.is_empty() {
            tracing::warn!(?missing, "pmr: classes without training samples keep their previous prototypes");
        }
        let mu = self.cfg.momentum;
        let values = (0..m)
            .map(|x| {
                let d = dims[x];
                let mut v = vec![0.0; k * d];
                for (c, &count) in counts.iter().enumerate().take(k) {
                    for j in 0..d {
                        let i = c * d + j;
                        v[i] = if count == 0 {
                            previous.map_or(0.0, |p| p.values[x][i])
                        } else {
                            let new = sums[x][i] / count as f64;
                            match old {
                                Some(p) => (1.0 - mu) * new + mu * p.values[x][i],
                                None => new,
                            }
                        };
                    }
                }
                v
            })
            .collect();
        self.protos = Some(Prototypes { classes: k, dims, values, counts, epoch });
        self.cache = None;
        Ok(())
    }

    fn proto_tensors(&mut self, like: &Tensor) -> Result<Option<Vec<Tensor>>> {
        let Some(p) = &self.protos else { return Ok(None) };
        let stale = match &self.cache {
            Some(c) => c[0].dtype() != like.dtype() || !c[0].device().same_device(like.device()),
            None => true,
        };
        if stale {
            self.cache =
                Some((0..self.m).map(|x| p.tensor(x, like.dtype(), like.device())).collect::<Result<Vec<_>>>()?);
        }
        Ok(self.cache.clone())
    }
}

/// Prototype logits `P[i, k] = −‖h_i − c_k‖₂` for features `h` `[B, …]` and prototypes `c`
/// `[K, D]`, with a zero gradient where a feature sits exactly on a prototype.
pub fn prototype_logits(features: &Tensor, prototypes: &Tensor) -> Result<Tensor> {
    let h = features.flatten_from(1)?;
    let (d, dp) = (h.dim(1)?, prototypes.dim(1)?);
    if d != dp {
        candle_core::bail!("pmr: features have {d} dimensions but the prototypes {dp}");
    }
    let diff = h.unsqueeze(1)?.broadcast_sub(&prototypes.unsqueeze(0)?)?;
    let d2 = diff.sqr()?.sum(D::Minus1)?;
    // The square root of exact zeros is taken from a constant, so no 1/(2·0) reaches the graph;
    // everywhere else the value is the official one to the last bit.
    let on = d2.eq(0.0)?;
    let safe = on.where_cond(&d2.ones_like()?, &d2)?;
    on.where_cond(&d2.zeros_like()?, &safe.sqrt()?)?.neg()
}

impl Modulator for Pmr {
    fn name(&self) -> &'static str {
        "pmr"
    }

    fn objective(&mut self, cx: &StepCx<'_>) -> Result<Objective> {
        let full = &cx.forward.full;
        let labels = &cx.batch.labels;
        let output = full.logits.clone();
        let mut loss = candle_nn::loss::cross_entropy(&output, labels)?;
        let protos = if self.cfg.in_window(cx.epoch) { self.proto_tensors(&full.logits)? } else { None };
        let Some(protos) = protos else {
            self.beta = vec![0.0; self.m];
            self.last = None;
            return Ok(Objective { loss, output, mono: None });
        };
        if full.encoder_features.len() != self.m {
            candle_core::bail!(
                "pmr: the model returned {} encoder features for {} modalities",
                full.encoder_features.len(),
                self.m
            );
        }
        let y = labels_u32(cx.batch)?;
        let logits = full
            .encoder_features
            .iter()
            .zip(&protos)
            .map(|(h, c)| prototype_logits(h, c))
            .collect::<Result<Vec<_>>>()?;
        let scores: Vec<f64> =
            logits.iter().map(|p| Ok(shapley::true_class_probs(p, &y)?.iter().sum())).collect::<Result<_>>()?;
        let lead = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let beta: Vec<f64> = scores.iter().map(|&s| if s < lead { self.cfg.alpha } else { 0.0 }).collect();
        let mut proto_loss = Vec::with_capacity(self.m);
        for (p, &b) in logits.iter().zip(&beta) {
            let ce = candle_nn::loss::cross_entropy(p, labels)?;
            proto_loss.push(scalar_f64(&ce)?);
            if b > 0.0 {
                loss = (loss + ce.affine(b, 0.0)?)?;
            }
        }
        self.beta.clone_from(&beta);
        self.last = Some(PmrStepStats { scores, beta, proto_loss });
        Ok(Objective { loss, output, mono: Some(logits.iter().map(Tensor::detach).collect()) })
    }

    /// The first prototypes, from the untrained model.
    fn on_train_start(&mut self, cx: &TrainStartCx<'_>) -> Result<()> {
        self.prime(cx.model, cx.train, cx.device)
    }

    /// Recomputes the prototypes from the training split (only) for the next epoch.
    fn on_epoch_end(&mut self, cx: &EpochCx<'_>) -> Result<Vec<EpochAction>> {
        self.update_prototypes(cx.model, cx.train, cx.device, cx.epoch)?;
        Ok(Vec::new())
    }

    /// `β_m` in force at the last step.
    fn coefficients(&self) -> Option<Vec<f64>> {
        Some(self.beta.clone())
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(PmrState { prototypes: self.protos.clone(), beta: self.beta.clone() })
            .expect("plain numbers serialize")
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let s: PmrState = serde_json::from_value(state.clone())
            .map_err(|e| candle_core::Error::Msg(format!("pmr state in checkpoint: {e}")))?;
        let bad = |p: &Prototypes| {
            p.dims.len() != self.m
                || p.values.len() != self.m
                || p.counts.len() != p.classes
                || p.values.iter().zip(&p.dims).any(|(v, d)| v.len() != p.classes * d)
        };
        if s.beta.len() != self.m || s.prototypes.as_ref().is_some_and(bad) {
            candle_core::bail!("pmr state in checkpoint is not for {} modalities", self.m);
        }
        self.protos = s.prototypes;
        self.beta = s.beta;
        self.cache = None;
        Ok(())
    }
}

impl crate::Method for Pmr {
    const NAME: &'static str = "pmr";
    const HOOKS: crate::Hooks = crate::Hooks::OBJECTIVE;
    type Config = PmrConfig;

    fn preset(_dataset: &str) -> PmrConfig {
        PmrConfig::av_digits()
    }

    fn validate(config: &PmrConfig) -> std::result::Result<(), MethodError> {
        config.validate()
    }

    fn build(config: &PmrConfig, cx: &crate::BuildCx<'_>) -> std::result::Result<Self, MethodError> {
        Ok(Pmr::new(config.clone(), cx.modalities())?.with_run_seed(cx.seed))
    }
}
