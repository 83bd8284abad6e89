//! `cargo xtask train`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use agm_modulation::Agm;
use agm_train::run::{train_run, RunOptions, RunStart, RunStarted};
use agm_train::{Callback, EpochSummary, Flow, Resolved, RunConfig, RunDir, StepSummary};
use anyhow::Context;

use crate::cli::TrainArgs;
use crate::progress::Progress;
use crate::report;

/// The dataset's reference settings, then `--recipe`, then `--config`, then flags.
pub fn resolve(args: &TrainArgs) -> anyhow::Result<Resolved> {
    // `--seed` is parsed within i64 (`cli::seed_parser`).
    let seed = args.seed.map(|s| s as i64);
    let request = args
        .run
        .request()
        .set_opt("--method", "method", args.method.clone())
        .set_opt("--seed", "seed", seed)
        .set_opt("--concepts", "concepts", args.concepts.as_ref().map(|p| p.display().to_string()))
        .set_opt("--no-concepts", "train_concepts", args.no_concepts.then_some(false));
    Ok(request.resolve()?)
}

/// Heads the list of [`settings_lines`].
pub(crate) const SETTINGS_HEADING: &str =
    "settings that differ from the embedded default (flags win over --config, which wins over --recipe):";

/// The settings that differ from the embedded default and where each came from, one a line.
pub fn settings_lines(resolved: &Resolved) -> Vec<String> {
    resolved.settings.iter().map(|s| format!("  {s}")).collect()
}

/// `--print-config`: the provenance as comments, then the TOML.
fn print_config(resolved: &Resolved) {
    if resolved.settings.is_empty() {
        println!("# every setting below is the embedded default's\n");
    } else {
        println!("# {SETTINGS_HEADING}");
        for line in settings_lines(resolved) {
            println!("#{line}");
        }
        println!();
    }
    println!(
        "# the sections of methods other than `{}` are printed to copy from: they do not change this run, and \
         its config.toml leaves them out\n",
        resolved.config.method
    );
    print!("{}", resolved.config.to_toml());
}

/// The config of a run to resume: its `config.toml` with the flags that may change on resume
/// applied (`--epochs`, `--device`, `--data` for a moved dataset folder, `--concepts` and
/// `--no-concepts`; the recorded concepts otherwise), and, when they changed it, the header to
/// rewrite the file with (the original one plus a line saying what changed).
/// Any other run setting given differently is refused, since the checkpoint was trained with the
/// recorded one.
fn resumed_config(
    run_dir: &RunDir,
    args: &TrainArgs,
    started: std::time::SystemTime,
) -> anyhow::Result<(RunConfig, Option<String>)> {
    let recorded = run_dir.read_config()?;
    let flags = &args.run;
    let differs = |flag: &str, given: Option<String>, recorded: String| {
        let recorded = if recorded.is_empty() { "none".to_string() } else { recorded };
        given.filter(|g| *g != recorded).map(|g| format!("{flag} {g} (the run has {recorded})"))
    };
    // The same file however it is spelled (`./w.pth`, `w.pth`).
    let same_file = |given: &String| {
        std::fs::canonicalize(given).is_ok_and(|g| std::fs::canonicalize(&recorded.init_weights).is_ok_and(|r| g == r))
    };
    let conflicts: Vec<String> = [
        differs("--method", args.method.clone(), recorded.method.clone()),
        differs("--seed", args.seed.map(|v| v.to_string()), recorded.seed.to_string()),
        differs("--dataset", flags.dataset.clone(), recorded.dataset.clone()),
        differs("--model", flags.model.clone(), recorded.model.clone()),
        differs("--init-weights", flags.init_weights.clone().filter(|g| !same_file(g)), recorded.init_weights.clone()),
        differs("--preset", flags.preset.clone(), recorded.data_preset.clone()),
        differs("--batch-size", flags.batch_size.map(|v| v.to_string()), recorded.batch_size.to_string()),
        differs("--lr", flags.lr.map(|v| v.to_string()), recorded.optimizer.lr().to_string()),
        differs("--alpha", flags.alpha.map(|v| v.to_string()), recorded.method::<Agm>().alpha.to_string()),
        differs("--shapley", flags.shapley.clone(), recorded.shapley.clone()),
        differs("--precision", flags.precision.clone(), recorded.precision.clone()),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !conflicts.is_empty() {
        anyhow::bail!(
            "--resume continues {} as recorded in its config.toml; these flags would change it: {}. \
             Drop them, or start a new run with --out (only --epochs, --device, --data, for a moved dataset \
             folder, --concepts and --no-concepts may change on resume)",
            run_dir.root().display(),
            conflicts.join(", ")
        );
    }
    let mut cfg = recorded.clone();
    if let Some(epochs) = flags.epochs {
        cfg.epochs = epochs;
    }
    if let Some(device) = &flags.device {
        cfg.device = device.clone();
    }
    if let Some(data) = &flags.data {
        cfg.data = data.clone();
    }
    if let Some(concepts) = &args.concepts {
        cfg.concepts = concepts.display().to_string();
    }
    if args.no_concepts {
        cfg.train_concepts = false;
    }
    cfg.validate()?;
    let changes: Vec<String> = [
        ("epochs", cfg.epochs.to_string(), recorded.epochs.to_string()),
        ("device", cfg.device.clone(), recorded.device.clone()),
        ("data", format!("{:?}", cfg.data), format!("{:?}", recorded.data)),
        ("concepts", format!("{:?}", cfg.concepts), format!("{:?}", recorded.concepts)),
        ("train_concepts", cfg.train_concepts.to_string(), recorded.train_concepts.to_string()),
    ]
    .into_iter()
    .filter(|(_, now, was)| now != was)
    .map(|(key, now, was)| format!("{key} = {now} (was {was})"))
    .collect();
    if changes.is_empty() {
        return Ok((cfg, None));
    }
    let path = run_dir.config();
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut header: Vec<String> = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim_start().to_string())
        .collect();
    header.push(format!("Resumed {} with {}.", humantime::format_rfc3339_seconds(started), changes.join(", ")));
    Ok((cfg, Some(header.join("\n"))))
}

