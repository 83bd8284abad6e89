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
//! Two protocols are reported. Ours selects the epoch on validation and reports test accuracy.
//! The reference's picks the best epoch on the split it evaluates every epoch (test for AV-MNIST
//! and CREMA-D, validation elsewhere): comparable with its numbers, but optimistic.

use std::fmt::Write as _;
use std::process::ExitCode;

use agm_train::{checkpoint::write_atomic, recipes, RunRequest};
use serde::Serialize;

use crate::cli::ReproduceArgs;
use crate::stats::MeanCi;
use crate::study::{run_one, RunResult};

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
    pub runs: usize,
    /// Test accuracy of the best-validation epoch.
    pub ours: MeanCi,
    /// The best epoch on the reference's evaluation split.
    pub reference_protocol: MeanCi,
    pub published: Vec<Published>,
}

impl RecipeRow {
    pub fn of(recipe: &str, method: &str, model: &str, epochs: usize, runs: &[RunResult]) -> Self {
        let ci = |f: &dyn Fn(&RunResult) -> f64| MeanCi::of(&runs.iter().map(f).collect::<Vec<_>>());
        Self {
            recipe: recipe.into(),
            method: method.into(),
            model: model.into(),
            epochs,
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

/// `reproduce.md`.
pub fn markdown(dataset: &str, seeds: u64, shortened: Option<usize>, rows: &[RecipeRow]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Reproduction: {dataset}, {seeds} seed(s) per recipe\n");
    if let Some(epochs) = shortened {
        let _ = writeln!(
            md,
            "**Shortened to {epochs} epoch(s) per run (`--epochs`): these numbers are not comparable with the \
             published ones.**\n"
        );
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
        let names: Vec<&str> = list.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
        for name in &names {
            let recipe = recipes::find(name)?;
            if !chosen.iter().any(|r| r.name == recipe.name) {
                anyhow::bail!("recipe `{name}` is not for dataset `{}`", args.dataset);
            }
        }
        chosen.retain(|r| names.contains(&r.name));
    }
    // Every recipe's settings and the data's files are checked before anything is created.
    let configs = chosen
        .iter()
        .map(|recipe| {
            let request = RunRequest::default()
                .recipe(recipe.name)
                .set("--data", "data", args.data.clone())
                .set_opt("--epochs", "epochs", args.epochs.map(|e| e as i64))
                .set_opt("--batch-size", "batch_size", args.batch_size.map(|b| b as i64))
                .set_opt("--device", "device", args.device.clone());
            Ok(request.resolve()?.config)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(first) = configs.first() {
        first.check_input_files()?;
    }
    let out = match args.out.clone() {
        Some(out) => out,
        None => crate::new_dir("runs", &format!("reproduce-{}", args.dataset))?,
    };
    std::fs::create_dir_all(&out).map_err(|e| anyhow::anyhow!("creating {}: {e}", out.display()))?;
    println!("reproduce: {} recipe(s) of {} × {} seed(s) -> {}", chosen.len(), args.dataset, args.seeds, out.display());
    let mut rows = Vec::new();
    let mut all = Vec::new();
    for (recipe, base) in chosen.into_iter().zip(configs) {
        let mut runs = Vec::new();
        for seed in 0..args.seeds {
            let cfg = agm_train::RunConfig { seed, ..base.clone() };
            let dir = out.join(format!("{}-seed{seed}", recipe.name));
            let started = std::time::Instant::now();
            let (result, reused) = run_one(&cfg, &dir, None)?;
            if !args.quiet {
                println!(
                    "  {:<22} seed {:<3} test {:.2}%, reference protocol {}, {}",
                    recipe.name,
                    seed,
                    100.0 * result.test.accuracy,
                    result.reference_protocol_accuracy.map_or("n/a".into(), |a| format!("{:.2}%", 100.0 * a)),
                    if reused { "reused".to_string() } else { format!("{:.1} s", started.elapsed().as_secs_f64()) }
                );
            }
            runs.push(result);
        }
        rows.push(RecipeRow::of(recipe.name, &base.method, &base.model, base.epochs, &runs));
        all.extend(runs);
    }
    let md = markdown(&args.dataset, args.seeds, args.epochs, &rows);
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
            dataset: "avmnist".into(),
            data: data.to_string_lossy().into_owned(),
            seeds: 1,
            recipes: Some("avmnist-joint-late,avmnist-agm-late".into()),
            epochs: Some(1),
            batch_size: Some(8),
            device: None,
            out: Some(out.clone()),
            quiet: true,
        })
        .unwrap();
        let md = std::fs::read_to_string(out.join("reproduce.md")).unwrap();
        assert!(md.contains("Shortened to 1 epoch"), "{md}");
        assert!(md.contains("| avmnist-agm-late | agm | avmnist-late | 1 | 1 |"), "{md}");
        assert!(md.contains("| 72.14 | AGM paper, as quoted by G2D"), "{md}");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("reproduce.json")).unwrap()).unwrap();
        // AV-MNIST's reference protocol reads the test split the run recorded every epoch.
        assert!(json["runs"][0]["reference_protocol_accuracy"].as_f64().is_some(), "{json}");
        let err = run(ReproduceArgs {
            dataset: "avmnist".into(),
            data: String::new(),
            seeds: 1,
            recipes: Some("cremad-agm-late".into()),
            epochs: None,
            batch_size: None,
            device: None,
            out: Some(out),
            quiet: true,
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("not for dataset `avmnist`"), "{err}");
    }
}
