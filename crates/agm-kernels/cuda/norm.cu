// Filled in by the CUDA kernels of src/norm.rs.
#include "common.cuh"