/// Why `--resume` of a finished run has nothing to train (its `summary.json` says it finished
/// `cfg.epochs` epochs, or its method stopped it), and what to do instead.
fn nothing_to_resume(dir: &RunDir, start: &RunStart, cfg: &RunConfig) -> Option<String> {
    if *start == RunStart::New {
        return None;
    }
    let text = std::fs::read_to_string(dir.summary()).ok()?;
    let done: agm_train::run::RunOutcome = serde_json::from_str(&text).ok()?;
    let eval = format!("evaluate it with `cargo xtask eval {} --split test`", dir.root().display());
    let epochs = done.run.epochs_done;
    if done.run.stopped_by_method {
        Some(format!("{} is finished: its method stopped training after epoch {epochs}; {eval}", dir.root().display()))
    } else if cfg.epochs <= epochs {
        // Fewer epochs than it trained cannot end it earlier: only more train on.
        Some(format!(
            "{} is finished: it trained its {epochs} epochs; pass --epochs {} or more to train on, or {eval}",
            dir.root().display(),
            epochs + 1
        ))
    } else {
        None
    }
}

/// Set by the first Ctrl-C: the run stops after its current step, with a checkpoint.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The first Ctrl-C ends the run at its next step boundary (a checkpoint is written, so
/// `--resume` continues exactly); a second one exits at once.
fn stop_on_ctrl_c() {
    let installed = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::Relaxed) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: stopping after this step (Ctrl-C again to quit at once)");
    });
    // Without a handler (another one is installed) Ctrl-C keeps its default: the process ends.
    drop(installed);
}

/// Flags given that the chosen method or dataset does not read, and settings that make a part of
/// the run do nothing.
fn unused_flags(args: &TrainArgs, cfg: &RunConfig) -> Vec<String> {
    let flags = &args.run;
    let methods: Vec<&str> = cfg.method.split('+').collect();
    let mut notes = Vec::new();
    if flags.alpha.is_some() && !methods.contains(&"agm") {
        notes.push(format!("--alpha does nothing for method `{}` (only agm reads it)", cfg.method));
    }
    if !cfg.data.is_empty() && matches!(cfg.dataset.as_str(), "av-digits" | "synthetic") {
        let given = if flags.data.is_some() { "--data".to_string() } else { format!("data = `{}`", cfg.data) };
        notes.push(format!("{given} does nothing for dataset `{}` (it needs no files)", cfg.dataset));
    }
    if flags.preset.is_some() && cfg.dataset != "av-digits" {
        notes.push(format!("--preset does nothing for dataset `{}` (it picks AV-Digits' noise)", cfg.dataset));
    }
    // A config file's sections of methods the run does not use (the file was read, so it parses).
    let file =
        flags.config.as_ref().and_then(|p| Some((p, std::fs::read_to_string(p).ok()?.parse::<toml::Table>().ok()?)));
    if let Some((path, table)) = file {
        let unused = cfg.unused_method_sections();
        for section in table.keys().filter(|k| unused.contains(k)) {
            notes.push(format!("[{section}] in {} does nothing for method `{}`", path.display(), cfg.method));
        }
    }
    notes.extend(report::late_windows(cfg));
    if cfg.optimizer.lr() == 0.0 {
        notes.push("the learning rate is 0: the weights never change".into());
    }
    notes
}

