//! AGM, faithfully (Li et al., ICCV 2023; the official code's differences: docs/known-differences.md).

use crate::MethodError;
use agm_core::Subset;
use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::shapley;
use crate::{ClipRule, ForwardPlan, Modulator, Objective, StepCx};

/// The largest exponent whose exponential is a finite f64; the reference overflows past it.
const LOG_COEFF_MAX: f64 = 709.78;

/// AGM settings. Use a named preset for the reference's per-dataset semantics.
/// In a config file, missing keys take the AV-Digits preset's values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default = "AgmConfig::av_digits")]
pub struct AgmConfig {
    /// Strength of the modulation (`coeff = exp(alpha · min(opt_ratio − ratio, clamp))`).
    pub alpha: f64,
    /// First epoch (1-based, inclusive) in which coefficients are installed.
    pub window_start: usize,
    /// Last epoch (inclusive); `None` means until the end. After it the last scales stay in
    /// force, as in the reference.
    #[serde(with = "agm_core::serde_none")]
    pub window_end: Option<usize>,
    /// Upper clamp on `opt_ratio − ratio` (CREMA-D 10, UR-Funny 7, otherwise none).
    #[serde(with = "agm_core::serde_none")]
    pub coeff_clamp: Option<f64>,
    /// Floor on the true-class probability in the scores (1e-8; none in UR-Funny).
    #[serde(with = "agm_core::serde_none")]
    pub prob_floor: Option<f64>,
    /// The conditional clipping the reference applies to AGM runs.
    #[serde(with = "agm_core::serde_none")]
    pub clip: Option<ClipRule>,
}

impl AgmConfig {
    /// AV-MNIST: no clamp, floor 1e-8, clip at 1; alpha 2.5 over the whole run (author, issue #10).
    pub fn paper_avmnist() -> Self {
        Self {
            alpha: 2.5,
            window_start: 0,
            window_end: None,
            coeff_clamp: None,
            prob_floor: Some(1e-8),
            clip: Some(ClipRule::outside_band(1.0, 1.0)),
        }
    }

    /// CREMA-D: clamp 10, floor 1e-8, clip at 1; alpha 1.5 (author, issues #3, #5, #10).
    pub fn paper_cremad() -> Self {
        Self { alpha: 1.5, coeff_clamp: Some(10.0), ..Self::paper_avmnist() }
    }

    /// UR-Funny: clamp 7, no probability floor, clip at 5; alpha 4.0 for late fusion (issue #8).
    pub fn paper_urfunny() -> Self {
        Self {
            alpha: 4.0,
            coeff_clamp: Some(7.0),
            prob_floor: None,
            clip: Some(ClipRule::outside_band(5.0, 5.0)),
            ..Self::paper_avmnist()
        }
    }

    /// UR-Funny early fusion: as late fusion with alpha 6 (issue #8).
    pub fn paper_urfunny_early() -> Self {
        Self { alpha: 6.0, ..Self::paper_urfunny() }
    }

    /// AVE: no clamp, floor 1e-8, no clipping; alpha not stated by the authors (CLI default 1).
    pub fn paper_ave() -> Self {
        Self { alpha: 1.0, clip: None, ..Self::paper_avmnist() }
    }

    /// MOSEI: no clamp, floor 1e-8, and the reference's clip condition as written (Q9); alpha not
    /// stated (CLI default 1).
    pub fn paper_mosei() -> Self {
        Self {
            alpha: 1.0,
            clip: Some(ClipRule { threshold: 1.0, max_norm: 1.0, condition: crate::ClipCondition::MoseiQuirk }),
            ..Self::paper_avmnist()
        }
    }

    /// The embedded AV-Digits default: AV-MNIST semantics with a milder alpha suited to short runs.
    pub fn av_digits() -> Self {
        Self { alpha: 1.0, ..Self::paper_avmnist() }
    }

    /// Whether coefficients are installed in 1-based epoch `epoch`: from `window_start` through
    /// `window_end` (no end when it is `None`).
    pub fn in_window(&self, epoch: usize) -> bool {
        crate::shared::in_window(self.window_start, self.window_end, epoch)
    }

    /// Checks every field; the error names the field and the allowed values.
    pub fn validate(&self) -> std::result::Result<(), MethodError> {
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return Err(format!("agm.alpha must be a finite number >= 0, got {}", self.alpha).into());
        }
        crate::shared::check_window("agm", self.window_start, self.window_end)?;
        if let Some(c) = self.coeff_clamp {
            if !(c.is_finite() && c >= 0.0) {
                return Err(
                    format!("agm.coeff_clamp must be finite and >= 0 (a cap on opt_ratio − ratio), got {c}").into()
                );
            }
        }
        if let Some(f) = self.prob_floor {
            if !(f > 0.0 && f < 1.0) {
                return Err(format!("agm.prob_floor must be in (0, 1), got {f}").into());
            }
        }
        if let Some(c) = &self.clip {
            c.validate("agm")?;
        }
        Ok(())
    }
}

