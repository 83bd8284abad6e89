//! OGM, the on-the-fly gradient modulation of Wei, Hu, Du and Wen, "On-the-fly Modulation for
//! Balanced Multimodal Learning" (TPAMI 2024), as a [`Modulator`] that edits gradients after
//! backward; official code GeWu-Lab/BML_TPAMI2024 (commit 4b3aa4f, `code/main.py:train` with
//! `--use_modulation`, `code/models/Classifier.py:Classifier.forward`). The journal's OGM differs
//! from the CVPR 2022 OGM-GE of [`crate::OgmGe`] in where its uni-modal predictions come from
//! (the fusion head's own weights), in its warm-up, in its tie rule and in which parameters it
//! reaches on agm's encoders. This file also holds what OGM and [`crate::Opm`] (the same paper's
//! prediction modulation) share: the uni-modal predictions, their scores and the warm-up.
//!
//! # Uni-modal predictions and scores (shared with OPM)
//!
//! The official classifier is `Linear(Σ d_m, C)` over the concatenated encoder features `h_m`
//! (late concat fusion). Its weight `W = [W_1 | … | W_M]` splits by modality, and the uni-modal
//! prediction of modality `m` is `t_m = h_m W_mᵀ + b/M` with `W` and `b` **detached** (the official
//! code writes `b/2` for its two modalities). This is exactly the Shapley mono-modal output of a
//! linear head over features (`φ_m + f(∅)/M` with an absent modality's *feature* set to zero), so
//! it is the same estimate [`crate::shapley`] gives for any fusion, made exact for this head.
//!
//! [`UniModal::Auto`] uses the head split when the model's head weight (`ParamGroups::head_weight`)
//! is a shared `[C, Σ d_m]` matrix with a `…bias` of shape `[C]` and the first step's full pass
//! confirms that its logits are `concat(h) Wᵀ + b` (that first step also runs the masked passes,
//! in case it does not); later steps check it again. For any other fusion, and with
//! [`UniModal::Shapley`], `t_m` is agm's Shapley mono-modal output from the masked passes
//! ([`ForwardPlan::Shapley`]; an absent modality's *input* is zero, as everywhere in agm). The score of modality `m` is
//! `s_m = Σ_b softmax(t_m)[b, y_b]`, a sum over the batch.
//!
//! # One step
//!
//! 1. During the first `warmup_epochs` epochs (1-based; the official loop's `epoch <= 5` over
//!    0-based epochs is `warmup_epochs = 6`) nothing is edited.
//! 2. Otherwise, `w` is the modality with the smallest score (on a tie, the first one), every
//!    other modality `m` gets `k_m = 1 − tanh(alpha · s_m / s_w)` and `w` keeps `k_w = 1`. For
//!    `M = 2` this is the official rule: `r = s_1/s_2`; if `r > 1` then `k_1 = 1 − tanh(alpha·r)`,
//!    else `k_2 = 1 − tanh(alpha/r)` (so a tie damps the second modality). The argument is the
//!    ratio itself, not `ratio − 1`, as in the code (`1 − tanh(alpha · relu(ratio))`). `k` is kept
//!    in `(0, 1]` as in [`crate::OgmGe`]. For `M > 2` (our choice; the official code has two
//!    modalities) every modality but the weakest is damped by its own ratio to the weakest.
//! 3. Inside the window `[window_start, window_end]` (1-based, inclusive epochs; the official
//!    `--modulation_starts 0 --modulation_ends 60` is `1..=61`), every selected parameter `p` of
//!    modality `m` gets `grad_p ← k_m · grad_p`, plus, with `noise = true` (the official
//!    `--modulation OGM_GE`, the default of `train_ogm.sh`), `N(0, std(grad_p) + 1e-8)` drawn as
//!    [`crate::OgmGe`] draws it (on every selected parameter, `k = 1` included). Outside it the
//!    coefficients are computed (and reported) but nothing is edited.
//!
//! Which parameters ([`OgmParams`]): the official rule edits the gradients of rank 4 of each
//! encoder, which on its ResNet-18 encoders are all their weights (conv kernels; the batch norm
//! parameters are vectors). `weights` (the default) edits every parameter of rank >= 2 of the
//! modality's group, the same set there, and on agm's MLP encoders their linear weights (a
//! linear layer is a 1×1 convolution); `conv` is the literal rank-4 rule (a model whose groups
//! hold none is rejected), `all` edits biases and norms too.

