// The SGD update in place and the squared norm for gradient clipping.
#include "common.cuh"

// With d = g + wd*p (the decay skipped when its flag is 0, as the CPU skips it):
// buf <- momentum*buf + (1 - dampening)*d, then p <- p - lr*(d + nesterov_m*buf if nesterov, else
// buf), one pass over the three; the first step passes momentum 0 and damp_scale 1.
template <typename T>
__device__ void momentum_step(size_t n, T* p, const T* g, T* buf, T lr, T momentum, T weight_decay,
                              T damp_scale, T nesterov_m, int decay, int damped, int nesterov) {
  AGM_FOR_EACH(i, n) {
    T d = decay ? agm_add(g[i], agm_mul(weight_decay, p[i])) : g[i];
    T b = agm_add(agm_mul(momentum, buf[i]), damped ? agm_mul(damp_scale, d) : d);
    buf[i] = b;
    T step = nesterov ? agm_add(d, agm_mul(nesterov_m, b)) : b;
    p[i] = agm_sub(p[i], agm_mul(lr, step));
  }
}

// p <- p - lr*(g + wd*p), without momentum.
template <typename T>
__device__ void plain_step(size_t n, T* p, const T* g, T lr, T weight_decay, int decay) {
  AGM_FOR_EACH(i, n) {
    T d = decay ? agm_add(g[i], agm_mul(weight_decay, p[i])) : g[i];
    p[i] = agm_sub(p[i], agm_mul(lr, d));
  }
}

// One partial sum of squares per block, in double (f32 values are widened before squaring, as
// on the CPU); sum_partials then adds each row of partials in one block, so the result is
// deterministic.
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

// Block b adds row b of `count` partials into out[b].
__device__ void sum_partials(size_t count, const double* partials, double* out) {
  __shared__ double scratch[32];
  const double* row = partials + blockIdx.x * count;
  double acc = 0.0;
  for (size_t i = threadIdx.x; i < count; i += blockDim.x) acc += row[i];
  acc = agm_block_sum(acc, scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = acc;
}

#define SGD_KERNELS(T, S)                                                                               \
  extern "C" __global__ void momentum_step_##S(size_t n, T* p, const T* g, T* buf, T lr, T momentum,   \
                                               T weight_decay, T damp_scale, T nesterov_m, int decay,  \
                                               int damped, int nesterov) {                             \
    momentum_step(n, p, g, buf, lr, momentum, weight_decay, damp_scale, nesterov_m, decay, damped,     \
                  nesterov);                                                                           \
  }                                                                                                     \
  extern "C" __global__ void plain_step_##S(size_t n, T* p, const T* g, T lr, T weight_decay,          \
                                            int decay) {                                               \
    plain_step(n, p, g, lr, weight_decay, decay);                                                      \
  }                                                                                                     \
  extern "C" __global__ void sum_squares_partial_##S(size_t n, const T* x, double* partials) {         \
    sum_squares_partial(n, x, partials);                                                               \
  }                                                                                                     \
  extern "C" __global__ void sum_partials_##S(size_t count, const double* partials, double* out) {     \
    sum_partials(count, partials, out);                                                                \
  }

SGD_KERNELS(float, f32)
SGD_KERNELS(double, f64)
