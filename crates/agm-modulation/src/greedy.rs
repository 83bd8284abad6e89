//! Greedy, balanced multi-modal learning (Wu, Jastrzębski, Cho, Geras, "Characterizing and
//! Overcoming the Greedy Nature of Learning in Multi-modal Deep Neural Networks", ICML 2022), as a
//! [`Modulator`], following the official code (github.com/nyukat/greedy_multimodal_learning,
//! commit `a190e03`: `src/callbacks.py:Bias_Mitigation_Strong`, the "guided" algorithm of
//! `configs/training_guided.gin`, in the loop of `src/framework.py:Model_.train_loop`).
//!
//! # The official algorithm
//!
//! The official network has one branch per modality (a ResNet18 and its own classifier,
//! prediction `ŷ_i`) and MMTM modules that gate each branch's features by a function of both
//! branches (the cross-modal, "bypass", parameters: a shared squeeze layer and one excitation
//! layer per branch). The loss is `Σ_i CE(ŷ_i)`.
//!
//! - **Conditional learning speed** (`compute_BDR`, after every backward, before the SGD step):
//!   for each group of parameters `θ`, `μ(θ) = ‖∇θ‖² / ‖θ‖²` (sums over the group's tensors).
//!   Accumulated over the measured steps, `B_i = Σ_t μ(bypass_i)` and `M_i = Σ_t μ(main_i)`
//!   (`main_i`: branch `i`; `bypass_i`: its excitation layer plus the shared squeeze layer), and
//!   `BDR_i = log10(B_i / M_i)`: how fast branch `i` learns from the other modality relative to
//!   its own. `d = BDR_0 − BDR_1`.
//! - **Re-balancing** (`on_backward_end`): epochs before `starting_epoch` (1-based) only measure.
//!   From then on, a measured step with `|d| > epsilon` starts a window: the next
//!   `curation_windowsize` steps are re-balancing steps of modality `c = 0` if `d > 0`, `c = 1`
//!   if `d < 0` (the branch learning slowest from its own modality). Steps inside a window are
//!   not measured. A re-balancing step replaces branch `c`'s MMTM gate by its running mean (a
//!   constant), so `ŷ_c` depends on modality `c` alone; every parameter is still updated. (As
//!   written, the running mean used for branch 1 is that of branch 0's gate, and evaluation
//!   passes update both means; neither has an equivalent here.)
//!
//! # On agm's models (deviations the architecture forces)
//!
//! agm's models have no per-branch predictions and no cross-modal connections into a branch:
//! modality `i`'s encoder feeds one fusion (the late-fusion head), which makes the one fused
//! prediction `z`. The method is mapped by [`agm_core::ParamGroups`], never by name:
//!
//! - `main_i` is modality `i`'s group (its encoder; the official branch also holds its
//!   classifier). The bypass is the shared group (fusion and head), counted for **every**
//!   modality, as the official code counts MMTM's shared squeeze layer for both; agm has no
//!   modality-specific cross-modal parameters. So `B_i = B` for all `i`, and the decision
//!   depends only on the `M_i`: `d = log10(M_1 / M_0)`. Where the shared group is empty or all
//!   zero (late sum fusion), `B` is taken as 1 (it cancels; the official code divides by zero).
//!   A group whose weights are all zero adds 0 to its sum instead of dividing by zero.
//! - **The loss** of a regular step is `CE(z)`, as joint training (the official loss sums one
//!   cross-entropy per branch).
//! - **A re-balancing step of modality `c`** is `CE(z) + CE(z_c)`, where `z_c` is the model's
//!   prediction with only modality `c` present (the others absent: inputs replaced by zeros, as
//!   in agm's Shapley passes; the official code uses the running mean of the gate). Modality
//!   `c`'s group is updated with the gradient of `CE(z_c)` alone (it learns from its own
//!   prediction, the official `ŷ_c`); every other parameter, the head included, with the
//!   gradient of `CE(z)` (what the official other branch and the fusion keep learning from).
//!   The absent modalities' zero-input features and the head are constants for `CE(z_c)`, as the
//!   official detached running mean is. This takes one more forward pass (in evaluation mode:
//!   only the full pass updates BatchNorm statistics; the official pass is in training mode) and
//!   one more backward.
//! - Gradients are measured as they reach this method's `after_backward` (in a stack, after
//!   the edits of the methods before it).
//!
//! # M modalities
//!
//! The official code is written for two. Here, for any `M ≥ 2`:
//! `S_i = log10(B / M_i)` (`conditional_speed`), the gap `max_i S_i − min_i S_i` against
//! `epsilon`, and the re-balanced modality `argmax_i S_i` (the first on a tie). For `M = 2` this is
//! the official rule exactly (`|d| = gap`; `d > 0` re-balances modality 0). With one modality
//! the constructor returns a [`MethodError`]; so does the registry's build for a model in which
//! a modality has no trainable parameters (its speed would be undefined).
//!
//! The official random variant (`Bias_Mitigation_Random`) is not implemented.

