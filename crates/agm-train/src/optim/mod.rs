//! Optimizers, parameter groups, learning-rate schedules and gradient clipping with PyTorch semantics.
//!
//! candle 0.11's own `SGD` has no momentum, weight decay or nesterov, and candle has no Adam with
//! L2 weight decay, no parameter groups, no clipping and no schedules. This module fills those gaps
//! so that a training run steps exactly as `torch.optim` would:
//!
//! * [`Sgd`] and [`Adam`] / [`AdamW`] implement the object-safe [`Optimizer`] trait over
//!   [`ParamGroup`]s, each with its own learning-rate multiplier.
//! * A parameter whose gradient is absent from the [`GradStore`] is skipped entirely, as PyTorch
//!   skips `grad is None`: no weight decay, no momentum, no state.
//! * [`LrSchedule`] gives the learning rate of an epoch ([`StepLr`], [`CosineLr`], [`ConstantLr`]);
//!   feed it to [`Optimizer::set_learning_rate`] at the start of each epoch.
//! * [`clip_grad_norm`] is `torch.nn.utils.clip_grad_norm_` and [`conditional_clip`] is the AGM
//!   reference's "clip only when the head gradient leaves ±threshold" rule.
//!
//! Never put BatchNorm running statistics in a group: they get no gradient, so they are skipped,
//! but they are not parameters and have no place in optimizer state.
//!
//! ```
//! use agm_core::NamedVar;
//! use agm_train::optim::{Optimizer, ParamGroup, Sgd, SgdConfig};
//! use candle_core::{backprop::GradStore, Device, Tensor, Var};
//!
//! let w = Var::new(&[1.0f64, -2.0], &Device::Cpu)?;
//! let group = ParamGroup::new(vec![NamedVar { name: "w".into(), var: w.clone() }]);
//! let mut opt = Sgd::new(vec![group], SgdConfig::agm_reference(0.1))?;
//! let mut grads = GradStore::default();
//! grads.insert(w.as_tensor(), Tensor::new(&[0.5f64, 0.25], &Device::Cpu)?);
//! opt.step(&grads)?;
//! assert_eq!(opt.name(), "sgd");
//! # Ok::<(), candle_core::Error>(())
//! ```

mod adam;
mod clip;
mod schedule;
mod sgd;

use std::collections::{HashMap, HashSet};

use agm_core::NamedVar;
use candle_core::{DType, Device, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

pub use adam::{Adam, AdamConfig, AdamW};
pub use candle_core::backprop::GradStore;
pub use clip::{clip_grad_norm, conditional_clip, ClipReport};
pub use schedule::{ConstantLr, CosineLr, LrSchedule, ScheduleConfig, StepLr};
pub use sgd::{Sgd, SgdConfig};

/// Suffix of the per-parameter step count in [`Optimizer::state`].
pub const STEP_KEY: &str = "step";

/// An optimizer over parameter groups that updates `Var`s in place from a [`GradStore`].
///
/// The trait is object safe so a run can hold a `Box<dyn Optimizer>` built from a config.
pub trait Optimizer {
    /// Applies one update to every parameter that has a gradient in `grads`.
    fn step(&mut self, grads: &GradStore) -> Result<()>;

    /// The base learning rate; a group's effective rate is this times its `lr_mult`.
    fn learning_rate(&self) -> f64;

    /// Sets the base learning rate, e.g. from an [`LrSchedule`]; it is checked at the next step.
    fn set_learning_rate(&mut self, lr: f64);

    /// Named state tensors for checkpoints, sorted by name.
    ///
    /// Every parameter has `"<name>/step"` (an f64 scalar: the number of steps in which it had a
    /// gradient); parameters with a nonzero step also have their buffers, e.g.
    /// `"<name>/momentum_buffer"` or `"<name>/exp_avg"` and `"<name>/exp_avg_sq"`.
    fn state(&self) -> Result<Vec<(String, Tensor)>>;

    /// Restores state written by [`Optimizer::state`] for the same parameter names.
    ///
    /// Keys of other parameters are ignored, so the map may hold a whole checkpoint. On error
    /// (naming the missing or malformed key) the optimizer's state is left unchanged.
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;

    /// Short lower-case name: `"sgd"`, `"adam"` or `"adamw"`.
    fn name(&self) -> &'static str;

    /// Forgets every parameter's state (momentum buffers, moments, step counts), as a freshly
    /// built optimizer over the same parameters would start.
    fn reset_state(&mut self);
}

/// Parameters that share a learning-rate multiplier.
#[derive(Clone, Debug)]
pub struct ParamGroup {
    /// The group's parameters, each under its checkpoint name (the optimizer state's key prefix).
    pub params: Vec<NamedVar>,
    /// The group's learning rate is the optimizer's base rate times this.
    pub lr_mult: f64,
}

impl ParamGroup {
    /// A group at the base learning rate.
    pub fn new(params: Vec<NamedVar>) -> Self {
        Self { params, lr_mult: 1.0 }
    }

    /// The same group with another learning-rate multiplier.
    pub fn with_lr_mult(mut self, lr_mult: f64) -> Self {
        self.lr_mult = lr_mult;
        self
    }
}

/// Which optimizer to build, as it appears in a run config (`{"kind": "sgd", "lr": 0.1, ...}`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// SGD with momentum, dampening, Nesterov and L2 weight decay (`torch.optim.SGD`).
    Sgd(SgdConfig),
    /// Adam with L2 weight decay added to the gradient (`torch.optim.Adam`).
    Adam(AdamConfig),
    /// Adam with decoupled weight decay (`torch.optim.AdamW`).
    #[serde(rename = "adamw")]
    AdamW(AdamConfig),
}

