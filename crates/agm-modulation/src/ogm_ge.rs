//! OGM-GE (Peng et al., CVPR 2022): on-the-fly gradient modulation with generalisation
//! enhancement, as a [`Modulator`] that edits gradients after backward.
//!
//! # What one step computes
//!
//! 1. Uni-modal outputs `m_x`, for any number of modalities. With `uni_modal = "auto"` (the
//!    default), a model whose fusion sums one head per modality (the `-late-sum` presets, the
//!    reference's `_Sum` models) gives its own per-modality logits from the training pass, as
//!    the reference reads `out_a, out_v` from those models in late fusion; every other model
//!    gives the Shapley mono-modal outputs of the masked passes
//!    ([`crate::shapley::mono_outputs`], the forward plan [`ForwardPlan::Shapley`] as for AGM),
//!    as the reference does in early fusion. `uni_modal = "shapley"` always takes the latter.
//! 2. Scores `S_x = Σ_k softmax(m_x)[k, y_k]`: a **sum** over the batch of the true-class
//!    probability (not a log, not a mean), computed in f64.
//! 3. The weakest modality `w` is the one with the smallest `S` (on an exact tie, the last of
//!    the tied ones, so that for M = 2 a tie damps audio as the reference's `else` branch does).
//!    Every other modality `x` has the discrepancy ratio `ρ_x = S_x / S_w ≥ 1` and the
//!    coefficient `k_x = 1 − tanh(alpha · ρ_x)`; the weakest keeps `k_w = 1`.
//!    - M = 2 this is exactly the reference and the official code: `r_v = S_v / S_a`; if
//!      `r_v > 1` then `k_v = 1 − tanh(alpha·r_v)`, `k_a = 1`, else `k_a = 1 − tanh(alpha/r_v)`,
//!      `k_v = 1`.
//!    - M > 2 (our choice, documented in `docs/known-differences.md`): pairwise ratios against
//!      the weakest modality (as BalanceMM's N-ary OGM), so every modality but the weakest is
//!      damped, each by its own ratio.
//!    - The argument is the ratio itself, not `ratio − 1`. This is Eq. (10) of the OGM-GE paper
//!      as its official repository writes it (`1 − tanh(alpha · relu(ratio))`, `relu` being the
//!      identity on a positive ratio) and also what the AGM repository's branch does, in both
//!      modes: even `ρ` barely above 1 damps by `1 − tanh(alpha)`.
//!    - `k` is kept in `(0, 1]`: where `1 − tanh(x)` rounds to 0 in f64 (`x` above about 19) the
//!      stable form `2/(1 + e^{2x})` is used, floored at the smallest positive f64 (the
//!      reference freezes the modality with an exact 0 there).
//! 4. Inside the modulation window (1-based, inclusive epochs), for every selected parameter `p`
//!    of modality `x`: `grad_p ← k_x · grad_p + N(0, σ_p)` with `σ_p = std(grad_p) + 1e-8`, the
//!    unbiased standard deviation of the **unscaled** gradient. The noise is added to the
//!    selected parameters of **every** modality, including those with `k = 1`; it is switched
//!    off with `noise = false`. Outside the window nothing is edited.
//!
//! Parameters are selected from the model's parameter groups
//! (`MultimodalModel::param_groups().per_modality[x]`), never by name:
//!
//! - [`OgmMode::Reference`] (the AGM repository's OGM-GE branch): only the 4-D weights (conv
//!   kernels) of each modality's group; biases, linear, normalisation and head parameters are
//!   untouched. A model whose modality groups hold no 4-D weight is rejected by the registry,
//!   because there the method would silently do nothing (the reference's name rule does exactly
//!   that in AV-MNIST late fusion).
//! - [`OgmMode::Paper`]: every trainable parameter of the modality's encoder group, the
//!   encoder parameters `θ^u` that the paper modulates. The official code reaches only the conv
//!   weights because its ResNet encoders are almost entirely convolutions; on encoders without
//!   convolutions (AV-Digits' MLPs) it would modulate nothing.
//!
//! The coefficient formula, the noise and the window are the same in both modes.
//!
//! Each edited gradient's noise is its own stream of counter-based draws
//! ([`agm_kernels::add_gaussian_noise`]), seeded from the configured seed, the run seed, the
//! 1-based global step and the gradient's place (modality order, then parameter order within the
//! group), and drawn where the gradient lives, in parallel. A resumed run therefore draws exactly
//! the noise the uninterrupted run drew, and the CPU and CUDA draw the same noise.

