//! Max and average pooling on CUDA against the CPU ops, ties included.
use agm_kernels::{avg_pool2d, max_pool2d, Pool2dSpec};
use candle_core::{DType, Result, Tensor};

use crate::common::{check_op, input, tol};

/// `(input [B, C, H, W], kernel, stride, padding)`: kernel equal to, above and below the stride,
/// padding 0 to 2, odd sizes, a stride that skips pixels, and a 3×3/s2/p1 stem pool.
const CASES: [([usize; 4], usize, usize, usize); 8] = [
    ([2, 3, 8, 10], 3, 2, 1),
    ([2, 2, 7, 6], 2, 2, 0),
    ([1, 2, 6, 7], 3, 1, 1),
    ([1, 2, 9, 8], 3, 3, 0),
    ([1, 1, 11, 9], 5, 3, 2),
    ([2, 1, 3, 4], 2, 1, 1),
    ([1, 3, 13, 11], 2, 3, 0),
    ([3, 5, 17, 19], 3, 2, 1),
];

/// `x` rounded to steps of 0.5, so most windows hold repeated maxima.
fn with_ties(x: &Tensor) -> Result<Tensor> {
    x.affine(4.0, 0.0)?.round()?.affine(0.5, 0.0)
}

#[test]
fn max_pool2d_matches_the_cpu() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        for (i, (shape, k, s, p)) in CASES.into_iter().enumerate() {
            let spec = Pool2dSpec::new(k, s, p);
            let x = input(&shape, 0.3 + i as f64, dtype)?;
            let tied = with_ties(&x)?;
            for (what, x) in [("max pool", x), ("max pool with ties", tied)] {
                check_op(&format!("{what} {spec:?} on {shape:?} {dtype:?}"), &[x], tol(dtype), |t| {
                    max_pool2d(&t[0], spec)
                })?;
            }
        }
    }
    Ok(())
}

#[test]
fn avg_pool2d_matches_the_cpu() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        for (i, (shape, k, s, p)) in CASES.into_iter().enumerate() {
            let spec = Pool2dSpec::new(k, s, p);
            let x = input(&shape, 1.1 + i as f64, dtype)?;
            check_op(&format!("avg pool {spec:?} on {shape:?} {dtype:?}"), &[x], tol(dtype), |t| {
                avg_pool2d(&t[0], spec)
            })?;
        }
    }
    Ok(())
}
