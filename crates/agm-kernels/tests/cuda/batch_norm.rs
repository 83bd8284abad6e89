//! Batch norm on CUDA against the CPU: every mode, the fused ReLU, and the returned statistics.

use std::cell::RefCell;

use agm_kernels::{batch_norm, batch_norm_mixed, batch_norm_relu, BatchStats};
use candle_core::{DType, Result};

use crate::common::{check_op, input, tol};

/// Which rows the running statistics normalise.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Train,
    Eval,
    /// Training rows followed by this many evaluation rows.
    Mixed(usize),
}

/// Fails unless the CPU's and CUDA's statistics agree: both accumulate in f64, so to rounding
/// whatever the dtype.
fn assert_stats_close(gpu: &Option<BatchStats>, cpu: &Option<BatchStats>, what: &str) {
    let (gpu, cpu) = match (gpu, cpu) {
        (None, None) => return,
        (Some(g), Some(c)) => (g, c),
        _ => panic!("{what}: statistics on one device only ({gpu:?} on CUDA, {cpu:?} on the CPU)"),
    };
    assert_eq!(gpu.count, cpu.count, "{what}: element counts differ");
    for (name, g, c) in [("mean", &gpu.mean, &cpu.mean), ("variance", &gpu.var, &cpu.var)] {
        assert_eq!(g.len(), c.len(), "{what}: {name} lengths differ");
        for (ch, (a, b)) in g.iter().zip(c).enumerate() {
            let err = (a - b).abs() / b.abs().max(1.0);
            assert!(err <= tol(DType::F64), "{what}: {name} of channel {ch} is {a} on CUDA, {b} on the CPU");
        }
    }
}

/// Every mode with and without the ReLU, on CPU and CUDA: outputs, the gradients of `x`,
/// `weight` and `bias`, and the returned statistics.
fn check_shape(shape: &[usize], dtype: DType) -> Result<()> {
    let c = shape[1];
    let x = input(shape, 0.1, dtype)?;
    let (weight, bias) = (input(&[c], 0.7, dtype)?, input(&[c], 2.3, dtype)?);
    let running_mean = input(&[c], 1.1, dtype)?;
    // A variance must be positive.
    let running_var = input(&[c], 0.4, dtype)?.abs()?.affine(1.0, 0.5)?;
    for mode in [Mode::Train, Mode::Eval, Mode::Mixed(1), Mode::Mixed(2)] {
        for relu in [false, true] {
            let what = format!("batch_norm {shape:?} {dtype:?} {mode:?} relu={relu}");
            // (on CUDA, statistics) of each run, for the comparison check_op cannot make.
            let stats = RefCell::new(Vec::new());
            check_op(&what, &[x.clone(), weight.clone(), bias.clone()], tol(dtype), |t| {
                let dev = t[0].device();
                let (rm, rv) = (running_mean.to_device(dev)?, running_var.to_device(dev)?);
                let (y, s) = match mode {
                    Mode::Train | Mode::Eval => {
                        let running = matches!(mode, Mode::Eval).then_some((&rm, &rv));
                        let op = if relu { batch_norm_relu } else { batch_norm };
                        op(&t[0], &t[1], &t[2], running, 1e-5)?
                    }
                    Mode::Mixed(tail) => batch_norm_mixed(&t[0], &t[1], &t[2], (&rm, &rv), 0.1, tail, 1e-5, relu)?,
                };
                stats.borrow_mut().push((dev.is_cuda(), s));
                Ok(y)
            })?;
            let stats = stats.into_inner();
            let on = |cuda: bool| &stats.iter().find(|(is_cuda, _)| *is_cuda == cuda).expect("a run on each device").1;
            assert_eq!(on(false).is_some(), !matches!(mode, Mode::Eval), "{what}: statistics only in training");
            assert_stats_close(on(true), on(false), &what);
        }
    }
    Ok(())
}

#[test]
fn batch_norm_two_dimensional() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        // A batch that is not a multiple of the block, and one longer than it (several elements
        // per thread).
        check_shape(&[7, 5], dtype)?;
        check_shape(&[300, 3], dtype)?;
    }
    Ok(())
}

#[test]
fn batch_norm_four_dimensional() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        check_shape(&[3, 5, 7, 11], dtype)?;
        check_shape(&[6, 4, 9, 13], dtype)?;
    }
    Ok(())
}

#[test]
fn batch_norm_five_dimensional() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        check_shape(&[4, 3, 2, 5, 3], dtype)?;
    }
    Ok(())
}
