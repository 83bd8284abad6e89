//! Stochastic gradient descent with momentum, dampening, nesterov and L2 weight decay (`torch.optim.SGD`).

use std::collections::HashMap;

use agm_kernels::{sgd_update_all, SgdParam, SgdUpdate};
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use super::{
    check_lr, ensure, flatten_groups, grad_of, read_buffer, read_step, state_key, step_tensor, GradStore, Optimizer,
    ParamGroup, Slot, STEP_KEY,
};

/// Hyper-parameters of [`Sgd`]; the optional fields default to PyTorch's zeros.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgdConfig {
    /// Base learning rate, finite and >= 0; a group's rate is this times its `lr_mult`.
    pub lr: f64,
    /// Momentum factor, >= 0; 0 (the default) keeps no momentum buffer.
    #[serde(default)]
    pub momentum: f64,
    /// Dampening of the momentum: `buf = momentum·buf + (1 − dampening)·d` after the first step.
    #[serde(default)]
    pub dampening: f64,
    /// L2 penalty added to the gradient (`d = g + weight_decay·p`), >= 0.
    #[serde(default)]
    pub weight_decay: f64,
    /// Nesterov momentum; needs `momentum > 0` and `dampening = 0`.
    #[serde(default)]
    pub nesterov: bool,
}

impl SgdConfig {
    /// Plain SGD at `lr`: no momentum, no weight decay (PyTorch's defaults).
    pub fn new(lr: f64) -> Self {
        Self { lr, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false }
    }

    /// The AGM reference's optimizer: momentum 0.9, weight decay 1e-4, no dampening, no nesterov.
    pub fn agm_reference(lr: f64) -> Self {
        Self { lr, momentum: 0.9, dampening: 0.0, weight_decay: 1e-4, nesterov: false }
    }

    /// PyTorch's checks, plus finiteness and the ranges in which momentum averages (a momentum
    /// above 1 or a dampening outside [0, 1] grows or flips the step); errors name the field.
    pub fn validate(&self) -> Result<()> {
        const O: &str = "optimizer";
        check_lr(O, self.lr)?;
        let m = self.momentum;
        ensure((0.0..=1.0).contains(&m), O, "momentum", m, "in [0, 1]")?;
        let d = self.dampening;
        ensure((0.0..=1.0).contains(&d), O, "dampening", d, "in [0, 1]")?;
        let wd = self.weight_decay;
        ensure(wd.is_finite() && wd >= 0.0, O, "weight_decay", wd, "finite and >= 0")?;
        if self.nesterov && (m <= 0.0 || d != 0.0) {
            candle_core::bail!(
                "optimizer.nesterov = true: requires momentum > 0 and dampening = 0 \
                 (momentum = {m}, dampening = {d})"
            )
        }
        Ok(())
    }
}

/// Per-parameter state: PyTorch's `momentum_buffer`, plus a step count for checkpoints.
/// Not `Clone`: the buffer is updated in place, so a clone would share it.
#[derive(Debug)]
struct SgdSlot {
    param: Slot,
    step: u64,
    momentum_buffer: Option<Tensor>,
}

/// `torch.optim.SGD` over parameter groups.
///
/// For each parameter with a gradient `g`: `d = g + wd·p`; with momentum, `buf = d` on the first
/// step and `buf = momentum·buf + (1 − dampening)·d` afterwards, then `d = d + momentum·buf`
/// (nesterov) or `d = buf`; finally `p ← p − lr·lr_mult·d`. On the CPU and CUDA the update runs
/// in place ([`agm_kernels::sgd_update_all`]).
#[derive(Debug)]
pub struct Sgd {
    config: SgdConfig,
    groups: Vec<ParamGroup>,
    slots: Vec<SgdSlot>,
}

impl Sgd {
    /// Validates `config` and flattens `groups`; fails on an invalid hyper-parameter or
    /// `lr_mult`, a non-float parameter, or a parameter (by name or by `Var`) that appears twice.
    pub fn new(groups: Vec<ParamGroup>, config: SgdConfig) -> Result<Self> {
        config.validate()?;
        let slots = flatten_groups(&groups)?
            .into_iter()
            .map(|param| SgdSlot { param, step: 0, momentum_buffer: None })
            .collect();
        Ok(Self { config, groups, slots })
    }

    /// The current configuration; `lr` follows [`Optimizer::set_learning_rate`].
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }

    /// The parameter groups, as given to [`Sgd::new`].
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let c = self.config;
        check_lr("optimizer", c.lr)?;
        // Every parameter with a gradient, in one call (on CUDA a few kernels for all of them).
        let mut stepped = Vec::new();
        let mut params = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(grad) = grad_of(&slot.param, grads)? else { continue };
            let update = SgdUpdate {
                lr: c.lr * slot.param.lr_mult,
                momentum: c.momentum,
                dampening: c.dampening,
                weight_decay: c.weight_decay,
                nesterov: c.nesterov,
            };
            params.push(SgdParam { param: &slot.param.var, grad, buf: slot.momentum_buffer.take(), update });
            stepped.push(i);
        }
        let bufs = sgd_update_all(params)?;
        for (i, buf) in stepped.into_iter().zip(bufs) {
            let slot = &mut self.slots[i];
            slot.momentum_buffer = buf;
            slot.step += 1;
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for slot in &self.slots {
            out.push((state_key(&slot.param.name, STEP_KEY), step_tensor(slot.step)?));
            if let Some(buf) = &slot.momentum_buffer {
                // A copy: the buffer is updated in place by later steps.
                out.push((state_key(&slot.param.name, "momentum_buffer"), buf.copy()?));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        // Read everything first so that an error leaves the current state untouched.
        let mut loaded = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let name = &slot.param.name;
            let step = read_step(state, &state_key(name, STEP_KEY))?;
            let buf = if step > 0 && self.config.momentum != 0.0 {
                Some(read_buffer(state, &state_key(name, "momentum_buffer"), &slot.param.var)?)
            } else {
                None
            };
            loaded.push((step, buf));
        }
        for (slot, (step, buf)) in self.slots.iter_mut().zip(loaded) {
            slot.step = step;
            slot.momentum_buffer = buf;
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "sgd"
    }

    fn reset_state(&mut self) {
        for slot in &mut self.slots {
            slot.step = 0;
            slot.momentum_buffer = None;
        }
    }
}
