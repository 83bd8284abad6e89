//! Filled in with the CUDA tests of src/linear.rs.
