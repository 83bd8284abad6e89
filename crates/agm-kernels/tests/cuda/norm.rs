//! Layer norm and softmax on CUDA against the CPU: short and long rows, large values.

use agm_kernels::{layer_norm, softmax_last_dim};
use candle_core::{DType, Result};

use crate::common::{check_op, input, tol};

/// Rows of length 1, 7, 300 and 1000 (more than a block's 256 threads), a few rows and many; the
/// layer-norm backward sums `dgamma` over blocks of `8192 / d` rows, so several shapes span more
/// than one such block ([2000, 7], [3, 40, 300], [20, 1000]).
const SHAPES: [&[usize]; 8] =
    [&[5, 1], &[1, 7], &[4, 7], &[2000, 7], &[3, 40, 300], &[2, 1000], &[20, 1000], &[515, 33]];

#[test]
fn layer_norm_rows() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        for shape in SHAPES {
            let d = shape[shape.len() - 1];
            let x = input(shape, 0.4, dtype)?;
            let (gamma, beta) = (input(&[d], 1.3, dtype)?.affine(1.0, 1.0)?, input(&[d], 2.2, dtype)?);
            check_op(&format!("layer_norm {shape:?} {dtype:?}"), &[x, gamma, beta], tol(dtype), |t| {
                layer_norm(&t[0], &t[1], &t[2], 1e-5)
            })?;
        }
    }
    Ok(())
}

#[test]
fn layer_norm_offset_rows() -> Result<()> {
    // A large common offset: a one-pass variance (E[x²] − mean²) would lose the small spread.
    // f64 only: in f32 the CPU's sequential row sums already drift past 2e-5 at such offsets.
    let dtype = DType::F64;
    let x = input(&[6, 300], 0.9, dtype)?.affine(1.0, 1000.0)?;
    let (gamma, beta) = (input(&[300], 1.1, dtype)?, input(&[300], 0.6, dtype)?);
    check_op("layer_norm offset", &[x, gamma, beta], tol(dtype), |t| layer_norm(&t[0], &t[1], &t[2], 1e-6))
}

#[test]
fn softmax_rows() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        for shape in SHAPES {
            let x = input(shape, 0.7, dtype)?.affine(3.0, 0.0)?;
            check_op(&format!("softmax {shape:?} {dtype:?}"), &[x], tol(dtype), |t| softmax_last_dim(&t[0]))?;
        }
    }
    Ok(())
}

#[test]
fn softmax_large_logits() -> Result<()> {
    // exp of these logits overflows (f32 past 88.7, f64 past 709): only a max-subtracted kernel
    // stays finite. f32 keeps to ±100 so that one rounding of the shifted sums stays in tolerance.
    for (dtype, scale) in [(DType::F32, 100.0), (DType::F64, 1000.0)] {
        for shape in [&[4, 7][..], &[3, 1000]] {
            let x = input(shape, 0.2, dtype)?.affine(scale, 0.0)?;
            check_op(&format!("softmax large {shape:?} {dtype:?}"), &[x], tol(dtype), |t| softmax_last_dim(&t[0]))?;
        }
    }
    Ok(())
}
