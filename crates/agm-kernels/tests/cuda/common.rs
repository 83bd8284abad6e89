//! The one comparison every CUDA test makes: an op on CUDA against the same op on the CPU.

use agm_kernels::{Precision, PrecisionGuard};
use candle_core::{DType, Device, Result, Tensor, Var};

/// The CUDA device the tests run on.
pub fn gpu() -> Device {
    Device::new_cuda(0).expect("the CUDA kernel tests need a CUDA device and its driver (see docs/cuda.md)")
}

/// A deterministic, irregular tensor of `shape` on the CPU with no exact zeros, distinct per
/// `phase`.
pub fn input(shape: &[usize], phase: f64, dtype: DType) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let t = Tensor::arange(0f64, n as f64, &Device::Cpu)?.affine(0.731, phase)?.sin()?.affine(1.0, 0.013)?;
    t.reshape(shape)?.to_dtype(dtype)
}

fn values(t: &Tensor) -> Result<Vec<f64>> {
    t.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// Fails unless `got` and `want` agree elementwise within `tol`, relative to `max(1, |want|)`;
/// `got` is the second device's (CUDA's) value in the message.
pub fn assert_close(got: &Tensor, want: &Tensor, tol: f64, what: &str) -> Result<()> {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
    let (g, w) = (values(got)?, values(want)?);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let err = (a - b).abs() / b.abs().max(1.0);
        assert!(err <= tol || (a.is_nan() && b.is_nan()), "{what}: element {i} is {a} on CUDA, {b} on the CPU");
    }
    Ok(())
}

/// The tolerance for a dtype: f64 kernels must agree to rounding, f32 to a few ulps of sums.
pub fn tol(dtype: DType) -> f64 {
    if dtype == DType::F64 {
        1e-10
    } else {
        2e-5
    }
}

/// Runs `op` on `inputs` (CPU tensors, every one trained) on the CPU and on CUDA, and checks
/// that the outputs and the gradients of every input agree within `tol`. The loss is the sum of
/// the output times a fixed irregular weight, so every output element gets its own gradient.
pub fn check_op(what: &str, inputs: &[Tensor], tol: f64, op: impl Fn(&[Tensor]) -> Result<Tensor>) -> Result<()> {
    // TF32 off: the CUDA kernels must compute what the CPU does, to f32 rounding.
    let _strict = PrecisionGuard::new(Precision::Fp32Strict);
    compare_devices(what, inputs, tol, op)
}

/// [`check_op`] under the calling thread's precision, whatever it is.
pub fn compare_devices(
    what: &str,
    inputs: &[Tensor],
    tol: f64,
    op: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<()> {
    compare(what, inputs, tol, (&Device::Cpu, &op), (&gpu(), &op))
}

/// An op and the device it runs on.
pub type Arm<'a> = (&'a Device, &'a dyn Fn(&[Tensor]) -> Result<Tensor>);

/// Runs the `want` arm and the `got` arm on `inputs` and compares their outputs and the
/// gradients of every input.
pub fn compare(what: &str, inputs: &[Tensor], tol: f64, want: Arm<'_>, got: Arm<'_>) -> Result<()> {
    let run = |(device, op): Arm<'_>| -> Result<(Tensor, Vec<Tensor>)> {
        let vars = inputs.iter().map(|t| Var::from_tensor(&t.to_device(device)?)).collect::<Result<Vec<_>>>()?;
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = op(&tensors)?;
        let weight = input(out.dims(), 0.29, out.dtype())?.to_device(device)?;
        let grads = (&out * weight)?.sum_all()?.backward()?;
        let grads = vars.iter().map(|v| grads.get(v).cloned().expect("every input gets a gradient")).collect();
        Ok((out, grads))
    };
    let (cpu_out, cpu_grads) = run(want)?;
    let (gpu_out, gpu_grads) = run(got)?;
    assert!(gpu_out.device().same_device(got.0), "{what}: the output left its device");
    assert_close(&gpu_out, &cpu_out, tol, &format!("{what}: output"))?;
    for (i, (g, c)) in gpu_grads.iter().zip(&cpu_grads).enumerate() {
        assert_close(g, c, tol, &format!("{what}: gradient of input {i}"))?;
    }
    Ok(())
}
