//! MMPareto (Wei and Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal
//! Assistance", ICML 2024) as a [`Modulator`] with its own backward.
//!
//! # What one step computes (official code, `code/MMPareto.py::train_epoch`)
//!
//! 1. Losses: `L_mm = CE(T, y)` on the model's fused logits and, for every modality `m`,
//!    `L_m = CE(head_m(h_m), y)` with a linear uni-modal head owned by the method (created in
//!    [`Modulator::attach`] over the flattened encoder feature, not by the model).
//! 2. **One backward per loss** (`M + 1` backward passes): `g_mm` and `g_m` for every variable.
//!    The gradient of the summed loss `g_sum = g_mm + Σ_m g_m` is the sum of these stores (the
//!    official code runs one more backward of `L_mm + Σ L_m`; the result is the same up to
//!    rounding).
//! 3. Per encoder `m` (the variables of `param_groups().per_modality[m]`, never selected by
//!    name), with the encoder's gradients flattened into one vector each:
//!    - `cos(g_mm^m, g_m^m) > 0`: weights `(k_mm, k_uni) = (½, ½)`;
//!    - otherwise the 2-task min-norm point of the segment between them (closed form,
//!      [`min_norm_2`]): `k_mm = (⟨g_m,g_m⟩ − ⟨g_mm,g_m⟩)/‖g_mm − g_m‖²`, with the official
//!      solver's edge cases (`0.999` when `⟨g_mm,g_m⟩ ≥ ‖g_mm‖²`, `0.001` when
//!      `⟨g_mm,g_m⟩ ≥ ‖g_m‖²`), and `k_uni = 1 − k_mm`.
//!
//!    The direction `d = 2·(k_mm·g_mm + k_uni·g_m)` has a non-negative inner product with both
//!    gradients (for the min-norm point `u`, `⟨u, g⟩ ≥ ‖u‖²` for both ends of the segment).
//! 4. Magnitude, per parameter tensor `p` of the encoder (official):
//!    `g_p ← γ · d_p · max(1, ‖g_sum,p‖ / ‖d_p‖)` with `γ = gamma` (1.5, hard-coded in the
//!    official code). A tensor with `d_p = 0` gets 0 (the official code divides by zero there).
//!    With [`ParetoRescale::PerEncoder`] the factor is computed once from the norms of the whole
//!    encoder, so the final gradient keeps the direction `d` and its common-descent property;
//!    the official per-tensor factors can, in the conflicting case, turn the encoder's gradient
//!    away from that direction.
//! 5. Every other variable (shared fusion/head, the method's heads) keeps `g_sum`.
//!
//! # Golden case
//!
//! `tests/fixtures/golden/mmpareto`, made by `scripts/golden/mmpareto/generate.py` from the
//! official `train_epoch` and `MinNormSolver` on the `method_steps` tiny network (the official
//! name rules select exactly its encoder tensors there), pins the per-tensor rescaling: both
//! branches for both encoders, both edge cases of the solver (an exactly zero gradient at step
//! 1), and steps where one tensor of an encoder is rescaled and the other is not. The replay
//! compares the parameters, the losses (`state().losses`) and `k_uni` (the coefficients).
//!
//! # Cost
//!
//! The `M + 1` backward passes run inside [`Modulator::backward`], which the trainer times as
//! part of the step, so the extra cost appears in the step time it reports
//! (`mean_step_seconds`).
//!
//! # Encoder feature sizes
//!
//! As for [`crate::GBlend`]: give them with [`MmPareto::with_feature_dims`]
//! ([`crate::encoder_feature_dims`] measures them from one batch).

use crate::MethodError;
use agm_core::{MultimodalModel, NamedVar};
use agm_kernels::gram;
use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::shared::{require_two, scalar_f64};
use crate::uni_heads::UniHeads;
use crate::{Modulator, Objective, StepCx};

/// How the combined gradient's magnitude is restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ParetoRescale {
    /// One factor per parameter tensor (the official code).
    PerTensor,
    /// One factor per encoder (keeps the Pareto direction).
    PerEncoder,
}

