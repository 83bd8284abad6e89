//! Gaussian noise on CUDA against the CPU: the same draws, to the rounding of `log`, `sin` and `cos`.

use agm_kernels::add_gaussian_noise;
use candle_core::{DType, Result};

use crate::common::{check_op, input, tol};

#[test]
fn gaussian_noise_draws_the_cpu_noise() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        // Odd, and not a multiple of the block size: the last thread writes one element.
        let x = input(&[7, 129, 131], 0.4, dtype)?;
        for (scale, std, seed) in [(1.0, 0.5, 0), (0.3, 2.0, 12_345), (2.0, 1e-3, u64::MAX)] {
            check_op("add_gaussian_noise", std::slice::from_ref(&x), tol(dtype), |t| {
                add_gaussian_noise(&t[0], scale, std, seed)
            })?;
        }
    }
    Ok(())
}
