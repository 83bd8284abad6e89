//! LFM (Yang et al., "Facilitating Multimodal Classification via Dynamically Learning Modality
//! Gap", NeurIPS 2024) as a [`Modulator`], following the official code
//! (github.com/njustkmg/NeurIPS24-LFM at `ad44fa09fee471c9267a7cba526b222c54d45493`:
//! `Crema_epoch.py`, `Crema_epoch_learnable.py`).
//!
//! # What one step computes (`train_audio_video`)
//!
//! The method owns one linear uni-modal head per modality (`o_m = head_m(h_m)` over the flattened
//! encoder feature, created in [`Modulator::attach`]; the official model's `cls_a`, `cls_v`).
//! With `ō = (1/M)·Σ_m o_m` (the official `0.5·o_v + 0.5·o_a`), `p_m = softmax(o_m)` and
//! `p̄ = (1/M)·Σ_m p_m`:
//!
//! - `L_cls = CE(ō, y) + λ·CE(T, y)`, `T` the model's fused logits, `λ = fused_weight`;
//! - `L_align = (1/M)·Σ_m KL(p̄ ‖ p_m)`, summed over classes and averaged over the batch (the
//!   official `Alignment`: `0.5·(kl_div(p.log(), m) + kl_div(q.log(), m))` with PyTorch's
//!   `kl_div(input, target) = Σ target·(log target − input)`, i.e. the KL divergences *from* the
//!   mixture, not the Jensen–Shannon divergence its comment suggests);
//! - `L = 2·(α_cls·L_cls + α_align·L_align)`, with `α_cls + α_align = 1`.
//!
//! **`fused_weight`.** The official model has no fusion head of its own: its fused output is the
//! sum of the uni-modal heads, and `λ = 0` is exactly the official objective. agm's models have
//! their own fused output `T`, which agm evaluates and selects models on; with `λ = 0` it would
//! never be trained, so the presets use `λ = 1` (an agm addition). The term is left out of the
//! graph when `λ = 0`, so the model's fusion variables then get no gradient and the optimizer
//! skips them, as PyTorch skips a parameter whose `.grad` is `None`.
//!
//! # The weights `(α_cls, α_align)`
//!
//! - [`LfmWeighting::Fitted`] (the official default, `Crema_epoch.py`,
//!   `getAlpha_Learnable_Fitted`): quintic polynomials of the 0-based epoch `e` fitted to the
//!   learned weights of a CREMA-D run, [`LFM_FITTED_CLS`] and [`LFM_FITTED_ALIGN`]
//!   (`α_cls(0) ≈ 0.205`, rising to `≈ 1.01` at `e = 183`, so that `α_align` is slightly negative
//!   for `e` in 177..=189 as in the official code, and `≈ 0.92` at `e = 199`). The fit covers the
//!   official 200 epochs; beyond them the polynomials diverge (`α_cls(250) < 0`), so the epoch is
//!   held at [`LFM_FITTED_LAST_EPOCH`] (our choice; the official runs never get there).
//! - [`LfmWeighting::Learned`] (`Crema_epoch_learnable.py`, `getAlpha_Learnable`): starting from
//!   `α_align = alpha_init` (official `0.95`), before every epoch `e` (0-based) on a fixed batch
//!   of held-out samples:
//!   `g = mean(H·∇L_cls)` over the **first parameter tensor only**, `H` the Hessian of
//!   `α_cls·L_cls + α_align·L_align` (the official code reads `hessian_vector_prod[0]`, its audio
//!   encoder's first convolution weight); `lr ← lr/2` when `e % alpha_lr_halve_every == 0` and
//!   `e > 0`; `α_align ← clamp(α_align − lr·g, alpha_min, alpha_max)`; `α_cls = 1 − α_align`.
//!   The model's mode is the official code's: training mode before epoch 0 (the freshly built
//!   model; batch statistics of these samples, and BatchNorm's running statistics move once),
//!   evaluation mode before every later epoch (the official loop's validation left it there).
//!
//! # Where the learned weights differ from the official code
//!
//! - **The Hessian-vector product is a finite difference.** The official code differentiates
//!   twice (`create_graph=True`); agm's ops have no second derivatives. With `v = ∇L_cls`
//!   (every trainable variable, the heads included) and `s(t)` the mean gradient of the first
//!   tensor at `θ + t·v`, `g = Σ_k w_k·(s(k·h) − s(−k·h))/h` over `k = 1, 2, 3` with
//!   `w = (45, −9, 1)/60` (sixth order) and `h = 10⁻³/max|v|`, computed in `fp32-strict`
//!   whatever the run's `--precision` (bf16 products left it 50 % off on `avmnist-late`).
//!   The variables are set back bit for bit afterwards. The network is piecewise linear, and the
//!   double backward sees only the current piece: where a ReLU input lies within the ±3h of the
//!   samples, the difference measures the gradient's jump instead. So in f64 the step is halved
//!   (up to 12 times) until two steps agree to 1e-6 relative, and the larger of the two is kept;
//!   below f64, rounding hides that agreement and the first step's value is used. On the golden
//!   cases and 30 variants made with the official code this agrees with the double backward to
//!   5e-11 relative or better (case `lfm_learned_kink` crosses a kink). It does not settle where
//!   a ReLU input is exactly 0 at the point itself (the double backward takes ReLU′(0) = 0), nor
//!   on a network with so many units that some kink lies within any step; then the largest
//!   step's value is used, with a warning.
//! - **Which tensor is "first".** agm lists a modality's variables by name, not in PyTorch's
//!   registration order; the tensor read is the first multi-dimensional variable of the first
//!   modality's group (its first layer's weight in agm's models), else its first variable.
//! - **Which samples.** The official code takes 16 random training samples out of training and
//!   uses the first 8. Here: `alpha_samples` samples evenly spaced (rows `⌊i·n/k⌋`) over the run's
//!   held-out split ([`EpochCx::holdout`]), or over the training split when the run has none
//!   (then they are not held out), measured before training for the first epoch
//!   ([`Modulator::on_train_start`]) and at the end of every epoch for the next one (the model
//!   the official code measures at the start of that epoch). A driver that does not call
//!   `on_train_start` gets the first epoch's weights at the first step from that step's batch
//!   (rows `⌊i·B/k⌋`).
//!
//! # M = 2 and M = 3
//!
//! The official code is written for two modalities. For any `M ≥ 2` the fused prediction is
//! the mean of the `M` uni-modal logits and the alignment the mean KL divergence from their
//! mixture, both exactly the official formulas at `M = 2` (our generalisation; the golden case
//! `lfm3` checks it against the official functions rewritten for `M` inputs in PyTorch).

