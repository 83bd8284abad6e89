//! MSLR, modality-specific learning rates (the AGM reference's baseline), as an epoch-level schedule
//! that drives per-modality gradient multipliers.
//!
//! Each modality `x` has a fixed initial multiplier `init_x` and a ratio `r_x` (1 at the
//! start). During an epoch every gradient of modality `x`'s parameter group
//! (`param_groups().per_modality[x]`, never a name rule) is multiplied by `init_x · r_x` after
//! backward. At the end of epoch `e`, with `a_e` the modality's validation accuracy: its own
//! head's on models that sum one head per modality (the reference's `_Sum` models, which the
//! recipes use), its Shapley output's elsewhere ([`EpochCx::uni_modal_accuracy`]):
//!
//! - while the memory holds fewer than `window` (5) values, `a_e` is appended and `r_x` stays;
//! - otherwise `r_x = a_e / mean(memory)` (the memory before this update), then the oldest value
//!   is dropped and `a_e` appended.
//!
//! The new ratio takes effect in epoch `e + 1`. Gradients are scaled only in the epochs of the
//! modulation window (`window_start..=window_end`, the reference's `--modulation_starts` /
//! `--modulation_ends`); the end-of-epoch updates run in every epoch, as in the reference. As in
//! the reference, weight decay (added inside the optimizer) is not scaled, so this is not exactly
//! a learning-rate change. A memory whose mean is not a positive finite number leaves the ratio
//! unchanged (the reference would divide by zero).

use crate::MethodError;
use std::collections::VecDeque;

use agm_core::MultimodalModel;
use candle_core::backprop::GradStore;
use candle_core::Result;
use serde::{Deserialize, Serialize};

use crate::{EpochAction, EpochCx, Modulator, StepCx};

/// MSLR settings. Use a named preset; in a config file missing keys take the AV-Digits preset's
/// values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default = "MslrConfig::av_digits")]
pub struct MslrConfig {
    /// Initial multiplier per modality, in the model's modality order.
    pub init: Vec<f64>,
    /// How many past accuracies the ratio compares with (the memory's length).
    pub window: usize,
    /// First epoch (1-based, inclusive) whose gradients are scaled; before it they are not.
    pub window_start: usize,
    /// Last such epoch (inclusive); `None`: until the end. After it gradients are not scaled
    /// (the reference's `train()` skips MSLR outside its window; its default window is 0..=20,
    /// the presets' is the whole run, as for AGM).
    #[serde(with = "agm_core::serde_none")]
    pub window_end: Option<usize>,
}

impl MslrConfig {
    /// AV-MNIST (audio, visual): 1.3 / 0.7.
    pub fn avmnist() -> Self {
        Self { init: vec![1.3, 0.7], window: 5, window_start: 0, window_end: None }
    }

    /// CREMA-D (audio, visual): 0.9 / 1.1.
    pub fn cremad() -> Self {
        Self { init: vec![0.9, 1.1], window: 5, window_start: 0, window_end: None }
    }

    /// UR-Funny (audio, visual, text): 0.9 / 1.4 / 0.7.
    pub fn urfunny() -> Self {
        Self { init: vec![0.9, 1.4, 0.7], window: 5, window_start: 0, window_end: None }
    }

    /// The embedded AV-Digits default: AV-MNIST's values (same modalities, audio then visual).
    pub fn av_digits() -> Self {
        Self::avmnist()
    }

    /// The preset names [`MslrConfig::preset`] accepts.
    pub const PRESETS: &'static [&'static str] = &["avmnist", "cremad", "urfunny", "av-digits"];

    /// The preset called `name` (one of [`MslrConfig::PRESETS`]); `None` for any other name.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "avmnist" => Some(Self::avmnist()),
            "cremad" => Some(Self::cremad()),
            "urfunny" => Some(Self::urfunny()),
            "av-digits" => Some(Self::av_digits()),
            _ => None,
        }
    }

    /// Checks every field; the error names the field and the allowed values.
    pub fn validate(&self) -> std::result::Result<(), MethodError> {
        if self.init.is_empty() {
            return Err("mslr.init must hold one multiplier per modality, got none".into());
        }
        if let Some(v) = self.init.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
            return Err(format!("mslr.init values must be finite numbers > 0, got {v}").into());
        }
        if self.window == 0 {
            return Err("mslr.window must be at least 1".into());
        }
        crate::shared::check_window("mslr", self.window_start, self.window_end)
    }

    /// Whether epoch `epoch`'s gradients are scaled.
    pub fn in_window(&self, epoch: usize) -> bool {
        crate::shared::in_window(self.window_start, self.window_end, epoch)
    }

    /// Checks the config against a model with `m` modalities.
    pub fn validate_for(&self, m: usize) -> std::result::Result<(), MethodError> {
        self.validate()?;
        if self.init.len() != m {
            return Err(format!(
                "mslr.init has {} values but the model has {m} modalities (one multiplier per modality, in order)",
                self.init.len()
            )
            .into());
        }
        Ok(())
    }
}

/// The MSLR bookkeeping, without a model: what the end-of-epoch update does to the ratios.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MslrSchedule {
    #[serde(with = "agm_core::serde_f64::seq")]
    init: Vec<f64>,
    window: usize,
    #[serde(with = "agm_core::serde_f64::nested")]
    memory: Vec<VecDeque<f64>>,
    #[serde(with = "agm_core::serde_f64::seq")]
    ratio: Vec<f64>,
}

