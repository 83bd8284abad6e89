//! ReLU and relu(a + b) on CUDA against the CPU.

use agm_kernels::{add_relu, relu};
use candle_core::{DType, Result};

use crate::common::{check_op, input, tol};

#[test]
fn relu_and_add_relu() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        let (a, b) = (input(&[3, 5, 7, 11], 0.1, dtype)?, input(&[3, 5, 7, 11], 1.7, dtype)?);
        check_op("relu", std::slice::from_ref(&a), 0.0, |t| relu(&t[0]))?;
        check_op("add_relu", &[a, b], tol(dtype), |t| add_relu(&t[0], &t[1]))?;
    }
    Ok(())
}
