//! Uni-modal predictions from the model itself: its fusion head read per modality, where it is
//! a linear layer over the concatenated encoder features (late concat, the official
//! `ConcatFusion`; OGM, OPM and InfoReg), else the Shapley mono-modal outputs; and the scores and
//! ratios OGM and OPM compute from them.

use agm_core::MultimodalModel;
use candle_core::{DType, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::{shapley, ForwardPlan, StepCx};

/// Where a method's uni-modal predictions `t_m` come from (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UniModal {
    /// The model's own uni-modal predictions where it has the ones the method's official code
    /// reads, otherwise the Shapley mono-modal outputs. For OGM, OPM and InfoReg: the head split
    /// `h_m W_mᵀ + b/M` when the model's head is a linear layer over the concatenated features;
    /// for OGM-GE: the per-modality heads of a summed late fusion.
    Auto,
    /// Always the Shapley mono-modal outputs of the masked passes.
    Shapley,
}

/// A linear classifier over the concatenated encoder features (the official `ConcatFusion`).
#[derive(Clone, Debug)]
pub(crate) struct ConcatHead {
    weight: Var,
    bias: Var,
}

impl ConcatHead {
    /// The model's head when it looks like `Linear(Σ d_m, C)` over the concatenation: a shared
    /// `[C, D]` weight named by `ParamGroups::head_weight` with a shared `[C]` bias beside it
    /// (and `D = Σ d_m` when the feature sizes are known).
    pub(crate) fn find(model: &dyn MultimodalModel, feature_dims: Option<&[usize]>) -> Option<Self> {
        let groups = model.param_groups();
        let name = groups.head_weight.as_deref()?;
        let shared = |n: &str| groups.shared.iter().find(|v| v.name == n).map(|v| v.var.clone());
        let weight = shared(name)?;
        let bias = shared(&format!("{}bias", name.strip_suffix("weight")?))?;
        let c = model.num_classes();
        let (wc, d) = weight.dims2().ok()?;
        let ok_dims = feature_dims.is_none_or(|f| f.iter().sum::<usize>() == d);
        (wc == c && bias.dims() == [c] && ok_dims).then_some(Self { weight, bias })
    }

    /// The features flattened to `[B, d_m]`, checked against the weight's width.
    fn flat(&self, features: &[Tensor]) -> Result<Vec<Tensor>> {
        let flat = features.iter().map(|f| f.flatten_from(1)).collect::<Result<Vec<_>>>()?;
        let total: usize = flat.iter().map(|f| f.dim(1)).sum::<Result<usize>>()?;
        let d = self.weight.dim(1)?;
        if total != d {
            candle_core::bail!(
                "the encoder features have {total} values per sample but the head takes {d}: the head is not a \
                 linear layer over their concatenation; set uni_modal = \"shapley\""
            );
        }
        Ok(flat)
    }

    /// `t_m = h_m W_mᵀ + b/M`, the head read per modality; with `detach_head` the gradient
    /// reaches only the features (OGM, OPM), without it the head too (InfoReg).
    pub(crate) fn uni_logits(&self, features: &[Tensor], detach_head: bool) -> Result<Vec<Tensor>> {
        let flat = self.flat(features)?;
        let (w, b) = (self.weight.as_tensor(), self.bias.as_tensor());
        let (w, b) = if detach_head { (w.detach(), b.detach()) } else { (w.clone(), b.clone()) };
        let b = b.affine(1.0 / flat.len() as f64, 0.0)?;
        let mut start = 0;
        flat.iter()
            .map(|h| {
                let d = h.dim(1)?;
                let wm = w.narrow(1, start, d)?;
                start += d;
                h.matmul(&wm.t()?)?.broadcast_add(&b)
            })
            .collect()
    }

    /// `concat(features) Wᵀ + b`, differentiable in the features and the head.
    pub(crate) fn fuse(&self, features: &[Tensor]) -> Result<Tensor> {
        let x = Tensor::cat(&self.flat(features)?, 1)?;
        x.matmul(&self.weight.as_tensor().t()?)?.broadcast_add(self.bias.as_tensor())
    }

