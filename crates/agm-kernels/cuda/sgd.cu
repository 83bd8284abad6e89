// Filled in by the CUDA kernels of src/sgd.rs.
#include "common.cuh"
