//! conv2d on CUDA (cuDNN, and the im2col path without it) against the fused CPU op and each
//! other, in strict f32, TF32 and bf16.
use agm_kernels::{conv2d, conv2d_im2col, Conv2dSpec, Precision, PrecisionGuard};
use candle_core::{DType, Device, Result, Tensor, Var};

use crate::common::{check_op, compare, compare_devices, gpu, input, tol};

/// `(input [B, C, H, W], output channels, kernel, stride, padding)`: strides 1 and 2, padding
/// 0 to 3, kernels 1, 3 and 7, odd sizes, batches above one, and the 7×7/s2/p3 stem on 37×29
/// and on 37×28, whose two stride remainders (36 mod 2, 27 mod 2) differ, as do those of
/// 10×7 with 3×3/s2/p1 and 8×13 with 3×3/s2/p2.
const CASES: [([usize; 4], usize, usize, usize, usize); 9] = [
    ([1, 1, 37, 29], 4, 7, 2, 3),
    ([1, 1, 37, 28], 3, 7, 2, 3),
    ([2, 3, 9, 11], 5, 3, 1, 1),
    ([3, 2, 10, 7], 4, 3, 2, 1),
    ([2, 5, 7, 9], 3, 1, 1, 0),
    ([2, 4, 9, 6], 6, 1, 2, 0),
    ([1, 3, 8, 13], 2, 3, 2, 2),
    ([2, 2, 15, 12], 3, 7, 1, 3),
    ([3, 1, 6, 5], 2, 3, 1, 0),
];

#[test]
fn conv2d_matches_the_cpu() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        for (i, (shape, out_channels, k, s, p)) in CASES.into_iter().enumerate() {
            let x = input(&shape, 0.1 + i as f64, dtype)?;
            let w = input(&[out_channels, shape[1], k, k], 2.3 + i as f64, dtype)?;
            let what = format!("conv2d {shape:?} ⊛ {out_channels}×{k}×{k} stride {s} padding {p} {dtype:?}");
            check_op(&what, &[x, w], tol(dtype), |t| conv2d(&t[0], &t[1], Conv2dSpec::new(s, p)))?;
        }
    }
    Ok(())
}

/// An input candle does not track (a raw image) gets no gradient, and the kernel's still matches.
#[test]
fn conv2d_skips_the_gradient_of_an_untracked_input() -> Result<()> {
    let _strict = PrecisionGuard::new(Precision::Fp32Strict);
    let spec = Conv2dSpec::new(2, 3);
    let x = input(&[2, 1, 37, 29], 0.4, DType::F64)?;
    let w = input(&[3, 1, 7, 7], 1.9, DType::F64)?;
    let run = |device: &Device| -> Result<(Tensor, Tensor)> {
        let w = Var::from_tensor(&w.to_device(device)?)?;
        let y = conv2d(&x.to_device(device)?, w.as_tensor(), spec)?;
        let grads = y.sqr()?.sum_all()?.backward()?;
        Ok((y, grads.get(&w).expect("the kernel gets a gradient").clone()))
    };
    let (cpu_y, cpu_dw) = run(&Device::Cpu)?;
    let (gpu_y, gpu_dw) = run(&gpu())?;
    crate::common::assert_close(&gpu_y, &cpu_y, tol(DType::F64), "untracked conv2d: output")?;
    crate::common::assert_close(&gpu_dw, &cpu_dw, tol(DType::F64), "untracked conv2d: kernel gradient")?;
    Ok(())
}

/// The GPU machines have cuDNN (PyTorch's wheels): without it the tests below would compare the
/// im2col path with itself.
#[test]
fn cudnn_is_found() {
    if let Err(why) = agm_kernels::cudnn_available() {
        panic!("cuDNN is not used: {why}");
    }
}

/// cuDNN's forward, backward-data and backward-filter against the im2col composition on the same
/// GPU, TF32 off, f32 and f64.
#[test]
fn cudnn_matches_the_im2col_path() -> Result<()> {
    let _strict = PrecisionGuard::new(Precision::Fp32Strict);
    let gpu = gpu();
    for dtype in [DType::F32, DType::F64] {
        for (i, (shape, out_channels, k, s, p)) in CASES.into_iter().enumerate() {
            let x = input(&shape, 0.7 + i as f64, dtype)?;
            let w = input(&[out_channels, shape[1], k, k], 1.3 + i as f64, dtype)?;
            let spec = Conv2dSpec::new(s, p);
            let what = format!("cuDNN vs im2col {shape:?} ⊛ {out_channels}×{k}×{k} s{s} p{p} {dtype:?}");
            let im2col = |t: &[Tensor]| conv2d_im2col(&t[0], &t[1], spec);
            let cudnn = |t: &[Tensor]| conv2d(&t[0], &t[1], spec);
            compare(&what, &[x, w], tol(dtype), (&gpu, &im2col), (&gpu, &cudnn))?;
        }
    }
    Ok(())
}

/// Every case at `precision` against the CPU (which emulates bf16 by rounding around its f32 op),
/// within `tol`; the result comes back f32 either way.
fn every_case_at(precision: Precision, tol: f64) -> Result<()> {
    let _p = PrecisionGuard::new(precision);
    for (i, (shape, out_channels, k, s, p)) in CASES.into_iter().enumerate() {
        let x = input(&shape, 0.2 + i as f64, DType::F32)?;
        let w = input(&[out_channels, shape[1], k, k], 3.1 + i as f64, DType::F32)?;
        let what = format!("{precision} conv2d {shape:?} ⊛ {out_channels}×{k}×{k}");
        compare_devices(&what, &[x, w], tol, |t| {
            let y = conv2d(&t[0], &t[1], Conv2dSpec::new(s, p))?;
            assert_eq!(y.dtype(), DType::F32, "convolutions give f32 tensors back");
            Ok(y)
        })?;
    }
    Ok(())
}

/// With TF32 allowed (the default precision) the GPU's convolution stays within TF32's rounding
/// of the CPU's f32 result.
#[test]
fn tf32_convolutions_stay_within_tf32_rounding() -> Result<()> {
    every_case_at(Precision::Fp32, 1e-2)
}

/// bf16 convolutions (cuDNN on bf16 tensors, f32 accumulation) against the CPU's emulation
/// (operands and result rounded to bf16 around the f32 op): equal up to a bf16 rounding step.
#[test]
fn bf16_convolutions_match_the_cpu_emulation() -> Result<()> {
    every_case_at(Precision::Bf16, 2e-2)
}
