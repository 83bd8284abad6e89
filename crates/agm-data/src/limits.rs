//! Limits on sizes read from files, checked before anything is allocated.
//!
//! A header can claim any size; these checks tie every claimed size to the file's real length
//! (or to a documented bound) so that a corrupt or hostile file fails with an error instead of
//! a panic, an abort on allocation, or a run that never ends. docs/datasets.md lists them.

/// WAV sample rates accepted (Hz). Below 1 kHz no speech survives; above 384 kHz no audio
/// interface records. Resampling cost grows with the rate ratio, so the range also bounds time.
pub const WAV_RATES: std::ops::RangeInclusive<u32> = 1_000..=384_000;

/// Largest jpeg frame side accepted (pixels); CREMA-D frames are a few hundred pixels.
pub const MAX_FRAME_SIDE: u32 = 8_192;

/// Deepest nesting of lists, tuples and dicts in a pickle (the datasets use fewer than 10).
pub const MAX_PICKLE_DEPTH: usize = 256;

/// Most memo entries in a pickle.
pub const MAX_PICKLE_MEMO: usize = 1 << 22;

/// Pickle values may materialise at most `file bytes × this + PICKLE_BUDGET_SLACK` units
/// (one per value plus one per byte of strings and buffers). Shared references (memo GET, DUP)
/// are copied, so without this a few hundred bytes can expand exponentially.
pub const PICKLE_BUDGET_FACTOR: usize = 8;
/// See [`PICKLE_BUDGET_FACTOR`].
pub const PICKLE_BUDGET_SLACK: usize = 1 << 20;

/// Compressed HDF5 datasets may expand at most this many times their file's size (deflate's
/// own ceiling is about 1032:1).
pub const MAX_H5_EXPANSION: u64 = 1_100;

/// Largest token id in MOSEI's `token_to_ix.pkl` relative to its entry count: ids are dense
/// (`0..=entries + 1`), and the embedding allocates one row per id.
pub const TOKEN_ID_SLACK: u64 = 1;

/// The element count of `shape`, or `None` when it or any partial product (the row length)
/// overflows, or when `count × elem_size` bytes would not fit in memory addressing.
///
/// Zero-sized dimensions do not hide the others: `(0, 2^63, 2^63)` is refused, because a row
/// length taken from it would overflow.
pub fn checked_len(shape: &[usize], elem_size: usize) -> Option<usize> {
    let nonzero = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d.max(1)))?;
    nonzero.checked_mul(elem_size.max(1)).filter(|&b| b <= isize::MAX as usize)?;
    Some(shape.iter().product())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_len_refuses_overflow_even_behind_a_zero() {
        assert_eq!(checked_len(&[2, 3], 4), Some(6));
        assert_eq!(checked_len(&[], 4), Some(1));
        assert_eq!(checked_len(&[0, 5], 4), Some(0));
        assert_eq!(checked_len(&[20, 1 << 32, 1 << 32], 4), None);
        assert_eq!(checked_len(&[0, 1 << 40, 1 << 40], 1), None);
        assert_eq!(checked_len(&[12, 1 << 61, 8], 1), None);
    }
}
