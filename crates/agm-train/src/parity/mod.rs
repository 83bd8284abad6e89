//! Replays golden parity cases (`tests/fixtures/golden/FORMAT.md`, format v1) through the real
//! training step and compares every stored number.
//!
//! A case is a folder with `case.json` and `tensors.safetensors`. [`run_case`] selects what to do
//! from the `kind` (and, for `train_steps`, the `method`) written in `case.json`, never from the
//! folder name, so the same runner works on any folder of this format.
//!
//! Implemented: `train_steps` with method `AGM` (any number of modalities) or `OGM-GE`. The
//! step is [`crate::train_step`] itself, driven with [`agm_modulation::Agm`] or
//! [`agm_modulation::OgmGe`], the SGD optimizer of [`crate::optim`] and a
//! [`agm_fusion::FusionModel`] built from the case's description (linear or conv encoders);
//! a [`crate::StepObserver`] captures the passes, mono-modal outputs and gradient snapshots.
//! `epoch_schedule` (MSLR and MSES) replays each run's per-epoch inputs through the bookkeeping
//! of [`agm_modulation::MslrSchedule`] and [`agm_modulation::MsesSchedule`], carrying out the
//! snapshot actions on a stand-in for the trainer's state (see `epoch_schedule.rs`).
//! `method_steps` (tests/fixtures/golden/METHODS.md) replays any registered method through the
//! real [`crate::Trainer`] on a tiny network and compares losses, parameters after every step and
//! the method's own numbers.
//!
//! Comparison (FORMAT.md §6): a tensor X (expected) against Y (computed) under key k has
//! `err = max|X − Y| / max(max|X|, 1e-3·G)`, with G the largest |value| over the expected float
//! tensors sharing k's prefix (all `stepK/grad_final/*`, say; a key without a sub-folder, like
//! `stepK/out`, is its own prefix). Float scalars use the relative error. Both pass at
//! [`TOLERANCE`]. Integers and booleans must match exactly. Keys and fields the runner does not
//! understand are listed as informational, not failures.
//!
//! ```no_run
//! let report = agm_train::parity::run_case(std::path::Path::new("tests/fixtures/golden/agm2"))?;
//! assert!(report.passed(), "{report}");
//! # Ok::<(), agm_train::parity::ParityError>(())
//! ```

mod case;
mod competition;
mod epoch_schedule;
mod method_steps;
mod report;
mod train_steps;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

pub use report::{CaseReport, Failure, GroupSummary};

/// Largest accepted error, relative for scalars and per §6 for tensors.
pub const TOLERANCE: f64 = 1e-10;

/// The case's description (JSON), inside its case folder.
pub const CASE_FILE: &str = "case.json";
/// The case's inputs and expected tensors, beside [`CASE_FILE`].
pub const TENSORS_FILE: &str = "tensors.safetensors";

/// Why a case could not be replayed. Numbers that differ are not errors: they are failures in the
/// [`CaseReport`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParityError {
    // The cause is part of the message, not a `source`, so error chains print it once.
    /// A case file could not be read (missing `case.json` or `tensors.safetensors`).
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },

    /// The file exists but is not what the format describes (corrupt JSON, missing or malformed
    /// field, missing or malformed tensor, a network the model cannot build).
    #[error("{path}: {message}")]
    Invalid {
        /// The file at fault (`case.json`, `tensors.safetensors`, or a file given as the case
        /// folder).
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// A known `kind` this runner does not replay. No kind is in this state now: the runner
    /// replays all four.
    #[error("{path}: kind `{kind}` is not implemented yet (tracked by the competition / baselines issue)")]
    KindNotImplemented {
        /// The case's `case.json`.
        path: PathBuf,
        /// The `kind` it names.
        kind: String,
    },

    /// A `kind` the format does not define.
    #[error(
        "{path}: unknown kind `{kind}` (allowed: train_steps, method_steps, competition_strength, epoch_schedule)"
    )]
    UnknownKind {
        /// The case's `case.json`.
        path: PathBuf,
        /// The `kind` it names.
        kind: String,
    },

    /// A known method a `train_steps` case names that the runner does not replay. Not returned
    /// now: a method other than `AGM` or `OGM-GE` is an [`ParityError::UnknownMethod`].
    #[error("{path}: method `{method}` is not implemented yet")]
    MethodNotImplemented {
        /// The case's `case.json`.
        path: PathBuf,
        /// The `method` it names.
        method: String,
    },

    /// A `train_steps` case whose `method` is neither `AGM` nor `OGM-GE`.
    #[error("{path}: unknown method `{method}` (allowed: AGM, OGM-GE)")]
    UnknownMethod {
        /// The case's `case.json`.
        path: PathBuf,
        /// The `method` it names.
        method: String,
    },

    /// The replay itself failed (a tensor operation of the model, modulator or optimizer).
    #[error("case `{case}`: the replay failed at step {step}: {source}")]
    Replay {
        /// The case's name (its `case` field, else its folder's name).
        case: String,
        /// The 1-based step being replayed or compared (0: while the case was set up, before
        /// its first step).
        step: usize,
        /// The tensor error.
        #[source]
        source: candle_core::Error,
    },
}

