//! The `Modulator` trait and the per-step context it sees.

use agm_core::{BatchSource, ModelOutput, MultimodalBatch, MultimodalModel, NamedVar, Subset};
use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor};

/// Which forward passes a step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardPlan {
    /// Only the full pass in training mode.
    Full,
    /// The full pass plus every non-empty proper subset in evaluation mode, with gradients
    /// (the AGM reference's Shapley passes).
    Shapley,
}

impl ForwardPlan {
    /// The masked subsets to run besides the full pass.
    pub fn masked_subsets(self, m: usize) -> Vec<Subset> {
        match self {
            ForwardPlan::Full => Vec::new(),
            ForwardPlan::Shapley => crate::shapley::masked_subsets(m),
        }
    }
}

/// The passes of one step.
#[derive(Clone, Debug)]
pub struct StepForward {
    /// The full pass, training mode.
    pub full: ModelOutput,
    /// Masked passes (evaluation mode, gradients on), in the order of the forward plan.
    pub masked: Vec<(Subset, Tensor)>,
}

impl StepForward {
    /// Logits of the pass keeping `subset` (the full pass for the full subset).
    pub fn logits(&self, subset: Subset, m: usize) -> Option<&Tensor> {
        if subset == Subset::full(m) {
            return Some(&self.full.logits);
        }
        self.masked.iter().find(|(s, _)| *s == subset).map(|(_, t)| t)
    }
}

/// What a modulator sees during one step.
pub struct StepCx<'a> {
    /// The model being trained.
    pub model: &'a dyn MultimodalModel,
    /// This step's batch (inputs of every modality, labels).
    pub batch: &'a MultimodalBatch,
    /// The passes of this step: the full one and, under [`ForwardPlan::Shapley`], the masked ones.
    pub forward: &'a StepForward,
    /// 1-based global step (the running-score counter of the reference).
    pub step: usize,
    /// 1-based epoch (the modulation window is inclusive and 1-based).
    pub epoch: usize,
}

/// The loss of one step and the outputs that are reported for it.
#[derive(Clone, Debug)]
pub struct Objective {
    /// The tensor to differentiate.
    pub loss: Tensor,
    /// The fused output whose cross-entropy is the reported loss.
    pub output: Tensor,
    /// Per-modality mono-modal outputs, when the method computed them.
    pub mono: Option<Vec<Tensor>>,
}

/// What a modulator sees before a run's first step.
pub struct TrainStartCx<'a> {
    /// The model about to be trained.
    pub model: &'a dyn MultimodalModel,
    /// The device it trains on.
    pub device: &'a candle_core::Device,
    /// The training split (in its stored order).
    pub train: &'a dyn BatchSource,
    /// Samples held out from training, when the run has them.
    pub holdout: Option<&'a dyn BatchSource>,
}

/// What a modulator sees at the end of an epoch.
pub struct EpochCx<'a> {
    /// The model, with the weights of the epoch that just ended.
    pub model: &'a dyn MultimodalModel,
    /// The device it trains on.
    pub device: &'a candle_core::Device,
    /// The training split (in its stored order).
    pub train: &'a dyn BatchSource,
    /// Samples held out from training, when the run has them (AV-Digits: the `dep` split), for
    /// methods that estimate generalisation (G-Blending).
    pub holdout: Option<&'a dyn BatchSource>,
    /// 1-based epoch that just ended.
    pub epoch: usize,
    /// Fused accuracy on the model-selection split.
    pub accuracy: f64,
    /// Per-modality Shapley accuracy on that split.
    pub modality_accuracy: Vec<f64>,
    /// Per-modality mean cross-entropy of the Shapley outputs on that split.
    pub modality_loss: Vec<f64>,
    /// Per-modality accuracy of the model's own heads on that split, where its fusion sums one
    /// head per modality ([`MultimodalModel::modality_logits`]); empty otherwise.
    pub head_accuracy: Vec<f64>,
    /// Per-modality mean cross-entropy of those heads; empty where `head_accuracy` is.
    pub head_loss: Vec<f64>,
}

impl EpochCx<'_> {
    /// Each modality's uni-modal accuracy as the reference's epoch-level baselines (MSLR) read
    /// it: the model's own heads where it sums them (the `_Sum` models), else the Shapley outputs.
    pub fn uni_modal_accuracy(&self) -> &[f64] {
        if self.head_accuracy.is_empty() {
            &self.modality_accuracy
        } else {
            &self.head_accuracy
        }
    }

    /// Each modality's uni-modal loss, as [`EpochCx::uni_modal_accuracy`] chooses (MSES).
    pub fn uni_modal_loss(&self) -> &[f64] {
        if self.head_loss.is_empty() {
            &self.modality_loss
        } else {
            &self.head_loss
        }
    }
}

