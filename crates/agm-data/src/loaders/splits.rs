//! Fixed, seeded validation splits carved from train where the reference has none
//! (AV-MNIST, CREMA-D), and AGM's `int(0.9 n)` train/test/dep rule.
//!
//! The validation positions are `sorted(epoch_order(n, VALIDATION_SEED, 0, true)[..max(n/10, 1)])`,
//! positions into AGM's train slice (the first `int(0.9 n)` rows, file order). For the real
//! sizes the resulting lists are shipped in `src/loaders/splits/` (AV-MNIST n = 54,000;
//! CREMA-D n = 6,028, i.e. all 6,698 train.csv rows present) and a test checks that the code
//! reproduces them; `cargo test -p agm-data -- --ignored write_validation_lists` rewrites them.

use crate::dataset::epoch_order;

/// The seed of the shipped validation lists.
pub const VALIDATION_SEED: u64 = 20_231_001;

/// AGM's `int(0.9 n)`.
pub fn ninety(n: usize) -> usize {
    n * 9 / 10
}

/// The shipped AV-MNIST validation positions (n = 54,000).
pub const AVMNIST_VALIDATION: &str = include_str!("splits/avmnist_validation.txt");
/// The shipped CREMA-D validation positions (n = 6,028).
pub const CREMAD_VALIDATION: &str = include_str!("splits/cremad_validation.txt");

/// Validation positions (sorted) among `n` training rows.
pub fn validation_positions(n: usize, seed: u64) -> Vec<usize> {
    let k = (n / 10).max(usize::from(n >= 2)); // at least one validation row once n >= 2
    let mut v: Vec<usize> = epoch_order(n, seed, 0, true).into_iter().take(k).collect();
    v.sort_unstable();
    v
}

/// Parses a shipped list (one position a line; `#` comments).
pub fn parse_list(text: &str) -> Vec<usize> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// Validation positions: the shipped list when `n` and `seed` match it, else recomputed.
pub fn validation_for(n: usize, seed: u64, shipped: &str, shipped_n: usize) -> Vec<usize> {
    if n == shipped_n && seed == VALIDATION_SEED {
        parse_list(shipped)
    } else {
        validation_positions(n, seed)
    }
}

/// Splits positions `0..n` into (train, validation) given sorted validation positions.
pub fn carve(n: usize, validation: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let mut is_val = vec![false; n];
    validation.iter().filter(|&&i| i < n).for_each(|&i| is_val[i] = true);
    let train = (0..n).filter(|&i| !is_val[i]).collect();
    let val = (0..n).filter(|&i| is_val[i]).collect();
    (train, val)
}

/// Renders a list file.
pub fn render_list(what: &str, n: usize, positions: &[usize]) -> String {
    let mut s = format!(
        "# {what}: validation positions among the first int(0.9*N) train rows (n = {n}), seed {VALIDATION_SEED};\n# made by agm_data::loaders::splits::validation_positions\n"
    );
    for p in positions {
        s.push_str(&p.to_string());
        s.push('\n');
    }
    s
}
