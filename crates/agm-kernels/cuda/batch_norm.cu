// Filled in by the CUDA kernels of src/batch_norm.rs.
#include "common.cuh"
