//! Property-based fuzzing of every loader parser: valid inputs are mutated (truncation, bit
//! flips, size fields made huge, header numbers replaced, chunks repeated or deleted) and each
//! parser must return `Ok` or `Err` — never panic, hang or ask for a huge allocation.
//! `cargo xtask fuzz --minutes N` drives the same targets and mutations for longer.

use std::time::{Duration, Instant};

use agm_data::fuzz::{apply, Mutation, Target, INTERESTING};
use proptest::prelude::*;

mod common;

#[global_allocator]
static ALLOC: common::Capped = common::Capped;

/// Longest a single case may take (debug build, shared machine).
const SLOW: Duration = Duration::from_secs(5);

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = proptest::sample::select(INTERESTING.to_vec());
    prop_oneof![
        any::<u32>().prop_map(|keep| Mutation::Truncate { keep }),
        (any::<u32>(), any::<u8>()).prop_map(|(pos, bit)| Mutation::FlipBit { pos, bit }),
        (any::<u32>(), any::<u8>()).prop_map(|(pos, value)| Mutation::SetByte { pos, value }),
        (any::<u32>(), any::<u8>(), prop_oneof![interesting.clone(), any::<u64>()])
            .prop_map(|(pos, width, value)| Mutation::WriteInt { pos, width, value }),
        (any::<u32>(), interesting).prop_map(|(nth, value)| Mutation::ReplaceNumber { nth, value }),
        (any::<u32>(), 1u16..64, any::<u32>()).prop_map(|(from, len, at)| Mutation::Duplicate { from, len, at }),
        (any::<u32>(), 1u16..32).prop_map(|(pos, len)| Mutation::Delete { pos, len }),
    ]
}

fn check(target: Target, seed: usize, mutations: &[Mutation]) -> Result<(), TestCaseError> {
    let seeds = target.seeds();
    let input = apply(&seeds[seed % seeds.len()], mutations);
    let t = Instant::now();
    let outcome = std::panic::catch_unwind(|| target.run(&input).map_err(|e| e.to_string()));
    let took = t.elapsed();
    prop_assert!(outcome.is_ok(), "{} panicked on {} bytes after {mutations:?}", target.name(), input.len());
    if let Ok(Err(msg)) = &outcome {
        prop_assert!(msg.contains("fuzz-input"), "{}: error does not name the file: {msg}", target.name());
    }
    prop_assert!(took < SLOW, "{} took {took:?} on {} bytes after {mutations:?}", target.name(), input.len());
    Ok(())
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

macro_rules! fuzz_target {
    ($name:ident, $target:expr, $cases:expr) => {
        proptest! {
            #![proptest_config(config($cases))]
            #[test]
            fn $name(seed in 0usize..8, mutations in proptest::collection::vec(mutation(), 1..5)) {
                check($target, seed, &mutations)?;
            }
        }
    };
}

fuzz_target!(npy_never_panics, Target::Npy, 2000);
fuzz_target!(pickle_never_panics, Target::Pickle, 2000);
fuzz_target!(h5_never_panics, Target::H5, 1500);
fuzz_target!(wav_never_panics, Target::Wav, 1500);
fuzz_target!(jpg_never_panics, Target::Jpeg, 1500);
fuzz_target!(csv_never_panics, Target::Csv, 2000);

#[test]
fn every_seed_parses() {
    for t in Target::ALL {
        for (i, s) in t.seeds().iter().enumerate() {
            t.run(s).unwrap_or_else(|e| panic!("{} seed {i}: {e}", t.name()));
        }
    }
}
