// Filled in by the CUDA kernels of src/pool.rs.
#include "common.cuh"