use agm_core::{BatchSource, ForwardOpts, MultimodalBatch, MultimodalModel, NamedVar};
use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var, D};
use serde::{Deserialize, Serialize};

use crate::shared::{mix_seed, require_two, scalar_f64};
use crate::uni_heads::UniHeads;
use crate::{EpochAction, EpochCx, MethodError, Modulator, Objective, StepCx, TrainStartCx};

/// `α_cls(e) = Σ_i c_i·eⁱ` (official `coef_alpha1`).
pub const LFM_FITTED_CLS: [f64; 6] =
    [2.04623704e-01, 3.35472727e-03, 1.22989557e-04, -2.92947416e-06, 2.23835486e-08, -5.39717505e-11];
/// `α_align(e) = Σ_i c_i·eⁱ` (official `coef_alpha2`; `1 − α_cls` up to rounding).
pub const LFM_FITTED_ALIGN: [f64; 6] =
    [7.95376296e-01, -3.35472727e-03, -1.22989557e-04, 2.92947416e-06, -2.23835486e-08, 5.39717505e-11];
/// The last 0-based epoch of the official run the polynomials were fitted on.
pub const LFM_FITTED_LAST_EPOCH: usize = 199;

/// The sixth-order central difference `f'(0) ≈ Σ_k w_k·(f(k·h) − f(−k·h))/h`, `k = 1, 2, 3`.
const FD_WEIGHTS: [f64; 3] = [45.0 / 60.0, -9.0 / 60.0, 1.0 / 60.0];
/// The finite-difference step of the Hessian-vector product, relative to `1/max|v|`, in every
/// dtype: on `avmnist-late` in f32, 1e-2 reached ReLU and max-pool kinks (the wrong sign in 3 of
/// 4 batches against f64) and 1e-4 drowned in rounding; 1e-3 agreed with f64 to 2e-4.
const FD_STEP: f64 = 1e-3;
/// In f64 the step shrinks by this factor, at most `FD_SHRINKS` times, until two steps'
/// differences agree to `FD_AGREE` relative (see [`Lfm::hypergradient`]).
const FD_SHRINK: f64 = 2.0;
const FD_SHRINKS: usize = 12;
const FD_AGREE: f64 = 1e-6;

/// The model's mode while the learned weights' hypergradient is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LfmPassMode {
    /// Batch statistics and dropout: the official measurement before the first epoch, on the
    /// freshly built model.
    Train,
    /// Running statistics, no dropout: the official measurements before every later epoch.
    Eval,
}

/// How the weights of the classification and alignment terms move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum LfmWeighting {
    /// The official polynomials of the epoch (`Crema_epoch.py`, the official default).
    Fitted,
    /// Hypergradient steps on held-out samples before every epoch (`Crema_epoch_learnable.py`).
    Learned,
}

impl LfmWeighting {
    /// The names a config file accepts for `lfm.weighting`.
    pub const NAMES: &'static [&'static str] = &["fitted", "learned"];

    /// The weighting's name in a config file (`fitted`, `learned`).
    pub fn as_str(self) -> &'static str {
        match self {
            LfmWeighting::Fitted => "fitted",
            LfmWeighting::Learned => "learned",
        }
    }
}

impl TryFrom<String> for LfmWeighting {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.as_str() {
            "fitted" => Ok(LfmWeighting::Fitted),
            "learned" => Ok(LfmWeighting::Learned),
            _ => Err(format!("lfm.weighting = `{s}` is not known; allowed: {}", LfmWeighting::NAMES.join(", "))),
        }
    }
}

impl From<LfmWeighting> for String {
    fn from(w: LfmWeighting) -> String {
        w.as_str().to_string()
    }
}

/// LFM settings. Missing keys in a config file take the AV-Digits preset's values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LfmConfig {
    /// `fitted` (official default) or `learned`.
    pub weighting: LfmWeighting,
    /// `λ`, the weight of the model's own fused cross-entropy inside the classification term;
    /// `0` is the official objective (see the module docs); `>= 0`.
    pub fused_weight: f64,
    /// `learned`: the initial `α_align` (official `0.95`), in `[alpha_min, alpha_max]`.
    pub alpha_init: f64,
    /// `learned`: the learning rate of `α_align` (official `1e-4`); `>= 0`.
    pub alpha_lr: f64,
    /// `learned`: the learning rate halves before every epoch `e > 0` (0-based) that is a
    /// multiple of this (official 20); `0` never halves it.
    pub alpha_lr_halve_every: usize,
    /// `learned`: the lower bound of `α_align` (official `0.05`); `0 <= alpha_min <= alpha_max`.
    pub alpha_min: f64,
    /// `learned`: the upper bound of `α_align` (official `0.95`); at most 1.
    pub alpha_max: f64,
    /// `learned`: how many held-out samples the hypergradient is measured on (official 8); `>= 1`.
    pub alpha_samples: usize,
}

impl Default for LfmConfig {
    fn default() -> Self {
        Self::av_digits()
    }
}

impl LfmConfig {
    /// The official settings (`Crema_epoch.py`): fitted weights, learned-mode settings of
    /// `Crema_epoch_learnable.py`, and agm's `fused_weight = 1` (0 is the official objective).
    pub fn official() -> Self {
        Self {
            weighting: LfmWeighting::Fitted,
            fused_weight: 1.0,
            alpha_init: 0.95,
            alpha_lr: 1e-4,
            alpha_lr_halve_every: 20,
            alpha_min: 0.05,
            alpha_max: 0.95,
            alpha_samples: 8,
        }
    }

    /// The official settings with the official objective exactly (`fused_weight = 0`: only for
    /// models whose own fused output is not evaluated).
    pub fn official_objective() -> Self {
        Self { fused_weight: 0.0, ..Self::official() }
    }

    /// The official settings with the learned weights (`Crema_epoch_learnable.py`).
    pub fn learned() -> Self {
        Self { weighting: LfmWeighting::Learned, ..Self::official() }
    }

    /// CREMA-D, the dataset of the official scripts.
    pub fn paper_cremad() -> Self {
        Self::official()
    }

    /// The embedded AV-Digits default: the official settings.
    pub fn av_digits() -> Self {
        Self::official()
    }

