//! The training loop as a library: epochs of steps, evaluation on the validation split, model
//! selection on validation only, checkpoints that resume mid-epoch exactly, and callbacks for
//! drivers that print.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use agm_core::by_name::{value_names, Keyed};
use agm_core::{BatchSource, MultimodalModel, NamedVar, ShapleyMode};
use agm_metric::EvalReport;
use agm_modulation::{EpochAction, EpochCx, Modulator, TrainStartCx};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, SnapshotState};
use crate::error::{Result, TrainError};
use crate::optim::{Optimizer, ParamGroup, ScheduleConfig};
use crate::step::{train_step, NoObserver, StepParts};
use crate::{evaluate, RunDir};

/// Loop settings.
#[derive(Clone, Debug)]
pub struct TrainerOptions {
    /// Epochs to train (a resume continues up to this many).
    pub epochs: usize,
    /// Samples per training step (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Evaluation's batch size, for data whose outputs do not depend on it
    /// ([`TrainerOptions::eval_batch_size_for`]).
    pub eval_batch_size: usize,
    /// Seeds the data order and dropout masks.
    pub seed: u64,
    /// The learning rate the schedule starts from (the optimizer's own `lr`).
    pub base_lr: f64,
    /// How the learning rate changes from epoch to epoch.
    pub schedule: ScheduleConfig,
    /// Write a checkpoint every this many steps (0: only at the end of each epoch).
    pub checkpoint_every_steps: usize,
    /// How the masked passes of Shapley-based methods run.
    pub shapley: ShapleyMode,
    /// Visit the training split in a new seeded order every epoch (`false`: in stored order).
    pub shuffle: bool,
    /// How the training loss reduces over the batch.
    pub loss_reduction: crate::LossReduction,
}

impl TrainerOptions {
    /// The batch size evaluation batches `split` at: the training batch size where batches are
    /// cut to their longest sample ([`BatchSource::pads_per_batch`]: the padding depends on the
    /// batch, and the reference evaluates such data at its training batch size), else
    /// `eval_batch_size`.
    pub fn eval_batch_size_for(&self, split: &dyn BatchSource) -> usize {
        if split.pads_per_batch() {
            self.batch_size
        } else {
            self.eval_batch_size
        }
    }
}

/// Whether a callback lets training go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Train on.
    Continue,
    /// End training after this step (a checkpoint is written first when the trainer has a run
    /// directory, so it resumes exactly).
    Stop,
}

/// Reported after every step.
#[derive(Clone, Debug)]
pub struct StepSummary {
    /// 1-based epoch.
    pub epoch: usize,
    /// 1-based step within the epoch, of `steps_in_epoch`.
    pub step_in_epoch: usize,
    /// Steps in this epoch.
    pub steps_in_epoch: usize,
    /// 1-based step since the run began (resumes included).
    pub global_step: usize,
    /// The step's training loss.
    pub loss: f64,
    /// The method's coefficients in force after this step, per modality (`None` for methods
    /// without any).
    pub coefficients: Option<Vec<f64>>,
}

/// One row of `metrics.jsonl`; in the file, per-modality values are keyed by modality name
/// (`"coefficients": {"audio": 0.9, "visual": 1.1}`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(into = "EpochRow", try_from = "EpochRow")]
pub struct EpochSummary {
    /// 1-based epoch.
    pub epoch: usize,
    /// The learning rate the epoch trained at.
    pub lr: f64,
    /// Mean training loss over the epoch's steps.
    pub train_loss: f64,
    /// The validation split's numbers at the epoch's end.
    pub validation: EvalReport,
    /// Mean over the epoch's steps of the coefficients in force (AGM's scales).
    pub coefficients: Option<Vec<f64>>,
    /// Coefficients in force after the epoch's last step.
    pub last_coefficients: Option<Vec<f64>>,
    /// For a stack of methods that each have coefficients (`agm+ogm-ge`), each method's mean over
    /// the epoch's steps, by name ([`Modulator::coefficients_by_method`]); empty otherwise.
    pub coefficients_by_method: BTreeMap<String, Vec<f64>>,
    /// For such a stack, each method's coefficients after the epoch's last step, by name; empty
    /// otherwise (and in rows written before this field existed).
    pub last_coefficients_by_method: BTreeMap<String, Vec<f64>>,
    /// Mean wall time of the epoch's training steps.
    pub mean_step_seconds: f64,
    /// Peak host memory so far ([`crate::memory::peak_memory_bytes`]).
    pub peak_memory_bytes: Option<u64>,
    /// The best epoch so far (1-based), this one included.
    pub best_epoch: usize,
    /// Competition strength per modality, when a probe is attached (0: the modality's concept
    /// is linearly recoverable from the fused feature; about 1: not at all).
    pub competition: Option<Vec<f64>>,
    /// The split the reference picks its best epoch on, when that is not validation and the run
    /// asked for it ([`Trainer::with_reference_split`]); never used for model selection.
    pub reference_split: Option<EvalReport>,
    /// What the method did at the epoch's end ([`EpochAction::Note`]: a modality stopped,
    /// encoders re-initialised), in order; usually none.
    pub events: Vec<String>,
}

