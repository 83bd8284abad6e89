//! `cargo xtask report`: the plots (PNG and SVG) and Markdown summary of one run directory,
//! written into `<run-dir>/report/`. `cargo xtask train` and `cargo xtask study` write it at the
//! end of every run.
//!
//! ```text
//! <run-dir>/report/README.md          summary table (best and last epoch), every epoch, plot links
//! <run-dir>/report/accuracy.{png,svg}  validation accuracy over epochs
//! <run-dir>/report/modality_accuracy.{png,svg}  per-modality Shapley accuracy (validation)
//! <run-dir>/report/loss.{png,svg}      training loss, validation loss (log scale by default)
//! <run-dir>/report/coefficients.{png,svg}  the method's coefficients (when it has any)
//! <run-dir>/report/competition.{png,svg}   competition strength (when measured)
//! ```
//!
//! `cargo xtask report <run> <run>…` overlays several runs in one comparison folder instead.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agm_core::by_name::value_names;
use agm_metric::EvalReport;
use agm_train::{EpochSummary, RunConfig, RunDir};
use anyhow::Context;

use crate::cli::ReportArgs;
use crate::plot::{self, Panel, Series, YScale};

/// Everything a run directory says about a run.
#[derive(Clone, Debug)]
pub struct RunRecord {
    pub config: RunConfig,
    pub rows: Vec<EpochSummary>,
    pub modalities: Vec<String>,
    /// Test split, best weights (from `summary.json`, when the run finished).
    pub test: Option<EvalReport>,
    /// The method ended the run before its last epoch (MSES), from `summary.json`.
    pub stopped_by_method: bool,
}

impl RunRecord {
    /// Reads `config.toml`, `metrics.jsonl` and, if present, `summary.json`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let run = RunDir::open(dir)?;
        let config = run.read_config()?;
        let rows: Vec<EpochSummary> = run.read_metrics()?;
        let (test, stopped_by_method) = match run.summary().exists() {
            true => {
                let outcome = agm_train::run::RunOutcome::load(&run)?;
                (outcome.test, outcome.run.stopped_by_method)
            }
            false => (None, false),
        };
        // The names the rows carry; for rows of earlier versions, the model's.
        let modalities = match rows.first() {
            Some(r) if !r.validation.modalities.is_empty() => r.validation.modalities.clone(),
            first => modality_names(&config, first.map_or(0, |r| r.validation.modality_accuracy.len())),
        };
        Ok(Self { config, rows, modalities, test, stopped_by_method })
    }

    /// The row of the best validation epoch (as the last row records it).
    pub fn best_row(&self) -> Option<&EpochSummary> {
        let best = self.rows.last()?.best_epoch;
        self.rows.iter().find(|r| r.epoch == best)
    }
}

/// The model's modality names (building the model costs no data); `modality k` where the model
/// cannot be built or does not match the metrics.
pub fn modality_names(config: &RunConfig, count: usize) -> Vec<String> {
    let from_model = agm_fusion::preset_spec(&config.model, &config.preset_options())
        .ok()
        .map(|spec| spec.inputs.iter().map(|i| i.modality.clone()).collect::<Vec<_>>());
    match from_model {
        Some(names) if names.len() == count || count == 0 => names,
        _ => (1..=count).map(|k| format!("modality {k}")).collect(),
    }
}

fn epoch_series(name: impl Into<String>, rows: &[EpochSummary], f: impl Fn(&EpochSummary) -> Option<f64>) -> Series {
    Series::new(name, rows.iter().filter_map(|r| f(r).map(|y| (r.epoch as f64, y))).collect())
}

fn vector_len(rows: &[EpochSummary], f: impl Fn(&EpochSummary) -> Option<&Vec<f64>>) -> usize {
    rows.iter().filter_map(f).map(Vec::len).max().unwrap_or(0)
}

/// One coefficient a run logs: a modality's (or the fused output's) under the run's method, or
/// under one method of a stack whose methods each log theirs (`agm+ogm-ge`).
struct Coefficient {
    /// `audio`, or `agm audio` in a stack.
    label: String,
    /// The stacked method, `None` for the run's own coefficients.
    method: Option<String>,
    index: usize,
}

impl Coefficient {
    /// The run's coefficients: each stacked method's where the rows have them (in the order the
    /// stack is written), else the method's own.
    fn all(record: &RunRecord) -> Vec<Self> {
        let rows = &record.rows;
        let stacked: Vec<&str> = record
            .config
            .method
            .split('+')
            .map(str::trim)
            .filter(|m| rows.iter().any(|r| r.coefficients_by_method.contains_key(*m)))
            .collect();
        if stacked.is_empty() {
            let n =
                vector_len(rows, |r| r.coefficients.as_ref()).max(vector_len(rows, |r| r.last_coefficients.as_ref()));
            let names = value_names(&record.modalities, n);
            return names.into_iter().enumerate().map(|(index, label)| Self { label, method: None, index }).collect();
        }
        stacked
            .into_iter()
            .flat_map(|method| {
                let n = vector_len(rows, |r| r.coefficients_by_method.get(method));
                value_names(&record.modalities, n).into_iter().enumerate().map(move |(index, name)| Self {
                    label: format!("{method} {name}"),
                    method: Some(method.to_string()),
                    index,
                })
            })
            .collect()
    }

    /// The mean over the epoch's steps.
    fn mean(&self, r: &EpochSummary) -> Option<f64> {
        let values = match &self.method {
            Some(m) => r.coefficients_by_method.get(m),
            None => r.coefficients.as_ref(),
        };
        values.and_then(|c| c.get(self.index).copied())
    }

    /// The value after the epoch's last step.
    fn last(&self, r: &EpochSummary) -> Option<f64> {
        let values = match &self.method {
            Some(m) => r.last_coefficients_by_method.get(m),
            None => r.last_coefficients.as_ref(),
        };
        values.and_then(|c| c.get(self.index).copied())
    }

    /// Whether any row has the value after the epoch's last step (a stack's rows written before
    /// those were kept have none).
    fn has_last(&self, rows: &[EpochSummary]) -> bool {
        rows.iter().any(|r| self.last(r).is_some())
    }
}

/// The loss axis of `--loss-scale`.
pub fn loss_scale(name: &str) -> YScale {
    if name == "linear" {
        YScale::Linear
    } else {
        YScale::Log
    }
}

