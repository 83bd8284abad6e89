//! `cargo xtask study`: every method × seed on one dataset, trained through the library like
//! `cargo xtask train` (quietly, one report per run), then one comparison table and one plot.
//!
//! ```text
//! <out>/<method>-seed<k>/   one run directory each (config, metrics, weights, summary.json, report/)
//! <out>/study.md            mean ± 95% CI over seeds per method, paired differences, verdict lines
//!                           (no claim under 20 paired seeds)
//! <out>/study.json          the same table and every run's numbers
//! <out>/curves.{png,svg}    validation accuracy and the weaker modality's Shapley accuracy per
//!                           epoch, mean over seeds, one line per method
//! ```
//!
//! A run directory that already holds a finished run of the same configuration is reused, so an
//! interrupted study continues where it stopped; an unfinished one of the same configuration
//! continues from its last checkpoint. A run of other settings, finished or not, is never deleted: the
//! study refuses before training anything. The study holds `<out>/.lock` while it runs, so a
//! second study on the same folder is refused.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use agm_metric::EvalReport;
use agm_train::concept::default_dir;
use agm_train::run::{train_run, Concepts, RunOptions, RunStart};
use agm_train::{checkpoint::write_atomic, RunConfig, RunDir, RunLock};
use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::cli::StudyArgs;
use crate::plot::{self, Panel, Series, YScale};
use crate::progress::counted;
use crate::report::{self, RunRecord};
use crate::stats::MeanCi;

/// What one finished run contributes to the study.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    pub method: String,
    pub seed: u64,
    pub dir: PathBuf,
    pub epochs_done: usize,
    pub best_epoch: usize,
    /// Validation accuracy of the best epoch (model selection).
    pub validation_accuracy: f64,
    /// Test split, best-validation weights (accuracy and per-modality Shapley accuracy).
    pub test: EvalReport,
    /// Competition strength per modality at the best epoch, when measured.
    pub competition: Option<Vec<f64>>,
    /// Mean step time over the run's epochs.
    pub step_seconds: f64,
    /// Peak resident memory of the process during the run.
    pub peak_memory_bytes: Option<u64>,
    /// Validation accuracy per epoch.
    pub curve_accuracy: Vec<f64>,
    /// Validation Shapley accuracy per epoch, then per modality.
    pub curve_modality_accuracy: Vec<Vec<f64>>,
    /// Per modality, by name.
    #[serde(default)]
    pub per_modality: BTreeMap<String, ModalityResult>,
    /// The reference's protocol: the best epoch's accuracy on the split the reference selects on
    /// (test for AV-MNIST and CREMA-D when the run recorded it, else validation).
    pub reference_protocol_accuracy: Option<f64>,
}

/// One modality's numbers in one run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModalityResult {
    /// Test split, best-validation weights.
    pub test_shapley_accuracy: f64,
    pub test_shapley_loss: f64,
    /// Validation, best epoch.
    pub validation_shapley_accuracy: f64,
    /// Competition strength at the best epoch, when measured.
    pub competition: Option<f64>,
}

impl RunResult {
    /// From a finished run directory (it needs `summary.json`).
    pub fn from_record(method: &str, seed: u64, dir: &Path, record: &RunRecord) -> anyhow::Result<Self> {
        let test = record.test.clone().with_context(|| format!("{} has no summary.json", dir.display()))?;
        let best = record.best_row().with_context(|| format!("{} has no metrics", dir.display()))?;
        let rows = &record.rows;
        let per_modality = record
            .modalities
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let at = |v: &[f64]| v.get(i).copied().unwrap_or(f64::NAN);
                let result = ModalityResult {
                    test_shapley_accuracy: at(&test.modality_accuracy),
                    test_shapley_loss: at(&test.modality_loss),
                    validation_shapley_accuracy: at(&best.validation.modality_accuracy),
                    competition: best.competition.as_ref().and_then(|c| c.get(i).copied()),
                };
                (name.clone(), result)
            })
            .collect();
        let best_of = |f: &dyn Fn(&agm_train::EpochSummary) -> Option<f64>| {
            rows.iter().filter_map(f).fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.max(a))))
        };
        let selects_on_test =
            record.config.dataset.parse::<agm_data::DatasetId>().is_ok_and(|d| d.reference_selects_on_test());
        let reference_protocol_accuracy = if selects_on_test {
            best_of(&|r| r.reference_split.as_ref().map(|e| e.accuracy))
        } else {
            best_of(&|r| Some(r.validation.accuracy))
        };
        Ok(Self {
            method: method.into(),
            seed,
            dir: dir.to_path_buf(),
            epochs_done: rows.len(),
            best_epoch: best.epoch,
            validation_accuracy: best.validation.accuracy,
            test,
            competition: best.competition.clone(),
            step_seconds: rows.iter().map(|r| r.mean_step_seconds).sum::<f64>() / rows.len() as f64,
            peak_memory_bytes: rows.iter().filter_map(|r| r.peak_memory_bytes).max(),
            curve_accuracy: rows.iter().map(|r| r.validation.accuracy).collect(),
            curve_modality_accuracy: rows.iter().map(|r| r.validation.modality_accuracy.clone()).collect(),
            per_modality,
            reference_protocol_accuracy,
        })
    }
}

/// What the study ran.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StudySetup {
    pub dataset: String,
    pub preset: String,
    pub epochs: usize,
    pub seeds: u64,
    pub methods: Vec<String>,
    pub modalities: Vec<String>,
}

/// One method's row of the table.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MethodRow {
    pub method: String,
    pub runs: usize,
    pub test_accuracy: MeanCi,
    /// This method's test accuracy minus the first method's, paired by seed (none for the first).
    pub test_accuracy_difference: Option<MeanCi>,
    pub validation_accuracy: MeanCi,
    /// Test-split Shapley accuracy per modality.
    pub modality_accuracy: Vec<MeanCi>,
    /// Competition strength per modality at the best epoch, when every run measured it.
    pub competition: Option<Vec<MeanCi>>,
    pub step_ms: MeanCi,
    pub peak_memory_mib: MeanCi,
}

/// "AGM raises the weaker modality's Shapley accuracy above joint's, mean over seeds".
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    /// The modality with the lower test Shapley accuracy under joint (mean over seeds).
    pub weaker_modality: String,
    pub joint: MeanCi,
    pub agm: MeanCi,
    /// agm minus joint, paired by seed.
    pub difference: MeanCi,
    /// `Some(true)` when the paired difference's 95% CI lies above 0, `Some(false)` below 0;
    /// `None` when it includes 0 or under [`SEEDS_FOR_A_CLAIM`] pairs (no claim either way).
    pub pass: Option<bool>,
    /// `better`, `worse`, `no-difference` (the 95% CI includes 0) or `too-few-seeds`, as
    /// [`AccuracyVerdict::outcome`] (empty in records written before it).
    #[serde(default)]
    pub outcome: String,
}

/// Seeds a claim that one method beats another needs.
pub const SEEDS_FOR_A_CLAIM: usize = 20;

/// The most seeds `--seeds` takes (`study` and `reproduce`): each seed is a training run per
/// method or recipe, so a larger count is a typo, not a plan.
pub const MAX_SEEDS: u64 = 10_000;

/// `--seeds` checked: 1 to [`MAX_SEEDS`]. Called before anything is allocated per seed.
pub(crate) fn check_seeds(seeds: u64) -> anyhow::Result<()> {
    if !(1..=MAX_SEEDS).contains(&seeds) {
        anyhow::bail!("--seeds {seeds} is out of range: pass 1 to {MAX_SEEDS} (each seed is one training run per method or recipe)");
    }
    Ok(())
}

/// Whether a method's test accuracy differs from the baseline's, paired by seed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AccuracyVerdict {
    pub method: String,
    pub baseline: String,
    /// method minus baseline, paired by seed.
    pub difference: MeanCi,
    /// `better`, `worse`, `no-difference` (the 95% CI includes 0) or `too-few-seeds`.
    pub outcome: String,
}

