//! ReLU, the residual `relu(a + b)` and `relu(batch_norm(x))` against candle-op references.

use agm_kernels::{add_relu, add_relu_ref, batch_norm, batch_norm_ref, batch_norm_relu, relu, relu_ref};
use candle_core::{DType, Device, Result, Tensor, Var};

fn values(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// Inputs with no exact zeros (where the two ReLU gradients differ by convention).
fn var(shape: (usize, usize, usize, usize), phase: f64, dtype: DType) -> Result<Var> {
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let t = Tensor::arange(0f64, n as f64, &Device::Cpu)?.affine(0.731, phase)?.sin()?.affine(1.0, 0.013)?;
    Var::from_tensor(&t.reshape(shape)?.to_dtype(dtype)?)
}

fn upstream(shape: &[usize], dtype: DType) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    Tensor::arange(0f64, n as f64, &Device::Cpu)?.affine(0.37, 0.2)?.cos()?.reshape(shape)?.to_dtype(dtype)
}

#[test]
fn relu_and_add_relu_match_candle_forward_and_backward() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        let (a, b) = (var((2, 3, 4, 5), 0.1, dtype)?, var((2, 3, 4, 5), 1.7, dtype)?);
        let w = upstream(a.dims(), dtype)?;
        let (y, y_ref) = (relu(a.as_tensor())?, relu_ref(a.as_tensor())?);
        assert_eq!(values(&y)?, values(&y_ref)?);
        let (g, g_ref) = ((y * &w)?.sum_all()?.backward()?, (y_ref * &w)?.sum_all()?.backward()?);
        assert_eq!(values(g.get(&a).unwrap())?, values(g_ref.get(&a).unwrap())?);

        let (y, y_ref) = (add_relu(a.as_tensor(), b.as_tensor())?, add_relu_ref(a.as_tensor(), b.as_tensor())?);
        assert_eq!(values(&y)?, values(&y_ref)?);
        let (g, g_ref) = ((y * &w)?.sum_all()?.backward()?, (y_ref * &w)?.sum_all()?.backward()?);
        for v in [&a, &b] {
            assert_eq!(values(g.get(v).unwrap())?, values(g_ref.get(v).unwrap())?);
        }
    }
    Ok(())
}

#[test]
fn relu_gradient_at_zero_is_zero_as_in_pytorch() -> Result<()> {
    let x = Var::new(&[-1.0f32, 0.0, 2.0], &Device::Cpu)?;
    let g = relu(x.as_tensor())?.sum_all()?.backward()?;
    assert_eq!(g.get(&x).unwrap().to_vec1::<f32>()?, [0.0, 0.0, 1.0]);
    Ok(())
}

#[test]
fn add_relu_rejects_mismatched_shapes() -> Result<()> {
    let dev = Device::Cpu;
    let err = add_relu(&Tensor::zeros((2, 3), DType::F32, &dev)?, &Tensor::zeros((3, 2), DType::F32, &dev)?)
        .unwrap_err()
        .to_string();
    assert!(err.contains("differ"), "{err}");
    Ok(())
}

#[test]
fn batch_norm_relu_is_relu_of_batch_norm_in_both_modes() -> Result<()> {
    let dev = Device::Cpu;
    let dtype = DType::F64;
    let x = var((4, 3, 5, 5), 0.4, dtype)?;
    let weight = Var::from_tensor(&Tensor::new(&[1.2f64, 0.7, -0.9], &dev)?)?;
    let bias = Var::from_tensor(&Tensor::new(&[0.1f64, -0.2, 0.05], &dev)?)?;
    let running = (Tensor::new(&[0.1f64, -0.1, 0.2], &dev)?, Tensor::new(&[0.9f64, 1.3, 0.6], &dev)?);
    let w = upstream(x.dims(), dtype)?;
    for mode in [None, Some((&running.0, &running.1))] {
        let (fused, stats) = batch_norm_relu(x.as_tensor(), weight.as_tensor(), bias.as_tensor(), mode, 1e-5)?;
        let (plain, stats_ref) = batch_norm_ref(x.as_tensor(), weight.as_tensor(), bias.as_tensor(), mode, 1e-5)?;
        let plain = plain.relu()?;
        let diff = (&fused - &plain)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-12, "forward differs by {diff}");
        assert_eq!(stats.is_some(), stats_ref.is_some());
        let (g, g_ref) = ((fused * &w)?.sum_all()?.backward()?, (plain * &w)?.sum_all()?.backward()?);
        for v in [&x, &weight, &bias] {
            let d = (g.get(v).unwrap() - g_ref.get(v).unwrap())?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(d < 1e-10, "gradient differs by {d}");
        }
        // Without the ReLU the same op is plain batch norm.
        let (unfused, _) = batch_norm(x.as_tensor(), weight.as_tensor(), bias.as_tensor(), mode, 1e-5)?;
        assert!(values(&unfused)?.iter().any(|v| *v < 0.0));
    }
    Ok(())
}