use crate::MethodError;
use agm_core::{MultimodalModel, NamedVar};
use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::shapley;
use crate::shared::mix_seed;
use crate::{ClipRule, ForwardPlan, Modulator, StepCx, UniModal};

/// Added to the gradient's standard deviation (the official `std + 1e-8`).
pub const NOISE_STD_EPS: f64 = 1e-8;

/// Which parameters OGM-GE edits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum OgmMode {
    /// The AGM repository's branch: only 4-D (conv) weights of each modality's group.
    Reference,
    /// The OGM-GE paper: every parameter of each modality's encoder group.
    Paper,
}

impl OgmMode {
    /// The names a config file accepts.
    pub const NAMES: &'static [&'static str] = &["reference", "paper"];

    /// The mode's name in a config file (`reference`, `paper`).
    pub fn as_str(self) -> &'static str {
        match self {
            OgmMode::Reference => "reference",
            OgmMode::Paper => "paper",
        }
    }

    /// Whether a parameter of a modality's group is edited in this mode.
    pub fn selects(self, var: &NamedVar) -> bool {
        match self {
            OgmMode::Reference => var.var.rank() == 4,
            OgmMode::Paper => true,
        }
    }
}

impl TryFrom<String> for OgmMode {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.as_str() {
            "reference" => Ok(OgmMode::Reference),
            "paper" => Ok(OgmMode::Paper),
            _ => Err(format!("ogm_ge.mode = `{s}` is not known; allowed: {}", OgmMode::NAMES.join(", "))),
        }
    }
}

impl From<OgmMode> for String {
    fn from(m: OgmMode) -> String {
        m.as_str().to_string()
    }
}

/// OGM-GE settings. Use a named preset; in a config file missing keys take the AV-Digits
/// preset's values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default = "OgmGeConfig::av_digits")]
pub struct OgmGeConfig {
    /// `reference` or `paper` (which parameters are edited, see the module docs).
    pub mode: OgmMode,
    /// Modulation strength, `k = 1 − tanh(alpha · ρ)`; must be > 0.
    pub alpha: f64,
    /// The "GE" part: Gaussian noise with the gradient's standard deviation.
    pub noise: bool,
    /// Mixed with the run seed and the step to seed the noise.
    pub seed: u64,
    /// First epoch (1-based, inclusive) in which gradients are edited.
    pub window_start: usize,
    /// Last epoch (inclusive); `None` means until the end.
    #[serde(with = "agm_core::serde_none")]
    pub window_end: Option<usize>,
    /// Conditional clipping after the edit (the reference clips every method in early fusion).
    #[serde(with = "agm_core::serde_none")]
    pub clip: Option<ClipRule>,
    /// `auto` or `shapley`: where the uni-modal outputs come from (see the module docs).
    pub uni_modal: UniModal,
}

impl OgmGeConfig {
    /// The AGM repository's AV-MNIST early-fusion code path, the one where its OGM-GE acts
    /// (golden case `ogm`): 4-D weights only, noise on, clipping at 1 as for every early-fusion
    /// method; alpha is not stated by the authors (CLI default 1).
    pub fn reference_avmnist() -> Self {
        Self {
            mode: OgmMode::Reference,
            alpha: 1.0,
            noise: true,
            seed: 0,
            window_start: 0,
            window_end: None,
            clip: Some(ClipRule::outside_band(1.0, 1.0)),
            uni_modal: UniModal::Auto,
        }
    }

