//! MLA, multimodal learning with alternating unimodal adaptation (Zhang, Yoon, Bansal, Yao,
//! "Multimodal Representation Learning by Alternating Unimodal Adaptation", CVPR 2024), as a
//! [`Modulator`], following the official code
//! (<https://github.com/Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation>,
//! commit `ab6c184`: `main.py`, `train_epoch` and `valid` with `--gs_flag`; `utils/utils.py`,
//! `GSPlugin`).
//!
//! # Alternating uni-modal steps through a shared head
//!
//! One head `W` `[C, D]`, `b` `[C]` (method-owned: `mla.head.weight`, `mla.head.bias`, PyTorch's
//! `nn.Linear` initialisation) is shared by every modality, so every encoder must give features of
//! one size `D` (flattened). Step `t` (counted over the whole run) trains modality
//! `m = t mod M` alone: `L = CE(h_m Wᵀ + b, y)` with `h_m` the encoder feature of the full pass.
//! Only encoder `m` and the head get gradients; the model's own fusion head is never trained.
//! The official code runs the `M` uni-modal steps of a round on one batch (one forward, then
//! backward, gradient modification and `optimizer.step()` per modality in order); agm runs one
//! step per batch, so a round here spans `M` consecutive batches.
//!
//! # Gradient modification of the shared head (`GSPlugin.before_update`)
//!
//! A projector `P` `[D, D]` starts as the identity. At every step but the very first of the run
//! (the official `exp_count != 0`), with `r` the batch mean of `h_m` (`[1, D]`):
//!
//! - `α = 0.1^(1 + j/J)`, `j` the round's index in the epoch and `J` the rounds per epoch (the
//!   official `batch_index / len_dataloader`; here `j/J = M·⌊s/M⌋ / S` for step `s` (0-based) of
//!   an `S`-step epoch, which is the official fraction when every batch is seen `M` times);
//! - `k = P rᵀ`; `P ← P − (k kᵀ) ⊘ (α + k r)`: the official code divides **elementwise** by the
//!   outer product `α + k r` (`torch.mm(k, r)` is `[D, D]`), not by the scalar `α + r k` of the
//!   recursive least-squares projector it derives from;
//! - `P ← P / ‖P‖_F`;
//! - the head weight's gradient becomes `∇W · Pᵀ` (the bias is left alone).
//!
//! In the released code this never runs: `before_update` only edits a parameter named
//! `module.weight` and is handed the bare `nn.Linear`, whose weight is named `weight`.
//! `project_head = true` (the default, the paper) runs it; `project_head = false` is the released
//! code.
//!
//! # Zeroed gradients of PyTorch 1.8.1 (`torch18_zero_grad`)
//!
//! The official requirements pin PyTorch 1.8.1, whose `optimizer.zero_grad()` zeroes gradients
//! instead of deleting them; the MLA loop deletes them only at the end of each batch. So inside a
//! round, the encoders already trained take further SGD steps with a zero gradient (momentum and
//! weight decay) at the later modalities' steps. With `torch18_zero_grad = true` every variable
//! that had a gradient earlier in the round gets a zero gradient when it has none; with `false`
//! (the default, PyTorch ≥ 2 and the paper) only the current encoder and the head move.
//!
//! # Test-time fusion (`valid`)
//!
//! MLA predicts with the shared head on every modality and fuses the logits `o_m`:
//! `dynamic` (the paper's uncertainty-based fusion): per batch, `e_m = −Σ p log p` with
//! `p = softmax(o_m)` taken **over the batch axis** (the official `F.softmax(output, dim=0)`), and
//! weights `w_m = exp(max e − e_m) / Σ_k exp(max e − e_k)`; `fixed`: `Σ w_m o_m` with
//! `fusion_weights` (official: `0.55, 0.45` for two modalities, `0.35, 0.25, 0.4` for three;
//! uniform otherwise). The fusion does not change training. Evaluation, model selection and
//! `cargo xtask eval` score this prediction ([`Modulator::predict`]; the dynamic weights come
//! from the evaluation batch, 256 rows, where the official `valid` uses its loader's batch),
//! not the model's fusion head, which MLA never trains. With `epoch_eval` the method also
//! evaluates its own prediction (fused and per modality) on the training split at each epoch end
//! ([`fuse_logits`]), as `train_fused_accuracy` and `train_modality_accuracy` in its state.
//!
//! # Number of modalities
//!
//! Any `M ≥ 2` (the official code has `M = 2` and `M = 3`; the alternation, the projector and
//! the dynamic fusion are written for any `M`). The projector is `D × D` and lives in the
//! method's state (checkpoints hold it as JSON: 262 144 numbers for `D = 512`).
//!
//! Differences from the official loop: agm runs the full forward pass once per step (the official
//! code once per batch of `M` steps), so BatchNorm statistics of every encoder are updated at
//! every step.