/// The loss panel of a run or a comparison, on the `--loss-scale` axis.
fn loss_panel(series: Vec<Series>, loss: YScale) -> Panel {
    let axis = if loss == YScale::Log { "cross-entropy (log scale)" } else { "cross-entropy" };
    Panel::new("Loss", axis, series).y_scale(loss)
}

/// What a method's coefficients are, for the coefficient plot's axis.
fn coefficient_axis(method: &str) -> &'static str {
    match method {
        "agm" | "ogm" | "ogm-ge" | "opm" => "gradient coefficient",
        "mslr" => "learning-rate multiplier",
        "mses" => "gradient gate (1: trains, 0: stopped)",
        "gblend" => "loss weight",
        _ => "coefficient",
    }
}

/// The panels of a run's plots, by file stem, in the order the README shows them.
pub fn panels(record: &RunRecord, loss: YScale) -> Vec<(&'static str, String, Panel)> {
    let rows = &record.rows;
    let mut out = Vec::new();
    out.push((
        "accuracy",
        "Validation accuracy".to_string(),
        Panel::new(
            "Validation accuracy",
            "accuracy",
            vec![
                epoch_series("validation accuracy", rows, |r| Some(r.validation.accuracy)),
                // The epoch whose weights were kept and tested.
                epoch_series("best epoch (selected)", rows, |r| {
                    (Some(r.epoch) == record.best_row().map(|b| b.epoch)).then_some(r.validation.accuracy)
                })
                .dashed()
                .colour(3),
            ],
        )
        .y_scale(YScale::Percent),
    ));
    let modality = record
        .modalities
        .iter()
        .enumerate()
        .map(|(i, name)| epoch_series(name.as_str(), rows, |r| r.validation.modality_accuracy.get(i).copied()))
        .collect();
    out.push((
        "modality_accuracy",
        "Per-modality Shapley accuracy (validation)".to_string(),
        Panel::new("Per-modality Shapley accuracy (validation)", "Shapley accuracy", modality).y_scale(YScale::Percent),
    ));
    out.push((
        "loss",
        "Loss".to_string(),
        loss_panel(
            vec![
                epoch_series("training loss", rows, |r| Some(r.train_loss)),
                epoch_series("validation loss", rows, |r| Some(r.validation.loss)),
            ],
            loss,
        ),
    ));
    let coefficients = Coefficient::all(record);
    if !coefficients.is_empty() {
        let mut series = Vec::new();
        // Dashed lines are the end-of-epoch values; in a stack each coefficient has a colour of its
        // own (a single method's are its modalities' colours).
        for (k, c) in coefficients.iter().enumerate() {
            let colour = if c.method.is_some() { k } else { c.index };
            series.push(epoch_series(format!("{} (epoch mean)", c.label), rows, |r| c.mean(r)).colour(colour));
            if c.has_last(rows) {
                series.push(
                    epoch_series(format!("{} (end of epoch)", c.label), rows, |r| c.last(r)).dashed().colour(colour),
                );
            }
        }
        out.push((
            "coefficients",
            "Coefficients".to_string(),
            Panel::new("Modulation coefficients", coefficient_axis(&record.config.method), series),
        ));
    }
    let n_comp = vector_len(rows, |r| r.competition.as_ref());
    if n_comp > 0 {
        let names = value_names(&record.modalities, n_comp);
        let series = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                epoch_series(name.as_str(), rows, |r| r.competition.as_ref().and_then(|c| c.get(i).copied()))
            })
            .collect();
        out.push((
            "competition",
            "Competition strength".to_string(),
            Panel::new("Competition strength (validation)", "strength (0: none, about 1: full)", series),
        ));
    }
    out
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.2}%", 100.0 * x)
    } else {
        "n/a".into()
    }
}

/// Three decimals, or three significant digits where those would round a value to zero.
fn num(x: f64) -> String {
    if !x.is_finite() {
        "n/a".into()
    } else if x != 0.0 && x.abs() < 0.01 {
        plot::significant(x, 3)
    } else {
        crate::progress::compact(x, 3)
    }
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map(|b| format!("{:.0} MiB", b as f64 / (1024.0 * 1024.0))).unwrap_or_else(|| "n/a".into())
}

/// Which optional column groups the tables carry.
struct Columns {
    coefficients: Vec<Coefficient>,
    competition: Vec<String>,
    /// Whether any epoch has events (a modality stopped, encoders re-initialised).
    events: bool,
}

impl Columns {
    fn of(record: &RunRecord) -> Self {
        let n_comp = vector_len(&record.rows, |r| r.competition.as_ref());
        Self {
            coefficients: Coefficient::all(record),
            competition: value_names(&record.modalities, n_comp),
            events: record.rows.iter().any(|r| !r.events.is_empty()),
        }
    }

    fn header(&self, first: &[&str], modalities: &[String]) -> String {
        let mut cells: Vec<String> = first.iter().map(|s| s.to_string()).collect();
        cells.push("validation accuracy".into());
        cells.extend(modalities.iter().map(|m| format!("{m} Shapley acc.")));
        cells.extend(self.coefficients.iter().map(|c| format!("{} coeff.", c.label)));
        cells.extend(self.competition.iter().map(|m| format!("{m} competition")));
        cells.push("step time".into());
        cells.push("peak memory".into());
        if self.events {
            cells.push("events".into());
        }
        let rule: Vec<&str> = cells.iter().map(|_| "---").collect();
        format!("| {} |\n| {} |\n", cells.join(" | "), rule.join(" | "))
    }

    fn row(&self, first: &[String], r: &EpochSummary, n_modalities: usize) -> String {
        let mut cells = first.to_vec();
        cells.push(pct(r.validation.accuracy));
        cells
            .extend((0..n_modalities).map(|i| r.validation.modality_accuracy.get(i).map_or("n/a".into(), |&v| pct(v))));
        let vec_cells = |v: &Option<Vec<f64>>, n: usize| -> Vec<String> {
            (0..n).map(|i| v.as_ref().and_then(|c| c.get(i)).map_or("—".into(), |&x| num(x))).collect()
        };
        cells.extend(self.coefficients.iter().map(|c| c.mean(r).map_or("—".into(), num)));
        cells.extend(vec_cells(&r.competition, self.competition.len()));
        cells.push(format!("{:.2} ms", 1e3 * r.mean_step_seconds));
        cells.push(mib(r.peak_memory_bytes));
        if self.events {
            cells.push(r.events.join("; ").replace('|', "\\|"));
        }
        format!("| {} |\n", cells.join(" | "))
    }
}

