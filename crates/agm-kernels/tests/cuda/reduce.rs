//! The f64 reductions on CUDA (candle ops, one read-back for a Gram matrix) against the CPU's
//! fused passes: the same sums up to their order.

use agm_kernels::{dot, gram, std_unbiased};
use candle_core::{DType, Result};

use crate::common::{gpu, input};

#[test]
fn reductions_agree_with_the_cpu() -> Result<()> {
    let close = |a: f64, b: f64, what: &str| {
        assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{what}: {a} on CUDA, {b} on the CPU")
    };
    for dtype in [DType::F32, DType::F64] {
        let ts = [
            input(&[7, 129, 131], 0.4, dtype)?,
            input(&[7, 129, 131], 1.3, dtype)?,
            input(&[7, 129, 131], 2.9, dtype)?,
        ];
        let on_gpu = ts.iter().map(|t| t.to_device(&gpu())).collect::<Result<Vec<_>>>()?;
        close(dot(&on_gpu[0], &on_gpu[1])?, dot(&ts[0], &ts[1])?, "dot");
        close(std_unbiased(&on_gpu[2])?, std_unbiased(&ts[2])?, "std_unbiased");
        for (i, (g, c)) in gram(&on_gpu)?.iter().zip(gram(&ts)?).enumerate() {
            close(*g, c, &format!("gram entry {i}"));
        }
    }
    Ok(())
}