use std::collections::BTreeSet;

use agm_core::{ForwardOpts, MultimodalModel, NamedVar};
use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::shared::{labels_u32, model_dtype_device, require_two};
use crate::{EpochAction, EpochCx, MethodError, Modulator, Objective, StepCx};

/// How MLA fuses the modalities' outputs at test time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MlaFusion {
    /// Entropy-gated weights per batch (the paper's test-time uncertainty-based fusion).
    Dynamic,
    /// Fixed weights (`fusion_weights`).
    Fixed,
}

/// MLA settings. Missing keys in a config file take [`MlaConfig::paper`]'s values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlaConfig {
    /// Project the shared head's weight gradient (the paper's gradient modification); `false`
    /// is the released code, where the projection never runs.
    pub project_head: bool,
    /// Emulate PyTorch 1.8.1's zeroed (not deleted) gradients inside a round (see the module docs).
    pub torch18_zero_grad: bool,
    /// Test-time fusion: `dynamic` or `fixed`.
    pub fusion: MlaFusion,
    /// Weights of the `fixed` fusion, one per modality, each ≥ 0; empty: the official ones.
    pub fusion_weights: Vec<f64>,
    /// Evaluate MLA's own prediction on the training split at each epoch end.
    pub epoch_eval: bool,
    /// Batch size of that evaluation (the dynamic fusion's weights are per batch); ≥ 1.
    pub eval_batch_size: usize,
}

impl Default for MlaConfig {
    fn default() -> Self {
        Self::paper()
    }
}

impl MlaConfig {
    /// The paper: projection on, PyTorch ≥ 2 gradients, dynamic fusion, evaluation batches of 64
    /// (the official batch size).
    pub fn paper() -> Self {
        Self {
            project_head: true,
            torch18_zero_grad: false,
            fusion: MlaFusion::Dynamic,
            fusion_weights: Vec::new(),
            epoch_eval: true,
            eval_batch_size: 64,
        }
    }

    /// The released code as its pinned environment runs it: no projection (its name test never
    /// matches) and PyTorch 1.8.1's zeroed gradients.
    pub fn released_code() -> Self {
        Self { project_head: false, torch18_zero_grad: true, ..Self::paper() }
    }

    /// The preset names [`MlaConfig::preset`] accepts.
    pub const PRESETS: &'static [&'static str] = &["paper", "released-code"];

    /// The preset called `name` (one of [`MlaConfig::PRESETS`]); `None` for any other name.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "paper" => Some(Self::paper()),
            "released-code" => Some(Self::released_code()),
            _ => None,
        }
    }

    /// Checks every field; the error names the field and the allowed values.
    pub fn validate(&self) -> std::result::Result<(), MethodError> {
        if let Some(w) = self.fusion_weights.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
            return Err(format!("mla.fusion_weights must be finite and >= 0, got {w}").into());
        }
        if !self.fusion_weights.is_empty() && self.fusion_weights.iter().sum::<f64>() <= 0.0 {
            return Err("mla.fusion_weights must not all be 0".into());
        }
        if self.eval_batch_size == 0 {
            return Err("mla.eval_batch_size must be >= 1, got 0".into());
        }
        Ok(())
    }

    /// The fixed fusion's weights for `m` modalities.
    pub fn fixed_weights(&self, m: usize) -> Vec<f64> {
        if !self.fusion_weights.is_empty() {
            return self.fusion_weights.clone();
        }
        match m {
            2 => vec![0.55, 0.45],
            3 => vec![0.35, 0.25, 0.4],
            _ => vec![1.0 / m as f64; m],
        }
    }
}