/// A method window that opens after the last epoch, or a ReLearn schedule whose first re-learning
/// comes at the last epoch's end or later, one note each: the method never acts in this run.
pub fn late_windows(cfg: &RunConfig) -> Vec<String> {
    let recorded = cfg.recorded_settings();
    let mut notes: Vec<String> = recorded
        .iter()
        .filter_map(|(key, value)| {
            let section = key.strip_suffix(".window_start")?;
            let start = value.as_integer().filter(|&s| s > cfg.epochs as i64)?;
            Some(format!(
                "[{section}] window_start = {start} is after the last epoch ({}): the method never acts in this run",
                cfg.epochs
            ))
        })
        .collect();
    // Recorded only where the run's method is (or stacks) ReLearn.
    if recorded.contains_key("relearn.reinit_every") {
        let relearn = cfg.method::<agm_modulation::Relearn>();
        match relearn.first_reinit() {
            None => notes.push("[relearn] max_reinits = 0: relearn never re-learns in this run".into()),
            Some(first) if first >= cfg.epochs => notes.push(format!(
                "[relearn] reinit_every = {}: its first re-learning follows epoch {first}, and this run has {}: \
                 relearn never changes what trains (a smaller reinit_every makes it act)",
                relearn.reinit_every,
                crate::progress::counted(cfg.epochs as u64, "epoch")
            )),
            Some(_) => {}
        }
    }
    notes
}

/// A note when the method's coefficients were 1 in every step of the run: it trained as joint
/// (a window, warm-up or condition that never held within the run, or neutral settings). Only
/// for a single method: a stack's `coefficients` are one member's. `config_toml` names where the
/// run's settings are, as the note says it.
pub fn never_modulated(cfg: &RunConfig, rows: &[EpochSummary], config_toml: &str) -> Option<String> {
    let neutral = |c: &Option<Vec<f64>>| c.as_ref().is_some_and(|c| c.iter().all(|&v| v == 1.0));
    let all_neutral =
        !rows.is_empty() && rows.iter().all(|r| neutral(&r.coefficients) && neutral(&r.last_coefficients));
    // A late window was named before the run started.
    if cfg.method == "joint" || cfg.method.contains('+') || !all_neutral || !late_windows(cfg).is_empty() {
        return None;
    }
    Some(format!(
        "{}'s coefficients were 1 in every step of these {}, so it trained as `joint` does: its settings never \
         let it act within them (a window, warm-up or patience beyond them, or a neutral value such as \
         alpha = 0; {config_toml} lists them, docs/methods.md explains them)",
        cfg.method,
        crate::progress::counted(rows.len() as u64, "epoch"),
    ))
}

/// The Markdown summary; `plots` are `(stem, title)` of the files written beside it.
pub fn markdown(record: &RunRecord, plots: &[(&str, String)]) -> String {
    let cfg = &record.config;
    let mut md = String::new();
    let _ = writeln!(md, "# Run report: {} on {}, seed {}\n", cfg.method, cfg.dataset_label(), cfg.seed);
    let done = record.rows.last().map_or(0, |r| r.epoch);
    let stopped = if record.stopped_by_method && done < cfg.epochs {
        format!(" ({} stopped training)", cfg.method)
    } else {
        String::new()
    };
    let _ = writeln!(
        md,
        "{done} of {} epochs done{stopped}; model `{}`, batch size {}, device `{}`. The tables and plots below \
         are on the validation split{}; competition strength: 0 = the modality's mono-modal concept is linearly \
         recoverable from the fused feature, about 1 = not at all.\n",
        cfg.epochs,
        cfg.model,
        cfg.batch_size,
        cfg.device,
        if record.test.is_some() { " (the test line is the exception)" } else { "" }
    );
    if let Some(test) = &record.test {
        let per: Vec<String> =
            record.modalities.iter().zip(&test.modality_accuracy).map(|(m, a)| format!("{m} {}", pct(*a))).collect();
        let _ = writeln!(
            md,
            "**Test accuracy of the best-validation weights: {}** on {} samples (test Shapley: {}).\n",
            pct(test.accuracy),
            test.samples,
            per.join(", ")
        );
    }
    let late = late_windows(cfg).into_iter();
    for note in late.chain(never_modulated(cfg, &record.rows, "the run's `config.toml`")) {
        let _ = writeln!(md, "> **Note:** {note}.\n");
    }
    let columns = Columns::of(record);
    let n = record.modalities.len();
    if record.rows.is_empty() {
        md.push_str("No epoch has finished yet: `metrics.jsonl` is empty.\n");
        return md;
    }
    md.push_str("## Best and last epoch\n\n");
    md.push_str(&columns.header(&["", "epoch"], &record.modalities));
    if let Some(best) = record.best_row() {
        md.push_str(&columns.row(&["best (validation)".into(), best.epoch.to_string()], best, n));
    }
    let last = record.rows.last().expect("not empty");
    md.push_str(&columns.row(&["last".into(), last.epoch.to_string()], last, n));
    md.push('\n');
    if columns.competition.is_empty() {
        md.push_str(
            "Competition strength was not measured in this run (no mono-modal concepts were attached; \
             `cargo xtask concept` trains them).\n\n",
        );
    }
    md.push_str("## Plots\n\n");
    for (stem, title) in plots {
        let _ = writeln!(md, "### {title}\n\n![{title}]({stem}.png)\n\n[SVG]({stem}.svg)\n");
    }
    md.push_str("## Every epoch\n\n");
    md.push_str(&columns.header(&["epoch", "lr", "train loss", "validation loss"], &record.modalities));
    for r in &record.rows {
        let first = [r.epoch.to_string(), plot::significant(r.lr, 4), num(r.train_loss), num(r.validation.loss)];
        md.push_str(&columns.row(&first, r, n));
    }
    md
}