/// Whether a paired difference has the [`SEEDS_FOR_A_CLAIM`] pairs every verdict needs.
fn supports_a_claim(difference: &MeanCi) -> bool {
    difference.n >= SEEDS_FOR_A_CLAIM
}

/// What a paired difference supports: `better` or `worse` (its 95% CI excludes 0),
/// `no-difference` (the CI includes 0) or `too-few-seeds` (under [`SEEDS_FOR_A_CLAIM`] pairs).
fn claim_outcome(difference: &MeanCi) -> &'static str {
    match difference.half_width {
        _ if !supports_a_claim(difference) => "too-few-seeds",
        Some(h) if difference.mean - h > 0.0 => "better",
        Some(h) if difference.mean + h < 0.0 => "worse",
        _ => "no-difference",
    }
}

impl AccuracyVerdict {
    fn of(method: &str, baseline: &str, difference: MeanCi) -> Self {
        let outcome = claim_outcome(&difference);
        Self { method: method.into(), baseline: baseline.into(), difference, outcome: outcome.into() }
    }

    /// The verdict in a few words, for the table's column.
    pub fn short(&self) -> String {
        match self.outcome.as_str() {
            "better" => format!("beats {}", self.baseline),
            "worse" => format!("{} beats it", self.baseline),
            "no-difference" => "no significant difference".into(),
            _ => format!("no claim ({}; needs {SEEDS_FOR_A_CLAIM})", counted(self.difference.n as u64, "seed")),
        }
    }

