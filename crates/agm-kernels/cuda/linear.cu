// The linear layer's bias add and bias gradient (the products themselves are cuBLAS calls).
#include "common.cuh"

// y[r, c] += b[c] over a row-major [rows, cols] y: the bias after the product, one rounding per
// element as on the CPU.
template <typename T>
__device__ void add_row_bias(size_t n, size_t cols, T* y, const T* b) {
  AGM_FOR_EACH(i, n) { y[i] = agm_add(y[i], b[i % cols]); }
}

// Column sums of a row-major [rows, cols] g. A block of AGM_BLOCK threads covers 32 adjacent
// columns (coalesced reads) with AGM_BLOCK / 32 threads per column, each summing every
// (AGM_BLOCK / 32)-th row; a fixed-order tree then joins them, so the result is deterministic.
template <typename T>
__device__ void column_sums(size_t rows, size_t cols, const T* g, T* sums) {
  constexpr int lanes = AGM_BLOCK / 32;
  __shared__ T partial[lanes][32];
  const int tx = threadIdx.x & 31, lane = threadIdx.x >> 5;
  const size_t col = blockIdx.x * (size_t)32 + tx;
  T acc = T(0);
  if (col < cols) {
    for (size_t r = lane; r < rows; r += lanes) acc += g[r * cols + col];
  }
  partial[lane][tx] = acc;
  __syncthreads();
  for (int half = lanes / 2; half > 0; half >>= 1) {
    if (lane < half) partial[lane][tx] += partial[lane + half][tx];
    __syncthreads();
  }
  if (lane == 0 && col < cols) sums[col] = partial[0][tx];
}

#define LINEAR_KERNELS(T, S)                                                                     \
  extern "C" __global__ void add_row_bias_##S(size_t n, size_t cols, T* y, const T* b) {         \
    add_row_bias(n, cols, y, b);                                                                 \
  }                                                                                              \
  extern "C" __global__ void column_sums_##S(size_t rows, size_t cols, const T* g, T* sums) {    \
    column_sums(rows, cols, g, sums);                                                            \
  }

LINEAR_KERNELS(float, f32)
LINEAR_KERNELS(double, f64)
