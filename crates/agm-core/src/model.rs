//! The model trait every fusion architecture implements.

use candle_core::{Result, Tensor};

use crate::{ModalitySet, ParamGroups, Subset};

/// How one forward pass runs.
#[derive(Clone, Copy, Debug)]
pub struct ForwardOpts {
    /// The modalities kept; the others are fed as zeros of their input shape (the reference's
    /// padding; token inputs get the pad id).
    pub present: Subset,
    /// Training mode: batch statistics and dropout. The AGM masked passes run with `false` and
    /// still record gradients.
    pub train: bool,
    /// Seed for dropout masks of this pass; the trainer derives it from the run seed and step.
    pub dropout_seed: u64,
}

impl ForwardOpts {
    /// A training-mode pass over all `m` modalities, its dropout masks drawn from `dropout_seed`.
    pub fn train(m: usize, dropout_seed: u64) -> Self {
        Self { present: Subset::full(m), train: true, dropout_seed }
    }

    /// An evaluation-mode pass over all `m` modalities (no dropout, running statistics).
    pub fn eval(m: usize) -> Self {
        Self { present: Subset::full(m), train: false, dropout_seed: 0 }
    }

    /// The same pass with only `present`'s modalities fed (the others zeroed).
    pub fn with_present(self, present: Subset) -> Self {
        Self { present, ..self }
    }
}

/// How the masked passes of Shapley-based methods are computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShapleyMode {
    /// As the reference: one whole-network pass per subset, in evaluation mode, with gradients.
    /// Models may batch the masked passes into one call; the result is the same function.
    #[default]
    Faithful,
    /// Each encoder runs once, in training mode, on the real inputs; an absent modality's feature
    /// is the encoder's evaluation-mode output on a zero input (computed for one row and
    /// broadcast); the fusion runs on every combination in one batched call. Equal to
    /// `Faithful` for encoders without mode-dependent layers (batch norm, dropout); models that
    /// cannot factor into encoders and a fusion fall back to `Faithful`.
    Fast,
}

impl std::str::FromStr for ShapleyMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "faithful" => Ok(Self::Faithful),
            "fast" => Ok(Self::Fast),
            other => Err(format!("unknown Shapley mode `{other}`; expected `fast` or `faithful`")),
        }
    }
}

/// What one forward pass returns.
#[derive(Clone, Debug)]
pub struct ModelOutput {
    /// Fused logits `[B, classes]`.
    pub logits: Tensor,
    /// The fused feature the competition metric regresses from (for late concat fusion: the
    /// concatenated encoder outputs).
    pub fused_feature: Tensor,
    /// Per-modality encoder outputs, in modality order, for methods that need them.
    pub encoder_features: Vec<Tensor>,
    /// A model-specific extra output its [`MultimodalModel::aux_loss`] reads (AVE's per-segment
    /// audio-visual similarity); `None` for most models.
    pub aux: Option<Tensor>,
}

impl ModelOutput {
    /// An output without an extra (`aux`) tensor.
    pub fn new(logits: Tensor, fused_feature: Tensor, encoder_features: Vec<Tensor>) -> Self {
        Self { logits, fused_feature, encoder_features, aux: None }
    }
}

/// A model over `M` modalities.
///
/// Only four methods are required. A model owns its variables (usually through a
/// `candle_nn::VarMap`) and reports which belong to which modality in [`ParamGroups`], so
/// modulation methods never select parameters by name.
pub trait MultimodalModel {
    /// The modality names, in the order of `forward`'s inputs and of every per-modality value
    /// (coefficients, Shapley accuracies, parameter groups).
    fn modalities(&self) -> &ModalitySet;

    /// Classes of the logits `forward` returns (their last dimension).
    fn num_classes(&self) -> usize;

    /// One pass over `inputs` (one tensor per modality, all of them, even the absent ones: the
    /// model zeroes the ones `opts.present` leaves out).
    fn forward(&self, inputs: &[Tensor], opts: &ForwardOpts) -> Result<ModelOutput>;

    /// Trainable variables grouped by modality, plus the shared (fusion, head) ones, plus the
    /// buffers (BatchNorm running statistics) that optimizers must skip.
    fn param_groups(&self) -> ParamGroups;

