//! Per-sample cross-entropy on CUDA against the CPU, and its refusal of out-of-range labels.

use agm_kernels::cross_entropy_per_sample;
use candle_core::{DType, Result, Tensor};

use crate::common::{check_op, gpu, input, tol};

/// Labels spread over the classes, `b` of them for `k` classes.
fn labels(b: usize, k: usize) -> Result<Tensor> {
    let values: Vec<u32> = (0..b).map(|i| ((i * 7 + 3) % k) as u32).collect();
    Tensor::new(values, &candle_core::Device::Cpu)
}

/// Checks the per-sample losses and the logits' gradient of `[b, k]` logits scaled by `scale`.
fn check(b: usize, k: usize, scale: f64, dtype: DType) -> Result<()> {
    let logits = input(&[b, k], 0.5, dtype)?.affine(scale, 0.0)?;
    let labels = labels(b, k)?;
    check_op(&format!("cross_entropy [{b}, {k}] ×{scale} {dtype:?}"), &[logits], tol(dtype), |t| {
        cross_entropy_per_sample(&t[0], &labels.to_device(t[0].device())?)
    })
}

#[test]
fn cross_entropy_rows() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        // One class (every loss 0), short and long rows (1000 > a block's 256 threads), many rows.
        for (b, k) in [(5, 1), (1, 7), (6, 7), (4, 300), (3, 1000), (2000, 10), (300, 33)] {
            check(b, k, 3.0, dtype)?;
        }
    }
    Ok(())
}

#[test]
fn cross_entropy_large_logits() -> Result<()> {
    // exp of these logits overflows (f32 past 88.7, f64 past 709): only a max-subtracted kernel
    // stays finite. f32 keeps to ±100 so that one rounding of `max + log(sum)` stays in tolerance.
    for (dtype, scale) in [(DType::F32, 100.0), (DType::F64, 1000.0)] {
        for (b, k) in [(6, 7), (3, 1000)] {
            check(b, k, scale, dtype)?;
        }
    }
    Ok(())
}

#[test]
fn cross_entropy_out_of_range_label_fails() -> Result<()> {
    let dev = gpu();
    let logits = input(&[2, 5], 0.1, DType::F32)?.to_device(&dev)?;
    let bad = Tensor::new(&[1u32, 5], &dev)?;
    let err = cross_entropy_per_sample(&logits, &bad).expect_err("label 5 of 5 classes must be refused");
    assert!(err.to_string().contains("out of range"), "unexpected error: {err}");
    Ok(())
}
