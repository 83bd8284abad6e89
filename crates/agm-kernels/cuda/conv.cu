// Filled in by the CUDA kernels of src/conv.rs.
#include "common.cuh"
