//! One entry point for a whole run: train and evaluate a configuration into a run directory.
//!
//! [`train_run`] takes the run directory's lock, writes `config.toml` (new runs), builds the
//! dataset, model and method, attaches the competition probe where concepts exist, trains (or
//! resumes), evaluates the selected weights on the test split, and writes `summary.json`, which
//! is exactly the [`RunOutcome`] it returns. `cargo xtask train`, `study` and the tests all run
//! through it; drivers only parse arguments and print (through [`Callback`]).
//!
//! ```no_run
//! use agm_train::run::{train_run, RunOptions, RunStart};
//! use agm_train::{NoCallback, RunConfig, RunDir};
//! let cfg = RunConfig { epochs: 2, ..RunConfig::av_digits() };
//! let dir = RunDir::create("runs/example")?;
//! let outcome = train_run(&cfg, &dir, RunStart::New, &RunOptions::default(), &mut NoCallback)?;
//! println!("test accuracy {:.3}", outcome.test.unwrap().accuracy);
//! # Ok::<(), agm_train::TrainError>(())
//! ```

use std::path::PathBuf;
use std::time::SystemTime;

use agm_core::MultimodalModel;
use agm_data::LoadedDataset;
use agm_metric::EvalReport;
use serde::{Deserialize, Serialize};

use crate::checkpoint::write_atomic;
use crate::concept::{default_dir, ConceptProbe, ConceptSet};
use crate::error::{Result, TrainError};
use crate::{Callback, RunConfig, RunDir, RunSummary};

/// How a run starts.
#[derive(Clone, Debug, PartialEq)]
pub enum RunStart {
    /// A new run in an empty directory (or one without run state).
    New,
    /// Continue the run in the directory from its last checkpoint (from scratch when it stopped
    /// before its first one). `header`, when given, replaces the comment block of its
    /// `config.toml`, which is rewritten with the (possibly changed) epochs and device.
    Resume {
        /// The new comment block of `config.toml` (see [`Provenance::config_header`]); `None`
        /// leaves the file as it is.
        header: Option<String>,
    },
}

/// Where the competition probe's mono-modal concepts come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Concepts {
    /// No probe.
    Off,
    /// Use the concepts in this folder when it has one for every modality.
    In(PathBuf),
    /// As `In`, training the missing concepts first where the dataset supports it (AV-Digits).
    TrainMissing(PathBuf),
}

impl Concepts {
    /// What the run's config asks for: `TrainMissing`, or `In` without `train_concepts`, in
    /// [`RunConfig::concepts_dir`].
    pub fn default_for(cfg: &RunConfig) -> Self {
        match cfg.train_concepts {
            true => Self::TrainMissing(cfg.concepts_dir()),
            false => Self::In(cfg.concepts_dir()),
        }
    }

    /// `cfg` recording these concepts (its `concepts` and `train_concepts`; `Off` records
    /// nothing), so a resume finds the ones the run started with. The default folder is
    /// recorded as empty: it follows the dataset and preset.
    pub fn recorded_in(&self, cfg: &RunConfig) -> RunConfig {
        let (dir, train) = match self {
            Self::Off => return cfg.clone(),
            Self::In(dir) => (dir, false),
            Self::TrainMissing(dir) => (dir, true),
        };
        let concepts =
            if *dir == default_dir(&cfg.dataset, &cfg.data_preset) { String::new() } else { dir.display().to_string() };
        RunConfig { concepts, train_concepts: train, ..cfg.clone() }
    }
}

/// Facts a reader needs to trust or repeat a run, recorded in `summary.json` and atop
/// `config.toml`. The driver fills in what only it knows (the command line, the commit). For a
/// resumed run, everything but `finished` is its first start's, and `resumes` lists each resume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The agm crate version that started the run.
    pub agm_version: String,
    /// The commit the driver was built from, when built inside a git checkout.
    pub git_commit: Option<String>,
    /// UTC, RFC 3339.
    pub started: String,
    /// UTC, RFC 3339: when the run ended. Until then (in checkpoints and `config.toml`'s
    /// header) the same as `started`.
    pub finished: String,
    /// The run's `device` setting (`cpu`, `cuda`); [`train_run`] fills it in from the config.
    pub device: String,
    /// Threads of candle's CPU pool (`RAYON_NUM_THREADS`, else the available cores).
    pub threads: usize,
    /// The command line, program name first (empty for a library call).
    pub command_line: Vec<String>,
    /// Each time the run was resumed, in order (absent in summaries of earlier versions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resumes: Vec<Resumed>,
}