/// What the trainer must do after an epoch, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum EpochAction {
    /// Keep a snapshot of the model, optimizer and modulator state under `tag`.
    SaveSnapshot(String),
    /// Restore the snapshot `tag` (it must have been saved).
    RestoreSnapshot(String),
    /// End training after this epoch.
    Stop,
    /// Forget the optimizer's state (momentum, moments), as code that builds a fresh optimizer
    /// for the next phase does (ReconBoost).
    ResetOptimizer,
    /// Nothing to do: a line saying what the method did this epoch (a modality stopped,
    /// encoders re-initialised), which the epoch's metrics row keeps under `events`.
    Note(String),
}

/// Which head-gradient test triggers the reference's conditional clipping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClipCondition {
    /// `max(g) > threshold or min(g) < -threshold` (AV-MNIST, CREMA-D, UR-Funny).
    OutsideBand,
    /// `max(g) > threshold and min(g) < threshold`, the MOSEI code as written (Q9).
    MoseiQuirk,
}

/// Clip the global gradient norm to `max_norm` when the head weight's gradient meets
/// `condition` at `threshold`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipRule {
    /// The bound `th` that `condition` tests the head weight's gradient against; `>= 0`.
    pub threshold: f64,
    /// The global gradient norm clipped to when the rule fires; `> 0`.
    pub max_norm: f64,
    /// Which test of the head weight's gradient fires the clipping.
    pub condition: ClipCondition,
}

impl ClipRule {
    /// Clip the global norm to `max_norm` when the head weight's gradient leaves
    /// `[−threshold, threshold]` ([`ClipCondition::OutsideBand`]).
    pub fn outside_band(threshold: f64, max_norm: f64) -> Self {
        Self { threshold, max_norm, condition: ClipCondition::OutsideBand }
    }

    /// Checks the rule as the `clip` setting of method section `section`: a finite `threshold`
    /// `>= 0` and a finite `max_norm > 0`; the error names the key.
    pub fn validate(&self, section: &str) -> std::result::Result<(), crate::MethodError> {
        if !(self.threshold.is_finite() && self.threshold >= 0.0) {
            return Err(format!("{section}.clip.threshold must be finite and >= 0, got {}", self.threshold).into());
        }
        if !(self.max_norm.is_finite() && self.max_norm > 0.0) {
            return Err(format!("{section}.clip.max_norm must be finite and > 0, got {}", self.max_norm).into());
        }
        Ok(())
    }

    /// Whether the rule fires for a head gradient with these extremes.
    pub fn fires(&self, head_max: f64, head_min: f64) -> bool {
        match self.condition {
            ClipCondition::OutsideBand => head_max > self.threshold || head_min < -self.threshold,
            ClipCondition::MoseiQuirk => head_max > self.threshold && head_min < self.threshold,
        }
    }
}

/// A modulation method. Only [`Modulator::name`] is required.
pub trait Modulator {
    /// The method's name in logs and errors (`agm`, `ogm-ge`).
    fn name(&self) -> &'static str;

    /// Extra trainable variables the method owns (uni-modal heads); called once before
    /// training, and the optimizer includes them.
    fn attach(&mut self, _model: &dyn MultimodalModel) -> Result<Vec<NamedVar>> {
        Ok(Vec::new())
    }

    /// Which passes a step runs before [`Modulator::objective`]: the full pass (default), or
    /// also one masked pass per modality subset ([`ForwardPlan::Shapley`]).
    fn forward_plan(&self) -> ForwardPlan {
        ForwardPlan::Full
    }

    /// The loss of this step. Default: mean cross-entropy of the full pass.
    fn objective(&mut self, cx: &StepCx<'_>) -> Result<Objective> {
        let output = cx.forward.full.logits.clone();
        let loss = candle_nn::loss::cross_entropy(&output, &cx.batch.labels)?;
        Ok(Objective { loss, output, mono: None })
    }

    /// Differentiates the objective. Override for one backward per loss.
    fn backward(&mut self, _cx: &StepCx<'_>, objective: &Objective) -> Result<GradStore> {
        agm_kernels::backward(&objective.loss)
    }

    /// Edits gradients between backward and clipping.
    fn after_backward(&mut self, _cx: &StepCx<'_>, _grads: &mut GradStore) -> Result<()> {
        Ok(())
    }

    /// The conditional clipping the method's reference applies after its edits.
    fn clip_rule(&self) -> Option<ClipRule> {
        None
    }

    /// Called once before a run's first step, for methods whose official code computes something
    /// from the untrained model before training (PMR's first prototypes). A resumed run does not
    /// call it again: the method's state comes back from the checkpoint.
    fn on_train_start(&mut self, _cx: &TrainStartCx<'_>) -> Result<()> {
        Ok(())
    }

