//! The in-place SGD update and the squared norm on CUDA against the CPU and candle ops.

use agm_kernels::{sgd_update, sgd_update_all, sgd_update_ref, sum_squares, sum_squares_each, SgdParam, SgdUpdate};
use candle_core::{DType, Device, Result, Tensor, Var};

use crate::common::{assert_close, gpu, input, tol};

fn values(t: &Tensor) -> Result<Vec<f64>> {
    t.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// Four steps of the fused update on the CPU and on CUDA and of the candle-op update on CUDA,
/// from the same start with the same gradients. The two fused updates round every step alike, so
/// they must agree bit for bit; candle's kernels may fuse a product into an FMA, so the candle-op
/// version agrees within the dtype's tolerance.
fn check(u: SgdUpdate, shape: &[usize], dtype: DType) -> Result<()> {
    let gpu = gpu();
    let start = input(shape, 0.4, dtype)?;
    let cpu = Var::from_tensor(&start.copy()?)?;
    let fused = Var::from_tensor(&start.to_device(&gpu)?)?;
    let reference = Var::from_tensor(&start.to_device(&gpu)?)?;
    let (mut buf_cpu, mut buf_ref) = (None, None);
    let mut buf_fused: Option<Tensor> = None;
    for step in 0..4 {
        let what = format!("{u:?} {dtype:?} {shape:?} step {step}");
        let grad = (input(shape, 1.1 + step as f64, dtype)? * 0.3)?;
        let grad_gpu = grad.to_device(&gpu)?;
        let kept = buf_fused.as_ref().map(|b| b.id());
        buf_cpu = sgd_update(&cpu, &grad, buf_cpu, u)?;
        buf_fused = sgd_update(&fused, &grad_gpu, buf_fused, u)?;
        buf_ref = sgd_update_ref(&reference, &grad_gpu, buf_ref, u)?;
        // The fused path updates the buffer in place; candle ops would make a new one each step.
        if let (Some(before), Some(after)) = (kept, &buf_fused) {
            assert_eq!(before, after.id(), "{what}: the momentum buffer was not updated in place");
        }
        assert!(fused.as_tensor().device().is_cuda(), "{what}: the parameter left the GPU");
        assert_eq!(values(fused.as_tensor())?, values(cpu.as_tensor())?, "{what}: parameter, CUDA vs CPU");
        assert_close(
            fused.as_tensor(),
            reference.as_tensor(),
            tol(dtype),
            &format!("{what}: parameter vs candle ops"),
        )?;
        match (&buf_fused, &buf_cpu, &buf_ref) {
            (Some(f), Some(c), Some(r)) => {
                assert_eq!(values(f)?, values(c)?, "{what}: momentum buffer, CUDA vs CPU");
                assert_close(f, r, tol(dtype), &format!("{what}: momentum buffer vs candle ops"))?;
            }
            (None, None, None) => assert_eq!(u.momentum, 0.0),
            _ => panic!("{what}: one version kept a momentum buffer and another did not"),
        }
    }
    assert_ne!(values(fused.as_tensor())?, values(&start)?, "the parameter must move");
    Ok(())
}

#[test]
fn sgd_update_matches_cpu_and_candle_ops() -> Result<()> {
    let base = SgdUpdate { lr: 0.05, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false };
    let cases = [
        base,
        SgdUpdate { weight_decay: 1e-4, ..base },
        SgdUpdate { momentum: 0.9, ..base },
        SgdUpdate { momentum: 0.9, weight_decay: 1e-4, ..base },
        SgdUpdate { momentum: 0.9, dampening: 0.3, ..base },
        SgdUpdate { momentum: 0.9, dampening: 0.3, weight_decay: 1e-2, ..base },
        SgdUpdate { momentum: 0.9, nesterov: true, ..base },
        SgdUpdate { momentum: 0.9, weight_decay: 1e-4, nesterov: true, ..base },
        SgdUpdate { momentum: 0.8, dampening: 0.1, weight_decay: 5e-4, nesterov: true, ..base },
    ];
    for u in cases {
        for dtype in [DType::F32, DType::F64] {
            // Odd sizes: a partial last block, and a single element.
            for shape in [&[37, 29][..], &[1][..], &[3, 5, 7, 11][..]] {
                check(u, shape, dtype)?;
            }
        }
    }
    Ok(())
}

/// `sgd_update_all` on CUDA against one `sgd_update` per parameter on the CPU, bit for bit: 70
/// parameters of both dtypes (three tables of f32, three of f64), every setting, sizes from one
/// element to many blocks of the table kernel, one parameter listed twice (its two steps run one
/// after the other), four steps (the first creates the buffers, later ones update them in place).
#[test]
fn sgd_update_all_matches_one_cpu_update_per_parameter() -> Result<()> {
    let gpu = gpu();
    let base = SgdUpdate { lr: 0.05, momentum: 0.9, dampening: 0.0, weight_decay: 1e-4, nesterov: false };
    let settings = [
        SgdUpdate { momentum: 0.0, ..base },
        base,
        SgdUpdate { dampening: 0.3, ..base },
        SgdUpdate { nesterov: true, weight_decay: 0.0, ..base },
        SgdUpdate { momentum: 0.0, weight_decay: 0.0, ..base },
    ];
    let (mut cpu, mut on_gpu) = (Vec::new(), Vec::new());
    for i in 0..70 {
        let dtype = if i % 2 == 0 { DType::F32 } else { DType::F64 };
        let len = if i == 10 { 300 * 437 } else { 1 + i * 997 % 9000 };
        let start = input(&[len], 0.05 * i as f64, dtype)?;
        cpu.push(Var::from_tensor(&start)?);
        on_gpu.push(Var::from_tensor(&start.to_device(&gpu)?)?);
    }
    let entries: Vec<(usize, SgdUpdate)> =
        (0..70).chain([10]).map(|i| (i, SgdUpdate { lr: 0.01 * (1.0 + i as f64), ..settings[i % 5] })).collect();
    let (mut bufs_cpu, mut bufs_gpu) = (vec![None; entries.len()], vec![None; entries.len()]);
    for step in 0..4 {
        let grads = entries
            .iter()
            .map(|&(i, _)| cpu[i].as_tensor().affine(0.7, step as f64)?.cos()? * 0.3)
            .collect::<Result<Vec<_>>>()?;
        let kept: Vec<_> = bufs_gpu.iter().map(|b: &Option<Tensor>| b.as_ref().map(|b| b.id())).collect();
        let params = entries
            .iter()
            .zip(&grads)
            .zip(bufs_gpu)
            .map(|((&(i, update), g), buf)| Ok(SgdParam { param: &on_gpu[i], grad: g.to_device(&gpu)?, buf, update }))
            .collect::<Result<Vec<_>>>()?;
        bufs_gpu = sgd_update_all(params)?;
        for (k, &(i, update)) in entries.iter().enumerate() {
            bufs_cpu[k] = sgd_update(&cpu[i], &grads[k], bufs_cpu[k].take(), update)?;
        }
        for (i, (c, g)) in cpu.iter().zip(&on_gpu).enumerate() {
            assert!(g.device().is_cuda(), "step {step}, parameter {i} left the GPU");
            assert_eq!(values(g)?, values(c)?, "step {step}, parameter {i} ({:?}): CUDA vs CPU", c.dtype());
        }
        for (k, ((c, g), kept)) in bufs_cpu.iter().zip(&bufs_gpu).zip(kept).enumerate() {
            match (c, g) {
                (Some(c), Some(g)) => {
                    assert_eq!(values(g)?, values(c)?, "step {step}, buffer {k}: CUDA vs CPU");
                    if let Some(kept) = kept {
                        assert_eq!(kept, g.id(), "step {step}, buffer {k} was not updated in place");
                    }
                }
                (None, None) => assert_eq!(entries[k].1.momentum, 0.0),
                _ => panic!("step {step}, entry {k}: a momentum buffer on one device only"),
            }
        }
    }
    Ok(())
}

#[test]
fn sgd_update_leaves_the_gradient_alone() -> Result<()> {
    let gpu = gpu();
    let p = Var::new(&[1.0f32, 2.0], &gpu)?;
    let g = Tensor::new(&[0.5f32, -0.5], &gpu)?;
    let u = SgdUpdate { lr: 0.1, momentum: 0.9, dampening: 0.0, weight_decay: 0.0, nesterov: false };
    let buf = sgd_update(&p, &g, None, u)?;
    sgd_update(&p, &g, buf, u)?;
    assert_eq!(g.to_device(&Device::Cpu)?.to_vec1::<f32>()?, [0.5, -0.5]);
    Ok(())
}

#[test]
fn sum_squares_matches_cpu() -> Result<()> {
    let gpu = gpu();
    for dtype in [DType::F32, DType::F64] {
        // One element, less than one block, and more elements than the first pass has threads.
        for n in [1, 1000, 3_000_000] {
            let t = input(&[n], 0.6, dtype)?;
            let want = sum_squares(&t)?;
            let got = sum_squares(&t.to_device(&gpu)?)?;
            assert!((got - want).abs() <= 1e-10 * want.max(1.0), "{dtype:?} n={n}: {got} on CUDA, {want} on the CPU");
        }
        // A strided view is read through a contiguous copy.
        let t = input(&[300, 77], 0.2, dtype)?;
        let want = sum_squares(&t)?;
        let got = sum_squares(&t.to_device(&gpu)?.t()?)?;
        assert!((got - want).abs() <= 1e-10 * want, "{dtype:?} transposed: {got} on CUDA, {want} on the CPU");
    }
    Ok(())
}

/// The batched sums (one row of partials per tensor, one copy back) against each tensor's sum
/// on the CPU, for tensors of very different sizes; tensors of mixed dtypes take the path one
/// tensor at a time and give the same sums, and a tensor passed twice gets its sum twice.
#[test]
fn sum_squares_each_matches_cpu() -> Result<()> {
    let gpu = gpu();
    for dtype in [DType::F32, DType::F64] {
        let cpu = [
            input(&[1], 0.1, dtype)?,
            input(&[3_000_000], 0.2, dtype)?,
            input(&[64], 0.3, dtype)?,
            input(&[300, 77], 0.4, dtype)?.t()?,
        ];
        let on_gpu = cpu.iter().map(|t| t.to_device(&gpu)).collect::<Result<Vec<_>>>()?;
        let got = sum_squares_each(&on_gpu)?;
        for (i, (t, got)) in cpu.iter().zip(got).enumerate() {
            let want = sum_squares(t)?;
            assert!(
                (got - want).abs() <= 1e-10 * want.max(1.0),
                "{dtype:?} tensor {i}: {got} on CUDA, {want} on the CPU"
            );
            assert_eq!(got, sum_squares(&on_gpu[i])?, "{dtype:?} tensor {i}: batched and alone differ");
        }
    }
    let mixed = [input(&[1000], 0.5, DType::F32)?.to_device(&gpu)?, input(&[1000], 0.6, DType::F64)?.to_device(&gpu)?];
    let got = sum_squares_each(&mixed)?;
    assert_eq!(got, [sum_squares(&mixed[0])?, sum_squares(&mixed[1])?]);
    // The same tensor twice (its storage is read one launch at a time).
    let twice = sum_squares_each(&[mixed[0].clone(), mixed[0].clone()])?;
    assert_eq!(twice, [got[0], got[0]]);
    Ok(())
}
