// Gaussian noise hashed from the seed and the element index; src/noise.rs draws the same on the
// CPU (to the rounding of log, sin and cos: CUDA's functions here, `wide`'s polynomials there).
#include "common.cuh"

__device__ __forceinline__ void agm_sincos(float a, float* s, float* c) { sincosf(a, s, c); }
__device__ __forceinline__ void agm_sincos(double a, double* s, double* c) { sincos(a, s, c); }

// src/noise.rs::fill_normal for one pair: Box-Muller on the two 32-bit halves of one hash, in T.
template <typename T>
__device__ void agm_normal_pair(unsigned long long seed, unsigned long long pair, T* z0, T* z1) {
  const unsigned long long h = agm_mix_seed(seed, pair);
  const T two_pow_m32 = T(2.3283064365386963e-10);
  const T u1 = T((double)((h >> 32) + 1ull)) * two_pow_m32;
  const T u2 = T((double)(h & 0xffffffffull)) * two_pow_m32;
  const T r = sqrt(T(-2) * log(u1));
  T s, c;
  agm_sincos(T(6.283185307179586) * u2, &s, &c);
  *z0 = r * c;
  *z1 = r * s;
}

// y = scale * x + std * z; each thread draws one pair and writes elements 2p and 2p + 1.
template <typename T>
__device__ void add_gaussian_noise(size_t n, unsigned long long seed, T scale, T std, const T* x, T* y) {
  AGM_FOR_EACH(p, (n + 1) / 2) {
    T z0, z1;
    agm_normal_pair(seed, (unsigned long long)p, &z0, &z1);
    const size_t i = 2 * p;
    y[i] = x[i] * scale + z0 * std;
    if (i + 1 < n) y[i + 1] = x[i + 1] * scale + z1 * std;
  }
}

#define NOISE_KERNELS(T, S)                                                                                   \
  extern "C" __global__ void add_gaussian_noise_##S(size_t n, unsigned long long seed, T scale, T std,        \
                                                    const T* x, T* y) {                                       \
    add_gaussian_noise(n, seed, scale, std, x, y);                                                            \
  }

NOISE_KERNELS(float, f32)
NOISE_KERNELS(double, f64)