    /// The preset names [`LfmConfig::preset`] accepts.
    pub const PRESETS: &'static [&'static str] = &["official", "official-objective", "learned", "cremad", "av-digits"];

    /// The preset called `name` (one of [`LfmConfig::PRESETS`]); `None` for any other name.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "official" => Some(Self::official()),
            "official-objective" => Some(Self::official_objective()),
            "learned" => Some(Self::learned()),
            "cremad" => Some(Self::paper_cremad()),
            "av-digits" => Some(Self::av_digits()),
            _ => None,
        }
    }

    /// Checks every field; the error names the field and the allowed values.
    pub fn validate(&self) -> std::result::Result<(), MethodError> {
        if !(self.fused_weight.is_finite() && self.fused_weight >= 0.0) {
            return Err(format!("lfm.fused_weight must be a finite number >= 0, got {}", self.fused_weight).into());
        }
        if !(self.alpha_lr.is_finite() && self.alpha_lr >= 0.0) {
            return Err(format!("lfm.alpha_lr must be a finite number >= 0, got {}", self.alpha_lr).into());
        }
        let (lo, hi) = (self.alpha_min, self.alpha_max);
        if !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo <= hi && hi <= 1.0) {
            return Err(format!(
                "lfm.alpha_min and lfm.alpha_max must satisfy 0 <= min <= max <= 1, got {lo} and {hi}"
            )
            .into());
        }
        if !(self.alpha_init >= lo && self.alpha_init <= hi) {
            return Err(format!(
                "lfm.alpha_init must be in [alpha_min, alpha_max] = [{lo}, {hi}], got {}",
                self.alpha_init
            )
            .into());
        }
        if self.alpha_samples == 0 {
            return Err("lfm.alpha_samples must be >= 1, got 0".into());
        }
        Ok(())
    }
}

/// The fitted weights `(α_cls, α_align)` of 0-based epoch `epoch` (held at
/// [`LFM_FITTED_LAST_EPOCH`]), evaluated as the official code does (`Σ c_i·eⁱ`, in order).
pub fn lfm_fitted_weights(epoch: usize) -> [f64; 2] {
    let e = epoch.min(LFM_FITTED_LAST_EPOCH) as f64;
    let poly = |c: &[f64; 6]| c.iter().enumerate().fold(0.0, |acc, (i, c)| acc + c * e.powi(i as i32));
    [poly(&LFM_FITTED_CLS), poly(&LFM_FITTED_ALIGN)]
}

/// One learned update: `(lr, α_align)` after the official rule for 0-based epoch `epoch` with
/// hypergradient `grad`.
pub fn lfm_learned_update(cfg: &LfmConfig, epoch: usize, lr: f64, alpha_align: f64, grad: f64) -> (f64, f64) {
    let every = cfg.alpha_lr_halve_every;
    let lr = if every > 0 && epoch > 0 && epoch.is_multiple_of(every) { lr / 2.0 } else { lr };
    let a = alpha_align - lr * grad;
    // `max(min, min(max, a))` as the official code writes it (a NaN gradient leaves `max`).
    let a = if a < cfg.alpha_max { a } else { cfg.alpha_max };
    (lr, if cfg.alpha_min > a { cfg.alpha_min } else { a })
}

/// `k` rows evenly spaced over `n`: `⌊i·n/k⌋` for `i < min(k, n)`.
pub fn lfm_rows(n: usize, k: usize) -> Vec<usize> {
    let k = k.min(n);
    (0..k).map(|i| i * n / k).collect()
}

/// `(1/M)·Σ_m KL(p̄ ‖ p_m)` over the classes, averaged over the batch, `p_m = softmax(o_m)`,
/// `p̄` their mean (the official `Alignment` at `M = 2`).
pub fn lfm_alignment(logits: &[Tensor]) -> Result<Tensor> {
    if logits.is_empty() {
        candle_core::bail!("lfm: the alignment needs at least one modality's logits");
    }
    let m = logits.len() as f64;
    let log_p = logits.iter().map(|o| candle_nn::ops::log_softmax(o, D::Minus1)).collect::<Result<Vec<_>>>()?;
    let mut mix = log_p[0].exp()?;
    for lp in &log_p[1..] {
        mix = (mix + lp.exp()?)?;
    }
    let mix = mix.affine(1.0 / m, 0.0)?;
    // Mixture probabilities underflow only for logits hundreds apart; keep their log finite.
    let log_mix = mix.maximum(f64::MIN_POSITIVE)?.log()?;
    let rows = logits[0].dim(0)? as f64;
    let mut total: Option<Tensor> = None;
    for lp in &log_p {
        let kl = (&mix * (&log_mix - lp)?)?.sum_all()?;
        total = Some(match total {
            None => kl,
            Some(t) => (t + kl)?,
        });
    }
    total.expect("at least one modality").affine(1.0 / (m * rows), 0.0)
}

/// `Option<f64>` through [`agm_core::serde_f64`] (non-finite values round-trip).
mod opt_f64 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Exact(#[serde(with = "agm_core::serde_f64")] f64);

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        v.map(Exact).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Ok(Option::<Exact>::deserialize(d)?.map(|e| e.0))
    }
}

/// The method's numbers, saved with checkpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LfmState {
    /// `(α_cls, α_align)` in force (at the last step; after an end hook of the learned mode, the
    /// weights of the next epoch).
    #[serde(with = "agm_core::serde_f64::seq")]
    pub alpha: Vec<f64>,
    /// The 1-based epoch whose learned weights `alpha` are (0: none computed yet).
    pub alpha_epoch: usize,
    /// The learning rate of `α_align` after the halvings so far.
    #[serde(with = "agm_core::serde_f64")]
    pub alpha_lr: f64,
    /// The last hypergradient `g`.
    #[serde(with = "opt_f64")]
    pub alpha_grad: Option<f64>,
    /// The last step's `CE(ō, y)` (the official `loss_cls`).
    #[serde(with = "opt_f64")]
    pub loss_cls: Option<f64>,
    /// The last step's `CE(T, y)`, the model's fused cross-entropy (computed without gradient when
    /// `λ = 0`).
    #[serde(with = "opt_f64")]
    pub loss_fused: Option<f64>,
    /// The last step's `L_align`.
    #[serde(with = "opt_f64")]
    pub loss_align: Option<f64>,
}

/// LFM with method-owned uni-modal heads (see the module docs).
#[derive(Debug)]
pub struct Lfm {
    cfg: LfmConfig,
    m: usize,
    seed: u64,
    feature_dims: Option<Vec<usize>>,
    heads: Option<UniHeads>,
    state: LfmState,
}

