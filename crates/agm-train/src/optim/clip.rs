//! Gradient clipping: `torch.nn.utils.clip_grad_norm_` and the AGM reference's conditional rule.

use std::collections::HashSet;

use agm_core::NamedVar;
use candle_core::{DType, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::{ensure, GradStore};

/// PyTorch's guard against dividing by a zero norm.
const NORM_EPS: f64 = 1e-6;

/// `torch.nn.utils.clip_grad_norm_(params, max_norm)` with the L2 norm; returns the total norm.
///
/// `total = ‖(‖g_p‖)_p‖₂` over the parameters that have a gradient (each `Var` counted once);
/// `coef = max_norm / (total + 1e-6)`; when `coef < 1` every such gradient is replaced by
/// `coef·g`. As in PyTorch, a NaN total gives a NaN coefficient that is applied too.
/// Norms are accumulated in f64 (f32 on Metal, which has no f64).
pub fn clip_grad_norm(grads: &mut GradStore, params: &[NamedVar], max_norm: f64) -> Result<f64> {
    Ok(clip_with_coef(grads, params, max_norm)?.0)
}

/// [`clip_grad_norm`] that also returns the unclamped coefficient `max_norm / (total + 1e-6)`.
fn clip_with_coef(grads: &mut GradStore, params: &[NamedVar], max_norm: f64) -> Result<(f64, f64)> {
    ensure(max_norm.is_finite() && max_norm >= 0.0, "clip_grad_norm", "max_norm", max_norm, "finite and >= 0")?;
    // PyTorch's parameters() yields each tensor once; a repeated Var must not be scaled twice.
    let mut seen = HashSet::new();
    let mut with_grad: Vec<(&Var, Tensor)> = Vec::new();
    for p in params {
        if !seen.insert(p.var.as_tensor().id()) {
            continue;
        }
        if let Some(g) = grads.get(p.var.as_tensor()) {
            with_grad.push((&p.var, g.detach()));
        }
    }
    if with_grad.is_empty() {
        // PyTorch returns a zero norm and touches nothing.
        return Ok((0.0, max_norm / NORM_EPS));
    }
    // The norm of the per-parameter norms, as PyTorch computes it.
    let mut squares = 0.0;
    for (_, g) in &with_grad {
        let norm = agm_kernels::sum_squares(g)?.sqrt();
        squares += norm * norm;
    }
    let total = squares.sqrt();
    let coef = max_norm / (total + NORM_EPS);
    // A NaN coefficient is applied too, since torch.clamp(NaN, max=1) stays NaN.
    if coef.is_nan() || coef < 1.0 {
        for (var, g) in with_grad {
            grads.insert(var.as_tensor(), g.affine(coef, 0.0)?);
        }
    }
    Ok((total, coef))
}

/// What [`ConditionalClip::apply`] saw and did.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipOutcome {
    /// Largest element of the head weight's gradient.
    pub head_grad_max: f64,
    /// Smallest element of the head weight's gradient.
    pub head_grad_min: f64,
    /// Whether clip_grad_norm ran.
    pub fired: bool,
    /// The total norm, only when fired.
    pub total_norm: Option<f64>,
    /// `max_norm / (total + 1e-6)` before clamping, only when fired (below 1 means it scaled).
    pub coef: Option<f64>,
}

/// The AGM reference's rule: clip all gradients to `max_norm` only when the head weight's
/// gradient has an element strictly above `threshold` or strictly below `−threshold`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionalClip {
    pub threshold: f64,
    pub max_norm: f64,
}

impl ConditionalClip {
    /// The reference's AV-MNIST setting: threshold 1, max norm 1.
    pub fn avmnist() -> Self {
        Self { threshold: 1.0, max_norm: 1.0 }
    }

    /// The reference's UR-Funny setting: threshold 5, max norm 5.
    pub fn urfunny() -> Self {
        Self { threshold: 5.0, max_norm: 5.0 }
    }

    /// Inspects the head weight's gradient and, when it crosses ±threshold, runs
    /// [`clip_grad_norm`] over `params`. Errors if the head weight has no gradient, as the
    /// reference would fail on `torch.max(None)`.
    pub fn apply(&self, grads: &mut GradStore, params: &[NamedVar], head_weight: &Var) -> Result<ClipOutcome> {
        let t = self.threshold;
        ensure(t.is_finite() && t >= 0.0, "ConditionalClip", "threshold", t, "finite and >= 0")?;
        let g = grads
            .get(head_weight.as_tensor())
            .ok_or_else(|| candle_core::Error::msg("ConditionalClip: the head weight has no gradient"))?
            .detach();
        let head_grad_max = g.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let head_grad_min = g.min_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let fired = head_grad_max > t || head_grad_min < -t;
        let (total_norm, coef) = if fired {
            let (total, coef) = clip_with_coef(grads, params, self.max_norm)?;
            (Some(total), Some(coef))
        } else {
            (None, None)
        };
        Ok(ClipOutcome { head_grad_max, head_grad_min, fired, total_norm, coef })
    }
}
