//! `cargo xtask report`.

use std::process::ExitCode;

use crate::cli::ReportArgs;

pub fn run(_args: ReportArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`cargo xtask report` is not built yet")
}
