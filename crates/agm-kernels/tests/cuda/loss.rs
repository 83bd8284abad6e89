//! Filled in with the CUDA tests of src/loss.rs.
