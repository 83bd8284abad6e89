//! Dropout on CUDA against the CPU: the same mask, bit for bit, on all or only the leading elements.

use agm_kernels::dropout_leading;
use candle_core::{DType, Result};

use crate::common::{check_op, input};

#[test]
fn dropout_draws_the_cpu_mask() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        // Not a multiple of the block size: the last block is partly idle.
        let x = input(&[7, 129, 131], 0.4, dtype)?;
        let n = x.elem_count();
        for (p, seed, count) in [(0.1, 0, n), (0.5, 12_345, n), (0.9, u64::MAX, n), (0.5, 3, n / 2 + 1), (0.5, 3, 0)] {
            check_op("dropout", std::slice::from_ref(&x), 0.0, |t| dropout_leading(&t[0], p, seed, count))?;
        }
    }
    Ok(())
}
