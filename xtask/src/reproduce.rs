//! `cargo xtask reproduce <dataset> --data <path> --seeds N`: every recipe of a dataset over
//! seeds, trained as `study` trains them (a finished run of the same configuration is reused),
//! then one table beside the published numbers.
//!
//! ```text
//! <out>/<recipe>-seed<k>/   one run directory each
//! <out>/reproduce.md        the table
//! <out>/reproduce.json      the table's numbers and every run's record
//! ```
//!
//! A setting changed from a recipe's (`--epochs`, `--batch-size`) and data smaller than the
//! release are named atop the table: those numbers are not comparable with the published ones.
//! The folder is locked while a reproduction runs, and a run of other settings is never deleted,
//! as in `study`.
//!
//! Two protocols are reported. Ours selects the epoch on validation and reports test accuracy.
//! The reference's picks the best epoch on the split it evaluates every epoch (test for AV-MNIST
//! and CREMA-D, validation elsewhere): comparable with its numbers, but optimistic.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use agm_train::{checkpoint::write_atomic, recipes, RunRequest};
use serde::Serialize;

use crate::cli::ReproduceArgs;
use crate::progress::counted;
use crate::stats::MeanCi;
use crate::study::{plan_all, run_planned, stop_on_ctrl_c, OutFolder, RunResult};

const REPRODUCE_FOLDER: OutFolder =
    OutFolder { kind: "reproduction", runs_per: "recipe", files: &["reproduce.md", "reproduce.json"] };

/// A number someone published for a recipe's setting.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Published {
    /// The recipe closest to the published setting.
    pub recipe: &'static str,
    /// Accuracy in percent.
    pub accuracy: f64,
    /// Where the number comes from, and how its setting differs from the recipe's.
    pub source: &'static str,
}

const BALANCE_BENCHMARK: &str = "BalanceBenchmark (arXiv 2502.10816; its repository's results table), its own \
                                 setup: 30 epochs, AdamW lr 1e-3, batch 32, AGM alpha 0.1 over the whole run";
const AGM_PAPER_VIA_G2D: &str =
    "AGM paper, as quoted by G2D (ICCV 2025, arXiv 2506.21514); not checked against either paper's text";

/// Published numbers by recipe.
pub const PUBLISHED: &[Published] = &[
    Published { recipe: "avmnist-joint-late", accuracy: 69.77, source: AGM_PAPER_VIA_G2D },
    Published { recipe: "avmnist-agm-late", accuracy: 72.14, source: AGM_PAPER_VIA_G2D },
    Published { recipe: "cremad-joint-late", accuracy: 67.47, source: AGM_PAPER_VIA_G2D },
    Published { recipe: "cremad-agm-late", accuracy: 78.48, source: AGM_PAPER_VIA_G2D },
    Published { recipe: "cremad-joint-late", accuracy: 65.50, source: BALANCE_BENCHMARK },
    Published { recipe: "cremad-agm-late", accuracy: 71.59, source: BALANCE_BENCHMARK },
    Published { recipe: "mosei-joint", accuracy: 78.99, source: BALANCE_BENCHMARK },
    Published { recipe: "mosei-agm", accuracy: 79.86, source: BALANCE_BENCHMARK },
];

/// One recipe's row.
#[derive(Clone, Debug, Serialize)]
pub struct RecipeRow {
    pub recipe: String,
    pub method: String,
    pub model: String,
    pub epochs: usize,
    /// Settings changed from the recipe's, `key = value (the recipe's: value)`.
    pub overridden: Vec<String>,
    pub runs: usize,
    /// Test accuracy of the best-validation epoch.
    pub ours: MeanCi,
    /// The best epoch on the reference's evaluation split.
    pub reference_protocol: MeanCi,
    pub published: Vec<Published>,
}