use agm_core::{MultimodalModel, NamedVar};
use candle_core::backprop::GradStore;
use candle_core::Result;
use serde::{Deserialize, Serialize};

use crate::concat_head::{ratios, score_value, weakest, UniModal, UniSource};
use crate::ogm_ge::{modulated_grad, noise_seed, one_minus_tanh};
use crate::shared::{labels_u32, mix_seed};
use crate::{ForwardPlan, MethodError, Modulator, StepCx};

/// Which gradients of each modality's encoder group OGM edits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OgmParams {
    /// Rank-4 parameters only (conv kernels), the official code's literal rule.
    Conv,
    /// Parameters of rank >= 2 (conv kernels and linear weights): the official set on its
    /// encoders, and the linear weights of MLP encoders.
    Weights,
    /// Every trainable parameter of the group.
    All,
}

impl OgmParams {
    /// Whether `var`, a parameter of a modality's group, is edited under this rule (by its rank).
    pub fn selects(self, var: &NamedVar) -> bool {
        match self {
            OgmParams::Conv => var.var.rank() == 4,
            OgmParams::Weights => var.var.rank() >= 2,
            OgmParams::All => true,
        }
    }
}

/// OGM settings; missing keys in a config file take the AV-Digits preset's values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OgmConfig {
    /// Modulation strength, `k = 1 − tanh(alpha · s_m / s_w)`; > 0 (official 0.8).
    pub alpha: f64,
    /// Epochs (1-based, from the first) without modulation (official 6).
    pub warmup_epochs: usize,
    /// First epoch (1-based, inclusive) in which gradients are edited.
    pub window_start: usize,
    /// Last epoch (inclusive); absent means until the end.
    #[serde(with = "agm_core::serde_none")]
    pub window_end: Option<usize>,
    /// Which parameters are edited: `conv`, `weights` or `all`.
    pub params: OgmParams,
    /// Add `N(0, std(grad) + 1e-8)` to every edited gradient (the official `OGM_GE` mode).
    pub noise: bool,
    /// Mixed with the run seed and the step to seed the noise.
    pub seed: u64,
    /// `auto` or `shapley` (see the module docs).
    pub uni_modal: UniModal,
}

impl Default for OgmConfig {
    fn default() -> Self {
        Self::av_digits()
    }
}

impl OgmConfig {
    /// `scripts/train_ogm.sh` of the official code (Kinetics-Sounds): alpha 0.8, the hard-coded
    /// six warm-up epochs, modulation in its 0-based epochs 0..=60, the argument default
    /// `--modulation OGM_GE` (noise on).
    pub fn official() -> Self {
        Self {
            alpha: 0.8,
            warmup_epochs: 6,
            window_start: 1,
            window_end: Some(61),
            params: OgmParams::Weights,
            noise: true,
            seed: 0,
            uni_modal: UniModal::Auto,
        }
    }

    /// The embedded AV-Digits default: the official settings over the whole run.
    pub fn av_digits() -> Self {
        Self { window_end: None, ..Self::official() }
    }

