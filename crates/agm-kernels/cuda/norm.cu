// Layer norm and softmax over the last dimension (src/norm.rs). The row kernels run one block of
// AGM_BLOCK threads per row (blockIdx.x = row); each thread strides over the row, and the row's
// sums and maximum meet in shared-memory trees. Sums accumulate in T, as the CPU kernels do.
#include "common.cuh"

// The mean and 1 / sqrt(var + eps) of one row of length d: two passes and the biased variance,
// as the CPU's `moments`. Every thread of the block must call it; all get the result.
template <typename T>
__device__ void row_moments(const T* row, size_t d, T eps, T* scratch, T& mean, T& rstd) {
  const T n = T(double(d));
  T sum = T(0);
  for (size_t j = threadIdx.x; j < d; j += blockDim.x) sum += row[j];
  mean = agm_block_sum(sum, scratch) / n;
  T squares = T(0);
  for (size_t j = threadIdx.x; j < d; j += blockDim.x) {
    const T centred = row[j] - mean;
    squares += centred * centred;
  }
  const T var = agm_block_sum(squares, scratch) / n;
  rstd = T(1) / sqrt(var + eps);
}

// y = (x - mean) * rstd * gamma + beta, row by row.
template <typename T>
__device__ void layer_norm_fwd(size_t rows, size_t d, T eps, const T* x, const T* gamma, const T* beta, T* y) {
  __shared__ T scratch[32];
  const size_t row = blockIdx.x;
  if (row >= rows) return;  // the whole block leaves together
  const T* xr = x + row * d;
  T* yr = y + row * d;
  T mean, rstd;
  row_moments(xr, d, eps, scratch, mean, rstd);
  for (size_t j = threadIdx.x; j < d; j += blockDim.x) yr[j] = (xr[j] - mean) * rstd * gamma[j] + beta[j];
}

// dx of one row, rstd * (g * gamma - mean(g * gamma) - xhat * mean(g * gamma * xhat)), into the
// first rows * d elements of the packed output; the row's mean and rstd go to stats[2 * row] and
// stats[2 * row + 1] for the dgamma / dbeta pass.
template <typename T>
__device__ void layer_norm_bwd_rows(size_t rows, size_t d, T eps, const T* x, const T* gamma, const T* grad, T* dx,
                                    T* stats) {
  __shared__ T scratch[32];
  const size_t row = blockIdx.x;
  if (row >= rows) return;
  const T* xr = x + row * d;
  const T* gr = grad + row * d;
  T* dxr = dx + row * d;
  T mean, rstd;
  row_moments(xr, d, eps, scratch, mean, rstd);
  T a = T(0), b = T(0);
  for (size_t j = threadIdx.x; j < d; j += blockDim.x) {
    const T xhat = (xr[j] - mean) * rstd;
    const T gw = gr[j] * gamma[j];
    a += gw;
    b += gw * xhat;
  }
  // The CPU rounds 1 / d to T once and multiplies by it.
  const T inv_d = T(1.0 / double(d));
  a = agm_block_sum(a, scratch) * inv_d;
  b = agm_block_sum(b, scratch) * inv_d;
  for (size_t j = threadIdx.x; j < d; j += blockDim.x) {
    const T xhat = (xr[j] - mean) * rstd;
    dxr[j] = rstd * (gr[j] * gamma[j] - a - xhat * b);
  }
  if (threadIdx.x == 0) {
    stats[2 * row] = mean;
    stats[2 * row + 1] = rstd;
  }
}

// Per chunk of rows_per_chunk rows (blockIdx.y strides over the chunks) and per column (one
// thread each), the chunk's sums of g * xhat and of g, in row order: partial[c * 2d + j] and
// partial[c * 2d + d + j]. The chunks are the CPU's blocks, so the sums meet in the CPU's order.
// Every chunk is written, an empty one (rows = 0) as zeros.
template <typename T>
__device__ void layer_norm_bwd_params_partial(size_t rows, size_t d, size_t rows_per_chunk, size_t chunks, const T* x,
                                              const T* grad, const T* stats, T* partial) {
  const size_t j = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (j >= d) return;
  for (size_t c = blockIdx.y; c < chunks; c += gridDim.y) {
    const size_t first = c * rows_per_chunk;
    const size_t end = first + rows_per_chunk < rows ? first + rows_per_chunk : rows;
    T dgamma = T(0), dbeta = T(0);
    for (size_t r = first; r < end; ++r) {
      const T g = grad[r * d + j];
      const T xhat = (x[r * d + j] - stats[2 * r]) * stats[2 * r + 1];
      dgamma += g * xhat;
      dbeta += g;
    }
    partial[c * 2 * d + j] = dgamma;
    partial[c * 2 * d + d + j] = dbeta;
  }
}

