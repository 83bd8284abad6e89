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
    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("config file {path}: {message}")]
    ConfigFile { path: PathBuf, message: String },

    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },

    /// A state dict that does not fit the model: every missing, unexpected and misshapen name.
    #[error("the weights do not fit the model: {0}")]
    Weights(crate::state_dict::KeyMismatch),

    /// A file every run directory holds is missing.
    #[error("{path} not found; is {dir} a run directory written by `cargo xtask train`? If it is, restore the file")]
    MissingRunFile { path: PathBuf, dir: PathBuf },

    /// A run directory without `metrics.jsonl`: its run stopped before its first epoch ended.
    #[error(
        "{path} not found: the run in {dir} has no finished epoch yet; continue it with \
         `cargo xtask train --resume {dir}`"
    )]
    NoFinishedEpoch { path: PathBuf, dir: PathBuf },

    /// A line of a run's `metrics.jsonl` that is not a metrics row (an edit, another program).
    #[error(
        "{path} line {line}: not a metrics row ({reason}); each line is one finished epoch's JSON object as \
         `cargo xtask train` writes it: remove that line"
    )]
    MetricsRow { path: PathBuf, line: usize, reason: String },

    /// A run's `metrics.jsonl` that a resume would have to lose rows of.
    #[error("{path}: {message}")]
    MetricsFile { path: PathBuf, message: String },

    // The cause is part of the message, not a `source`, so error chains print it once.
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },

    /// `kept`: what the run kept and what to do.
    #[error("the loss became {value} at epoch {epoch}, step {step}; {kept}")]
    NonFiniteLoss { value: f64, epoch: usize, step: usize, kept: String },

    #[error("the gradient norm became {value} at epoch {epoch}, step {step}; {kept}")]
    NonFiniteGradient { value: f64, epoch: usize, step: usize, kept: String },

    /// The end-of-epoch competition-strength measurement failed (its reason says why; a
    /// diverging run's features break the ridge fit).
    #[error("competition strength at the end of epoch {epoch} (mean training loss {loss:.4e}): {reason}; {kept}")]
    Competition { epoch: usize, loss: f64, reason: String, kept: String },

    /// A checkpoint would hold NaN or infinity; the previous file is left as it was.
    #[error(
        "refusing to write {path}: tensor `{tensor}` holds NaN or infinity{position} (batch-norm running \
         statistics take in NaN inputs); the last good checkpoint is kept; {diverged}",
        diverged = DIVERGED
    )]
    NonFiniteTensor { path: PathBuf, tensor: String, position: String },

    /// A callback stopped work that leaves nothing behind when unfinished (a concept's training):
    /// what was stopped and that nothing of it was written.
    #[error("{0}")]
    Interrupted(String),

    #[error(transparent)]
    Data(#[from] agm_data::DataError),

    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

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
