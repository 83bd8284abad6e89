//! Gradient clipping: `torch.nn.utils.clip_grad_norm_` and the AGM reference's conditional rule.

use std::collections::HashSet;

use agm_core::NamedVar;
use agm_modulation::ClipRule;
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
    // All the sums at once: on a GPU, one wait for the device instead of one per parameter.
    let sums = agm_kernels::sum_squares_each(&with_grad.iter().map(|(_, g)| g.clone()).collect::<Vec<_>>())?;
    let mut squares = 0.0;
    for sum in sums {
        let norm = sum.sqrt();
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

/// What the conditional clipping saw and did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClipReport {
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

impl ClipReport {
    /// The first non-finite gradient statistic (the total norm, else the head's extremes).
    pub fn non_finite(&self) -> Option<f64> {
        [self.total_norm.unwrap_or(0.0), self.head_grad_max, self.head_grad_min].into_iter().find(|v| !v.is_finite())
    }
}

/// The AGM reference's conditional clipping: inspects the head weight's gradient and, when
/// `rule` fires on its extremes, runs [`clip_grad_norm`] over `params` to `rule.max_norm`. A
/// head weight without a gradient counts as extremes of 0 (the rule does not fire).
pub fn conditional_clip(
    rule: &ClipRule,
    grads: &mut GradStore,
    params: &[NamedVar],
    head_weight: &Var,
) -> Result<ClipReport> {
    let t = rule.threshold;
    ensure(t.is_finite() && t >= 0.0, "conditional clip", "threshold", t, "finite and >= 0")?;
    let (head_grad_max, head_grad_min) = match grads.get(head_weight.as_tensor()) {
        Some(g) => {
            let g = g.to_dtype(DType::F64)?;
            (g.max_all()?.to_scalar::<f64>()?, g.min_all()?.to_scalar::<f64>()?)
        }
        None => (0.0, 0.0),
    };
    let mut report = ClipReport { head_grad_max, head_grad_min, ..ClipReport::default() };
    if rule.fires(head_grad_max, head_grad_min) {
        let (total, coef) = clip_with_coef(grads, params, rule.max_norm)?;
        report.fired = true;
        report.total_norm = Some(total);
        report.coef = Some(coef);
    }
    Ok(report)
}
