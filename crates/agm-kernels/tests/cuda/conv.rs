//! Filled in with the CUDA tests of src/conv.rs.