/// Fuses per-modality logits of one batch (`logits[m][i][c]`) as MLA's `valid` does: the fixed
/// weights, or the dynamic entropy gating (softmax over the batch axis). Returns the fused
/// logits `[B][C]` and the weights used.
pub fn fuse_logits(logits: &[Vec<Vec<f64>>], fusion: MlaFusion, fixed: &[f64]) -> (Vec<Vec<f64>>, Vec<f64>) {
    let m = logits.len();
    let weights = match fusion {
        MlaFusion::Fixed => fixed.to_vec(),
        MlaFusion::Dynamic => {
            let entropy: Vec<f64> = logits.iter().map(|o| batch_axis_entropy(o)).collect();
            let max = entropy.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let g: Vec<f64> = entropy.iter().map(|e| (max - e).exp()).collect();
            let sum: f64 = g.iter().sum();
            g.iter().map(|x| x / sum).collect()
        }
    };
    let rows = logits.first().map_or(0, Vec::len);
    let fused = (0..rows)
        .map(|i| {
            let c = logits[0][i].len();
            (0..c).map(|k| (0..m).map(|x| weights[x] * logits[x][i][k]).sum()).collect()
        })
        .collect();
    (fused, weights)
}

/// `−Σ p log p` over every entry, `p` the softmax of each column over the batch (`dim = 0`).
fn batch_axis_entropy(o: &[Vec<f64>]) -> f64 {
    let c = o.first().map_or(0, Vec::len);
    let mut h = 0.0;
    for k in 0..c {
        let max = o.iter().map(|r| r[k]).fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = o.iter().map(|r| (r[k] - max).exp()).sum();
        for r in o {
            let p = (r[k] - max).exp() / z;
            h -= p * p.ln();
        }
    }
    h
}

/// One update of the official projector (`GSPlugin.before_update`), in place: `k = P rᵀ`,
/// `P ← P − (k kᵀ) ⊘ (α + k r)` elementwise, `P ← P / ‖P‖_F`. `p` is `D × D` row-major.
pub fn projector_update(p: &mut [f64], r: &[f64], alpha: f64) {
    let d = r.len();
    let k: Vec<f64> = (0..d).map(|i| (0..d).map(|j| p[i * d + j] * r[j]).sum()).collect();
    for i in 0..d {
        for j in 0..d {
            p[i * d + j] -= k[i] * k[j] / (alpha + k[i] * r[j]);
        }
    }
    let norm = p.iter().map(|x| x * x).sum::<f64>().sqrt();
    p.iter_mut().for_each(|x| *x /= norm);
}

/// The projector's regulariser `α = 0.1^(1 + fraction)` for the fraction of the epoch done
/// before the current round.
pub fn projector_alpha(fraction: f64) -> f64 {
    0.1f64.powf(fraction + 1.0)
}

/// The checkpointed state (and what the golden cases compare).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct MlaState {
    /// Uni-modal steps done in the run (the official `exp_count`).
    turn: u64,
    /// Modality trained at the last step.
    modality: Option<usize>,
    /// `α` of the last projector update (`None`: no update at the last step).
    rls_alpha: Option<f64>,
    /// The projector, `D × D` row-major (empty without `project_head`).
    #[serde(with = "agm_core::serde_f64::seq")]
    projector: Vec<f64>,
    /// With `torch18_zero_grad`: the variables with a gradient so far in the current round.
    round_grads: BTreeSet<String>,
    /// MLA's fused accuracy on the training split at the last epoch end (`epoch_eval`).
    train_fused_accuracy: Option<f64>,
    /// Each modality's accuracy through the shared head there.
    train_modality_accuracy: Option<Vec<f64>>,
}

/// What `objective` leaves for `after_backward`.
#[derive(Debug)]
struct Pending {
    modality: usize,
    /// Batch mean of the trained feature, f64.
    mean: Vec<f64>,
    /// Fraction of the epoch done before this step's round (`None`: the trainer did not say).
    fraction: Option<f64>,
}

/// MLA (see the module docs).
#[derive(Debug)]
pub struct Mla {
    cfg: MlaConfig,
    m: usize,
    dim: usize,
    seed: u64,
    head: Option<(Var, Var)>,
    state: MlaState,
    /// Steps in the current epoch and the next step's index in it, from `on_epoch_start`.
    epoch_steps: Option<usize>,
    next_in_epoch: usize,
    pending: Option<Pending>,
}