    /// The AGM repository's CREMA-D late-fusion code path (`run/CREMAD_main.py`, on the summed
    /// heads model): every encoder and uni-modal head parameter, the heads' outputs as the
    /// uni-modal responses, noise on, alpha 1.0 (the shared `--alpha` default), over the whole
    /// run, no clipping.
    pub fn reference_cremad() -> Self {
        Self { alpha: 1.0, window_start: 0, window_end: None, ..Self::paper_cremad() }
    }

    /// The official OGM-GE repository on CREMA-D: alpha 0.8 (its README), modulation in its
    /// 0-based epochs 0..=50, i.e. 1-based epochs 1..=51, no clipping.
    pub fn paper_cremad() -> Self {
        Self {
            mode: OgmMode::Paper,
            alpha: 0.8,
            noise: true,
            seed: 0,
            window_start: 1,
            window_end: Some(51),
            clip: None,
            uni_modal: UniModal::Auto,
        }
    }

    /// The official OGM-GE repository on VGGSound: alpha 0.1 (its README), same window.
    pub fn paper_vggsound() -> Self {
        Self { alpha: 0.1, ..Self::paper_cremad() }
    }

    /// The embedded AV-Digits default: paper mode (its encoders have no convolutions), alpha 0.5,
    /// noise on, over the whole run, no clipping.
    pub fn av_digits() -> Self {
        Self { alpha: 0.5, window_start: 0, window_end: None, ..Self::paper_cremad() }
    }

    /// The preset names [`OgmGeConfig::preset`] accepts.
    pub const PRESETS: &'static [&'static str] =
        &["reference-avmnist", "reference-cremad", "paper-cremad", "paper-vggsound", "av-digits"];

    /// The preset called `name` (one of [`OgmGeConfig::PRESETS`]); `None` for any other name.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "reference-avmnist" => Some(Self::reference_avmnist()),
            "reference-cremad" => Some(Self::reference_cremad()),
            "paper-cremad" => Some(Self::paper_cremad()),
            "paper-vggsound" => Some(Self::paper_vggsound()),
            "av-digits" => Some(Self::av_digits()),
            _ => None,
        }
    }

    /// Whether gradients are edited in 1-based epoch `epoch`: from `window_start` through
    /// `window_end` (no end when it is `None`).
    pub fn in_window(&self, epoch: usize) -> bool {
        crate::shared::in_window(self.window_start, self.window_end, epoch)
    }

    /// Checks every field; the error names the field and the allowed values.
    pub fn validate(&self) -> std::result::Result<(), MethodError> {
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(format!("ogm_ge.alpha must be a finite number > 0, got {}", self.alpha).into());
        }
        crate::shared::check_window("ogm_ge", self.window_start, self.window_end)?;
        if let Some(c) = &self.clip {
            c.validate("ogm_ge")?;
        }
        Ok(())
    }
}

/// The coefficients of one step, from the per-modality score sums.
#[derive(Clone, Debug, PartialEq)]
pub struct OgmCoefficients {
    /// The modality with the smallest score sum (the last one on an exact tie).
    pub weakest: usize,
    /// `S_x / S_weakest` (1 for the weakest).
    pub ratio: Vec<f64>,
    /// `1 − tanh(alpha · ratio)` for every modality but the weakest, which has 1.
    pub coeff: Vec<f64>,
}

/// `1 − tanh(x)` for `x ≥ 0`, computed as the official code computes it (bit for bit, also
/// where cancellation costs it digits) and kept in `(0, 1]`: where it rounds to 0, the official
/// code freezes the modality, and the exact `2/(1 + e^{2x})` is used instead.
pub(crate) fn one_minus_tanh(x: f64) -> f64 {
    let k = 1.0 - x.tanh();
    if k > 0.0 {
        k
    } else {
        (2.0 / (1.0 + (2.0 * x).exp())).max(f64::MIN_POSITIVE)
    }
}