/// The losses of one pass: `CE(ō)`, `CE(T)` when `λ > 0`, `L_align`, and the uni-modal logits.
struct Losses {
    ce_uni: Tensor,
    ce_fused: Option<Tensor>,
    align: Tensor,
    uni: Vec<Tensor>,
}

impl Losses {
    /// `L_cls = CE(ō) + λ·CE(T)`.
    fn cls(&self, fused_weight: f64) -> Result<Tensor> {
        match &self.ce_fused {
            Some(f) => &self.ce_uni + f.affine(fused_weight, 0.0)?,
            None => Ok(self.ce_uni.clone()),
        }
    }
}

impl Lfm {
    /// LFM over `m` modalities (at least 2).
    pub fn new(cfg: LfmConfig, m: usize) -> std::result::Result<Self, MethodError> {
        cfg.validate()?;
        require_two("lfm", m)?;
        let state = LfmState {
            alpha: match cfg.weighting {
                LfmWeighting::Fitted => lfm_fitted_weights(0).to_vec(),
                LfmWeighting::Learned => vec![1.0 - cfg.alpha_init, cfg.alpha_init],
            },
            alpha_epoch: 0,
            alpha_lr: cfg.alpha_lr,
            alpha_grad: None,
            loss_cls: None,
            loss_fused: None,
            loss_align: None,
        };
        Ok(Self { cfg, m, seed: 0, feature_dims: None, heads: None, state })
    }

    /// The run's seed: seeds the heads' initial values.
    pub fn with_run_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The flattened size of each encoder feature; required before [`Modulator::attach`].
    pub fn with_feature_dims(mut self, dims: Vec<usize>) -> std::result::Result<Self, MethodError> {
        if dims.len() != self.m {
            return Err(format!("lfm: {} encoder feature sizes for {} modalities", dims.len(), self.m).into());
        }
        self.feature_dims = Some(dims);
        Ok(self)
    }

    /// The settings it was built with.
    pub fn config(&self) -> &LfmConfig {
        &self.cfg
    }

    /// The weights in force and the last step's losses, as checkpoints save them.
    pub fn lfm_state(&self) -> &LfmState {
        &self.state
    }

    fn heads(&self) -> Result<&UniHeads> {
        self.heads.as_ref().ok_or_else(|| candle_core::Error::Msg("lfm: attach was not called".into()))
    }

    fn losses(&self, logits: &Tensor, features: &[Tensor], labels: &Tensor) -> Result<Losses> {
        let uni = self.heads()?.forward_all(features)?;
        let mut sum = uni[0].clone();
        for o in &uni[1..] {
            sum = (sum + o)?;
        }
        let mean = sum.affine(1.0 / self.m as f64, 0.0)?;
        let ce_uni = candle_nn::loss::cross_entropy(&mean, labels)?;
        let ce_fused =
            if self.cfg.fused_weight > 0.0 { Some(candle_nn::loss::cross_entropy(logits, labels)?) } else { None };
        let align = lfm_alignment(&uni)?;
        Ok(Losses { ce_uni, ce_fused, align, uni })
    }

    /// The losses of `batch` at the current variable values, in training mode (batch statistics,
    /// dropout masks from the run's seed, the same in every pass) or evaluation mode.
    fn losses_of(&self, model: &dyn MultimodalModel, batch: &MultimodalBatch, mode: LfmPassMode) -> Result<Losses> {
        let opts = match mode {
            LfmPassMode::Train => ForwardOpts::train(self.m, mix_seed(self.seed, 0x6c66_6d5f_616c_7068)),
            LfmPassMode::Eval => ForwardOpts::eval(self.m),
        };
        let out = model.forward(&batch.inputs, &opts)?;
        self.losses(&out.logits, &out.encoder_features, &batch.labels)
    }

    /// `mean(H·∇L_cls)` over the first tensor (see the module docs), with the model in `mode`.
    /// In training mode the BatchNorm running statistics move once, as in the official single
    /// forward: the finite difference's further passes leave them as the first pass left them.
    pub fn hypergradient(
        &self,
        model: &dyn MultimodalModel,
        batch: &MultimodalBatch,
        mode: LfmPassMode,
    ) -> Result<f64> {
        // A finite difference needs every digit the dtype has: no bf16 products, TF32 or
        // Winograd while it runs, whatever the run's precision.
        let _strict = agm_kernels::PrecisionGuard::new(agm_kernels::Precision::Fp32Strict);
        let groups = model.param_groups();
        let first = groups
            .per_modality
            .first()
            .and_then(|g| g.iter().find(|v| v.var.rank() >= 2).or_else(|| g.first()))
            .ok_or_else(|| candle_core::Error::Msg("lfm: the first modality has no trainable variable".into()))?
            .var
            .clone();
        let vars: Vec<Var> =
            groups.trainable().into_iter().map(|v| v.var).chain(self.heads()?.vars().cloned()).collect();
        let [a_cls, a_align] = [self.state.alpha[0], self.state.alpha[1]];
        let cls = self.losses_of(model, batch, mode)?.cls(self.cfg.fused_weight)?;
        let buffers: Vec<(Var, Tensor)> =
            groups.buffers.iter().map(|b| Ok((b.var.clone(), b.var.as_tensor().copy()?))).collect::<Result<_>>()?;
        let store = agm_kernels::backward(&cls)?;
        let dirs = vars
            .iter()
            .map(|v| match store.get(v.as_tensor()) {
                Some(g) => g.detach().to_dtype(v.dtype()),
                None => v.as_tensor().zeros_like(),
            })
            .collect::<Result<Vec<_>>>()?;
        drop(store);
        let mut vmax = 0.0f64;
        for d in &dirs {
            vmax = vmax.max(scalar_f64(&d.abs()?.flatten_all()?.max(0)?)?);
        }
        if !(vmax.is_finite() && vmax > 0.0) {
            return Ok(0.0);
        }
        let base = vars.iter().map(|v| v.as_tensor().copy()).collect::<Result<Vec<_>>>()?;
        let h = FD_STEP / vmax;
        let s = |t: f64| -> Result<f64> {
            for ((v, b), d) in vars.iter().zip(&base).zip(&dirs) {
                v.set(&(b + d.affine(t, 0.0)?)?)?;
            }
            let l = self.losses_of(model, batch, mode)?;
            let total = (l.cls(self.cfg.fused_weight)?.affine(a_cls, 0.0)? + l.align.affine(a_align, 0.0)?)?;
            let store: GradStore = agm_kernels::backward(&total)?;
            match store.get(first.as_tensor()) {
                Some(g) => scalar_f64(&g.to_dtype(DType::F64)?.mean_all()?),
                None => Ok(0.0),
            }
        };
        let difference = |h: f64| -> Result<f64> {
            let mut acc = 0.0;
            for (k, w) in FD_WEIGHTS.iter().enumerate() {
                let t = (k + 1) as f64 * h;
                acc += w * (s(t)? - s(-t)?);
            }
            Ok(acc / h)
        };
        // A ReLU kink within ±3h makes the difference measure the jump of the gradient there, not
        // the curvature the official double backward sees on the current linear piece: in f64,
        // shrink the step until two steps agree (below f64 rounding hides the agreement).
        let result = (|| -> Result<f64> {
            let coarsest = difference(h)?;
            if first.dtype() != DType::F64 {
                return Ok(coarsest);
            }
            let (mut h, mut g) = (h, coarsest);
            for _ in 0..FD_SHRINKS {
                let finer = difference(h / FD_SHRINK)?;
                if (finer - g).abs() <= FD_AGREE * finer.abs().max(g.abs()) {
                    return Ok(g);
                }
                (h, g) = (h / FD_SHRINK, finer);
            }
            // A kink at the point itself (a ReLU input exactly 0) grows as the step shrinks; the
            // largest step's value is the least affected.
            tracing::warn!(
                hypergradient = coarsest,
                "lfm: the finite-difference hypergradient did not settle as its step shrank (a ReLU input \
                 exactly at 0?); using the largest step's value"
            );
            Ok(coarsest)
        })();
        // Back to the exact values, whatever happened.
        for (v, b) in vars.iter().zip(&base).chain(buffers.iter().map(|(v, b)| (v, b))) {
            v.set(b)?;
        }
        result
    }

