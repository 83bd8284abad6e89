//! `cargo tidy`: the repository's convention checks, printed one problem a line.

// A binary: printing is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(root) = xtask_tidy::workspace_of_this_process() else {
        eprintln!("cargo tidy: run it inside the agm workspace");
        return ExitCode::FAILURE;
    };
    let problems = xtask_tidy::problems(&root);
    for p in &problems {
        println!("{p}");
    }
    if problems.is_empty() {
        println!("tidy: ok");
        ExitCode::SUCCESS
    } else {
        println!("tidy: {} problem(s)", problems.len());
        ExitCode::FAILURE
    }
}