/// The OGM coefficients for these score sums (see the module docs).
pub fn ogm_coefficients(alpha: f64, score_sum: &[f64]) -> OgmCoefficients {
    let m = score_sum.len();
    let mut weakest = 0;
    for (x, &s) in score_sum.iter().enumerate() {
        if s <= score_sum[weakest] {
            weakest = x;
        }
    }
    let sw = score_sum[weakest];
    let mut ratio = vec![1.0; m];
    let mut coeff = vec![1.0; m];
    for x in (0..m).filter(|&x| x != weakest) {
        // A weakest score of exactly 0 (every true-class probability underflowed) makes every
        // other ratio infinite: those get the smallest coefficient. 0/0 is no discrepancy.
        let r = if sw > 0.0 {
            score_sum[x] / sw
        } else if score_sum[x] > 0.0 {
            f64::INFINITY
        } else {
            1.0
        };
        ratio[x] = r;
        coeff[x] = if r.is_nan() { 1.0 } else { one_minus_tanh(alpha * r) };
    }
    OgmCoefficients { weakest, ratio, coeff }
}

/// `Σ_k softmax(logits)[k, y_k]`, in f64.
pub fn score_sum(logits: &Tensor, labels: &[u32]) -> Result<f64> {
    Ok(shapley::true_class_probs(logits, labels)?.iter().sum())
}

/// The unbiased standard deviation of a gradient (PyTorch's `Tensor.std()`); 0 for fewer than
/// two elements (where PyTorch gives NaN).
pub fn noise_std(grad: &Tensor) -> Result<f64> {
    agm_kernels::std_unbiased(grad)
}

/// `k · g`, plus with `noise_seed` the generalisation enhancement's Gaussian noise of `g`'s
/// standard deviation (recorded in `stds`), drawn on `g`'s device from the seed alone; `None`
/// when the gradient stays as it is. OGM-GE and the journal's OGM edit each gradient this way.
pub(crate) fn modulated_grad(
    g: &Tensor,
    k: f64,
    noise_seed: Option<u64>,
    stds: &mut Vec<f64>,
) -> Result<Option<Tensor>> {
    let Some(seed) = noise_seed else {
        return (k != 1.0).then(|| g.affine(k, 0.0)).transpose();
    };
    let std = noise_std(g)? + NOISE_STD_EPS;
    stds.push(std);
    Ok(Some(agm_kernels::add_gaussian_noise(g, k, std, seed)?))
}

/// The noise seed of the `ordinal`-th edited gradient at `step`: each gradient draws its own
/// stream, a function of the run's noise seed, the step and the gradient alone.
pub(crate) fn noise_seed(base: u64, step: usize, ordinal: usize) -> u64 {
    mix_seed(mix_seed(base, step as u64), ordinal as u64)
}

/// What OGM-GE computed and did at one step, for logs and parity checks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OgmStepStats {
    /// `S_x` per modality.
    pub score_sum: Vec<f64>,
    /// The modality with the smallest score sum (the last one on an exact tie).
    pub weakest: usize,
    /// `S_x / S_weakest`.
    pub ratio: Vec<f64>,
    /// The coefficients of this step (the fixed ones when they are fixed).
    pub coeff: Vec<f64>,
    /// Whether the step was inside the window (gradients edited).
    pub applied: bool,
    /// Names of the parameters whose gradient was edited, in modality then group order.
    pub modulated: Vec<String>,
    /// The noise standard deviation (`std + 1e-8`) of each edited parameter, when noise is on.
    pub noise_std: Vec<f64>,
}

/// On-the-fly gradient modulation with generalisation enhancement.
#[derive(Clone, Debug)]
pub struct OgmGe {
    cfg: OgmGeConfig,
    m: usize,
    noise_base: u64,
    fixed: Option<Vec<f64>>,
    in_effect: Vec<f64>,
    last: Option<OgmStepStats>,
    /// Whether the uni-modal outputs are the model's per-modality heads; `None` until the first
    /// step's full pass shows it (that step runs the masked passes too).
    heads: Option<bool>,
}