impl ParetoRescale {
    /// The names a config file accepts for `mmpareto.rescale`.
    pub const NAMES: &'static [&'static str] = &["per-tensor", "per-encoder"];

    /// The rule's name in a config file (`per-tensor`, `per-encoder`).
    pub fn as_str(self) -> &'static str {
        match self {
            ParetoRescale::PerTensor => "per-tensor",
            ParetoRescale::PerEncoder => "per-encoder",
        }
    }
}

impl TryFrom<String> for ParetoRescale {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.as_str() {
            "per-tensor" => Ok(ParetoRescale::PerTensor),
            "per-encoder" => Ok(ParetoRescale::PerEncoder),
            _ => Err(format!("mmpareto.rescale = `{s}` is not known; allowed: {}", ParetoRescale::NAMES.join(", "))),
        }
    }
}

impl From<ParetoRescale> for String {
    fn from(r: ParetoRescale) -> String {
        r.as_str().to_string()
    }
}

/// MMPareto settings. Use a named preset; in a config file missing keys take the AV-Digits
/// preset's values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default = "MmParetoConfig::av_digits")]
pub struct MmParetoConfig {
    /// Magnitude factor `γ` applied to every encoder gradient (official: 1.5); > 0.
    pub gamma: f64,
    /// `per-tensor` (official) or `per-encoder`.
    pub rescale: ParetoRescale,
}

impl MmParetoConfig {
    /// The official code: `γ = 1.5`, per-tensor rescaling.
    pub fn official() -> Self {
        Self { gamma: 1.5, rescale: ParetoRescale::PerTensor }
    }

    /// The embedded AV-Digits default: the official settings.
    pub fn av_digits() -> Self {
        Self::official()
    }

    /// The preset names [`MmParetoConfig::preset`] accepts.
    pub const PRESETS: &'static [&'static str] = &["official", "av-digits"];

    /// The preset called `name` (one of [`MmParetoConfig::PRESETS`]); `None` for any other name.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "official" => Some(Self::official()),
            "av-digits" => Some(Self::av_digits()),
            _ => None,
        }
    }

    /// Checks every field; the error names the field and the allowed values.
    pub fn validate(&self) -> std::result::Result<(), MethodError> {
        if !(self.gamma.is_finite() && self.gamma > 0.0) {
            return Err(format!("mmpareto.gamma must be a finite number > 0, got {}", self.gamma).into());
        }
        Ok(())
    }
}

/// The weight `c` of the first vector in `min_c ‖c·x₁ + (1−c)·x₂‖²`, from `v11 = ⟨x₁,x₁⟩`,
/// `v12 = ⟨x₁,x₂⟩`, `v22 = ⟨x₂,x₂⟩`, with the official solver's edge cases.
pub fn min_norm_2(v11: f64, v12: f64, v22: f64) -> f64 {
    if v12 >= v11 {
        return 0.999;
    }
    if v12 >= v22 {
        return 0.001;
    }
    (v22 - v12) / (v11 + v22 - 2.0 * v12)
}

/// What the combination did for one encoder.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ParetoEncoderStats {
    /// Cosine between the encoder's multimodal and uni-modal gradients.
    #[serde(with = "agm_core::serde_f64")]
    pub cos: f64,
    /// True when `cos ≤ 0` and the min-norm weights were used.
    pub conflict: bool,
    /// Weight of the multimodal gradient in the direction `d` (½ without a conflict).
    #[serde(with = "agm_core::serde_f64")]
    pub k_mm: f64,
    /// Weight of the uni-modal gradient, `1 − k_mm`.
    #[serde(with = "agm_core::serde_f64")]
    pub k_uni: f64,
    /// `⟨d, g_mm⟩` for the direction `d` before the magnitude rescaling.
    #[serde(with = "agm_core::serde_f64")]
    pub dot_mm: f64,
    /// `⟨d, g_uni⟩`, likewise.
    #[serde(with = "agm_core::serde_f64")]
    pub dot_uni: f64,
}

