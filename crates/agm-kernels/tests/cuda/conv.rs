//! conv2d on CUDA (im2col, cuBLAS GEMM, col2im gather) against the fused CPU op.
use agm_kernels::{conv2d, Conv2dSpec};
use candle_core::{DType, Device, Result, Tensor, Var};

use crate::common::{check_op, gpu, input, tol};

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
