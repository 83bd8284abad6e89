//! `cargo xtask fuzz --minutes N`: runs agm-data's parser fuzz targets (the ones `tests/fuzz.rs`
//! runs a bounded number of times) for N minutes, round-robin, with random mutations of valid
//! inputs. Failing inputs (panics and hangs) are saved under `target/fuzz/` to become regression
//! tests.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agm_data::fuzz::{apply, random_case, seeded_rng, Target};

/// A case running longer than this is reported as a hang and ends the run. Cases take
/// milliseconds; a loaded 2-core machine (a build beside the fuzzer) stalls one for seconds, so
/// the limit leaves a wide margin and only a parser that does not return reaches it.
const HANG: Duration = Duration::from_secs(60);

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

    // A watchdog: a parser that never returns cannot be caught, so the run ends with a report
    // and the input saved as a failure is.
    let started = Arc::new(AtomicU64::new(u64::MAX));
    let running = Arc::new(AtomicUsize::new(0));
    let epoch = Instant::now();
    {
        let (started, running, dir, current) = (started.clone(), running.clone(), dir.clone(), current.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let s = started.load(Ordering::Relaxed);
            if s != u64::MAX && epoch.elapsed().as_millis() as u64 - s > HANG.as_millis() as u64 {
                let target = Target::ALL[running.load(Ordering::Relaxed)];
                eprintln!("{}", report_hang(&dir, &current, target.name()));
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
            running.store(k, Ordering::Relaxed);
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
                    let saved = save(&dir, target.name(), "failure", &input)?;
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

/// Saves a failing input of parser `name` as `<dir>/<name>-<kind>-<n>.bin`, `n` the first
/// number not taken, so no earlier run's input is overwritten.
fn save(dir: &Path, name: &str, kind: &str, input: &[u8]) -> anyhow::Result<PathBuf> {
    let path = (1..).map(|n| dir.join(format!("{name}-{kind}-{n}.bin"))).find(|p| !p.exists()).expect("a free name");
    std::fs::write(&path, input)?;
    Ok(path)
}

/// The watchdog's report of a case of parser `name` that ran over [`HANG`]: its input (in
/// `current`) is saved as a failure is, before the next run overwrites `current`.
fn report_hang(dir: &Path, current: &Path, name: &str) -> String {
    let saved = std::fs::read(current).map_err(anyhow::Error::from).and_then(|input| save(dir, name, "hang", &input));
    match saved {
        Ok(path) => format!("hang in {name}: a case ran over {HANG:?}; input saved to {}", path.display()),
        Err(e) => {
            format!("hang in {name}: a case ran over {HANG:?}; its input is {} (not saved: {e})", current.display())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hang_saves_its_input_as_a_regression_case_named_by_parser() {
        let tmp = tempfile::tempdir().unwrap();
        let current = tmp.path().join("current-input.bin");
        std::fs::write(&current, b"stuck").unwrap();
        let line = report_hang(tmp.path(), &current, "wav");
        let saved = tmp.path().join("wav-hang-1.bin");
        assert!(line.starts_with("hang in wav: a case ran over 60s; input saved to "), "{line}");
        assert!(line.ends_with(&saved.display().to_string()), "{line}");
        assert_eq!(std::fs::read(&saved).unwrap(), b"stuck");
        // A second hang, or a later run's, keeps the first input.
        std::fs::write(&current, b"again").unwrap();
        report_hang(tmp.path(), &current, "wav");
        assert_eq!(std::fs::read(&saved).unwrap(), b"stuck");
        assert_eq!(std::fs::read(tmp.path().join("wav-hang-2.bin")).unwrap(), b"again");
        assert_eq!(save(tmp.path(), "npy", "failure", b"x").unwrap(), tmp.path().join("npy-failure-1.bin"));
    }
}