/// Combines one encoder's gradients (one tensor per parameter, in the same order in the three
/// slices) as the module docs describe; returns the new gradients and what was done.
pub fn pareto_combine(
    g_mm: &[Tensor],
    g_uni: &[Tensor],
    g_sum: &[Tensor],
    gamma: f64,
    rescale: ParetoRescale,
) -> Result<(Vec<Tensor>, ParetoEncoderStats)> {
    if g_mm.len() != g_uni.len() || g_mm.len() != g_sum.len() {
        candle_core::bail!("pareto_combine: {} / {} / {} gradient tensors", g_mm.len(), g_uni.len(), g_sum.len());
    }
    let (mut v11, mut v12, mut v22) = (0.0, 0.0, 0.0);
    for (a, b) in g_mm.iter().zip(g_uni) {
        let g = gram(&[a.clone(), b.clone()])?;
        v11 += g[0];
        v12 += g[1];
        v22 += g[3];
    }
    let cos = v12 / (v11.sqrt() * v22.sqrt()).max(1e-8);
    // A NaN cosine (a zero gradient) counts as a conflict.
    let conflict = cos <= 0.0 || cos.is_nan();
    let (k_mm, k_uni) = if conflict {
        let c = min_norm_2(v11, v12, v22);
        (c, 1.0 - c)
    } else {
        (0.5, 0.5)
    };
    let dirs = g_mm
        .iter()
        .zip(g_uni)
        .map(|(a, b)| a.affine(2.0 * k_mm, 0.0)? + b.affine(2.0 * k_uni, 0.0)?)
        .collect::<Result<Vec<_>>>()?;
    // One pass per tensor for the direction's products with both gradients, its own norm and the
    // summed gradient's norm: [d·d, d·a, d·b, s·s] as Gram entries (0,0), (0,1), (0,2), (3,3).
    let (mut dot_mm, mut dot_uni) = (0.0, 0.0);
    let mut norms = Vec::with_capacity(dirs.len());
    for (((d, a), b), s) in dirs.iter().zip(g_mm).zip(g_uni).zip(g_sum) {
        let g = gram(&[d.clone(), a.clone(), b.clone(), s.clone()])?;
        dot_mm += g[1];
        dot_uni += g[2];
        norms.push((g[15], g[0]));
    }
    let factor = |sum_sq: f64, dir_sq: f64| {
        let ratio = sum_sq.sqrt() / dir_sq.sqrt();
        if dir_sq > 0.0 && ratio > 1.0 {
            ratio
        } else {
            1.0
        }
    };
    let out = match rescale {
        ParetoRescale::PerTensor => dirs
            .iter()
            .zip(&norms)
            .map(|(d, &(ss, dd))| d.affine(gamma * factor(ss, dd), 0.0))
            .collect::<Result<Vec<_>>>()?,
        ParetoRescale::PerEncoder => {
            let (ss, dd) = norms.iter().fold((0.0, 0.0), |(ss, dd), &(s, d)| (ss + s, dd + d));
            let f = gamma * factor(ss, dd);
            dirs.iter().map(|d| d.affine(f, 0.0)).collect::<Result<Vec<_>>>()?
        }
    };
    Ok((out, ParetoEncoderStats { cos, conflict, k_mm, k_uni, dot_mm, dot_uni }))
}

/// The numbers of one MMPareto step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MmParetoStats {
    /// `L_mm`, then `L_m` for every modality.
    #[serde(with = "agm_core::serde_f64::seq")]
    pub losses: Vec<f64>,
    /// One entry per encoder.
    pub encoders: Vec<ParetoEncoderStats>,
}

/// MMPareto with method-owned uni-modal heads (see the module docs).
#[derive(Debug)]
pub struct MmPareto {
    cfg: MmParetoConfig,
    m: usize,
    seed: u64,
    feature_dims: Option<Vec<usize>>,
    heads: Option<UniHeads>,
    /// The losses of the current step (`L_mm`, then `L_m`), from `objective` to `backward`.
    pending: Option<Vec<Tensor>>,
    last: Option<MmParetoStats>,
}