use crate::MethodError;
use agm_core::{ForwardOpts, Subset};
use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::shared::require_two;
use crate::{Modulator, Objective, StepCx};

/// Greedy's settings (the official callback's arguments). Missing keys in a config file take
/// the official values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GreedyConfig {
    /// Threshold on the gap between the conditional learning speeds (official `epsilon`);
    /// `>= 0`.
    pub epsilon: f64,
    /// Re-balancing steps per window (official `curation_windowsize`); `>= 1`.
    pub window_size: usize,
    /// First 1-based epoch in which a window can start; before it speeds are only measured
    /// (official `starting_epoch`).
    pub starting_epoch: usize,
}

impl Default for GreedyConfig {
    fn default() -> Self {
        Self::official()
    }
}

impl GreedyConfig {
    /// The official run (`configs/training_guided.gin`, ModelNet40): epsilon 0.01, windows of 5
    /// steps, from epoch 2. Its trainer settings: SGD, lr 0.1, no momentum, no weight decay,
    /// batch 8, ReduceLROnPlateau on the loss.
    pub fn official() -> Self {
        Self { epsilon: 0.01, window_size: 5, starting_epoch: 2 }
    }

    /// The preset names [`GreedyConfig::preset`] accepts.
    pub const PRESETS: &'static [&'static str] = &["official"];

    /// The preset called `name` (one of [`GreedyConfig::PRESETS`]); `None` for any other name.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "official" => Some(Self::official()),
            _ => None,
        }
    }

    /// Checks every field; the error names the field and the allowed values.
    pub fn validate(&self) -> std::result::Result<(), MethodError> {
        if !(self.epsilon.is_finite() && self.epsilon >= 0.0) {
            return Err(format!("greedy.epsilon must be a finite number >= 0, got {}", self.epsilon).into());
        }
        if self.window_size == 0 {
            return Err("greedy.window_size must be >= 1, got 0 (a window would never end)".into());
        }
        Ok(())
    }
}

/// The state of the method: the accumulated speeds and where the re-balancing windows stand.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GreedyState {
    /// `M_i = Σ_t ‖∇θ_i‖² / ‖θ_i‖²` over modality `i`'s group (official `M_main_modal_i`).
    #[serde(with = "agm_core::serde_f64::seq")]
    pub main_speed: Vec<f64>,
    /// `B = Σ_t ‖∇θ_s‖² / ‖θ_s‖²` over the shared group (official `M_bypass_modal_i`, the same
    /// for every modality here).
    #[serde(with = "agm_core::serde_f64")]
    pub bypass_speed: f64,
    /// `S_i = log10(B / M_i)` at the last measurement (official `BDR_i`).
    #[serde(with = "agm_core::serde_f64::seq")]
    pub conditional_speed: Vec<f64>,
    /// `max_i S_i − min_i S_i` at the last measurement (official `|d_BDR|` for two modalities).
    #[serde(with = "agm_core::serde_f64")]
    pub speed_gap: f64,
    /// Steps measured so far.
    pub measurements: usize,
    /// The modality the coming steps re-balance (official `caring_modality` while
    /// `curation_mode`), `None` outside a window.
    pub rebalancing: Option<usize>,
    /// Re-balancing steps done in the current (or last) window (official `curation_step`).
    pub window_step: usize,
    /// The modality the last step re-balanced, `None` for a regular step.
    pub last_rebalanced: Option<usize>,
}