    /// With learned weights, computes those of 1-based epoch `epoch` on `alpha_samples` rows of
    /// `source` (the held-out split, else the training split).
    fn measure_for_epoch(
        &mut self,
        model: &dyn MultimodalModel,
        device: &candle_core::Device,
        source: &dyn BatchSource,
        epoch: usize,
    ) -> Result<()> {
        let rows = lfm_rows(source.len(), self.cfg.alpha_samples);
        if self.cfg.weighting == LfmWeighting::Learned && !rows.is_empty() {
            let batch = source.batch(&rows, device)?;
            self.learned_update(model, &batch, epoch)?;
        }
        Ok(())
    }

    /// Computes the learned weights of 1-based epoch `epoch` on `batch`.
    fn learned_update(&mut self, model: &dyn MultimodalModel, batch: &MultimodalBatch, epoch: usize) -> Result<()> {
        // The official first measurement runs on the freshly built model, which is still in
        // training mode; every later one follows a validation pass, in evaluation mode.
        let mode = if epoch == 1 { LfmPassMode::Train } else { LfmPassMode::Eval };
        let g = self.hypergradient(model, batch, mode)?;
        let (lr, a) = lfm_learned_update(&self.cfg, epoch - 1, self.state.alpha_lr, self.state.alpha[1], g);
        self.state.alpha_lr = lr;
        self.state.alpha = vec![1.0 - a, a];
        self.state.alpha_grad = Some(g);
        self.state.alpha_epoch = epoch;
        Ok(())
    }
}

/// Rows `rows` of a batch (the whole batch when its labels are per segment).
fn select_rows(batch: &MultimodalBatch, rows: &[usize]) -> Result<MultimodalBatch> {
    let n = batch.inputs.first().map(|x| x.dim(0)).transpose()?.unwrap_or(0);
    if batch.len() != n || rows.len() == n {
        return Ok(batch.clone());
    }
    let device = batch.labels.device();
    let idx = Tensor::from_vec(rows.iter().map(|&i| i as u32).collect::<Vec<_>>(), rows.len(), device)?;
    let inputs = batch.inputs.iter().map(|x| x.index_select(&idx, 0)).collect::<Result<Vec<_>>>()?;
    MultimodalBatch::new(inputs, batch.labels.index_select(&idx, 0)?)
}

impl Modulator for Lfm {
    fn name(&self) -> &'static str {
        "lfm"
    }

    fn attach(&mut self, model: &dyn MultimodalModel) -> Result<Vec<NamedVar>> {
        if model.modalities().len() != self.m {
            candle_core::bail!("lfm was built for {} modalities, the model has {}", self.m, model.modalities().len());
        }
        let dims = self.feature_dims.as_ref().ok_or_else(|| {
            candle_core::Error::Msg(
                "lfm needs the encoder feature sizes to build its uni-modal heads: call Lfm::with_feature_dims \
                 (agm_modulation::encoder_feature_dims measures them from one batch)"
                    .into(),
            )
        })?;
        let heads = UniHeads::create("lfm", model, dims, self.seed)?;
        let vars = heads.named_vars();
        self.heads = Some(heads);
        Ok(vars)
    }

    fn objective(&mut self, cx: &StepCx<'_>) -> Result<Objective> {
        match self.cfg.weighting {
            LfmWeighting::Fitted => self.state.alpha = lfm_fitted_weights(cx.epoch.saturating_sub(1)).to_vec(),
            LfmWeighting::Learned if self.state.alpha_epoch < cx.epoch => {
                // A driver that did not call `on_train_start`: the first epoch's weights from this
                // batch's rows.
                let n = cx.batch.inputs.first().map(|x| x.dim(0)).transpose()?.unwrap_or(0);
                let sub = select_rows(cx.batch, &lfm_rows(n, self.cfg.alpha_samples))?;
                self.learned_update(cx.model, &sub, cx.epoch)?;
            }
            LfmWeighting::Learned => {}
        }
        let full = &cx.forward.full;
        let l = self.losses(&full.logits, &full.encoder_features, &cx.batch.labels)?;
        let [a_cls, a_align] = [self.state.alpha[0], self.state.alpha[1]];
        let loss =
            (l.cls(self.cfg.fused_weight)?.affine(a_cls, 0.0)? + l.align.affine(a_align, 0.0)?)?.affine(2.0, 0.0)?;
        self.state.loss_cls = Some(scalar_f64(&l.ce_uni)?);
        self.state.loss_fused = match &l.ce_fused {
            Some(f) => Some(scalar_f64(f)?),
            None => Some(scalar_f64(&candle_nn::loss::cross_entropy(&full.logits.detach(), &cx.batch.labels)?)?),
        };
        self.state.loss_align = Some(scalar_f64(&l.align)?);
        Ok(Objective { loss, output: full.logits.clone(), mono: Some(l.uni.iter().map(Tensor::detach).collect()) })
    }

    /// The first epoch's learned weights, from the untrained model.
    fn on_train_start(&mut self, cx: &TrainStartCx<'_>) -> Result<()> {
        self.measure_for_epoch(cx.model, cx.device, cx.holdout.unwrap_or(cx.train), 1)
    }

    fn on_epoch_end(&mut self, cx: &EpochCx<'_>) -> Result<Vec<EpochAction>> {
        self.measure_for_epoch(cx.model, cx.device, cx.holdout.unwrap_or(cx.train), cx.epoch + 1)?;
        Ok(Vec::new())
    }

    /// `α_align` for every modality's uni-modal (alignment) term, then `α_cls` for the fused
    /// (classification) term; the loss carries them doubled (`L = 2·(…)`).
    fn coefficients(&self) -> Option<Vec<f64>> {
        let mut c = vec![self.state.alpha[1]; self.m];
        c.push(self.state.alpha[0]);
        Some(c)
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).expect("plain numbers serialize")
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let s: LfmState = serde_json::from_value(state.clone())
            .map_err(|e| candle_core::Error::Msg(format!("lfm state in checkpoint: {e}")))?;
        if s.alpha.len() != 2 {
            candle_core::bail!("lfm state in checkpoint has {} weights, expected 2", s.alpha.len());
        }
        self.state = s;
        Ok(())
    }
}