    /// An epoch of `steps` optimizer steps begins with its step `first_step` (0-based: 0, or the
    /// next step of an epoch a resumed run continues). For methods whose step depends on its place
    /// in the epoch (MLA); the trainer calls it before the epoch's first step it runs.
    fn on_epoch_start(&mut self, _epoch: usize, _steps: usize, _first_step: usize) -> Result<()> {
        Ok(())
    }

    /// After an epoch's validation: what the trainer should do before the next epoch (stop,
    /// save or restore a snapshot, reset the optimizer's state). Default: nothing.
    fn on_epoch_end(&mut self, _cx: &EpochCx<'_>) -> Result<Vec<EpochAction>> {
        Ok(Vec::new())
    }

    /// The per-modality coefficients in force at the last step, for logs.
    fn coefficients(&self) -> Option<Vec<f64>> {
        None
    }

    /// Each part's coefficients by method name, for a modulator made of several methods that
    /// have coefficients of their own (a [`crate::Stack`] of `agm+ogm-ge`), since
    /// [`Modulator::coefficients`] can show only one of them. Default: none.
    fn coefficients_by_method(&self) -> Vec<(String, Vec<f64>)> {
        Vec::new()
    }

    /// The method's prediction from an evaluation-mode pass of the model, for a method that
    /// predicts with parts of its own (MLA's shared head, ReconBoost's ensemble). Evaluation,
    /// model selection and the Shapley accuracies use it for every pass. `None` (the default):
    /// the model's fused logits.
    fn predict(&self, _model: &dyn MultimodalModel, _pass: &ModelOutput) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Serializable state for checkpoints, resume and snapshots.
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Restores the state of a checkpoint (a resumed run).
    fn load_state(&mut self, _state: &serde_json::Value) -> Result<()> {
        Ok(())
    }

    /// The trainer restored snapshot `tag`, which this method asked for with
    /// [`EpochAction::RestoreSnapshot`]; `state` is the method's state saved with it. By default
    /// the method goes back to that state too; a method whose own bookkeeping must survive its
    /// restores (MSES) keeps it.
    fn on_restored(&mut self, _tag: &str, state: &serde_json::Value) -> Result<()> {
        self.load_state(state)
    }
}

/// A boxed method, and a borrowed one: `Trainer::new(&model, Box::new(&mut method), …)` leaves
/// the method with its caller, who reads its state (`Agm::last_stats`) once the trainer is gone.
macro_rules! forward_modulator {
    ($($wrapper:ty),+) => {$(
        impl<T: Modulator + ?Sized> Modulator for $wrapper {
            fn name(&self) -> &'static str {
                (**self).name()
            }
            fn attach(&mut self, model: &dyn MultimodalModel) -> Result<Vec<NamedVar>> {
                (**self).attach(model)
            }
            fn forward_plan(&self) -> ForwardPlan {
                (**self).forward_plan()
            }
            fn objective(&mut self, cx: &StepCx<'_>) -> Result<Objective> {
                (**self).objective(cx)
            }
            fn backward(&mut self, cx: &StepCx<'_>, objective: &Objective) -> Result<GradStore> {
                (**self).backward(cx, objective)
            }
            fn after_backward(&mut self, cx: &StepCx<'_>, grads: &mut GradStore) -> Result<()> {
                (**self).after_backward(cx, grads)
            }
            fn clip_rule(&self) -> Option<ClipRule> {
                (**self).clip_rule()
            }
            fn on_train_start(&mut self, cx: &TrainStartCx<'_>) -> Result<()> {
                (**self).on_train_start(cx)
            }
            fn on_epoch_start(&mut self, epoch: usize, steps: usize, first_step: usize) -> Result<()> {
                (**self).on_epoch_start(epoch, steps, first_step)
            }
            fn on_epoch_end(&mut self, cx: &EpochCx<'_>) -> Result<Vec<EpochAction>> {
                (**self).on_epoch_end(cx)
            }
            fn coefficients(&self) -> Option<Vec<f64>> {
                (**self).coefficients()
            }
            fn coefficients_by_method(&self) -> Vec<(String, Vec<f64>)> {
                (**self).coefficients_by_method()
            }
            fn predict(&self, model: &dyn MultimodalModel, pass: &ModelOutput) -> Result<Option<Tensor>> {
                (**self).predict(model, pass)
            }
            fn state(&self) -> serde_json::Value {
                (**self).state()
            }
            fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
                (**self).load_state(state)
            }
            fn on_restored(&mut self, tag: &str, state: &serde_json::Value) -> Result<()> {
                (**self).on_restored(tag, state)
            }
        }
    )+};
}

forward_modulator!(Box<T>, &mut T);
