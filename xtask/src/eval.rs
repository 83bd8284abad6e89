//! `cargo xtask eval`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agm_data::av_digits::Split;
use agm_metric::EvalReport;
use agm_train::{RunConfig, RunDir};
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

/// What `eval` evaluates: a configuration and one weights file.
#[derive(Debug)]
pub struct EvalTarget {
    pub cfg: RunConfig,
    pub weights: PathBuf,
    /// How the report names the weights: `best`, `last` or the file.
    pub label: String,
}

/// A run directory's config with its `best` or `last` weights.
fn run_dir_target(dir: &Path, which: &str) -> anyhow::Result<EvalTarget> {
    let run = RunDir::open(dir)?;
    let cfg = run.read_config()?;
    let weights = match which {
        "best" => run.best(),
        "last" => run.checkpoint(),
        other => anyhow::bail!("--checkpoint `{other}` is not known; allowed: best, last"),
    };
    if !weights.is_file() {
        if which == "best" && run.checkpoint().is_file() {
            let finished_epochs = run.metrics_rows();
            anyhow::ensure!(
                finished_epochs == 0,
                "{} is missing, although {} finished: restore the file, or evaluate the run's last checkpoint \
                 with --checkpoint last",
                weights.display(),
                crate::progress::counted(finished_epochs as u64, "epoch")
            );
            // A run stopped before its first epoch ended has a checkpoint but no best weights yet.
            anyhow::bail!(
                "{} has no best weights yet: no epoch finished; evaluate its last checkpoint with --checkpoint last, \
                 or train on with `cargo xtask train --resume {}`",
                dir.display(),
                dir.display()
            );
        }
        return Err(agm_train::TrainError::MissingRunFile { path: weights, dir: dir.to_path_buf() }.into());
    }
    Ok(EvalTarget { cfg, weights, label: which.to_string() })
}

/// The configuration and weights the arguments name: a run directory, a weights file with
/// `--dataset`/`--model`/`--data`, or a run directory's config with another weights file.
pub fn resolve(args: &EvalArgs) -> anyhow::Result<EvalTarget> {
    let external = args.dataset.is_some() || args.model.is_some() || args.recipe.is_some();
    // A run directory's data path, unless --data gives where the dataset is now.
    let moved = |mut target: EvalTarget| {
        if let Some(data) = &args.data {
            target.cfg.data.clone_from(data);
        }
        target
    };
    match (&args.run_dir, &args.weights) {
        (Some(dir), _) if external => anyhow::bail!(
            "--recipe, --dataset and --model describe --weights without a run directory, but {} has its own \
             config.toml: drop them, or drop the run directory",
            dir.display()
        ),
        (Some(dir), None) => run_dir_target(dir, &args.checkpoint).map(moved),
        (Some(dir), Some(weights)) => {
            let cfg = RunDir::open(dir)?.read_config()?;
            Ok(moved(EvalTarget { cfg, weights: weights.clone(), label: weights.display().to_string() }))
        }
        (None, Some(weights)) => {
            // The shared resolver: the dataset's (or recipe's) model unless --model says otherwise.
            let mut request = agm_train::RunRequest::default();
            if let Some(recipe) = &args.recipe {
                request = request.recipe(recipe);
            }
            let cfg = request
                .set_opt("--dataset", "dataset", args.dataset.clone())
                .set_opt("--model", "model", args.model.clone())
                .set_opt("--data", "data", args.data.clone())
                .resolve()
                .with_context(|| format!("evaluating {}", weights.display()))?
                .config;
            Ok(EvalTarget { cfg, weights: weights.clone(), label: weights.display().to_string() })
        }
        (None, None) => anyhow::bail!(
            "nothing to evaluate: give a run directory (`cargo xtask eval runs/<name>`) or a weights file \
             (`cargo xtask eval --weights <file> --dataset <id> --data <path>`)"
        ),
    }
}

