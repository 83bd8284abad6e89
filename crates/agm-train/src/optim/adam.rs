//! Adam with L2 weight decay (`torch.optim.Adam`) and with decoupled weight decay (`torch.optim.AdamW`).

use std::collections::HashMap;

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use super::{
    check_lr, ensure, flatten_groups, grad_of, read_buffer, read_step, state_key, step_tensor, GradStore, Optimizer,
    ParamGroup, Slot, STEP_KEY,
};

fn default_beta1() -> f64 {
    0.9
}

fn default_beta2() -> f64 {
    0.999
}

fn default_eps() -> f64 {
    1e-8
}

/// Hyper-parameters of [`Adam`] and [`AdamW`]; omitted fields take PyTorch's Adam defaults.
///
/// Note that PyTorch's `AdamW` defaults to `weight_decay = 0.01`, while this config's default is 0
/// for both: state it explicitly.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamConfig {
    /// Base learning rate, finite and >= 0; a group's rate is this times its `lr_mult`.
    pub lr: f64,
    /// Decay rate of the first moment (`exp_avg`), in [0, 1); default 0.9.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// Decay rate of the second moment (`exp_avg_sq`), in [0, 1); default 0.999.
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// Added to the bias-corrected `√v` in the denominator, >= 0; default 1e-8.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Weight decay, >= 0; default 0. An L2 term on the gradient for [`Adam`], a decoupled
    /// shrink `p·(1 − lr·wd)` for [`AdamW`].
    #[serde(default)]
    pub weight_decay: f64,
}

impl AdamConfig {
    /// PyTorch's defaults at `lr`: betas (0.9, 0.999), eps 1e-8, no weight decay.
    pub fn new(lr: f64) -> Self {
        Self { lr, beta1: default_beta1(), beta2: default_beta2(), eps: default_eps(), weight_decay: 0.0 }
    }

    /// PyTorch's checks, plus finiteness; errors name the field.
    pub fn validate(&self) -> Result<()> {
        const O: &str = "optimizer";
        check_lr(O, self.lr)?;
        let (b1, b2) = (self.beta1, self.beta2);
        ensure((0.0..1.0).contains(&b1), O, "beta1", b1, "in [0, 1)")?;
        ensure((0.0..1.0).contains(&b2), O, "beta2", b2, "in [0, 1)")?;
        ensure(self.eps.is_finite() && self.eps >= 0.0, O, "eps", self.eps, "finite and >= 0")?;
        let wd = self.weight_decay;
        ensure(wd.is_finite() && wd >= 0.0, O, "weight_decay", wd, "finite and >= 0")
    }
}

/// Per-parameter state: PyTorch's `step`, `exp_avg` and `exp_avg_sq`.
#[derive(Clone, Debug)]
struct AdamSlot {
    param: Slot,
    /// Steps in which this parameter had a gradient; bias correction uses it.
    step: u64,
    /// `(exp_avg, exp_avg_sq)`, absent until the first step with a gradient.
    moments: Option<(Tensor, Tensor)>,
}

/// `torch.optim.Adam` over parameter groups (no amsgrad, no maximize).
///
/// For each parameter with a gradient, `t` counts its steps: `g ← g + wd·p` (L2);
/// `m = β1·m + (1−β1)·g`; `v = β2·v + (1−β2)·g²`;
/// `p ← p − (lr / (1−β1^t))·m / (√v / √(1−β2^t) + eps)`, with `lr` the group's effective rate.
#[derive(Clone, Debug)]
pub struct Adam {
    config: AdamConfig,
    /// AdamW's decoupled decay `p ← p·(1 − lr·wd)` instead of the L2 term.
    decoupled: bool,
    groups: Vec<ParamGroup>,
    slots: Vec<AdamSlot>,
}

impl Adam {
    /// Validates `config` and flattens `groups`; fails on an invalid hyper-parameter or
    /// `lr_mult`, a non-float parameter, or a parameter (by name or by `Var`) that appears twice.
    pub fn new(groups: Vec<ParamGroup>, config: AdamConfig) -> Result<Self> {
        Self::with_mode(groups, config, false)
    }

    fn with_mode(groups: Vec<ParamGroup>, config: AdamConfig, decoupled: bool) -> Result<Self> {
        config.validate()?;
        let slots =
            flatten_groups(&groups)?.into_iter().map(|param| AdamSlot { param, step: 0, moments: None }).collect();
        Ok(Self { config, decoupled, groups, slots })
    }

