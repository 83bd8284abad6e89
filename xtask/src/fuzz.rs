//! `cargo xtask fuzz --minutes N`: runs agm-data's parser fuzz targets (the ones `tests/fuzz.rs`
//! runs a bounded number of times) for N minutes, round-robin, with random mutations of valid
//! inputs. Failing inputs are saved under `target/fuzz/` to become regression tests.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agm_data::fuzz::{apply, random_case, seeded_rng, Target};

/// A case running longer than this is reported as a hang and ends the run.
const HANG: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug)]
#[command(about = "Fuzz the dataset file parsers (npy, pickle, h5, wav, jpg, csv) for a while")]
pub struct FuzzArgs {
    /// How long to run, in minutes.
    #[arg(long, default_value_t = 1.0)]
    pub minutes: f64,
    /// Seed of the mutation generator (default: from the clock); printed so a run can be repeated.
    #[arg(long)]
    pub seed: Option<u64>,
}

#[derive(Default)]
struct Tally {
    cases: u64,
    ok: u64,
    errors: u64,
    panics: u64,
}

pub fn run(args: FuzzArgs) -> anyhow::Result<ExitCode> {
    let deadline = Duration::try_from_secs_f64(args.minutes * 60.0).map_err(|_| {
        anyhow::anyhow!("--minutes {} is not a duration: pass a number of minutes, 0 or more", args.minutes)
    })?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    });
    let dir = crate::workspace_root().join("target/fuzz");
    std::fs::create_dir_all(&dir)?;
    let current = dir.join("current-input.bin");
    println!(
        "fuzzing for {} min, seed {seed}; the running case's input is kept in {}",
        args.minutes,
        current.display()
    );

    // A watchdog: a parser that never returns cannot be caught, so the run ends with a report.
    let started = Arc::new(AtomicU64::new(u64::MAX));
    let epoch = Instant::now();
    {
        let (started, current) = (started.clone(), current.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let s = started.load(Ordering::Relaxed);
            if s != u64::MAX && epoch.elapsed().as_millis() as u64 - s > HANG.as_millis() as u64 {
                eprintln!("hang: a case ran over {HANG:?}; its input is {}", current.display());
                std::process::exit(3);
            }
        });
    }

    let seeds: Vec<(Target, Vec<Vec<u8>>)> = Target::ALL.iter().map(|&t| (t, t.seeds())).collect();
    let mut tallies: Vec<Tally> = Target::ALL.iter().map(|_| Tally::default()).collect();
    let mut rng = seeded_rng(seed);
    let mut failures: Vec<PathBuf> = Vec::new();
    'outer: while epoch.elapsed() < deadline {
        for (k, (target, bases)) in seeds.iter().enumerate() {
            let (base, mutations) = random_case(&mut rng, bases.len());
            let input = apply(&bases[base], &mutations);
            std::fs::write(&current, &input)?;
            started.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            let outcome = std::panic::catch_unwind(|| target.run(&input));
            started.store(u64::MAX, Ordering::Relaxed);
            let t = &mut tallies[k];
            t.cases += 1;
            match outcome {
                Ok(Ok(())) => t.ok += 1,
                Ok(Err(_)) => t.errors += 1,
                Err(_) => {
                    t.panics += 1;
                    let saved = save(&dir, target.name(), t.panics, &input)?;
                    println!("panic in {} after {mutations:?}; input saved to {}", target.name(), saved.display());
                    failures.push(saved);
                }
            }
            if epoch.elapsed() >= deadline {
                break 'outer;
            }
        }
    }
    println!("{:<8} {:>10} {:>10} {:>12} {:>8}", "parser", "cases", "ok", "clean errors", "panics");
    for ((target, _), t) in seeds.iter().zip(&tallies) {
        println!("{:<8} {:>10} {:>10} {:>12} {:>8}", target.name(), t.cases, t.ok, t.errors, t.panics);
    }
    println!("{:.1} s, seed {seed}", epoch.elapsed().as_secs_f64());
    let _ = std::fs::remove_file(&current);
    Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn save(dir: &Path, name: &str, n: u64, input: &[u8]) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}-failure-{n}.bin"));
    std::fs::write(&path, input)?;
    Ok(path)
}
