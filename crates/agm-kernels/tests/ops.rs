//! Forward and backward of every op against its plain-candle reference.

use agm_kernels::{grad_scale, grad_scale_ref};
use candle_core::{DType, Device, Result, Tensor, Var, D};

fn inputs(dtype: DType) -> Result<(Var, Tensor)> {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::arange(0f32, 12.0, &dev)?.affine(0.37, -1.3)?.reshape((3, 4))?.to_dtype(dtype)?)?;
    let w = Tensor::arange(0f32, 12.0, &dev)?.affine(-0.11, 0.5)?.reshape((3, 4))?.to_dtype(dtype)?;
    Ok((x, w))
}

#[test]
fn forward_is_bit_identical_to_input_even_when_strided() -> Result<()> {
    let (x, _) = inputs(DType::F32)?;
    let xt = x.as_tensor().t()?;
    for s in [0.0, 0.3, 0.5, 2.0] {
        let y = grad_scale(&xt, s)?;
        assert_eq!(y.to_vec2::<f32>()?, xt.to_vec2::<f32>()?);
    }
    Ok(())
}

#[test]
fn backward_is_exactly_scaled_including_zero() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        let (x, w) = inputs(dtype)?;
        // A loss that sends a non-trivial gradient through the op.
        let plain = (x.as_tensor() * &w)?.sqr()?.sum_all()?.backward()?;
        let g_plain = plain.get(&x).unwrap().to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        for s in [0.0, 0.5, 2.0] {
            let y = grad_scale(x.as_tensor(), s)?;
            let grads = (&y * &w)?.sqr()?.sum_all()?.backward()?;
            let g = grads.get(&x).expect("a real gradient, also at s = 0");
            let g = g.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
            for (a, b) in g.iter().zip(&g_plain) {
                // Scaling by 0, 0.5 and 2 is exact in binary floating point.
                assert_eq!(*a, b * s, "dtype {dtype:?}, s = {s}");
            }
        }
    }
    Ok(())
}

#[test]
fn matches_reference_forward_and_backward() -> Result<()> {
    let (x, w) = inputs(DType::F64)?;
    for s in [0.5, 2.0, 0.3] {
        let a = grad_scale(x.as_tensor(), s)?;
        let b = grad_scale_ref(x.as_tensor(), s)?;
        assert_eq!(a.to_vec2::<f64>()?, b.to_vec2::<f64>()?);
        let ga = (&a * &w)?.sum(D::Minus1)?.sqr()?.sum_all()?.backward()?;
        let gb = (&b * &w)?.sum(D::Minus1)?.sqr()?.sum_all()?.backward()?;
        let diff = (ga.get(&x).unwrap() - gb.get(&x).unwrap())?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff <= 1e-12, "s = {s}: max |Δ| = {diff}");
    }
    Ok(())
}

#[test]
fn reference_prunes_at_zero_but_op_does_not() -> Result<()> {
    let (x, w) = inputs(DType::F64)?;
    let g_ref = (grad_scale_ref(x.as_tensor(), 0.0)? * &w)?.sum_all()?.backward()?;
    assert!(g_ref.get(&x).is_none(), "the plain-op reference loses the path at s = 0");
    let g_op = (grad_scale(x.as_tensor(), 0.0)? * &w)?.sum_all()?.backward()?;
    let g = g_op.get(&x).expect("zeros, not None");
    assert_eq!(g.abs()?.max_all()?.to_scalar::<f64>()?, 0.0);
    Ok(())
}

#[test]
fn rejects_non_finite_scales() {
    let (x, _) = inputs(DType::F32).unwrap();
    let err = grad_scale(x.as_tensor(), f64::NAN).unwrap_err().to_string();
    assert!(err.contains("finite"), "{err}");
}
