//! OPM, the on-the-fly prediction modulation of Wei, Hu, Du and Wen, "On-the-fly Modulation for
//! Balanced Multimodal Learning" (TPAMI 2024), as a [`Modulator`] that defines the step's
//! objective; official code GeWu-Lab/BML_TPAMI2024 (commit 4b3aa4f, `code/main.py:train` with
//! `--use_adam_drop`, `code/models/Classifier.py`: `Classifier.forward`, `calcu_q`,
//! `Modality_drop.execute_drop`, `custom_autograd`). OPM weakens the dominant modality in the
//! forward pass by dropping its encoder feature, sample by sample, with a probability that grows
//! with its lead.
//!
//! # One step
//!
//! 1. Uni-modal predictions `t_m` and scores `s_m = Σ_b softmax(t_m)[b, y_b]` as in
//!    [`crate::Ogm`] (the head split `h_m W_mᵀ + b/M` with `W`, `b` detached for the official
//!    late concat head; see the `ogm` module), from the full training pass.
//! 2. During the first `warmup_epochs` epochs (1-based; the official `epoch <= 5` over 0-based
//!    epochs is `warmup_epochs = 6`) the loss is the plain `CE(f(h), y)`.
//! 3. Otherwise, with `w` the modality of smallest score (the first on a tie), the drop
//!    probabilities are `q_m = clip(q_base · (1 + lambda · tanh(s_m / s_w − 1)), 0, 1)` for
//!    `s_m > s_w` and `q_m = 0` otherwise. For `M = 2` this is the official `calcu_q`
//!    (`tanh(relu(s_1/s_2 − 1))`, `q = 0` where it is 0); for `M > 2` (our choice, the official
//!    code has two modalities) each stronger modality is measured against the weakest.
//! 4. The drop runs only when the uniform draw `u_exe >= 1 − p_exe` (the official
//!    `np.random.rand(1) >= 1 - p_exe`); otherwise the loss is the plain one.
//! 5. When it runs: `θ = Σ_m d_m q_m / Σ_m d_m` (`d_m` the feature widths, the official
//!    `cfg.d`), feature `m` of sample `b` is kept iff `u[b, m] < 1 − q_m` (the official
//!    `Bernoulli(1 − q)` keep mask), and the head sees `h'_m = mask_m ⊙ h_m / (1 − θ)`; the loss is
//!    `CE(f(h'), y)` over the batch. The weakest modality has `q = 0`, so every sample keeps at
//!    least one modality and the official removal of empty samples (and its skipped step when
//!    all are empty) never happens.
//! 6. The official `custom_autograd.backward` returns `θ` itself as the gradient of `θ`, and `θ`
//!    depends on the scores, which are not detached from the encoders. The encoders therefore
//!    also receive `θ · ∂θ/∂params`. With `theta_gradient = true` (the default, faithful) this
//!    is reproduced by adding `θ · (θ̃ − stopgrad(θ̃))` to the loss (value 0, `θ̃` the
//!    differentiable θ); `false` drops it.
//!
//! Where the head is not a linear layer over the concatenated features (other fusions, or
//! `uni_modal = "shapley"`), the scores come from agm's Shapley mono-modal outputs and the drop is
//! a second training-mode pass in which a dropped modality's **input** is zero for that sample
//! (agm's absent modality; that pass updates batch norm statistics once more); the `1/(1 − θ)`
//! rescaling of features cannot be applied there (a `MultimodalModel` does not expose its
//! fusion's input) and is left out.
//!
//! # Random draws
//!
//! `u_exe` and the `B × M` mask uniforms are counter-based: draw `i` of global step `k` is
//! `mix(mix(base, k), i) >> 11` scaled to `[0, 1)`, with `base = mix(seed, run seed)` and `mix`
//! the crate's splitmix64 seed mixer (index 0 is `u_exe`, index `1 + b·M + m` the mask uniform of
//! sample `b`, modality `m`). A resumed run draws exactly what the uninterrupted run drew, and the
//! golden generator (scripts/golden/opm/generate.py) feeds the same uniforms to the official code.

use agm_core::{ForwardOpts, MultimodalModel};
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::concat_head::{ratios, score_tensor, weakest, UniModal, UniSource};
use crate::shared::{labels_u32, mix_seed, scalar_f64};
use crate::{ForwardPlan, MethodError, Modulator, Objective, StepCx};