impl MslrSchedule {
    /// The schedule of `m` modalities before any epoch: every ratio 1, empty memories. Fails
    /// unless the settings are valid and `init` has `m` values ([`MslrConfig::validate_for`]).
    pub fn new(cfg: &MslrConfig, m: usize) -> std::result::Result<Self, MethodError> {
        cfg.validate_for(m)?;
        Ok(Self { init: cfg.init.clone(), window: cfg.window, memory: vec![VecDeque::new(); m], ratio: vec![1.0; m] })
    }

    /// The end-of-epoch update with each modality's evaluation accuracy.
    pub fn end_epoch(&mut self, accuracy: &[f64]) -> std::result::Result<(), MethodError> {
        if accuracy.len() != self.ratio.len() {
            return Err(format!("mslr: {} accuracies for {} modalities", accuracy.len(), self.ratio.len()).into());
        }
        for (x, &a) in accuracy.iter().enumerate() {
            let mem = &mut self.memory[x];
            if mem.len() < self.window {
                mem.push_back(a);
                continue;
            }
            let mean = mem.iter().sum::<f64>() / mem.len() as f64;
            if mean.is_finite() && mean > 0.0 && a.is_finite() {
                self.ratio[x] = a / mean;
            }
            mem.pop_front();
            mem.push_back(a);
        }
        Ok(())
    }

    /// The ratios `r_x` in force.
    pub fn ratios(&self) -> &[f64] {
        &self.ratio
    }

    /// The gradient multipliers `init_x · r_x` in force.
    pub fn multipliers(&self) -> Vec<f64> {
        self.init.iter().zip(&self.ratio).map(|(i, r)| i * r).collect()
    }

    /// The accuracies remembered for modality `x`, oldest first.
    pub fn memory(&self, x: usize) -> Vec<f64> {
        self.memory[x].iter().copied().collect()
    }
}

/// Multiplies the gradient of every parameter in modality `x`'s group by `multipliers[x]`;
/// a multiplier of exactly 1 leaves the gradient untouched (bit for bit).
pub(crate) fn scale_modality_grads(
    model: &dyn MultimodalModel,
    grads: &mut GradStore,
    multipliers: &[f64],
) -> Result<()> {
    if multipliers.iter().all(|&k| k == 1.0) {
        return Ok(());
    }
    for (group, &k) in model.param_groups().per_modality.iter().zip(multipliers) {
        if k == 1.0 {
            continue;
        }
        for v in group {
            let t = v.var.as_tensor();
            if let Some(g) = grads.get(t) {
                let scaled = g.affine(k, 0.0)?;
                grads.insert(t, scaled);
            }
        }
    }
    Ok(())
}

/// Modality-specific learning rates as gradient multipliers.
#[derive(Clone, Debug)]
pub struct Mslr {
    schedule: MslrSchedule,
    cfg: MslrConfig,
    /// The epoch being trained (1-based).
    epoch: usize,
}

impl Mslr {
    /// MSLR over `m` modalities. Fails unless the settings are valid and `init` has `m` values
    /// ([`MslrConfig::validate_for`]).
    pub fn new(cfg: &MslrConfig, m: usize) -> std::result::Result<Self, MethodError> {
        Ok(Self { schedule: MslrSchedule::new(cfg, m)?, cfg: cfg.clone(), epoch: 1 })
    }

    /// The multipliers applied in the current epoch: the schedule's inside the window, else 1.
    fn applied(&self) -> Vec<f64> {
        let m = self.schedule.multipliers();
        if self.cfg.in_window(self.epoch) {
            m
        } else {
            vec![1.0; m.len()]
        }
    }

    /// The bookkeeping: ratios, multipliers and accuracy memories.
    pub fn schedule(&self) -> &MslrSchedule {
        &self.schedule
    }
}

impl Modulator for Mslr {
    fn name(&self) -> &'static str {
        "mslr"
    }

    fn on_epoch_start(&mut self, epoch: usize, _steps: usize, _first_step: usize) -> Result<()> {
        self.epoch = epoch;
        Ok(())
    }

    fn after_backward(&mut self, cx: &StepCx<'_>, grads: &mut GradStore) -> Result<()> {
        self.epoch = cx.epoch;
        scale_modality_grads(cx.model, grads, &self.applied())
    }

    fn on_epoch_end(&mut self, cx: &EpochCx<'_>) -> Result<Vec<EpochAction>> {
        self.schedule.end_epoch(cx.uni_modal_accuracy()).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(Vec::new())
    }

    fn coefficients(&self) -> Option<Vec<f64>> {
        Some(self.applied())
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.schedule).expect("plain numbers serialize")
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let s: MslrSchedule = serde_json::from_value(state.clone())
            .map_err(|e| candle_core::Error::Msg(format!("mslr state in checkpoint: {e}")))?;
        if s.ratio.len() != self.schedule.ratio.len()
            || s.memory.len() != s.ratio.len()
            || s.init.len() != s.ratio.len()
        {
            candle_core::bail!(
                "mslr state in checkpoint is for {} modalities, the model has {}",
                s.ratio.len(),
                self.schedule.ratio.len()
            );
        }
        self.schedule = s;
        Ok(())
    }
}

impl crate::Method for Mslr {
    const NAME: &'static str = "mslr";
    const HOOKS: crate::Hooks = crate::Hooks::EDITS;
    type Config = MslrConfig;

    fn preset(dataset: &str) -> MslrConfig {
        match dataset {
            "avmnist" => MslrConfig::avmnist(),
            "cremad" => MslrConfig::cremad(),
            "urfunny" => MslrConfig::urfunny(),
            _ => MslrConfig::av_digits(),
        }
    }

    fn validate(config: &MslrConfig) -> std::result::Result<(), MethodError> {
        config.validate()
    }

    fn build(config: &MslrConfig, cx: &crate::BuildCx<'_>) -> std::result::Result<Self, MethodError> {
        Mslr::new(config, cx.modalities())
    }
}
