//! The in-place SGD update against the same arithmetic in candle ops, over several steps.

use agm_kernels::{sgd_update, sgd_update_all, sgd_update_ref, SgdParam, SgdUpdate};
use candle_core::{DType, Device, Result, Tensor, Var};

fn values(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// Three steps of both versions from the same start; parameters and buffers must agree bit for bit.
fn check(u: SgdUpdate, dtype: DType) -> Result<()> {
    check_shape(u, dtype, (4, 6))
}

fn check_shape(u: SgdUpdate, dtype: DType, shape: (usize, usize)) -> Result<()> {
    let dev = Device::Cpu;
    let n = (shape.0 * shape.1) as f32;
    let start = Tensor::arange(0f32, n, &dev)?.affine(0.173, -2.1)?.sin()?.reshape(shape)?.to_dtype(dtype)?;
    let (fused, reference) = (Var::from_tensor(&start.copy()?)?, Var::from_tensor(&start.copy()?)?);
    let (mut buf_fused, mut buf_ref) = (None, None);
    for step in 0..3 {
        let grad = (start.affine(0.7, step as f64)?.cos()? * 0.3)?;
        buf_fused = sgd_update(&fused, &grad, buf_fused, u)?;
        buf_ref = sgd_update_ref(&reference, &grad, buf_ref, u)?;
        assert_eq!(values(fused.as_tensor())?, values(reference.as_tensor())?, "{u:?} {dtype:?} step {step}");
        match (&buf_fused, &buf_ref) {
            (Some(a), Some(b)) => assert_eq!(values(a)?, values(b)?),
            (None, None) => assert_eq!(u.momentum, 0.0),
            _ => panic!("one version kept a momentum buffer and the other did not"),
        }
    }
    assert_ne!(values(fused.as_tensor())?, values(&start)?, "the parameter must move");
    Ok(())
}

#[test]
fn in_place_update_matches_candle_ops_bit_for_bit() -> Result<()> {
    let base = SgdUpdate { lr: 0.05, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false };
    let cases = [
        base,
        SgdUpdate { weight_decay: 1e-4, ..base },
        SgdUpdate { momentum: 0.9, weight_decay: 1e-4, ..base },
        SgdUpdate { momentum: 0.9, dampening: 0.3, weight_decay: 1e-2, ..base },
        SgdUpdate { momentum: 0.9, weight_decay: 1e-4, nesterov: true, ..base },
    ];
    for u in cases {
        for dtype in [DType::F32, DType::F64] {
            check(u, dtype)?;
        }
    }
    Ok(())
}

/// A parameter of many update chunks, so the in-place pass runs its chunks in parallel.
#[test]
fn large_parameters_update_in_parallel_chunks_bit_for_bit() -> Result<()> {
    let u = SgdUpdate { lr: 0.05, momentum: 0.9, dampening: 0.1, weight_decay: 1e-4, nesterov: false };
    check_shape(u, DType::F32, (300, 437))?;
    check_shape(SgdUpdate { nesterov: true, dampening: 0.0, ..u }, DType::F64, (300, 437))
}

/// Many parameters in one call (both dtypes, every setting, one in f16 that candle ops update,
/// one listed twice) step as one call each would, in order, over three steps.
#[test]
fn update_all_equals_one_update_per_parameter() -> Result<()> {
    let dev = Device::Cpu;
    let base = SgdUpdate { lr: 0.05, momentum: 0.9, dampening: 0.0, weight_decay: 1e-4, nesterov: false };
    let settings = [
        SgdUpdate { momentum: 0.0, ..base },
        base,
        SgdUpdate { dampening: 0.3, ..base },
        SgdUpdate { nesterov: true, weight_decay: 0.0, ..base },
    ];
    let dtypes = [DType::F32, DType::F64, DType::F32, DType::F16];
    let (mut all, mut one) = (Vec::new(), Vec::new());
    for i in 0..9 {
        let len = 1 + i * 37 % 50;
        let start = Tensor::arange(0f32, len as f32, &dev)?.affine(0.31, i as f64)?.sin()?.to_dtype(dtypes[i % 4])?;
        all.push(Var::from_tensor(&start)?);
        one.push(Var::from_tensor(&start)?);
    }
    // Entry (parameter, setting); parameter 3 twice.
    let entries: Vec<(usize, SgdUpdate)> =
        (0..9).chain([3]).map(|i| (i, SgdUpdate { lr: 0.05 * (1.0 + i as f64), ..settings[i % 4] })).collect();
    let (mut bufs_all, mut bufs_one) = (vec![None; entries.len()], vec![None; entries.len()]);
    for step in 0..3 {
        let grad = |i: usize| all[i].as_tensor().affine(0.7, step as f64)?.cos()? * 0.3;
        let params = entries
            .iter()
            .zip(bufs_all)
            .map(|(&(i, update), buf)| Ok(SgdParam { param: &all[i], grad: grad(i)?, buf, update }))
            .collect::<Result<Vec<_>>>()?;
        // Gradients taken before either steps, from the same values.
        let grads = entries.iter().map(|&(i, _)| grad(i)).collect::<Result<Vec<_>>>()?;
        bufs_all = sgd_update_all(params)?;
        for (k, &(i, update)) in entries.iter().enumerate() {
            bufs_one[k] = sgd_update(&one[i], &grads[k], bufs_one[k].take(), update)?;
        }
        for (i, (a, o)) in all.iter().zip(&one).enumerate() {
            assert_eq!(values(a)?, values(o)?, "step {step}, parameter {i}");
        }
        for (k, (a, o)) in bufs_all.iter().zip(&bufs_one).enumerate() {
            match (a, o) {
                (Some(a), Some(o)) => assert_eq!(values(a)?, values(o)?, "step {step}, buffer {k}"),
                (None, None) => assert_eq!(entries[k].1.momentum, 0.0),
                _ => panic!("step {step}, entry {k}: a momentum buffer on one side only"),
            }
        }
    }
    Ok(())
}

#[test]
fn kept_buffer_is_not_shared_with_the_gradient() -> Result<()> {
    let dev = Device::Cpu;
    let p = Var::new(&[1.0f32, 2.0], &dev)?;
    let g = Tensor::new(&[0.5f32, -0.5], &dev)?;
    let u = SgdUpdate { lr: 0.1, momentum: 0.9, dampening: 0.0, weight_decay: 0.0, nesterov: false };
    let buf = sgd_update(&p, &g, None, u)?;
    sgd_update(&p, &g, buf, u)?;
    // The gradient the caller holds is untouched by the in-place buffer updates.
    assert_eq!(g.to_vec1::<f32>()?, [0.5, -0.5]);
    Ok(())
}

#[test]
fn mismatched_gradient_is_an_error() -> Result<()> {
    let dev = Device::Cpu;
    let p = Var::new(&[1.0f32, 2.0], &dev)?;
    let g = Tensor::new(&[0.5f32, -0.5, 1.0], &dev)?;
    let u = SgdUpdate { lr: 0.1, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false };
    let err = sgd_update(&p, &g, None, u).unwrap_err().to_string();
    assert!(err.contains("gradient shape"), "{err}");
    Ok(())
}

#[test]
fn sum_squares_matches_candle_and_reads_strided_tensors() -> Result<()> {
    let dev = Device::Cpu;
    // Large enough to be split across threads.
    let t = Tensor::arange(0f32, 100_000.0, &dev)?.affine(1e-3, -40.0)?.sin()?.reshape((250, 400))?;
    let expected = t.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
    for view in [t.clone(), t.t()?] {
        let got = agm_kernels::sum_squares(&view)?;
        assert!((got - expected).abs() <= 1e-9 * expected, "{got} vs {expected}");
    }
    assert_eq!(agm_kernels::sum_squares(&Tensor::new(&[3.0f64, 4.0], &dev)?)?, 25.0);
    Ok(())
}

#[test]
fn sum_squares_each_is_each_tensors_own_sum() -> Result<()> {
    let dev = Device::Cpu;
    let ts = [
        Tensor::new(&[3.0f64, 4.0], &dev)?,
        Tensor::arange(0f32, 70_000.0, &dev)?.affine(1e-3, -20.0)?.cos()?.reshape((350, 200))?.t()?,
        Tensor::new(&[-2.0f32], &dev)?,
    ];
    let each = agm_kernels::sum_squares_each(&ts)?;
    let alone = ts.iter().map(agm_kernels::sum_squares).collect::<Result<Vec<_>>>()?;
    assert_eq!(each, alone);
    assert_eq!((each[0], each[2]), (25.0, 4.0));
    assert!(agm_kernels::sum_squares_each(&[])?.is_empty());
    Ok(())
}