impl GreedyState {
    fn new(m: usize) -> Self {
        Self {
            main_speed: vec![0.0; m],
            bypass_speed: 0.0,
            conditional_speed: vec![0.0; m],
            speed_gap: 0.0,
            measurements: 0,
            rebalancing: None,
            window_step: 0,
            last_rebalanced: None,
        }
    }
}

/// `S_i = log10(B / M_i)` (`B` taken as 1 when it is 0), the gap `max − min` (NaN if any `S_i`
/// is NaN) and the first index of the largest `S_i`.
pub fn conditional_speeds(main: &[f64], bypass: f64) -> (Vec<f64>, f64, usize) {
    let b = if bypass > 0.0 { bypass } else { 1.0 };
    let s: Vec<f64> = main.iter().map(|&mi| (b / mi).log10()).collect();
    let mut hi = 0;
    for (i, &v) in s.iter().enumerate() {
        if v > s[hi] {
            hi = i;
        }
    }
    let gap = if s.iter().any(|v| v.is_nan()) {
        f64::NAN
    } else {
        let lo = s.iter().copied().fold(f64::INFINITY, f64::min);
        s[hi] - lo
    };
    (s, gap, hi)
}

/// `‖g‖² / ‖θ‖²` of one group (ratio of sums); 0 when the weights are all zero. A variable
/// without a gradient counts as a zero gradient.
fn group_ratio(vars: &[agm_core::NamedVar], grads: &GradStore) -> Result<f64> {
    let weights = vars.iter().map(|v| v.var.as_tensor().clone());
    let with_grad: Vec<Tensor> = vars.iter().filter_map(|v| grads.get(v.var.as_tensor()).cloned()).collect();
    // One call, so a GPU is waited for once.
    let sums = agm_kernels::sum_squares_each(&weights.chain(with_grad).collect::<Vec<_>>())?;
    let (w, g) = sums.split_at(vars.len());
    let (wn, gn): (f64, f64) = (w.iter().sum(), g.iter().sum());
    Ok(if wn > 0.0 { gn / wn } else { 0.0 })
}

/// Balanced multi-modal learning (see the module docs).
#[derive(Debug)]
pub struct Greedy {
    cfg: GreedyConfig,
    m: usize,
    state: GreedyState,
    /// `CE(z_c)` and `c` between the objective and the backward of a re-balancing step.
    pending: Option<(Tensor, usize)>,
}

impl Greedy {
    /// Greedy over `m` modalities (at least 2).
    pub fn new(cfg: GreedyConfig, m: usize) -> std::result::Result<Self, MethodError> {
        cfg.validate()?;
        require_two("greedy", m)?;
        Ok(Self { cfg, m, state: GreedyState::new(m), pending: None })
    }

    /// The settings it was built with.
    pub fn config(&self) -> &GreedyConfig {
        &self.cfg
    }

    /// The accumulated speeds and the window bookkeeping, as checkpoints save them.
    pub fn greedy_state(&self) -> &GreedyState {
        &self.state
    }