/// The numbers AGM computed at one step, for logs and parity checks.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AgmStepStats {
    /// Each modality's score `s_x` on this batch: the mean `−log p` of the true class under its
    /// mono-modal output `m_x` ([`crate::shapley::score`], with `prob_floor`).
    pub scores: Vec<f64>,
    /// `exp(M/(M−1) · (mean(s) − s_x))` from this batch's scores.
    pub ratio: Vec<f64>,
    /// The same ratio from the running scores before this step (the reference's target ratio).
    pub opt_ratio: Vec<f64>,
    /// `exp(alpha · (opt_ratio − ratio))` per modality, the difference capped by `coeff_clamp` and
    /// the exponent by the f64 range (see `saturated`).
    pub coeff: Vec<f64>,
    /// Per modality, whether `coeff_clamp` capped `opt_ratio − ratio`.
    pub clamp_fired: Vec<bool>,
    /// Running mean scores before this step's update.
    pub running_before: Vec<f64>,
    /// Running mean scores after it: `r ← r·(n − 1)/n + s/n`, `n` the 1-based global step.
    pub running_after: Vec<f64>,
    /// The hook scales after this step: `coeff` inside the modulation window, else the scales that
    /// were in force (the last installed ones, or 1 before any).
    pub scales_in_effect: Vec<f64>,
    /// True when a coefficient's exponent passed the f64 range and was saturated (the reference
    /// raises an overflow error there).
    pub saturated: bool,
}

#[derive(Serialize, Deserialize)]
struct AgmState {
    #[serde(with = "agm_core::serde_f64::seq")]
    running: Vec<f64>,
    #[serde(with = "agm_core::serde_f64::seq")]
    scales: Vec<f64>,
}

/// Adaptive Gradient Modulation.
#[derive(Clone, Debug)]
pub struct Agm {
    cfg: AgmConfig,
    m: usize,
    running: Vec<f64>,
    scales: Vec<f64>,
    last: Option<AgmStepStats>,
    /// The saturation warning is shown once per run; every step records it in its stats.
    warned_saturation: bool,
}

impl Agm {
    /// AGM over `m` modalities (at least 2).
    pub fn new(cfg: AgmConfig, m: usize) -> std::result::Result<Self, MethodError> {
        cfg.validate()?;
        if m < 2 {
            return Err(format!("agm needs at least 2 modalities, the model has {m}").into());
        }
        Ok(Self { cfg, m, running: vec![0.0; m], scales: vec![1.0; m], last: None, warned_saturation: false })
    }

    /// The settings it was built with.
    pub fn config(&self) -> &AgmConfig {
        &self.cfg
    }

    /// The hook scales currently in force.
    pub fn scales(&self) -> &[f64] {
        &self.scales
    }

    /// Running mean scores since step 1.
    pub fn running_scores(&self) -> &[f64] {
        &self.running
    }

    /// The numbers of the last [`Agm::update`]; `None` before the first step (they are not saved
    /// in checkpoints).
    pub fn last_stats(&self) -> Option<&AgmStepStats> {
        self.last.as_ref()
    }

    /// `exp(M/(M−1) · (mean − s_x))` for every x.
    fn ratios(&self, s: &[f64]) -> Vec<f64> {
        let m = self.m as f64;
        let mean = s.iter().sum::<f64>() / m;
        s.iter().map(|&sx| ((mean - sx) * m / (m - 1.0)).exp()).collect()
    }

    /// Coefficients from this batch's scores and the running scores before it, then the
    /// running-score update with the 1-based global step `n`.
    pub fn update(&mut self, scores: &[f64], n: usize, epoch: usize) -> &AgmStepStats {
        let ratio = self.ratios(scores);
        let opt_ratio = self.ratios(&self.running);
        let mut stats =
            AgmStepStats { scores: scores.to_vec(), running_before: self.running.clone(), ..AgmStepStats::default() };
        for x in 0..self.m {
            let d = opt_ratio[x] - ratio[x];
            let (d, fired) = match self.cfg.coeff_clamp {
                Some(c) if d > c => (c, true),
                _ => (d, false),
            };
            let mut exponent = self.cfg.alpha * d;
            if exponent > LOG_COEFF_MAX {
                if !self.warned_saturation {
                    self.warned_saturation = true;
                    tracing::warn!(
                        modality = x,
                        step = n,
                        exponent,
                        "AGM coefficient overflows f64; saturating (the reference crashes here); \
                         a lower alpha avoids it (warned once per run)"
                    );
                }
                stats.saturated = true;
                exponent = LOG_COEFF_MAX;
            }
            stats.coeff.push(exponent.exp());
            stats.clamp_fired.push(fired);
        }
        let nf = n as f64;
        for (r, &s) in self.running.iter_mut().zip(scores) {
            *r = *r * (nf - 1.0) / nf + s / nf;
        }
        if self.cfg.in_window(epoch) {
            self.scales.clone_from(&stats.coeff);
        }
        stats.ratio = ratio;
        stats.opt_ratio = opt_ratio;
        stats.running_after = self.running.clone();
        stats.scales_in_effect = self.scales.clone();
        self.last = Some(stats);
        self.last.as_ref().expect("just set")
    }
}

