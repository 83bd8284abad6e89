// The SGD update in place, the squared norm for gradient clipping, and the linear layer's bias
// add and bias gradient.
#include "common.cuh"

// Products and sums rounded one at a time, never fused into an FMA: the CPU loop rounds each
// step, and the update must match it bit for bit.
__device__ __forceinline__ float agm_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double agm_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float agm_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double agm_add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float agm_sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double agm_sub(double a, double b) { return __dsub_rn(a, b); }

// buf <- momentum*buf + (1 - dampening)*(g + wd*p), with the decay and the damping skipped when
// their flags are 0, as the CPU skips them.
template <typename T>
__device__ void momentum_update(size_t n, T* buf, const T* g, const T* p, T momentum, T weight_decay,
                                T damp_scale, int decay, int damped) {
  AGM_FOR_EACH(i, n) {
    T d = decay ? agm_add(g[i], agm_mul(weight_decay, p[i])) : g[i];
    T step = damped ? agm_mul(damp_scale, d) : d;
    buf[i] = agm_add(agm_mul(momentum, buf[i]), step);
  }
}

// p <- p - lr*d, with d = buf (momentum), d = (g + wd*p) + momentum*buf (nesterov) or
// d = g + wd*p (no momentum; buf is then unused).
template <typename T>
__device__ void param_update(size_t n, T* p, const T* g, const T* buf, T lr, T momentum, T weight_decay,
                             int has_momentum, int nesterov, int decay) {
  AGM_FOR_EACH(i, n) {
    T d;
    if (!has_momentum || nesterov) {
      d = decay ? agm_add(g[i], agm_mul(weight_decay, p[i])) : g[i];
      if (has_momentum) d = agm_add(d, agm_mul(momentum, buf[i]));
    } else {
      d = buf[i];
    }
    p[i] = agm_sub(p[i], agm_mul(lr, d));
  }
}

// One partial sum of squares per block, in double (f32 values are widened before squaring, as
// on the CPU); sum_partials then adds the partials in one block, so the result is deterministic.
template <typename T>
__device__ void sum_squares_partial(size_t n, const T* x, double* partials) {
  __shared__ double scratch[32];
  double acc = 0.0;
  AGM_FOR_EACH(i, n) {
    double v = (double)x[i];
    acc += v * v;
  }
  acc = agm_block_sum(acc, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// Adds `count` partials with a single block into out[0].
__device__ void sum_partials(size_t count, const double* partials, double* out) {
  __shared__ double scratch[32];
  double acc = 0.0;
  for (size_t i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
  acc = agm_block_sum(acc, scratch);
  if (threadIdx.x == 0) out[0] = acc;
}

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

#define SGD_KERNELS(T, S)                                                                               \
  extern "C" __global__ void momentum_update_##S(size_t n, T* buf, const T* g, const T* p, T momentum, \
                                                 T weight_decay, T damp_scale, int decay, int damped) {  \
    momentum_update(n, buf, g, p, momentum, weight_decay, damp_scale, decay, damped);                  \
  }                                                                                                     \
  extern "C" __global__ void param_update_##S(size_t n, T* p, const T* g, const T* buf, T lr,          \
                                              T momentum, T weight_decay, int has_momentum,            \
                                              int nesterov, int decay) {                               \
    param_update(n, p, g, buf, lr, momentum, weight_decay, has_momentum, nesterov, decay);             \
  }                                                                                                     \
  extern "C" __global__ void sum_squares_partial_##S(size_t n, const T* x, double* partials) {         \
    sum_squares_partial(n, x, partials);                                                               \
  }                                                                                                     \
  extern "C" __global__ void sum_partials_##S(size_t count, const double* partials, double* out) {     \
    sum_partials(count, partials, out);                                                                \
  }                                                                                                     \
  extern "C" __global__ void add_row_bias_##S(size_t n, size_t cols, T* y, const T* b) {               \
    add_row_bias(n, cols, y, b);                                                                       \
  }                                                                                                     \
  extern "C" __global__ void column_sums_##S(size_t rows, size_t cols, const T* g, T* sums) {          \
    column_sums(rows, cols, g, sums);                                                                  \
  }

SGD_KERNELS(float, f32)
SGD_KERNELS(double, f64)
