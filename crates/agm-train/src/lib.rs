//! The agm training loop as a library.
//!
//! A [`Trainer`] runs the step order of ARCHITECTURE.md (forward passes, the modulator's
//! objective, backward, gradient edits, conditional clipping, optimizer step) over epochs,
//! evaluates on the validation split and, given a run directory ([`Trainer::with_run_dir`]),
//! keeps the best weights there and checkpoints so a stopped run resumes exactly (without one,
//! the model ends with its last epoch's weights). [`RunConfig`] builds everything from a TOML
//! file for `cargo xtask train`.
//!
//! Libraries never print: drivers observe through [`Callback`].

#![warn(missing_docs)]

pub mod checkpoint;
pub mod concept;
pub mod config;
mod error;
pub mod evaluate;
pub mod memory;
pub mod optim;
pub mod parity;
pub mod recipes;
pub mod resolve;
pub mod run;
mod run_dir;
pub mod state_dict;
pub mod step;
mod trainer;

// The crates of its signatures (tensors, JSON state, TOML settings), at agm's versions.
pub use agm_core::BatchSource;
pub use checkpoint::Checkpoint;
pub use config::RunConfig;
pub use error::{Result, TrainError};
pub use evaluate::{evaluate, evaluate_observed, evaluate_with};
pub use memory::peak_memory_bytes;
pub use resolve::{Resolved, RunRequest};
pub use run_dir::{RunDir, RunLock};
pub use state_dict::{load_weights, load_weights_file, read_state_dict, KeyMismatch};
pub use step::{train_step, ClipReport, GradStage, LossReduction, StepObserver, StepOutcome, StepParts};
pub use {candle_core, serde_json, toml};
/// The README's code blocks, compiled as doc tests so its library example cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

pub use trainer::{
    Callback, CompetitionProbe, EpochSummary, Flow, NoCallback, RunSummary, StepSummary, Trainer, TrainerOptions,
};
