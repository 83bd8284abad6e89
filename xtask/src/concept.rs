//! `cargo xtask concept`: trains the mono-modal concepts of a dataset (the logits of each
//! modality's uni-modal model) that the competition-strength metric regresses on, and the glue
//! that lets `cargo xtask train` measure that metric whenever the concepts exist.

use std::process::ExitCode;

use agm_train::concept::{
    check_concept_dataset, check_concept_folder, concept_modalities, concept_request, default_dir, train_concept,
    ConceptSet,
};
use agm_train::run::ConceptStatus;
use agm_train::{RunConfig, RunSummary};

use crate::cli::ConceptArgs;
use crate::progress::Progress;

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// The concept run's configuration: the concept settings every concept training starts from
/// (also a run's, training its missing concepts) with the flags on top.
fn resolve(args: &ConceptArgs) -> anyhow::Result<RunConfig> {
    let request = concept_request(&args.dataset)
        .set("--seed", "seed", args.seed as i64)
        .set_opt("--preset", "data_preset", args.preset.clone())
        .set_opt("--epochs", "epochs", args.epochs.map(|e| e as i64));
    Ok(request.resolve()?.config)
}

pub fn run(args: ConceptArgs) -> anyhow::Result<ExitCode> {
    // Before the settings: a paper dataset would otherwise ask for files that do not help.
    check_concept_dataset(&args.dataset)?;
    let cfg = resolve(&args)?;
    let out = args.out.clone().unwrap_or_else(|| default_dir(&cfg.dataset, &cfg.data_preset));
    // Before anything trains: the files would be written beside a run's, then fail to load.
    check_concept_folder(&out)?;
    let data = cfg.load_av_digits()?;
    let modalities = concept_modalities(data.modalities(), args.modality.as_deref())?;
    println!(
        "training the {} concept{} of {} ({} preset): uni-modal late models, joint training, {} epochs, seed {} -> {}",
        modalities.join(" and "),
        if modalities.len() > 1 { "s" } else { "" },
        cfg.dataset,
        cfg.data_preset,
        cfg.epochs,
        cfg.seed,
        out.display()
    );
    for m in &modalities {
        println!("== {m} ==");
        let mut progress = Progress::new(vec![m.clone()], false, None);
        let manifest = train_concept(&cfg, m, &out, &mut progress)?;
        progress.finish();
        println!(
            "{m} concept: uni-modal validation accuracy {}, test accuracy {} (best epoch {} of {}) -> {}",
            pct(manifest.validation_accuracy),
            pct(manifest.test_accuracy),
            manifest.best_epoch,
            manifest.epochs,
            out.join(&manifest.tensors).display()
        );
    }
    let set = ConceptSet::load_for(&cfg, &out)?;
    match set.map(|s| s.missing(data.modalities())).filter(|m| m.is_empty()) {
        Some(_) if out == default_dir(&cfg.dataset, &cfg.data_preset) => println!(
            "every modality has its concept: `cargo xtask train --preset {}` now measures competition strength",
            cfg.data_preset
        ),
        Some(_) => println!("every modality has its concept in {}", out.display()),
        None => println!(
            "competition strength needs a concept for every modality; add the others with `cargo xtask concept \
             --dataset {} --preset {}`",
            cfg.dataset, cfg.data_preset
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// The summary line of `train`: the last epoch's strengths, or how to create the concepts.
pub fn summary_line(status: &ConceptStatus, cfg: &RunConfig, run: &RunSummary, modalities: &[String]) -> String {
    if !status.supported {
        return format!(
            "competition strength: not measured (mono-modal concepts are trained for av-digits only; `{}` has none)",
            cfg.dataset
        );
    }
    if !status.missing.is_empty() {
        let only = if status.missing.len() < modalities.len() {
            format!(" --modality {}", status.missing.join(","))
        } else {
            String::new()
        };
        return format!(
            "competition strength: not measured (no concept for {} in {}); create {} with \
             `cargo xtask concept --dataset {} --preset {}{only}` and train again",
            status.missing.join(", "),
            status.dir.display(),
            if status.missing.len() > 1 { "them" } else { "it" },
            cfg.dataset,
            cfg.data_preset
        );
    }
    match run.last.as_ref().and_then(|e| e.competition.as_ref()) {
        Some(r) => {
            let parts: Vec<String> =
                modalities.iter().zip(r).map(|(m, v)| format!("{m} {}", crate::progress::compact(*v, 3))).collect();
            format!(
                "competition strength (validation, last epoch; 0: the modality's concept is linearly in the \
                 fused feature, ~1: absent): {}   [concepts: {}]",
                parts.join(" / "),
                status.dir.display()
            )
        }
        None => format!("competition strength: concepts in {}, but no epoch was measured", status.dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_resolve_and_bad_values_are_named() {
        let args = ConceptArgs {
            dataset: "av-digits".into(),
            modality: Some("visual".into()),
            preset: Some("balanced".into()),
            seed: 3,
            epochs: Some(2),
            out: None,
        };
        let cfg = resolve(&args).unwrap();
        assert_eq!((cfg.method.as_str(), cfg.data_preset.as_str(), cfg.seed, cfg.epochs), ("joint", "balanced", 3, 2));
        // Without --seed and --epochs: the settings a run trains its missing concepts with.
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(["cargo xtask", "concept", "--preset", "balanced"]).unwrap();
        let crate::cli::Command::Concept(defaults) = cli.command else { panic!("not a concept command") };
        let mut run =
            RunConfig { data_preset: "balanced".into(), epochs: 1, seed: 7, batch_size: 8, ..RunConfig::av_digits() };
        run.optimizer = agm_train::optim::OptimizerConfig::Sgd(agm_train::optim::SgdConfig::agm_reference(0.3));
        assert_eq!(resolve(&defaults).unwrap(), agm_train::concept::concept_config(&run).unwrap());
        let err = resolve(&ConceptArgs { preset: Some("loud".into()), ..args.clone() }).unwrap_err().to_string();
        assert!(err.contains("loud"), "{err}");
        let err = resolve(&ConceptArgs { dataset: "mnist".into(), ..args }).unwrap_err().to_string();
        assert!(err.contains("mnist"), "{err}");
    }

    #[test]
    fn a_dataset_without_concept_models_is_refused_before_anything_starts() {
        let tmp = tempfile::tempdir().unwrap();
        for dataset in ["avmnist", "synthetic"] {
            let out = tmp.path().join(dataset);
            let args = ConceptArgs {
                dataset: dataset.into(),
                modality: None,
                preset: None,
                seed: 0,
                epochs: None,
                out: Some(out.clone()),
            };
            let err = format!("{:#}", run(args).unwrap_err());
            assert!(err.contains("mono-modal concepts are trained for av-digits only"), "{err}");
            assert!(err.contains(&format!("dataset `{dataset}` has no uni-modal concept model")), "{err}");
            assert!(!err.contains("--data"), "concept has no --data flag: {err}");
            assert!(!out.exists(), "nothing is written for {dataset}");
        }
    }

    /// The audio concept of AV-Digits, one epoch, into `out`.
    fn one_epoch_of_audio(out: &std::path::Path) -> ConceptArgs {
        ConceptArgs {
            dataset: "av-digits".into(),
            modality: Some("audio".into()),
            preset: None,
            seed: 0,
            epochs: Some(1),
            out: Some(out.to_path_buf()),
        }
    }

    #[test]
    fn a_run_directory_as_out_is_refused_before_training() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("config.toml"), RunConfig::av_digits().to_toml()).unwrap();
        let err = format!("{:#}", run(one_epoch_of_audio(tmp.path())).unwrap_err());
        assert!(err.contains(&format!("{} is a run directory", tmp.path().display())), "{err}");
        assert!(!tmp.path().join("audio.safetensors").exists() && !tmp.path().join(".audio-run").exists());
    }

    #[test]
    fn concept_cli_writes_the_folder_that_train_then_finds() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("c");
        run(one_epoch_of_audio(&out)).unwrap();
        let set = ConceptSet::load(&out).unwrap().unwrap();
        assert_eq!(set.modalities(), ["audio"]);
        // A train run in a folder without concepts says how to create them.
        let cfg = RunConfig::av_digits();
        let data = cfg.load_av_digits().unwrap();
        let status = ConceptStatus {
            dir: default_dir(&cfg.dataset, &cfg.data_preset),
            missing: vec!["visual".into()],
            supported: true,
        };
        let run = RunSummary {
            epochs_done: 1,
            global_step: 1,
            best_epoch: 1,
            best_accuracy: 0.5,
            last: None,
            stopped_early: false,
            stopped_by_method: false,
        };
        let line = summary_line(&status, &cfg, &run, data.modalities().names());
        assert!(
            line.contains("cargo xtask concept --dataset av-digits --preset noisy-audio --modality visual"),
            "{line}"
        );
    }
}