    /// The preset names [`OgmConfig::preset`] accepts.
    pub const PRESETS: &'static [&'static str] = &["official", "av-digits"];

    /// The preset called `name` (one of [`OgmConfig::PRESETS`]); `None` for any other name.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "official" => Some(Self::official()),
            "av-digits" => Some(Self::av_digits()),
            _ => None,
        }
    }

    /// Whether gradients are edited in `epoch` (1-based): past the warm-up and in the window.
    pub fn applies(&self, epoch: usize) -> bool {
        epoch > self.warmup_epochs && crate::shared::in_window(self.window_start, self.window_end, epoch)
    }

    /// Checks every field; the error names the field and the allowed values.
    pub fn validate(&self) -> std::result::Result<(), MethodError> {
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(format!("ogm.alpha must be a finite number > 0, got {}", self.alpha).into());
        }
        crate::shared::check_window("ogm", self.window_start, self.window_end)
    }
}

// ---------------------------------------------------------------------------------------------

/// OGM's coefficients for these scores: `1 − tanh(alpha · s_m / s_w)` but 1 for the weakest.
pub fn ogm_journal_coefficients(alpha: f64, scores: &[f64]) -> (usize, Vec<f64>, Vec<f64>) {
    let w = weakest(scores);
    let ratio = ratios(scores, w);
    let coeff = ratio.iter().enumerate().map(|(m, &r)| if m == w { 1.0 } else { one_minus_tanh(alpha * r) }).collect();
    (w, ratio, coeff)
}

/// What OGM computed and did at one step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OgmStats {
    /// `s_m` per modality.
    #[serde(with = "agm_core::serde_f64::seq")]
    pub scores: Vec<f64>,
    /// The modality with the smallest score.
    pub weakest: usize,
    /// `s_m / s_w`.
    #[serde(with = "agm_core::serde_f64::seq")]
    pub ratio: Vec<f64>,
    /// The coefficients of this step (all 1 during the warm-up).
    #[serde(with = "agm_core::serde_f64::seq")]
    pub coeff: Vec<f64>,
    /// Whether this step was in the warm-up.
    pub warmup: bool,
    /// Whether gradients were edited (past the warm-up and inside the window).
    pub applied: bool,
    /// Whether the uni-modal predictions came from the head split (else Shapley).
    pub head_split: bool,
    /// The noise standard deviation of each edited parameter, when noise is on.
    #[serde(with = "agm_core::serde_f64::seq")]
    pub noise_std: Vec<f64>,
}

/// OGM's state: the coefficients in force and the last step's stats (at the top level).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct OgmState {
    #[serde(with = "agm_core::serde_f64::seq")]
    in_effect: Vec<f64>,
    /// Whether a step has run (else `last` holds defaults).
    started: bool,
    #[serde(flatten)]
    last: OgmStats,
}

/// The journal's on-the-fly gradient modulation.
#[derive(Clone, Debug)]
pub struct Ogm {
    cfg: OgmConfig,
    m: usize,
    source: UniSource,
    selected: Vec<Vec<NamedVar>>,
    noise_base: u64,
    state: OgmState,
}

impl Ogm {
    /// OGM for `model` (at least two modalities); `feature_dims` helps recognise the head.
    pub fn new(
        cfg: OgmConfig,
        model: &dyn MultimodalModel,
        feature_dims: Option<&[usize]>,
        run_seed: u64,
    ) -> std::result::Result<Self, MethodError> {
        cfg.validate()?;
        let m = model.modalities().len();
        crate::shared::require_two("ogm", m)?;
        let selected: Vec<Vec<NamedVar>> = model
            .param_groups()
            .per_modality
            .into_iter()
            .map(|g| g.into_iter().filter(|v| cfg.params.selects(v)).collect())
            .collect();
        if let Some(x) = selected.iter().position(Vec::is_empty) {
            let why = match cfg.params {
                OgmParams::Conv => {
                    "ogm.params = \"conv\" edits only rank-4 (conv) weights and it has none; use \"weights\""
                }
                OgmParams::Weights => "it has no parameter of rank >= 2; use ogm.params = \"all\"",
                OgmParams::All => "it has no trainable parameters",
            };
            return Err(format!(
                "ogm would not modulate modality `{}` of this model: {why}",
                model.modalities().name(x)
            )
            .into());
        }
        let source = UniSource::for_model(cfg.uni_modal, model, feature_dims);
        let noise_base = mix_seed(cfg.seed, mix_seed(run_seed, 1));
        Ok(Self {
            cfg,
            m,
            source,
            selected,
            noise_base,
            state: OgmState { in_effect: vec![1.0; m], started: false, last: OgmStats::default() },
        })
    }