impl OgmGe {
    /// OGM-GE over `m` modalities (at least 2).
    pub fn new(cfg: OgmGeConfig, m: usize) -> std::result::Result<Self, MethodError> {
        cfg.validate()?;
        if m < 2 {
            return Err(format!("ogm-ge needs at least 2 modalities, the model has {m}").into());
        }
        let noise_base = mix_seed(cfg.seed, 0);
        let heads = (cfg.uni_modal == UniModal::Shapley).then_some(false);
        Ok(Self { cfg, m, noise_base, fixed: None, in_effect: vec![1.0; m], last: None, heads })
    }

    /// Mixes the run seed into the noise seed (the registry passes the run's seed).
    pub fn with_run_seed(mut self, seed: u64) -> Self {
        self.noise_base = mix_seed(self.cfg.seed, mix_seed(seed, 1));
        self
    }

    /// Replaces the computed coefficients by fixed ones, each in `(0, 1]` (ablations: all ones
    /// is the paper's "GE only" variant, and with the noise off it is joint training).
    pub fn with_fixed_coefficients(mut self, coeff: Vec<f64>) -> std::result::Result<Self, MethodError> {
        if coeff.len() != self.m {
            return Err(format!("{} fixed coefficients for {} modalities", coeff.len(), self.m).into());
        }
        if let Some(c) = coeff.iter().find(|&&c| !(c > 0.0 && c <= 1.0)) {
            return Err(format!("a fixed OGM coefficient must be in (0, 1], got {c}").into());
        }
        self.fixed = Some(coeff);
        Ok(self)
    }

    /// The settings it was built with.
    pub fn config(&self) -> &OgmGeConfig {
        &self.cfg
    }

    /// What the last step computed and did; `None` before the first step (not saved in
    /// checkpoints).
    pub fn last_stats(&self) -> Option<&OgmStepStats> {
        self.last.as_ref()
    }

    /// The uni-modal outputs of this step (see the module docs).
    fn uni_logits(&mut self, cx: &StepCx<'_>) -> Result<Vec<Tensor>> {
        if self.heads != Some(false) {
            match (cx.model.modality_logits(&cx.forward.full)?, self.heads) {
                (Some(logits), _) => {
                    self.heads = Some(true);
                    return Ok(logits);
                }
                (None, Some(true)) => candle_core::bail!("ogm-ge: the model stopped giving per-modality logits"),
                (None, _) => self.heads = Some(false),
            }
        }
        let m = self.m;
        shapley::mono_outputs(m, |s| cx.forward.logits(s, m))
    }

    /// The parameters this mode edits, per modality.
    pub fn selected(&self, model: &dyn MultimodalModel) -> Vec<Vec<NamedVar>> {
        model
            .param_groups()
            .per_modality
            .into_iter()
            .map(|g| g.into_iter().filter(|v| self.cfg.mode.selects(v)).collect())
            .collect()
    }
}

impl Modulator for OgmGe {
    fn name(&self) -> &'static str {
        "ogm-ge"
    }

    fn forward_plan(&self) -> ForwardPlan {
        if self.heads == Some(true) {
            ForwardPlan::Full
        } else {
            ForwardPlan::Shapley
        }
    }

    fn after_backward(&mut self, cx: &StepCx<'_>, grads: &mut GradStore) -> Result<()> {
        let m = self.m;
        let mono = self.uni_logits(cx)?;
        let labels = cx.batch.labels.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        let sums = mono.iter().map(|mx| score_sum(mx, &labels)).collect::<Result<Vec<_>>>()?;
        let c = ogm_coefficients(self.cfg.alpha, &sums);
        let coeff = self.fixed.clone().unwrap_or_else(|| c.coeff.clone());
        let applied = self.cfg.in_window(cx.epoch);
        let mut stats = OgmStepStats {
            score_sum: sums,
            weakest: c.weakest,
            ratio: c.ratio,
            coeff: coeff.clone(),
            applied,
            ..OgmStepStats::default()
        };
        if applied {
            for (x, group) in self.selected(cx.model).into_iter().enumerate() {
                let k = coeff.get(x).copied().unwrap_or(1.0);
                for v in group {
                    let t = v.var.as_tensor();
                    let Some(g) = grads.get(t) else { continue };
                    let seed = noise_seed(self.noise_base, cx.step, stats.modulated.len());
                    stats.modulated.push(v.name.clone());
                    if let Some(e) = modulated_grad(g, k, self.cfg.noise.then_some(seed), &mut stats.noise_std)? {
                        grads.insert(t, e);
                    }
                }
            }
        }
        self.in_effect = if applied { coeff } else { vec![1.0; m] };
        self.last = Some(stats);
        Ok(())
    }

    fn clip_rule(&self) -> Option<ClipRule> {
        self.cfg.clip
    }

    fn coefficients(&self) -> Option<Vec<f64>> {
        Some(self.in_effect.clone())
    }

    /// The coefficients in force (the noise is a function of the seed and the step), so a run
    /// resumed before an epoch's end reports what the uninterrupted run does.
    fn state(&self) -> serde_json::Value {
        serde_json::to_value(OgmGeState { in_effect: self.in_effect.clone() }).expect("plain data")
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let Some(saved) = crate::shared::saved_state::<OgmGeState>("ogm-ge", state)? else { return Ok(()) };
        if saved.in_effect.len() != self.m {
            candle_core::bail!("ogm-ge state has {} coefficients for {} modalities", saved.in_effect.len(), self.m);
        }
        self.in_effect = saved.in_effect;
        Ok(())
    }
}