/// The case's name: its `case` field, else its folder's name.
pub(crate) fn case_name(json: &serde_json::Value, case_path: &Path) -> String {
    match json.get("case").and_then(serde_json::Value::as_str) {
        Some(name) => name.to_string(),
        None => {
            case_path.parent().and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        }
    }
}

impl ParityError {
    pub(crate) fn invalid(path: &Path, message: impl Into<String>) -> Self {
        Self::Invalid { path: path.to_path_buf(), message: message.into() }
    }
}

/// Replays the case in folder `dir` and compares every stored number.
pub fn run_case(dir: &Path) -> Result<CaseReport, ParityError> {
    if dir.is_file() {
        return Err(ParityError::invalid(
            dir,
            format!("a file, not a case folder (a folder holding {CASE_FILE} and tensors.safetensors)"),
        ));
    }
    let case_path = dir.join(CASE_FILE);
    let text = std::fs::read_to_string(&case_path)
        .map_err(|source| ParityError::Io { path: case_path.clone(), cause: source })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ParityError::invalid(&case_path, format!("not valid JSON: {e}")))?;
    let obj =
        json.as_object().ok_or_else(|| ParityError::invalid(&case_path, "the top level must be a JSON object"))?;
    if let Some(v) = obj.get("format_version") {
        if v.as_u64() != Some(1) {
            return Err(ParityError::invalid(&case_path, format!("format_version {v} is not supported (only 1)")));
        }
    }
    let kind = obj
        .get("kind")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| ParityError::invalid(&case_path, "missing string field `kind`"))?;
    match kind {
        "train_steps" => {
            let method = obj
                .get("method")
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| ParityError::invalid(&case_path, "missing string field `method`"))?;
            if !matches!(method, "AGM" | "OGM-GE") {
                return Err(ParityError::UnknownMethod { path: case_path, method: method.to_string() });
            }
            let tensors = load_tensors(&dir.join(TENSORS_FILE))?;
            train_steps::run(&case_path, &dir.join(TENSORS_FILE), &json, &tensors)
        }
        "epoch_schedule" => {
            let tensors = load_tensors(&dir.join(TENSORS_FILE))?;
            epoch_schedule::run(&case_path, &dir.join(TENSORS_FILE), &json, &tensors)
        }
        "method_steps" => {
            let tensors = load_tensors(&dir.join(TENSORS_FILE))?;
            method_steps::run(&case_path, &dir.join(TENSORS_FILE), &json, &tensors)
        }
        "competition_strength" => {
            let tensors = load_tensors(&dir.join(TENSORS_FILE))?;
            competition::run(&case_path, &dir.join(TENSORS_FILE), &json, &tensors)
        }
        _ => Err(ParityError::UnknownKind { path: case_path, kind: kind.to_string() }),
    }
}

/// Every tensor of a safetensors file, on the CPU.
fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>, ParityError> {
    if let Err(source) = std::fs::metadata(path) {
        return Err(ParityError::Io { path: path.to_path_buf(), cause: source });
    }
    candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| ParityError::invalid(path, format!("not a readable safetensors file: {e}")))
}
