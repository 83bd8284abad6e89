//! `cargo xtask parity`.

use std::process::ExitCode;

use crate::cli::ParityArgs;

pub fn run(args: ParityArgs) -> anyhow::Result<ExitCode> {
    let mut failed = 0;
    for dir in &args.cases {
        match agm_train::parity::run_case(dir) {
            Ok(report) => {
                println!("{report}");
                if !report.passed() {
                    failed += 1;
                }
            }
            Err(e) => {
                println!("{}: ERROR {e}", dir.display());
                failed += 1;
            }
        }
    }
    println!("{} passed, {} failed", args.cases.len() - failed, failed);
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
