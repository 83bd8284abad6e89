//! The errors of agm-train: bad configuration, checkpoint and run-directory IO, diverged runs.

use std::path::PathBuf;

/// What to do about a run that diverged or met NaN: `--resume` keeps every setting but the
/// epochs and the device, so a lower learning rate or alpha needs a new run.
const DIVERGED: &str = "start a new run with a lower learning rate or alpha (--resume keeps the run's settings), or \
                        remove NaN from the inputs and continue from the last checkpoint with --resume";

/// What a run that diverged at a step kept in `run_dir`, and what to do.
pub(crate) fn kept_after_divergence(run_dir: Option<&crate::RunDir>) -> String {
    const AGAIN: &str = "start again with a lower learning rate or alpha, or remove NaN from the inputs";
    match run_dir.map(crate::RunDir::checkpoint) {
        Some(path) if path.exists() => {
            format!("nothing after the last checkpoint was written ({}); {DIVERGED}", path.display())
        }
        Some(_) => format!("no checkpoint was written yet (no epoch finished), so there is nothing to resume: {AGAIN}"),
        None => format!("the trainer has no run directory, so it kept no checkpoint: {AGAIN}"),
    }
}

/// A candle error's message without the backtrace candle appends where `RUST_BACKTRACE` is set:
/// its first line.
pub(crate) fn candle_message(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// Everything that can stop a run. Messages name the file or field and, where possible, the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A setting or request that cannot run: an unknown or out-of-range value, a method that does
    /// not fit the model, a run directory in use, a call the trainer is not set up for. The
    /// message names the setting (and, through [`crate::RunRequest`], the flag, recipe or file
    /// that gave it) and the allowed values or the fix.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A config file that cannot be read or parsed, or that holds a bad setting.
    #[error("config file {path}: {message}")]
    ConfigFile {
        /// The config file.
        path: PathBuf,
        /// What is wrong, with the line where it is known.
        message: String,
    },

    /// A checkpoint (`checkpoint.safetensors`, `best.safetensors`) that is missing, damaged, or
    /// from another run, method or model, or a state a resume cannot continue from.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },

    /// A state dict that does not fit the model: every missing, unexpected and misshapen name.
    #[error("the weights do not fit the model: {0}")]
    Weights(crate::state_dict::KeyMismatch),

    /// A study's or reproduction's folder given where a run directory goes.
    #[error(
        "{} is a {kind} folder, not a run directory: its runs are the folders inside it{}; {}",
        dir.display(),
        example.as_ref().map(|e| format!(" (e.g. {})", e.display())).unwrap_or_default(),
        if *kind == "study" {
            format!("`cargo xtask report {}` writes its table and plot again", dir.display())
        } else {
            "its table is reproduce.md there, which the same `cargo xtask reproduce` command writes again".to_string()
        }
    )]
    NotARunDirectory {
        /// The folder given.
        dir: PathBuf,
        /// `study` or `reproduction`.
        kind: &'static str,
        /// A run directory inside it, if any.
        example: Option<PathBuf>,
    },

    /// A file every run directory holds is missing.
    #[error("{path} not found; is {dir} a run directory written by `cargo xtask train`? If it is, restore the file")]
    MissingRunFile {
        /// The missing file.
        path: PathBuf,
        /// The run directory it should be in.
        dir: PathBuf,
    },

    /// A run directory without `metrics.jsonl`: its run stopped before its first epoch ended.
    #[error(
        "{path} not found: the run in {dir} has no finished epoch yet; continue it with \
         `cargo xtask train --resume {dir}`"
    )]
    NoFinishedEpoch {
        /// The missing `metrics.jsonl`.
        path: PathBuf,
        /// The run directory.
        dir: PathBuf,
    },

    /// A line of a run's `metrics.jsonl` that is not a metrics row (an edit, another program).
    #[error(
        "{path} line {line}: not a metrics row ({reason}); each line is one finished epoch's JSON object as \
         `cargo xtask train` writes it: remove that line"
    )]
    MetricsRow {
        /// The `metrics.jsonl` file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// Why the line does not parse as a row.
        reason: String,
    },

    /// A run's `metrics.jsonl` that a resume would have to lose rows of.
    #[error("{path}: {message}")]
    MetricsFile {
        /// The `metrics.jsonl` file.
        path: PathBuf,
        /// Which rows are missing or damaged, and what to do.
        message: String,
    },

    /// A file or folder operation failed.
    // The cause is part of the message, not a `source`, so error chains print it once.
    #[error("{path}: {cause}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },

    /// A training step's loss was NaN or infinite; the optimizer did not step.
    /// `kept`: what the run kept and what to do.
    #[error("the loss became {value} at epoch {epoch}, step {step}; {kept}")]
    NonFiniteLoss {
        /// The loss.
        value: f64,
        /// The 1-based epoch.
        epoch: usize,
        /// The 1-based step within the epoch.
        step: usize,
        /// What the run kept (its last checkpoint, if any) and what to do.
        kept: String,
    },

    /// The gradients a clipping method read held NaN or infinity (the total norm, else the head
    /// weight gradient's extremes); the optimizer did not step.
    #[error("the gradient norm became {value} at epoch {epoch}, step {step}; {kept}")]
    NonFiniteGradient {
        /// The first non-finite value ([`crate::ClipReport::non_finite`]).
        value: f64,
        /// The 1-based epoch.
        epoch: usize,
        /// The 1-based step within the epoch.
        step: usize,
        /// What the run kept (its last checkpoint, if any) and what to do.
        kept: String,
    },

    /// The end-of-epoch competition-strength measurement failed (its reason says why; a
    /// diverging run's features break the ridge fit).
    #[error("competition strength at the end of epoch {epoch} (mean training loss {loss:.4e}): {reason}; {kept}")]
    Competition {
        /// The 1-based epoch.
        epoch: usize,
        /// The epoch's mean training loss.
        loss: f64,
        /// The measurement's error, its first line.
        reason: String,
        /// What the run kept (its last checkpoint, if any) and what to do.
        kept: String,
    },

    /// A checkpoint would hold NaN or infinity; the previous file is left as it was.
    #[error(
        "refusing to write {path}: tensor `{tensor}` holds NaN or infinity{position} (batch-norm running \
         statistics take in NaN inputs); the last good checkpoint is kept; {diverged}",
        diverged = DIVERGED
    )]
    NonFiniteTensor {
        /// The checkpoint that was not written.
        path: PathBuf,
        /// The first tensor holding NaN or infinity: a model variable's name, else its name in
        /// the file (`optim/…`, `snapshot/…`).
        tensor: String,
        /// When, as a phrase (` after global step 12`, ` at the end of epoch 3`); empty when
        /// unknown.
        position: String,
    },

    /// A callback stopped work that leaves nothing behind when unfinished (a concept's training):
    /// what was stopped and that nothing of it was written.
    #[error("{0}")]
    Interrupted(String),

    /// Loading or batching the dataset failed.
    #[error(transparent)]
    Data(#[from] agm_data::DataError),

    /// A tensor operation failed (the model, the method, the optimizer), or a concept file is
    /// damaged.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

impl TrainError {
    /// A tensor error of a training step, saying where it happened (other errors name their
    /// place already).
    pub(crate) fn in_step(self, epoch: usize, step: usize, samples: usize) -> Self {
        match self {
            Self::Tensor(e) => Self::Tensor(candle_core::Error::Msg(format!(
                "epoch {epoch}, step {step} (a batch of {samples} sample{}): {}",
                if samples == 1 { "" } else { "s" },
                candle_message(&e)
            ))),
            other => other,
        }
    }
}

/// The result of agm-train's fallible calls.
pub type Result<T> = std::result::Result<T, TrainError>;

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), cause: source }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Checkpoint { path: path.into(), message: message.into() }
    }
}

/// A method's setting or fit to the model is a configuration error of the run.
impl From<agm_modulation::MethodError> for TrainError {
    fn from(e: agm_modulation::MethodError) -> Self {
        Self::Config(e.to_string())
    }
}
