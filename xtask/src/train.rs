//! `cargo xtask train`.

use std::path::Path;
use std::process::ExitCode;

use agm_data::av_digits::Split;
use agm_train::concept::default_dir;
use agm_train::{checkpoint::write_atomic, Resolved, RunConfig, RunDir};
use anyhow::Context;

use crate::cli::TrainArgs;
use crate::progress::Progress;

/// The dataset's reference settings, then `--recipe`, then `--config`, then flags.
pub fn resolve(args: &TrainArgs) -> anyhow::Result<Resolved> {
    let request = args.run.request().set_opt("--method", "method", args.method.clone()).set_opt(
        "--seed",
        "seed",
        args.seed.map(|s| s as i64),
    );
    Ok(request.resolve()?)
}

/// Heads the list of [`settings_lines`].
const SETTINGS_HEADING: &str =
    "settings that differ from the embedded default (flags win over --config, which wins over --recipe):";

/// The settings that differ from the embedded default and where each came from, one a line.
pub fn settings_lines(resolved: &Resolved) -> Vec<String> {
    resolved.settings.iter().map(|s| format!("  {s}")).collect()
}

/// `--print-config`: the provenance as comments, then the TOML.
fn print_config(resolved: &Resolved) {
    if !resolved.settings.is_empty() {
        println!("# {SETTINGS_HEADING}");
        for line in settings_lines(resolved) {
            println!("#{line}");
        }
        println!();
    }
    print!("{}", resolved.config.to_toml());
}

