//! Per-epoch learning-rate schedules: constant, `StepLR` and `CosineAnnealingLR` in PyTorch's closed form.

use candle_core::Result;
use serde::{Deserialize, Serialize};

use super::ensure;

/// The learning rate used during an epoch.
pub trait LrSchedule {
    /// The rate during epoch index `epoch` (0-based: the number of completed epochs), starting
    /// from `base_lr`.
    fn lr_at_epoch(&self, base_lr: f64, epoch: usize) -> f64;
}

/// The base rate throughout.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ConstantLr;

impl LrSchedule for ConstantLr {
    fn lr_at_epoch(&self, base_lr: f64, _epoch: usize) -> f64 {
        base_lr
    }
}

/// `torch.optim.lr_scheduler.StepLR`: `base · gamma^⌊epoch / step_size⌋`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepLr {
    /// Epochs between decays, > 0.
    pub step_size: usize,
    /// Factor applied at each decay, finite and > 0.
    pub gamma: f64,
}

impl StepLr {
    /// Validates `step_size > 0` and `gamma > 0`.
    pub fn new(step_size: usize, gamma: f64) -> Result<Self> {
        let s = Self { step_size, gamma };
        s.validate()?;
        Ok(s)
    }

    /// Checks `step_size > 0` and a finite `gamma > 0`; errors name the field.
    pub fn validate(&self) -> Result<()> {
        ensure(self.step_size > 0, "schedule", "step_size", self.step_size as f64, "> 0")?;
        ensure(self.gamma.is_finite() && self.gamma > 0.0, "schedule", "gamma", self.gamma, "finite and > 0")
    }
}

impl LrSchedule for StepLr {
    fn lr_at_epoch(&self, base_lr: f64, epoch: usize) -> f64 {
        // A zero step size is rejected by `new`; a hand-built one never decays instead of panicking.
        let k = epoch.checked_div(self.step_size).unwrap_or(0);
        // powf, not powi: PyTorch's closed form is `gamma ** k` on Python floats (C pow).
        base_lr * self.gamma.powf(k as f64)
    }
}

/// `torch.optim.lr_scheduler.CosineAnnealingLR` in closed form:
/// `eta_min + (base − eta_min)·(1 + cos(π·epoch / t_max)) / 2`.
///
/// Like PyTorch's closed form it is not clamped: past `t_max` the rate rises again.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CosineLr {
    /// Epochs of the half period: the rate reaches `eta_min` at epoch index `t_max`; > 0.
    pub t_max: usize,
    /// The lowest rate, finite and >= 0.
    pub eta_min: f64,
}

impl CosineLr {
    /// Validates `t_max > 0` and a finite, non-negative `eta_min`.
    pub fn new(t_max: usize, eta_min: f64) -> Result<Self> {
        let s = Self { t_max, eta_min };
        s.validate()?;
        Ok(s)
    }

    /// Checks `t_max > 0` and a finite `eta_min >= 0`; errors name the field.
    pub fn validate(&self) -> Result<()> {
        ensure(self.t_max > 0, "schedule", "t_max", self.t_max as f64, "> 0")?;
        ensure(self.eta_min.is_finite() && self.eta_min >= 0.0, "schedule", "eta_min", self.eta_min, "finite and >= 0")
    }
}

impl LrSchedule for CosineLr {
    fn lr_at_epoch(&self, base_lr: f64, epoch: usize) -> f64 {
        let phase = std::f64::consts::PI * epoch as f64 / self.t_max as f64;
        self.eta_min + (base_lr - self.eta_min) * (1.0 + phase.cos()) / 2.0
    }
}

/// A schedule as it appears in a run config, e.g. `{"kind": "step", "step_size": 30, "gamma": 0.1}`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleConfig {
    /// [`ConstantLr`] (`kind = "constant"`). A struct variant, so that `deny_unknown_fields`
    /// covers it (serde ignores extra keys beside the tag of a unit variant).
    Constant {},
    /// [`StepLr`] (`kind = "step"`).
    Step {
        /// Epochs between decays, > 0.
        step_size: usize,
        /// Factor applied at each decay, finite and > 0.
        gamma: f64,
    },
    /// [`CosineLr`] (`kind = "cosine"`).
    Cosine {
        /// Epochs of the half period, > 0.
        t_max: usize,
        /// The lowest rate, finite and >= 0; default 0.
        #[serde(default)]
        eta_min: f64,
    },
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self::Constant {}
    }
}

impl ScheduleConfig {
    /// Checks the fields; errors name the offending one.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Self::Constant {} => Ok(()),
            Self::Step { step_size, gamma } => StepLr { step_size, gamma }.validate(),
            Self::Cosine { t_max, eta_min } => CosineLr { t_max, eta_min }.validate(),
        }
    }

    /// The validated schedule.
    pub fn build(&self) -> Result<Box<dyn LrSchedule + Send + Sync>> {
        Ok(match *self {
            Self::Constant {} => Box::new(ConstantLr),
            Self::Step { step_size, gamma } => Box::new(StepLr::new(step_size, gamma)?),
            Self::Cosine { t_max, eta_min } => Box::new(CosineLr::new(t_max, eta_min)?),
        })
    }
}