/// Evaluates `target`'s weights with its config's model and data on a split; also gives the
/// dataset's modality names.
pub fn evaluate_target(target: &EvalTarget, split: Split) -> anyhow::Result<(EvalReport, Vec<String>)> {
    let cfg = &target.cfg;
    let device = cfg.device()?;
    let data = cfg.load_dataset()?;
    let model = cfg.build_model(&data, &device)?;
    agm_train::load_weights_file(model.as_ref(), &target.weights)
        .with_context(|| format!("loading weights into model `{}` (dataset `{}`)", cfg.model, cfg.dataset))?;
    let method = method_predictor(cfg, model.as_ref(), &data, &target.weights)?;
    let source = agm_train::config::dataset_split(&data, split)?;
    // As training evaluates: data padded per batch at the run's batch size.
    let batch_size = cfg.trainer_options().eval_batch_size_for(source);
    let mut bar = crate::progress::EvalBar::new(format!("evaluating on {}", split.name()));
    let report = agm_train::evaluate_with(
        model.as_ref(),
        method.as_deref(),
        source,
        batch_size,
        &device,
        &mut |done, total| bar.update(done, total),
    )?;
    bar.finish();
    Ok((report, data.modalities.names().to_vec()))
}

/// The run's method with its saved variables, when it predicts with variables of its own (MLA's
/// shared head, ReconBoost's ensemble) and the weights file holds them, so `eval` scores what
/// training scored; otherwise `None` (the model's fused logits).
fn method_predictor(
    cfg: &RunConfig,
    model: &dyn agm_core::MultimodalModel,
    data: &agm_data::LoadedDataset,
    weights: &Path,
) -> anyhow::Result<Option<Box<dyn agm_modulation::Modulator>>> {
    let Ok(mut method) = cfg.build_modulator(model, data) else { return Ok(None) };
    let vars = method.attach(model)?;
    if vars.is_empty() {
        return Ok(None);
    }
    // Weights written by a run (safetensors) also carry the method's state of their epoch.
    let Ok(saved) = agm_train::Checkpoint::load(weights, &candle_core::Device::Cpu) else { return Ok(None) };
    let tensors: Option<Vec<_>> = vars.iter().map(|v| saved.model.get(&format!("method.{}", v.name))).collect();
    match tensors {
        Some(tensors) => {
            for (v, t) in vars.iter().zip(tensors) {
                v.var.set(&t.to_dtype(v.var.dtype())?.to_device(v.var.device())?)?;
            }
            if saved.meta.contains_key("modulator") {
                method.load_state(&saved.meta_json("modulator", weights)?)?;
            }
            Ok(Some(method))
        }
        _ => Ok(None),
    }
}

/// Evaluates a run directory's `best` or `last` weights on a split.
#[cfg(test)]
pub fn evaluate_run(dir: &Path, split: Split, which: &str) -> anyhow::Result<EvalReport> {
    Ok(evaluate_target(&run_dir_target(dir, which)?, split)?.0)
}

pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let split = parse_split(&args.split)?;
    let target = resolve(&args)?;
    let (report, modalities) = evaluate_target(&target, split)?;
    println!("{} split, {} weights, {} samples", split.name(), target.label, report.samples);
    println!("accuracy {:.2}%   loss {}", 100.0 * report.accuracy, crate::progress::compact(report.loss, 4));
    for (i, name) in modalities.iter().enumerate() {
        println!(
            "  {name:<8} Shapley accuracy {:.2}%   loss {}",
            100.0 * report.modality_accuracy[i],
            crate::progress::compact(report.modality_loss[i], 4)
        );
    }
    if let Some(note) = args.run_dir.as_deref().and_then(unfinished) {
        println!("note: {note}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A note for a run directory whose training has not finished: its weights are from the epochs
/// done so far.
fn unfinished(dir: &Path) -> Option<String> {
    let run = RunDir::open(dir).ok()?;
    if run.summary().exists() {
        return None;
    }
    let planned = run.read_config().ok()?.epochs;
    Some(format!(
        "{} is unfinished ({} of {planned} epochs done): these weights are from its epochs so far; \
         `cargo xtask train --resume {}` finishes it",
        dir.display(),
        run.metrics_rows(),
        dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `eval` scores a run's best weights as training scored them, also for methods that predict
    /// with their own parts and state (ReconBoost's ensemble of the learners boosted so far; MLA).
    #[test]
    fn eval_of_a_run_repeats_its_test_numbers_for_methods_with_their_own_predictor() {
        use agm_train::run::{train_run, Concepts, RunOptions, RunStart};
        for method in ["reconboost", "mla"] {
            let cfg = RunConfig { method: method.into(), epochs: 2, ..RunConfig::av_digits() };
            let tmp = tempfile::tempdir().unwrap();
            let dir = RunDir::create(tmp.path().join("run")).unwrap();
            let opts = RunOptions { concepts: Some(Concepts::Off), ..RunOptions::default() };
            let outcome = train_run(&cfg, &dir, RunStart::New, &opts, &mut agm_train::NoCallback).unwrap();
            let again = evaluate_run(dir.root(), Split::Test, "best").unwrap();
            assert_eq!(again.accuracy, outcome.test.unwrap().accuracy, "{method}");
            // Only a run without its summary is called unfinished.
            assert_eq!(unfinished(dir.root()), None);
            std::fs::remove_file(dir.summary()).unwrap();
            let note = unfinished(dir.root()).unwrap();
            assert!(note.contains("is unfinished (2 of 2 epochs done)"), "{note}");
        }
    }

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/official/av-digits-early.ckpt_full_epoch7.pth.tar")
    }

    fn args(weights: Option<PathBuf>, model: Option<&str>) -> EvalArgs {
        EvalArgs {
            run_dir: None,
            weights,
            recipe: None,
            dataset: Some("av-digits".into()),
            model: model.map(String::from),
            data: None,
            split: "test".into(),
            checkpoint: "best".into(),
        }
    }

    #[test]
    fn eval_weights_runs_on_an_official_checkpoint() {
        let target = resolve(&args(Some(fixture()), Some("av-digits-early"))).unwrap();
        assert_eq!(target.cfg.model, "av-digits-early");
        let (report, modalities) = evaluate_target(&target, Split::Test).unwrap();
        assert!(report.samples > 0 && report.loss.is_finite(), "{report:?}");
        assert_eq!(modalities.len(), 2);
    }

    #[test]
    fn eval_weights_for_another_model_names_the_file_and_the_fix() {
        // The default model for av-digits is the late preset, which has no mm_encoder.
        let target = resolve(&args(Some(fixture()), None)).unwrap();
        let err = format!("{:#}", evaluate_target(&target, Split::Test).unwrap_err());
        assert!(err.contains("ckpt_full_epoch7.pth.tar") && err.contains("--model"), "{err}");
        assert!(err.contains("unexpected: `net.mm_encoder"), "{err}");
    }

    #[test]
    fn a_run_directory_gives_its_config_to_weights() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = RunConfig { model: "av-digits-early".into(), ..RunConfig::av_digits() };
        std::fs::write(dir.path().join("config.toml"), cfg.to_toml()).unwrap();
        let mut a = args(Some(fixture()), None);
        a.run_dir = Some(dir.path().to_path_buf());
        // --dataset describes weights without a run directory: refused with one.
        assert!(resolve(&a).unwrap_err().to_string().contains("drop them"));
        a.dataset = None;
        let target = resolve(&a).unwrap();
        assert_eq!(target.cfg, cfg);
        assert_eq!(target.weights, fixture());
        // --data says where the run's dataset is now.
        a.data = Some("moved/av-digits".into());
        assert_eq!(resolve(&a).unwrap().cfg, RunConfig { data: "moved/av-digits".into(), ..cfg });
    }

    #[test]
    fn eval_needs_a_run_directory_or_weights() {
        let err = resolve(&args(None, None)).unwrap_err().to_string();
        assert!(err.contains("--weights <file>"), "{err}");
    }
}
