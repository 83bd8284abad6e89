//! Filled in with the CUDA tests of src/pool.rs.