impl Mla {
    /// MLA over `m ≥ 2` modalities whose encoders all give `dim` features.
    pub fn new(cfg: MlaConfig, m: usize, dim: usize) -> std::result::Result<Self, MethodError> {
        cfg.validate()?;
        require_two("mla", m)?;
        if dim == 0 {
            return Err("mla: the encoders' feature size is 0".into());
        }
        if !cfg.fusion_weights.is_empty() && cfg.fusion_weights.len() != m {
            return Err(format!(
                "mla.fusion_weights has {} weights for a model with {m} modalities",
                cfg.fusion_weights.len()
            )
            .into());
        }
        let projector = if cfg.project_head { identity(dim) } else { Vec::new() };
        let state = MlaState { projector, ..MlaState::default() };
        Ok(Self { cfg, m, dim, seed: 0, head: None, state, epoch_steps: None, next_in_epoch: 0, pending: None })
    }

    /// The run's seed: seeds the shared head's initial values.
    pub fn with_run_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The settings it was built with.
    pub fn config(&self) -> &MlaConfig {
        &self.cfg
    }

    /// The projector, `D × D` row-major (empty without `project_head`).
    pub fn projector(&self) -> &[f64] {
        &self.state.projector
    }

    /// The modality the next step trains.
    pub fn next_modality(&self) -> usize {
        (self.state.turn % self.m as u64) as usize
    }

    fn head(&self) -> Result<&(Var, Var)> {
        self.head.as_ref().ok_or_else(|| candle_core::Error::Msg("mla: the shared head is not attached".into()))
    }

    /// Shared-head logits of a flattened feature `[B, D]`.
    fn head_logits(&self, h: &Tensor) -> Result<Tensor> {
        let (w, b) = self.head()?;
        h.matmul(&w.as_tensor().t()?)?.broadcast_add(b.as_tensor())
    }

    fn feature(&self, f: &Tensor, x: usize) -> Result<Tensor> {
        let h = f.flatten_from(1)?;
        if h.dim(1)? != self.dim {
            candle_core::bail!(
                "mla: modality {x} gives {} features but the shared head takes {} (the feature sizes given to \
                 with_feature_dims do not match the model)",
                h.dim(1)?,
                self.dim
            );
        }
        Ok(h)
    }

    /// MLA's prediction on `cx.train`: fused and per-modality accuracy.
    fn evaluate(&self, cx: &EpochCx<'_>) -> Result<(f64, Vec<f64>)> {
        let n = cx.train.len();
        let fixed = self.cfg.fixed_weights(self.m);
        let (mut fused_ok, mut mono_ok, mut total) = (0usize, vec![0usize; self.m], 0usize);
        let indices: Vec<usize> = (0..n).collect();
        for chunk in indices.chunks(self.cfg.eval_batch_size) {
            let batch = cx.train.batch(chunk, cx.device)?;
            let out = cx.model.forward(&batch.inputs, &ForwardOpts::eval(self.m))?;
            let labels = labels_u32(&batch)?;
            let mut logits = Vec::with_capacity(self.m);
            for (x, f) in out.encoder_features.iter().enumerate() {
                let o = self.head_logits(&self.feature(&f.detach(), x)?)?;
                logits.push(o.to_dtype(DType::F64)?.to_vec2::<f64>()?);
            }
            if logits.iter().any(|o| o.len() != labels.len()) {
                candle_core::bail!("mla: per-segment labels are not supported");
            }
            let (fused, _) = fuse_logits(&logits, self.cfg.fusion, &fixed);
            for (i, &y) in labels.iter().enumerate() {
                fused_ok += usize::from(argmax(&fused[i]) == y as usize);
                for (x, o) in logits.iter().enumerate() {
                    mono_ok[x] += usize::from(argmax(&o[i]) == y as usize);
                }
            }
            total += labels.len();
        }
        let t = total.max(1) as f64;
        Ok((fused_ok as f64 / t, mono_ok.iter().map(|&c| c as f64 / t).collect()))
    }
}

fn identity(d: usize) -> Vec<f64> {
    (0..d * d).map(|i| if i / d == i % d { 1.0 } else { 0.0 }).collect()
}

/// Index of the first largest value (NumPy's `argmax`).
fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