/// [`EpochSummary`] as written to files: vectors keyed by the validation report's modality
/// names ([`agm_core::by_name::value_names`]).
#[derive(Serialize, Deserialize)]
struct EpochRow {
    epoch: usize,
    #[serde(with = "agm_core::serde_f64")]
    lr: f64,
    #[serde(with = "agm_core::serde_f64")]
    train_loss: f64,
    validation: EvalReport,
    coefficients: Option<Keyed>,
    last_coefficients: Option<Keyed>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    coefficients_by_method: BTreeMap<String, Keyed>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    last_coefficients_by_method: BTreeMap<String, Keyed>,
    #[serde(with = "agm_core::serde_f64")]
    mean_step_seconds: f64,
    peak_memory_bytes: Option<u64>,
    best_epoch: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    competition: Option<Keyed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reference_split: Option<EvalReport>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    events: Vec<String>,
}

impl From<EpochSummary> for EpochRow {
    fn from(e: EpochSummary) -> Self {
        let modalities = e.validation.modality_names();
        let keyed = |v: Option<Vec<f64>>| v.map(|v| Keyed::new(&value_names(&modalities, v.len()), &v));
        let by_method = |m: BTreeMap<String, Vec<f64>>| -> BTreeMap<String, Keyed> {
            m.into_iter().map(|(method, v)| (method, Keyed::new(&value_names(&modalities, v.len()), &v))).collect()
        };
        Self {
            epoch: e.epoch,
            lr: e.lr,
            train_loss: e.train_loss,
            coefficients: keyed(e.coefficients),
            last_coefficients: keyed(e.last_coefficients),
            coefficients_by_method: by_method(e.coefficients_by_method),
            last_coefficients_by_method: by_method(e.last_coefficients_by_method),
            competition: keyed(e.competition),
            validation: e.validation,
            mean_step_seconds: e.mean_step_seconds,
            peak_memory_bytes: e.peak_memory_bytes,
            best_epoch: e.best_epoch,
            reference_split: e.reference_split,
            events: e.events,
        }
    }
}

impl TryFrom<EpochRow> for EpochSummary {
    type Error = String;
    fn try_from(r: EpochRow) -> std::result::Result<Self, String> {
        let modalities = r.validation.modality_names();
        let values = |k: Option<Keyed>| k.map(|k| k.values(&modalities)).transpose();
        let by_method = |m: BTreeMap<String, Keyed>| -> std::result::Result<BTreeMap<String, Vec<f64>>, String> {
            m.into_iter().map(|(method, k)| Ok((method, k.values(&modalities)?))).collect()
        };
        Ok(Self {
            epoch: r.epoch,
            lr: r.lr,
            train_loss: r.train_loss,
            coefficients: values(r.coefficients)?,
            last_coefficients: values(r.last_coefficients)?,
            coefficients_by_method: by_method(r.coefficients_by_method)?,
            last_coefficients_by_method: by_method(r.last_coefficients_by_method)?,
            competition: values(r.competition)?,
            validation: r.validation,
            mean_step_seconds: r.mean_step_seconds,
            peak_memory_bytes: r.peak_memory_bytes,
            best_epoch: r.best_epoch,
            reference_split: r.reference_split,
            events: r.events,
        })
    }
}

/// Computes the competition strength of each modality from the current model at the end of an
/// epoch (agm-metric implements it with mono-modal concepts).
pub trait CompetitionProbe {
    /// One value per modality, in the model's order: 0 when the modality's concept is linearly
    /// recoverable from the fused feature, about 1 when it is not. An error ends the run with
    /// [`TrainError::Competition`].
    fn strength(&mut self, model: &dyn MultimodalModel, device: &Device) -> candle_core::Result<Vec<f64>>;
}

/// Drivers observe training through this; libraries never print.
pub trait Callback {
    /// A whole run ([`crate::run::train_run`]) is about to train.
    fn on_start(&mut self, _run: &crate::run::RunStarted) {}
    /// After every training step; `Flow::Stop` ends training after it.
    fn on_step(&mut self, _s: &StepSummary) -> Flow {
        Flow::Continue
    }
    /// After an epoch's validation (its row is in `metrics.jsonl` by then, with a run
    /// directory); `Flow::Stop` ends training there.
    fn on_epoch_end(&mut self, _e: &EpochSummary) -> Flow {
        Flow::Continue
    }
    /// After each batch of the epoch's validation pass: samples done and in all.
    fn on_validation(&mut self, _done: usize, _total: usize) {}
    /// A step of the uni-modal training of `modality`'s missing mono-modal concept, which a whole
    /// run ([`crate::run::train_run`]) does before it starts; the other hooks do not see it.
    /// `Flow::Stop` abandons the concept and the run, which then fails with
    /// [`crate::TrainError::Interrupted`] having written nothing of either.
    fn on_concept_step(&mut self, _modality: &str, _s: &StepSummary) -> Flow {
        Flow::Continue
    }
    /// A whole run ([`crate::run::train_run`]) wrote its files (checkpoint and metrics, and
    /// `summary.json` when it finished) and still holds its directory's lock: what a driver
    /// derives from them here (a report) no other process can interleave with.
    fn on_run_written(&mut self, _dir: &crate::RunDir) {}
}