/// What OGM-GE saves in a checkpoint.
#[derive(Serialize, Deserialize)]
struct OgmGeState {
    #[serde(with = "agm_core::serde_f64::seq")]
    in_effect: Vec<f64>,
}

impl crate::Method for OgmGe {
    const NAME: &'static str = "ogm-ge";
    const HOOKS: crate::Hooks = crate::Hooks::EDITS;
    type Config = OgmGeConfig;

    fn preset(dataset: &str) -> OgmGeConfig {
        match dataset {
            "avmnist" => OgmGeConfig::reference_avmnist(),
            "cremad" => OgmGeConfig::reference_cremad(),
            _ => OgmGeConfig::av_digits(),
        }
    }

    fn validate(config: &OgmGeConfig) -> std::result::Result<(), MethodError> {
        config.validate()
    }

    fn build(config: &OgmGeConfig, cx: &crate::BuildCx<'_>) -> std::result::Result<Self, MethodError> {
        let ogm = OgmGe::new(config.clone(), cx.modalities())?.with_run_seed(cx.seed);
        let selected = ogm.selected(cx.model);
        if let Some(x) = selected.iter().position(Vec::is_empty) {
            let why = match config.mode {
                OgmMode::Reference => {
                    "ogm_ge.mode = reference edits only 4-D (conv) weights and it has none; \
                                       use mode = paper to modulate the whole encoder"
                }
                OgmMode::Paper => "it has no trainable parameters",
            };
            return Err(format!(
                "ogm-ge would not modulate modality `{}` of this model: {why}",
                cx.model.modalities().name(x)
            )
            .into());
        }
        Ok(ogm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_modalities_match_the_reference_branches() {
        let alpha = 0.5;
        // r_v = S_v / S_a > 1: visual damped.
        let c = ogm_coefficients(alpha, &[2.0, 3.0]);
        assert_eq!(c.weakest, 0);
        assert_eq!(c.coeff, vec![1.0, 1.0 - (alpha * 1.5f64).tanh()]);
        // r_v < 1: audio damped by 1 − tanh(alpha / r_v).
        let c = ogm_coefficients(alpha, &[3.0, 2.0]);
        assert_eq!(c.weakest, 1);
        assert!((c.coeff[0] - (1.0 - (alpha / (2.0f64 / 3.0)).tanh())).abs() < 1e-15);
        assert_eq!(c.coeff[1], 1.0);
        // A tie takes the reference's `else` branch: audio damped by 1 − tanh(alpha).
        let c = ogm_coefficients(alpha, &[2.0, 2.0]);
        assert_eq!(c.coeff, vec![1.0 - alpha.tanh(), 1.0]);
    }

    #[test]
    fn coefficients_stay_positive() {
        let c = ogm_coefficients(50.0, &[1e-3, 100.0, 0.5]);
        assert_eq!(c.weakest, 0);
        assert!(c.coeff.iter().all(|&k| k > 0.0 && k <= 1.0), "{c:?}");
        let c = ogm_coefficients(1.0, &[0.0, 1.0]);
        assert!(c.coeff[1] > 0.0 && c.coeff[0] == 1.0);
        let c = ogm_coefficients(1.0, &[0.0, 0.0]);
        assert!(c.coeff.iter().all(|&k| k > 0.0 && k <= 1.0), "{c:?}");
    }

    #[test]
    fn coefficients_are_the_official_expression_wherever_it_is_positive() {
        // The official `1 - tanh(x)` loses digits to cancellation for large x; agm returns its
        // very value (so logs and golden cases agree bit for bit), and only where it rounds to 0
        // the exact, positive one.
        for x in [0.0, 0.5, 3.0, 8.2384, 15.653, 19.0] {
            assert_eq!(one_minus_tanh(x).to_bits(), (1.0 - x.tanh()).to_bits(), "x = {x}");
        }
        let k = one_minus_tanh(27.6);
        assert!(1.0 - 27.6f64.tanh() == 0.0 && (k / 2.0 / (-55.2f64).exp() - 1.0).abs() < 1e-12, "{k}");
        assert!(one_minus_tanh(1e6) == f64::MIN_POSITIVE);
    }

    #[test]
    fn std_is_unbiased() {
        let t = Tensor::new(&[1.0f64, 2.0, 3.0, 4.0], &candle_core::Device::Cpu).unwrap();
        assert!((noise_std(&t).unwrap() - (5.0f64 / 3.0).sqrt()).abs() < 1e-15);
        let one = Tensor::new(&[1.0f32], &candle_core::Device::Cpu).unwrap();
        assert_eq!(noise_std(&one).unwrap(), 0.0);
    }

    #[test]
    fn noise_has_the_gradients_std_and_each_gradient_its_own_stream() {
        let dev = candle_core::Device::Cpu;
        let g = Tensor::arange(0f32, 40_000.0, &dev).unwrap().affine(1e-4, 0.0).unwrap().sin().unwrap();
        let (k, seed) = (0.5, noise_seed(7, 3, 0));
        let mut stds = Vec::new();
        let edited = modulated_grad(&g, k, Some(seed), &mut stds).unwrap().unwrap();
        assert_eq!(stds, vec![noise_std(&g).unwrap() + NOISE_STD_EPS]);
        let noise = (&edited - g.affine(k, 0.0).unwrap()).unwrap();
        let drawn = noise_std(&noise).unwrap();
        assert!((drawn / stds[0] - 1.0).abs() < 0.02, "noise std {drawn}, gradient std {}", stds[0]);
        let again = modulated_grad(&g, k, Some(seed), &mut stds).unwrap().unwrap();
        assert_eq!(edited.to_vec1::<f32>().unwrap(), again.to_vec1::<f32>().unwrap(), "a function of the seed");
        let seeds = [noise_seed(7, 3, 1), noise_seed(7, 4, 0), noise_seed(8, 3, 0)];
        assert!(seeds.iter().all(|&s| s != seed), "another gradient, step or run draws another stream");
        // Without noise only the scale is applied, and a coefficient of 1 leaves the gradient alone.
        let scaled = modulated_grad(&g, k, None, &mut stds).unwrap().unwrap();
        assert_eq!(scaled.to_vec1::<f32>().unwrap(), g.affine(k, 0.0).unwrap().to_vec1::<f32>().unwrap());
        assert!(modulated_grad(&g, 1.0, None, &mut stds).unwrap().is_none());
    }

    #[test]
    fn modes_parse_with_the_allowed_values_in_the_error() {
        assert_eq!(OgmMode::try_from("paper".to_string()), Ok(OgmMode::Paper));
        let err = OgmMode::try_from("papier".to_string()).unwrap_err();
        assert!(err.contains("ogm_ge.mode") && err.contains("reference, paper"), "{err}");
    }
}
