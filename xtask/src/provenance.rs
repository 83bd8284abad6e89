//! Where and how a run was made, recorded in its `summary.json` and atop its `config.toml`.

use std::time::SystemTime;

use agm_metric::EvalReport;
use agm_train::checkpoint::write_atomic;
use agm_train::{RunConfig, RunDir, RunSummary};
use serde::Serialize;

/// Writes `summary.json`: the run's outcome, the test split's numbers for the selected weights,
/// the configuration and the provenance of a run that started at `started`.
pub fn write_summary(
    dir: &RunDir,
    run: &RunSummary,
    test: &EvalReport,
    cfg: &RunConfig,
    started: SystemTime,
) -> anyhow::Result<()> {
    let provenance = Provenance::of_run(started, &cfg.device);
    let json = serde_json::json!({ "run": run, "test": test, "config": cfg, "provenance": provenance });
    write_atomic(&dir.summary(), serde_json::to_string_pretty(&json)?.as_bytes())?;
    Ok(())
}

/// Writes a new run's `config.toml`: its provenance as comments, then the settings it uses.
pub fn write_config(dir: &RunDir, cfg: &RunConfig, started: SystemTime) -> anyhow::Result<()> {
    let header = Provenance::of_run(started, &cfg.device).config_header();
    write_atomic(&dir.config(), cfg.to_run_toml(&header).as_bytes())?;
    Ok(())
}

/// The facts a reader needs to trust or repeat a run.
#[derive(Clone, Debug, Serialize)]
pub struct Provenance {
    pub agm_version: &'static str,
    /// The commit xtask was built from, when built inside a git checkout.
    pub git_commit: Option<&'static str>,
    /// UTC, RFC 3339.
    pub started: String,
    pub finished: String,
    pub device: String,
    /// Threads of candle's CPU pool (`RAYON_NUM_THREADS`, else the available cores).
    pub threads: usize,
    /// The command line, program name first.
    pub command_line: Vec<String>,
}

impl Provenance {
    /// A run on `device` that started at `started` and finishes now.
    pub fn of_run(started: SystemTime, device: &str) -> Self {
        let threads = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let commit = env!("AGM_GIT_COMMIT");
        Self {
            agm_version: env!("CARGO_PKG_VERSION"),
            git_commit: (!commit.is_empty()).then_some(commit),
            started: humantime::format_rfc3339_seconds(started).to_string(),
            finished: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            device: device.to_string(),
            threads,
            command_line: command_line(),
        }
    }

    /// The comment block atop a run's `config.toml` (written when the run starts, so without
    /// the end time; `summary.json` has it).
    pub fn config_header(&self) -> String {
        let commit = self.git_commit.map(|c| format!(", commit {c}")).unwrap_or_default();
        format!(
            "Written by agm {}{commit} for a run started {} on device {} with {} thread{}.\n\
             Command: {}\n\
             Settings of methods the run does not use are left out. Train it again with\n\
             `cargo xtask train --config <this file>`.",
            self.agm_version,
            self.started,
            self.device,
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            self.command_line.join(" ")
        )
    }
}

/// The command line as the user typed it: `cargo xtask …` (no path of this machine).
fn command_line() -> Vec<String> {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(program) = args.first_mut() {
        let name = std::path::Path::new(program.as_str()).file_stem().map(|n| n.to_string_lossy().into_owned());
        *program = match name.as_deref() {
            Some("xtask") => "cargo xtask".into(),
            Some(other) => other.into(),
            None => program.clone(),
        };
    }
    args
}
