//! `linear` (cuBLAS products, bias add, bias gradient) and `grad_scale` on CUDA against the CPU.
//! `linear` takes only 2-D inputs, so there is no 3-D case.

use agm_kernels::{grad_scale, linear};
use candle_core::{DType, Device, Result, Tensor, Var};

use crate::common::{assert_close, check_op, gpu, input, tol};

#[test]
fn linear_with_and_without_bias() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        // (batch, in, out): sizes that fill no block or tile exactly; the second has more
        // columns than one bias-gradient block and more rows than its threads per column.
        for (n, f, o) in [(37, 45, 29), (130, 97, 70), (1, 3, 1)] {
            let what = format!("linear {dtype:?} x [{n}, {f}] w [{o}, {f}]");
            let (x, w, b) = (input(&[n, f], 0.1, dtype)?, input(&[o, f], 1.3, dtype)?, input(&[o], 2.9, dtype)?);
            check_op(&format!("{what} + b"), &[x.clone(), w.clone(), b], tol(dtype), |t| {
                linear(&t[0], &t[1], Some(&t[2]))
            })?;
            check_op(&what, &[x, w], tol(dtype), |t| linear(&t[0], &t[1], None))?;
        }
    }
    Ok(())
}

#[test]
fn linear_without_an_input_gradient() -> Result<()> {
    // Only the weight is tracked: the input-gradient product is skipped.
    let _strict = agm_kernels::PrecisionGuard::new(agm_kernels::Precision::Fp32Strict);
    let gpu = gpu();
    let x = input(&[9, 5], 0.3, DType::F32)?;
    let w = Var::from_tensor(&input(&[4, 5], 0.8, DType::F32)?.to_device(&gpu)?)?;
    let grads = linear(&x.to_device(&gpu)?, w.as_tensor(), None)?.sum_all()?.backward()?;
    let want = x.sum(0)?.unsqueeze(0)?.broadcast_as((4, 5))?;
    assert_close(grads.get(&w).expect("the weight gets a gradient"), &want, tol(DType::F32), "weight gradient")
}

#[test]
fn grad_scale_copies_forward_and_scales_backward() -> Result<()> {
    let gpu = gpu();
    for dtype in [DType::F32, DType::F64] {
        let x = input(&[3, 5, 7], 0.5, dtype)?;
        check_op("grad_scale", std::slice::from_ref(&x), tol(dtype), |t| grad_scale(&t[0], 0.37))?;
        for scale in [0.37, -2.0, 0.0] {
            let what = format!("grad_scale {dtype:?} scale {scale}");
            let v = Var::from_tensor(&x.to_device(&gpu)?)?;
            let y = grad_scale(v.as_tensor(), scale)?;
            assert!(y.device().is_cuda(), "{what}: the output left the GPU");
            assert_eq!(to_f64(&y)?, to_f64(&x)?, "{what}: the forward must be an exact copy");
            let up = input(&[3, 5, 7], 1.9, dtype)?;
            let grads = (&y * up.to_device(&gpu)?)?.sum_all()?.backward()?;
            // A scale of 0 still gives a (zero) gradient, not a pruned path.
            let g = grads.get(&v).expect("the input gets a gradient even at scale 0");
            assert_close(g, &up.affine(scale, 0.0)?, tol(dtype), &what)?;
            if scale == 0.0 {
                assert!(to_f64(g)?.iter().all(|&e| e == 0.0), "{what}: the gradient must be zero");
            }
        }
        // A strided input comes out as a contiguous copy of the same values.
        let xt = x.to_device(&gpu)?.transpose(0, 2)?;
        let y = grad_scale(&xt, 0.5)?;
        assert!(y.is_contiguous());
        assert_eq!(to_f64(&y)?, to_f64(&xt)?, "grad_scale {dtype:?}: transposed forward");
    }
    Ok(())
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    t.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// bf16 linear (cuBLAS's bf16 product) against the CPU's emulation, and batched bf16 `matmul`:
/// equal up to a bf16 rounding step; TF32 stays within TF32's rounding.
#[test]
fn bf16_and_tf32_products_match_the_cpu_within_their_rounding() -> Result<()> {
    use agm_kernels::{matmul, Precision, PrecisionGuard};
    for (precision, tol) in [(Precision::Bf16, 2e-2), (Precision::Fp32, 1e-2)] {
        let _p = PrecisionGuard::new(precision);
        let (x, w, b) =
            (input(&[37, 45], 0.1, DType::F32)?, input(&[29, 45], 1.3, DType::F32)?, input(&[29], 2.9, DType::F32)?);
        crate::common::compare_devices(&format!("{precision} linear"), &[x, w, b], tol, |t| {
            linear(&t[0], &t[1], Some(&t[2]))
        })?;
        let (a, c) = (input(&[2, 3, 17, 24], 0.4, DType::F32)?, input(&[2, 3, 24, 11], 0.8, DType::F32)?);
        crate::common::compare_devices(&format!("{precision} matmul"), &[a, c], tol, |t| matmul(&t[0], &t[1]))?;
    }
    Ok(())
}
