// Filled in by the CUDA kernels of src/loss.rs.
#include "common.cuh"
