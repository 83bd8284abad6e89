//! One training step, in the fixed order every method shares.
//!
//! 1. forward: the full pass in training mode, then the modulator's masked passes in evaluation
//!    mode with gradients;
//! 2. the modulator's objective (AGM computes its coefficients here, from this batch), plus the
//!    model's auxiliary loss where its reference has one;
//! 3. backward (the modulator may run several), then the loss is read and a non-finite one
//!    ends the step;
//! 4. the modulator's gradient edits;
//! 5. conditional clipping, when the modulator's reference clips;
//! 6. the optimizer step.

use agm_core::{ForwardOpts, MultimodalBatch, MultimodalModel, NamedVar, ShapleyMode};
use agm_modulation::{Modulator, Objective, StepCx, StepForward};
use candle_core::backprop::GradStore;
use candle_core::{DType, Result};

pub use crate::optim::ClipReport;
use crate::optim::{conditional_clip, Optimizer};

/// Where in the step a gradient snapshot is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradStage {
    /// Right after backward.
    Backward,
    /// After the modulator's edits.
    Modulated,
    /// After clipping: what the optimizer consumes.
    Final,
}

/// Sees the inside of a step (parity replays, debugging). Every hook defaults to nothing.
pub trait StepObserver {
    /// After the objective is built and before backward: the step's passes and its objective.
    fn forward(&mut self, _forward: &StepForward, _objective: &Objective) -> Result<()> {
        Ok(())
    }
    /// The gradients at `stage` (three calls per step that reaches the optimizer; fewer when a
    /// non-finite loss or gradient ends the step early).
    fn grads(&mut self, _stage: GradStage, _grads: &GradStore) -> Result<()> {
        Ok(())
    }
}

/// Observes nothing.
pub struct NoObserver;
impl StepObserver for NoObserver {}

/// The result of one step.
#[derive(Clone, Debug)]
pub struct StepOutcome {
    /// Cross-entropy of the fused output.
    pub loss: f64,
    /// What the conditional clipping saw and did; `None` when the method does not clip or the
    /// loss was non-finite. A report whose [`ClipReport::non_finite`] is `Some` means the
    /// optimizer did not step.
    pub clip: Option<ClipReport>,
    /// The modulator's per-modality coefficients in force after this step
    /// ([`Modulator::coefficients`]); `None` for methods without any.
    pub coefficients: Option<Vec<f64>>,
}

/// Everything a step needs besides the batch.
pub struct StepParts<'a> {
    /// The model being trained.
    pub model: &'a dyn MultimodalModel,
    /// The method: its passes, objective, backward, gradient edits and clipping rule.
    pub modulator: &'a mut dyn Modulator,
    /// Steps on the final gradients.
    pub optimizer: &'a mut dyn Optimizer,
    /// All trainable variables (the model's and the modulator's), for clipping.
    pub trainable: &'a [NamedVar],
    /// How the masked passes of Shapley-based methods run.
    pub shapley: ShapleyMode,
    /// How the training loss reduces over the batch.
    pub loss_reduction: LossReduction,
}

/// How the training loss reduces over the batch: the mean of the per-sample losses (PyTorch's
/// default) or their sum (the reference's MOSEI loop), whose gradients are `B` times the mean's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LossReduction {
    /// The mean over the batch's labels (`mean`).
    #[default]
    Mean,
    /// The sum over the batch's labels (`sum`): the step multiplies every trainable gradient by
    /// the label count (samples, or segments) before the method's edits; the reported loss stays
    /// the mean.
    Sum,
}

impl LossReduction {
    /// The names configs write, in the order of the variants.
    pub const NAMES: &'static [&'static str] = &["mean", "sum"];

    /// `mean` or `sum`, as configs write it.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "mean" => Some(Self::Mean),
            "sum" => Some(Self::Sum),
            _ => None,
        }
    }
}

/// Runs one step. `step` and `epoch` are 1-based.
pub fn train_step(
    parts: &mut StepParts<'_>,
    batch: &MultimodalBatch,
    step: usize,
    epoch: usize,
    dropout_seed: u64,
    observer: &mut dyn StepObserver,
) -> Result<StepOutcome> {
    let model = parts.model;
    let m = model.modalities().len();
    let subsets = parts.modulator.forward_plan().masked_subsets(m);
    let (full, passes) =
        model.shapley_passes(&batch.inputs, &subsets, &ForwardOpts::train(m, dropout_seed), parts.shapley)?;
    let forward = StepForward { full, masked: subsets.into_iter().zip(passes).collect() };
    let cx = StepCx { model, batch, forward: &forward, step, epoch };

    let mut objective = parts.modulator.objective(&cx)?;
    if let Some(aux) = model.aux_loss(&forward.full, &batch.labels)? {
        objective.loss = (&objective.loss + aux)?;
    }
    let loss = candle_nn::loss::cross_entropy(&objective.output.detach(), &batch.labels)?.to_dtype(DType::F64)?;
    observer.forward(&forward, &objective)?;

    // The loss is read once the backward is queued: reading it first would make a GPU idle
    // between the forward and the backward while the host waits for it. A non-finite loss still
    // stops the step before anything is updated; a backward that failed on it reports the loss.
    let grads = parts.modulator.backward(&cx, &objective);
    let loss = loss.to_scalar::<f64>()?;
    if !loss.is_finite() {
        // The caller turns this into a run-level error that names the last checkpoint.
        return Ok(StepOutcome { loss, clip: None, coefficients: parts.modulator.coefficients() });
    }
    let mut grads = grads?;
    if parts.loss_reduction == LossReduction::Sum {
        // Every method's loss is a mean over the batch's labels (samples, or segments), so the
        // sum's gradients are that count times its gradients, before the method edits them and
        // the clipping reads them, as in the reference.
        let terms = batch.labels.elem_count() as f64;
        for v in parts.trainable {
            if let Some(g) = grads.remove(&v.var) {
                grads.insert(&v.var, g.affine(terms, 0.0)?);
            }
        }
    }
    observer.grads(GradStage::Backward, &grads)?;
    parts.modulator.after_backward(&cx, &mut grads)?;
    observer.grads(GradStage::Modulated, &grads)?;

    let clip = match parts.modulator.clip_rule() {
        None => None,
        Some(rule) => {
            let groups = model.param_groups();
            let head_name = groups.head_weight.as_deref().ok_or_else(|| {
                candle_core::Error::Msg("the method clips on the head weight but the model names none".into())
            })?;
            let head = groups
                .find(head_name)
                .ok_or_else(|| candle_core::Error::Msg(format!("head weight `{head_name}` not in the model")))?;
            let report = conditional_clip(&rule, &mut grads, parts.trainable, &head.var)?;
            if report.non_finite().is_some() {
                // No optimizer step with NaN or infinite gradients; the caller reports it.
                return Ok(StepOutcome { loss, clip: Some(report), coefficients: parts.modulator.coefficients() });
            }
            Some(report)
        }
    };
    observer.grads(GradStage::Final, &grads)?;
    parts.optimizer.step(&grads)?;
    Ok(StepOutcome { loss, clip, coefficients: parts.modulator.coefficients() })
}