/// Ignores everything.
pub struct NoCallback;
impl Callback for NoCallback {}

/// How a `fit` call ended.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunSummary {
    /// Epochs trained in all (resumes included).
    pub epochs_done: usize,
    /// Steps trained in all.
    pub global_step: usize,
    /// The 1-based epoch of the best validation accuracy (the first on ties); its weights are
    /// the run directory's `best.safetensors`.
    pub best_epoch: usize,
    /// The validation accuracy of `best_epoch`.
    #[serde(with = "agm_core::serde_f64")]
    pub best_accuracy: f64,
    /// The last epoch's row.
    pub last: Option<EpochSummary>,
    /// True when a callback or the method stopped training before the last epoch.
    pub stopped_early: bool,
    /// True when the method stopped training ([`agm_modulation::EpochAction::Stop`], as MSES
    /// does): the run is over, where a callback's stop (Ctrl-C) leaves it to be resumed.
    #[serde(default)]
    pub stopped_by_method: bool,
}

/// Loop position and running sums, saved in every checkpoint. Every float round-trips exactly
/// (infinities and NaN included), so a resumed run selects the same epochs as an uninterrupted one.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
struct LoopState {
    epochs_done: usize,
    next_batch: usize,
    global_step: usize,
    #[serde(with = "agm_core::serde_f64")]
    best_accuracy: f64,
    best_epoch: usize,
    #[serde(with = "agm_core::serde_f64")]
    epoch_loss_sum: f64,
    epoch_steps: usize,
    #[serde(with = "agm_core::serde_f64")]
    epoch_seconds: f64,
    #[serde(with = "agm_core::serde_f64::seq")]
    epoch_coeff_sum: Vec<f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", with = "agm_core::serde_f64::named_seq")]
    epoch_coeff_sum_by_method: BTreeMap<String, Vec<f64>>,
    stopped: bool,
    /// Set by a snapshot restore: the schedule's learning rate times this, since the restore
    /// brought back the snapshot's rate and the schedule's decays go on from it (PyTorch's
    /// `optimizer.load_state_dict` under a chained `StepLR`, as the reference's MSES does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lr_factor: Option<f64>,
}

/// Refuses a resume whose `best.safetensors` (the weights of epoch `best_epoch`) is missing or
/// does not read back whole: no later epoch can rebuild them.
fn check_best_weights(path: &std::path::Path, best_epoch: usize) -> Result<()> {
    let problem = match Checkpoint::load(path, &Device::Cpu) {
        Ok(_) => return Ok(()),
        Err(_) if !path.exists() => "missing".to_string(),
        Err(TrainError::Checkpoint { message, .. }) => message,
        Err(other) => other.to_string(),
    };
    // The loader's own advice ("start a fresh run") is replaced by the whole choice.
    let problem = problem.split("; ").next().unwrap_or_default().to_string();
    Err(TrainError::checkpoint(
        path,
        format!(
            "{problem}, but it holds the run's best weights (epoch {best_epoch}), which training on cannot rebuild: \
             restore the file, or start a new run with --out"
        ),
    ))
}

/// What a restored state is to the method.
#[derive(Clone, Copy)]
enum Restore<'t> {
    /// A stopped run continues.
    Resume,
    /// The method asked for snapshot `tag` back.
    Snapshot(&'t str),
}

/// Trains one model with one modulator and one optimizer.
pub struct Trainer<'a> {
    model: &'a dyn MultimodalModel,
    modulator: Box<dyn Modulator + 'a>,
    optimizer: Box<dyn Optimizer>,
    /// Model variables (trainable and buffers) by checkpoint name.
    model_vars: Vec<NamedVar>,
    /// Variables the modulator owns (saved as `method.<name>`).
    extra_vars: Vec<NamedVar>,
    trainable: Vec<NamedVar>,
    opts: TrainerOptions,
    device: Device,
    run_dir: Option<RunDir>,
    state: LoopState,
    /// Method snapshots by tag; saved in every checkpoint so a resume between a save and its
    /// restore still finds them.
    snapshots: BTreeMap<String, SnapshotState>,
    competition: Option<Box<dyn CompetitionProbe + 'a>>,
    holdout: Option<&'a dyn BatchSource>,
    reference_split: Option<&'a dyn BatchSource>,
    /// Test hook: the checkpoint write with this 1-based number stops after its temporary file.
    crash_on_write: Option<usize>,
    checkpoint_writes: usize,
    /// The settings the run trains with (a JSON object), written into every checkpoint and
    /// compared on resume ([`Trainer::with_settings`]).
    settings: Option<serde_json::Value>,
    /// A driver's own checkpoint metadata ([`Trainer::set_run_meta`]).
    run_meta: BTreeMap<String, String>,
}

