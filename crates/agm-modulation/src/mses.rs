//! MSES, modality-specific early stopping (the AGM reference's baseline), as an epoch-level schedule
//! that drives per-modality gradient multipliers (1 while a modality trains, 0 once it stopped)
//! and asks the trainer to keep and restore snapshots.
//!
//! Per modality `x`, at the end of epoch `e`, with `ℓ_e` its validation loss: its own head's on
//! models that sum one head per modality (the reference's `_Sum` models, which the recipes use),
//! its Shapley output's elsewhere ([`EpochCx::uni_modal_loss`]):
//!
//! - first epoch: `smoothed = ℓ_e`, `min = ℓ_e`, `argmin = e`;
//! - later: `smoothed = 0.6·ℓ_{e−1} + 0.4·ℓ_e` (the previous **raw** loss, as the reference);
//! - after every modality is smoothed, in modality order: if `min > smoothed` (strict) then
//!   `min = smoothed`, `argmin = e`, and the state after this epoch is kept
//!   ([`EpochAction::SaveSnapshot`] under [`snapshot_tag`]`(x)`);
//! - then, in modality order: if `e − argmin > patience` and the modality still trains, its
//!   multiplier becomes 0 and the state of epoch `argmin` is restored
//!   ([`EpochAction::RestoreSnapshot`]): model, optimizer and the other stacked methods' state
//!   (AGM's running scores: what the reference's checkpoint holds). MSES keeps its own
//!   bookkeeping across its restores, as the reference does (its checkpoint does not hold it);
//! - when every multiplier is 0, training stops ([`EpochAction::Stop`]) after this update.
//!
//! **When the best epoch is still the first one** the reference differs per dataset: UR-Funny
//! skips the reload, AV-MNIST and CREMA-D try to load a checkpoint that was never written and
//! crash (golden `mslr_mses` run 3). With [`FirstEpochPolicy::Skip`] we do what UR-Funny does;
//! with [`FirstEpochPolicy::Restore`] (the AV-MNIST and CREMA-D presets) we keep a snapshot of
//! every modality at the end of the first epoch and restore it, which is the best state by
//! MSES's own measure, and training continues.
//!
//! Snapshots are kept per modality (`mses-best-<x>`, overwritten at each improvement), so at most
//! `M` copies are held; the reference writes one file per improving epoch (the same name for
//! every modality). The gradient multiplier is applied to every parameter of the modality's
//! group; weight decay and momentum still move a stopped modality, as in the reference.

use crate::MethodError;
use candle_core::backprop::GradStore;
use candle_core::Result;
use serde::{Deserialize, Serialize};

use crate::mslr::scale_modality_grads;
use crate::{EpochAction, EpochCx, Modulator, StepCx};

/// Weight of the previous raw loss in the smoothed loss.
const PREVIOUS_WEIGHT: f64 = 0.6;
/// Weight of the current loss.
const CURRENT_WEIGHT: f64 = 0.4;

/// The snapshot tag under which the best state of modality `x` is kept.
pub fn snapshot_tag(x: usize) -> String {
    format!("mses-best-{x}")
}

/// What to do when a modality stops while its best epoch is still the first one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum FirstEpochPolicy {
    /// Keep a snapshot after the first epoch and restore it (the reference crashes here on
    /// AV-MNIST and CREMA-D).
    Restore,
    /// Do not reload (the reference's UR-Funny behaviour).
    Skip,
}

impl FirstEpochPolicy {
    /// The names a config file accepts for `mses.best_at_first_epoch`.
    pub const NAMES: &'static [&'static str] = &["restore", "skip"];

    /// The policy's name in a config file (`restore`, `skip`).
    pub fn as_str(self) -> &'static str {
        match self {
            FirstEpochPolicy::Restore => "restore",
            FirstEpochPolicy::Skip => "skip",
        }
    }
}