/// The header line and settings, printed when the run starts; then the progress bar.
struct TrainOutput<'a> {
    progress: Progress,
    cfg: &'a RunConfig,
    dir: &'a Path,
    settings: &'a [String],
    /// The report, written while the run still holds its directory's lock.
    report: report::ReportWhenWritten,
}

impl Callback for TrainOutput<'_> {
    fn on_start(&mut self, run: &RunStarted) {
        let cfg = self.cfg;
        // Only methods that run the masked passes say how they run them.
        let shapley = run.shapley.as_ref().map(|s| format!(", Shapley passes {s}")).unwrap_or_default();
        let dataset = cfg.dataset_label();
        println!(
            "{} {} with {} on {dataset} ({} train samples{shapley}), {}, seed {}, device {} -> {}",
            if run.resuming { "resuming" } else { "training" },
            cfg.method,
            cfg.model,
            run.train_samples,
            crate::progress::counted(cfg.epochs as u64, "epoch"),
            cfg.seed,
            cfg.device,
            self.dir.display()
        );
        if !self.settings.is_empty() {
            println!("{SETTINGS_HEADING}");
            self.settings.iter().for_each(|line| println!("{line}"));
        }
        crate::progress::print_data_notes(&run.notes);
        if cfg.batch_size > run.train_samples {
            eprintln!(
                "note: batch size {} is larger than the {} training samples: each epoch is one step over all of them",
                cfg.batch_size, run.train_samples
            );
        }
    }
    fn on_step(&mut self, s: &StepSummary) -> Flow {
        if INTERRUPTED.load(Ordering::Relaxed) {
            return Flow::Stop;
        }
        self.progress.on_step(s)
    }
    fn on_concept_step(&mut self, _modality: &str, _s: &StepSummary) -> Flow {
        if INTERRUPTED.load(Ordering::Relaxed) {
            return Flow::Stop;
        }
        Flow::Continue
    }
    fn on_epoch_end(&mut self, e: &EpochSummary) -> Flow {
        self.progress.on_epoch_end(e)
    }
    fn on_validation(&mut self, done: usize, total: usize) {
        self.progress.on_validation(done, total)
    }
    fn on_run_written(&mut self, dir: &RunDir) {
        self.report.on_run_written(dir)
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::SystemTime::now();
    let (cfg, resumed, settings) = match &args.resume {
        Some(dir) => {
            let run_dir = RunDir::open(dir).with_context(|| format!("--resume {}", dir.display()))?;
            let (cfg, header) = resumed_config(&run_dir, &args, started)?;
            (cfg, Some((run_dir, header)), Vec::new())
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
    for note in unused_flags(&args, &cfg) {
        eprintln!("note: {note}");
    }
    if cfg.precision == "bf16" && cfg.device == "cpu" {
        eprintln!("note: bf16 on the CPU is emulated by rounding: the GPU's numbers, slower than fp32 (fast on CUDA)");
    }
    // Before a new run directory exists: a missing toolkit leaves nothing behind.
    if cfg.device == "cuda" && !cfg!(feature = "cuda") {
        return crate::reexec_with_cuda();
    }
    if cfg.device == "cuda" {
        crate::cudnn_notice();
    }
    if resumed.is_none() {
        cfg.check_input_files()?;
    }
    let (dir, start) = match (resumed, &args.out) {
        (Some((run_dir, header)), _) => (run_dir, RunStart::Resume { header }),
        (None, Some(out)) => (RunDir::create(out)?, RunStart::New),
        // `<model>-<method>-seed<k>-<date>-<time>`, created atomically with a suffix on collision.
        (None, None) => {
            let name = format!("{}-{}-seed{}", cfg.model, cfg.method, cfg.seed);
            (RunDir::open(crate::new_dir("runs", &name)?)?, RunStart::New)
        }
    };
    if let Some(note) = nothing_to_resume(&dir, &start, &cfg) {
        // A run killed between its summary.json and its report.
        if let Some(report) = report::repair_finished(&dir)? {
            println!("report: {} (written again)", report.join("README.md").display());
        }
        println!("{note}");
        return Ok(ExitCode::SUCCESS);
    }
    // The flags' or, on resume, the recorded folder (config.toml's `concepts`).
    let concepts_dir = cfg.concepts_dir();
    // The run trains missing concepts before its header prints; say why it is quiet meanwhile (also
    // under --quiet, which only drops the progress bar).
    let concepts_missing = agm_train::concept::check_concept_dataset(&cfg.dataset).is_ok()
        && !matches!(agm_train::concept::ConceptSet::load(&concepts_dir), Ok(Some(_)));
    if concepts_missing && cfg.train_concepts {
        println!("training the mono-modal concepts into {} (once per dataset and preset)…", concepts_dir.display());
    }
    // The concepts come from the config (`Concepts::default_for`).
    let opts = RunOptions { provenance: crate::provenance::of_this_process(started), concepts: None };
    let modalities = report::modality_names(&cfg, 0);
    let mut output = TrainOutput {
        progress: Progress::new(modalities, args.quiet, args.stop_after_steps),
        cfg: &cfg,
        dir: dir.root(),
        settings: &settings,
        report: report::ReportWhenWritten::default(),
    };
    stop_on_ctrl_c();
    let outcome = match train_run(&cfg, &dir, start, &opts, &mut output) {
        // Ctrl-C while the missing concepts trained: the run never started.
        Err(agm_train::TrainError::Interrupted(_)) if INTERRUPTED.load(Ordering::Relaxed) => {
            output.progress.finish();
            eprintln!(
                "interrupted while training the concepts into {}; the run did not start and the concept in training \
                 was not written (finished ones are kept); run the same command again",
                concepts_dir.display()
            );
            return Ok(ExitCode::from(130));
        }
        outcome => outcome?,
    };
    output.progress.finish();
    let Some(test) = &outcome.test else {
        if let Some(written) = output.report.written.take() {
            report::print_after_train(written);
        }
        let interrupted = INTERRUPTED.load(Ordering::Relaxed);
        println!(
            "{} at step {}, checkpoint written; continue with `cargo xtask train --resume {}`",
            if interrupted { "interrupted" } else { "stopped" },
            outcome.run.global_step,
            dir.root().display()
        );
        // 130: the shell's code for a command ended by Ctrl-C.
        return Ok(if interrupted { ExitCode::from(130) } else { ExitCode::SUCCESS });
    };
    let modalities = test.modality_names();
    print_summary(&cfg, &outcome.run, test, &modalities, dir.root());
    if let Some(status) = &outcome.concepts {
        println!("{}", crate::concept::summary_line(status, &cfg, &outcome.run, &modalities));
    }
    if let Some(written) = output.report.written.take() {
        report::print_after_train(written);
    }
    Ok(ExitCode::SUCCESS)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
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
    if run.stopped_by_method && run.epochs_done < cfg.epochs {
        println!("{} stopped training after epoch {} of {}", cfg.method, run.epochs_done, cfg.epochs);
    }
    println!("test accuracy of the best weights: {} on {} samples", pct(test.accuracy), test.samples);
    for (i, name) in modalities.iter().enumerate() {
        println!(
            "  {name:<8} Shapley accuracy {:>6}   loss {}",
            pct(test.modality_accuracy[i]),
            crate::progress::compact(test.modality_loss[i], 3)
        );
    }
    if let Some(last) = &run.last {
        // The epoch mean, as the epoch lines and the report show it; a single step's value swings.
        let compact = |v: f64| crate::progress::compact(v, 3);
        let coefficients = if last.coefficients_by_method.is_empty() {
            let values = |c: &Vec<f64>| c.iter().map(|&v| compact(v)).collect::<Vec<_>>().join(" / ");
            last.coefficients.as_ref().map(|mean| {
                (
                    crate::progress::labelled(modalities, mean, " / ", compact),
                    last.last_coefficients.as_ref().map(values),
                )
            })
        } else {
            let after = &last.last_coefficients_by_method;
            Some((
                crate::progress::by_method(modalities, &last.coefficients_by_method, 3),
                (!after.is_empty()).then(|| crate::progress::by_method(modalities, after, 3)),
            ))
        };
        if let Some((mean, after)) = coefficients {
            let after = after.map_or_else(String::new, |a| format!(" (after the last step: {a})"));
            println!("coefficients, mean over the last epoch: {mean}{after}");
        }
        println!("mean step time (last epoch): {:.2} ms", 1e3 * last.mean_step_seconds);
    }
    let rows: Vec<agm_train::EpochSummary> = RunDir::open(dir).and_then(|r| r.read_metrics()).unwrap_or_default();
    if let Some(note) = report::never_modulated(cfg, &rows, &dir.join("config.toml").display().to_string()) {
        println!("note: {note}");
    }
    println!(
        "run directory: {} (config.toml, metrics.jsonl, metrics.csv, best.safetensors, checkpoint.safetensors, \
         summary.json, report/)",
        dir.display()
    );
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
        // config.toml: provenance atop, the chosen method's section only, the concepts' folder.
        let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
        let concepts = dir.path().join("concepts").display().to_string();
        assert!(config.contains(&format!("concepts = {concepts:?}")), "{config}");
        assert!(config.starts_with("# Written by agm ") && config.contains("\n# Command: "), "{config}");
        assert!(config.contains("[agm]") && !config.contains("[mslr]") && !config.contains("[joint]"), "{config}");
        // Resuming refuses flags that would change the run, naming each.
        // Without --concepts: a resume measures against the folder the run started with.
        let resume = |run: RunFlags, method: Option<&str>| TrainArgs {
            resume: Some(out.clone()),
            method: method.map(String::from),
            quiet: true,
            run,
            ..TrainArgs::default()
        };
        let changed = RunFlags {
            lr: Some(0.5),
            precision: Some("bf16".into()),
            init_weights: Some("w.pth".into()),
            ..RunFlags::default()
        };
        let err = run(resume(changed, Some("joint"))).unwrap_err();
        let err = err.to_string();
        assert!(
            err.contains("--lr 0.5 (the run has 0.01)")
                && err.contains("--method joint (the run has agm)")
                && err.contains("--precision bf16 (the run has fp32)")
                && err.contains("--init-weights w.pth (the run has none)"),
            "{err}"
        );
        // The same values, and more epochs, are fine; config.toml then records the new count.
        run(resume(RunFlags { epochs: Some(3), lr: Some(0.01), ..RunFlags::default() }, Some("agm"))).unwrap();
        let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
        assert!(config.contains("epochs = 3") && config.contains("# Resumed ") && config.contains("# Command: "));
        // Finished: nothing to resume at the same epoch count, and the command says so.
        let recorded = RunDir::open(&out).unwrap().read_config().unwrap();
        let start = RunStart::Resume { header: None };
        let note = nothing_to_resume(&RunDir::open(&out).unwrap(), &start, &recorded).unwrap();
        assert!(note.contains("is finished: it trained its 3 epochs") && note.contains("--epochs 4"), "{note}");
        // Fewer epochs than it trained: the same note, asking for more than were done.
        let fewer = RunConfig { epochs: 2, ..recorded.clone() };
        let note = nothing_to_resume(&RunDir::open(&out).unwrap(), &start, &fewer).unwrap();
        assert!(note.contains("pass --epochs 4 or more"), "{note}");
        // Stopped by its method, even at its last epoch: more epochs would train nothing.
        let summary = std::fs::read_to_string(out.join("summary.json")).unwrap();
        let mut stopped: serde_json::Value = serde_json::from_str(&summary).unwrap();
        stopped["run"]["stopped_by_method"] = true.into();
        std::fs::write(out.join("summary.json"), stopped.to_string()).unwrap();
        let note = nothing_to_resume(&RunDir::open(&out).unwrap(), &start, &recorded).unwrap();
        assert!(note.contains("its method stopped training after epoch 3") && !note.contains("--epochs"), "{note}");
        std::fs::write(out.join("summary.json"), summary).unwrap();
        run(resume(RunFlags::default(), None)).unwrap();
        // Held by another run, the directory is refused.
        let lock = RunDir::open(&out).unwrap().lock().unwrap();
        let err = run(resume(RunFlags { epochs: Some(4), ..RunFlags::default() }, None)).unwrap_err().to_string();
        assert!(err.contains("in use by another run"), "{err}");
        drop(lock);
        assert!(out.join("summary.json").exists() && out.join("best.safetensors").exists());
        // The first run trained the default's concepts, so every epoch measured competition strength.
        assert!(dir.path().join("concepts/audio.json").is_file() && dir.path().join("concepts/visual.json").is_file());
        // Trained under the concept settings (`cargo xtask concept`'s), not this 2-epoch run's.
        let concepts = agm_train::concept::ConceptSet::load(&dir.path().join("concepts")).unwrap().unwrap();
        let defaults = agm_train::concept::concept_config(&recorded).unwrap();
        for c in concepts.concepts() {
            assert_eq!(
                (c.manifest().epochs, c.manifest().seed),
                (defaults.epochs, defaults.seed),
                "{:?}",
                c.manifest()
            );
        }
        assert!(defaults.epochs > 3, "the defaults train longer than this run: {}", defaults.epochs);
        let rows: Vec<agm_train::EpochSummary> = RunDir::open(&out).unwrap().read_metrics().unwrap();
        assert!(rows.iter().all(|r| r.competition.as_ref().is_some_and(|c| c.len() == 2)), "{rows:?}");
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        let provenance = &summary["provenance"];
        assert_eq!(provenance["agm_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(provenance["device"], "cpu");
        assert!(provenance["started"].as_str().unwrap() <= provenance["finished"].as_str().unwrap(), "{provenance}");
        assert!(provenance["threads"].as_u64().unwrap() >= 1 && provenance["command_line"].is_array(), "{provenance}");
        // The first start's command line, and the one resume that trained.
        let resumes = provenance["resumes"].as_array().unwrap();
        assert_eq!(resumes.len(), 1, "{provenance}");
        assert!(provenance["started"].as_str().unwrap() <= resumes[0]["started"].as_str().unwrap(), "{provenance}");
        let report = crate::eval::evaluate_run(&out, agm_data::av_digits::Split::Test, "best").unwrap();
        assert_eq!(report.samples, 600);
        assert!(report.accuracy > 0.5, "two epochs learn something: {}", report.accuracy);
    }

    #[test]
    fn a_run_stopped_before_its_first_checkpoint_is_refused_or_started_over_never_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        // What a run that failed in its first epoch leaves: its config and a partial metrics row.
        std::fs::create_dir_all(&out).unwrap();
        let mut cfg = RunConfig::av_digits();
        cfg.epochs = 1;
        std::fs::write(out.join("config.toml"), cfg.to_toml()).unwrap();
        std::fs::write(out.join("metrics.jsonl"), "{\"epoch\": 1}\n").unwrap();
        let args = TrainArgs { no_concepts: true, ..args(&out) };
        let err = run(args.clone()).unwrap_err().to_string();
        assert!(err.contains("already holds a run") && err.contains("--resume"), "{err}");
        run(TrainArgs { resume: Some(out.clone()), out: None, ..args }).unwrap();
        let rows: Vec<agm_train::EpochSummary> = RunDir::open(&out).unwrap().read_metrics().unwrap();
        assert_eq!(rows.iter().map(|r| r.epoch).collect::<Vec<_>>(), vec![1, 2], "no duplicate or stale rows");
    }

    #[test]
    fn flags_the_run_does_not_read_are_named() {
        let cfg = RunConfig { method: "joint".into(), data: "d".into(), ..RunConfig::av_digits() };
        let args = flags(RunFlags { alpha: Some(2.0), data: Some("d".into()), ..RunFlags::default() });
        // From a config file, the key is named.
        let from_file = unused_flags(&flags(RunFlags::default()), &cfg).join("\n");
        assert!(from_file.contains("data = `d` does nothing for dataset `av-digits`"), "{from_file}");
        let notes = unused_flags(&args, &cfg).join("\n");
        assert!(notes.contains("--alpha does nothing for method `joint`"), "{notes}");
        assert!(notes.contains("--data does nothing for dataset `av-digits`"), "{notes}");
        let avmnist = RunConfig::for_dataset("avmnist").unwrap();
        let notes = unused_flags(&flags(RunFlags { preset: Some("balanced".into()), ..RunFlags::default() }), &avmnist);
        assert!(notes.join("").contains("--preset does nothing for dataset `avmnist`"), "{notes:?}");
        assert!(unused_flags(&flags(RunFlags { alpha: Some(2.0), ..RunFlags::default() }), &avmnist).is_empty());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("run.toml");
        std::fs::write(&file, "[ogm_ge]\nalpha = 0.5\n[agm]\nalpha = 2.0\n").unwrap();
        let agm = RunConfig::av_digits();
        let notes = unused_flags(&flags(RunFlags { config: Some(file.clone()), ..RunFlags::default() }), &agm);
        assert_eq!(notes, [format!("[ogm_ge] in {} does nothing for method `agm`", file.display())]);
        let mut late = RunConfig { epochs: 2, ..RunConfig::av_digits() };
        late.set_method::<agm_modulation::Agm>(&agm_modulation::AgmConfig {
            window_start: 5,
            ..late.method::<agm_modulation::Agm>()
        });
        let notes = unused_flags(&flags(RunFlags::default()), &late);
        assert_eq!(notes, ["[agm] window_start = 5 is after the last epoch (2): the method never acts in this run"]);
        // ReLearn's official schedule first re-learns after epoch 21: a 20-epoch run never does.
        let relearn = RunConfig { method: "relearn".into(), ..RunConfig::av_digits() };
        let notes = unused_flags(&flags(RunFlags::default()), &relearn);
        assert_eq!(
            notes,
            ["[relearn] reinit_every = 20: its first re-learning follows epoch 21, and this run has 20 epochs: \
              relearn never changes what trains (a smaller reinit_every makes it act)"]
        );
        let off = agm_modulation::RelearnConfig { max_reinits: 0, ..agm_modulation::RelearnConfig::official() };
        let mut never = relearn.clone();
        never.set_method::<agm_modulation::Relearn>(&off);
        let notes = unused_flags(&flags(RunFlags::default()), &never);
        assert_eq!(notes, ["[relearn] max_reinits = 0: relearn never re-learns in this run"]);
        let mut soon = relearn.clone();
        soon.set_method::<agm_modulation::Relearn>(&agm_modulation::RelearnConfig {
            reinit_every: 5,
            ..agm_modulation::RelearnConfig::official()
        });
        assert!(unused_flags(&flags(RunFlags::default()), &soon).is_empty());
    }

    #[test]
    fn a_method_whose_coefficients_never_moved_is_named_after_the_run() {
        use report::never_modulated;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        crate::report::tests::synthetic_run(&dir, "agm", 3, false);
        let cfg = RunConfig::av_digits();
        let run = RunDir::open(&dir).unwrap();
        let mut rows: Vec<agm_train::EpochSummary> = run.read_metrics().unwrap();
        assert_eq!(never_modulated(&cfg, &rows, "config.toml"), None, "AGM's synthetic coefficients move");
        for r in &mut rows {
            (r.coefficients, r.last_coefficients) = (Some(vec![1.0, 1.0]), Some(vec![1.0, 1.0]));
        }
        let note = never_modulated(&cfg, &rows, "config.toml").expect("held coefficients are named");
        assert!(
            note.starts_with(
                "agm's coefficients were 1 in every step of these 3 epochs, so it trained as `joint` does"
            ),
            "{note}"
        );
        // The run's report says so too.
        std::fs::remove_file(dir.join("metrics.jsonl")).unwrap();
        rows.iter().for_each(|r| run.append_metrics(r).unwrap());
        let md = report::markdown(&report::RunRecord::load(&dir).unwrap(), &[]);
        assert!(md.contains("> **Note:** agm's coefficients were 1 in every step of these 3 epochs"), "{md}");
        // A late window was named before the run; joint has nothing to modulate.
        let mut late = cfg.clone();
        late.set_method::<agm_modulation::Agm>(&agm_modulation::AgmConfig {
            window_start: 99,
            ..late.method::<agm_modulation::Agm>()
        });
        assert_eq!(never_modulated(&late, &rows, "config.toml"), None);
        assert_eq!(never_modulated(&RunConfig { method: "joint".into(), ..cfg.clone() }, &rows, "config.toml"), None);
        // A stack's `coefficients` are one member's: no claim about the stack.
        let stack = RunConfig { method: "agm+mses".into(), ..cfg.clone() };
        assert_eq!(never_modulated(&stack, &rows, "config.toml"), None);
        // Held at values other than 1 (ReconBoost's gates): no claim either.
        for r in &mut rows {
            (r.coefficients, r.last_coefficients) = (Some(vec![1.0, 0.0]), Some(vec![1.0, 0.0]));
        }
        assert_eq!(never_modulated(&cfg, &rows, "config.toml"), None);
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
        let precision = |p: &str| resolve(&flags(RunFlags { precision: Some(p.into()), ..RunFlags::default() }));
        let err = precision("fp16").unwrap_err().to_string();
        assert!(err.contains("`fp16`") && err.contains("fp32, fp32-strict, bf16"), "{err}");
        let cfg = precision("bf16").unwrap().config;
        assert_eq!(cfg.precision().unwrap(), agm_kernels::Precision::Bf16);
        assert!(cfg.to_run_toml("").contains("precision = \"bf16\""), "the run's config.toml records it");
        assert_eq!(resolve(&flags(RunFlags::default())).unwrap().config.precision, "fp32");
        // A type error names the file, the line and the key.
        std::fs::write(&path, "# a comment\n[optimizer]\nlr = \"fast\"\n").unwrap();
        let err =
            resolve(&flags(RunFlags { config: Some(path.clone()), ..RunFlags::default() })).unwrap_err().to_string();
        assert!(err.contains("run.toml") && err.contains("line 3, `optimizer.lr`: invalid type"), "{err}");
        std::fs::write(&path, "batch_size = -3\n").unwrap();
        let err =
            resolve(&flags(RunFlags { config: Some(path.clone()), ..RunFlags::default() })).unwrap_err().to_string();
        assert!(err.contains("line 1, `batch_size`"), "{err}");
        std::fs::write(&path, "[agm]\nalpah = 2\n").unwrap();
        let err =
            resolve(&flags(RunFlags { config: Some(path.clone()), ..RunFlags::default() })).unwrap_err().to_string();
        assert!(err.contains("line 2, `agm.alpah`: unknown field `alpah`, expected one of `alpha`"), "{err}");
    }

    #[test]
    fn a_resume_may_point_at_a_moved_dataset_folder() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = RunConfig { data: "old/mosei".into(), ..RunConfig::for_dataset("mosei").unwrap() };
        std::fs::write(dir.path().join("config.toml"), cfg.to_run_toml("Started.")).unwrap();
        let run_dir = RunDir::open(dir.path()).unwrap();
        let moved = flags(RunFlags { data: Some("new/mosei".into()), ..RunFlags::default() });
        let (resumed, header) = resumed_config(&run_dir, &moved, std::time::SystemTime::now()).unwrap();
        assert_eq!(resumed.data, "new/mosei");
        assert_eq!(resumed.resumable_identity(), cfg.resumable_identity());
        let header = header.unwrap();
        assert!(header.starts_with("Started.\nResumed ") && header.contains("data = \"new/mosei\""), "{header}");
        let other = flags(RunFlags { data: Some("new/mosei".into()), lr: Some(0.5), ..RunFlags::default() });
        let err = resumed_config(&run_dir, &other, std::time::SystemTime::now()).unwrap_err().to_string();
        assert!(err.contains("--lr 0.5") && !err.contains("--data new"), "{err}");
    }

    #[test]
    fn a_resume_keeps_the_concepts_the_run_started_with_unless_told_otherwise() {
        use agm_train::run::Concepts;
        let dir = tempfile::tempdir().unwrap();
        let started = TrainArgs { concepts: Some("S/cfresh".into()), ..flags(RunFlags::default()) };
        let cfg = resolve(&started).unwrap().config;
        std::fs::write(dir.path().join("config.toml"), cfg.to_run_toml("Started.")).unwrap();
        let run_dir = RunDir::open(dir.path()).unwrap();
        let (resumed, header) =
            resumed_config(&run_dir, &flags(RunFlags::default()), std::time::SystemTime::now()).unwrap();
        assert_eq!(Concepts::default_for(&resumed), Concepts::TrainMissing("S/cfresh".into()));
        assert!(header.is_none(), "nothing changed");
        // Given again, --concepts wins and the header says so; --no-concepts turns training them off.
        let other = TrainArgs { concepts: Some("S/other".into()), no_concepts: true, ..flags(RunFlags::default()) };
        let (resumed, header) = resumed_config(&run_dir, &other, std::time::SystemTime::now()).unwrap();
        assert_eq!(Concepts::default_for(&resumed), Concepts::In("S/other".into()));
        let header = header.unwrap();
        assert!(
            header.contains("concepts = \"S/other\" (was \"S/cfresh\"), train_concepts = false (was true)"),
            "{header}"
        );
        // Neither is part of what the checkpoint recorded: it resumes under either.
        assert_eq!(resumed.resumable_identity(), cfg.resumable_identity());
        // A run started with --no-concepts resumes without training them.
        let off = resolve(&TrainArgs { no_concepts: true, ..flags(RunFlags::default()) }).unwrap().config;
        std::fs::write(dir.path().join("config.toml"), off.to_run_toml("Started.")).unwrap();
        let (resumed, _) = resumed_config(&run_dir, &flags(RunFlags::default()), std::time::SystemTime::now()).unwrap();
        assert!(matches!(Concepts::default_for(&resumed), Concepts::In(_)), "{resumed:?}");
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
        assert_eq!(
            (cfg.model.as_str(), cfg.epochs, cfg.batch_size, cfg.method::<Agm>().alpha),
            ("avmnist-late", 999, 64, 2.5)
        );
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
        assert_eq!(resolved.config.method::<Agm>().alpha, 1.5);
        let lines = settings_lines(&resolved).join("\n");
        assert!(lines.contains("method = \"joint\" (flag --method; wins over recipe cremad-agm-late)"), "{lines}");
        assert!(lines.contains("optimizer.lr = 0.02 (flag --lr; wins over recipe cremad-agm-late)"), "{lines}");
        // A joint run does not use the recipe's AGM settings: they are not listed.
        assert!(!lines.contains("agm.alpha"), "{lines}");
        let err = resolve(&flags(RunFlags { recipe: Some("cremad-magic".into()), ..RunFlags::default() }))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cremad-magic") && err.contains("cremad-agm-late") && err.contains("avmnist-joint-late"),
            "{err}"
        );
    }
}
