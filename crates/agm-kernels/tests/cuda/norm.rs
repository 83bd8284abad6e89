//! Filled in with the CUDA tests of src/norm.rs.