    /// The official `on_backward_end`: `measure` gives this step's `(main ratios, bypass ratio)`
    /// and is called only on steps that measure.
    fn advance(&mut self, epoch: usize, measure: impl FnOnce() -> Result<(Vec<f64>, f64)>) -> Result<()> {
        let unlocked = epoch >= self.cfg.starting_epoch;
        let st = &mut self.state;
        if unlocked && st.rebalancing.is_some() {
            st.window_step += 1;
            if st.window_step == self.cfg.window_size {
                st.rebalancing = None;
            }
            return Ok(());
        }
        let (main, bypass) = measure()?;
        if main.len() != self.m {
            candle_core::bail!("greedy: {} modality groups measured, expected {}", main.len(), self.m);
        }
        for (acc, r) in st.main_speed.iter_mut().zip(&main) {
            *acc += r;
        }
        st.bypass_speed += bypass;
        st.measurements += 1;
        let (speeds, gap, slowest) = conditional_speeds(&st.main_speed, st.bypass_speed);
        st.conditional_speed = speeds;
        st.speed_gap = gap;
        if unlocked && gap > self.cfg.epsilon {
            st.rebalancing = Some(slowest);
            st.window_step = 0;
        } else {
            st.rebalancing = None;
        }
        Ok(())
    }
}

impl Modulator for Greedy {
    fn name(&self) -> &'static str {
        "greedy"
    }

    fn objective(&mut self, cx: &StepCx<'_>) -> Result<Objective> {
        let output = cx.forward.full.logits.clone();
        let labels = &cx.batch.labels;
        let mut loss = candle_nn::loss::cross_entropy(&output, labels)?;
        self.pending = None;
        self.state.last_rebalanced = self.state.rebalancing;
        if let Some(c) = self.state.rebalancing {
            if c >= self.m {
                candle_core::bail!("greedy: re-balancing modality {c} of {}", self.m);
            }
            let alone =
                cx.model.forward(&cx.batch.inputs, &ForwardOpts::eval(self.m).with_present(Subset::single(c)))?;
            let ce = candle_nn::loss::cross_entropy(&alone.logits, labels)?;
            loss = (loss + &ce)?;
            self.pending = Some((ce, c));
        }
        Ok(Objective { loss, output, mono: None })
    }

    /// A regular step: one backward. A re-balancing step of `c`: the gradient of the whole
    /// objective but `CE(z_c)` for every variable, then modality `c`'s group replaced by the
    /// gradient of `CE(z_c)` alone.
    fn backward(&mut self, cx: &StepCx<'_>, objective: &Objective) -> Result<GradStore> {
        let Some((ce, c)) = self.pending.take() else {
            return agm_kernels::backward(&objective.loss);
        };
        let mut grads = agm_kernels::backward(&(&objective.loss - &ce)?)?;
        let alone = agm_kernels::backward(&ce)?;
        let groups = cx.model.param_groups();
        let group = groups.per_modality.get(c).ok_or_else(|| {
            candle_core::Error::Msg(format!("greedy: the model has no parameter group for modality {c}"))
        })?;
        for v in group {
            let t = v.var.as_tensor();
            match alone.get(t) {
                Some(g) => {
                    grads.insert(t, g.clone());
                }
                None => {
                    grads.remove(t);
                }
            }
        }
        Ok(grads)
    }

    /// Measures the speeds (outside windows) and opens or advances a window.
    fn after_backward(&mut self, cx: &StepCx<'_>, grads: &mut GradStore) -> Result<()> {
        let groups = cx.model.param_groups();
        self.advance(cx.epoch, || {
            let main = groups.per_modality.iter().map(|g| group_ratio(g, grads)).collect::<Result<Vec<_>>>()?;
            Ok((main, group_ratio(&groups.shared, grads)?))
        })
    }

    /// 1 for the modality the last step re-balanced, 0 elsewhere (all 0 after a regular step).
    fn coefficients(&self) -> Option<Vec<f64>> {
        Some((0..self.m).map(|i| if self.state.last_rebalanced == Some(i) { 1.0 } else { 0.0 }).collect())
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).expect("plain numbers serialize")
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let s: GreedyState = serde_json::from_value(state.clone())
            .map_err(|e| candle_core::Error::Msg(format!("greedy state in checkpoint: {e}")))?;
        let m = self.m;
        let bad_index = |x: Option<usize>| x.is_some_and(|i| i >= m);
        if s.main_speed.len() != m
            || s.conditional_speed.len() != m
            || bad_index(s.rebalancing)
            || bad_index(s.last_rebalanced)
        {
            candle_core::bail!("greedy state in checkpoint is not for {m} modalities");
        }
        self.state = s;
        self.pending = None;
        Ok(())
    }
}

