// Dropout with a mask hashed from the seed and the element index; src/dropout.rs computes the
// same mask on the CPU, bit for bit.
#include "common.cuh"

// Elements from `count` on pass unchanged.
template <typename T>
__device__ void dropout(size_t n, size_t count, unsigned long long seed, double p, T keep, const T* x, T* y) {
  AGM_FOR_EACH(i, n) {
    if (i >= count) {
      y[i] = x[i];
      continue;
    }
    // 53 bits of the hash as a uniform draw in [0, 1), exact in double.
    const double u = (double)(agm_mix_seed(seed, i) >> 11) * 0x1.0p-53;
    y[i] = x[i] * (u < p ? T(0) : keep);
  }
}

#define DROPOUT_KERNELS(T, S)                                                                          \
  extern "C" __global__ void dropout_##S(size_t n, size_t count, unsigned long long seed, double p, T keep, \
                                          const T* x, T* y) {                                                \
    dropout(n, count, seed, p, keep, x, y);                                                                \
  }

DROPOUT_KERNELS(float, f32)
DROPOUT_KERNELS(double, f64)