impl OptimizerConfig {
    /// The configured base learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            Self::Sgd(c) => c.lr,
            Self::Adam(c) | Self::AdamW(c) => c.lr,
        }
    }

    /// Checks the hyper-parameters; errors name the offending field.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Sgd(c) => c.validate(),
            Self::Adam(c) | Self::AdamW(c) => c.validate(),
        }
    }

    /// Builds the optimizer over `groups`.
    pub fn build(&self, groups: Vec<ParamGroup>) -> Result<Box<dyn Optimizer + Send>> {
        Ok(match *self {
            Self::Sgd(c) => Box::new(Sgd::new(groups, c)?),
            Self::Adam(c) => Box::new(Adam::new(groups, c)?),
            Self::AdamW(c) => Box::new(AdamW::new(groups, c)?),
        })
    }
}

/// One parameter as an optimizer sees it: flattened out of its group.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    pub name: String,
    pub var: Var,
    pub lr_mult: f64,
}

/// Flattens groups into slots, rejecting what PyTorch rejects (a parameter in two groups) and
/// what would corrupt state (two parameters with one name, non-float parameters).
pub(crate) fn flatten_groups(groups: &[ParamGroup]) -> Result<Vec<Slot>> {
    let mut names = HashSet::new();
    let mut ids = HashSet::new();
    let mut slots = Vec::new();
    for (gi, group) in groups.iter().enumerate() {
        ensure(
            group.lr_mult.is_finite() && group.lr_mult >= 0.0,
            &format!("ParamGroup[{gi}]"),
            "lr_mult",
            group.lr_mult,
            "finite and >= 0",
        )?;
        for p in &group.params {
            if !names.insert(p.name.clone()) {
                candle_core::bail!("parameter name `{}` appears more than once in the groups", p.name)
            }
            if !ids.insert(p.var.as_tensor().id()) {
                candle_core::bail!("parameter `{}` is the same Var as another parameter", p.name)
            }
            if !p.var.dtype().is_float() {
                candle_core::bail!("parameter `{}` has non-float dtype {:?}", p.name, p.var.dtype())
            }
            slots.push(Slot { name: p.name.clone(), var: p.var.clone(), lr_mult: group.lr_mult });
        }
    }
    Ok(slots)
}

/// Errors with `<owner>.<field> = <value>: must be <rule>` unless `ok`.
pub(crate) fn ensure(ok: bool, owner: &str, field: &str, value: f64, rule: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        candle_core::bail!("{owner}.{field} = {value}: must be {rule}")
    }
}

/// The slot's gradient, detached so that optimizer state never holds an autograd graph.
pub(crate) fn grad_of(slot: &Slot, grads: &GradStore) -> Result<Option<Tensor>> {
    let Some(g) = grads.get(slot.var.as_tensor()) else { return Ok(None) };
    if g.dims() != slot.var.dims() || g.dtype() != slot.var.dtype() {
        candle_core::bail!(
            "gradient of `{}` is {:?} {:?}, the parameter is {:?} {:?}",
            slot.name,
            g.dtype(),
            g.dims(),
            slot.var.dtype(),
            slot.var.dims()
        )
    }
    Ok(Some(g.detach()))
}

/// `"<param>/<what>"`, the state key convention.
pub(crate) fn state_key(param: &str, what: &str) -> String {
    format!("{param}/{what}")
}

/// A step count as a CPU f64 scalar, exact up to 2^53.
pub(crate) fn step_tensor(step: u64) -> Result<Tensor> {
    Tensor::new(step as f64, &Device::Cpu)
}

/// Reads a step count written by [`step_tensor`] (any dtype, one element).
pub(crate) fn read_step(state: &HashMap<String, Tensor>, key: &str) -> Result<u64> {
    let t = state.get(key).ok_or_else(|| candle_core::Error::msg(format!("missing optimizer state key `{key}`")))?;
    if t.elem_count() != 1 {
        candle_core::bail!("optimizer state `{key}` must be a scalar, got shape {:?}", t.dims())
    }
    let v = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?[0];
    if !(v >= 0.0 && v.fract() == 0.0 && v <= 2f64.powi(53)) {
        candle_core::bail!("optimizer state `{key}` must be a non-negative integer, got {v}")
    }
    Ok(v as u64)
}

/// Reads a buffer shaped like `like`, converted to its dtype and device.
///
/// The copy keeps our state from aliasing a tensor the caller may later overwrite with `Var::set`.
pub(crate) fn read_buffer(state: &HashMap<String, Tensor>, key: &str, like: &Var) -> Result<Tensor> {
    let t = state.get(key).ok_or_else(|| candle_core::Error::msg(format!("missing optimizer state key `{key}`")))?;
    if t.dims() != like.dims() {
        candle_core::bail!("optimizer state `{key}` has shape {:?}, the parameter has {:?}", t.dims(), like.dims())
    }
    t.detach().to_device(like.device())?.to_dtype(like.dtype())?.copy()
}

/// Checks the base learning rate at step time, since `set_learning_rate` cannot fail.
pub(crate) fn check_lr(owner: &str, lr: f64) -> Result<()> {
    ensure(lr.is_finite() && lr >= 0.0, owner, "lr", lr, "finite and >= 0")
}
