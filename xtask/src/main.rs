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

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

/// Counts heap bytes, so run records and benches report the peak of live data.
#[global_allocator]
static ALLOC: agm_train::memory::CountingAlloc = agm_train::memory::CountingAlloc;

fn main() -> std::process::ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe panicked; the default ends the process
    // quietly. Run files are written atomically, so nothing is left half-written.
    #[cfg(unix)]
    // SAFETY: called first, before any thread exists; restores the signal's default action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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
    // Every command that takes `--device cuda` rebuilds itself with CUDA before it does anything
    // (`train` also for a device set in a config file or recipe).
    if !cfg!(feature = "cuda") && asks_for_cuda(std::env::args().skip(1)) {
        return reexec_with_cuda();
    }
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

/// Whether the command line says `--device cuda` (or `--device=cuda`).
fn asks_for_cuda(args: impl Iterator<Item = String>) -> bool {
    let args: Vec<String> = args.collect();
    args.windows(2).any(|w| w[0] == "--device" && w[1] == "cuda") || args.iter().any(|a| a == "--device=cuda")
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
pub(crate) fn reexec_with_cuda() -> anyhow::Result<ExitCode> {
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