    /// The verdict line of `study.md`.
    pub fn line(&self) -> String {
        let (m, b) = (&self.method, &self.baseline);
        let verdict = match self.outcome.as_str() {
            "better" => format!("{m} beats {b} (the 95% CI excludes 0)"),
            "worse" => format!("{b} beats {m} (the 95% CI excludes 0)"),
            "no-difference" => format!("no significant difference between {m} and {b} (the 95% CI includes 0)"),
            _ => format!(
                "no claim: {}, a claim needs {SEEDS_FOR_A_CLAIM}",
                counted(self.difference.n as u64, "paired seed")
            ),
        };
        format!(
            "**Test accuracy, {m} − {b}**: {} points (paired by seed, 95% CI, {}): {verdict}.",
            self.difference.show_signed(100.0, 2),
            counted(self.difference.n as u64, "seed")
        )
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StudyTable {
    pub setup: StudySetup,
    /// The first method: differences are against it.
    pub baseline: String,
    pub rows: Vec<MethodRow>,
    pub verdict: Option<Verdict>,
    /// Each other method's paired test-accuracy difference from the baseline, with its verdict.
    #[serde(default)]
    pub accuracy_verdicts: Vec<AccuracyVerdict>,
}

const CLAIM: &str = "AGM raises the weaker modality's Shapley accuracy above joint's, mean over seeds";

fn of_method<'a>(results: &'a [RunResult], method: &'a str) -> impl Iterator<Item = &'a RunResult> + 'a {
    results.iter().filter(move |r| r.method == method)
}

/// `f(b) - f(a)` over the seeds both methods ran.
fn paired(results: &[RunResult], a: &str, b: &str, f: impl Fn(&RunResult) -> f64) -> MeanCi {
    let diffs: Vec<f64> = of_method(results, b)
        .filter_map(|rb| of_method(results, a).find(|ra| ra.seed == rb.seed).map(|ra| f(rb) - f(ra)))
        .collect();
    MeanCi::of(&diffs)
}

/// Whether every run of `method` trained exactly as the baseline's run of its seed: the same
/// validation curves (fused and per modality) and the same test accuracy.
fn trained_as(results: &[RunResult], baseline: &str, method: &str) -> bool {
    let mut runs = of_method(results, method).peekable();
    runs.peek().is_some()
        && runs.all(|r| {
            of_method(results, baseline).any(|b| {
                b.seed == r.seed
                    && b.curve_accuracy == r.curve_accuracy
                    && b.curve_modality_accuracy == r.curve_modality_accuracy
                    && b.test.accuracy == r.test.accuracy
            })
        })
}

/// The note under the table for a method that trained exactly as the baseline.
fn same_run_note(method: &str, baseline: &str, epochs: usize) -> String {
    let why = if baseline == "joint" {
        format!(
            ", so it never acted within these {}; a window, warm-up or schedule in its settings starts later \
             (the run's `config.toml` lists them; docs/methods.md)",
            counted(epochs as u64, "epoch")
        )
    } else {
        String::new()
    };
    format!("`{method}` trained exactly as `{baseline}` on every seed (the same validation curves){why}.")
}

/// Over runs, a value some runs may lack.
fn ci_of(runs: &[&RunResult], f: impl Fn(&RunResult) -> Option<f64>) -> MeanCi {
    MeanCi::of(&runs.iter().map(|r| f(r).unwrap_or(f64::NAN)).collect::<Vec<_>>())
}

/// The table of a study from its runs.
pub fn summarise(setup: StudySetup, results: &[RunResult]) -> StudyTable {
    let baseline = setup.methods.first().cloned().unwrap_or_default();
    let n_mod = setup.modalities.len();
    let rows: Vec<MethodRow> = setup
        .methods
        .iter()
        .map(|method| {
            let runs: Vec<&RunResult> = of_method(results, method).collect();
            let ci = |f: &dyn Fn(&RunResult) -> f64| MeanCi::of(&runs.iter().map(|r| f(r)).collect::<Vec<_>>());
            let measured = !runs.is_empty() && runs.iter().all(|r| r.competition.is_some());
            MethodRow {
                method: method.clone(),
                runs: runs.len(),
                test_accuracy: ci(&|r| r.test.accuracy),
                test_accuracy_difference: (*method != baseline)
                    .then(|| paired(results, &baseline, method, |r| r.test.accuracy)),
                validation_accuracy: ci(&|r| r.validation_accuracy),
                modality_accuracy: (0..n_mod)
                    .map(|i| ci_of(&runs, |r| r.test.modality_accuracy.get(i).copied()))
                    .collect(),
                competition: measured.then(|| {
                    (0..n_mod)
                        .map(|i| ci_of(&runs, |r| r.competition.as_ref().and_then(|c| c.get(i).copied())))
                        .collect()
                }),
                step_ms: ci(&|r| 1e3 * r.step_seconds),
                peak_memory_mib: ci(&|r| r.peak_memory_bytes.map_or(f64::NAN, |b| b as f64 / (1024.0 * 1024.0))),
            }
        })
        .collect();
    let verdict = verdict(&setup, &rows, results);
    let accuracy_verdicts = rows
        .iter()
        .filter_map(|r| r.test_accuracy_difference.map(|d| AccuracyVerdict::of(&r.method, &baseline, d)))
        .collect();
    StudyTable { setup, baseline, rows, verdict, accuracy_verdicts }
}

fn verdict(setup: &StudySetup, rows: &[MethodRow], results: &[RunResult]) -> Option<Verdict> {
    let joint = rows.iter().find(|r| r.method == "joint" && r.runs > 0)?;
    let agm = rows.iter().find(|r| r.method == "agm" && r.runs > 0)?;
    let weaker = (0..setup.modalities.len())
        .filter(|&i| joint.modality_accuracy[i].n > 0)
        .min_by(|&a, &b| joint.modality_accuracy[a].mean.total_cmp(&joint.modality_accuracy[b].mean))?;
    let (j, a) = (joint.modality_accuracy[weaker], agm.modality_accuracy[weaker]);
    let at = |r: &RunResult| r.test.modality_accuracy.get(weaker).copied().unwrap_or(f64::NAN);
    let difference = paired(results, "joint", "agm", at);
    let outcome = claim_outcome(&difference);
    Some(Verdict {
        weaker_modality: setup.modalities[weaker].clone(),
        joint: j,
        agm: a,
        pass: match outcome {
            "better" => Some(true),
            "worse" => Some(false),
            _ => None,
        },
        outcome: outcome.into(),
        difference,
    })
}

/// The verdict line: PASS or FAIL only where the paired 95% CI excludes 0 with
/// [`SEEDS_FOR_A_CLAIM`] paired seeds, as every verdict of the study ([`claim_outcome`]);
/// otherwise no significant difference, or no claim under that many seeds.
pub fn verdict_line(v: &Verdict) -> String {
    // Read from the interval, not from `pass`: records written before the rule say FAIL for a
    // CI that includes 0, and `report` renders them again.
    let outcome = claim_outcome(&v.difference);
    let (head, support) = match outcome {
        "better" => ("PASS", "the 95% CI excludes 0: AGM raises it".to_string()),
        "worse" => ("FAIL", "the 95% CI excludes 0: AGM lowers it".to_string()),
        "no-difference" => ("NO SIGNIFICANT DIFFERENCE", "the 95% CI includes 0: neither pass nor fail".to_string()),
        _ => ("NO CLAIM", format!("a claim needs {SEEDS_FOR_A_CLAIM} paired seeds, this study has {}", v.difference.n)),
    };
    format!(
        "**{head}**: {CLAIM}. Weaker modality under joint: {}; its test Shapley accuracy {}% (joint) vs {}% (agm), \
         paired difference {} points (95% CI; {support}).",
        v.weaker_modality,
        v.joint.show(100.0, 2),
        v.agm.show(100.0, 2),
        v.difference.show_signed(100.0, 2),
    )
}

/// `study.md`.
pub fn markdown(table: &StudyTable, results: &[RunResult], plot_stem: Option<&str>) -> String {
    let s = &table.setup;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Study: {} on {}, {} × {}\n",
        s.methods.join(", "),
        agm_train::config::dataset_label(&s.dataset, &s.preset),
        counted(s.seeds, "seed"),
        counted(s.epochs as u64, "epoch")
    );
    md.push_str(
        "Each cell is the mean over seeds ± the half-width of its 95% confidence interval (Student t, \
         n − 1 degrees of freedom; no interval for one seed). Test numbers use the best-validation weights; \
         Shapley accuracies are on the test split; validation accuracy is the best epoch's; competition \
         strength is the best epoch's (0: the modality's mono-modal concept is linearly recoverable from \
         the fused feature, about 1: not at all). Step time is the mean training step; peak memory is the \
         peak of live heap bytes while the run trains (its data and model included).\n\n",
    );
    let measured = table.rows.iter().any(|r| r.competition.is_some());
    let mut header = vec![
        "method".to_string(),
        "runs".into(),
        "test accuracy (%)".into(),
        format!("Δ test accuracy vs {} (points, paired)", table.baseline),
        "validation accuracy (%)".into(),
    ];
    header.extend(s.modalities.iter().map(|m| format!("{m} Shapley acc. (%)")));
    if measured {
        header.extend(s.modalities.iter().map(|m| format!("{m} competition")));
    }
    header.push("step time (ms)".into());
    header.push("peak memory (MiB)".into());
    header.push(format!("test accuracy vs {}", table.baseline));
    let _ = writeln!(md, "| {} |", header.join(" | "));
    let _ = writeln!(md, "| {} |", header.iter().map(|_| "---").collect::<Vec<_>>().join(" | "));
    for r in &table.rows {
        let mut cells = vec![
            r.method.clone(),
            r.runs.to_string(),
            r.test_accuracy.show(100.0, 2),
            r.test_accuracy_difference.map_or("—".into(), |d| d.show_signed(100.0, 2)),
            r.validation_accuracy.show(100.0, 2),
        ];
        cells.extend(r.modality_accuracy.iter().map(|m| m.show(100.0, 2)));
        if measured {
            match &r.competition {
                Some(c) => cells.extend(c.iter().map(|m| m.show(1.0, 3))),
                None => cells.extend(s.modalities.iter().map(|_| "n/a".to_string())),
            }
        }
        cells.push(r.step_ms.show(1.0, 2));
        cells.push(r.peak_memory_mib.show(1.0, 0));
        let verdict = table.accuracy_verdicts.iter().find(|v| v.method == r.method);
        cells.push(verdict.map_or("—".into(), AccuracyVerdict::short));
        let _ = writeln!(md, "| {} |", cells.join(" | "));
    }
    md.push('\n');
    // One comparison gets its sentence; more are read from the table's last column.
    if let [v] = table.accuracy_verdicts.as_slice() {
        let _ = writeln!(md, "{}\n", v.line());
    } else if !table.accuracy_verdicts.is_empty() {
        let _ = writeln!(
            md,
            "The last column compares each method's test accuracy with {}'s, paired by seed: a method beats \
             another only where the 95% CI of the difference excludes 0 over {SEEDS_FOR_A_CLAIM} paired seeds or \
             more.\n",
            table.baseline
        );
    }
    for r in table.rows.iter().filter(|r| r.method != table.baseline) {
        if trained_as(results, &table.baseline, &r.method) {
            let _ = writeln!(md, "{}\n", same_run_note(&r.method, &table.baseline, s.epochs));
        }
    }
    match &table.verdict {
        Some(v) => {
            let _ = writeln!(md, "{}\n", verdict_line(v));
        }
        None => {
            let _ = writeln!(md, "No verdict on \"{CLAIM}\": the study needs both `joint` and `agm`.\n");
        }
    }
    if !measured {
        md.push_str("Competition strength: not measured in these runs (no mono-modal concepts were attached).\n\n");
    }
    if let Some(stem) = plot_stem {
        let _ = writeln!(
            md,
            "![Validation accuracy and weaker-modality Shapley accuracy per epoch]({stem}.png)\n\n[SVG]({stem}.svg)\n"
        );
    }
    md.push_str("## Runs\n\n");
    let mut header = vec!["method", "seed", "best epoch", "validation acc. (%)", "test acc. (%)"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    header.extend(s.modalities.iter().map(|m| format!("{m} Shapley (%)")));
    header.push("report".into());
    let _ = writeln!(md, "| {} |", header.join(" | "));
    let _ = writeln!(md, "| {} |", header.iter().map(|_| "---").collect::<Vec<_>>().join(" | "));
    for r in results {
        let mut cells = vec![
            r.method.clone(),
            r.seed.to_string(),
            r.best_epoch.to_string(),
            format!("{:.2}", 100.0 * r.validation_accuracy),
            format!("{:.2}", 100.0 * r.test.accuracy),
        ];
        cells.extend(r.test.modality_accuracy.iter().map(|a| format!("{:.2}", 100.0 * a)));
        let name = r.dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        cells.push(format!("[{name}]({name}/report/README.md)"));
        let _ = writeln!(md, "| {} |", cells.join(" | "));
    }
    md
}

/// A method's mean curve over its runs with the 95% confidence band of each epoch's mean (runs
/// that stopped early count where they have epochs; no band where fewer than two runs count).
fn mean_curve(name: &str, runs: &[&RunResult], f: impl Fn(&RunResult, usize) -> Option<f64>) -> Series {
    let epochs = runs.iter().map(|r| r.curve_accuracy.len()).max().unwrap_or(0);
    let (mut points, mut band) = (Vec::new(), Vec::new());
    for e in 0..epochs {
        let values: Vec<f64> = runs.iter().filter_map(|r| f(r, e)).collect();
        let estimate = MeanCi::of(&values);
        let x = (e + 1) as f64;
        if estimate.n > 0 {
            points.push((x, estimate.mean));
        }
        if let Some(h) = estimate.half_width {
            band.push((x, estimate.mean - h, estimate.mean + h));
        }
    }
    Series::new(name, points).band(band)
}

/// Studies of more methods draw their curves without confidence bands.
const MAX_METHODS_WITH_BANDS: usize = 5;

/// The combined plot: validation accuracy and the weaker modality's validation Shapley accuracy.
pub fn curves(table: &StudyTable, results: &[RunResult]) -> Vec<Panel> {
    let weaker = table
        .verdict
        .as_ref()
        .and_then(|v| table.setup.modalities.iter().position(|m| *m == v.weaker_modality))
        .or_else(|| {
            let first = table.rows.first()?;
            (0..first.modality_accuracy.len())
                .min_by(|&a, &b| first.modality_accuracy[a].mean.total_cmp(&first.modality_accuracy[b].mean))
        })
        .unwrap_or(0);
    let name = table.setup.modalities.get(weaker).cloned().unwrap_or_else(|| "weaker modality".into());
    let mut seeds = counted(table.setup.seeds, "seed");
    // A run its method stopped early has fewer epochs: later means are over the runs left.
    let longest = results.iter().map(|r| r.curve_accuracy.len()).max().unwrap_or(0);
    if results.iter().any(|r| r.curve_accuracy.len() < longest) {
        seeds.push_str(" while they run");
    }
    let mut accuracy = Vec::new();
    let mut modality = Vec::new();
    // Past a few methods, overlapping bands hide the lines: the means alone stay readable.
    let bands = table.setup.methods.len() <= MAX_METHODS_WITH_BANDS;
    let without_band = |s: Series| if bands { s } else { s.band(Vec::new()) };
    for method in &table.setup.methods {
        let runs: Vec<&RunResult> = of_method(results, method).collect();
        accuracy.push(without_band(mean_curve(method, &runs, |r, e| r.curve_accuracy.get(e).copied())));
        modality.push(without_band(mean_curve(method, &runs, |r, e| {
            r.curve_modality_accuracy.get(e).and_then(|m| m.get(weaker)).copied()
        })));
    }
    let interval = if bands { ", 95% CI" } else { "" };
    vec![
        Panel::new(format!("Validation accuracy (mean over {seeds}{interval})"), "validation accuracy", accuracy)
            .y_scale(YScale::Percent),
        Panel::new(
            format!("{name} Shapley accuracy, the weaker modality (mean over {seeds}{interval})"),
            format!("{name} Shapley accuracy (validation)"),
            modality,
        )
        .y_scale(YScale::Percent),
    ]
}

/// Trains one run into `dir` as `cargo xtask train` does, quietly, and writes its
/// `summary.json` and report.
fn train(cfg: &RunConfig, dir: &Path, start: RunStart, concepts: Option<&Path>) -> anyhow::Result<()> {
    let opts = RunOptions {
        provenance: crate::provenance::of_this_process(std::time::SystemTime::now()),
        concepts: Some(Concepts::TrainMissing(
            concepts.map_or_else(|| default_dir(&cfg.dataset, &cfg.data_preset), Path::to_path_buf),
        )),
    };
    let mut report = report::ReportWhenWritten::default();
    train_run(cfg, &RunDir::create(dir)?, start, &opts, &mut report)?;
    report.written.transpose()?;
    Ok(())
}

/// A finished run of exactly this configuration in `dir`, if there is one.
fn finished(cfg: &RunConfig, dir: &Path) -> Option<RunRecord> {
    if !dir.join("summary.json").exists() {
        return None;
    }
    let record = RunRecord::load(dir).ok()?;
    (record.config.same_run(cfg) && record.test.is_some() && !record.rows.is_empty()).then_some(record)
}

/// Writes a study's plot and `study.md` into `out`; returns the Markdown.
fn render(out: &Path, table: &StudyTable, results: &[RunResult]) -> anyhow::Result<String> {
    plot::render(&out.join("curves"), &curves(table, results))?;
    let md = markdown(table, results, Some("curves"));
    write_atomic(&out.join("study.md"), md.as_bytes())?;
    Ok(md)
}

/// `cargo xtask report <study folder>`: renders the study again from its `study.json`.
pub fn render_folder(out: &Path) -> anyhow::Result<PathBuf> {
    #[derive(Deserialize)]
    struct Saved {
        table: StudyTable,
        runs: Vec<RunResult>,
    }
    let path = out.join("study.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let saved: Saved =
        serde_json::from_str(&text).with_context(|| format!("{} is not a study record", path.display()))?;
    render(out, &saved.table, &saved.runs)?;
    Ok(out.join("study.md"))
}

/// What a study does with one run folder, decided for every run before any trains.
pub(crate) enum Plan {
    /// A finished run of exactly this configuration: reused.
    Reuse(Box<RunRecord>),
    /// Nothing there yet: trained.
    Train,
    /// An unfinished run of this configuration: continued from its last checkpoint, as
    /// `cargo xtask train --resume` continues it.
    Resume,
}

/// `key = value (<whose>: value)` for every setting in which `cfg` trains another run than
/// `other`.
pub(crate) fn differences_from(cfg: &RunConfig, other: &RunConfig, whose: &str) -> Vec<String> {
    cfg.run_differences(other)
        .into_iter()
        .map(|(key, ours, theirs)| format!("{key} = {ours} ({whose}: {theirs})"))
        .collect()
}

/// What to do with `dir` for `cfg`. A run of other settings, finished or not, is refused with
/// each differing setting, never deleted; so is an unfinished run another process still holds.
fn plan(cfg: &RunConfig, dir: &Path) -> anyhow::Result<Plan> {
    if !dir.join("config.toml").exists() {
        if dir.exists() {
            let run = RunDir::open(dir)?;
            if !run.holds_only_leftovers() {
                anyhow::bail!("{} holds files but no run; move them, or pass a new --out", dir.display());
            }
            // A run killed before its config.toml left its lock: refused now if a process
            // still holds it, else its leftovers are cleared and it trains from the start.
            drop(run.lock()?);
        }
        return Ok(Plan::Train);
    }
    let run = RunDir::open(dir)?;
    let recorded =
        run.read_config().with_context(|| format!("{} holds a run whose settings cannot be read", dir.display()))?;
    if !recorded.same_run(cfg) {
        let state = if run.summary().exists() { "a finished" } else { "an unfinished" };
        let changed = differences_from(cfg, &recorded, "the run's");
        let changed = if changed.is_empty() { "its config.toml differs".to_string() } else { changed.join(", ") };
        anyhow::bail!("{} holds {state} run of other settings; this study asks for {changed}", dir.display());
    }
    if let Some(record) = finished(cfg, dir) {
        return Ok(Plan::Reuse(Box::new(record)));
    }
    // Refused now, not after other runs have trained, while another process writes it.
    drop(run.lock()?);
    Ok(Plan::Resume)
}

/// The plan of every run, `(configuration, run folder)`, in order; one error naming every
/// folder that cannot be used, before anything trains.
pub(crate) fn plan_all(runs: &[(RunConfig, PathBuf)], out: &Path) -> anyhow::Result<Vec<Plan>> {
    let mut plans = Vec::new();
    let mut refused = Vec::new();
    for (cfg, dir) in runs {
        match plan(cfg, dir) {
            Ok(p) => plans.push(p),
            Err(e) => refused.push(format!("{e:#}")),
        }
    }
    if refused.is_empty() {
        return Ok(plans);
    }
    const SHOWN: usize = 8;
    let mut lines: Vec<String> = refused.iter().take(SHOWN).map(|r| format!("  {r}")).collect();
    if refused.len() > SHOWN {
        lines.push(format!("  … and {} more", refused.len() - SHOWN));
    }
    // The advice for runs of other settings, where there are any (each refusal says why).
    let other_settings = refused.iter().any(|r| r.contains("run of other settings"));
    let advice = if other_settings {
        "\nA run of other settings is kept: pass a new --out for these settings, or the settings those runs were \
         trained with"
    } else {
        ""
    };
    anyhow::bail!(
        "{} of the {} run folders in {} cannot be used (nothing was trained or deleted):\n{}{advice}",
        refused.len(),
        runs.len(),
        out.display(),
        lines.join("\n")
    )
}

/// Runs (or reuses) one method and seed as planned; says whether it was reused. Mono-modal
/// concepts live in `concepts` (default: `concepts/<dataset>-<preset>`).
pub(crate) fn run_planned(
    cfg: &RunConfig,
    dir: &Path,
    plan: Plan,
    concepts: Option<&Path>,
) -> anyhow::Result<(RunResult, bool)> {
    let (record, reused) = match plan {
        Plan::Reuse(record) => {
            // A run killed between its summary.json and its report.
            report::repair_finished(&RunDir::open(dir)?)?;
            (*record, true)
        }
        Plan::Train | Plan::Resume => {
            let start = match plan {
                Plan::Resume => RunStart::Resume { header: None },
                _ => RunStart::New,
            };
            train(cfg, dir, start, concepts)
                .with_context(|| format!("{} seed {} in {}", cfg.method, cfg.seed, dir.display()))?;
            (RunRecord::load(dir)?, false)
        }
    };
    RUNS_FINISHED.fetch_add(1, Ordering::Relaxed);
    Ok((RunResult::from_record(&cfg.method, cfg.seed, dir, &record)?, reused))
}

/// The output folder of a study or a reproduction: what it writes besides one run folder per
/// `<name>-seed<k>`.
pub(crate) struct OutFolder {
    /// `study`, `reproduction`.
    pub kind: &'static str,
    /// What each run folder is one of per seed: `method`, `recipe`.
    pub runs_per: &'static str,
    /// The files it writes at its top.
    pub files: &'static [&'static str],
}

pub(crate) const STUDY_FOLDER: OutFolder =
    OutFolder { kind: "study", runs_per: "method", files: &["study.json", "study.md", "curves.png", "curves.svg"] };

impl OutFolder {
    /// Creates `out` and locks it for as long as the guard lives, so a second study (or
    /// reproduction) on the same folder is refused at its start. Refuses a training run's
    /// directory and a folder holding anything this kind of folder does not write (a comparison,
    /// another command's output), so no run folder is mixed into it.
    pub fn claim(&self, out: &Path) -> anyhow::Result<RunLock> {
        let kind = self.kind;
        if RunDir::open(out).is_ok_and(|d| d.holds_run_state()) {
            anyhow::bail!(
                "--out {} is a training run's directory; pass a new folder for the {kind} (it holds one run folder \
                 per {} and seed)",
                out.display(),
                self.runs_per
            );
        }
        let lock = RunDir::create(out)?.lock()?;
        let mut foreign: Vec<String> = std::fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))?
            .flatten()
            .filter(|e| !self.owns(&e.file_name().to_string_lossy(), e.path().is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !foreign.is_empty() {
            foreign.sort();
            let more = foreign.len().saturating_sub(5);
            foreign.truncate(5);
            anyhow::bail!(
                "--out {} holds {}{}, which a {kind} does not write (it writes {} and one <{}>-seed<k> folder per \
                 run); pass a new or empty folder",
                out.display(),
                foreign.join(", "),
                if more > 0 { format!(" and {more} more") } else { String::new() },
                self.files.join(", "),
                self.runs_per
            );
        }
        Ok(lock)
    }

    /// Whether an entry of the folder is one this kind of folder writes: its files, its lock and
    /// temporaries, and `<name>-seed<k>` run folders.
    fn owns(&self, name: &str, is_dir: bool) -> bool {
        if is_dir {
            return name
                .rsplit_once("-seed")
                .is_some_and(|(_, k)| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()));
        }
        self.files.contains(&name) || name == ".lock" || name.ends_with(".tmp")
    }
}