/// OPM settings; missing keys in a config file take the AV-Digits preset's values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpmConfig {
    /// Base drop probability of a leading modality, in `[0, 1]` (official 0.5).
    pub q_base: f64,
    /// How much the lead raises it, `>= 0` (official `lam` 0.5).
    pub lambda: f64,
    /// Probability that a step drops at all, in `[0, 1]` (official 0.7).
    pub p_exe: f64,
    /// Epochs (1-based, from the first) of plain training (official 6).
    pub warmup_epochs: usize,
    /// Reproduce the official extra gradient `θ · ∂θ/∂params` (see the module docs).
    pub theta_gradient: bool,
    /// Mixed with the run seed to seed the draws.
    pub seed: u64,
    /// `auto` or `shapley` (see the `ogm` module).
    pub uni_modal: UniModal,
}

impl Default for OpmConfig {
    fn default() -> Self {
        Self::av_digits()
    }
}

impl OpmConfig {
    /// `scripts/train_opm.sh` of the official code (Kinetics-Sounds): `--q_base 0.5 --lam 0.5
    /// --p_exe 0.7` and the hard-coded six warm-up epochs.
    pub fn official() -> Self {
        Self {
            q_base: 0.5,
            lambda: 0.5,
            p_exe: 0.7,
            warmup_epochs: 6,
            theta_gradient: true,
            seed: 0,
            uni_modal: UniModal::Auto,
        }
    }

    /// The embedded AV-Digits default: the official settings.
    pub fn av_digits() -> Self {
        Self::official()
    }

    /// The preset names [`OpmConfig::preset`] accepts.
    pub const PRESETS: &'static [&'static str] = &["official", "av-digits"];

    /// The preset called `name` (one of [`OpmConfig::PRESETS`]); `None` for any other name.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "official" => Some(Self::official()),
            "av-digits" => Some(Self::av_digits()),
            _ => None,
        }
    }

    /// Checks every field; the error names the field and the allowed values.
    pub fn validate(&self) -> std::result::Result<(), MethodError> {
        let unit = |name: &str, v: f64| -> std::result::Result<(), MethodError> {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("opm.{name} must be in [0, 1], got {v}").into())
            }
        };
        unit("q_base", self.q_base)?;
        unit("p_exe", self.p_exe)?;
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return Err(format!("opm.lambda must be a finite number >= 0, got {}", self.lambda).into());
        }
        Ok(())
    }
}

/// OPM's drop probabilities for these scores: `(weakest, q)`.
pub fn opm_drop_probabilities(q_base: f64, lambda: f64, scores: &[f64]) -> (usize, Vec<f64>) {
    let w = weakest(scores);
    let q = ratios(scores, w)
        .iter()
        .enumerate()
        .map(|(m, &r)| {
            if m != w && scores[m] > scores[w] {
                (q_base * (1.0 + lambda * (r - 1.0).tanh())).clamp(0.0, 1.0)
            } else {
                0.0
            }
        })
        .collect();
    (w, q)
}