/// The nvcc a CUDA build would use and its release line (`nvcc 12.4 at /usr/local/cuda/bin/nvcc`),
/// looked for where `scripts/cuda-env.sh` looks: `$NVCC`, `PATH`, `$CUDA_HOME`, `$CUDA_ROOT`,
/// `/usr/local/cuda`. Checked before any build starts, so a missing toolkit costs a second.
fn nvcc_release() -> Result<String, String> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("nvcc")).collect::<Vec<_>>())
        .unwrap_or_default();
    let candidates: Vec<std::path::PathBuf> = env("NVCC")
        .into_iter()
        .chain(on_path)
        .chain(env("CUDA_HOME").map(|h| h.join("bin/nvcc")))
        .chain(env("CUDA_ROOT").map(|h| h.join("bin/nvcc")))
        .chain([std::path::PathBuf::from("/usr/local/cuda/bin/nvcc")])
        .collect();
    let nvcc = candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or("none was found ($NVCC, PATH, $CUDA_HOME, $CUDA_ROOT, /usr/local/cuda)")?;
    let out = std::process::Command::new(&nvcc)
        .arg("--version")
        .output()
        .map_err(|e| format!("{} does not run ({e})", nvcc.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let release = text
        .split("release ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .filter(|_| out.status.success())
        .ok_or_else(|| format!("`{} --version` did not print its release", nvcc.display()))?;
    Ok(format!("nvcc {release} at {}", nvcc.display()))
}

/// `--device cuda` from a binary built without CUDA: run the same command through cargo with
/// the feature on.
fn reexec_with_cuda() -> anyhow::Result<ExitCode> {
    if std::env::var_os("AGM_XTASK_CUDA_REEXEC").is_some() {
        anyhow::bail!("the cuda build still lacks CUDA support; see docs/cuda.md");
    }
    let nvcc = nvcc_release().map_err(|why| {
        anyhow::anyhow!(
            "--device cuda needs a build with the `cuda` feature, and that build needs the CUDA compiler nvcc: \
             {why}. Install the CUDA toolkit, or run `source scripts/cuda-env.sh` (nvcc from PyPI wheels), then \
             run this command again (docs/cuda.md)"
        )
    })?;
    eprintln!("this xtask was built without CUDA; rebuilding with `--features cuda` ({nvcc}; docs/cuda.md)");
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "run",
            "--release",
            "--target-dir",
            "target/xtask-cuda",
            "--package",
            "xtask",
            "--features",
            "cuda",
            "--",
        ])
        .args(std::env::args_os().skip(1))
        .env("AGM_XTASK_CUDA_REEXEC", "1")
        .current_dir(crate::workspace_root())
        .status()
        .context("running cargo to build the CUDA xtask")?;
    Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::SystemTime::now();
    let (cfg, resumed, settings) = match &args.resume {
        Some(dir) => {
            let run_dir = RunDir::open(dir).with_context(|| format!("--resume {}", dir.display()))?;
            let mut cfg = RunConfig::from_toml_file(&run_dir.config())?;
            if let Some(e) = args.run.epochs {
                cfg.epochs = e;
            }
            (cfg, Some(run_dir), Vec::new())
        }
        None => {
            let resolved = resolve(&args)?;
            if args.print_config {
                print_config(&resolved);
                return Ok(ExitCode::SUCCESS);
            }
            let settings = settings_lines(&resolved);
            (resolved.config, None, settings)
        }
    };
    // Before a new run directory exists: a missing toolkit leaves nothing behind.
    if cfg.device == "cuda" && !cfg!(feature = "cuda") {
        return reexec_with_cuda();
    }
    let resuming = resumed.is_some();
    let dir = match (resumed, &args.out) {
        (Some(run_dir), _) => run_dir,
        (None, Some(out)) if out.join("checkpoint.safetensors").exists() => anyhow::bail!(
            "{} already holds a run; continue it with `--resume {}` or choose another --out",
            out.display(),
            out.display()
        ),
        (None, Some(out)) => RunDir::create(out)?,
        // `<model>-<method>-seed<k>-<date>-<time>`, created atomically with a suffix on collision.
        (None, None) => {
            RunDir::open(crate::new_dir("runs", &format!("{}-{}-seed{}", cfg.model, cfg.method, cfg.seed))?)?
        }
    };
    let device = cfg.device()?;
    if !resuming {
        write_atomic(&dir.config(), cfg.to_toml().as_bytes())?;
    }
    let built = cfg.build(&device)?;
    let (train, validation) = (cfg.train_source(&built.data), &built.data.validation);
    let modalities = built.data.modalities.names().to_vec();
    let concepts_dir = args.concepts.clone().unwrap_or_else(|| default_dir(&cfg.dataset, &cfg.data_preset));
    let (probe, concepts) = if args.no_concepts {
        crate::concept::attach_in(&cfg, &built.data, concepts_dir)?
    } else {
        crate::concept::attach_or_train(&cfg, &built.data, concepts_dir)?
    };
    let mut trainer =
        cfg.trainer(built.model.as_ref(), built.modulator, &built.data, &device)?.with_run_dir(dir.clone());
    if let Some(probe) = probe {
        trainer = trainer.with_competition(Box::new(probe));
    }
    if resuming {
        trainer.resume()?;
    }
    // Only methods that run the masked passes say how they run them.
    let shapley = match trainer.modulator().forward_plan() {
        agm_modulation::ForwardPlan::Shapley => {
            format!(", Shapley passes {}", cfg.describe_shapley(built.model.as_ref()))
        }
        agm_modulation::ForwardPlan::Full => String::new(),
    };
    let dataset = match cfg.dataset.as_str() {
        "av-digits" => format!("av-digits ({} preset)", cfg.data_preset),
        other => other.to_string(),
    };
    println!(
        "{} {} with {} on {dataset} ({} train samples{}), {} epoch{}, seed {}, device {} -> {}",
        if resuming { "resuming" } else { "training" },
        cfg.method,
        cfg.model,
        train.len(),
        shapley,
        cfg.epochs,
        if cfg.epochs == 1 { "" } else { "s" },
        cfg.seed,
        cfg.device,
        dir.root().display()
    );
    if !settings.is_empty() {
        println!("{SETTINGS_HEADING}");
        settings.iter().for_each(|line| println!("{line}"));
    }
    let mut progress = Progress::new(modalities.clone(), args.quiet, args.stop_after_steps);
    let summary = trainer.fit(train.as_ref(), validation, &mut progress)?;
    progress.finish();
    if summary.stopped_early && summary.epochs_done < cfg.epochs {
        println!(
            "stopped at step {}; continue with `cargo xtask train --resume {}`",
            summary.global_step,
            dir.root().display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let test = crate::eval::evaluate_run(dir.root(), Split::Test, "best")?;
    print_summary(&cfg, &summary, &test, &modalities, dir.root());
    println!("{}", concepts.summary_line(&cfg, &summary, &modalities));
    crate::provenance::write_summary(&dir, &summary, &test, &cfg, started)?;
    crate::report::write_after_train(dir.root());
    Ok(ExitCode::SUCCESS)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// Saturated AGM coefficients reach 1e308: scientific notation keeps them one word long.
fn coefficient(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{v:.3e}")
    } else {
        format!("{v:.3}")
    }
}

fn print_summary(
    cfg: &RunConfig,
    run: &agm_train::RunSummary,
    test: &agm_metric::EvalReport,
    modalities: &[String],
    dir: &Path,
) {
    println!();
    println!("== summary: {} on {} (seed {}) ==", cfg.method, cfg.dataset, cfg.seed);
    println!(
        "best epoch (validation): {} of {}, validation accuracy {}",
        run.best_epoch,
        run.epochs_done,
        pct(run.best_accuracy)
    );
    println!("test accuracy of the best weights: {} on {} samples", pct(test.accuracy), test.samples);
    for (i, name) in modalities.iter().enumerate() {
        println!(
            "  {name:<8} Shapley accuracy {:>6}   loss {:.3}",
            pct(test.modality_accuracy[i]),
            test.modality_loss[i]
        );
    }
    if let Some(last) = &run.last {
        if let Some(c) = &last.last_coefficients {
            let names = crate::report::value_names(modalities, c.len(), "coefficient");
            let c: Vec<String> = names.iter().zip(c).map(|(n, v)| format!("{n} {}", coefficient(*v))).collect();
            println!("final coefficients: {}", c.join(" / "));
        }
        println!("mean step time (last epoch): {:.2} ms", 1e3 * last.mean_step_seconds);
    }
    println!("run directory: {} (config.toml, metrics.jsonl, best.safetensors, summary.json)", dir.display());
    println!("evaluate again with `cargo xtask eval {} --split test`", dir.display());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::RunFlags;

    /// Two epochs into `out`, concepts beside it (trained there on the first run).
    fn args(out: &Path) -> TrainArgs {
        TrainArgs {
            run: RunFlags { epochs: Some(2), ..RunFlags::default() },
            out: Some(out.to_path_buf()),
            concepts: Some(out.with_file_name("concepts")),
            quiet: true,
            ..TrainArgs::default()
        }
    }

    #[test]
    fn train_stop_resume_and_eval_through_the_cli() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        run(TrainArgs { stop_after_steps: Some(35), ..args(&out) }).unwrap();
        assert!(out.join("checkpoint.safetensors").exists() && !out.join("summary.json").exists());
        // A second plain run into the same folder would overwrite it: refused.
        let err = run(args(&out)).unwrap_err().to_string();
        assert!(err.contains("--resume"), "{err}");
        let concepts = Some(dir.path().join("concepts"));
        run(TrainArgs { resume: Some(out.clone()), quiet: true, concepts, ..TrainArgs::default() }).unwrap();
        assert!(out.join("summary.json").exists() && out.join("best.safetensors").exists());
        // The first run trained the default's concepts, so every epoch measured competition strength.
        assert!(dir.path().join("concepts/audio.json").is_file() && dir.path().join("concepts/visual.json").is_file());
        let rows: Vec<agm_train::EpochSummary> = RunDir::open(&out).unwrap().read_metrics().unwrap();
        assert!(rows.iter().all(|r| r.competition.as_ref().is_some_and(|c| c.len() == 2)), "{rows:?}");
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        let provenance = &summary["provenance"];
        assert_eq!(provenance["agm_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(provenance["device"], "cpu");
        assert!(provenance["started"].as_str().unwrap() <= provenance["finished"].as_str().unwrap(), "{provenance}");
        assert!(provenance["threads"].as_u64().unwrap() >= 1 && provenance["command_line"].is_array(), "{provenance}");
        let report = crate::eval::evaluate_run(&out, Split::Test, "best").unwrap();
        assert_eq!(report.samples, 600);
        assert!(report.accuracy > 0.5, "two epochs learn something: {}", report.accuracy);
    }

    #[test]
    fn an_error_prints_its_cause_once() {
        let err = run(TrainArgs { resume: Some("no/such/run".into()), ..TrainArgs::default() }).unwrap_err();
        let shown = format!("{err:#}");
        assert_eq!(shown.matches("run directory not found").count(), 1, "{shown}");
        let err = resolve(&flags(RunFlags { config: Some("no/such.toml".into()), ..RunFlags::default() })).unwrap_err();
        let shown = format!("{err:#}");
        assert!(shown.contains("no/such.toml"), "{shown}");
        assert_eq!(shown.matches("os error").count(), 1, "{shown}");
    }

    fn flags(run: RunFlags) -> TrainArgs {
        TrainArgs { run, ..TrainArgs::default() }
    }

    #[test]
    fn flags_override_the_config_file_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, "epochs = 7\nmethod = \"joint\"\n").unwrap();
        let cfg = resolve(&TrainArgs {
            seed: Some(4),
            ..flags(RunFlags { config: Some(path.clone()), ..RunFlags::default() })
        })
        .unwrap()
        .config;
        assert_eq!((cfg.epochs, cfg.method.as_str(), cfg.seed), (7, "joint", 4));
        let err = resolve(&flags(RunFlags { lr: Some(-1.0), ..RunFlags::default() })).unwrap_err().to_string();
        assert!(err.contains("lr"), "{err}");
        let err = resolve(&flags(RunFlags { alpha: Some(f64::NAN), ..RunFlags::default() })).unwrap_err().to_string();
        assert!(err.contains("alpha"), "{err}");
        let err =
            resolve(&flags(RunFlags { device: Some("tpu".into()), ..RunFlags::default() })).unwrap_err().to_string();
        assert!(err.contains("tpu") && err.contains("cuda"), "{err}");
        std::fs::write(&path, "[optimizer]\nlr = \"fast\"\n").unwrap();
        let err =
            resolve(&flags(RunFlags { config: Some(path.clone()), ..RunFlags::default() })).unwrap_err().to_string();
        assert!(err.contains("run.toml"), "{err}");
    }

    #[test]
    fn a_dataset_flag_brings_its_reference_settings_and_the_header_names_them() {
        let resolved = resolve(&flags(RunFlags {
            dataset: Some("avmnist".into()),
            data: Some("some/folder".into()),
            ..RunFlags::default()
        }))
        .unwrap();
        let cfg = &resolved.config;
        assert_eq!((cfg.model.as_str(), cfg.epochs, cfg.batch_size, cfg.agm.alpha), ("avmnist-late", 999, 64, 2.5));
        assert_eq!(cfg.optimizer.lr(), 1e-4);
        let lines = settings_lines(&resolved).join("\n");
        assert!(lines.contains("epochs = 999 (avmnist default)"), "{lines}");
        assert!(lines.contains("data = \"some/folder\" (flag --data)"), "{lines}");
    }

    #[test]
    fn flags_win_over_a_recipe_and_the_header_says_so() {
        let resolved = resolve(&TrainArgs {
            method: Some("joint".into()),
            ..flags(RunFlags {
                recipe: Some("cremad-agm-late".into()),
                data: Some("d".into()),
                lr: Some(0.02),
                ..RunFlags::default()
            })
        })
        .unwrap();
        assert_eq!((resolved.config.method.as_str(), resolved.config.optimizer.lr()), ("joint", 0.02));
        assert_eq!(resolved.config.agm.alpha, 1.5);
        let lines = settings_lines(&resolved).join("\n");
        assert!(lines.contains("method = \"joint\" (flag --method; wins over recipe cremad-agm-late)"), "{lines}");
        assert!(lines.contains("optimizer.lr = 0.02 (flag --lr; wins over recipe cremad-agm-late)"), "{lines}");
        assert!(lines.contains("agm.alpha = 1.5 (recipe cremad-agm-late)"), "{lines}");
        let err = resolve(&flags(RunFlags { recipe: Some("cremad-magic".into()), ..RunFlags::default() }))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cremad-magic") && err.contains("cremad-agm-late") && err.contains("avmnist-joint-late"),
            "{err}"
        );
    }
}
