//! `cargo xtask eval`.

use std::path::Path;
use std::process::ExitCode;

use agm_data::av_digits::Split;
use agm_metric::EvalReport;
use agm_train::{Checkpoint, RunConfig, RunDir};
use anyhow::Context;

use crate::cli::EvalArgs;

fn parse_split(s: &str) -> anyhow::Result<Split> {
    Ok(match s {
        "train" => Split::Train,
        "dep" => Split::Dep,
        "validation" | "val" => Split::Validation,
        "test" => Split::Test,
        other => anyhow::bail!("--split `{other}` is not known; allowed: train, dep, validation, test"),
    })
}

/// Evaluates a run directory's `best` or `last` weights on a split.
pub fn evaluate_run(dir: &Path, split: Split, which: &str) -> anyhow::Result<EvalReport> {
    let run = RunDir::open(dir)?;
    let cfg = RunConfig::from_toml_file(&run.config())?;
    let device = cfg.device()?;
    let path = match which {
        "best" => run.best(),
        "last" => run.checkpoint(),
        other => anyhow::bail!("--checkpoint `{other}` is not known; allowed: best, last"),
    };
    let ck = Checkpoint::load(&path, &device)?;
    let data = cfg.load_dataset()?;
    let model = cfg.build_model(&data, &device)?;
    agm_train::checkpoint::load_weights(model.as_ref(), &ck.model)
        .with_context(|| format!("loading weights from {}", path.display()))?;
    let report = agm_train::evaluate(model.as_ref(), agm_train::config::dataset_split(&data, split)?, 256, &device)?;
    Ok(report)
}

pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let split = parse_split(&args.split)?;
    let report = evaluate_run(&args.run_dir, split, &args.checkpoint)?;
    let cfg = RunConfig::from_toml_file(&RunDir::open(&args.run_dir)?.config())?;
    let data = cfg.load_dataset()?;
    println!("{} split, {} weights, {} samples", split.name(), args.checkpoint, report.samples);
    println!("accuracy {:.2}%   loss {:.4}", 100.0 * report.accuracy, report.loss);
    for (i, name) in data.modalities.names().iter().enumerate() {
        println!(
            "  {name:<8} Shapley accuracy {:.2}%   loss {:.4}",
            100.0 * report.modality_accuracy[i],
            report.modality_loss[i]
        );
    }
    Ok(ExitCode::SUCCESS)
}