/// Runs finished (trained or reused) so far by this process's study or reproduction, for the
/// Ctrl-C line.
static RUNS_FINISHED: AtomicUsize = AtomicUsize::new(0);

/// What Ctrl-C prints: how far the study got and how to continue.
fn interrupted_line(finished: usize, total: usize, out: &Path) -> String {
    format!(
        "interrupted: {finished} of {} finished in {}; run the same command again to continue (finished runs are \
         reused, the one in progress continues from its last checkpoint)",
        counted(total as u64, "run"),
        out.display()
    )
}

/// Ctrl-C ends a study or reproduction at once with [`interrupted_line`] and the shell's code
/// for it, 130.
pub(crate) fn stop_on_ctrl_c(total: usize, out: &Path) {
    RUNS_FINISHED.store(0, Ordering::Relaxed);
    let out = out.to_path_buf();
    let installed = ctrlc::set_handler(move || {
        eprintln!("\n{}", interrupted_line(RUNS_FINISHED.load(Ordering::Relaxed), total, &out));
        std::process::exit(130);
    });
    // Without a handler (another one is installed) Ctrl-C keeps its default: the process ends.
    drop(installed);
}

/// The methods of `--methods`, checked.
fn parse_methods(list: &str) -> anyhow::Result<Vec<String>> {
    if list.trim() == "all" {
        return Ok(agm_modulation::registry::names().into_iter().map(String::from).collect());
    }
    // One spelling per method, so that `agm + ogm-ge` and `agm+ogm-ge` are one stack.
    let canonical = list
        .split(',')
        .map(|spec| if spec.trim().is_empty() { Ok(String::new()) } else { agm_modulation::registry::canonical(spec) })
        .collect::<Result<Vec<String>, _>>()
        .map_err(|e| anyhow::anyhow!("flag --methods: {e}"))?
        .join(",");
    Ok(name_list(&canonical, "--methods", "method")?.into_iter().map(String::from).collect())
}