/// One resume of a run: when, where and by which command it went on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resumed {
    /// UTC, RFC 3339.
    pub started: String,
    /// The agm crate version that resumed the run.
    pub agm_version: String,
    /// The commit the resuming driver was built from, when built inside a git checkout.
    pub git_commit: Option<String>,
    /// The device the resume ran on (`cpu`, `cuda`).
    pub device: String,
    /// Threads of candle's CPU pool during the resume.
    pub threads: usize,
    /// The resuming command line, program name first (empty for a library call).
    pub command_line: Vec<String>,
}

/// The checkpoint metadata key holding the run's [`Provenance`], so a resume knows its first start.
const PROVENANCE_META: &str = "provenance";

/// How [`train_run`] runs, besides the configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct RunOptions {
    /// This process's facts ([`Provenance::started_now`]). A resume keeps the first start's, read
    /// from the checkpoint, and adds these to its `resumes`.
    pub provenance: Provenance,
    /// Where the competition probe's concepts come from (default:
    /// [`Concepts::default_for`] the run).
    pub concepts: Option<Concepts>,
}

impl Default for RunOptions {
    /// A library call started now, with the run's own concepts ([`Concepts::default_for`]): its
    /// `concepts` folder (default `concepts/<dataset>-<preset>`, relative to the working
    /// directory), whose missing concepts it trains first where the dataset has them and
    /// `train_concepts` is on (the default). `concepts: Some(Concepts::Off)` measures nothing.
    fn default() -> Self {
        Self { provenance: Provenance::started_now(Vec::new(), None), concepts: None }
    }
}

impl Provenance {
    /// A run started now from `command_line`, built at `git_commit`.
    pub fn started_now(command_line: Vec<String>, git_commit: Option<String>) -> Self {
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let threads = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Self {
            agm_version: env!("CARGO_PKG_VERSION").to_string(),
            git_commit,
            started: now.clone(),
            finished: now,
            device: String::new(),
            threads,
            command_line,
            resumes: Vec::new(),
        }
    }

    /// This (a run's provenance so far) with `now`, the process resuming it, added to `resumes`.
    pub fn resumed_by(&self, now: &Provenance) -> Provenance {
        let mut resumes = self.resumes.clone();
        resumes.push(Resumed {
            started: now.started.clone(),
            agm_version: now.agm_version.clone(),
            git_commit: now.git_commit.clone(),
            device: now.device.clone(),
            threads: now.threads,
            command_line: now.command_line.clone(),
        });
        Provenance { resumes, ..self.clone() }
    }

    /// The comment block atop a run's `config.toml` (written when the run starts, so without
    /// the end time; `summary.json` has it).
    pub fn config_header(&self, device: &str) -> String {
        let commit = self.git_commit.as_ref().map(|c| format!(", commit {c}")).unwrap_or_default();
        let command =
            if self.command_line.is_empty() { "(a library call)".to_string() } else { self.command_line.join(" ") };
        format!(
            "Written by agm {}{commit} for a run started {} on device {device} with {} thread{}.\n\
             Command: {command}\n\
             Settings of methods the run does not use are left out. Train it again with\n\
             `cargo xtask train --config <this file>`.",
            self.agm_version,
            self.started,
            self.threads,
            if self.threads == 1 { "" } else { "s" },
        )
    }
}

/// What a run ended with; `summary.json` is this, serialised.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunOutcome {
    /// How training ended: epochs, steps, the best epoch and the last epoch's row.
    pub run: RunSummary,
    /// The test split's numbers for the selected (best validation) weights; `None` when the run
    /// stopped before its last epoch (it can be resumed).
    pub test: Option<EvalReport>,
    /// The configuration the run trained with.
    pub config: RunConfig,
    /// Who ran it, where and when, resumes included; `finished` is the end of this call.
    pub provenance: Provenance,
    /// What became of the competition probe (not serialised).
    #[serde(skip)]
    pub concepts: Option<ConceptStatus>,
}

impl RunOutcome {
    /// Reads a run's `summary.json`.
    pub fn load(dir: &RunDir) -> Result<Self> {
        let path = dir.summary();
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| TrainError::io(&path, std::io::Error::other(format!("not a run summary written by agm: {e}"))))
    }

    /// True when training ran every epoch (or the method stopped it) and the test split was
    /// evaluated.
    pub fn finished(&self) -> bool {
        self.test.is_some()
    }
}

/// Whether and where a run's competition probe found its concepts.
#[derive(Clone, Debug, PartialEq)]
pub struct ConceptStatus {
    /// The concepts folder the probe looked in.
    pub dir: PathBuf,
    /// Modalities without a concept in `dir`.
    pub missing: Vec<String>,
    /// Concepts are trained for AV-Digits only in this version.
    pub supported: bool,
}