impl RecipeRow {
    pub fn of(recipe: &str, base: &agm_train::RunConfig, overridden: Vec<String>, runs: &[RunResult]) -> Self {
        let ci = |f: &dyn Fn(&RunResult) -> f64| MeanCi::of(&runs.iter().map(f).collect::<Vec<_>>());
        Self {
            recipe: recipe.into(),
            method: base.method.clone(),
            model: base.model.clone(),
            epochs: base.epochs,
            overridden,
            runs: runs.len(),
            ours: ci(&|r| r.test.accuracy),
            reference_protocol: ci(&|r| r.reference_protocol_accuracy.unwrap_or(f64::NAN)),
            published: PUBLISHED.iter().filter(|p| p.recipe == recipe).copied().collect(),
        }
    }
}

/// The evaluation split the reference picks its epoch on, in words.
fn reference_split(dataset: &str) -> &'static str {
    match dataset.parse::<agm_data::DatasetId>() {
        Ok(id) if id.reference_selects_on_test() => "test",
        _ => "validation",
    }
}

/// `reproduce.md`; `data_note` says how the data differs from the release, if it does.
pub fn markdown(dataset: &str, seeds: u64, data_note: Option<&str>, rows: &[RecipeRow]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Reproduction: {dataset}, {} per recipe\n", counted(seeds, "seed"));
    let changed: Vec<&RecipeRow> = rows.iter().filter(|r| !r.overridden.is_empty()).collect();
    if !changed.is_empty() || data_note.is_some() {
        md.push_str("**Not comparable with the published numbers:**\n\n");
        for r in changed {
            let _ = writeln!(
                md,
                "- `{}` ran with settings changed from the recipe's: {}",
                r.recipe,
                r.overridden.join(", ")
            );
        }
        if let Some(note) = data_note {
            let _ = writeln!(md, "- {note}");
        }
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "Accuracy in percent, mean over seeds ± the half-width of its 95% confidence interval (Student t). \
         *Ours*: the test accuracy of the epoch chosen on validation. *Reference protocol*: the best epoch's \
         accuracy on the {} split, which the reference evaluates every epoch and reports its best of \
         (optimistic: it selects on the split it reports). Published numbers come from other setups; the \
         source column says which.\n",
        reference_split(dataset)
    );
    md.push_str(
        "| recipe | method | model | epochs | runs | ours: test acc. | reference protocol | published | source |\n",
    );
    md.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let published = if r.published.is_empty() {
            vec![("—".to_string(), "none known".to_string())]
        } else {
            r.published.iter().map(|p| (format!("{:.2}", p.accuracy), p.source.to_string())).collect()
        };
        for (i, (value, source)) in published.into_iter().enumerate() {
            let lead = if i == 0 {
                format!(
                    "| {} | {} | {} | {} | {} | {} | {} ",
                    r.recipe,
                    r.method,
                    r.model,
                    r.epochs,
                    r.runs,
                    r.ours.show(100.0, 2),
                    r.reference_protocol.show(100.0, 2)
                )
            } else {
                "| | | | | | | ".to_string()
            };
            let _ = writeln!(md, "{lead}| {value} | {source} |");
        }
    }
    md
}

/// Where the data is smaller than the release the published numbers come from.
fn smaller_than_release(cfg: &agm_train::RunConfig) -> anyhow::Result<Option<String>> {
    let id: agm_data::DatasetId = cfg.dataset.parse()?;
    let root = agm_data::hub::resolve_data_path(&cfg.data, &agm_data::hub::HubOptions::from_env())?;
    Ok(agm_data::loaders::smaller_than_release(id, &root)?)
}