impl MmPareto {
    /// MMPareto over `m` modalities (at least 2).
    pub fn new(cfg: MmParetoConfig, m: usize) -> std::result::Result<Self, MethodError> {
        cfg.validate()?;
        require_two("mmpareto", m)?;
        Ok(Self { cfg, m, seed: 0, feature_dims: None, heads: None, pending: None, last: None })
    }

    /// The run's seed: seeds the heads' initial values.
    pub fn with_run_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The flattened size of each encoder feature; required before [`Modulator::attach`].
    pub fn with_feature_dims(mut self, dims: Vec<usize>) -> std::result::Result<Self, MethodError> {
        if dims.len() != self.m {
            return Err(format!("mmpareto: {} encoder feature sizes for {} modalities", dims.len(), self.m).into());
        }
        self.feature_dims = Some(dims);
        Ok(self)
    }

    /// The settings it was built with.
    pub fn config(&self) -> &MmParetoConfig {
        &self.cfg
    }

    /// The losses and per-encoder combinations of the last step; `None` before the first.
    pub fn last_stats(&self) -> Option<&MmParetoStats> {
        self.last.as_ref()
    }

    /// The uni-modal heads' logits over this step's encoder features (with gradients).
    pub fn uni_logits(&self, cx: &StepCx<'_>) -> Result<Vec<Tensor>> {
        self.heads
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("mmpareto: attach was not called".into()))?
            .forward_all(&cx.forward.full.encoder_features)
    }
}

/// The gradient of `t` in `store`, or zeros.
fn grad_or_zeros(store: &GradStore, t: &Tensor) -> Result<Tensor> {
    match store.get(t) {
        Some(g) => Ok(g.clone()),
        None => t.zeros_like(),
    }
}