/// Sums tensors left to right.
fn sum_all(ts: &[Tensor]) -> Result<Tensor> {
    ts.iter().skip(1).try_fold(ts[0].clone(), |a, b| a + b)
}

impl Modulator for Agm {
    fn name(&self) -> &'static str {
        "agm"
    }

    fn forward_plan(&self) -> ForwardPlan {
        ForwardPlan::Shapley
    }

    fn objective(&mut self, cx: &StepCx<'_>) -> Result<Objective> {
        let m = self.m;
        let model_m = cx.model.modalities().len();
        if model_m != m {
            // Else the passes of another modality count would be taken for the model's.
            candle_core::bail!(
                "agm was built for {m} modalities, the model has {model_m}: build it with `Agm::new(config, \
                 model.modalities().len())`"
            );
        }
        let fwd = cx.forward;
        let mono = shapley::mono_outputs(m, |s: Subset| fwd.logits(s, m))?;
        let labels = cx.batch.labels.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        let scores =
            mono.iter().map(|mx| shapley::score(mx, &labels, self.cfg.prob_floor)).collect::<Result<Vec<_>>>()?;
        self.update(&scores, cx.step, cx.epoch);
        // The hooked backward: each m_x's upstream gradient times its scale.
        let dtype_max = match fwd.full.logits.dtype() {
            DType::F64 => f64::MAX,
            _ => f32::MAX as f64,
        };
        let scaled = mono
            .iter()
            .zip(&self.scales)
            .map(|(mx, &s)| agm_kernels::grad_scale(mx, s.min(dtype_max)))
            .collect::<Result<Vec<_>>>()?;
        // Forward value is exactly T (so alpha = 0 reproduces joint training bit for bit); the
        // gradient flows only through the scaled mono-modal outputs, as with the reference hooks.
        let full = &fwd.full.logits;
        let output = (full.detach() + (sum_all(&scaled)? - sum_all(&mono)?.detach())?)?;
        let loss = candle_nn::loss::cross_entropy(&output, &cx.batch.labels)?;
        Ok(Objective { loss, output, mono: Some(mono.iter().map(Tensor::detach).collect()) })
    }

    fn clip_rule(&self) -> Option<ClipRule> {
        self.cfg.clip
    }

    fn coefficients(&self) -> Option<Vec<f64>> {
        Some(self.scales.clone())
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(AgmState { running: self.running.clone(), scales: self.scales.clone() })
            .expect("plain numbers serialize")
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let s: AgmState = serde_json::from_value(state.clone())
            .map_err(|e| candle_core::Error::Msg(format!("agm state in checkpoint: {e}")))?;
        if s.running.len() != self.m || s.scales.len() != self.m {
            candle_core::bail!(
                "agm state in checkpoint is for {} modalities, the model has {}",
                s.running.len(),
                self.m
            );
        }
        self.running = s.running;
        self.scales = s.scales;
        Ok(())
    }
}

impl crate::Method for Agm {
    const NAME: &'static str = "agm";
    const HOOKS: crate::Hooks = crate::Hooks::OBJECTIVE;
    type Config = AgmConfig;

    fn preset(dataset: &str) -> AgmConfig {
        match dataset {
            "avmnist" => AgmConfig::paper_avmnist(),
            "cremad" => AgmConfig::paper_cremad(),
            "urfunny" => AgmConfig::paper_urfunny(),
            "ave" => AgmConfig::paper_ave(),
            "mosei" => AgmConfig::paper_mosei(),
            _ => AgmConfig::av_digits(),
        }
    }

    fn validate(config: &AgmConfig) -> std::result::Result<(), MethodError> {
        config.validate()
    }

    fn build(config: &AgmConfig, cx: &crate::BuildCx<'_>) -> std::result::Result<Self, MethodError> {
        Agm::new(config.clone(), cx.modalities())
    }
}