    /// The settings it was built with.
    pub fn config(&self) -> &OgmConfig {
        &self.cfg
    }

    /// What the last step computed and did; `None` before the first step.
    pub fn last_stats(&self) -> Option<&OgmStats> {
        self.state.started.then_some(&self.state.last)
    }

    /// Whether the uni-modal predictions come from the head split.
    pub fn uses_head_split(&self) -> bool {
        self.source.is_head()
    }
}

impl Modulator for Ogm {
    fn name(&self) -> &'static str {
        "ogm"
    }

    fn forward_plan(&self) -> ForwardPlan {
        self.source.forward_plan()
    }

    fn after_backward(&mut self, cx: &StepCx<'_>, grads: &mut GradStore) -> Result<()> {
        let m = self.m;
        let labels = labels_u32(cx.batch)?;
        let uni = self.source.uni_logits("ogm", cx)?;
        let scores = uni.iter().map(|t| score_value(t, &labels)).collect::<Result<Vec<_>>>()?;
        let warmup = cx.epoch <= self.cfg.warmup_epochs;
        let (weakest, ratio, coeff) = if warmup {
            (weakest(&scores), ratios(&scores, weakest(&scores)), vec![1.0; m])
        } else {
            ogm_journal_coefficients(self.cfg.alpha, &scores)
        };
        let applied = self.cfg.applies(cx.epoch);
        let mut stats = OgmStats {
            scores,
            weakest,
            ratio,
            coeff: coeff.clone(),
            warmup,
            applied,
            head_split: self.source.is_head(),
            noise_std: Vec::new(),
        };
        if applied {
            let mut edited = 0;
            for (x, group) in self.selected.iter().enumerate() {
                let k = coeff[x];
                for v in group {
                    let t = v.var.as_tensor();
                    let Some(g) = grads.get(t) else { continue };
                    let seed = noise_seed(self.noise_base, cx.step, edited);
                    edited += 1;
                    if let Some(e) = modulated_grad(g, k, self.cfg.noise.then_some(seed), &mut stats.noise_std)? {
                        grads.insert(t, e);
                    }
                }
            }
        }
        let in_effect = if applied { coeff } else { vec![1.0; m] };
        self.state = OgmState { in_effect, started: true, last: stats };
        Ok(())
    }

    fn coefficients(&self) -> Option<Vec<f64>> {
        Some(self.state.in_effect.clone())
    }

    /// The last step's [`OgmStats`] fields at the top level, `in_effect` and `started`.
    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).unwrap_or_default()
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let Some(s) = crate::shared::saved_state::<OgmState>("ogm", state)? else { return Ok(()) };
        if s.in_effect.len() != self.m {
            candle_core::bail!("ogm state: {} coefficients for {} modalities", s.in_effect.len(), self.m);
        }
        self.state = s;
        Ok(())
    }
}

impl crate::Method for Ogm {
    const NAME: &'static str = "ogm";
    const HOOKS: crate::Hooks = crate::Hooks::EDITS;
    type Config = OgmConfig;

    fn preset(_dataset: &str) -> OgmConfig {
        OgmConfig::av_digits()
    }

    fn validate(config: &OgmConfig) -> std::result::Result<(), MethodError> {
        config.validate()
    }