impl Modulator for MmPareto {
    fn name(&self) -> &'static str {
        "mmpareto"
    }

    fn attach(&mut self, model: &dyn MultimodalModel) -> Result<Vec<NamedVar>> {
        if model.modalities().len() != self.m {
            candle_core::bail!(
                "mmpareto was built for {} modalities, the model has {}",
                self.m,
                model.modalities().len()
            );
        }
        let dims = self.feature_dims.as_ref().ok_or_else(|| {
            candle_core::Error::Msg(
                "mmpareto needs the encoder feature sizes to build its uni-modal heads: call \
                 MmPareto::with_feature_dims (agm_modulation::encoder_feature_dims measures them from one batch)"
                    .into(),
            )
        })?;
        let heads = UniHeads::create("mmpareto", model, dims, self.seed)?;
        let vars = heads.named_vars();
        self.heads = Some(heads);
        Ok(vars)
    }

    fn objective(&mut self, cx: &StepCx<'_>) -> Result<Objective> {
        let full = &cx.forward.full;
        let labels = &cx.batch.labels;
        let uni = self.uni_logits(cx)?;
        let mut losses = vec![candle_nn::loss::cross_entropy(&full.logits, labels)?];
        for logits in &uni {
            losses.push(candle_nn::loss::cross_entropy(logits, labels)?);
        }
        let loss = losses.iter().skip(1).try_fold(losses[0].clone(), |a, b| a + b)?;
        self.pending = Some(losses);
        Ok(Objective { loss, output: full.logits.clone(), mono: Some(uni.iter().map(Tensor::detach).collect()) })
    }

    /// `M + 1` backward passes (one per loss), then the per-encoder Pareto combination.
    fn backward(&mut self, cx: &StepCx<'_>, _objective: &Objective) -> Result<GradStore> {
        let losses = self.pending.take().ok_or_else(|| {
            candle_core::Error::Msg("mmpareto: backward without its objective in the same step".into())
        })?;
        let stores = losses.iter().map(agm_kernels::backward).collect::<Result<Vec<_>>>()?;
        let groups = cx.model.param_groups();
        if groups.per_modality.len() != self.m {
            candle_core::bail!(
                "mmpareto: the model reports {} modality groups, expected {}",
                groups.per_modality.len(),
                self.m
            );
        }
        let heads =
            self.heads.as_ref().ok_or_else(|| candle_core::Error::Msg("mmpareto: attach was not called".into()))?;
        // g_sum for every trainable variable (model and heads).
        let mut out = GradStore::default();
        let all: Vec<Tensor> = groups
            .trainable()
            .iter()
            .map(|v| v.var.as_tensor().clone())
            .chain(heads.vars().map(|v| v.as_tensor().clone()))
            .collect();
        for t in &all {
            let mut acc: Option<Tensor> = None;
            for s in &stores {
                if let Some(g) = s.get(t) {
                    acc = Some(match acc {
                        None => g.clone(),
                        Some(a) => (a + g)?,
                    });
                }
            }
            if let Some(g) = acc {
                out.insert(t, g);
            }
        }
        let mut stats = MmParetoStats {
            losses: losses.iter().map(scalar_f64).collect::<Result<_>>()?,
            encoders: Vec::with_capacity(self.m),
        };
        for (x, vars) in groups.per_modality.iter().enumerate() {
            let vars: Vec<&Tensor> = vars.iter().map(|v| v.var.as_tensor()).filter(|t| out.get(t).is_some()).collect();
            let g_mm = vars.iter().map(|t| grad_or_zeros(&stores[0], t)).collect::<Result<Vec<_>>>()?;
            let g_uni = vars.iter().map(|t| grad_or_zeros(&stores[1 + x], t)).collect::<Result<Vec<_>>>()?;
            let g_sum = vars.iter().map(|t| grad_or_zeros(&out, t)).collect::<Result<Vec<_>>>()?;
            let (new, enc) = pareto_combine(&g_mm, &g_uni, &g_sum, self.cfg.gamma, self.cfg.rescale)?;
            for (t, g) in vars.iter().zip(new) {
                out.insert(t, g);
            }
            stats.encoders.push(enc);
        }
        self.last = Some(stats);
        Ok(out)
    }

    /// The weight of each encoder's uni-modal gradient in its combination (½ without conflict).
    fn coefficients(&self) -> Option<Vec<f64>> {
        Some(match &self.last {
            Some(s) => s.encoders.iter().map(|e| e.k_uni).collect(),
            None => vec![0.5; self.m],
        })
    }

    /// The last step's statistics (so logged coefficients continue exactly after a resume); the
    /// heads are variables the trainer saves with the model.
    fn state(&self) -> serde_json::Value {
        serde_json::to_value(self.last.as_ref()).expect("plain numbers serialize")
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let last: Option<MmParetoStats> = serde_json::from_value(state.clone())
            .map_err(|e| candle_core::Error::Msg(format!("mmpareto state in checkpoint: {e}")))?;
        if last.as_ref().is_some_and(|s| s.encoders.len() != self.m || s.losses.len() != self.m + 1) {
            candle_core::bail!("mmpareto state in checkpoint is not for {} modalities", self.m);
        }
        self.last = last;
        Ok(())
    }
}

impl crate::Method for MmPareto {
    const NAME: &'static str = "mmpareto";
    const HOOKS: crate::Hooks = crate::Hooks::OBJECTIVE_AND_BACKWARD;
    type Config = MmParetoConfig;

    fn preset(_dataset: &str) -> MmParetoConfig {
        MmParetoConfig::av_digits()
    }

    fn validate(config: &MmParetoConfig) -> std::result::Result<(), MethodError> {
        config.validate()
    }

    fn build(config: &MmParetoConfig, cx: &crate::BuildCx<'_>) -> std::result::Result<Self, MethodError> {
        let p = MmPareto::new(config.clone(), cx.modalities())?.with_run_seed(cx.seed);
        p.with_feature_dims(cx.feature_dims(Self::NAME)?)
    }
}