impl TryFrom<String> for FirstEpochPolicy {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.as_str() {
            "restore" => Ok(FirstEpochPolicy::Restore),
            "skip" => Ok(FirstEpochPolicy::Skip),
            _ => Err(format!(
                "mses.best_at_first_epoch = `{s}` is not known; allowed: {}",
                FirstEpochPolicy::NAMES.join(", ")
            )),
        }
    }
}

impl From<FirstEpochPolicy> for String {
    fn from(p: FirstEpochPolicy) -> String {
        p.as_str().to_string()
    }
}

/// MSES settings. Use a named preset; in a config file missing keys take the AV-Digits preset's
/// values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default = "MsesConfig::av_digits")]
pub struct MsesConfig {
    /// Epochs without improvement of the smoothed loss before a modality stops.
    pub patience: usize,
    /// `restore` or `skip`: see [`FirstEpochPolicy`].
    pub best_at_first_epoch: FirstEpochPolicy,
    /// First epoch (1-based, inclusive) whose gradients are scaled (a stopped modality's by 0).
    pub window_start: usize,
    /// Last such epoch (inclusive); `None`: until the end. Outside the window every modality
    /// trains, stopped or not (the reference's `train()` skips MSES there; its default window
    /// is 0..=20, the presets' is the whole run); the end-of-epoch updates, reloads and the
    /// final stop run in every epoch.
    #[serde(with = "agm_core::serde_none")]
    pub window_end: Option<usize>,
}

impl MsesConfig {
    /// AV-MNIST: patience 10; restores the first epoch where the reference crashes.
    pub fn avmnist() -> Self {
        Self { patience: 10, best_at_first_epoch: FirstEpochPolicy::Restore, window_start: 0, window_end: None }
    }

    /// CREMA-D: patience 80; restores the first epoch where the reference crashes.
    pub fn cremad() -> Self {
        Self { patience: 80, ..Self::avmnist() }
    }

    /// UR-Funny: patience 30; no reload when the best epoch is the first (as the reference).
    pub fn urfunny() -> Self {
        Self { patience: 30, best_at_first_epoch: FirstEpochPolicy::Skip, ..Self::avmnist() }
    }

    /// The embedded AV-Digits default: AV-MNIST's values.
    pub fn av_digits() -> Self {
        Self::avmnist()
    }

    /// The preset names [`MsesConfig::preset`] accepts.
    pub const PRESETS: &'static [&'static str] = &["avmnist", "cremad", "urfunny", "av-digits"];

    /// The preset called `name` (one of [`MsesConfig::PRESETS`]); `None` for any other name.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "avmnist" => Some(Self::avmnist()),
            "cremad" => Some(Self::cremad()),
            "urfunny" => Some(Self::urfunny()),
            "av-digits" => Some(Self::av_digits()),
            _ => None,
        }
    }

    /// Checks every field (every patience, 0 included, is meaningful).
    pub fn validate(&self) -> std::result::Result<(), MethodError> {
        crate::shared::check_window("mses", self.window_start, self.window_end)
    }

    /// Whether epoch `epoch`'s gradients are scaled.
    pub fn in_window(&self, epoch: usize) -> bool {
        crate::shared::in_window(self.window_start, self.window_end, epoch)
    }
}

/// What one end-of-epoch update did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MsesEpoch {
    /// Modalities whose smoothed loss reached a new minimum (their state was kept).
    pub improved: Vec<bool>,
    /// `(modality, best epoch)` of every modality that stopped in this update, in order, with
    /// whether its best state was restored.
    pub stopped: Vec<(usize, usize, bool)>,
    /// Every modality has stopped: training ends.
    pub all_stopped: bool,
    /// What the trainer must do, in order.
    pub actions: Vec<EpochAction>,
}

/// The MSES bookkeeping, without a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MsesSchedule {
    patience: usize,
    policy: FirstEpochPolicy,
    first_epoch: Option<usize>,
    #[serde(with = "agm_core::serde_f64::seq")]
    prev_loss: Vec<f64>,
    #[serde(with = "agm_core::serde_f64::seq")]
    smoothed: Vec<f64>,
    #[serde(with = "agm_core::serde_f64::seq")]
    min: Vec<f64>,
    argmin: Vec<usize>,
    #[serde(with = "agm_core::serde_f64::seq")]
    ratio: Vec<f64>,
}

