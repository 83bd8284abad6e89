//! `cargo xtask concept`.

use std::process::ExitCode;

use crate::cli::ConceptArgs;

pub fn run(_args: ConceptArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`cargo xtask concept` is not built yet")
}