/// The uniform in `[0, 1)` of draw `index` at 1-based global step `step` (see the module docs).
pub fn opm_uniform(base: u64, step: usize, index: u64) -> f64 {
    (mix_seed(mix_seed(base, step as u64), index) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// What OPM computed and did at one step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OpmStats {
    /// `s_m` per modality.
    #[serde(with = "agm_core::serde_f64::seq")]
    pub scores: Vec<f64>,
    /// The modality with the smallest score (the first on a tie); it is never dropped.
    pub weakest: usize,
    /// Drop probabilities (all 0 during the warm-up).
    #[serde(with = "agm_core::serde_f64::seq")]
    pub q: Vec<f64>,
    /// Whether this step was in the warm-up.
    pub warmup: bool,
    /// Whether features were dropped this step.
    pub executed: bool,
    /// `θ = Σ d_m q_m / Σ d_m` when the drop ran, else 0.
    #[serde(with = "agm_core::serde_f64")]
    pub theta: f64,
    /// Samples that kept each modality.
    pub kept: Vec<usize>,
    /// Whether the head split was used (else Shapley outputs and input-level drops).
    pub head_split: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct OpmState {
    /// Keep probabilities `1 − q` in force at the last step (1 where nothing was dropped).
    #[serde(with = "agm_core::serde_f64::seq")]
    in_effect: Vec<f64>,
    started: bool,
    #[serde(flatten)]
    last: OpmStats,
}

/// On-the-fly prediction modulation.
#[derive(Clone, Debug)]
pub struct Opm {
    cfg: OpmConfig,
    m: usize,
    source: UniSource,
    base: u64,
    state: OpmState,
}

impl Opm {
    /// OPM for `model` (at least two modalities); `feature_dims` helps recognise the head.
    pub fn new(
        cfg: OpmConfig,
        model: &dyn MultimodalModel,
        feature_dims: Option<&[usize]>,
        run_seed: u64,
    ) -> std::result::Result<Self, MethodError> {
        cfg.validate()?;
        let m = model.modalities().len();
        crate::shared::require_two("opm", m)?;
        let source = UniSource::for_model(cfg.uni_modal, model, feature_dims);
        let base = mix_seed(cfg.seed, run_seed);
        Ok(Self { cfg, m, source, base, state: OpmState { in_effect: vec![1.0; m], ..OpmState::default() } })
    }

    /// The settings it was built with.
    pub fn config(&self) -> &OpmConfig {
        &self.cfg
    }

    /// What the last step computed and did; `None` before the first step.
    pub fn last_stats(&self) -> Option<&OpmStats> {
        self.state.started.then_some(&self.state.last)
    }

    /// Whether the uni-modal predictions come from the head split.
    pub fn uses_head_split(&self) -> bool {
        self.source.is_head()
    }

    /// The logits of the pass with each sample's dropped features (see the module docs).
    fn dropped_logits(&self, cx: &StepCx<'_>, keep: &[Vec<bool>], theta: f64) -> Result<Tensor> {
        let full = &cx.forward.full;
        let column = |m: usize, like: &Tensor| -> Result<Tensor> {
            let b = keep.len();
            let v: Vec<f64> = keep.iter().map(|row| if row[m] { 1.0 } else { 0.0 }).collect();
            let mut shape = vec![b];
            shape.extend(std::iter::repeat_n(1, like.rank() - 1));
            Tensor::from_vec(v, shape, like.device())?.to_dtype(like.dtype())
        };
        match &self.source {
            UniSource::Head(head) => {
                let scaled = full
                    .encoder_features
                    .iter()
                    .enumerate()
                    .map(|(m, h)| (h.broadcast_mul(&column(m, h)?)? / (1.0 - theta))?.contiguous())
                    .collect::<Result<Vec<_>>>()?;
                head.fuse(&scaled)
            }
            UniSource::Pending(_) | UniSource::Shapley => {
                let inputs = cx
                    .batch
                    .inputs
                    .iter()
                    .enumerate()
                    .map(|(m, x)| x.broadcast_mul(&column(m, x)?))
                    .collect::<Result<Vec<_>>>()?;
                let seed = mix_seed(self.base, (cx.step as u64) << 1 | 1);
                Ok(cx.model.forward(&inputs, &ForwardOpts::train(self.m, seed))?.logits)
            }
        }
    }
}

impl Modulator for Opm {
    fn name(&self) -> &'static str {
        "opm"
    }

    fn forward_plan(&self) -> ForwardPlan {
        self.source.forward_plan()
    }

    fn objective(&mut self, cx: &StepCx<'_>) -> Result<Objective> {
        let m = self.m;
        let labels = &cx.batch.labels;
        let uni = self.source.uni_logits("opm", cx)?;
        let score_t = uni.iter().map(|t| score_tensor(t, labels)).collect::<Result<Vec<_>>>()?;
        let scores = score_t.iter().map(scalar_f64).collect::<Result<Vec<_>>>()?;
        let b = labels_u32(cx.batch)?.len();
        let mut stats = OpmStats {
            weakest: weakest(&scores),
            scores,
            q: vec![0.0; m],
            kept: vec![b; m],
            head_split: self.source.is_head(),
            ..OpmStats::default()
        };
        let plain = |stats: OpmStats, this: &mut Self| -> Result<Objective> {
            this.state = OpmState { in_effect: vec![1.0; m], started: true, last: stats };
            let output = cx.forward.full.logits.clone();
            let loss = candle_nn::loss::cross_entropy(&output, labels)?;
            Ok(Objective { loss, output, mono: None })
        };
        if cx.epoch <= self.cfg.warmup_epochs {
            stats.warmup = true;
            return plain(stats, self);
        }
        let (w, q) = opm_drop_probabilities(self.cfg.q_base, self.cfg.lambda, &stats.scores);
        stats.q = q.clone();
        if opm_uniform(self.base, cx.step, 0) < 1.0 - self.cfg.p_exe {
            return plain(stats, self);
        }
        let dims = cx
            .forward
            .full
            .encoder_features
            .iter()
            .map(|h| Ok(h.elem_count() / h.dim(0)?))
            .collect::<Result<Vec<usize>>>()?;
        let d_sum: usize = dims.iter().sum();
        let theta = dims.iter().zip(&q).map(|(&d, &qm)| d as f64 * qm).sum::<f64>() / d_sum as f64;
        let keep: Vec<Vec<bool>> = (0..b)
            .map(|i| (0..m).map(|x| opm_uniform(self.base, cx.step, (1 + i * m + x) as u64) < 1.0 - q[x]).collect())
            .collect();
        stats.executed = true;
        stats.theta = theta;
        stats.kept = (0..m).map(|x| keep.iter().filter(|row| row[x]).count()).collect();
        let output = self.dropped_logits(cx, &keep, theta)?;
        let mut loss = candle_nn::loss::cross_entropy(&output, labels)?;
        if self.cfg.theta_gradient {
            // θ · (θ̃ − stopgrad θ̃): value 0, gradient θ · ∂θ/∂params through the scores. Only the
            // q_m that are neither 0 nor clipped carry a gradient (torch's clamp passes it at 1).
            let sw = &score_t[w];
            let mut extra: Option<Tensor> = None;
            for x in (0..m).filter(|&x| x != w && q[x] > 0.0) {
                let raw = self.cfg.q_base * (1.0 + self.cfg.lambda * (stats.scores[x] / stats.scores[w] - 1.0).tanh());
                if raw > 1.0 {
                    continue;
                }
                let qt =
                    (score_t[x].div(sw)? - 1.0)?.tanh()?.affine(self.cfg.q_base * self.cfg.lambda, self.cfg.q_base)?;
                let term = (&qt - qt.detach())?.affine(theta * dims[x] as f64 / d_sum as f64, 0.0)?;
                extra = Some(match extra {
                    None => term,
                    Some(e) => (e + term)?,
                });
            }
            if let Some(e) = extra {
                loss = loss.broadcast_add(&e.to_dtype(loss.dtype())?)?;
            }
        }
        self.state = OpmState { in_effect: q.iter().map(|qm| 1.0 - qm).collect(), started: true, last: stats };
        Ok(Objective { loss, output, mono: None })
    }

    fn coefficients(&self) -> Option<Vec<f64>> {
        Some(self.state.in_effect.clone())
    }

    /// The last step's [`OpmStats`] fields at the top level, `in_effect` and `started`.
    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).unwrap_or_default()
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let Some(s) = crate::shared::saved_state::<OpmState>("opm", state)? else { return Ok(()) };
        if s.in_effect.len() != self.m {
            candle_core::bail!("opm state: {} coefficients for {} modalities", s.in_effect.len(), self.m);
        }
        self.state = s;
        Ok(())
    }
}