/// `metrics.csv`: the rows of `metrics.jsonl`, one column per value, per-modality values under
/// their modality's name; an empty cell where a row has no value.
pub fn metrics_csv(record: &RunRecord) -> String {
    let coefficients = Coefficient::all(record);
    let mut header: Vec<String> =
        ["epoch", "lr", "train_loss", "validation_accuracy", "validation_loss"].map(String::from).to_vec();
    // Summed-heads models also score each modality's own head.
    let heads = record.rows.iter().any(|r| !r.validation.head_accuracy.is_empty());
    for m in &record.modalities {
        header.extend([format!("{m}_shapley_accuracy"), format!("{m}_shapley_loss"), format!("{m}_competition")]);
        if heads {
            header.extend([format!("{m}_head_accuracy"), format!("{m}_head_loss")]);
        }
    }
    // A single method's end-of-epoch column always; a stack's where its rows keep those values.
    let with_last: Vec<bool> = coefficients.iter().map(|c| c.method.is_none() || c.has_last(&record.rows)).collect();
    for (c, &last) in coefficients.iter().zip(&with_last) {
        // Column names as identifiers (`ogm_ge_audio_…`, as the method's config section).
        let label = c.label.replace([' ', '-'], "_");
        header.push(format!("{label}_coefficient_mean"));
        if last {
            header.push(format!("{label}_coefficient_last"));
        }
    }
    header.extend(
        ["mean_step_seconds", "peak_memory_bytes", "best_epoch", "reference_split_accuracy", "events"]
            .map(String::from),
    );
    let cell = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
    let mut csv = header.join(",") + "\n";
    for r in &record.rows {
        let mut cells = vec![
            r.epoch.to_string(),
            r.lr.to_string(),
            r.train_loss.to_string(),
            r.validation.accuracy.to_string(),
            r.validation.loss.to_string(),
        ];
        for i in 0..record.modalities.len() {
            cells.push(cell(r.validation.modality_accuracy.get(i).copied()));
            cells.push(cell(r.validation.modality_loss.get(i).copied()));
            cells.push(cell(r.competition.as_ref().and_then(|c| c.get(i).copied())));
            if heads {
                cells.push(cell(r.validation.head_accuracy.get(i).copied()));
                cells.push(cell(r.validation.head_loss.get(i).copied()));
            }
        }
        for (c, &last) in coefficients.iter().zip(&with_last) {
            cells.push(cell(c.mean(r)));
            if last {
                cells.push(cell(c.last(r)));
            }
        }
        cells.push(r.mean_step_seconds.to_string());
        cells.push(r.peak_memory_bytes.map_or(String::new(), |b| b.to_string()));
        cells.push(r.best_epoch.to_string());
        cells.push(cell(r.reference_split.as_ref().map(|e| e.accuracy)));
        // Quoted as CSV quotes text that may hold commas.
        let events = r.events.join("; ");
        cells.push(if events.is_empty() { events } else { format!("\"{}\"", events.replace('"', "\"\"")) });
        csv.push_str(&cells.join(","));
        csv.push('\n');
    }
    csv
}

/// Writes `<run-dir>/metrics.csv` and renders `<run-dir>/report/`; returns that folder.
pub fn write(run_dir: &Path, loss: YScale) -> anyhow::Result<PathBuf> {
    let record = RunRecord::load(run_dir)?;
    let run = RunDir::open(run_dir)?;
    agm_train::checkpoint::write_atomic(&run.metrics_csv(), metrics_csv(&record).as_bytes())?;
    let out = run.report();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut plots = Vec::new();
    if !record.rows.is_empty() {
        for (stem, title, panel) in panels(&record, loss) {
            plot::render(&out.join(stem), &[panel])?;
            plots.push((stem, title));
        }
    }
    let readme = out.join("README.md");
    agm_train::checkpoint::write_atomic(&readme, markdown(&record, &plots).as_bytes())?;
    Ok(out)
}

/// The report at the end of `train` (finished or stopped), to print with [`print_after_train`].
pub fn write_after_train(run_dir: &Path) -> anyhow::Result<PathBuf> {
    write(run_dir, YScale::Log)
}

/// A run's callback that writes its report once its files are written, while the run still
/// holds its directory's lock (no second process can clear the report's temporaries).
#[derive(Default)]
pub struct ReportWhenWritten {
    /// Where the report went, or why it failed; `None` when no epoch finished.
    pub written: Option<anyhow::Result<PathBuf>>,
}

impl agm_train::Callback for ReportWhenWritten {
    /// The data's notes: a study or reproduction has no other output at a run's start.
    fn on_start(&mut self, run: &agm_train::run::RunStarted) {
        crate::progress::print_data_notes(&run.notes);
    }

    fn on_run_written(&mut self, dir: &RunDir) {
        // The epochs done so far, as for a finished run (a stop in the first epoch has none).
        if dir.metrics().exists() {
            self.written = Some(write_after_train(dir.root()));
        }
    }
}

/// Writes a finished run's `metrics.csv` and report again where a kill left them missing, or
/// older than its `summary.json` (from an earlier stop); under the run's lock, which also
/// clears the killed writer's temporaries. `None` where they are current.
pub fn repair_finished(run: &RunDir) -> anyhow::Result<Option<PathBuf>> {
    let modified = |path: PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let summary = modified(run.summary());
    let outputs = [run.metrics_csv(), run.report().join("README.md")].map(modified);
    if outputs.iter().all(|written| written.is_some_and(|w| summary.is_some_and(|s| w >= s))) {
        return Ok(None);
    }
    let _lock = run.lock()?;
    write_after_train(run.root()).map(Some)
}

/// Where the report went; a failure is a warning, the run's checkpoint and metrics are written
/// already.
pub fn print_after_train(written: anyhow::Result<PathBuf>) {
    match written {
        Ok(dir) => println!("report: {}", dir.join("README.md").display()),
        Err(e) => eprintln!("warning: the run's checkpoint and metrics are written but its report failed: {e:#}"),
    }
}

pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let loss = loss_scale(&args.loss_scale);
    if let [one] = args.run_dirs.as_slice() {
        if !one.join("config.toml").exists() && one.join("study.json").exists() {
            if loss != YScale::Log {
                eprintln!("note: --loss-scale does nothing for a study (its plot shows accuracies, no loss)");
            }
            let md = crate::study::render_folder(one)?;
            println!("study report: {}", md.display());
            return Ok(ExitCode::SUCCESS);
        }
        let dir = write(one, loss).with_context(|| format!("report of {}", one.display()))?;
        println!("report: {}", dir.join("README.md").display());
        return Ok(ExitCode::SUCCESS);
    }
    // The same run twice would be one run drawn twice under one label.
    for (i, dir) in args.run_dirs.iter().enumerate() {
        let same = |other: &PathBuf| match (dir.canonicalize(), other.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => dir == other,
        };
        if let Some(first) = args.run_dirs[..i].iter().find(|d| same(d)) {
            anyhow::bail!(
                "{} is given twice (as {} and {}); a comparison takes each run once",
                dir.display(),
                first.display(),
                dir.display()
            );
        }
    }
    let records = args
        .run_dirs
        .iter()
        .map(|dir| Ok((run_label(dir), RunRecord::load(dir).with_context(|| format!("report of {}", dir.display()))?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let out = match &args.out {
        Some(out) => {
            std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
            out.clone()
        }
        None => crate::new_dir("runs", "compare")?,
    };
    let md = write_comparison(&records, &out, loss)?;
    println!("comparison of {} runs: {}", records.len(), md.display());
    Ok(ExitCode::SUCCESS)
}

/// A run's name in a comparison: its directory's name.
fn run_label(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// The panels of a comparison, by file stem: one series per run (same colour in every panel).
pub fn comparison_panels(records: &[(String, RunRecord)], loss: YScale) -> Vec<(&'static str, Vec<Panel>)> {
    let per_run = |f: &dyn Fn(&EpochSummary) -> Option<f64>| -> Vec<Series> {
        records.iter().enumerate().map(|(k, (label, r))| epoch_series(label.as_str(), &r.rows, f).colour(k)).collect()
    };
    let accuracy = Panel::new("Validation accuracy", "accuracy", per_run(&|r| Some(r.validation.accuracy)))
        .y_scale(YScale::Percent);
    // One panel per modality name, in the order of the first run that has it.
    let mut names: Vec<&String> = Vec::new();
    for (_, r) in records {
        names.extend(r.modalities.iter().filter(|m| !names.contains(m)).collect::<Vec<_>>());
    }
    let modality_panels = names
        .iter()
        .map(|name| {
            let series = records
                .iter()
                .enumerate()
                .filter_map(|(k, (label, r))| {
                    let i = r.modalities.iter().position(|m| m == *name)?;
                    Some(
                        epoch_series(label.as_str(), &r.rows, |row| row.validation.modality_accuracy.get(i).copied())
                            .colour(k),
                    )
                })
                .collect();
            Panel::new(format!("{name} Shapley accuracy (validation)"), "Shapley accuracy", series)
                .y_scale(YScale::Percent)
        })
        .collect();
    let mut losses = Vec::new();
    for (k, (label, r)) in records.iter().enumerate() {
        losses.push(epoch_series(format!("{label} (validation)"), &r.rows, |row| Some(row.validation.loss)).colour(k));
        losses
            .push(epoch_series(format!("{label} (training)"), &r.rows, |row| Some(row.train_loss)).colour(k).dashed());
    }
    vec![("accuracy", vec![accuracy]), ("modality_accuracy", modality_panels), ("loss", vec![loss_panel(losses, loss)])]
}

/// Writes the overlaid plots and a `README.md` table of the runs into `out`; returns the README.
pub fn write_comparison(records: &[(String, RunRecord)], out: &Path, loss: YScale) -> anyhow::Result<PathBuf> {
    let mut md = format!("# Comparison of {} runs\n\n", records.len());
    md.push_str(
        "| run | method | model | dataset | seed | epochs | best epoch | best validation accuracy | test accuracy \
         | test Shapley accuracy |\n",
    );
    md.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (label, r) in records {
        let best = r.best_row();
        let done = r.rows.last().map_or(0, |row| row.epoch);
        let state = match (r.test.is_some(), r.stopped_by_method) {
            (_, true) if done < r.config.epochs => " (the method stopped it)",
            (false, _) => " (unfinished: no test evaluation)",
            _ => "",
        };
        let shapley = r.test.as_ref().map_or("n/a".into(), |t| {
            let each: Vec<String> =
                r.modalities.iter().zip(&t.modality_accuracy).map(|(m, a)| format!("{m} {}", pct(*a))).collect();
            each.join(", ")
        });
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {done} of {}{state} | {} | {} | {} | {shapley} |",
            r.config.method,
            r.config.model,
            r.config.dataset_label(),
            r.config.seed,
            r.config.epochs,
            best.map_or("n/a".into(), |b| b.epoch.to_string()),
            best.map_or("n/a".into(), |b| pct(b.validation.accuracy)),
            r.test.as_ref().map_or("n/a".into(), |t| pct(t.accuracy)),
        );
    }
    md.push_str(&differing_settings(records));
    md.push_str("\nEach run keeps one colour in every plot; training loss is dashed.\n\n");
    for (stem, panels) in comparison_panels(records, loss) {
        plot::render(&out.join(stem), &panels)?;
        let title = match stem {
            "accuracy" => "Validation accuracy",
            "modality_accuracy" => "Shapley accuracy per modality (validation)",
            _ => "Loss",
        };
        let _ = writeln!(md, "### {title}\n\n![{title}]({stem}.png)\n\n[SVG]({stem}.svg)\n");
    }
    let readme = out.join("README.md");
    agm_train::checkpoint::write_atomic(&readme, md.as_bytes())?;
    Ok(readme)
}

/// The settings, beyond the table's columns, in which the runs differ: one line per setting with
/// every run's value (`–` where a run has no such setting, another method's section).
fn differing_settings(records: &[(String, RunRecord)]) -> String {
    let in_table = ["method", "model", "dataset", "seed", "data_preset", "epochs", "concepts", "train_concepts"];
    let settings: Vec<_> = records.iter().map(|(_, r)| r.config.recorded_settings()).collect();
    let mut keys: Vec<&String> =
        settings.iter().flat_map(|s| s.keys()).filter(|k| !in_table.contains(&k.as_str())).collect();
    keys.sort();
    keys.dedup();
    // Each run's method with its dataset's default settings: a setting only some runs have
    // (their method's) is listed where one of them changed it.
    let defaults: Vec<_> = records
        .iter()
        .map(|(_, r)| {
            RunConfig::for_dataset(&r.config.dataset)
                .map(|d| RunConfig { method: r.config.method.clone(), ..d }.recorded_settings())
                .unwrap_or_default()
        })
        .collect();
    let mut lines = String::new();
    for key in keys {
        let values: Vec<Option<&toml::Value>> = settings.iter().map(|s| s.get(key)).collect();
        let mut present = values.iter().flatten();
        let first = present.next();
        let disagree = !present.all(|v| Some(v) == first);
        let partial = values.iter().any(Option::is_none);
        let changed = || values.iter().zip(&defaults).any(|(v, d)| v.is_some_and(|v| d.get(key) != Some(v)));
        // Listed where the runs that have it disagree, or where only some have it and one changed it.
        if !(disagree || partial && changed()) {
            continue;
        }
        let each: Vec<String> = records
            .iter()
            .zip(&values)
            .map(|((label, _), v)| format!("{label} {}", v.map_or("–".to_string(), ToString::to_string)))
            .collect();
        let _ = writeln!(lines, "- `{key}`: {}", each.join(", "));
    }
    if lines.is_empty() {
        String::new()
    } else {
        format!("\nSettings that differ between the runs:\n\n{lines}")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::plot::check;

    #[test]
    fn a_finished_runs_missing_or_stale_report_is_written_again_under_its_lock() {
        use agm_train::run::{train_run, Concepts, RunOptions, RunStart};
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::create(tmp.path().join("run")).unwrap();
        let cfg = RunConfig { epochs: 1, ..RunConfig::av_digits() };
        let opts = RunOptions { concepts: Some(Concepts::Off), ..RunOptions::default() };
        let mut report = ReportWhenWritten::default();
        train_run(&cfg, &dir, RunStart::New, &opts, &mut report).unwrap();
        report.written.expect("a report").unwrap();
        assert_eq!(repair_finished(&dir).unwrap(), None, "a current report stays");
        // Killed before its metrics.csv: written again.
        std::fs::remove_file(dir.metrics_csv()).unwrap();
        assert_eq!(repair_finished(&dir).unwrap(), Some(dir.report()));
        assert!(dir.metrics_csv().exists());
        // A report older than the summary (from an earlier stop) is written again, but not
        // while another process holds the run.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let summary = std::fs::read(dir.summary()).unwrap();
        std::fs::write(dir.summary(), summary).unwrap();
        let held = dir.lock().unwrap();
        assert!(repair_finished(&dir).unwrap_err().to_string().contains("in use by another run"));
        drop(held);
        assert_eq!(repair_finished(&dir).unwrap(), Some(dir.report()));
        assert_eq!(repair_finished(&dir).unwrap(), None);
    }

    /// A run directory with a config and `epochs` metrics rows, as a finished AGM run writes
    /// them; no training.
    pub(crate) fn synthetic_run(dir: &Path, method: &str, epochs: usize, competition: bool) {
        let mut cfg = RunConfig::av_digits();
        cfg.method = method.into();
        cfg.epochs = epochs;
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.toml"), cfg.to_toml()).unwrap();
        let run = RunDir::open(dir).unwrap();
        for e in 1..=epochs {
            let t = e as f64 / epochs as f64;
            let row = EpochSummary {
                epoch: e,
                lr: 0.05,
                train_loss: 2.0 - t,
                validation: EvalReport {
                    samples: 600,
                    modalities: vec!["audio".into(), "visual".into()],
                    accuracy: 0.5 + 0.4 * t,
                    loss: 1.5 - t,
                    modality_accuracy: vec![0.45 + 0.4 * t, 0.2 + 0.1 * t],
                    modality_loss: vec![1.6 - t, 2.0 - 0.2 * t],
                    ..Default::default()
                },
                coefficients: (method == "agm").then(|| vec![1.0 - 0.2 * t, 1.0 + 0.3 * t]),
                last_coefficients: (method == "agm").then(|| vec![1.0 - 0.25 * t, 1.0 + 0.35 * t]),
                // A stack of two methods with coefficients logs each method's too.
                coefficients_by_method: if method.contains('+') {
                    [("agm".into(), vec![1.0 - 0.2 * t, 1.0 + 0.3 * t]), ("ogm-ge".into(), vec![0.5 * t, 1.0])].into()
                } else {
                    Default::default()
                },
                last_coefficients_by_method: if method.contains('+') {
                    [("agm".into(), vec![1.0 - 0.25 * t, 1.0 + 0.35 * t]), ("ogm-ge".into(), vec![0.4 * t, 1.0])].into()
                } else {
                    Default::default()
                },
                mean_step_seconds: 0.004,
                peak_memory_bytes: Some(300 << 20),
                best_epoch: e,
                competition: competition.then(|| vec![0.3 - 0.1 * t, 0.9 - 0.2 * t]),
                reference_split: None,
                events: Vec::new(),
            };
            run.append_metrics(&row).unwrap();
        }
    }

    #[test]
    fn report_of_a_synthetic_run_has_every_plot_and_table() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("agm-run");
        synthetic_run(&dir, "agm", 4, true);
        let out = write(&dir, YScale::Log).unwrap();
        let expect: [(&str, &[&str]); 5] = [
            ("accuracy", &["validation accuracy", "best epoch (selected)"]),
            ("modality_accuracy", &["audio", "visual"]),
            ("loss", &["training loss", "validation loss"]),
            ("coefficients", &["audio (epoch mean)", "visual (end of epoch)", "gradient coefficient"]),
            ("competition", &["audio", "visual", "Competition strength (validation)"]),
        ];
        for (stem, names) in expect {
            let pixels = check::non_background_pixels(&out.join(format!("{stem}.png")));
            assert!(pixels > 2000, "{stem}.png: only {pixels} non-background pixels");
            let coloured = check::coloured_pixels(&out.join(format!("{stem}.png")));
            assert!(coloured > 100, "{stem}.png: only {coloured} coloured pixels: no series drawn");
            check::svg_names(&out.join(format!("{stem}.svg")), names);
        }
        let md = std::fs::read_to_string(out.join("README.md")).unwrap();
        for needle in [
            "# Run report: agm on av-digits",
            "| best (validation) | 4 | 90.00% | 85.00% | 30.00% | 0.800 | 1.300 | 0.200 | 0.700 | 4.00 ms | 300 MiB |",
            "![Competition strength](competition.png)",
            "[SVG](coefficients.svg)",
            "| 1 | 0.05 | 1.750 | 1.250 | 60.00% |",
        ] {
            assert!(md.contains(needle), "README.md lacks `{needle}`:\n{md}");
        }
        assert!(!md.contains("Test accuracy"), "no summary.json, no test line");
        // metrics.csv holds the JSONL rows, value for value, per-modality columns by name.
        let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let rows: Vec<EpochSummary> = RunDir::open(&dir).unwrap().read_metrics().unwrap();
        let body: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        assert_eq!(body.len(), rows.len());
        let col =
            |name: &str| header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no {name}: {header:?}"));
        for (cells, row) in body.iter().zip(&rows) {
            let value = |name: &str| cells[col(name)].parse::<f64>().unwrap();
            assert_eq!(value("epoch"), row.epoch as f64);
            assert_eq!(value("train_loss"), row.train_loss);
            assert_eq!(value("validation_accuracy"), row.validation.accuracy);
            assert_eq!(value("visual_shapley_accuracy"), row.validation.modality_accuracy[1]);
            assert_eq!(value("audio_competition"), row.competition.as_ref().unwrap()[0]);
            assert_eq!(value("visual_coefficient_last"), row.last_coefficients.as_ref().unwrap()[1]);
            assert_eq!(cells[col("reference_split_accuracy")], "");
        }
        // Each head's columns where the model sums heads, none where it has no heads.
        assert!(!header.iter().any(|h| h.contains("_head_")), "{header:?}");
        let mut record = RunRecord::load(&dir).unwrap();
        for r in &mut record.rows {
            (r.validation.head_accuracy, r.validation.head_loss) = (vec![0.5, 0.25], vec![1.5, 2.5]);
        }
        let csv = metrics_csv(&record);
        let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
        let first: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
        let at = |name: &str| first[header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no {name}"))];
        assert_eq!([at("audio_head_accuracy"), at("visual_head_loss")], ["0.5", "2.5"]);
    }

    #[test]
    fn what_a_method_did_at_an_epochs_end_is_in_the_tables() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        synthetic_run(&dir, "agm", 3, false);
        let run = RunDir::open(&dir).unwrap();
        let mut rows: Vec<EpochSummary> = run.read_metrics().unwrap();
        rows[1].events = vec!["mses: audio stopped, restored".into(), "a \"quoted\" | piped note".into()];
        std::fs::remove_file(dir.join("metrics.jsonl")).unwrap();
        rows.iter().for_each(|r| run.append_metrics(r).unwrap());
        let out = write(&dir, YScale::Log).unwrap();
        let md = std::fs::read_to_string(out.join("README.md")).unwrap();
        assert!(
            md.contains("| events |") && md.contains("| mses: audio stopped, restored; a \"quoted\" \\| piped note |"),
            "{md}"
        );
        let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        let line = csv.lines().nth(2).unwrap();
        assert!(line.ends_with(",\"mses: audio stopped, restored; a \"\"quoted\"\" | piped note\""), "{line}");
        assert!(csv.lines().nth(1).unwrap().ends_with(','), "no events, an empty cell");
    }

    #[test]
    fn a_stacks_report_shows_each_methods_coefficients() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("stack-run");
        synthetic_run(&dir, "agm+ogm-ge", 3, false);
        let out = write(&dir, YScale::Log).unwrap();
        let names = ["agm audio (epoch mean)", "agm visual (epoch mean)", "ogm-ge audio (epoch mean)"];
        check::svg_names(&out.join("coefficients.svg"), &names);
        let md = std::fs::read_to_string(out.join("README.md")).unwrap();
        assert!(
            md.contains("| agm audio coeff. | agm visual coeff. | ogm-ge audio coeff. | ogm-ge visual coeff. |"),
            "{md}"
        );
        let record = RunRecord::load(&dir).unwrap();
        let csv = metrics_csv(&record);
        let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
        let last: Vec<&str> = csv.lines().last().unwrap().split(',').collect();
        let at = |name: &str| {
            last[header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no {name}: {header:?}"))]
        };
        assert_eq!([at("agm_visual_coefficient_mean"), at("ogm_ge_audio_coefficient_mean")], ["1.3", "0.5"]);
        // Each method's end-of-epoch values too, dashed in the plot.
        assert_eq!([at("agm_visual_coefficient_last"), at("ogm_ge_audio_coefficient_last")], ["1.35", "0.4"]);
        check::svg_names(&out.join("coefficients.svg"), &["ogm-ge visual (end of epoch)"]);
        // Rows written before those were kept: the means alone.
        let older = RunRecord {
            rows: record
                .rows
                .iter()
                .cloned()
                .map(|r| EpochSummary { last_coefficients_by_method: Default::default(), ..r })
                .collect(),
            ..RunRecord::load(&dir).unwrap()
        };
        let header = metrics_csv(&older).lines().next().unwrap().to_string();
        assert!(header.contains("agm_audio_coefficient_mean") && !header.contains("_coefficient_last"), "{header}");
    }

    #[test]
    fn a_joint_run_without_competition_has_no_coefficient_or_competition_plot() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("joint-run");
        synthetic_run(&dir, "joint", 1, false);
        let test = EvalReport {
            samples: 600,
            modalities: vec!["audio".into(), "visual".into()],
            accuracy: 0.875,
            loss: 0.4,
            modality_accuracy: vec![0.8, 0.25],
            modality_loss: vec![0.5, 2.0],
            ..Default::default()
        };
        let record = RunRecord::load(&dir).unwrap();
        let outcome = agm_train::run::RunOutcome {
            run: agm_train::RunSummary {
                epochs_done: 1,
                global_step: 10,
                best_epoch: 1,
                best_accuracy: 0.9,
                last: record.rows.last().cloned(),
                stopped_early: false,
                stopped_by_method: false,
            },
            test: Some(test),
            config: record.config,
            provenance: agm_train::run::RunOptions::default().provenance,
            concepts: None,
        };
        std::fs::write(dir.join("summary.json"), serde_json::to_string(&outcome).unwrap()).unwrap();
        let out = write(&dir, YScale::Log).unwrap();
        assert!(out.join("accuracy.png").exists() && out.join("modality_accuracy.svg").exists());
        assert!(!out.join("coefficients.png").exists() && !out.join("competition.png").exists());
        // One epoch is one point: still drawn.
        assert!(check::coloured_pixels(&out.join("accuracy.png")) > 20);
        let md = std::fs::read_to_string(out.join("README.md")).unwrap();
        assert!(md.contains("**Test accuracy of the best-validation weights: 87.50%** on 600 samples"), "{md}");
        assert!(md.contains("audio 80.00%, visual 25.00%") && md.contains("was not measured"), "{md}");
        // A run its method ended early says so; an interrupted one only counts its epochs.
        let mut stopped = RunRecord::load(&dir).unwrap();
        assert!(!stopped.stopped_by_method);
        stopped.config.epochs = 5;
        assert!(markdown(&stopped, &[]).contains("1 of 5 epochs done; model"));
        stopped.stopped_by_method = true;
        assert!(markdown(&stopped, &[]).contains("1 of 5 epochs done (joint stopped training); model"));
    }

    #[test]
    fn accuracy_axes_read_in_percent_and_loss_on_a_log_axis() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("agm-run");
        synthetic_run(&dir, "agm", 4, false);
        let out = write(&dir, YScale::Log).unwrap();
        let ticks = check::svg_texts(&out.join("accuracy.svg"));
        assert!(ticks.iter().any(|t| t == "70%"), "no percent ticks: {ticks:?}");
        let loss = check::svg_texts(&out.join("loss.svg"));
        assert!(loss.iter().any(|t| t == "cross-entropy (log scale)"), "{loss:?}");
        write(&dir, YScale::Linear).unwrap();
        assert!(check::svg_texts(&out.join("loss.svg")).iter().any(|t| t == "cross-entropy"));
    }

    #[test]
    fn huge_and_infinite_coefficients_still_render_promptly() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("agm-run");
        synthetic_run(&dir, "agm", 2, false);
        let run = RunDir::open(&dir).unwrap();
        let mut rows: Vec<EpochSummary> = run.read_metrics().unwrap();
        rows[0].coefficients = Some(vec![1e300, -1e300]);
        rows[1].coefficients = Some(vec![f64::INFINITY, 1e-300]);
        rows[1].last_coefficients = Some(vec![f64::NAN, 1e308]);
        rows[1].train_loss = 0.0;
        let record = RunRecord { rows, ..RunRecord::load(&dir).unwrap() };
        for (stem, _, panel) in panels(&record, YScale::Log) {
            plot::render(&tmp.path().join(stem), &[panel]).unwrap();
        }
        assert!(check::coloured_pixels(&tmp.path().join("coefficients.png")) > 20);
    }

    #[test]
    fn several_runs_overlay_in_one_comparison() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("run-agm"), tmp.path().join("run-joint"));
        synthetic_run(&a, "agm", 3, false);
        synthetic_run(&b, "joint", 5, false);
        let mut joint = RunDir::open(&b).unwrap().read_config().unwrap();
        joint.optimizer = agm_train::optim::OptimizerConfig::Sgd(agm_train::optim::SgdConfig::agm_reference(0.05));
        std::fs::write(b.join("config.toml"), joint.to_toml()).unwrap();
        let out = tmp.path().join("compare");
        run(ReportArgs { run_dirs: vec![a.clone(), b.clone()], loss_scale: "log".into(), out: Some(out.clone()) })
            .unwrap();
        for stem in ["accuracy", "modality_accuracy"] {
            check::svg_names(&out.join(format!("{stem}.svg")), &["run-agm", "run-joint"]);
        }
        check::svg_names(&out.join("modality_accuracy.svg"), &["audio Shapley accuracy (validation)"]);
        check::svg_names(&out.join("loss.svg"), &["run-agm (training)", "run-joint (validation)"]);
        let md = std::fs::read_to_string(out.join("README.md")).unwrap();
        let agm_row =
            "| run-agm | agm | av-digits-late | av-digits (noisy-audio preset) | 0 | 3 of 3 (unfinished: no test \
                       evaluation) | 3 | 90.00% | n/a | n/a |";
        assert!(md.contains(agm_row), "{md}");
        assert!(md.contains("| run-joint | joint |"), "{md}");
        // Settings beyond the columns are listed with every run's value; other methods' sections are not.
        assert!(md.contains("- `optimizer.lr`: run-agm 0.01, run-joint 0.05\n"), "{md}");
        assert!(!md.contains("`agm."), "{md}");
        // A setting two of three runs have and disagree on is listed, `–` for the third.
        let c = tmp.path().join("run-agm2");
        synthetic_run(&c, "agm", 3, false);
        let mut agm2 = RunDir::open(&c).unwrap().read_config().unwrap();
        agm2.set_method::<agm_modulation::Agm>(&agm_modulation::AgmConfig {
            alpha: 2.0,
            ..agm2.method::<agm_modulation::Agm>()
        });
        std::fs::write(c.join("config.toml"), agm2.to_toml()).unwrap();
        let three = tmp.path().join("compare3");
        run(ReportArgs {
            run_dirs: vec![a.clone(), b.clone(), c.clone()],
            loss_scale: "log".into(),
            out: Some(three.clone()),
        })
        .unwrap();
        let md = std::fs::read_to_string(three.join("README.md")).unwrap();
        assert!(md.contains("- `agm.alpha`: run-agm 1.0, run-joint –, run-agm2 2.0\n"), "{md}");
        // A setting only one run has is listed where that run changed it from its default.
        let one = tmp.path().join("compare-one");
        run(ReportArgs { run_dirs: vec![c.clone(), b.clone()], loss_scale: "log".into(), out: Some(one.clone()) })
            .unwrap();
        let md = std::fs::read_to_string(one.join("README.md")).unwrap();
        assert!(md.contains("- `agm.alpha`: run-agm2 2.0, run-joint –\n"), "{md}");
        assert_eq!(md.matches("`agm.").count(), 1, "{md}");
        // The same run twice, however it is spelt, is refused by name.
        let again = tmp.path().join(".").join("run-agm");
        let twice = ReportArgs { run_dirs: vec![a, b, again.clone()], loss_scale: "log".into(), out: Some(out) };
        let err = run(twice).unwrap_err().to_string();
        assert!(err.contains(&format!("{} is given twice", again.display())) && err.contains("each run once"), "{err}");
    }
}
