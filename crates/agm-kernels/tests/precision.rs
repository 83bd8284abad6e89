//! `Precision` on the CPU: `fp32` and `fp32-strict` are the same exact f32 arithmetic, and `bf16`
//! rounds the operands and results of products and convolutions to bf16 while weights and
//! gradients stay f32.

use agm_kernels::{conv2d, linear, Conv2dSpec, Precision, PrecisionGuard};
use candle_core::{DType, Device, Result, Tensor, Var};

fn input(shape: &[usize], phase: f64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    Tensor::arange(0f64, n as f64, &Device::Cpu)?.affine(0.731, phase)?.sin()?.reshape(shape)?.to_dtype(DType::F32)
}

fn round_bf16(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::BF16)?.to_dtype(DType::F32)
}

fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// `(output, gradient of every input)` of `op` at this thread's precision.
fn run(inputs: &[Tensor], op: &dyn Fn(&[Tensor]) -> Result<Tensor>) -> Result<(Tensor, Vec<Tensor>)> {
    let vars = inputs.iter().map(Var::from_tensor).collect::<Result<Vec<_>>>()?;
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = op(&tensors)?;
    let weight = input(out.dims(), 0.29)?;
    let grads = (&out * weight)?.sum_all()?.backward()?;
    Ok((out, vars.iter().map(|v| grads.get(v).expect("every input gets a gradient").clone()).collect()))
}

type Op = Box<dyn Fn(&[Tensor]) -> Result<Tensor>>;

fn cases() -> Result<Vec<(&'static str, Vec<Tensor>, Op)>> {
    Ok(vec![
        (
            "conv2d",
            vec![input(&[2, 3, 9, 8], 0.1)?, input(&[4, 3, 3, 3], 1.7)?],
            Box::new(|t: &[Tensor]| conv2d(&t[0], &t[1], Conv2dSpec::new(2, 1))),
        ),
        (
            "linear",
            vec![input(&[7, 12], 0.4)?, input(&[5, 12], 2.2)?, input(&[5], 0.9)?],
            Box::new(|t: &[Tensor]| linear(&t[0], &t[1], Some(&t[2]))),
        ),
    ])
}

#[test]
fn fp32_and_fp32_strict_are_the_same_arithmetic_on_the_cpu() -> Result<()> {
    for (what, inputs, op) in cases()? {
        let (y, g) = {
            let _p = PrecisionGuard::new(Precision::Fp32);
            run(&inputs, &op)?
        };
        let _p = PrecisionGuard::new(Precision::Fp32Strict);
        let (ys, gs) = run(&inputs, &op)?;
        assert_eq!(values(&y)?, values(&ys)?, "{what}: output");
        for (a, b) in g.iter().zip(&gs) {
            assert_eq!(values(a)?, values(b)?, "{what}: gradient");
        }
    }
    Ok(())
}

/// bf16 is the f32 op on bf16-rounded operands with its result rounded; gradients come back f32.
#[test]
fn bf16_rounds_operands_and_results_and_keeps_f32_gradients() -> Result<()> {
    for (what, inputs, op) in cases()? {
        let (want, _) = {
            let _p = PrecisionGuard::new(Precision::Fp32Strict);
            let rounded = inputs.iter().map(round_bf16).collect::<Result<Vec<_>>>()?;
            run(&rounded, &|t| round_bf16(&op(t)?))?
        };
        let (exact, _) = run(&inputs, &op)?;
        let _p = PrecisionGuard::new(Precision::Bf16);
        let (got, grads) = run(&inputs, &op)?;
        assert_eq!(got.dtype(), DType::F32, "{what}: the result is f32");
        assert_eq!(values(&got)?, values(&want)?, "{what}: bf16 result");
        assert_ne!(values(&got)?, values(&exact)?, "{what}: bf16 must differ from f32 on these inputs");
        assert_eq!(values(&got)?, values(&round_bf16(&got)?)?, "{what}: every value is a bf16 value");
        for (g, x) in grads.iter().zip(&inputs) {
            assert_eq!((g.dtype(), g.dims()), (DType::F32, x.dims()), "{what}: gradient dtype and shape");
            assert!(values(g)?.iter().all(|v| v.is_finite()), "{what}: finite gradient");
        }
    }
    Ok(())
}

/// A thread's precision does not reach a run on another thread.
#[test]
fn precision_is_per_thread() -> Result<()> {
    let _p = PrecisionGuard::new(Precision::Bf16);
    let other = std::thread::spawn(|| -> Result<Vec<f32>> {
        let (x, w) = (input(&[3, 4], 0.2)?, input(&[2, 4], 0.6)?);
        values(&linear(&x, &w, None)?)
    })
    .join()
    .expect("thread")?;
    let _exact = PrecisionGuard::new(Precision::Fp32);
    let (x, w) = (input(&[3, 4], 0.2)?, input(&[2, 4], 0.6)?);
    assert_eq!(other, values(&linear(&x, &w, None)?)?);
    Ok(())
}