impl crate::Method for Opm {
    const NAME: &'static str = "opm";
    const HOOKS: crate::Hooks = crate::Hooks::OBJECTIVE;
    type Config = OpmConfig;

    fn preset(_dataset: &str) -> OpmConfig {
        OpmConfig::av_digits()
    }

    fn validate(config: &OpmConfig) -> std::result::Result<(), MethodError> {
        config.validate()
    }

    fn build(config: &OpmConfig, cx: &crate::BuildCx<'_>) -> std::result::Result<Self, MethodError> {
        Opm::new(config.clone(), cx.model, cx.feature_dims, cx.seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ogm::tests::{batch, forward, tiny};
    use agm_fusion::{FusionKind, FusionModel};

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-14 * (1.0 + b.abs())
    }

    #[test]
    fn two_modalities_follow_the_official_calcu_q() {
        // The leading modality: q_base · (1 + lam · tanh(s_1/s_2 − 1)); the other: 0.
        let (w, q) = opm_drop_probabilities(0.5, 0.5, &[3.0, 2.0]);
        assert_eq!(w, 1);
        assert!(close(q[0], 0.5 * (1.0 + 0.5 * 0.5f64.tanh())) && q[1] == 0.0);
        let (w, q) = opm_drop_probabilities(0.5, 0.5, &[2.0, 3.0]);
        assert!(w == 0 && q[0] == 0.0 && close(q[1], 0.5 * (1.0 + 0.5 * 0.5f64.tanh())));
        // A tie drops nothing; a large lead is clipped at 1.
        assert_eq!(opm_drop_probabilities(0.5, 0.5, &[2.0, 2.0]).1, vec![0.0, 0.0]);
        assert_eq!(opm_drop_probabilities(0.9, 1.0, &[9.0, 1.0]).1, vec![1.0, 0.0]);
    }

    #[test]
    fn three_modalities_drop_every_leader_against_the_weakest() {
        let (w, q) = opm_drop_probabilities(0.4, 1.0, &[2.0, 1.0, 1.5]);
        assert_eq!(w, 1);
        assert!(close(q[0], 0.4 * (1.0 + 1.0f64.tanh())) && q[1] == 0.0 && close(q[2], 0.4 * (1.0 + 0.5f64.tanh())));
    }

    #[test]
    fn uniforms_are_the_generators_and_lie_in_the_unit_interval() {
        // The values scripts/golden/bml_tpami2024.py's agm_uniform gives (seed 7, run seed 0).
        let base = mix_seed(7, 0);
        assert_eq!(base, 17824971123127853533);
        assert_eq!(opm_uniform(base, 5, 0), 0.9221664178191258);
        assert_eq!(opm_uniform(base, 5, 13), 0.41091315210317225);
        assert!((0..1000).map(|i| opm_uniform(base, 1, i)).all(|u| (0.0..1.0).contains(&u)));
    }

    #[test]
    fn settings_validate_and_read_from_toml() {
        let c: OpmConfig = toml::from_str("q_base = 0.25\nlambda = 1.0").unwrap();
        assert_eq!(c, OpmConfig { q_base: 0.25, lambda: 1.0, ..OpmConfig::official() });
        assert!(toml::from_str::<OpmConfig>("lam = 0.5").is_err());
        assert!(OpmConfig { p_exe: 1.5, ..c.clone() }.validate().unwrap_err().to_string().contains("opm.p_exe"));
        assert!(OpmConfig { lambda: -1.0, ..c }.validate().unwrap_err().to_string().contains("opm.lambda"));
    }

    /// One OPM objective on the tiny late concat model (or `fusion`) at epoch 2, drop always run.
    fn objective(cfg: OpmConfig, fusion: &FusionKind) -> (Opm, Objective, FusionModel, crate::StepForward) {
        let dims = [3, 5];
        let net = tiny(&dims, fusion, false);
        let mut opm = Opm::new(cfg, &net, Some(&[4, 4]), 0).unwrap();
        let b = batch(&dims, 8);
        let fwd = forward(&net, &b, opm.forward_plan());
        let obj = opm.objective(&StepCx { model: &net, batch: &b, forward: &fwd, step: 3, epoch: 2 }).unwrap();
        (opm, obj, net, fwd)
    }

    fn always(theta_gradient: bool) -> OpmConfig {
        OpmConfig { p_exe: 1.0, warmup_epochs: 1, q_base: 0.6, theta_gradient, ..OpmConfig::official() }
    }

    #[test]
    fn the_drop_masks_and_rescales_the_leading_features() {
        let (opm, obj, net, fwd) = objective(always(true), &FusionKind::LateConcat);
        let s = opm.last_stats().unwrap().clone();
        assert!(s.executed && s.head_split && !s.warmup);
        let w = s.weakest;
        let lead = 1 - w;
        assert!(s.q[lead] > 0.0 && s.q[w] == 0.0);
        assert!(close(s.theta, s.q[lead] / 2.0), "equal feature widths: θ is the mean q");
        assert_eq!(s.kept[w], 8);
        assert!(s.kept[lead] < 8, "{s:?}");
        assert_eq!(opm.coefficients().unwrap()[lead], 1.0 - s.q[lead]);
        // The output is the head over h'_m = mask ⊙ h_m / (1 − θ).
        let groups = net.param_groups();
        let wt = groups.find("net.head.fc.weight").unwrap().var.as_tensor().clone();
        let bias = groups.find("net.head.fc.bias").unwrap().var.as_tensor().clone();
        let h = &fwd.full.encoder_features;
        let keep: Vec<Vec<bool>> = (0..8)
            .map(|i| (0..2).map(|x| opm_uniform(opm.base, 3, (1 + i * 2 + x) as u64) < 1.0 - s.q[x]).collect())
            .collect();
        let wv = wt.to_vec2::<f64>().unwrap();
        let bv = bias.to_vec1::<f64>().unwrap();
        let mut rows = Vec::new();
        for (i, keep_i) in keep.iter().enumerate() {
            let mut feat = Vec::new();
            for (x, t) in h.iter().enumerate() {
                let hv = t.get(i).unwrap().to_vec1::<f64>().unwrap();
                feat.extend(hv.iter().map(|&v| if keep_i[x] { v / (1.0 - s.theta) } else { 0.0 }));
            }
            for c in 0..3 {
                rows.push(bv[c] + wv[c].iter().zip(&feat).map(|(a, b)| a * b).sum::<f64>());
            }
        }
        let got: Vec<f64> = obj.output.flatten_all().unwrap().to_vec1().unwrap();
        assert!(got.iter().zip(&rows).all(|(a, b)| (a - b).abs() < 1e-12));
    }

    #[test]
    fn the_theta_gradient_changes_the_encoders_only_and_not_the_loss() {
        let (_, with, net1, _) = objective(always(true), &FusionKind::LateConcat);
        let (_, without, net0, _) = objective(always(false), &FusionKind::LateConcat);
        let value = |o: &Objective| o.loss.to_scalar::<f64>().unwrap();
        assert_eq!(value(&with), value(&without));
        let (g1, g0) = (with.loss.backward().unwrap(), without.loss.backward().unwrap());
        let (p1, p0) = (net1.param_groups(), net0.param_groups());
        let diff = |name: &str| {
            let v1 = p1.find(name).unwrap().var.as_tensor();
            let v0 = p0.find(name).unwrap().var.as_tensor();
            (g1.get(v1).unwrap() - g0.get(v0).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        assert_eq!(diff("net.head.fc.weight"), 0.0, "W and b are detached in the scores");
        assert!(diff("net.audio_encoder.0.weight") > 1e-8 && diff("net.visual_encoder.0.weight") > 1e-8);
    }

    #[test]
    fn warm_up_and_skipped_drops_train_on_the_full_pass() {
        let cfg = OpmConfig { warmup_epochs: 2, ..always(true) };
        let (opm, obj, _, fwd) = objective(cfg, &FusionKind::LateConcat);
        let s = opm.last_stats().unwrap();
        assert!(s.warmup && !s.executed && s.q == vec![0.0, 0.0]);
        assert_eq!(obj.output.to_vec2::<f64>().unwrap(), fwd.full.logits.to_vec2::<f64>().unwrap());
        let (opm, obj, _, fwd) = objective(OpmConfig { p_exe: 0.0, ..always(true) }, &FusionKind::LateConcat);
        let s = opm.last_stats().unwrap();
        assert!(!s.warmup && !s.executed && s.q.iter().any(|&q| q > 0.0) && s.theta == 0.0);
        assert_eq!(opm.coefficients().unwrap(), vec![1.0, 1.0]);
        assert_eq!(obj.output.to_vec2::<f64>().unwrap(), fwd.full.logits.to_vec2::<f64>().unwrap());
    }

    #[test]
    fn other_fusions_drop_inputs_and_the_state_round_trips() {
        let (opm, obj, net, _) = objective(always(true), &FusionKind::Gated { dim: 5 });
        let s = opm.last_stats().unwrap();
        assert!(s.executed && !s.head_split && obj.loss.to_scalar::<f64>().unwrap().is_finite());
        let mut other = Opm::new(always(true), &net, Some(&[4, 4]), 0).unwrap();
        other.load_state(&opm.state()).unwrap();
        assert_eq!(other.state(), opm.state());
        assert_eq!(other.coefficients(), opm.coefficients());
    }

    #[test]
    fn every_fusion_drops_and_trains_with_two_and_three_modalities() {
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
                let feature_dims = vec![4; dims.len()];
                let mut opm = Opm::new(always(true), &net, Some(&feature_dims), 0).unwrap();
                let b = batch(&dims, 8);
                for step in 1..=2 {
                    let fwd = forward(&net, &b, opm.forward_plan());
                    let cx = StepCx { model: &net, batch: &b, forward: &fwd, step, epoch: 2 };
                    let obj = opm.objective(&cx).unwrap();
                    let what = format!("{fusion:?}, M = {}", dims.len());
                    assert!(obj.loss.to_scalar::<f64>().unwrap().is_finite(), "{what}");
                    obj.loss.backward().unwrap();
                    let s = opm.last_stats().unwrap();
                    assert!(s.executed && s.q[s.weakest] == 0.0 && s.kept[s.weakest] == 8, "{what}: {s:?}");
                    assert_eq!(s.head_split, *fusion == FusionKind::LateConcat, "{what}");
                }
            }
        }
    }
}