impl crate::Method for Greedy {
    const NAME: &'static str = "greedy";
    const HOOKS: crate::Hooks = crate::Hooks::OBJECTIVE_AND_BACKWARD;
    type Config = GreedyConfig;

    /// The official settings for every dataset (the official code has only its ModelNet40 run).
    fn preset(_dataset: &str) -> GreedyConfig {
        GreedyConfig::official()
    }

    fn validate(config: &GreedyConfig) -> std::result::Result<(), MethodError> {
        config.validate()
    }

    fn build(config: &GreedyConfig, cx: &crate::BuildCx<'_>) -> std::result::Result<Self, MethodError> {
        let greedy = Greedy::new(config.clone(), cx.modalities())?;
        let groups = cx.model.param_groups();
        if let Some(x) = groups.per_modality.iter().position(Vec::is_empty) {
            return Err(format!(
                "greedy measures each modality's learning speed on its encoder's parameters, and modality `{}` \
                 has no trainable parameters",
                cx.model.modalities().name(x)
            )
            .into());
        }
        Ok(greedy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approx(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * (1.0 + b.abs())
    }

    #[test]
    fn two_modalities_follow_the_official_sign_rule() {
        // d = BDR_0 − BDR_1 = log10(B/M_0) − log10(B/M_1) = log10(M_1/M_0).
        let (s, gap, slowest) = conditional_speeds(&[2.0, 5.0], 3.0);
        assert!(approx(s[0], (3.0f64 / 2.0).log10()) && approx(s[1], (3.0f64 / 5.0).log10()));
        let d = s[0] - s[1];
        assert!(approx(d, (5.0f64 / 2.0).log10()) && approx(gap, d.abs()));
        // d > 0: modality 0 learns slowest from its own branch and is re-balanced.
        assert_eq!(slowest, 0);
        let (s, gap, slowest) = conditional_speeds(&[5.0, 2.0], 3.0);
        assert!(s[0] - s[1] < 0.0 && approx(gap, (s[0] - s[1]).abs()));
        assert_eq!(slowest, 1);
    }

    #[test]
    fn the_shared_bypass_cancels_and_an_empty_one_counts_as_one() {
        let (a, ga, ia) = conditional_speeds(&[1.0, 4.0, 2.0], 7.0);
        let (b, gb, ib) = conditional_speeds(&[1.0, 4.0, 2.0], 0.0);
        assert!(approx(ga, gb) && ia == ib && ia == 0);
        assert!(approx(ga, 4.0f64.log10()));
        assert!(approx(b[1], -(4.0f64.log10())) && approx(a[1] - b[1], 7.0f64.log10()));
    }

    #[test]
    fn nan_speeds_start_no_window() {
        let (_, gap, _) = conditional_speeds(&[0.0, 0.0], 1.0);
        assert!(gap.is_nan());
        let mut g = Greedy::new(GreedyConfig { epsilon: 0.0, window_size: 1, starting_epoch: 1 }, 2).unwrap();
        g.advance(1, || Ok((vec![0.0, 0.0], 1.0))).unwrap();
        assert_eq!(g.state.rebalancing, None);
    }

    /// Drives the state machine with given per-step ratios; returns the modality each step
    /// re-balanced.
    fn drive(g: &mut Greedy, epochs: &[usize], ratios: &[(Vec<f64>, f64)]) -> Vec<Option<usize>> {
        let mut it = ratios.iter().cloned();
        epochs
            .iter()
            .map(|&e| {
                g.state.last_rebalanced = g.state.rebalancing;
                let r = g.state.last_rebalanced;
                g.advance(e, || Ok(it.next().expect("a measurement per measured step"))).unwrap();
                r
            })
            .collect()
    }

    #[test]
    fn windows_follow_the_official_timing() {
        let cfg = GreedyConfig { epsilon: 0.1, window_size: 2, starting_epoch: 2 };
        let mut g = Greedy::new(cfg, 2).unwrap();
        // Epoch 1 only measures, even with a large gap; from epoch 2 a measured step with a gap
        // above epsilon opens a window on the next 2 steps, which are not measured.
        let slow1 = (vec![1.0, 0.1], 1.0);
        let epochs = [1, 1, 2, 2, 2, 2, 2, 2];
        let measured = vec![slow1.clone(); 6];
        let got = drive(&mut g, &epochs, &measured);
        assert_eq!(got, vec![None, None, None, Some(1), Some(1), None, Some(1), Some(1)]);
        // Steps 1, 2, 3 and 6 measured; steps 4, 5, 7 and 8 were re-balancing steps.
        assert_eq!(g.state.measurements, 4);
        assert!(approx(g.state.main_speed[0], 4.0) && approx(g.state.main_speed[1], 0.4));
        assert!(approx(g.state.bypass_speed, 4.0));
        assert_eq!(g.state.window_step, 2);
    }

    #[test]
    fn a_gap_under_epsilon_keeps_regular_steps_and_the_slowest_switches() {
        let cfg = GreedyConfig { epsilon: 0.1, window_size: 1, starting_epoch: 1 };
        let mut g = Greedy::new(cfg, 3).unwrap();
        // Equal speeds: gap 0, no window.
        let got = drive(&mut g, &[1, 1], &[(vec![1.0, 1.0, 1.0], 1.0), (vec![1.0, 1.0, 1.0], 1.0)]);
        assert_eq!(got, vec![None, None]);
        assert_eq!(g.state.speed_gap, 0.0);
        // Modality 2 slow: it is re-balanced on the next step; then modality 0 becomes slowest.
        let got = drive(&mut g, &[1, 1, 1], &[(vec![1.0, 1.0, 0.0], 1.0), (vec![0.0, 3.0, 3.0], 1.0)]);
        assert_eq!(got, vec![None, Some(2), None]);
        assert_eq!(g.state.rebalancing, Some(0));
        assert!(approx(g.state.main_speed[0], 3.0) && approx(g.state.main_speed[2], 5.0));
    }

    #[test]
    fn config_is_checked_and_one_modality_is_refused() {
        assert!(GreedyConfig::official().validate().is_ok());
        let e = GreedyConfig { window_size: 0, ..GreedyConfig::official() }.validate().unwrap_err();
        assert!(e.to_string().contains("greedy.window_size"));
        let e = GreedyConfig { epsilon: -1.0, ..GreedyConfig::official() }.validate().unwrap_err();
        assert!(e.to_string().contains("greedy.epsilon"));
        let e = Greedy::new(GreedyConfig::official(), 1).unwrap_err();
        assert!(e.to_string().contains("at least 2"));
        let cfg: GreedyConfig = toml::from_str("epsilon = 0.5").unwrap();
        assert_eq!(cfg, GreedyConfig { epsilon: 0.5, ..GreedyConfig::official() });
        assert!(toml::from_str::<GreedyConfig>("alpha = 1.0").is_err());
    }

    /// A re-balancing step on every fusion, M = 2 and 3, with batch norm: modality `c`'s group
    /// gets exactly the gradient of `CE(z_c)` alone, every other variable that of `CE(z)` alone.
    #[test]
    fn a_rebalancing_step_routes_each_group_its_own_gradient_on_every_fusion() {
        use crate::{StepCx, StepForward};
        use agm_core::{MultimodalBatch, MultimodalModel};
        use agm_fusion::{EncoderLayer, EncoderSpec, FusionKind, FusionModel, LateConcatConfig};
        use candle_core::{DType, Device};

        let fusions = [
            FusionKind::LateConcat,
            FusionKind::LateSum,
            FusionKind::Early { first_hidden: 8, second_hidden: 6 },
            FusionKind::Film,
            FusionKind::Gated { dim: 5 },
            FusionKind::CrossModal { dim: 8, heads: 2 },
        ];
        let dev = Device::Cpu;
        for m in [2, 3] {
            for fusion in &fusions {
                let encoders = ["audio", "visual", "text"][..m]
                    .iter()
                    .map(|n| EncoderSpec {
                        modality: n.to_string(),
                        layers: vec![
                            EncoderLayer::Linear { in_dim: 4, out_dim: 5 },
                            EncoderLayer::BatchNorm { channels: 5, eps: 1e-5 },
                            EncoderLayer::Relu,
                        ],
                    })
                    .collect();
                let cfg = LateConcatConfig { encoders, num_classes: 3, prefix: "net".into() };
                let net = FusionModel::sequential(&cfg, fusion, 3, DType::F64, &dev).unwrap();
                let inputs = (0..m)
                    .map(|x| {
                        let v: Vec<f64> = (0..24).map(|i| ((i * 7 + x * 5) % 11) as f64 / 4.0 - 1.25).collect();
                        Tensor::from_vec(v, (6, 4), &dev).unwrap()
                    })
                    .collect();
                let batch = MultimodalBatch::new(inputs, Tensor::new(&[0u32, 1, 2, 0, 1, 2], &dev).unwrap()).unwrap();
                let c = m - 1;
                let mut g = Greedy::new(GreedyConfig::official(), m).unwrap();
                g.state.rebalancing = Some(c);
                let full = net.forward(&batch.inputs, &ForwardOpts::train(m, 0)).unwrap();
                let forward = StepForward { full, masked: Vec::new() };
                let cx = StepCx { model: &net, batch: &batch, forward: &forward, step: 1, epoch: 5 };
                let objective = g.objective(&cx).unwrap();
                let grads = g.backward(&cx, &objective).unwrap();
                // References, each differentiated alone.
                let ce_full = candle_nn::loss::cross_entropy(&forward.full.logits, &batch.labels).unwrap();
                let alone =
                    net.forward(&batch.inputs, &ForwardOpts::eval(m).with_present(Subset::single(c))).unwrap().logits;
                let ce_alone = candle_nn::loss::cross_entropy(&alone, &batch.labels).unwrap();
                let total = ce_full.to_scalar::<f64>().unwrap() + ce_alone.to_scalar::<f64>().unwrap();
                assert!((objective.loss.to_scalar::<f64>().unwrap() - total).abs() < 1e-12);
                let (want_full, want_alone) = (ce_full.backward().unwrap(), ce_alone.backward().unwrap());
                let groups = net.param_groups();
                let what = format!("{fusion:?}, M = {m}");
                for v in groups.trainable() {
                    let t = v.var.as_tensor();
                    let want = if groups.modality_of(&v.name) == Some(c) { &want_alone } else { &want_full };
                    match (grads.get(t), want.get(t)) {
                        (Some(got), Some(want)) => {
                            let err =
                                (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
                            assert!(err < 1e-12, "{what}: {} differs by {err}", v.name);
                        }
                        (None, None) => {}
                        (got, want) => {
                            panic!("{what}: {} has a gradient {} / reference {}", v.name, got.is_some(), want.is_some())
                        }
                    }
                }
                // The step is reported as re-balancing modality c, and the window advances.
                assert_eq!(g.coefficients().unwrap()[c], 1.0);
                let mut grads = grads;
                g.after_backward(&cx, &mut grads).unwrap();
                assert_eq!(g.state.window_step, 1);
                assert_eq!(g.state.measurements, 0);
            }
        }
    }

    #[test]
    fn state_round_trips() {
        let mut g = Greedy::new(GreedyConfig { epsilon: 0.0, window_size: 3, starting_epoch: 1 }, 2).unwrap();
        drive(&mut g, &[1, 1], &[(vec![1.0, 0.5], 0.25)]);
        let saved = g.state();
        let mut h = Greedy::new(GreedyConfig::official(), 2).unwrap();
        h.load_state(&saved).unwrap();
        assert_eq!(h.state, g.state);
        let mut three = Greedy::new(GreedyConfig::official(), 3).unwrap();
        assert!(three.load_state(&saved).is_err());
    }
}