    /// A loss term the model's reference adds to the cross-entropy of the full training pass
    /// (AVE's `100 · AVPS`), given that pass's output and the labels. Most models have none.
    fn aux_loss(&self, _full: &ModelOutput, _labels: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// The full training pass (`opts`) and one evaluation-mode pass keeping each subset of
    /// `masked`, in that order. The default runs them one by one (the reference); models
    /// override it to batch passes or, with [`ShapleyMode::Fast`], to reuse encoder outputs.
    fn shapley_passes(
        &self,
        inputs: &[Tensor],
        masked: &[Subset],
        opts: &ForwardOpts,
        _mode: ShapleyMode,
    ) -> Result<(ModelOutput, Vec<Tensor>)> {
        let full = self.forward(inputs, opts)?;
        let m = self.modalities().len();
        let passes = masked
            .iter()
            .map(|&s| Ok(self.forward(inputs, &ForwardOpts::eval(m).with_present(s))?.logits))
            .collect::<Result<_>>()?;
        Ok((full, passes))
    }

    /// The fusion alone: logits `[B, classes]` from one feature per modality, shaped as
    /// [`ModelOutput::encoder_features`] holds them, which the caller may detach, zero or mix
    /// (DGL applies the fusion head to each feature with the others zeroed). `train` and
    /// `dropout_seed` as in [`ForwardOpts`]; in training mode a fusion's batch norm updates its
    /// running statistics, which only the full pass should do, so methods call it in evaluation
    /// mode. `None` (the default): the model does not factor into encoders and a fusion.
    fn fuse(&self, _features: &[Tensor], _train: bool, _dropout_seed: u64) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// One logit tensor `[B, classes]` per modality, summing to the full pass's logits, where the
    /// model's fusion is a sum of per-modality heads (the reference's `_Sum` late-fusion
    /// models): its own uni-modal predictions, computed from `full.encoder_features`. `None`
    /// (the default) for every other model.
    fn modality_logits(&self, _full: &ModelOutput) -> Result<Option<Vec<Tensor>>> {
        Ok(None)
    }

    /// What [`ShapleyMode::Fast`] does for this model. The default
    /// [`MultimodalModel::shapley_passes`] ignores the mode and always runs the faithful passes.
    fn fast_shapley(&self) -> FastShapley {
        FastShapley::NotSupported
    }

    /// Whether [`ShapleyMode::Fast`] computes exactly what [`ShapleyMode::Faithful`] does.
    fn fast_shapley_is_exact(&self) -> bool {
        self.fast_shapley() != FastShapley::Approximate
    }
}

/// What [`ShapleyMode::Fast`] means for a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastShapley {
    /// The model runs the faithful passes whatever the mode.
    NotSupported,
    /// The fast passes compute exactly what the faithful ones do (no batch norm or dropout in
    /// the encoders).
    Exact,
    /// The fast passes reuse training-mode features: a documented approximation.
    Approximate,
}

impl<T: MultimodalModel + ?Sized> MultimodalModel for Box<T> {
    fn modalities(&self) -> &ModalitySet {
        (**self).modalities()
    }
    fn num_classes(&self) -> usize {
        (**self).num_classes()
    }
    fn forward(&self, inputs: &[Tensor], opts: &ForwardOpts) -> Result<ModelOutput> {
        (**self).forward(inputs, opts)
    }
    fn param_groups(&self) -> ParamGroups {
        (**self).param_groups()
    }
    fn aux_loss(&self, full: &ModelOutput, labels: &Tensor) -> Result<Option<Tensor>> {
        (**self).aux_loss(full, labels)
    }
    fn shapley_passes(
        &self,
        inputs: &[Tensor],
        masked: &[Subset],
        opts: &ForwardOpts,
        mode: ShapleyMode,
    ) -> Result<(ModelOutput, Vec<Tensor>)> {
        (**self).shapley_passes(inputs, masked, opts, mode)
    }
    fn fuse(&self, features: &[Tensor], train: bool, dropout_seed: u64) -> Result<Option<Tensor>> {
        (**self).fuse(features, train, dropout_seed)
    }
    fn modality_logits(&self, full: &ModelOutput) -> Result<Option<Vec<Tensor>>> {
        (**self).modality_logits(full)
    }
    fn fast_shapley(&self) -> FastShapley {
        (**self).fast_shapley()
    }
}
