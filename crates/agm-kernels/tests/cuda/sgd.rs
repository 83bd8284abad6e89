//! Filled in with the CUDA tests of src/sgd.rs.