impl MsesSchedule {
    /// The schedule of `m` modalities (at least 1) before any epoch: every modality trains. The
    /// error names an invalid setting.
    pub fn new(cfg: &MsesConfig, m: usize) -> std::result::Result<Self, MethodError> {
        cfg.validate()?;
        if m == 0 {
            return Err("mses needs at least 1 modality".into());
        }
        Ok(Self {
            patience: cfg.patience,
            policy: cfg.best_at_first_epoch,
            first_epoch: None,
            prev_loss: vec![0.0; m],
            smoothed: vec![0.0; m],
            min: vec![0.0; m],
            argmin: vec![0; m],
            ratio: vec![1.0; m],
        })
    }

    /// The end-of-epoch update of epoch `epoch` (1-based) with each modality's evaluation loss.
    pub fn end_epoch(&mut self, epoch: usize, loss: &[f64]) -> std::result::Result<MsesEpoch, MethodError> {
        let m = self.ratio.len();
        if loss.len() != m {
            return Err(format!("mses: {} losses for {m} modalities", loss.len()).into());
        }
        let mut out = MsesEpoch { improved: vec![false; m], ..MsesEpoch::default() };
        let Some(first) = self.first_epoch else {
            self.first_epoch = Some(epoch);
            self.smoothed = loss.to_vec();
            self.min = loss.to_vec();
            self.argmin = vec![epoch; m];
            self.prev_loss = loss.to_vec();
            if self.policy == FirstEpochPolicy::Restore {
                out.actions.extend((0..m).map(|x| EpochAction::SaveSnapshot(snapshot_tag(x))));
            }
            return Ok(out);
        };
        for ((s, &prev), &now) in self.smoothed.iter_mut().zip(&self.prev_loss).zip(loss) {
            *s = PREVIOUS_WEIGHT * prev + CURRENT_WEIGHT * now;
        }
        self.prev_loss = loss.to_vec();
        for x in 0..m {
            if self.min[x] > self.smoothed[x] {
                self.min[x] = self.smoothed[x];
                self.argmin[x] = epoch;
                out.improved[x] = true;
                out.actions.push(EpochAction::SaveSnapshot(snapshot_tag(x)));
            }
        }
        for x in 0..m {
            if epoch.saturating_sub(self.argmin[x]) > self.patience && self.ratio[x] != 0.0 {
                self.ratio[x] = 0.0;
                let restore = !(self.argmin[x] == first && self.policy == FirstEpochPolicy::Skip);
                if restore {
                    out.actions.push(EpochAction::RestoreSnapshot(snapshot_tag(x)));
                }
                out.stopped.push((x, self.argmin[x], restore));
            }
        }
        if self.ratio.iter().all(|&r| r == 0.0) {
            out.all_stopped = true;
            out.actions.push(EpochAction::Stop);
        }
        Ok(out)
    }

    /// 1 while a modality trains, 0 once it stopped (also the gradient multipliers).
    pub fn ratios(&self) -> &[f64] {
        &self.ratio
    }

    /// Each modality's smoothed validation loss after the last update (the raw loss after the first
    /// epoch).
    pub fn smoothed_loss(&self) -> &[f64] {
        &self.smoothed
    }

    /// Each modality's lowest smoothed loss so far, at which its best snapshot was kept.
    pub fn min_smoothed_loss(&self) -> &[f64] {
        &self.min
    }

    /// The epoch of each modality's minimum (0 before the first update).
    pub fn argmin_epoch(&self) -> &[usize] {
        &self.argmin
    }
}

/// Modality-specific early stopping.
#[derive(Clone, Debug)]
pub struct Mses {
    schedule: MsesSchedule,
    last: Option<MsesEpoch>,
    cfg: MsesConfig,
    /// The epoch being trained (1-based).
    epoch: usize,
}

