//! `cargo xtask tidy`: the repository's convention checks of `xtask-tidy` (`cargo tidy` runs the
//! same checks without building agm).

use std::process::ExitCode;

pub fn run() -> anyhow::Result<ExitCode> {
    let problems = xtask_tidy::problems(&crate::workspace_root());
    for p in &problems {
        println!("{p}");
    }
    if problems.is_empty() {
        println!("tidy: ok");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("tidy: {} problem(s)", problems.len());
        Ok(ExitCode::FAILURE)
    }
}
