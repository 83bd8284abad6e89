//! Batch norm on CUDA against the CPU: every mode, the fused ReLU, the returned statistics and
//! the stored running statistics.

use std::cell::RefCell;

use agm_kernels::{batch_norm, batch_norm_relu, batch_norm_train};
use candle_core::{DType, Result, Tensor, Var};

use crate::common::{check_op, input, tol};

/// Which rows the running statistics normalise.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// `batch_norm` in training mode (the statistics copied to the host).
    Train,
    Eval,
    /// `batch_norm_train`: training rows followed by this many evaluation rows.
    Stored(usize),
}

/// What a call reports besides its output, as host values: the batch mean and variance of
/// `batch_norm` in training, the stored running mean and variance of `batch_norm_train`.
type Reported = Option<[Vec<f64>; 2]>;

fn host(t: &Tensor) -> Result<Vec<f64>> {
    t.to_device(&candle_core::Device::Cpu)?.to_dtype(DType::F64)?.to_vec1::<f64>()
}

/// Fails unless the CPU's and CUDA's reports agree: statistics accumulate in f64 on both, and
/// the stored ones are rounded to the dtype, so to that dtype's tolerance.
fn assert_reports_close(gpu: &Reported, cpu: &Reported, dtype: DType, what: &str) {
    let (gpu, cpu) = match (gpu, cpu) {
        (None, None) => return,
        (Some(g), Some(c)) => (g, c),
        _ => panic!("{what}: statistics on one device only ({gpu:?} on CUDA, {cpu:?} on the CPU)"),
    };
    for (name, g, c) in [("mean", &gpu[0], &cpu[0]), ("variance", &gpu[1], &cpu[1])] {
        assert_eq!(g.len(), c.len(), "{what}: {name} lengths differ");
        for (ch, (a, b)) in g.iter().zip(c).enumerate() {
            let err = (a - b).abs() / b.abs().max(1.0);
            assert!(err <= tol(dtype), "{what}: {name} of channel {ch} is {a} on CUDA, {b} on the CPU");
        }
    }
}

/// Every mode with and without the ReLU, on CPU and CUDA: outputs, the gradients of `x`,
/// `weight` and `bias`, and the reported statistics.
fn check_shape(shape: &[usize], dtype: DType) -> Result<()> {
    let c = shape[1];
    let x = input(shape, 0.1, dtype)?;
    let (weight, bias) = (input(&[c], 0.7, dtype)?, input(&[c], 2.3, dtype)?);
    let running_mean = input(&[c], 1.1, dtype)?;
    // A variance must be positive.
    let running_var = input(&[c], 0.4, dtype)?.abs()?.affine(1.0, 0.5)?;
    for mode in [Mode::Train, Mode::Eval, Mode::Stored(0), Mode::Stored(1), Mode::Stored(2)] {
        for relu in [false, true] {
            let what = format!("batch_norm {shape:?} {dtype:?} {mode:?} relu={relu}");
            // (on CUDA, report) of each run, for the comparison check_op cannot make.
            let reports = RefCell::new(Vec::new());
            check_op(&what, &[x.clone(), weight.clone(), bias.clone()], tol(dtype), |t| {
                let dev = t[0].device();
                let (rm, rv) = (running_mean.to_device(dev)?, running_var.to_device(dev)?);
                let op = if relu { batch_norm_relu } else { batch_norm };
                let (y, report) = match mode {
                    Mode::Train => {
                        let (y, s) = op(&t[0], &t[1], &t[2], None, 1e-5)?;
                        (y, s.map(|s| [s.mean, s.var]))
                    }
                    Mode::Eval => (op(&t[0], &t[1], &t[2], Some((&rm, &rv)), 1e-5)?.0, None),
                    Mode::Stored(tail) => {
                        let (y, s) = batch_norm_train(&t[0], &t[1], &t[2], (&rm, &rv), 0.1, tail, 1e-5, relu)?;
                        // Stored in place, as a layer stores them, with its batch counted.
                        let (mean, var) = (Var::from_tensor(&rm)?, Var::from_tensor(&rv)?);
                        let batches = Var::from_tensor(&Tensor::new(&[7.0, 0.0], dev)?.to_dtype(dtype)?)?;
                        s.store(&mean, &var, &batches)?;
                        assert_eq!(host(&batches)?, [8.0, 1.0], "{what}: the batch counter on {dev:?}");
                        (y, Some([host(&mean)?, host(&var)?]))
                    }
                };
                reports.borrow_mut().push((dev.is_cuda(), report));
                Ok(y)
            })?;
            let reports = reports.into_inner();
            let on =
                |cuda: bool| &reports.iter().find(|(is_cuda, _)| *is_cuda == cuda).expect("a run on each device").1;
            assert_eq!(on(false).is_some(), !matches!(mode, Mode::Eval), "{what}: statistics only in training");
            assert_reports_close(on(true), on(false), dtype, &what);
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

/// Channels large enough that each reduction runs over several blocks per channel, with parts
/// that end inside a row and, with evaluation rows, a part holding both kinds of rows.
#[test]
fn batch_norm_channels_split_over_blocks() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        check_shape(&[4, 3, 64, 64], dtype)?;
        check_shape(&[3, 2, 97, 101], dtype)?;
    }
    Ok(())
}
