// Helpers shared by agm's CUDA kernels. Every kernel is a template instantiated for float and
// double under extern "C" names ending in _f32 / _f64, which src/cuda.rs loads by name.
#pragma once
#include <cstddef>
#include <cstdint>

// A grid-stride loop over [0, n): any launch size covers every index.
#define AGM_FOR_EACH(i, n) \
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)(n); i += (size_t)blockDim.x * gridDim.x)

// Threads per block of the row-wise kernels (one block per row or channel); a multiple of 32.
#define AGM_BLOCK 256

template <typename T>
__device__ __forceinline__ T agm_warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename T>
__device__ __forceinline__ T agm_warp_max(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    T o = __shfl_xor_sync(0xffffffffu, v, offset);
    v = o > v ? o : v;
  }
  return v;
}

// The sum of `v` over the block, returned to every thread. `scratch` holds 32 values of T in
// shared memory; the block size must be a multiple of 32. Every thread of the block must call it.
template <typename T>
__device__ T agm_block_sum(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = agm_warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : T(0);
  return agm_warp_sum(v);
}

// The maximum of `v` over the block, returned to every thread (same rules as agm_block_sum).
template <typename T>
__device__ T agm_block_max(T v, T* scratch, T lowest) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = agm_warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : lowest;
  return agm_warp_max(v);
}

// Products and sums rounded one at a time, never fused into an FMA: the CPU loop rounds each
// step, and kernels that must match it bit for bit use these.
__device__ __forceinline__ float agm_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double agm_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float agm_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double agm_add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float agm_sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double agm_sub(double a, double b) { return __dsub_rn(a, b); }

// −∞ of T, the start of a running maximum.
template <typename T>
__device__ __forceinline__ T negative_infinity();
template <>
__device__ __forceinline__ float negative_infinity<float>() {
  return __int_as_float(0xff800000);
}
template <>
__device__ __forceinline__ double negative_infinity<double>() {
  return __longlong_as_double(0xfff0000000000000ULL);
}

// The max-subtracted softmax of one row `x` of length `d` into `y`, as exp(x − max) times the
// rounded 1 / sum (the CPU's order); returns the row's maximum and the sum of exp(x − max) for
// callers that need them (the cross-entropy loss). `v > m` skips NaNs as the CPU's fold does, so
// no NaN reaches the block maximum. Every thread of the block must call it.
template <typename T>
__device__ void agm_softmax_row(const T* x, size_t d, T* y, T* scratch, T& row_max, T& sum) {
  T m = negative_infinity<T>();
  for (size_t j = threadIdx.x; j < d; j += blockDim.x) m = x[j] > m ? x[j] : m;
  row_max = agm_block_max(m, scratch, negative_infinity<T>());
  T partial = T(0);
  for (size_t j = threadIdx.x; j < d; j += blockDim.x) {
    const T e = exp(x[j] - row_max);
    y[j] = e;
    partial += e;
  }
  sum = agm_block_sum(partial, scratch);
  const T inv = T(1) / sum;
  // Each thread rescales the elements it wrote itself: no barrier needed.
  for (size_t j = threadIdx.x; j < d; j += blockDim.x) y[j] *= inv;
}

// SplitMix64's output function of `seed` and the stream position `index` (src/dropout.rs::mix_seed):
// the hash behind dropout masks and noise draws.
__device__ __forceinline__ unsigned long long agm_mix_seed(unsigned long long seed, unsigned long long index) {
  unsigned long long z = seed ^ ((index + 1ull) * 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