    fn build(config: &OgmConfig, cx: &crate::BuildCx<'_>) -> std::result::Result<Self, MethodError> {
        Ogm::new(config.clone(), cx.model, cx.feature_dims, cx.seed)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::concat_head::ConcatHead;
    use crate::{shapley, StepForward};
    use agm_core::{ForwardOpts, MultimodalBatch};
    use agm_fusion::{EncoderLayer, EncoderSpec, FusionKind, FusionModel, LateConcatConfig};
    use candle_core::Device;
    use candle_core::{DType, Tensor};

    /// A tiny float64 model: per modality Linear(d, 4) (+ BatchNorm) + ReLU, then `fusion`.
    pub(crate) fn tiny(dims: &[usize], fusion: &FusionKind, batch_norm: bool) -> FusionModel {
        let names = ["audio", "visual", "text"];
        let encoders = dims
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                let mut layers = vec![EncoderLayer::Linear { in_dim: d, out_dim: 4 }];
                if batch_norm {
                    layers.push(EncoderLayer::BatchNorm { channels: 4, eps: 1e-5 });
                }
                layers.push(EncoderLayer::Relu);
                EncoderSpec { modality: names[i].into(), layers }
            })
            .collect();
        let cfg = LateConcatConfig { encoders, num_classes: 3, prefix: "net".into() };
        FusionModel::sequential(&cfg, fusion, 5, DType::F64, &Device::Cpu).unwrap()
    }

    pub(crate) fn batch(dims: &[usize], b: usize) -> MultimodalBatch {
        let inputs = dims
            .iter()
            .enumerate()
            .map(|(m, &d)| {
                let v: Vec<f64> = (0..b * d).map(|i| ((i * 7 + m * 3) % 11) as f64 / 8.0 - 0.6).collect();
                Tensor::from_vec(v, (b, d), &Device::Cpu).unwrap()
            })
            .collect();
        let labels: Vec<u32> = (0..b as u32).map(|i| i % 3).collect();
        MultimodalBatch::new(inputs, Tensor::new(labels, &Device::Cpu).unwrap()).unwrap()
    }

    /// The full training pass plus the masked passes `plan` asks for.
    pub(crate) fn forward(model: &FusionModel, batch: &MultimodalBatch, plan: ForwardPlan) -> StepForward {
        let m = model.modalities().len();
        let subsets = plan.masked_subsets(m);
        let (full, passes) = model
            .shapley_passes(&batch.inputs, &subsets, &ForwardOpts::train(m, 0), agm_core::ShapleyMode::Faithful)
            .unwrap();
        StepForward { full, masked: subsets.into_iter().zip(passes).collect() }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-14 * (1.0 + b.abs())
    }

    #[test]
    fn two_modalities_follow_the_official_branches() {
        let alpha = 0.8;
        // r = s_1/s_2 > 1: the first modality is damped by 1 − tanh(alpha·r).
        let (w, _, k) = ogm_journal_coefficients(alpha, &[3.0, 2.0]);
        assert_eq!((w, k[1]), (1, 1.0));
        assert!(close(k[0], 1.0 - (alpha * 1.5f64).tanh()));
        // r < 1: the second is damped by 1 − tanh(alpha/r).
        let (w, _, k) = ogm_journal_coefficients(alpha, &[2.0, 3.0]);
        assert_eq!((w, k[0]), (0, 1.0));
        assert!(close(k[1], 1.0 - (alpha / (2.0f64 / 3.0)).tanh()));
        // A tie takes the official `else` branch: the second modality, by 1 − tanh(alpha)
        // (OGM-GE's reference damps the first there).
        let (_, _, k) = ogm_journal_coefficients(alpha, &[2.0, 2.0]);
        assert_eq!(k, vec![1.0, 1.0 - alpha.tanh()]);
    }

    #[test]
    fn three_modalities_damp_every_modality_against_the_weakest() {
        let (w, r, k) = ogm_journal_coefficients(0.5, &[4.0, 1.0, 2.0]);
        assert_eq!(w, 1);
        assert_eq!(r, vec![4.0, 1.0, 2.0]);
        assert!(close(k[0], 1.0 - 2.0f64.tanh()) && k[1] == 1.0 && close(k[2], 1.0 - 1.0f64.tanh()));
        let (_, _, k) = ogm_journal_coefficients(40.0, &[0.0, 1.0, 1.0]);
        assert!(k.iter().all(|&c| c > 0.0 && c <= 1.0), "{k:?}");
    }

    #[test]
    fn warm_up_and_window_are_one_based_and_inclusive() {
        let cfg = OgmConfig::official();
        assert!(!cfg.applies(6) && cfg.applies(7) && cfg.applies(61) && !cfg.applies(62));
        let cfg = OgmConfig { warmup_epochs: 0, window_start: 2, window_end: Some(3), ..OgmConfig::official() };
        assert!(!cfg.applies(1) && cfg.applies(2) && cfg.applies(3) && !cfg.applies(4));
        assert!(OgmConfig { window_end: Some(0), ..cfg.clone() }.validate().is_err());
        let closed = OgmConfig { window_start: 0, window_end: Some(0), ..cfg.clone() }.validate().unwrap_err();
        assert!(closed.to_string().contains("ogm.window_end must be >= 1"), "{closed}");
        assert!(OgmConfig { alpha: 0.0, ..cfg }.validate().unwrap_err().to_string().contains("ogm.alpha"));
    }

    #[test]
    fn settings_read_from_toml_with_defaults_and_reject_unknown_keys() {
        let c: OgmConfig = toml::from_str("alpha = 0.5\nparams = \"all\"").unwrap();
        assert_eq!(c, OgmConfig { alpha: 0.5, params: OgmParams::All, ..OgmConfig::av_digits() });
        assert!(toml::from_str::<OgmConfig>("alfa = 0.5").is_err());
        assert!(toml::from_str::<OgmConfig>("params = \"bias\"").is_err());
    }

    #[test]
    fn the_head_split_is_found_on_late_concat_only_and_sums_to_the_logits() {
        let dims = [3, 5];
        let net = tiny(&dims, &FusionKind::LateConcat, false);
        let head = ConcatHead::find(&net, Some(&[4, 4])).expect("a late concat head");
        assert!(ConcatHead::find(&net, Some(&[4, 5])).is_none());
        assert!(ConcatHead::find(&tiny(&dims, &FusionKind::LateSum, false), None).is_none());
        assert!(ConcatHead::find(&tiny(&dims, &FusionKind::Gated { dim: 5 }, false), Some(&[4, 4])).is_none());
        let b = batch(&dims, 6);
        let fwd = forward(&net, &b, ForwardPlan::Full);
        head.check("ogm", &fwd.full.encoder_features, &fwd.full.logits).unwrap();
        // Σ_m (h_m W_mᵀ + b/M) = concat(h) Wᵀ + b.
        let t = head.uni_logits(&fwd.full.encoder_features, true).unwrap();
        let sum = (&t[0] + &t[1]).unwrap();
        let diff = (sum - &fwd.full.logits).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(diff < 1e-12, "{diff}");
        // t_m is the Shapley mono output with absent features set to zero: for the audio
        // modality, [f(a) − f(∅) + f(a, v) − f(v)]/2 + f(∅)/2 over features.
        let h = &fwd.full.encoder_features;
        let z = [h[0].zeros_like().unwrap(), h[1].zeros_like().unwrap()];
        let f = |a: &Tensor, v: &Tensor| head.fuse(&[a.clone(), v.clone()]).unwrap();
        let mono_a = ((f(&h[0], &z[1]) - f(&z[0], &z[1])).unwrap() + (f(&h[0], &h[1]) - f(&z[0], &h[1])).unwrap())
            .unwrap()
            .affine(0.5, 0.0)
            .unwrap()
            .add(&f(&z[0], &z[1]).affine(0.5, 0.0).unwrap())
            .unwrap();
        let diff = (mono_a - &t[0]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(diff < 1e-12, "{diff}");
        // A head that does not produce the logits is refused at the step.
        let wrong = fwd.full.logits.affine(2.0, 0.1).unwrap();
        assert!(head.check("ogm", h, &wrong).unwrap_err().to_string().contains("uni_modal"));
    }

    #[test]
    fn parameter_selection_follows_the_rank_rule() {
        let dims = [3, 5];
        let net = tiny(&dims, &FusionKind::LateConcat, true);
        let err = Ogm::new(OgmConfig { params: OgmParams::Conv, ..OgmConfig::av_digits() }, &net, None, 0).unwrap_err();
        assert!(err.to_string().contains("rank-4"), "{err}");
        let weights = Ogm::new(OgmConfig::av_digits(), &net, None, 0).unwrap();
        let names: Vec<Vec<&str>> =
            weights.selected.iter().map(|g| g.iter().map(|v| v.name.as_str()).collect()).collect();
        assert_eq!(names, vec![vec!["net.audio_encoder.0.weight"], vec!["net.visual_encoder.0.weight"]]);
        let all = Ogm::new(OgmConfig { params: OgmParams::All, ..OgmConfig::av_digits() }, &net, None, 0).unwrap();
        assert_eq!(all.selected[0].len(), 4, "linear weight and bias, batch norm weight and bias");
        assert!(!weights.uses_head_split() && weights.forward_plan() == ForwardPlan::Shapley, "confirmed at step 1");
        let one = tiny(&[3], &FusionKind::LateConcat, false);
        assert!(Ogm::new(OgmConfig::av_digits(), &one, None, 0).unwrap_err().to_string().contains("2 modalities"));
    }

    /// One OGM step on a tiny late concat model at `epoch`: the gradients before and after.
    fn step(cfg: OgmConfig, epoch: usize) -> (Ogm, GradStore, GradStore, FusionModel) {
        let dims = [3, 5];
        let net = tiny(&dims, &FusionKind::LateConcat, false);
        let mut ogm = Ogm::new(cfg, &net, Some(&[4, 4]), 3).unwrap();
        let b = batch(&dims, 6);
        let fwd = forward(&net, &b, ogm.forward_plan());
        let loss = candle_nn::loss::cross_entropy(&fwd.full.logits, &b.labels).unwrap();
        let before = loss.backward().unwrap();
        let mut after = loss.backward().unwrap();
        let cx = StepCx { model: &net, batch: &b, forward: &fwd, step: 4, epoch };
        ogm.after_backward(&cx, &mut after).unwrap();
        (ogm, before, after, net)
    }

    #[test]
    fn a_step_scales_the_selected_gradients_of_each_modality_by_its_coefficient() {
        let cfg = OgmConfig { noise: false, warmup_epochs: 1, ..OgmConfig::av_digits() };
        let (ogm, before, after, net) = step(cfg.clone(), 2);
        let stats = ogm.last_stats().unwrap().clone();
        assert!(stats.applied && !stats.warmup && stats.head_split);
        assert_eq!(ogm.forward_plan(), ForwardPlan::Full, "the head was confirmed");
        let k = ogm.coefficients().unwrap();
        assert!(k.contains(&1.0) && k.iter().any(|&c| c < 1.0), "{k:?}");
        let groups = net.param_groups();
        for (x, group) in groups.per_modality.iter().enumerate() {
            for v in group {
                let g0 = before.get(v.var.as_tensor()).unwrap();
                let g1 = after.get(v.var.as_tensor()).unwrap();
                let want = if v.var.rank() >= 2 { g0.affine(k[x], 0.0).unwrap() } else { g0.clone() };
                let diff = (g1 - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
                assert!(diff == 0.0, "{}: {diff}", v.name);
            }
        }
        // The state round-trips, so a resumed run reports the same.
        let mut other = Ogm::new(cfg, &net, None, 3).unwrap();
        other.load_state(&ogm.state()).unwrap();
        assert_eq!(other.state(), ogm.state());
        assert_eq!(other.coefficients(), ogm.coefficients());
        // During the warm-up nothing is edited and the coefficients are 1.
        let (ogm, before, after, net) = step(OgmConfig { warmup_epochs: 2, ..OgmConfig::av_digits() }, 2);
        assert_eq!(ogm.coefficients().unwrap(), vec![1.0, 1.0]);
        for v in net.param_groups().trainable() {
            let d = (after.get(v.var.as_tensor()).unwrap() - before.get(v.var.as_tensor()).unwrap()).unwrap();
            assert_eq!(d.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap(), 0.0);
        }
    }

    #[test]
    fn noise_is_added_to_every_selected_gradient_and_is_reproducible() {
        let cfg = OgmConfig { warmup_epochs: 0, ..OgmConfig::av_digits() };
        let (ogm, _, a, net_a) = step(cfg.clone(), 1);
        let (_, _, b, net_b) = step(cfg, 1);
        assert_eq!(ogm.last_stats().unwrap().noise_std.len(), 2);
        for (va, vb) in net_a.param_groups().trainable().iter().zip(net_b.param_groups().trainable()) {
            let d = (a.get(va.var.as_tensor()).unwrap() - b.get(vb.var.as_tensor()).unwrap()).unwrap();
            assert_eq!(d.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap(), 0.0);
        }
    }

    #[test]
    fn other_fusions_use_the_shapley_outputs() {
        let dims = [3, 5];
        let net = tiny(&dims, &FusionKind::Film, false);
        let mut ogm = Ogm::new(OgmConfig { noise: false, ..OgmConfig::av_digits() }, &net, None, 0).unwrap();
        assert_eq!(ogm.forward_plan(), ForwardPlan::Shapley);
        let b = batch(&dims, 6);
        let fwd = forward(&net, &b, ForwardPlan::Shapley);
        let loss = candle_nn::loss::cross_entropy(&fwd.full.logits, &b.labels).unwrap();
        let mut g = loss.backward().unwrap();
        ogm.after_backward(&StepCx { model: &net, batch: &b, forward: &fwd, step: 1, epoch: 9 }, &mut g).unwrap();
        let s = ogm.last_stats().unwrap();
        let mono = shapley::mono_outputs(2, |x| fwd.logits(x, 2)).unwrap();
        let labels = labels_u32(&b).unwrap();
        assert!(!s.head_split && close(s.scores[1], score_value(&mono[1], &labels).unwrap()));
    }

    #[test]
    fn every_fusion_is_modulated_with_two_and_three_modalities() {
        let fusions = [
            FusionKind::LateConcat,
            FusionKind::LateSum,
            FusionKind::Early { first_hidden: 6, second_hidden: 5 },
            FusionKind::Film,
            FusionKind::Gated { dim: 5 },
            FusionKind::CrossModal { dim: 4, heads: 2 },
        ];
        for dims in [vec![3, 5], vec![3, 5, 2]] {
            for fusion in &fusions {
                let net = tiny(&dims, fusion, true);
                let cfg = OgmConfig { warmup_epochs: 0, ..OgmConfig::av_digits() };
                let mut ogm = Ogm::new(cfg, &net, Some(&vec![4; dims.len()]), 0).unwrap();
                let b = batch(&dims, 6);
                for step in 1..=2 {
                    let fwd = forward(&net, &b, ogm.forward_plan());
                    let loss = candle_nn::loss::cross_entropy(&fwd.full.logits, &b.labels).unwrap();
                    let mut g = loss.backward().unwrap();
                    ogm.after_backward(&StepCx { model: &net, batch: &b, forward: &fwd, step, epoch: 1 }, &mut g)
                        .unwrap();
                    let s = ogm.last_stats().unwrap();
                    let what = format!("{fusion:?}, M = {}", dims.len());
                    let selected: usize = ogm.selected.iter().map(Vec::len).sum();
                    assert!(s.applied && s.coeff[s.weakest] == 1.0 && s.noise_std.len() == selected, "{what}: {s:?}");
                    assert!(s.coeff.iter().all(|&k| k > 0.0 && k <= 1.0), "{what}: {s:?}");
                    assert_eq!(s.head_split, *fusion == FusionKind::LateConcat, "{what}");
                }
            }
        }
    }
}