// dgamma and dbeta (2d values after the rows * d of dx in `out`): the chunks' partial sums added
// in chunk order.
template <typename T>
__device__ void layer_norm_bwd_params_sum(size_t rows, size_t d, size_t chunks, const T* partial, T* out) {
  T* params = out + rows * d;
  AGM_FOR_EACH(i, 2 * d) {
    T sum = T(0);
    for (size_t c = 0; c < chunks; ++c) sum += partial[c * 2 * d + i];
    params[i] = sum;
  }
}

// y = exp(x - max) / sum, row by row, as exp(x - max) times the rounded 1 / sum (the CPU's order).
template <typename T>
__device__ void softmax_fwd(size_t rows, size_t d, const T* x, T* y) {
  __shared__ T scratch[32];
  const size_t row = blockIdx.x;
  if (row >= rows) return;
  const T* xr = x + row * d;
  T* yr = y + row * d;
  T row_max, sum;
  agm_softmax_row(xr, d, yr, scratch, row_max, sum);
}

// dx = y * (g - sum(g * y)), row by row.
template <typename T>
__device__ void softmax_bwd(size_t rows, size_t d, const T* y, const T* grad, T* dx) {
  __shared__ T scratch[32];
  const size_t row = blockIdx.x;
  if (row >= rows) return;
  const T* yr = y + row * d;
  const T* gr = grad + row * d;
  T* dxr = dx + row * d;
  T dot = T(0);
  for (size_t j = threadIdx.x; j < d; j += blockDim.x) dot += yr[j] * gr[j];
  dot = agm_block_sum(dot, scratch);
  for (size_t j = threadIdx.x; j < d; j += blockDim.x) dxr[j] = yr[j] * (gr[j] - dot);
}

#define NORM_KERNELS(T, S)                                                                                     \
  extern "C" __global__ void layer_norm_fwd_##S(size_t rows, size_t d, T eps, const T* x, const T* gamma,      \
                                                const T* beta, T* y) {                                         \
    layer_norm_fwd(rows, d, eps, x, gamma, beta, y);                                                           \
  }                                                                                                            \
  extern "C" __global__ void layer_norm_bwd_rows_##S(size_t rows, size_t d, T eps, const T* x, const T* gamma, \
                                                     const T* grad, T* dx, T* stats) {                         \
    layer_norm_bwd_rows(rows, d, eps, x, gamma, grad, dx, stats);                                              \
  }                                                                                                            \
  extern "C" __global__ void layer_norm_bwd_params_partial_##S(size_t rows, size_t d, size_t rows_per_chunk,   \
                                                               size_t chunks, const T* x, const T* grad,       \
                                                               const T* stats, T* partial) {                   \
    layer_norm_bwd_params_partial(rows, d, rows_per_chunk, chunks, x, grad, stats, partial);                  \
  }                                                                                                            \
  extern "C" __global__ void layer_norm_bwd_params_sum_##S(size_t rows, size_t d, size_t chunks,               \
                                                           const T* partial, T* out) {                         \
    layer_norm_bwd_params_sum(rows, d, chunks, partial, out);                                                  \
  }                                                                                                            \
  extern "C" __global__ void softmax_fwd_##S(size_t rows, size_t d, const T* x, T* y) {                        \
    softmax_fwd(rows, d, x, y);                                                                                \
  }                                                                                                            \
  extern "C" __global__ void softmax_bwd_##S(size_t rows, size_t d, const T* y, const T* grad, T* dx) {        \
    softmax_bwd(rows, d, y, grad, dx);                                                                         \
  }

NORM_KERNELS(float, f32)
NORM_KERNELS(double, f64)