/// The checkpoint metadata keys the trainer writes itself (and [`Checkpoint::save`] the format's).
const TRAINER_META: [&str; 7] = ["trainer", "modulator", "method", "lr", "settings", "format", "snapshots"];

impl<'a> Trainer<'a> {
    /// Attaches the modulator (it may add variables) and builds the optimizer over every
    /// trainable variable with `build_optimizer`.
    pub fn new(
        model: &'a dyn MultimodalModel,
        mut modulator: Box<dyn Modulator + 'a>,
        build_optimizer: impl FnOnce(Vec<ParamGroup>) -> candle_core::Result<Box<dyn Optimizer>>,
        opts: TrainerOptions,
        device: &Device,
    ) -> Result<Self> {
        if opts.epochs == 0 || opts.batch_size == 0 {
            return Err(TrainError::Config("epochs and batch_size must be at least 1".into()));
        }
        let extra_vars = modulator.attach(model)?;
        let groups = model.param_groups();
        let mut trainable = groups.trainable();
        trainable.extend(extra_vars.iter().cloned());
        let optimizer = build_optimizer(vec![ParamGroup::new(trainable.clone())])?;
        Ok(Self {
            model,
            modulator,
            optimizer,
            model_vars: groups.all_sorted(),
            extra_vars,
            trainable,
            opts,
            device: device.clone(),
            run_dir: None,
            state: LoopState::default(),
            snapshots: BTreeMap::new(),
            competition: None,
            holdout: None,
            reference_split: None,
            crash_on_write: None,
            checkpoint_writes: 0,
            settings: None,
            run_meta: BTreeMap::new(),
        })
    }

    /// Records the settings the run trains with (a JSON object, one entry per setting) in every
    /// checkpoint; [`Trainer::resume`] refuses a checkpoint written under other settings, naming
    /// each one that changed (a hand-edited `config.toml`). Settings a resume may change are
    /// left out by the caller.
    pub fn with_settings(mut self, settings: serde_json::Value) -> Self {
        self.settings = Some(settings);
        self
    }

    /// Stores `value` under `key` in the metadata of every later checkpoint: a driver's record of
    /// the run (its provenance) that travels with it across resumes. The trainer's own keys
    /// (`trainer`, `settings`, …) are not replaced.
    pub fn set_run_meta(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.run_meta.insert(key.into(), value.into());
    }

    /// An entry of [`Trainer::set_run_meta`]; after [`Trainer::resume`], the resumed checkpoint's.
    pub fn run_meta(&self, key: &str) -> Option<&str> {
        self.run_meta.get(key).map(String::as_str)
    }

    /// Writes checkpoints, `metrics.jsonl` and the best weights into `dir`.
    pub fn with_run_dir(mut self, dir: RunDir) -> Self {
        self.run_dir = Some(dir);
        self
    }

    /// Samples held out from training that methods may evaluate on at the end of an epoch.
    pub fn with_holdout(mut self, holdout: &'a dyn BatchSource) -> Self {
        self.holdout = Some(holdout);
        self
    }

    /// Also evaluates `split` at the end of every epoch and records it in the epoch's row, for
    /// reporting under the reference's protocol (best epoch on its evaluation split).
    pub fn with_reference_split(mut self, split: &'a dyn BatchSource) -> Self {
        self.reference_split = Some(split);
        self
    }

    /// Measures competition strength at the end of every epoch.
    pub fn with_competition(mut self, probe: Box<dyn CompetitionProbe + 'a>) -> Self {
        self.competition = Some(probe);
        self
    }

    /// Test hook for crash tests: the `nth` write of `checkpoint.safetensors` (1-based) writes its
    /// temporary file and then fails as if the process had been killed before the rename.
    #[doc(hidden)]
    pub fn crash_on_checkpoint_write(mut self, nth: usize) -> Self {
        self.crash_on_write = Some(nth);
        self
    }

    /// The method being trained with (its state, coefficients and forward plan).
    pub fn modulator(&self) -> &dyn Modulator {
        self.modulator.as_ref()
    }

    /// Evaluates the model as training does: with the method's own prediction where it has one
    /// ([`Modulator::predict`]).
    pub fn evaluate(&self, split: &dyn BatchSource, progress: &mut dyn FnMut(usize, usize)) -> Result<EvalReport> {
        let method = Some(self.modulator.as_ref() as &dyn Modulator);
        let batch_size = self.opts.eval_batch_size_for(split);
        Ok(evaluate::evaluate_with(self.model, method, split, batch_size, &self.device, progress)?)
    }