impl crate::Method for Lfm {
    const NAME: &'static str = "lfm";
    const HOOKS: crate::Hooks = crate::Hooks::OBJECTIVE;
    type Config = LfmConfig;

    fn preset(dataset: &str) -> LfmConfig {
        match dataset {
            "cremad" => LfmConfig::paper_cremad(),
            _ => LfmConfig::av_digits(),
        }
    }

    fn validate(config: &LfmConfig) -> std::result::Result<(), MethodError> {
        config.validate()
    }

    fn build(config: &LfmConfig, cx: &crate::BuildCx<'_>) -> std::result::Result<Self, MethodError> {
        let lfm = Lfm::new(config.clone(), cx.modalities())?.with_run_seed(cx.seed);
        lfm.with_feature_dims(cx.feature_dims(Self::NAME)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agm_fusion::{EncoderLayer, EncoderSpec, FusionModel, LateConcatConfig};
    use candle_core::Device;

    const NAMES: [&str; 3] = ["audio", "visual", "text"];
    const CLASSES: usize = 3;
    const HIDDEN: usize = 4;

    fn model(m: usize) -> FusionModel {
        let encoders = NAMES[..m]
            .iter()
            .map(|n| EncoderSpec {
                modality: n.to_string(),
                layers: vec![EncoderLayer::Linear { in_dim: 3, out_dim: HIDDEN }, EncoderLayer::Relu],
            })
            .collect();
        let cfg = LateConcatConfig { encoders, num_classes: CLASSES, prefix: "net".into() };
        FusionModel::late_concat(&cfg, 7, DType::F64, &Device::Cpu).unwrap()
    }

    /// `n` samples with values from a fixed LCG, labels cycling over the classes.
    fn batch(m: usize, n: usize, seed: u64) -> MultimodalBatch {
        let mut s = seed;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        };
        let inputs = (0..m)
            .map(|_| Tensor::from_vec((0..n * 3).map(|_| next()).collect::<Vec<_>>(), (n, 3), &Device::Cpu).unwrap());
        let labels: Vec<u32> = (0..n).map(|i| (i % CLASSES) as u32).collect();
        MultimodalBatch::new(inputs.collect(), Tensor::new(labels.as_slice(), &Device::Cpu).unwrap()).unwrap()
    }

    struct Split(MultimodalBatch);
    impl BatchSource for Split {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn batch(&self, indices: &[usize], device: &Device) -> Result<MultimodalBatch> {
            let idx = Tensor::from_vec(indices.iter().map(|&i| i as u32).collect::<Vec<_>>(), indices.len(), device)?;
            let inputs = self.0.inputs.iter().map(|x| x.index_select(&idx, 0)).collect::<Result<Vec<_>>>()?;
            MultimodalBatch::new(inputs, self.0.labels.index_select(&idx, 0)?)
        }
    }

    fn attached(cfg: LfmConfig, model: &FusionModel) -> Lfm {
        let m = model.modalities().len();
        let mut lfm = Lfm::new(cfg, m).unwrap().with_feature_dims(vec![HIDDEN; m]).unwrap();
        lfm.attach(model).unwrap();
        lfm
    }

    fn values(t: &Tensor) -> Vec<f64> {
        t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
    }

    fn softmax(row: &[f64]) -> Vec<f64> {
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = row.iter().map(|x| (x - max).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|x| x / s).collect()
    }

    #[test]
    fn fitted_weights_are_the_official_polynomials_held_after_the_fit() {
        assert_eq!(lfm_fitted_weights(0), [0.204623704, 0.795376296]);
        // Python: sum(c * 10 ** i for i, c in enumerate(coef_alpha1)).
        let [c, a] = lfm_fitted_weights(10);
        assert!((c - 0.24775889655095).abs() < 1e-15 && (a - 0.75224110344905).abs() < 1e-15, "{c} {a}");
        for e in 0..=LFM_FITTED_LAST_EPOCH {
            let [c, a] = lfm_fitted_weights(e);
            // The fit overshoots 1 a little around epoch 183 (as the official code does).
            assert!((c + a - 1.0).abs() < 1e-12 && (0.2..1.011).contains(&c), "epoch {e}: {c} {a}");
        }
        assert!(lfm_fitted_weights(183)[1] < 0.0);
        assert_eq!(lfm_fitted_weights(250), lfm_fitted_weights(LFM_FITTED_LAST_EPOCH));
        assert!(lfm_fitted_weights(LFM_FITTED_LAST_EPOCH)[0] > 0.9);
    }

    #[test]
    fn alignment_is_the_mean_kl_divergence_from_the_mixture() {
        let rows = [[0.5, -1.0, 2.0], [1.5, 0.25, -0.5]];
        let others = [[-0.5, 1.0, 0.0], [0.0, 0.0, 3.0]];
        let thirds = [[2.0, 2.0, -2.0], [0.125, -0.75, 1.0]];
        let t = |r: &[[f64; 3]; 2]| Tensor::new(r, &Device::Cpu).unwrap();
        for m in [2usize, 3] {
            let all = [rows, others, thirds];
            let logits: Vec<Tensor> = all[..m].iter().map(t).collect();
            let got = scalar_f64(&lfm_alignment(&logits).unwrap()).unwrap();
            let mut want = 0.0;
            for b in 0..2 {
                let ps: Vec<Vec<f64>> = all[..m].iter().map(|r| softmax(&r[b])).collect();
                let mix: Vec<f64> = (0..3).map(|k| ps.iter().map(|p| p[k]).sum::<f64>() / m as f64).collect();
                for p in &ps {
                    // PyTorch's kl_div(p.log(), mix): Σ mix·(log mix − log p).
                    want += (0..3).map(|k| mix[k] * (mix[k].ln() - p[k].ln())).sum::<f64>();
                }
            }
            want /= 2.0 * m as f64;
            assert!((got - want).abs() < 1e-14, "M = {m}: {got} vs {want}");
            assert!(got > 0.0);
        }
        let same = [t(&rows), t(&rows)];
        assert!(scalar_f64(&lfm_alignment(&same).unwrap()).unwrap().abs() < 1e-15);
    }

    #[test]
    fn learned_update_descends_halves_every_period_and_clamps() {
        let cfg = LfmConfig::learned();
        // Descends: a positive hypergradient lowers α_align.
        let (lr, a) = lfm_learned_update(&cfg, 1, 0.5, 0.5, 0.2);
        assert_eq!((lr, a), (0.5, 0.4));
        // Halves before epochs 20, 40, … (0-based), never before epoch 0.
        assert_eq!(lfm_learned_update(&cfg, 0, 0.5, 0.5, 0.0).0, 0.5);
        assert_eq!(lfm_learned_update(&cfg, 19, 0.5, 0.5, 0.0).0, 0.5);
        assert_eq!(lfm_learned_update(&cfg, 20, 0.5, 0.5, 0.0).0, 0.25);
        assert_eq!(lfm_learned_update(&cfg, 40, 0.5, 0.5, 0.0).0, 0.25);
        let never = LfmConfig { alpha_lr_halve_every: 0, ..cfg.clone() };
        assert_eq!(lfm_learned_update(&never, 20, 0.5, 0.5, 0.0).0, 0.5);
        // Clamped to [0.05, 0.95].
        assert_eq!(lfm_learned_update(&cfg, 1, 1.0, 0.5, -10.0).1, 0.95);
        assert_eq!(lfm_learned_update(&cfg, 1, 1.0, 0.5, 10.0).1, 0.05);
    }

    #[test]
    fn rows_are_evenly_spaced_and_capped() {
        assert_eq!(lfm_rows(12, 3), vec![0, 4, 8]);
        assert_eq!(lfm_rows(4, 3), vec![0, 1, 2]);
        assert_eq!(lfm_rows(2, 8), vec![0, 1]);
        assert!(lfm_rows(0, 8).is_empty());
    }

    /// Runs `objective` and backward on `b` at epoch `epoch`; returns (loss, fc-weight gradient).
    fn objective_at(lfm: &mut Lfm, model: &FusionModel, b: &MultimodalBatch, epoch: usize) -> (f64, Option<Tensor>) {
        let m = model.modalities().len();
        let full = model.forward(&b.inputs, &ForwardOpts::train(m, 0)).unwrap();
        let fwd = crate::StepForward { full, masked: Vec::new() };
        let cx = StepCx { model, batch: b, forward: &fwd, step: 1, epoch };
        let o = lfm.objective(&cx).unwrap();
        let grads = lfm.backward(&cx, &o).unwrap();
        let fc = model.param_groups().find("net.head.fc.weight").unwrap().var.clone();
        (scalar_f64(&o.loss).unwrap(), grads.get(fc.as_tensor()).cloned())
    }

    #[test]
    fn objective_is_twice_the_weighted_sum_and_trains_the_fusion_only_with_fused_weight() {
        for m in [2, 3] {
            let net = model(m);
            let b = batch(m, 6, 3);
            for fused_weight in [0.0, 1.0] {
                let cfg = LfmConfig { fused_weight, ..LfmConfig::official() };
                let mut lfm = attached(cfg, &net);
                let (loss, fc_grad) = objective_at(&mut lfm, &net, &b, 3);
                let s = lfm.lfm_state().clone();
                let [c, a] = lfm_fitted_weights(2);
                assert_eq!(s.alpha, vec![c, a]);
                let cls = s.loss_cls.unwrap() + fused_weight * s.loss_fused.unwrap();
                let want = 2.0 * (c * cls + a * s.loss_align.unwrap());
                assert!((loss - want).abs() < 1e-14, "M = {m}, λ = {fused_weight}: {loss} vs {want}");
                // CE(ō) by hand from the heads.
                let out = net.forward(&b.inputs, &ForwardOpts::eval(m)).unwrap();
                let uni = lfm.heads().unwrap().forward_all(&out.encoder_features).unwrap();
                let uni: Vec<Vec<f64>> = uni.iter().map(values).collect();
                let labels = b.labels.to_vec1::<u32>().unwrap();
                let mut ce = 0.0;
                for (i, &y) in labels.iter().enumerate() {
                    let mean: Vec<f64> =
                        (0..CLASSES).map(|k| uni.iter().map(|u| u[i * CLASSES + k]).sum::<f64>() / m as f64).collect();
                    ce -= softmax(&mean)[y as usize].ln();
                }
                ce /= labels.len() as f64;
                assert!((s.loss_cls.unwrap() - ce).abs() < 1e-14);
                assert_eq!(fc_grad.is_some(), fused_weight > 0.0, "M = {m}, λ = {fused_weight}");
                assert_eq!(lfm.coefficients().unwrap().len(), m + 1);
            }
        }
    }

    /// `mean over the first tensor of H·v` as a mixed second difference of the loss alone.
    #[test]
    fn hypergradient_matches_a_second_difference_of_the_loss_and_restores_the_variables() {
        let net = model(2);
        let b = batch(2, 5, 11);
        let mut lfm = attached(LfmConfig { fused_weight: 0.5, ..LfmConfig::learned() }, &net);
        lfm.state.alpha = vec![0.3, 0.7];
        let mut vars: Vec<Var> = net.param_groups().trainable().into_iter().map(|v| v.var).collect();
        vars.extend(lfm.heads().unwrap().vars().cloned());
        let before: Vec<Vec<f64>> = vars.iter().map(|v| values(v.as_tensor())).collect();
        let g = lfm.hypergradient(&net, &b, LfmPassMode::Eval).unwrap();
        let after: Vec<Vec<f64>> = vars.iter().map(|v| values(v.as_tensor())).collect();
        assert_eq!(before, after, "the variables are set back bit for bit");

        // v = ∇L_cls, u = ones/n on the first tensor (the first 2-D variable of modality 0).
        let first = net.param_groups().per_modality[0].iter().find(|v| v.var.rank() == 2).unwrap().var.clone();
        let cls = lfm.losses_of(&net, &b, LfmPassMode::Eval).unwrap().cls(0.5).unwrap();
        let store = cls.backward().unwrap();
        let v: Vec<Tensor> = vars.iter().map(|x| store.get(x.as_tensor()).unwrap().clone()).collect();
        let n = first.elem_count() as f64;
        let total = |eps: f64, del: f64| -> f64 {
            for (x, (b0, d)) in vars.iter().zip(before.iter().zip(&v)) {
                let base = Tensor::from_vec(b0.clone(), x.shape(), &Device::Cpu).unwrap();
                let mut t = (base + d.affine(del, 0.0).unwrap()).unwrap();
                if x.as_tensor().id() == first.as_tensor().id() {
                    t = t.affine(1.0, eps / n).unwrap();
                }
                x.set(&t).unwrap();
            }
            let l = lfm.losses_of(&net, &b, LfmPassMode::Eval).unwrap();
            let t = (l.cls(0.5).unwrap().affine(0.3, 0.0).unwrap() + l.align.affine(0.7, 0.0).unwrap()).unwrap();
            scalar_f64(&t).unwrap()
        };
        let (e, d) = (1e-3, 1e-3);
        let mixed = (total(e, d) - total(e, -d) - total(-e, d) + total(-e, -d)) / (4.0 * e * d);
        for (x, b0) in vars.iter().zip(&before) {
            x.set(&Tensor::from_vec(b0.clone(), x.shape(), &Device::Cpu).unwrap()).unwrap();
        }
        assert!(g != 0.0 && (g - mixed).abs() <= 1e-5 * g.abs().max(1e-3), "{g} vs {mixed}");
    }

    #[test]
    fn learned_weights_come_from_the_first_batch_then_from_every_epoch_end() {
        let net = model(2);
        let train = Split(batch(2, 12, 5));
        let cfg = LfmConfig { alpha_init: 0.5, alpha_lr: 10.0, alpha_samples: 3, ..LfmConfig::learned() };
        let mut lfm = attached(cfg.clone(), &net);
        assert_eq!(lfm.lfm_state().alpha_epoch, 0);
        let first = train.batch(&[0, 1, 2, 3], &Device::Cpu).unwrap();
        let g0 = attached(cfg.clone(), &net)
            .hypergradient(&net, &select_rows(&first, &[0, 1, 2]).unwrap(), LfmPassMode::Train)
            .unwrap();
        objective_at(&mut lfm, &net, &first, 1);
        let s = lfm.lfm_state().clone();
        assert_eq!((s.alpha_epoch, s.alpha_grad), (1, Some(g0)));
        assert_eq!(s.alpha, vec![1.0 - (0.5 - 10.0 * g0), 0.5 - 10.0 * g0]);
        // A second step of the same epoch keeps the weights.
        objective_at(&mut lfm, &net, &first, 1);
        assert_eq!(lfm.lfm_state().alpha, s.alpha);

        let mut probe = attached(cfg.clone(), &net);
        probe.state = s.clone();
        let g1 = probe.hypergradient(&net, &train.batch(&[0, 4, 8], &Device::Cpu).unwrap(), LfmPassMode::Eval).unwrap();
        let cx = EpochCx {
            model: &net,
            device: &Device::Cpu,
            train: &train,
            holdout: None,
            epoch: 1,
            accuracy: 0.0,
            modality_accuracy: vec![0.0; 2],
            modality_loss: vec![0.0; 2],
            head_accuracy: Vec::new(),
            head_loss: Vec::new(),
        };
        lfm.on_epoch_end(&cx).unwrap();
        let s2 = lfm.lfm_state().clone();
        assert_eq!((s2.alpha_epoch, s2.alpha_grad), (2, Some(g1)));
        assert_eq!(s2.alpha[1], lfm_learned_update(&cfg, 1, 10.0, s.alpha[1], g1).1);
        // The held-out split is preferred when the run has one.
        let holdout = Split(batch(2, 6, 9));
        probe.state = s2;
        let g2 =
            probe.hypergradient(&net, &holdout.batch(&[0, 2, 4], &Device::Cpu).unwrap(), LfmPassMode::Eval).unwrap();
        lfm.on_epoch_end(&EpochCx { holdout: Some(&holdout), epoch: 2, ..cx }).unwrap();
        assert_eq!((lfm.lfm_state().alpha_epoch, lfm.lfm_state().alpha_grad), (3, Some(g2)));
    }

    #[test]
    fn state_round_trips_and_settings_are_checked() {
        let net = model(3);
        let mut lfm = attached(LfmConfig::learned(), &net);
        lfm.state.alpha_grad = Some(f64::NAN);
        lfm.state.loss_cls = Some(0.25);
        let saved = lfm.state();
        let mut other = attached(LfmConfig::learned(), &net);
        other.load_state(&saved).unwrap();
        assert_eq!(other.state(), saved);
        assert!(other.lfm_state().alpha_grad.unwrap().is_nan());
        assert!(other.load_state(&serde_json::json!({"alpha": [1.0]})).is_err());

        assert!(Lfm::new(LfmConfig::official(), 1).is_err());
        for bad in [
            LfmConfig { fused_weight: -1.0, ..LfmConfig::official() },
            LfmConfig { alpha_init: 0.99, ..LfmConfig::official() },
            LfmConfig { alpha_min: 0.6, alpha_max: 0.4, ..LfmConfig::official() },
            LfmConfig { alpha_samples: 0, ..LfmConfig::official() },
            LfmConfig { alpha_lr: f64::NAN, ..LfmConfig::official() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let cfg: LfmConfig = toml::from_str("weighting = \"learned\"\nalpha_lr = 0.5").unwrap();
        assert_eq!(cfg, LfmConfig { alpha_lr: 0.5, ..LfmConfig::learned() });
        assert!(toml::from_str::<LfmConfig>("weighting = \"magic\"").unwrap_err().to_string().contains("fitted"));
        assert!(toml::from_str::<LfmConfig>("alpha = 1.0").is_err());
        for name in LfmConfig::PRESETS {
            LfmConfig::preset(name).unwrap().validate().unwrap();
        }
    }
}
