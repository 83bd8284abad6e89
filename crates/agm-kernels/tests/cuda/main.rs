//! agm's CUDA kernels against its CPU kernels: forward values and the gradient of every input,
//! in f32 and f64.
//!
//! Built only with the `cuda` feature and run on a machine with a CUDA device; without one the
//! first test fails saying so. The GPU machines have no Rust, so the binary is built elsewhere
//! (`cargo test --features cuda -p agm-kernels --test cuda --no-run`, docs/cuda.md) and run there
//! by `scripts/gpu-bench.sh`.
#![cfg(feature = "cuda")]

mod batch_norm;
mod common;
mod conv;
mod dropout;
mod linear;
mod loss;
mod noise;
mod norm;
mod pool;
mod reduce;
mod relu;
mod sgd;