pub fn run(args: ReproduceArgs) -> anyhow::Result<ExitCode> {
    crate::study::check_seeds(args.seeds)?;
    let mut chosen = recipes::for_dataset(&args.dataset);
    if chosen.is_empty() {
        let datasets: std::collections::BTreeSet<String> =
            recipes::RECIPES.iter().filter_map(|r| r.dataset().ok()).collect();
        anyhow::bail!(
            "no recipe is for dataset `{}`; datasets with recipes: {}",
            args.dataset,
            datasets.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    if let Some(list) = &args.recipes {
        let names = crate::study::name_list(list, "--recipes", "recipe")?;
        for name in &names {
            let recipe = recipes::find(name)?;
            if !chosen.iter().any(|r| r.name == recipe.name) {
                anyhow::bail!("recipe `{name}` is not for dataset `{}`", args.dataset);
            }
        }
        chosen.retain(|r| names.contains(&r.name));
    }
    // Every recipe's settings and the data's files are checked before anything is created; what
    // the flags change from each recipe's settings is kept for the table.
    let configs = chosen
        .iter()
        .map(|recipe| {
            let as_published = RunRequest::default()
                .recipe(recipe.name)
                .set("--data", "data", args.data.clone())
                .set_opt("--device", "device", args.device.clone());
            let published = as_published.clone().resolve()?.config;
            let cfg = as_published
                .set_opt("--epochs", "epochs", args.epochs.map(|e| e as i64))
                .set_opt("--batch-size", "batch_size", args.batch_size.map(|b| b as i64))
                .resolve()?
                .config;
            let overridden = crate::study::differences_from(&cfg, &published, "the recipe's");
            Ok((cfg, overridden))
        })
        .collect::<anyhow::Result<Vec<(agm_train::RunConfig, Vec<String>)>>>()?;
    let data_note = match configs.first() {
        Some((first, _)) => {
            first.check_input_files()?;
            smaller_than_release(first)?
        }
        None => None,
    };
    let out = match args.out.clone() {
        Some(out) => out,
        None => crate::new_dir("runs", &format!("reproduce-{}", args.dataset))?,
    };
    // Held until the reproduction ends: a second one on this folder is refused.
    let _lock = REPRODUCE_FOLDER.claim(&out)?;
    let runs: Vec<(agm_train::RunConfig, PathBuf)> = chosen
        .iter()
        .zip(&configs)
        .flat_map(|(recipe, (base, _))| {
            (0..args.seeds).map(|seed| {
                let dir = out.join(format!("{}-seed{seed}", recipe.name));
                (agm_train::RunConfig { seed, ..base.clone() }, dir)
            })
        })
        .collect();
    let mut planned = runs.iter().zip(plan_all(&runs, &out)?);
    println!(
        "reproduce: {} of {} × {} -> {}",
        counted(chosen.len() as u64, "recipe"),
        args.dataset,
        counted(args.seeds, "seed"),
        out.display()
    );
    stop_on_ctrl_c(runs.len(), &out);
    let mut rows = Vec::new();
    let mut all = Vec::new();
    for (recipe, (base, overridden)) in chosen.into_iter().zip(configs) {
        let mut results = Vec::new();
        // The runs are in recipe order, `--seeds` of each.
        for ((cfg, dir), plan) in planned.by_ref().take(args.seeds as usize) {
            let started = std::time::Instant::now();
            let (result, reused) = run_planned(cfg, dir, plan, None)?;
            if !args.quiet {
                println!(
                    "  {:<22} seed {:<3} test {:.2}%, reference protocol {}, {}",
                    recipe.name,
                    cfg.seed,
                    100.0 * result.test.accuracy,
                    result.reference_protocol_accuracy.map_or("n/a".into(), |a| format!("{:.2}%", 100.0 * a)),
                    if reused { "reused".to_string() } else { format!("{:.1} s", started.elapsed().as_secs_f64()) }
                );
            }
            results.push(result);
        }
        rows.push(RecipeRow::of(recipe.name, &base, overridden, &results));
        all.extend(results);
    }
    let md = markdown(&args.dataset, args.seeds, data_note.as_deref(), &rows);
    write_atomic(&out.join("reproduce.md"), md.as_bytes())?;
    let json = serde_json::json!({ "dataset": args.dataset, "seeds": args.seeds, "rows": rows, "runs": all });
    write_atomic(&out.join("reproduce.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    println!();
    print!("{md}");
    println!("\ntable: {}", out.join("reproduce.md").display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_published_number_names_a_recipe() {
        for p in PUBLISHED {
            recipes::find(p.recipe).unwrap();
            assert!(p.accuracy > 0.0 && p.accuracy < 100.0);
        }
    }

    #[test]
    fn seeds_are_bounded_before_anything_is_resolved() {
        for seeds in [0, 1_000_000_000_000] {
            let err = run(ReproduceArgs {
                dataset: "avmnist".into(),
                data: "/nonexistent".into(),
                seeds,
                recipes: None,
                epochs: None,
                batch_size: None,
                device: None,
                out: None,
                quiet: true,
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains(&format!("--seeds {seeds} is out of range: pass 1 to 10000")), "{err}");
        }
    }

    #[test]
    fn a_shortened_reproduction_on_avmnist_writes_its_table() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("avmnist");
        agm_data::loaders::avmnist::write_random_folder(&data, 24, 12, 0).unwrap();
        let out = dir.path().join("out");
        run(ReproduceArgs {
            recipes: Some("avmnist-joint-late,avmnist-agm-late".into()),
            out: Some(out.clone()),
            ..args(&data)
        })
        .unwrap();
        let md = std::fs::read_to_string(out.join("reproduce.md")).unwrap();
        // Every setting the flags changed from the recipe's, and the small data, are named.
        assert!(md.contains("# Reproduction: avmnist, 1 seed per recipe"), "{md}");
        assert!(md.contains("**Not comparable with the published numbers:**"), "{md}");
        assert!(
            md.contains(
                "- `avmnist-agm-late` ran with settings changed from the recipe's: batch_size = 8 (the recipe's: 64), \
                 epochs = 1 (the recipe's: 999)"
            ),
            "{md}"
        );
        assert!(
            md.contains("- the data holds 24 / 12 train / test rows; the released AV-MNIST has 60000 / 10000"),
            "{md}"
        );
        assert!(md.contains("| avmnist-agm-late | agm | avmnist-late | 1 | 1 |"), "{md}");
        assert!(md.contains("| 72.14 | AGM paper, as quoted by G2D"), "{md}");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("reproduce.json")).unwrap()).unwrap();
        // AV-MNIST's reference protocol reads the test split the run recorded every epoch.
        assert!(json["runs"][0]["reference_protocol_accuracy"].as_f64().is_some(), "{json}");
        let err = run(ReproduceArgs {
            data: String::new(),
            recipes: Some("cremad-agm-late".into()),
            epochs: None,
            batch_size: None,
            out: Some(out.clone()),
            ..args(&data)
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("not for dataset `avmnist`"), "{err}");
        // A run folder is no reproduction's folder.
        let err = run(ReproduceArgs { out: Some(out.join("avmnist-agm-late-seed0")), ..args(&data) }).unwrap_err();
        assert!(err.to_string().contains("is a training run's directory"), "{err}");
    }

    fn args(data: &std::path::Path) -> ReproduceArgs {
        ReproduceArgs {
            dataset: "avmnist".into(),
            data: data.to_string_lossy().into_owned(),
            seeds: 1,
            recipes: Some("avmnist-joint-late".into()),
            epochs: Some(1),
            batch_size: Some(8),
            device: None,
            out: None,
            quiet: true,
        }
    }

    #[test]
    fn recipes_are_checked_as_study_checks_methods() {
        let err = |recipes: &str| {
            let args = ReproduceArgs { recipes: Some(recipes.into()), ..args(std::path::Path::new("/nonexistent")) };
            run(args).unwrap_err().to_string()
        };
        assert!(err(",").contains("--recipes names no recipe"), "{}", err(","));
        let twice = err("avmnist-agm-late, avmnist-agm-late");
        assert!(twice.contains("--recipes names `avmnist-agm-late` twice"), "{twice}");
    }
}