    /// The current configuration; `lr` follows [`Optimizer::set_learning_rate`].
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// The parameter groups, as given to [`Adam::new`].
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }
}

impl Optimizer for Adam {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let c = self.config;
        check_lr("optimizer", c.lr)?;
        for slot in &mut self.slots {
            let Some(mut g) = grad_of(&slot.param, grads)? else { continue };
            let lr = c.lr * slot.param.lr_mult;
            // Detached so that the moments and the new value carry no autograd graph.
            let mut p = slot.param.var.as_tensor().detach();
            if c.weight_decay != 0.0 {
                if self.decoupled {
                    p = p.affine(1.0 - lr * c.weight_decay, 0.0)?;
                } else {
                    g = g.add(&p.affine(c.weight_decay, 0.0)?)?;
                }
            }
            let (m, v) = match slot.moments.take() {
                // The moments start at zero, so the first update is just the (1 − β) terms.
                None => (g.affine(1.0 - c.beta1, 0.0)?, g.sqr()?.affine(1.0 - c.beta2, 0.0)?),
                Some((m, v)) => (
                    m.affine(c.beta1, 0.0)?.add(&g.affine(1.0 - c.beta1, 0.0)?)?,
                    v.affine(c.beta2, 0.0)?.add(&g.sqr()?.affine(1.0 - c.beta2, 0.0)?)?,
                ),
            };
            slot.step += 1;
            // powf, not powi: PyTorch evaluates `beta ** step` with C pow on floats.
            let t = slot.step as f64;
            let bias_correction1 = 1.0 - c.beta1.powf(t);
            let bias_correction2_sqrt = (1.0 - c.beta2.powf(t)).sqrt();
            let step_size = lr / bias_correction1;
            let denom = v.sqrt()?.affine(1.0 / bias_correction2_sqrt, c.eps)?;
            slot.param.var.set(&p.sub(&m.div(&denom)?.affine(step_size, 0.0)?)?)?;
            slot.moments = Some((m, v));
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
            let name = &slot.param.name;
            out.push((state_key(name, STEP_KEY), step_tensor(slot.step)?));
            if let Some((m, v)) = &slot.moments {
                out.push((state_key(name, "exp_avg"), m.clone()));
                out.push((state_key(name, "exp_avg_sq"), v.clone()));
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
            let moments = if step > 0 {
                let var = &slot.param.var;
                let m = read_buffer(state, &state_key(name, "exp_avg"), var)?;
                let v = read_buffer(state, &state_key(name, "exp_avg_sq"), var)?;
                Some((m, v))
            } else {
                None
            };
            loaded.push((step, moments));
        }
        for (slot, (step, moments)) in self.slots.iter_mut().zip(loaded) {
            slot.step = step;
            slot.moments = moments;
        }
        Ok(())
    }

    fn reset_state(&mut self) {
        for slot in &mut self.slots {
            slot.step = 0;
            slot.moments = None;
        }
    }

    fn name(&self) -> &'static str {
        if self.decoupled {
            "adamw"
        } else {
            "adam"
        }
    }
}

/// `torch.optim.AdamW`: [`Adam`] with decoupled weight decay `p ← p·(1 − lr·wd)` before the update.
#[derive(Clone, Debug)]
pub struct AdamW {
    inner: Adam,
}

impl AdamW {
    /// Validates `config` and flattens `groups`, with the same checks as [`Adam::new`].
    pub fn new(groups: Vec<ParamGroup>, config: AdamConfig) -> Result<Self> {
        Ok(Self { inner: Adam::with_mode(groups, config, true)? })
    }

    /// The current configuration; `lr` follows [`Optimizer::set_learning_rate`].
    pub fn config(&self) -> &AdamConfig {
        self.inner.config()
    }

    /// The parameter groups, as given to [`AdamW::new`].
    pub fn groups(&self) -> &[ParamGroup] {
        self.inner.groups()
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.inner.step(grads)
    }

    fn learning_rate(&self) -> f64 {
        self.inner.learning_rate()
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.inner.set_learning_rate(lr)
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        self.inner.state()
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.inner.load_state(state)
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn reset_state(&mut self) {
        self.inner.reset_state()
    }
}
