//! `linear` against `x.matmul(wᵀ) + b` in candle ops, forward and backward.

use agm_kernels::{linear, linear_ref};
use candle_core::{DType, Device, Result, Tensor, Var};

fn var(shape: (usize, usize), phase: f64) -> Result<Var> {
    let n = shape.0 * shape.1;
    let t = Tensor::arange(0f64, n as f64, &Device::Cpu)?.affine(0.377, phase)?.sin()?;
    Var::from_tensor(&t.reshape(shape)?)
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    (a - b)?.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()
}

/// Both ways the forward runs (transposing the weight for many rows, or the input and output
/// for few rows), across more than one transpose tile.
#[test]
fn linear_matches_candle_ops_with_and_without_bias() -> Result<()> {
    for (n, f, o) in [(7, 5, 3), (2, 9, 11), (70, 33, 45), (3, 70, 66)] {
        let (x, w) = (var((n, f), 0.1)?, var((o, f), 1.3)?);
        let b = Var::from_tensor(&var((1, o), 0.7)?.as_tensor().flatten_all()?)?;
        let up = var((n, o), 2.2)?.as_tensor().detach();
        for bias in [None, Some(b.as_tensor())] {
            let (y, y_ref) =
                (linear(x.as_tensor(), w.as_tensor(), bias)?, linear_ref(x.as_tensor(), w.as_tensor(), bias)?);
            assert!(max_diff(&y, &y_ref)? < 1e-12, "output, {n}×{f} → {o}");
            let (g, g_ref) = ((y * &up)?.sum_all()?.backward()?, (y_ref * &up)?.sum_all()?.backward()?);
            for v in [&x, &w] {
                assert!(max_diff(g.get(v).unwrap(), g_ref.get(v).unwrap())? < 1e-12, "gradient, {n}×{f} → {o}");
            }
            if bias.is_some() {
                assert!(max_diff(g.get(&b).unwrap(), g_ref.get(&b).unwrap())? < 1e-12);
            }
        }
    }
    let (x, w) = (var((7, 5), 0.1)?, var((3, 5), 1.3)?);
    // An input candle does not track gets no gradient; the weight still does.
    let y = linear(&x.as_tensor().detach(), w.as_tensor(), None)?;
    let g = y.sum_all()?.backward()?;
    assert!(g.get(&w).is_some());
    Ok(())
}

#[test]
fn linear_rejects_mismatched_shapes() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::zeros((4, 5), DType::F32, &dev)?;
    let err = |r: Result<Tensor>| r.unwrap_err().to_string();
    assert!(err(linear(&x, &Tensor::zeros((3, 6), DType::F32, &dev)?, None)).contains("features"));
    assert!(err(linear(&x, &Tensor::zeros((3, 5), DType::F32, &dev)?, Some(&Tensor::zeros(4, DType::F32, &dev)?)))
        .contains("bias"));
    Ok(())
}
