//! `cargo xtask`: the one agm binary. It parses arguments, prints, and drives the libraries.
//!
//! See README.md for the two commands everyone needs and `cargo xtask --help` for the rest.

mod bench;
mod cli;
mod concept;
mod data;
mod eval;
mod fuzz;
mod parity;
mod plot;
mod progress;
mod provenance;
mod recipes;
mod report;
mod reproduce;
mod stats;
mod study;
mod tidy;
mod train;

use clap::Parser;

/// Counts heap bytes, so run records and benches report the peak of live data.
#[global_allocator]
static ALLOC: agm_train::memory::CountingAlloc = agm_train::memory::CountingAlloc;

fn main() -> std::process::ExitCode {
    agm_kernels::tune_cpu_runtime();
    init_logging();
    let args = cli::Cli::parse();
    // On a pool thread, each parallel op starts without waking this thread back up afterwards.
    match agm_kernels::on_cpu_workers(|| run(args)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Shows the libraries' warnings (e.g. AGM's saturated coefficients) on stderr; the default
/// level is `warn`, and `RUST_LOG` overrides it.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // A second initialisation (tests) keeps the first subscriber.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).without_time().try_init();
}

fn run(args: cli::Cli) -> anyhow::Result<std::process::ExitCode> {
    use cli::Command;
    match args.command {
        Command::Train(t) => train::run(t),
        Command::Eval(e) => eval::run(e),
        Command::Parity(p) => parity::run(p),
        Command::Data(d) => data::run(d),
        Command::Bench(b) => bench::run(b),
        Command::Tidy => tidy::run(),
        Command::Study(s) => study::run(s),
        Command::Report(r) => report::run(r),
        Command::Concept(c) => concept::run(c),
        Command::Recipes => recipes::run(),
        Command::Reproduce(r) => reproduce::run(r),
        Command::Fuzz(f) => fuzz::run(f),
    }
}

/// On CUDA without cuDNN, one line saying that convolutions take the slower im2col path, and why.
pub(crate) fn cudnn_notice() {
    if let Err(why) = agm_kernels::cudnn_available() {
        eprintln!(
            "note: convolutions take the im2col path, not cuDNN: {why} \
             (pip install nvidia-cudnn-cu13 and put its lib folder on LD_LIBRARY_PATH; docs/cuda.md)"
        );
    }
}

/// A new directory under `parent` named `<stem>-<UTC date>-<time>` (a suffix on collision).
pub(crate) fn new_dir(parent: &str, stem: &str) -> anyhow::Result<std::path::PathBuf> {
    // 2026-12-06T05:01:02Z -> 20261206-050102
    let utc = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let digits: String = utc.chars().filter(char::is_ascii_digit).collect();
    let stem = format!("{stem}-{}-{}", &digits[..8], &digits[8..]);
    Ok(agm_train::RunDir::create_unique(std::path::Path::new(parent), &stem)?.root().to_path_buf())
}

/// The agm workspace the command works on: the one holding the current directory, else the one
/// holding the binary, else the one it was built in. A binary copied or moved elsewhere (a GPU
/// bundle, another checkout) works on where it runs, not on where it was compiled.
pub(crate) fn workspace_root() -> std::path::PathBuf {
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace");
    xtask_tidy::workspace_of_this_process().unwrap_or_else(|| built.to_path_buf())
}