    /// Loads the run directory's best weights (model and method variables) and the method's
    /// state of that epoch, for a final evaluation.
    pub fn load_best(&mut self) -> Result<()> {
        let dir = self.run_dir.clone().ok_or_else(|| {
            TrainError::Config(
                "load_best reads the run directory's best.safetensors, and this trainer has none: give it one \
                 with `Trainer::with_run_dir` before `fit`"
                    .into(),
            )
        })?;
        let path = dir.best();
        let ck = Checkpoint::load(&path, &self.device)?;
        self.set_model_tensors(&ck.model, &path)?;
        if ck.meta.contains_key("modulator") {
            let state: serde_json::Value = ck.meta_json("modulator", &path)?;
            self.modulator.load_state(&state).map_err(|e| TrainError::checkpoint(&path, e.to_string()))?;
        }
        Ok(())
    }

    /// The variables the method added ([`Modulator::attach`]), which the optimizer trains too.
    pub fn method_vars(&self) -> &[NamedVar] {
        &self.extra_vars
    }

    fn model_tensors(&self) -> Vec<(String, Tensor)> {
        self.model_vars
            .iter()
            .map(|v| (v.name.clone(), v.var.as_tensor().clone()))
            .chain(self.extra_vars.iter().map(|v| (format!("method.{}", v.name), v.var.as_tensor().clone())))
            .collect()
    }

    fn set_model_tensors(&self, tensors: &HashMap<String, Tensor>, origin: &std::path::Path) -> Result<()> {
        let vars: Vec<(String, candle_core::Var)> = self
            .model_vars
            .iter()
            .map(|v| (v.name.clone(), v.var.clone()))
            .chain(self.extra_vars.iter().map(|v| (format!("method.{}", v.name), v.var.clone())))
            .collect();
        crate::state_dict::assign_strict(&vars, tensors).map_err(|e| match e {
            TrainError::Weights(m) => {
                TrainError::checkpoint(origin, format!("the checkpoint is from another model or method: {m}"))
            }
            other => other,
        })
    }

    /// The training state now (model, optimizer, modulator); `copy` detaches it from the
    /// variables the next steps update in place (snapshots), a checkpoint written at once needs
    /// no copy.
    fn capture(&self, copy: bool) -> Result<SnapshotState> {
        let own = |pairs: Vec<(String, Tensor)>| -> candle_core::Result<HashMap<String, Tensor>> {
            pairs.into_iter().map(|(k, t)| Ok((k, if copy { t.copy()? } else { t }))).collect()
        };
        Ok(SnapshotState {
            model: own(self.model_tensors())?,
            optimizer: own(self.optimizer.state()?)?,
            modulator: self.modulator.state(),
            learning_rate: None,
        })
    }

    /// Puts a captured state back. A resume restores the method's state as saved; a snapshot
    /// restore tells the method which snapshot it asked for ([`Modulator::on_restored`]).
    fn restore(&mut self, state: &SnapshotState, how: Restore<'_>, origin: &std::path::Path) -> Result<()> {
        self.set_model_tensors(&state.model, origin)?;
        self.optimizer
            .load_state(&state.optimizer)
            .map_err(|e| TrainError::checkpoint(origin, format!("optimizer state: {e}")))?;
        let modulator = match how {
            Restore::Resume => self.modulator.load_state(&state.modulator),
            Restore::Snapshot(tag) => self.modulator.on_restored(tag, &state.modulator),
        };
        modulator.map_err(|e| TrainError::checkpoint(origin, e.to_string()))
    }