impl Mses {
    /// MSES over `m` modalities (at least 1). The error names an invalid setting.
    pub fn new(cfg: &MsesConfig, m: usize) -> std::result::Result<Self, MethodError> {
        Ok(Self { schedule: MsesSchedule::new(cfg, m)?, last: None, cfg: cfg.clone(), epoch: 1 })
    }

    /// The multipliers applied in the current epoch: the ratios inside the window, else 1.
    fn applied(&self) -> Vec<f64> {
        let r = self.schedule.ratios();
        if self.cfg.in_window(self.epoch) {
            r.to_vec()
        } else {
            vec![1.0; r.len()]
        }
    }

    /// The bookkeeping: ratios, smoothed and best losses, best epochs.
    pub fn schedule(&self) -> &MsesSchedule {
        &self.schedule
    }

    /// The last end-of-epoch update.
    pub fn last_epoch(&self) -> Option<&MsesEpoch> {
        self.last.as_ref()
    }
}

impl Modulator for Mses {
    fn name(&self) -> &'static str {
        "mses"
    }

    fn on_epoch_start(&mut self, epoch: usize, _steps: usize, _first_step: usize) -> Result<()> {
        self.epoch = epoch;
        Ok(())
    }

    fn after_backward(&mut self, cx: &StepCx<'_>, grads: &mut GradStore) -> Result<()> {
        self.epoch = cx.epoch;
        scale_modality_grads(cx.model, grads, &self.applied())
    }

    fn on_epoch_end(&mut self, cx: &EpochCx<'_>) -> Result<Vec<EpochAction>> {
        let update = self
            .schedule
            .end_epoch(cx.epoch, cx.uni_modal_loss())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut actions = update.actions.clone();
        let modalities = cx.model.modalities();
        for &(x, best, restored) in &update.stopped {
            let weights = if restored {
                format!("the model, the optimizer and the learning rate restored to epoch {best}, its best")
            } else {
                "nothing restored".to_string()
            };
            actions.push(EpochAction::Note(format!(
                "mses: {} stopped (its smoothed loss last improved at epoch {best}); {weights}",
                modalities.name(x)
            )));
        }
        self.last = Some(update);
        Ok(actions)
    }

    fn coefficients(&self) -> Option<Vec<f64>> {
        Some(self.applied())
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.schedule).expect("plain numbers serialize")
    }

    /// Loads a checkpoint's schedule (a resumed run).
    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let s: MsesSchedule = serde_json::from_value(state.clone())
            .map_err(|e| candle_core::Error::Msg(format!("mses state in checkpoint: {e}")))?;
        let m = self.schedule.ratio.len();
        if [s.ratio.len(), s.smoothed.len(), s.min.len(), s.argmin.len(), s.prev_loss.len()].iter().any(|&l| l != m) {
            candle_core::bail!("mses state in checkpoint is for {} modalities, the model has {m}", s.ratio.len());
        }
        self.schedule = s;
        Ok(())
    }

    /// A snapshot it asked for was restored: MSES keeps its current schedule (stopped modalities
    /// stay stopped), as the reference does.
    fn on_restored(&mut self, _tag: &str, _state: &serde_json::Value) -> Result<()> {
        Ok(())
    }
}

impl crate::Method for Mses {
    const NAME: &'static str = "mses";
    const HOOKS: crate::Hooks = crate::Hooks::EDITS;
    type Config = MsesConfig;

    fn preset(dataset: &str) -> MsesConfig {
        match dataset {
            "avmnist" => MsesConfig::avmnist(),
            "cremad" => MsesConfig::cremad(),
            "urfunny" => MsesConfig::urfunny(),
            _ => MsesConfig::av_digits(),
        }
    }

    fn validate(config: &MsesConfig) -> std::result::Result<(), MethodError> {
        config.validate()
    }

    fn build(config: &MsesConfig, cx: &crate::BuildCx<'_>) -> std::result::Result<Self, MethodError> {
        Mses::new(config, cx.modalities())
    }
}
