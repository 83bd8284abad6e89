//! `cargo xtask study`.

use std::process::ExitCode;

use crate::cli::StudyArgs;

pub fn run(_args: StudyArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`cargo xtask study` is not built yet")
}