    /// Writes the latest state to the run directory, if any.
    fn save_checkpoint(&mut self) -> Result<()> {
        let Some(dir) = &self.run_dir else { return Ok(()) };
        let now = self.capture(false)?;
        let own = |k: &String| TRAINER_META.contains(&k.as_str());
        let mut meta: HashMap<String, String> =
            self.run_meta.iter().filter(|(k, _)| !own(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
        meta.insert("trainer".into(), serde_json::to_string(&self.state).expect("plain data"));
        meta.insert("modulator".into(), now.modulator.to_string());
        meta.insert("method".into(), self.modulator.name().to_string());
        meta.insert("lr".into(), self.optimizer.learning_rate().to_string());
        if let Some(settings) = &self.settings {
            meta.insert("settings".into(), settings.to_string());
        }
        let ck = Checkpoint { model: now.model, optimizer: now.optimizer, snapshots: self.snapshots.clone(), meta };
        self.checkpoint_writes += 1;
        let crash = self.crash_on_write == Some(self.checkpoint_writes);
        ck.save_inner(&dir.checkpoint(), crash).map_err(|e| match e {
            TrainError::NonFiniteTensor { path, tensor, .. } => {
                let position = format!(" after global step {}", self.state.global_step);
                TrainError::NonFiniteTensor { path, tensor, position }
            }
            other => other,
        })
    }

    /// What a run diverging now keeps: the checkpoint it can resume from, if any.
    fn kept_after_divergence(&self) -> String {
        crate::error::kept_after_divergence(self.run_dir.as_ref())
    }

    /// Restores everything from the run directory's checkpoint, so the next `fit` continues
    /// exactly where the stopped run was (weights, optimizer, running scores, scales, position
    /// in the data order, the method's saved snapshots).
    pub fn resume(&mut self) -> Result<()> {
        let dir = self.run_dir.clone().ok_or_else(|| TrainError::Config("resume needs a run directory".into()))?;
        let path = dir.checkpoint();
        let ck = Checkpoint::load(&path, &self.device)?;
        // Checkpoints before this key was written are checked by the method's own state.
        if let Some(method) = ck.meta.get("method").filter(|m| *m != self.modulator.name()) {
            return Err(TrainError::checkpoint(
                &path,
                format!(
                    "written by a `{method}` run, this run trains `{}`; resume the run directory it belongs to, or \
                     start a new run with --out",
                    self.modulator.name()
                ),
            ));
        }
        // Checkpoints before this key was written are not compared.
        if let (Some(ours), true) = (&self.settings, ck.meta.contains_key("settings")) {
            let theirs: serde_json::Value = ck.meta_json("settings", &path)?;
            let changed = setting_differences(ours, &theirs);
            if !changed.is_empty() {
                return Err(TrainError::checkpoint(
                    &path,
                    format!(
                        "written under other settings than the run's now: {}. Put the run's config.toml back as \
                         it was, or start a new run with --out",
                        changed.join(", ")
                    ),
                ));
            }
        }
        let modulator = ck.meta_json("modulator", &path)?;
        let loop_state: LoopState = ck.meta_json("trainer", &path)?;
        let run_meta = ck.meta.iter().filter(|(k, _)| !TRAINER_META.contains(&k.as_str()));
        let run_meta: BTreeMap<String, String> = run_meta.map(|(k, v)| (k.clone(), v.clone())).collect();
        if loop_state.epochs_done > self.opts.epochs {
            return Err(TrainError::Config(format!(
                "{} has {} epochs done; --epochs {} would end it before where it is: pass --epochs {} or more",
                dir.root().display(),
                loop_state.epochs_done,
                self.opts.epochs,
                loop_state.epochs_done
            )));
        }
        if loop_state.best_epoch > 0 {
            // Before any epoch trains: the run ends by evaluating these weights.
            check_best_weights(&dir.best(), loop_state.best_epoch)?;
        }
        let state = SnapshotState { model: ck.model, optimizer: ck.optimizer, modulator, learning_rate: None };
        self.restore(&state, Restore::Resume, &path)?;
        self.state = loop_state;
        self.snapshots = ck.snapshots;
        self.run_meta = run_meta;
        dir.truncate_metrics(self.state.epochs_done)?;
        Ok(())
    }

    /// Restores snapshot `tag` before an epoch the schedule gives `scheduled_lr`: the snapshot's
    /// own learning rate comes back with it, and later epochs decay from there.
    fn restore_snapshot(&mut self, tag: &str, scheduled_lr: f64) -> Result<()> {
        let snap = self.snapshots.get(tag).cloned().ok_or_else(|| {
            TrainError::Config(format!("the method asked to restore snapshot `{tag}`, which was never saved"))
        })?;
        self.restore(&snap, Restore::Snapshot(tag), std::path::Path::new(tag))?;
        if let Some(lr) = snap.learning_rate.filter(|_| scheduled_lr > 0.0) {
            self.state.lr_factor = Some(lr / scheduled_lr);
        }
        Ok(())
    }

    fn dropout_seed(&self) -> u64 {
        self.opts.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.state.global_step as u64
    }

    /// Trains until the last epoch, a callback's stop, or the method's stop.
    pub fn fit(
        &mut self,
        train: &dyn BatchSource,
        validation: &dyn BatchSource,
        callback: &mut dyn Callback,
    ) -> Result<RunSummary> {
        let n = train.len();
        if n == 0 {
            return Err(TrainError::Config("the training split is empty".into()));
        }
        let schedule = self.opts.schedule.build().map_err(|e| TrainError::Config(e.to_string()))?;
        let ranges = agm_data::batches(n, self.opts.batch_size);
        // A resumed run that has no epoch left ends with the last one it recorded.
        let nothing_left = self.state.stopped || self.state.epochs_done >= self.opts.epochs;
        let mut last = match &self.run_dir {
            Some(dir) if nothing_left && self.state.epochs_done > 0 => {
                dir.read_metrics::<EpochSummary>().ok().and_then(|rows| rows.into_iter().last())
            }
            _ => None,
        };
        if self.state.global_step == 0 && self.state.epochs_done == 0 {
            self.modulator.on_train_start(&TrainStartCx {
                model: self.model,
                device: &self.device,
                train,
                holdout: self.holdout,
            })?;
        }
        let mut stopped_early = self.state.stopped;
        while !stopped_early && self.state.epochs_done < self.opts.epochs {
            let epoch_index = self.state.epochs_done;
            let epoch = epoch_index + 1;
            let lr = schedule.lr_at_epoch(self.opts.base_lr, epoch_index) * self.state.lr_factor.unwrap_or(1.0);
            self.optimizer.set_learning_rate(lr);
            let order = agm_data::epoch_order(n, self.opts.seed, epoch_index, self.opts.shuffle);
            self.modulator.on_epoch_start(epoch, ranges.len(), self.state.next_batch)?;
            while self.state.next_batch < ranges.len() {
                let bi = self.state.next_batch;
                let batch = train.batch(&order[ranges[bi].clone()], &self.device)?;
                let step = self.state.global_step + 1;
                let started = Instant::now();
                let dropout_seed = self.dropout_seed();
                let outcome = {
                    let mut parts = StepParts {
                        model: self.model,
                        modulator: self.modulator.as_mut(),
                        optimizer: self.optimizer.as_mut(),
                        trainable: &self.trainable,
                        shapley: self.opts.shapley,
                        loss_reduction: self.opts.loss_reduction,
                    };
                    train_step(&mut parts, &batch, step, epoch, dropout_seed, &mut NoObserver)
                        .map_err(|e| TrainError::from(e).in_step(epoch, bi + 1, batch.len()))?
                };
                if !outcome.loss.is_finite() {
                    let kept = self.kept_after_divergence();
                    return Err(TrainError::NonFiniteLoss { value: outcome.loss, epoch, step: bi + 1, kept });
                }
                if let Some(value) = outcome.clip.as_ref().and_then(crate::step::ClipReport::non_finite) {
                    let kept = self.kept_after_divergence();
                    return Err(TrainError::NonFiniteGradient { value, epoch, step: bi + 1, kept });
                }
                self.state.global_step = step;
                self.state.next_batch = bi + 1;
                self.state.epoch_loss_sum += outcome.loss;
                self.state.epoch_steps += 1;
                self.state.epoch_seconds += started.elapsed().as_secs_f64();
                if let Some(c) = &outcome.coefficients {
                    add_into(&mut self.state.epoch_coeff_sum, c);
                }
                for (method, c) in self.modulator.coefficients_by_method() {
                    add_into(self.state.epoch_coeff_sum_by_method.entry(method).or_default(), &c);
                }
                let summary = StepSummary {
                    epoch,
                    step_in_epoch: bi + 1,
                    steps_in_epoch: ranges.len(),
                    global_step: step,
                    loss: outcome.loss,
                    coefficients: outcome.coefficients,
                };
                let every = self.opts.checkpoint_every_steps;
                let flow = callback.on_step(&summary);
                if flow == Flow::Stop || (every > 0 && step.is_multiple_of(every)) {
                    self.save_checkpoint()?;
                }
                if flow == Flow::Stop {
                    return Ok(self.summary(last, true));
                }
            }

            let validation_report = evaluate::evaluate_with(
                self.model,
                Some(self.modulator.as_ref()),
                validation,
                self.opts.eval_batch_size_for(validation),
                &self.device,
                &mut |done, total| callback.on_validation(done, total),
            )?;
            if self.state.best_epoch == 0 || validation_report.accuracy > self.state.best_accuracy {
                self.state.best_accuracy = validation_report.accuracy;
                self.state.best_epoch = epoch;
                if let Some(dir) = &self.run_dir {
                    // With the method's state of that epoch, for methods that predict with it.
                    let state = self.modulator.state();
                    let meta = if state.is_null() {
                        HashMap::new()
                    } else {
                        HashMap::from([("modulator".to_string(), state.to_string())])
                    };
                    let ck =
                        Checkpoint { model: self.model_tensors().into_iter().collect(), meta, ..Checkpoint::default() };
                    ck.save(&dir.best()).map_err(|e| match e {
                        TrainError::NonFiniteTensor { path, tensor, .. } => TrainError::NonFiniteTensor {
                            path,
                            tensor,
                            position: format!(" at the end of epoch {epoch}"),
                        },
                        other => other,
                    })?;
                }
            }
            let steps = self.state.epoch_steps.max(1) as f64;
            let train_loss = self.state.epoch_loss_sum / steps;
            let competition = match self.competition.as_mut() {
                Some(probe) => Some(probe.strength(self.model, &self.device).map_err(|e| TrainError::Competition {
                    epoch,
                    loss: train_loss,
                    reason: crate::error::candle_message(&e),
                    kept: self.kept_after_divergence(),
                })?),
                None => None,
            };
            let reference_split = match self.reference_split {
                Some(split) => Some(self.evaluate(split, &mut |_, _| {})?),
                None => None,
            };
            // The method's epoch end, and its actions, come after the epoch's model is scored,
            // kept as the best and measured: a method may change the model in place (ReLearn's
            // re-initialisation, which the official code, too, makes after saving its best) and a
            // restore puts back another epoch's weights (the reference, too, evaluates and
            // compares before its MSES reload).
            let actions = self.modulator.on_epoch_end(&EpochCx {
                model: self.model,
                device: &self.device,
                train,
                holdout: self.holdout,
                epoch,
                accuracy: validation_report.accuracy,
                modality_accuracy: validation_report.modality_accuracy.clone(),
                modality_loss: validation_report.modality_loss.clone(),
                head_accuracy: validation_report.head_accuracy.clone(),
                head_loss: validation_report.head_loss.clone(),
            })?;
            // The schedule's rate for the next epoch (index `epoch`).
            let next_lr = schedule.lr_at_epoch(self.opts.base_lr, epoch);
            let mut events = Vec::new();
            for action in actions {
                match action {
                    EpochAction::SaveSnapshot(tag) => {
                        let mut snap = self.capture(true)?;
                        // The rate the reference's checkpoint holds: its scheduler has stepped.
                        snap.learning_rate = Some(next_lr * self.state.lr_factor.unwrap_or(1.0));
                        self.snapshots.insert(tag, snap);
                    }
                    EpochAction::RestoreSnapshot(tag) => self.restore_snapshot(&tag, next_lr)?,
                    EpochAction::Stop => stopped_early = true,
                    EpochAction::ResetOptimizer => self.optimizer.reset_state(),
                    EpochAction::Note(text) => events.push(text),
                }
            }
            let row = EpochSummary {
                epoch,
                lr,
                train_loss,
                validation: validation_report,
                coefficients: (!self.state.epoch_coeff_sum.is_empty())
                    .then(|| self.state.epoch_coeff_sum.iter().map(|s| s / steps).collect()),
                last_coefficients: self.modulator.coefficients(),
                coefficients_by_method: std::mem::take(&mut self.state.epoch_coeff_sum_by_method)
                    .into_iter()
                    .map(|(method, sum)| (method, sum.iter().map(|s| s / steps).collect()))
                    .collect(),
                last_coefficients_by_method: self.modulator.coefficients_by_method().into_iter().collect(),
                mean_step_seconds: self.state.epoch_seconds / steps,
                peak_memory_bytes: crate::memory::peak_memory_bytes(),
                best_epoch: self.state.best_epoch,
                competition,
                reference_split,
                events,
            };
            self.state = LoopState {
                epochs_done: epoch,
                next_batch: 0,
                global_step: self.state.global_step,
                best_accuracy: self.state.best_accuracy,
                best_epoch: self.state.best_epoch,
                stopped: stopped_early,
                lr_factor: self.state.lr_factor,
                ..LoopState::default()
            };
            if let Some(dir) = &self.run_dir {
                dir.append_metrics(&row)?;
            }
            self.save_checkpoint()?;
            if callback.on_epoch_end(&row) == Flow::Stop {
                stopped_early = true;
            }
            last = Some(row);
        }
        Ok(self.summary(last, stopped_early))
    }

    fn summary(&self, last: Option<EpochSummary>, stopped_early: bool) -> RunSummary {
        RunSummary {
            epochs_done: self.state.epochs_done,
            global_step: self.state.global_step,
            best_epoch: self.state.best_epoch,
            best_accuracy: self.state.best_accuracy,
            last,
            stopped_early,
            stopped_by_method: self.state.stopped,
        }
    }
}

/// Adds `values` into the running `sum`, which restarts at zero when the length changes.
fn add_into(sum: &mut Vec<f64>, values: &[f64]) {
    if sum.len() != values.len() {
        *sum = vec![0.0; values.len()];
    }
    sum.iter_mut().zip(values).for_each(|(s, v)| *s += v);
}

/// `key = now (the checkpoint's: then)` for every setting of two settings objects whose values
/// differ (a setting one of them lacks reads as `null`).
fn setting_differences(now: &serde_json::Value, then: &serde_json::Value) -> Vec<String> {
    let entries = |v: &serde_json::Value| -> BTreeMap<String, serde_json::Value> {
        v.as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
    };
    let (now, then) = (entries(now), entries(then));
    let shown = |v: Option<&serde_json::Value>| v.cloned().unwrap_or_default();
    crate::resolve::differences(&now, &then)
        .into_iter()
        .map(|(k, a, b)| format!("{k} = {} (the checkpoint's: {})", shown(a), shown(b)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trainer_state_round_trips_every_f64() {
        let state = LoopState {
            best_accuracy: 0.9933333333333333,
            epoch_loss_sum: f64::NAN,
            epoch_seconds: 0.1 + 0.2,
            epoch_coeff_sum: vec![f64::INFINITY, f64::NEG_INFINITY, f64::MAX, 5e-324],
            epoch_coeff_sum_by_method: [("agm".to_string(), vec![f64::NAN, 0.1 + 0.2])].into(),
            ..LoopState::default()
        };
        let json = serde_json::to_string(&state).unwrap();
        assert!(!json.contains("null"), "{json}");
        let back: LoopState = serde_json::from_str(&json).unwrap();
        let bits = |s: &LoopState| {
            let mut v = vec![s.best_accuracy, s.epoch_loss_sum, s.epoch_seconds];
            v.extend(&s.epoch_coeff_sum);
            v.extend(s.epoch_coeff_sum_by_method.values().flatten());
            v.into_iter().map(f64::to_bits).collect::<Vec<_>>()
        };
        assert_eq!(bits(&back), bits(&state));
    }
}
