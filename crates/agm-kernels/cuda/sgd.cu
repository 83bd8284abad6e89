// The SGD update in place and the squared norm for gradient clipping.
#include "common.cuh"

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
  }

SGD_KERNELS(float, f32)
SGD_KERNELS(double, f64)