impl Modulator for Mla {
    fn name(&self) -> &'static str {
        "mla"
    }

    /// The shared head `mla.head.{weight,bias}`, `[C, D]` and `[C]`, uniform in `±1/sqrt(D)` (as
    /// PyTorch's `nn.Linear`), each from a ChaCha8 stream seeded with `seed ^ FNV-1a(name)`.
    fn attach(&mut self, model: &dyn MultimodalModel) -> Result<Vec<NamedVar>> {
        if model.modalities().len() != self.m {
            candle_core::bail!("mla was built for {} modalities, the model has {}", self.m, model.modalities().len());
        }
        let (dtype, device) = model_dtype_device(model)?;
        let classes = model.num_classes();
        let bound = 1.0 / (self.dim as f64).sqrt();
        let init = |name: &str, shape: &[usize]| -> Result<Var> {
            let n: usize = shape.iter().product();
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ agm_core::stable_name_hash(name));
            let values: Vec<f64> = (0..n).map(|_| rng.random_range(-bound..=bound)).collect();
            Var::from_tensor(&Tensor::from_vec(values, shape, &device)?.to_dtype(dtype)?)
        };
        let w = init("mla.head.weight", &[classes, self.dim])?;
        let b = init("mla.head.bias", &[classes])?;
        let vars = vec![
            NamedVar { name: "mla.head.weight".into(), var: w.clone() },
            NamedVar { name: "mla.head.bias".into(), var: b.clone() },
        ];
        self.head = Some((w, b));
        Ok(vars)
    }

    fn on_epoch_start(&mut self, _epoch: usize, steps: usize, first_step: usize) -> Result<()> {
        self.epoch_steps = Some(steps);
        self.next_in_epoch = first_step;
        Ok(())
    }

    /// `CE(h_m Wᵀ + b, y)` for this step's modality `m`.
    fn objective(&mut self, cx: &StepCx<'_>) -> Result<Objective> {
        let x = self.next_modality();
        let feats = &cx.forward.full.encoder_features;
        if feats.len() != self.m {
            candle_core::bail!("mla: the model returned {} encoder features for {} modalities", feats.len(), self.m);
        }
        let h = self.feature(&feats[x], x)?;
        if h.dim(0)? != cx.batch.len() {
            candle_core::bail!("mla: per-segment labels are not supported");
        }
        let output = self.head_logits(&h)?;
        let loss = candle_nn::loss::cross_entropy(&output, &cx.batch.labels)?;
        let mean = h.detach().to_dtype(DType::F64)?.mean(0)?.to_vec1::<f64>()?;
        let m = self.m;
        let fraction = self.epoch_steps.map(|s| (self.next_in_epoch / m * m) as f64 / s.max(1) as f64);
        self.pending = Some(Pending { modality: x, mean, fraction });
        Ok(Objective { loss, output, mono: None })
    }

    /// The zeroed gradients of PyTorch 1.8.1 (optional), then the projection of the head weight's
    /// gradient.
    fn after_backward(&mut self, cx: &StepCx<'_>, grads: &mut GradStore) -> Result<()> {
        let p = self
            .pending
            .take()
            .ok_or_else(|| candle_core::Error::Msg("mla: after_backward without its objective".into()))?;
        if self.cfg.torch18_zero_grad {
            if p.modality == 0 {
                self.state.round_grads.clear();
            }
            let mut vars = cx.model.param_groups().trainable();
            let (w, b) = self.head()?;
            vars.push(NamedVar { name: "mla.head.weight".into(), var: w.clone() });
            vars.push(NamedVar { name: "mla.head.bias".into(), var: b.clone() });
            for v in &vars {
                let t = v.var.as_tensor();
                if grads.get(t).is_some() {
                    self.state.round_grads.insert(v.name.clone());
                } else if self.state.round_grads.contains(&v.name) {
                    grads.insert(t, t.zeros_like()?);
                }
            }
        }
        self.state.rls_alpha = None;
        if self.cfg.project_head && self.state.turn > 0 {
            let alpha = projector_alpha(p.fraction.unwrap_or(0.0));
            projector_update(&mut self.state.projector, &p.mean, alpha);
            let w = self.head()?.0.as_tensor().clone();
            if let Some(g) = grads.get(&w) {
                let d = self.dim;
                let pm = Tensor::from_slice(&self.state.projector, (d, d), g.device())?.to_dtype(g.dtype())?;
                let projected = g.matmul(&pm.t()?)?;
                grads.insert(&w, projected);
            }
            self.state.rls_alpha = Some(alpha);
        }
        self.state.modality = Some(p.modality);
        self.state.turn += 1;
        self.next_in_epoch += 1;
        Ok(())
    }

    fn on_epoch_end(&mut self, cx: &EpochCx<'_>) -> Result<Vec<EpochAction>> {
        if self.cfg.epoch_eval {
            let (fused, mono) = self.evaluate(cx)?;
            self.state.train_fused_accuracy = Some(fused);
            self.state.train_modality_accuracy = Some(mono);
        }
        Ok(Vec::new())
    }

    /// MLA's test-time fusion of the shared head's per-modality logits (`fusion`: the fixed
    /// weights, or the entropy gating over the evaluation batch), so evaluation and model
    /// selection score what MLA predicts, not the model's fusion head it never trains.
    fn predict(&self, _model: &dyn MultimodalModel, pass: &agm_core::ModelOutput) -> Result<Option<Tensor>> {
        let mut logits = Vec::with_capacity(self.m);
        for (x, f) in pass.encoder_features.iter().enumerate() {
            let o = self.head_logits(&self.feature(&f.detach(), x)?)?;
            logits.push(o.to_dtype(DType::F64)?.to_vec2::<f64>()?);
        }
        let (fused, _) = fuse_logits(&logits, self.cfg.fusion, &self.cfg.fixed_weights(self.m));
        let (rows, classes) = (fused.len(), fused.first().map_or(0, Vec::len));
        let flat: Vec<f64> = fused.into_iter().flatten().collect();
        Ok(Some(Tensor::from_vec(flat, (rows, classes), pass.logits.device())?.to_dtype(pass.logits.dtype())?))
    }

    /// One-hot: the modality trained at the last step (epoch means give each modality's share).
    fn coefficients(&self) -> Option<Vec<f64>> {
        let mut c = vec![0.0; self.m];
        if let Some(x) = self.state.modality {
            c[x] = 1.0;
        }
        Some(c)
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).expect("plain numbers serialize")
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let s: MlaState = serde_json::from_value(state.clone())
            .map_err(|e| candle_core::Error::Msg(format!("mla state in checkpoint: {e}")))?;
        let want = if self.cfg.project_head { self.dim * self.dim } else { 0 };
        if s.projector.len() != want {
            candle_core::bail!(
                "mla state in checkpoint holds a projector of {} values, this run needs {want}",
                s.projector.len()
            );
        }
        if s.modality.is_some_and(|x| x >= self.m)
            || s.train_modality_accuracy.as_ref().is_some_and(|a| a.len() != self.m)
        {
            candle_core::bail!("mla state in checkpoint is not for {} modalities", self.m);
        }
        self.state = s;
        self.pending = None;
        Ok(())
    }
}

