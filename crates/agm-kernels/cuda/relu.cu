// ReLU, relu(a + b) and the threshold backward: elementwise, one grid-stride loop each.
#include "common.cuh"

template <typename T>
__device__ void relu_fwd(size_t n, const T* x, T* y) {
  AGM_FOR_EACH(i, n) { y[i] = x[i] > T(0) ? x[i] : T(0); }
}

template <typename T>
__device__ void add_relu_fwd(size_t n, const T* a, const T* b, T* y) {
  AGM_FOR_EACH(i, n) {
    T s = a[i] + b[i];
    y[i] = s > T(0) ? s : T(0);
  }
}

// The gradient where the output is positive, zero elsewhere (a select, so an infinite gradient
// where the output is zero stays out).
template <typename T>
__device__ void relu_grad(size_t n, const T* g, const T* y, T* dx) {
  AGM_FOR_EACH(i, n) { dx[i] = y[i] > T(0) ? g[i] : T(0); }
}

#define RELU_KERNELS(T, S)                                                                        \
  extern "C" __global__ void relu_fwd_##S(size_t n, const T* x, T* y) { relu_fwd(n, x, y); }      \
  extern "C" __global__ void add_relu_fwd_##S(size_t n, const T* a, const T* b, T* y) {           \
    add_relu_fwd(n, a, b, y);                                                                     \
  }                                                                                               \
  extern "C" __global__ void relu_grad_##S(size_t n, const T* g, const T* y, T* dx) {             \
    relu_grad(n, g, y, dx);                                                                       \
  }

RELU_KERNELS(float, f32)
RELU_KERNELS(double, f64)