/// The probe for a run when its dataset has a concept for every modality in `dir`; with
/// `train_missing`, the missing concepts are trained into `dir` first (AV-Digits: about 2 s, once),
/// under the dataset's concept settings ([`crate::concept::concept_config`]), their steps shown to
/// `callback` ([`Callback::on_concept_step`]). A broken concept folder is an error naming the file.
pub fn attach_concepts<'a>(
    cfg: &RunConfig,
    data: &'a LoadedDataset,
    dir: PathBuf,
    train_missing: bool,
    callback: &mut dyn Callback,
) -> Result<(Option<ConceptProbe<'a>>, ConceptStatus)> {
    let all = data.modalities.names().to_vec();
    let supported = crate::concept::check_concept_dataset(&cfg.dataset).is_ok();
    let Some(dep) = data.dep.as_ref().filter(|_| supported) else {
        return Ok((None, ConceptStatus { dir, missing: all, supported: false }));
    };
    let missing = |set: &Option<ConceptSet>| match set {
        Some(s) => s.missing(&data.modalities),
        None => all.clone(),
    };
    if train_missing {
        // Before its files are read as concepts: a run directory's summary.json is no manifest.
        crate::concept::check_concept_folder(&dir)?;
    }
    let mut set = ConceptSet::load_for(cfg, &dir)?;
    if train_missing && !missing(&set).is_empty() {
        let concept_cfg = crate::concept::concept_config(cfg)?;
        for modality in missing(&set) {
            let mut steps = ConceptSteps { modality: &modality, run: &mut *callback };
            crate::concept::train_concept(&concept_cfg, &modality, &dir, &mut steps)?;
        }
        set = ConceptSet::load_for(cfg, &dir)?;
    }
    let missing = missing(&set);
    let probe = match set {
        Some(s) if missing.is_empty() => Some(ConceptProbe::new(&s, &data.modalities, dep, &data.validation)?),
        _ => None,
    };
    Ok((probe, ConceptStatus { dir, missing, supported: true }))
}

/// A run's callback as the training of one of its concepts sees it: steps only, through
/// [`Callback::on_concept_step`] (the run's progress and epochs are not the concept's).
struct ConceptSteps<'c> {
    modality: &'c str,
    run: &'c mut dyn Callback,
}

impl Callback for ConceptSteps<'_> {
    fn on_step(&mut self, s: &crate::StepSummary) -> crate::Flow {
        self.run.on_concept_step(self.modality, s)
    }
}

/// What a run is about to do, for the driver's header line.
#[derive(Clone, Debug)]
pub struct RunStarted {
    /// True when the run continues from a checkpoint (a resume of a run that wrote none starts
    /// over and is `false`).
    pub resuming: bool,
    /// Samples in the training split.
    pub train_samples: usize,
    /// How the Shapley passes run, for methods that run them.
    pub shapley: Option<String>,
    /// The dataset's modality names, in the model's order.
    pub modalities: Vec<String>,
    /// What the driver should tell the user about the data: the loader's notes (samples it
    /// dropped) and inputs whose shape differs from the preset's reference shape.
    pub notes: Vec<String>,
}

/// Trains and evaluates `cfg` into `dir` (see the module docs). The directory's lock is held
/// for the whole run; a new run refuses a directory that already holds run state, and a new run
/// that fails before its first checkpoint removes what it wrote (the directory too, when that
/// leaves it empty), so a failed start leaves nothing behind.
pub fn train_run(
    cfg: &RunConfig,
    dir: &RunDir,
    start: RunStart,
    opts: &RunOptions,
    callback: &mut dyn Callback,
) -> Result<RunOutcome> {
    let lock = dir.lock()?;
    let new = start == RunStart::New && !dir.holds_run_state();
    let result = run_locked(cfg, dir, start, opts, callback);
    match &result {
        Ok(_) => callback.on_run_written(dir),
        Err(_) if new && !dir.checkpoint().exists() => dir.remove_unstarted(),
        Err(_) => {}
    }
    drop(lock);
    result
}