impl crate::Method for Mla {
    const NAME: &'static str = "mla";
    const HOOKS: crate::Hooks = crate::Hooks::OBJECTIVE;
    type Config = MlaConfig;

    fn preset(_dataset: &str) -> MlaConfig {
        MlaConfig::paper()
    }

    fn validate(config: &MlaConfig) -> std::result::Result<(), MethodError> {
        config.validate()
    }

    fn build(config: &MlaConfig, cx: &crate::BuildCx<'_>) -> std::result::Result<Self, MethodError> {
        let dims = cx.feature_dims("mla")?;
        let dim = dims.first().copied().unwrap_or(0);
        if dims.iter().any(|&d| d != dim) {
            return Err(format!(
                "method = `mla` shares one head across the modalities and needs encoders with one feature size, \
                 this model's are {dims:?}"
            )
            .into());
        }
        Ok(Mla::new(config.clone(), cx.modalities(), dim)?.with_run_seed(cx.seed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projector_update_divides_elementwise_and_normalises() {
        // D = 2, P = I, r = (1, 2), α = 0.1: k = r.
        let mut p = identity(2);
        projector_update(&mut p, &[1.0, 2.0], 0.1);
        // Entry (i, j) is divided by α + k_i r_j: 1.1, 2.1, 2.1, 4.1.
        let raw = [1.0 - 1.0 / 1.1, -2.0 / 2.1, -2.0 / 2.1, 1.0 - 4.0 / 4.1];
        let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
        for (got, want) in p.iter().zip(raw.iter().map(|x| x / norm)) {
            assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        }
        assert!((p.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-12);
        // Not the scalar-denominator projector (α + r k = 5.1 for every entry).
        let scalar = [1.0 - 1.0 / 5.1, -2.0 / 5.1, -2.0 / 5.1, 1.0 - 4.0 / 5.1];
        let sn = scalar.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((p[0] - scalar[0] / sn).abs() > 1e-2);
        // With P ≠ I, k ≠ r and the update is not symmetric.
        let mut q = vec![1.0, 0.5, 0.0, 1.0];
        projector_update(&mut q, &[1.0, 2.0], 0.1);
        assert!((q[1] - q[2]).abs() > 1e-3);
    }

    #[test]
    fn alpha_decays_over_the_epoch() {
        assert!((projector_alpha(0.0) - 0.1).abs() < 1e-15);
        assert!((projector_alpha(0.5) - 0.1f64.powf(1.5)).abs() < 1e-15);
        assert!(projector_alpha(0.99) > 0.01);
    }

    #[test]
    fn dynamic_fusion_favours_the_confident_modality() {
        // Modality 0 is flat over the batch (maximal entropy), modality 1 peaked.
        let flat = vec![vec![0.0, 0.0], vec![0.0, 0.0]];
        let peaked = vec![vec![5.0, 0.0], vec![0.0, 5.0]];
        let (fused, w) = fuse_logits(&[flat.clone(), peaked.clone()], MlaFusion::Dynamic, &[]);
        let e0 = batch_axis_entropy(&flat);
        let e1 = batch_axis_entropy(&peaked);
        assert!((e0 - 2.0 * 2f64.ln()).abs() < 1e-12);
        let g1 = (e0 - e1).exp();
        assert!((w[0] - 1.0 / (1.0 + g1)).abs() < 1e-12);
        assert!((w[1] - g1 / (1.0 + g1)).abs() < 1e-12);
        assert!(w[1] > w[0]);
        assert!((fused[0][0] - w[1] * 5.0).abs() < 1e-12);
        // Fixed: the given weights.
        let (fused, w) = fuse_logits(&[flat, peaked], MlaFusion::Fixed, &[0.55, 0.45]);
        assert_eq!(w, vec![0.55, 0.45]);
        assert!((fused[1][1] - 0.45 * 5.0).abs() < 1e-12);
    }

    #[test]
    fn official_fixed_weights_and_checks() {
        let c = MlaConfig::paper();
        assert_eq!(c.fixed_weights(2), vec![0.55, 0.45]);
        assert_eq!(c.fixed_weights(3), vec![0.35, 0.25, 0.4]);
        assert_eq!(c.fixed_weights(4), vec![0.25; 4]);
        assert!(MlaConfig { eval_batch_size: 0, ..c.clone() }.validate().is_err());
        assert!(MlaConfig { fusion_weights: vec![-1.0, 2.0], ..c.clone() }.validate().is_err());
        assert!(Mla::new(MlaConfig { fusion_weights: vec![0.5, 0.5], ..c.clone() }, 3, 4).is_err());
        assert!(Mla::new(c.clone(), 1, 4).is_err());
        assert_eq!(MlaConfig::preset("released-code").unwrap(), MlaConfig::released_code());
        assert!(!MlaConfig::released_code().project_head);
    }

    #[test]
    fn turns_cycle_over_any_number_of_modalities() {
        let mut mla = Mla::new(MlaConfig::paper(), 3, 2).unwrap();
        let seen: Vec<usize> = (0..7)
            .map(|_| {
                let x = mla.next_modality();
                mla.state.turn += 1;
                x
            })
            .collect();
        assert_eq!(seen, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn state_round_trips_and_rejects_other_sizes() {
        let mut a = Mla::new(MlaConfig::paper(), 2, 2).unwrap();
        a.state.turn = 5;
        a.state.modality = Some(0);
        a.state.rls_alpha = Some(0.1f64.powf(1.5));
        projector_update(&mut a.state.projector, &[0.25, 0.5], 0.1);
        let s = a.state();
        let mut b = Mla::new(MlaConfig::paper(), 2, 2).unwrap();
        b.load_state(&s).unwrap();
        assert_eq!(b.state(), s);
        assert_eq!(b.next_modality(), 1);
        let mut c = Mla::new(MlaConfig::paper(), 2, 3).unwrap();
        assert!(c.load_state(&s).is_err());
    }
}