    /// Whether the full pass's logits are this head over the pass's features.
    pub(crate) fn matches(&self, features: &[Tensor], logits: &Tensor) -> Result<bool> {
        let total: usize = features.iter().map(|f| Ok(f.elem_count() / f.dim(0)?)).sum::<Result<usize>>()?;
        if total != self.weight.dim(1)? {
            return Ok(false);
        }
        let recon = self.fuse(&features.iter().map(Tensor::detach).collect::<Vec<_>>())?;
        let diff = (recon - logits.detach())?.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let scale = logits.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let tol = if logits.dtype() == DType::F64 { 1e-9 } else { 1e-4 };
        Ok(diff <= tol * (1.0 + scale))
    }

    /// Fails unless [`ConcatHead::matches`].
    pub(crate) fn check(&self, method: &str, features: &[Tensor], logits: &Tensor) -> Result<()> {
        if !self.matches(features, logits)? {
            candle_core::bail!(
                "{method}: the model's logits are no longer its head over the concatenated encoder features; set \
                 {method}.uni_modal = \"shapley\" for this model"
            );
        }
        Ok(())
    }
}

/// Where a method built for a model takes its uni-modal predictions from.
#[derive(Clone, Debug)]
pub(crate) enum UniSource {
    /// A head of the right shapes, to be confirmed on the first step's full pass (which runs
    /// with the masked passes, so that the Shapley outputs are there if it is not confirmed).
    Pending(ConcatHead),
    Head(ConcatHead),
    Shapley,
}

impl UniSource {
    pub(crate) fn for_model(mode: UniModal, model: &dyn MultimodalModel, feature_dims: Option<&[usize]>) -> Self {
        match (mode, ConcatHead::find(model, feature_dims)) {
            (UniModal::Auto, Some(head)) => UniSource::Pending(head),
            _ => UniSource::Shapley,
        }
    }

    pub(crate) fn forward_plan(&self) -> ForwardPlan {
        match self {
            UniSource::Head(_) => ForwardPlan::Full,
            UniSource::Pending(_) | UniSource::Shapley => ForwardPlan::Shapley,
        }
    }

    /// Whether the head split is used (for logs and state).
    pub(crate) fn is_head(&self) -> bool {
        matches!(self, UniSource::Head(_))
    }

    /// The uni-modal predictions `t_m` of this step (with their graph); a pending head is
    /// confirmed or given up here.
    pub(crate) fn uni_logits(&mut self, method: &str, cx: &StepCx<'_>) -> Result<Vec<Tensor>> {
        let full = &cx.forward.full;
        if let UniSource::Pending(head) = self {
            *self = if head.matches(&full.encoder_features, &full.logits)? {
                UniSource::Head(head.clone())
            } else {
                UniSource::Shapley
            };
        }
        match self {
            UniSource::Head(head) => {
                head.check(method, &full.encoder_features, &full.logits)?;
                head.uni_logits(&full.encoder_features, true)
            }
            _ => {
                let m = cx.model.modalities().len();
                shapley::mono_outputs(m, |s| cx.forward.logits(s, m))
            }
        }
    }
}

/// `Σ_b softmax(logits)[b, y_b]` as a scalar tensor with its graph.
pub(crate) fn score_tensor(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let p = agm_kernels::softmax_last_dim(logits)?;
    let idx = labels.to_dtype(DType::U32)?.unsqueeze(1)?;
    p.gather(&idx, 1)?.sum_all()
}

/// `Σ_b softmax(logits)[b, y_b]` in f64.
pub(crate) fn score_value(logits: &Tensor, labels: &[u32]) -> Result<f64> {
    Ok(shapley::true_class_probs(logits, labels)?.iter().sum())
}

/// The modality with the smallest score; the first one on a tie.
pub(crate) fn weakest(scores: &[f64]) -> usize {
    let mut w = 0;
    for (m, &s) in scores.iter().enumerate() {
        if s < scores[w] {
            w = m;
        }
    }
    w
}

/// `s_m / s_w` for every modality (1 for the weakest; infinite over a zero weakest score, 1 for
/// 0/0).
pub(crate) fn ratios(scores: &[f64], w: usize) -> Vec<f64> {
    let sw = scores[w];
    scores
        .iter()
        .enumerate()
        .map(|(m, &s)| {
            if m == w {
                1.0
            } else if sw > 0.0 {
                s / sw
            } else if s > 0.0 {
                f64::INFINITY
            } else {
                1.0
            }
        })
        .collect()
}