/// [`train_run`] once the directory's lock is held.
fn run_locked(
    cfg: &RunConfig,
    dir: &RunDir,
    start: RunStart,
    opts: &RunOptions,
    callback: &mut dyn Callback,
) -> Result<RunOutcome> {
    let provenance = Provenance { device: cfg.device.clone(), ..opts.provenance.clone() };
    let has_checkpoint = dir.checkpoint().exists();
    match &start {
        RunStart::New if dir.holds_run_state() => {
            return Err(TrainError::Config(format!(
                "{} already holds a run; continue it with `cargo xtask train --resume {}` or choose another --out",
                dir.root().display(),
                dir.root().display()
            )));
        }
        RunStart::New => {}
        RunStart::Resume { .. } if !has_checkpoint => {
            // A second metrics row means a checkpoint was written after the first epoch.
            let rows = dir.metrics_rows();
            if dir.summary().exists() || rows > 1 {
                return Err(TrainError::Checkpoint {
                    path: dir.checkpoint(),
                    message: format!(
                        "missing, but {} records finished epochs; the run cannot continue exactly without it: \
                         restore the file, or start a new run with --out",
                        dir.root().display()
                    ),
                });
            }
            // Stopped before its first checkpoint: start over from its config, dropping partial rows.
            dir.truncate_metrics(0)?;
        }
        RunStart::Resume { .. } => {}
    }
    let resuming = matches!(start, RunStart::Resume { .. }) && has_checkpoint;
    let device = cfg.device()?;
    // Products and convolutions on this thread follow the run's precision until it returns.
    let _precision = agm_kernels::PrecisionGuard::new(cfg.precision()?);
    // A resumed run's weights come from its checkpoint, not from `init_weights`.
    let without_init;
    let build_cfg = if resuming {
        without_init = RunConfig { init_weights: String::new(), ..cfg.clone() };
        &without_init
    } else {
        cfg
    };
    let built = build_cfg.build(&device)?;
    let concepts = opts.concepts.clone().unwrap_or_else(|| Concepts::default_for(cfg));
    // config.toml says which concepts the run measures against, whoever chose them.
    let recorded = concepts.recorded_in(cfg);
    if start == RunStart::New {
        // Only once the run could be built: a configuration that cannot run leaves no run state.
        write_atomic(&dir.config(), recorded.to_run_toml(&provenance.config_header(&cfg.device)).as_bytes())?;
    }
    let data = &built.data;
    let train = cfg.train_source(data);
    let (probe, concept_status) = match concepts {
        Concepts::Off => (None, None),
        Concepts::In(dir) => attach_concepts(cfg, data, dir, false, callback).map(|(p, s)| (p, Some(s)))?,
        Concepts::TrainMissing(dir) => attach_concepts(cfg, data, dir, true, callback).map(|(p, s)| (p, Some(s)))?,
    };
    // The run's peak counts from here: its data and model, not the concept models trained above.
    crate::memory::reset_peak_memory();
    let model: &dyn MultimodalModel = built.model.as_ref();
    let mut trainer = cfg
        .trainer(model, built.modulator, data, &device)?
        .with_run_dir(dir.clone())
        .with_settings(cfg.resumable_identity());
    if let Some(probe) = probe {
        trainer = trainer.with_competition(Box::new(probe));
    }
    if resuming {
        trainer.resume()?;
    }
    // The first start and every resume, carried in the checkpoints (older ones lack it: the run
    // is then described from this resume on).
    let first = trainer.run_meta(PROVENANCE_META).and_then(|p| serde_json::from_str::<Provenance>(p).ok());
    let provenance = match first {
        Some(first) if resuming => first.resumed_by(&provenance),
        _ => provenance,
    };
    trainer.set_run_meta(PROVENANCE_META, serde_json::to_string(&provenance).expect("plain data"));
    // Only once the checkpoint was read: a resume that fails leaves the config as it was.
    if let RunStart::Resume { header: Some(header) } = &start {
        write_atomic(&dir.config(), recorded.to_run_toml(header).as_bytes())?;
    }
    let shapley = (trainer.modulator().forward_plan() == agm_modulation::ForwardPlan::Shapley)
        .then(|| cfg.describe_shapley(model));
    callback.on_start(&RunStarted {
        resuming,
        train_samples: train.len(),
        shapley,
        modalities: data.modalities.names().to_vec(),
        notes: data.notes.iter().cloned().chain(cfg.input_shape_notes(data)?).collect(),
    });
    let summary = trainer.fit(train.as_ref(), &data.validation, callback)?;
    // A callback's stop (Ctrl-C) leaves the run to be resumed; the method's stop ends it.
    let finished = !summary.stopped_early || summary.stopped_by_method || summary.epochs_done >= cfg.epochs;
    let test = if finished {
        // The selected weights into the model already built, on the split already loaded.
        trainer.load_best()?;
        Some(trainer.evaluate(&data.test, &mut |done, total| callback.on_validation(done, total))?)
    } else {
        None
    };
    drop(trainer);
    let finished_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let outcome = RunOutcome {
        run: summary,
        test,
        config: cfg.clone(),
        provenance: Provenance { finished: finished_at, ..provenance },
        concepts: concept_status,
    };
    if outcome.finished() {
        let json = serde_json::to_string_pretty(&outcome).expect("a run outcome is plain data");
        write_atomic(&dir.summary(), json.as_bytes())?;
    }
    Ok(outcome)
}
