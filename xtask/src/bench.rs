//! `cargo xtask bench`: one AGM step against one joint step on the default model, timed in one
//! run (interleaved, so machine load affects both alike), reported as a ratio.

use std::process::ExitCode;

use agm_benches::{av_digits_batch, interleaved_medians, StepBench};
use candle_core::Device;

use crate::cli::BenchArgs;

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let device = Device::Cpu;
    let batch = av_digits_batch(args.batch_size, &device)?;
    let mut arms = vec![StepBench::new("joint", &device)?, StepBench::new("agm", &device)?];
    let medians = interleaved_medians(&mut arms, &batch, args.steps)?;
    println!("default AV-Digits model, batch {}, {} timed steps each, CPU, median", args.batch_size, args.steps);
    println!("| method | step (ms) | ratio to joint |");
    println!("|---|---|---|");
    for (arm, t) in arms.iter().zip(&medians) {
        println!("| {} | {:.3} | {:.2}x |", arm.method, 1e3 * t, t / medians[0]);
    }
    Ok(ExitCode::SUCCESS)
}