/// The names of a comma-separated list flag: at least one, none twice.
pub(crate) fn name_list<'a>(list: &'a str, flag: &str, what: &str) -> anyhow::Result<Vec<&'a str>> {
    let names: Vec<&str> = list.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
    if names.is_empty() {
        anyhow::bail!("{flag} names no {what}");
    }
    for (i, name) in names.iter().enumerate() {
        if names[..i].contains(name) {
            anyhow::bail!("{flag} names `{name}` twice");
        }
    }
    Ok(names)
}

pub fn run(args: StudyArgs) -> anyhow::Result<ExitCode> {
    let methods = parse_methods(&args.methods)?;
    check_seeds(args.seeds)?;
    let resolved = args.run.request().resolve()?;
    let base = resolved.config.clone();
    let configs: Vec<RunConfig> = methods
        .iter()
        .flat_map(|m| (0..args.seeds).map(move |seed| (m.clone(), seed)))
        .map(|(method, seed)| {
            let cfg = RunConfig { method, seed, ..base.clone() };
            cfg.validate().map(|_| cfg)
        })
        .collect::<Result<_, _>>()?;
    if base.device == "cuda" && !cfg!(feature = "cuda") {
        anyhow::bail!(
            "device = \"cuda\" needs the cuda build: pass --device cuda on the command line (cargo xtask \
             rebuilds with CUDA; docs/cuda.md)"
        );
    }
    let out = match args.out.clone() {
        Some(out) => out,
        None => crate::new_dir("runs", "study")?,
    };
    // Held until the study ends: a second study on this folder is refused.
    let _lock = STUDY_FOLDER.claim(&out)?;
    let runs: Vec<(RunConfig, PathBuf)> = configs
        .into_iter()
        .map(|cfg| {
            let dir = out.join(format!("{}-seed{}", cfg.method, cfg.seed));
            (cfg, dir)
        })
        .collect();
    let plans = plan_all(&runs, &out)?;
    println!(
        "study: {} × {} on {}, {} -> {}",
        methods.join(", "),
        counted(args.seeds, "seed"),
        base.dataset_label(),
        counted(base.epochs as u64, "epoch"),
        out.display()
    );
    if !resolved.settings.is_empty() {
        println!("{}", crate::train::SETTINGS_HEADING);
    }
    // A study sets each run's method and seed itself: a config file's or a recipe's are not in force.
    for setting in &resolved.settings {
        if setting.key == "method" || setting.key == "seed" {
            println!(
                "  {} = {} ({}) is not used: a study trains each of --methods with seeds 0 to {}",
                setting.key,
                setting.value,
                setting.origin,
                args.seeds - 1
            );
        } else {
            println!("  {setting}");
        }
    }
    stop_on_ctrl_c(runs.len(), &out);
    let started = Instant::now();
    let mut results = Vec::new();
    let mut reused_runs = 0;
    for ((cfg, dir), plan) in runs.iter().zip(plans) {
        let t = Instant::now();
        let (result, reused) = run_planned(cfg, dir, plan, args.concepts.as_deref())?;
        reused_runs += usize::from(reused);
        if !args.quiet {
            let names = &result.test.modalities;
            let per: Vec<String> = names
                .iter()
                .zip(&result.test.modality_accuracy)
                .map(|(n, a)| format!("{n} {:.2}%", 100.0 * a))
                .collect();
            println!(
                "  {:<10} seed {:<3} test {:.2}% (Shapley {}), best epoch {:>3}, {}",
                cfg.method,
                cfg.seed,
                100.0 * result.test.accuracy,
                per.join(" / "),
                result.best_epoch,
                if reused { "reused".to_string() } else { format!("{:.1} s", t.elapsed().as_secs_f64()) }
            );
        }
        results.push(result);
    }
    let count = results.first().map_or(0, |r| r.test.modality_accuracy.len());
    let setup = StudySetup {
        dataset: base.dataset.clone(),
        preset: base.data_preset.clone(),
        epochs: base.epochs,
        seeds: args.seeds,
        methods,
        modalities: report::modality_names(&base, count),
    };
    let table = summarise(setup, &results);
    let json = serde_json::json!({ "table": table, "runs": results });
    write_atomic(&out.join("study.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    let md = render(&out, &table, &results)?;
    println!();
    println!("{}", md.split("\n## Runs").next().unwrap_or(&md).trim_end());
    println!();
    println!(
        "{} ({} reused) in {:.1} s; table {}, plot {}",
        counted(results.len() as u64, "run"),
        reused_runs,
        started.elapsed().as_secs_f64(),
        out.join("study.md").display(),
        out.join("curves.png").display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::check;

    fn setup(methods: &[&str], seeds: u64) -> StudySetup {
        StudySetup {
            dataset: "av-digits".into(),
            preset: "audio-dominant".into(),
            epochs: 3,
            seeds,
            methods: methods.iter().map(|m| m.to_string()).collect(),
            modalities: vec!["audio".into(), "visual".into()],
        }
    }

    /// A finished run with the given test accuracy and test Shapley accuracies.
    fn result(method: &str, seed: u64, acc: f64, audio: f64, visual: f64) -> RunResult {
        RunResult {
            method: method.into(),
            seed,
            dir: PathBuf::from(format!("{method}-seed{seed}")),
            epochs_done: 3,
            best_epoch: 3,
            validation_accuracy: acc + 0.01,
            test: EvalReport {
                samples: 600,
                modalities: vec!["audio".into(), "visual".into()],
                accuracy: acc,
                loss: 0.3,
                modality_accuracy: vec![audio, visual],
                modality_loss: vec![0.5, 1.5],
                ..Default::default()
            },
            competition: None,
            step_seconds: 0.002 + 0.001 * seed as f64,
            peak_memory_bytes: Some(200 << 20),
            curve_accuracy: vec![0.5, 0.7, acc],
            curve_modality_accuracy: vec![vec![0.4, 0.1], vec![0.6, 0.2], vec![audio, visual]],
            per_modality: BTreeMap::new(),
            reference_protocol_accuracy: None,
        }
    }

    /// joint and agm over three seeds; agm's visual (the weaker modality) Shapley accuracy is
    /// `agm_visual` for each seed.
    fn study(agm_visual: [f64; 3]) -> Vec<RunResult> {
        vec![
            result("joint", 0, 0.90, 0.85, 0.30),
            result("joint", 1, 0.92, 0.86, 0.32),
            result("joint", 2, 0.94, 0.87, 0.34),
            result("agm", 0, 0.91, 0.80, agm_visual[0]),
            result("agm", 1, 0.95, 0.82, agm_visual[1]),
            result("agm", 2, 0.96, 0.84, agm_visual[2]),
        ]
    }

    #[test]
    fn the_table_has_means_intervals_differences_and_no_claim_under_twenty_seeds() {
        let results = study([0.40, 0.44, 0.48]);
        let table = summarise(setup(&["joint", "agm"], 3), &results);
        let md = markdown(&table, &results, Some("curves"));
        // joint: 0.90, 0.92, 0.94 → 92.00 ± 4.97; agm − joint per seed: +1, +3, +2 points →
        // +2.00 ± 2.48 (s = 1, t(2) = 4.302653); visual: joint 32.00 ± 4.97, agm 44.00 ± 9.94.
        for needle in [
            "| method | runs | test accuracy (%) | Δ test accuracy vs joint (points, paired) | validation accuracy (%) \
             | audio Shapley acc. (%) | visual Shapley acc. (%) | step time (ms) | peak memory (MiB) | test accuracy vs joint |",
            "| joint | 3 | 92.00 ± 4.97 | — | 93.00 ± 4.97 | 86.00 ± 2.48 | 32.00 ± 4.97 | 3.00 ± 2.48 | 200 ± 0 | — |",
            "| agm | 3 | 94.00 ± 6.57 | +2.00 ± 2.48 | 95.00 ± 6.57 | 82.00 ± 4.97 | 44.00 ± 9.94 |",
            "**NO CLAIM**: AGM raises the weaker modality's Shapley accuracy above joint's, mean over seeds. \
             Weaker modality under joint: visual; its test Shapley accuracy 32.00 ± 4.97% (joint) vs 44.00 ± 9.94% \
             (agm), paired difference +12.00 ± 4.97 points (95% CI; a claim needs 20 paired seeds, this study has 3).",
            "Competition strength: not measured",
            "| agm | 2 | 3 | 97.00 | 96.00 | 84.00 | 48.00 | [agm-seed2](agm-seed2/report/README.md) |",
            // The verdict's column, and its sentence for a study of two methods.
            " | no claim (3 seeds; needs 20) |\n",
            "**Test accuracy, agm − joint**: +2.00 ± 2.48 points (paired by seed, 95% CI, 3 seeds): no claim",
        ] {
            assert!(md.contains(needle), "study.md lacks\n{needle}\nin\n{md}");
        }
        // Three seeds: agm's higher mean is no claim, neither in the line nor in the JSON.
        let v = table.verdict.as_ref().unwrap();
        assert!(v.pass.is_none() && v.weaker_modality == "visual");
        assert!(!md.contains("PASS") && !md.contains("FAIL"), "{md}");
        // The JSON carries the same numbers.
        let json = serde_json::to_value(&table).unwrap();
        assert_eq!(json["rows"][1]["test_accuracy_difference"]["n"], 3);
    }

    #[test]
    fn more_methods_are_compared_in_the_tables_last_column_not_one_sentence_each() {
        let mut results = study([0.40, 0.44, 0.48]);
        results.extend((0..3).map(|seed| result("ogm-ge", seed, 0.93, 0.8, 0.4)));
        let table = summarise(setup(&["joint", "agm", "ogm-ge"], 3), &results);
        let md = markdown(&table, &results, None);
        assert!(!md.contains("**Test accuracy, agm − joint**") && md.contains("The last column compares"), "{md}");
        assert_eq!(md.matches("| no claim (3 seeds; needs 20) |").count(), 2, "{md}");
    }

    #[test]
    fn a_method_that_trained_exactly_as_joint_is_named() {
        let mut results = study([0.40, 0.44, 0.48]);
        let same: Vec<RunResult> =
            results[..3].iter().map(|r| RunResult { method: "relearn".into(), ..r.clone() }).collect();
        results.extend(same);
        let table = summarise(setup(&["joint", "agm", "relearn"], 3), &results);
        let md = markdown(&table, &results, None);
        assert!(
            md.contains(
                "`relearn` trained exactly as `joint` on every seed (the same validation curves), so it never acted \
                 within these 3 epochs"
            ),
            "{md}"
        );
        assert!(!md.contains("`agm` trained exactly"), "{md}");
        // One seed that differs in one epoch is no longer the same run.
        results.last_mut().unwrap().curve_accuracy[0] += 0.01;
        let md = markdown(&summarise(setup(&["joint", "agm", "relearn"], 3), &results), &results, None);
        assert!(!md.contains("trained exactly"), "{md}");
    }

    /// joint and agm over `seeds` seeds; agm's visual (the weaker modality) Shapley accuracy is
    /// joint's plus `gain`.
    fn paired_study(seeds: u64, gain: f64) -> Vec<RunResult> {
        let visual = |seed: u64| 0.30 + 0.01 * (seed % 3) as f64;
        let joint = (0..seeds).map(|k| result("joint", k, 0.90, 0.85, visual(k)));
        joint.chain((0..seeds).map(|k| result("agm", k, 0.91, 0.80, visual(k) + gain))).collect()
    }

    #[test]
    fn the_line_passes_or_fails_only_with_twenty_paired_seeds() {
        let line = |seeds: u64, gain: f64| {
            let results = paired_study(seeds, gain);
            let table = summarise(setup(&["joint", "agm"], seeds), &results);
            let v = table.verdict.clone().unwrap();
            assert_eq!(v.weaker_modality, "visual");
            (v.pass, markdown(&table, &results, None))
        };
        let (pass, md) = line(20, -0.01);
        assert_eq!(pass, Some(false));
        assert!(md.contains("**FAIL**: AGM raises the weaker modality's Shapley accuracy above joint's"), "{md}");
        assert!(md.contains("paired difference -1.00 ± 0.00 points"), "{md}");
        assert!(md.contains("AGM lowers it") && !md.contains("PASS"), "{md}");
        let (pass, md) = line(20, 0.05);
        assert_eq!(pass, Some(true));
        assert!(md.contains("**PASS**: AGM raises") && md.contains("AGM raises it)"), "{md}");
        // Equal means neither pass nor fail: the interval includes 0.
        let (pass, md) = line(20, 0.0);
        assert_eq!(pass, None);
        assert!(
            md.contains("**NO SIGNIFICANT DIFFERENCE**: AGM raises") && md.contains("the 95% CI includes 0"),
            "{md}"
        );
        assert!(!md.contains("PASS") && !md.contains("FAIL"), "{md}");
        // Under 20 paired seeds every verdict line, this one and the accuracy line, says no claim.
        let (pass, md) = line(19, 0.05);
        assert_eq!(pass, None);
        assert!(md.contains("**NO CLAIM**: AGM raises") && md.contains("this study has 19)"), "{md}");
        assert!(md.contains("no claim: 19 paired seeds, a claim needs 20"), "{md}");
        assert!(!md.contains("PASS") && !md.contains("FAIL"), "{md}");
    }

    #[test]
    fn a_lower_mean_whose_interval_includes_zero_is_no_fail() {
        // Twenty seeds, agm's weaker-modality accuracy below joint's on average (−0.17 points)
        // but by ±1 point from seed to seed: the paired 95% CI includes 0.
        let mut results = paired_study(20, 0.0);
        for r in results.iter_mut().filter(|r| r.method == "agm") {
            let noise = if r.seed % 2 == 0 { 0.01 } else { -0.01 };
            r.test.modality_accuracy[1] += noise - 0.0017;
        }
        let table = summarise(setup(&["joint", "agm"], 20), &results);
        let v = table.verdict.clone().unwrap();
        assert!(v.difference.mean < 0.0 && v.difference.half_width.unwrap() > -v.difference.mean, "{v:?}");
        assert_eq!((v.pass, v.outcome.as_str()), (None, "no-difference"));
        let md = markdown(&table, &results, None);
        assert!(md.contains("**NO SIGNIFICANT DIFFERENCE**: AGM raises"), "{md}");
        assert!(!md.contains("FAIL") && !md.contains("PASS"), "{md}");
        // A record written before the rule (pass = false on the means) renders by the same rule.
        let old = Verdict { pass: Some(false), outcome: String::new(), ..v };
        assert!(verdict_line(&old).starts_with("**NO SIGNIFICANT DIFFERENCE**"), "{}", verdict_line(&old));
    }

    #[test]
    fn without_both_methods_there_is_no_verdict_and_competition_shows_when_measured() {
        let mut results: Vec<RunResult> = study([0.4, 0.4, 0.4]).into_iter().filter(|r| r.method == "agm").collect();
        for (r, c) in results.iter_mut().zip([0.2, 0.3, 0.4]) {
            r.competition = Some(vec![c, 0.9]);
        }
        let table = summarise(setup(&["agm"], 3), &results);
        assert!(table.verdict.is_none());
        let md = markdown(&table, &results, None);
        assert!(md.contains("No verdict") && md.contains("| audio competition | visual competition |"), "{md}");
        assert!(md.contains("| 0.300 ± 0.248 | 0.900 ± 0.000 |"), "{md}");
        assert!(!md.contains("not measured"));
    }

    #[test]
    fn the_combined_plot_names_methods_and_the_weaker_modality() {
        let results = study([0.40, 0.44, 0.48]);
        let table = summarise(setup(&["joint", "agm"], 3), &results);
        let panels = curves(&table, &results);
        let agm_visual = &panels[1].series[1].points;
        let expected = [(1.0, 0.1), (2.0, 0.2), (3.0, 0.44)];
        assert_eq!(agm_visual.len(), 3);
        assert!(
            agm_visual.iter().zip(expected).all(|(p, e)| p.0 == e.0 && (p.1 - e.1).abs() < 1e-12),
            "{agm_visual:?}"
        );
        let tmp = tempfile::tempdir().unwrap();
        let [png_path, svg_path] = plot::render(&tmp.path().join("curves"), &panels).unwrap();
        assert!(check::coloured_pixels(&png_path) > 200);
        check::svg_names(&svg_path, &["joint", "agm", "validation accuracy", "visual Shapley accuracy (validation)"]);
        assert_eq!(panels[0].title, "Validation accuracy (mean over 3 seeds, 95% CI)");
        // A run its method stopped early: later means are over fewer runs, and the titles say so.
        let mut stopped = results.clone();
        stopped[0].curve_accuracy.pop();
        let panels = curves(&table, &stopped);
        assert_eq!(panels[0].title, "Validation accuracy (mean over 3 seeds while they run, 95% CI)");
        assert!(panels[0].series.iter().all(|s| !s.band.is_empty()));
        // Past five methods, the curves are means alone, and the titles say so.
        let names = ["joint", "agm", "m3", "m4", "m5", "m6"];
        let many: Vec<RunResult> =
            names.iter().flat_map(|m| (0..3).map(|seed| result(m, seed, 0.9, 0.8, 0.4 + 0.01 * seed as f64))).collect();
        let panels = curves(&summarise(setup(&names, 3), &many), &many);
        assert_eq!(panels[0].title, "Validation accuracy (mean over 3 seeds)");
        assert!(panels.iter().flat_map(|p| &p.series).all(|s| s.band.is_empty() && !s.points.is_empty()));
    }

    #[test]
    fn a_study_run_keys_modalities_by_name_and_gives_its_accuracy_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("study");
        let args = StudyArgs {
            methods: "joint,agm".into(),
            seeds: 2,
            run: crate::cli::RunFlags { epochs: Some(1), ..Default::default() },
            out: Some(out.clone()),
            concepts: Some(dir.path().join("concepts")),
            quiet: true,
        };
        run(args.clone()).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("study.json")).unwrap()).unwrap();
        // Run again, the finished runs are reused, not trained again.
        let summaries = |out: &Path| -> Vec<String> {
            let mut runs: Vec<_> =
                std::fs::read_dir(out).unwrap().flatten().map(|e| e.path().join("summary.json")).collect();
            runs.sort();
            runs.iter().filter(|p| p.exists()).map(|p| std::fs::read_to_string(p).unwrap()).collect()
        };
        let before = summaries(&out);
        assert_eq!(before.len(), 4);
        run(args.clone()).unwrap();
        assert_eq!(summaries(&out), before, "a finished run was trained again");
        let runs = json["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 4);
        for r in runs {
            let visual = &r["per_modality"]["visual"];
            assert!(visual["test_shapley_accuracy"].as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)), "{r}");
            assert!(r["per_modality"]["audio"]["validation_shapley_accuracy"].is_number(), "{r}");
        }
        // Other settings: the finished runs are named and kept, nothing trains.
        let longer = StudyArgs { run: crate::cli::RunFlags { epochs: Some(2), ..Default::default() }, ..args.clone() };
        let err = format!("{:#}", run(longer).unwrap_err());
        assert!(err.contains("4 of the 4 run folders") && err.contains("nothing was trained or deleted"), "{err}");
        let expected =
            "joint-seed0 holds a finished run of other settings; this study asks for epochs = 2 (the run's: 1)";
        assert!(err.contains(expected), "{err}");
        assert!(err.contains("pass a new --out"), "{err}");
        assert_eq!(summaries(&out), before, "a finished run of other settings was touched");
        // While the study folder is locked (a study running), a second study is refused at once.
        let held = STUDY_FOLDER.claim(&out).unwrap();
        let err = format!("{:#}", run(args.clone()).unwrap_err());
        assert!(err.contains("is in use by another run (pid"), "{err}");
        drop(held);
        // A run stopped after its last checkpoint (no summary yet) continues from it: its epochs
        // are not trained again, and it ends as it would have.
        let stopped = out.join("agm-seed1");
        let metrics = std::fs::read_to_string(stopped.join("metrics.jsonl")).unwrap();
        let test_accuracy = |dir: &Path| {
            let summary: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
            summary["test"]["accuracy"].as_f64().unwrap()
        };
        let accuracy = test_accuracy(&stopped);
        std::fs::remove_file(stopped.join("summary.json")).unwrap();
        run(args.clone()).unwrap();
        assert_eq!(std::fs::read_to_string(stopped.join("metrics.jsonl")).unwrap(), metrics);
        assert_eq!(test_accuracy(&stopped), accuracy);
        let summary = std::fs::read_to_string(stopped.join("summary.json")).unwrap();
        assert!(summary.contains("\"resumes\"") && !summary.contains("\"last\": null"), "{summary}");
        let verdict = &json["table"]["accuracy_verdicts"][0];
        assert_eq!((verdict["method"].as_str(), verdict["outcome"].as_str()), (Some("agm"), Some("too-few-seeds")));
        let md = std::fs::read_to_string(out.join("study.md")).unwrap();
        assert!(md.contains("**Test accuracy, agm − joint**") && md.contains("a claim needs 20"), "{md}");
        // `report` on the study folder renders the study again.
        std::fs::remove_file(out.join("study.md")).unwrap();
        crate::report::run(crate::cli::ReportArgs { run_dirs: vec![out.clone()], loss_scale: "log".into(), out: None })
            .unwrap();
        assert_eq!(std::fs::read_to_string(out.join("study.md")).unwrap(), md);
    }

    #[test]
    fn an_unfinished_run_of_other_settings_or_held_by_another_process_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("agm-seed0");
        // An unfinished run: config and metrics, no summary.json.
        crate::report::tests::synthetic_run(&dir, "agm", 2, false);
        let recorded = RunDir::open(&dir).unwrap().read_config().unwrap();
        let other = RunConfig { epochs: 3, ..recorded.clone() };
        let err = format!("{:#}", plan(&other, &dir).err().unwrap());
        assert!(
            err.contains("holds an unfinished run of other settings; this study asks for epochs = 3 (the run's: 2)"),
            "{err}"
        );
        // Same settings, but another process writes it: refused, not cleared.
        let held = RunDir::open(&dir).unwrap().lock().unwrap();
        let err = format!("{:#}", plan(&recorded, &dir).err().unwrap());
        assert!(err.contains("in use by another run (pid"), "{err}");
        assert!(dir.join("metrics.jsonl").exists() && dir.join("config.toml").exists());
        drop(held);
        // Nobody holds it: it continues from its last checkpoint.
        assert!(matches!(plan(&recorded, &dir).unwrap(), Plan::Resume));
    }

    #[test]
    fn a_run_killed_before_its_config_is_trained_again_and_other_files_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("joint-seed2");
        std::fs::create_dir_all(&dir).unwrap();
        // What a run killed right after taking its lock leaves.
        drop(RunDir::open(&dir).unwrap().lock().unwrap());
        std::fs::write(dir.join("config.toml.77.0.tmp"), "").unwrap();
        let cfg = RunConfig::av_digits();
        let held = RunDir::open(&dir).unwrap().lock().unwrap();
        let err = format!("{:#}", plan(&cfg, &dir).err().unwrap());
        assert!(err.contains("in use by another run (pid"), "{err}");
        drop(held);
        assert!(matches!(plan(&cfg, &dir).unwrap(), Plan::Train));
        assert!(!dir.join("config.toml.77.0.tmp").exists(), "the killed writer's temporary is cleared");
        // Files a run does not write are never taken for leftovers.
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        let err = format!("{:#}", plan(&cfg, &dir).err().unwrap());
        assert!(err.contains("holds files but no run; move them, or pass a new --out"), "{err}");
        assert!(dir.join("notes.txt").exists());
    }

    #[test]
    fn a_folder_holding_other_files_is_no_study_folder() {
        let tmp = tempfile::tempdir().unwrap();
        // A `report` comparison folder.
        let compare = tmp.path().join("compare");
        std::fs::create_dir_all(&compare).unwrap();
        for file in ["README.md", "accuracy.png", "loss.svg"] {
            std::fs::write(compare.join(file), "").unwrap();
        }
        let args = StudyArgs { methods: "joint".into(), seeds: 1, out: Some(compare.clone()), ..Default::default() };
        let err = run(args).unwrap_err().to_string();
        assert!(err.contains("holds README.md, accuracy.png, loss.svg, which a study does not write"), "{err}");
        assert!(!compare.join("joint-seed0").exists());
        // A study's own files, lock, temporaries and run folders are its own.
        let study = tmp.path().join("study");
        std::fs::create_dir_all(study.join("agm-seed12")).unwrap();
        for file in ["study.json", "study.md", "curves.png", "study.md.7.0.tmp"] {
            std::fs::write(study.join(file), "").unwrap();
        }
        drop(STUDY_FOLDER.claim(&study).unwrap());
        std::fs::create_dir_all(study.join("notes")).unwrap();
        assert!(STUDY_FOLDER.claim(&study).unwrap_err().to_string().contains("holds notes"));
    }

    #[test]
    fn ctrl_c_says_how_far_the_study_got_and_how_to_continue() {
        let line = interrupted_line(1, 4, Path::new("runs/st"));
        assert!(line.contains("1 of 4 runs finished in runs/st"), "{line}");
        assert!(line.contains("run the same command again to continue (finished runs are reused"), "{line}");
        assert!(interrupted_line(0, 1, Path::new("s")).contains("0 of 1 run finished"));
        assert_eq!((counted(1, "seed"), counted(20, "seed")), ("1 seed".to_string(), "20 seeds".to_string()));
    }

    #[test]
    fn the_accuracy_verdict_needs_twenty_seeds_and_an_interval_that_excludes_zero() {
        let ci = |n: usize, mean: f64, h: f64| MeanCi { n, mean, half_width: Some(h) };
        assert_eq!(AccuracyVerdict::of("agm", "joint", ci(20, 0.012, 0.005)).outcome, "better");
        assert_eq!(AccuracyVerdict::of("agm", "joint", ci(20, -0.012, 0.005)).outcome, "worse");
        assert_eq!(AccuracyVerdict::of("agm", "joint", ci(20, 0.002, 0.005)).outcome, "no-difference");
        assert_eq!(AccuracyVerdict::of("agm", "joint", ci(19, 0.012, 0.005)).outcome, "too-few-seeds");
        let line = AccuracyVerdict::of("agm", "joint", ci(20, 0.012, 0.005)).line();
        assert!(line.contains("+1.20 ± 0.50 points") && line.contains("agm beats joint"), "{line}");
    }

    #[test]
    fn seeds_are_bounded_before_any_run_is_planned() {
        // Checked first: a huge count fails at once instead of allocating a config per seed.
        for seeds in [0, MAX_SEEDS + 1, 1_000_000_000_000, u64::MAX] {
            let args = StudyArgs { methods: "joint,agm".into(), seeds, ..Default::default() };
            let err = run(args).unwrap_err().to_string();
            assert!(err.contains(&format!("--seeds {seeds} is out of range: pass 1 to {MAX_SEEDS}")), "{err}");
        }
        check_seeds(1).unwrap();
        check_seeds(MAX_SEEDS).unwrap();
    }

    #[test]
    fn methods_are_parsed_and_checked() {
        assert_eq!(parse_methods(" joint, agm ,").unwrap(), ["joint", "agm"]);
        assert!(parse_methods("agm,agm").unwrap_err().to_string().contains("twice"));
        assert!(parse_methods(",").is_err());
    }
}
