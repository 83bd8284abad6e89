//! Filled in with the CUDA tests of src/batch_norm.rs.
