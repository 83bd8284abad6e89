// Max and average pooling, forward and backward, with the CPU semantics of src/pool.rs: floor
// mode, windows clipped to the input (padding is −∞ for max, zero for the mean, whose divisor is
// always k²), PyTorch's tie rule for the max gradient. The backward kernels gather per input
// pixel, so no two threads write one element and no atomics are needed.
#include "common.cuh"

// The input rows (or columns, with n = W) [lo, hi) of output row o's window, clipped to the
// input. start + k − pad never underflows: the padding is at most half the kernel.
__device__ __forceinline__ void pool_window(size_t o, size_t n, size_t k, size_t s, size_t p, size_t& lo,
                                            size_t& hi) {
  const size_t start = o * s;
  lo = start > p ? start - p : 0;
  hi = start + k - p < n ? start + k - p : n;
}

// The output rows (or columns) [lo, hi) whose windows contain input row i: o·s − p ≤ i and
// i < o·s − p + k.
__device__ __forceinline__ void covering_outputs(size_t i, size_t n_out, size_t k, size_t s, size_t p, size_t& lo,
                                                 size_t& hi) {
  lo = i + p + 1 > k ? (i + p + 1 - k + s - 1) / s : 0;
  hi = (i + p) / s + 1 < n_out ? (i + p) / s + 1 : n_out;
}

template <typename T>
__device__ __forceinline__ T negative_infinity() {
  return -T(INFINITY);
}

// The maximum of each window in row-major order, NaN winning as in PyTorch.
template <typename T>
__device__ void max_pool_fwd(size_t n, size_t h, size_t w, size_t oh, size_t ow, size_t k, size_t s, size_t p,
                             const T* x, T* y) {
  AGM_FOR_EACH(i, n) {
    const size_t ox = i % ow, oy = (i / ow) % oh, plane = i / (ow * oh);
    const T* src = x + plane * h * w;
    size_t y0, y1, x0, x1;
    pool_window(oy, h, k, s, p, y0, y1);
    pool_window(ox, w, k, s, p, x0, x1);
    T best = negative_infinity<T>();
    for (size_t yy = y0; yy < y1; ++yy) {
      for (size_t xx = x0; xx < x1; ++xx) {
        const T v = src[yy * w + xx];
        if (v > best || isnan(v)) best = v;
      }
    }
    y[i] = best;
  }
}

// The index in its plane of a window's argmax, picked as the CPU picks it: the first element in
// row-major order equal to the forward's maximum `m`; when none is (a NaN maximum, or an input
// changed since the forward pass), a strict-> scan in which NaN always wins, from the window's
// first element.
template <typename T>
__device__ size_t window_argmax(const T* src, size_t w, size_t y0, size_t y1, size_t x0, size_t x1, T m) {
  for (size_t yy = y0; yy < y1; ++yy) {
    for (size_t xx = x0; xx < x1; ++xx) {
      if (src[yy * w + xx] == m) return yy * w + xx;
    }
  }
  T best = negative_infinity<T>();
  size_t at = y0 * w + x0;
  for (size_t yy = y0; yy < y1; ++yy) {
    for (size_t xx = x0; xx < x1; ++xx) {
      const T v = src[yy * w + xx];
      if (v > best || isnan(v)) {
        best = v;
        at = yy * w + xx;
      }
    }
  }
  return at;
}

// dx of max pooling: each input pixel sums the output gradients of the windows whose argmax it
// is, recomputing those argmaxes (k² reads each) instead of keeping an index buffer from the
// forward pass. Windows are visited in row-major output order, the CPU's order of addition.
template <typename T>
__device__ void max_pool_bwd(size_t n, size_t h, size_t w, size_t oh, size_t ow, size_t k, size_t s, size_t p,
                             const T* x, const T* y, const T* grad, T* dx) {
  AGM_FOR_EACH(i, n) {
    const size_t ix = i % w, iy = (i / w) % h, plane = i / (w * h);
    const T* src = x + plane * h * w;
    const T* maxes = y + plane * oh * ow;
    const T* g = grad + plane * oh * ow;
    const size_t here = iy * w + ix;
    size_t oy0, oy1, ox0, ox1;
    covering_outputs(iy, oh, k, s, p, oy0, oy1);
    covering_outputs(ix, ow, k, s, p, ox0, ox1);
    T sum = T(0);
    for (size_t oy = oy0; oy < oy1; ++oy) {
      size_t y0, y1;
      pool_window(oy, h, k, s, p, y0, y1);
      for (size_t ox = ox0; ox < ox1; ++ox) {
        size_t x0, x1;
        pool_window(ox, w, k, s, p, x0, x1);
        if (window_argmax(src, w, y0, y1, x0, x1, maxes[oy * ow + ox]) == here) sum += g[oy * ow + ox];
      }
    }
    dx[i] = sum;
  }
}

// Window sums in row-major order times scale = 1/k².
template <typename T>
__device__ void avg_pool_fwd(size_t n, size_t h, size_t w, size_t oh, size_t ow, size_t k, size_t s, size_t p,
                             T scale, const T* x, T* y) {
  AGM_FOR_EACH(i, n) {
    const size_t ox = i % ow, oy = (i / ow) % oh, plane = i / (ow * oh);
    const T* src = x + plane * h * w;
    size_t y0, y1, x0, x1;
    pool_window(oy, h, k, s, p, y0, y1);
    pool_window(ox, w, k, s, p, x0, x1);
    T sum = T(0);
    for (size_t yy = y0; yy < y1; ++yy) {
      for (size_t xx = x0; xx < x1; ++xx) sum += src[yy * w + xx];
    }
    y[i] = sum * scale;
  }
}

// dx of average pooling: each input pixel sums grad · scale over the windows that contain it.
// The CPU adds output rows in ascending order and, within a row, kernel columns in ascending
// order, which reach a pixel from descending output columns; this loop keeps that order.
template <typename T>
__device__ void avg_pool_bwd(size_t n, size_t h, size_t w, size_t oh, size_t ow, size_t k, size_t s, size_t p,
                             T scale, const T* grad, T* dx) {
  AGM_FOR_EACH(i, n) {
    const size_t ix = i % w, iy = (i / w) % h, plane = i / (w * h);
    const T* g = grad + plane * oh * ow;
    size_t oy0, oy1, ox0, ox1;
    covering_outputs(iy, oh, k, s, p, oy0, oy1);
    covering_outputs(ix, ow, k, s, p, ox0, ox1);
    T sum = T(0);
    for (size_t oy = oy0; oy < oy1; ++oy) {
      // agm_mul keeps the product out of an FMA, rounding as the CPU's `g * scale` then `+=`.
      for (size_t ox = ox1; ox > ox0; --ox) sum += agm_mul(g[oy * ow + ox - 1], scale);
    }
    dx[i] = sum;
  }
}

#define POOL_KERNELS(T, S)                                                                                      \
  extern "C" __global__ void max_pool_fwd_##S(size_t n, size_t h, size_t w, size_t oh, size_t ow, size_t k,     \
                                              size_t s, size_t p, const T* x, T* y) {                           \
    max_pool_fwd(n, h, w, oh, ow, k, s, p, x, y);                                                               \
  }                                                                                                             \
  extern "C" __global__ void max_pool_bwd_##S(size_t n, size_t h, size_t w, size_t oh, size_t ow, size_t k,     \
                                              size_t s, size_t p, const T* x, const T* y, const T* grad,        \
                                              T* dx) {                                                          \
    max_pool_bwd(n, h, w, oh, ow, k, s, p, x, y, grad, dx);                                                     \
  }                                                                                                             \
  extern "C" __global__ void avg_pool_fwd_##S(size_t n, size_t h, size_t w, size_t oh, size_t ow, size_t k,     \
                                              size_t s, size_t p, T scale, const T* x, T* y) {                  \
    avg_pool_fwd(n, h, w, oh, ow, k, s, p, scale, x, y);                                                        \
  }                                                                                                             \
  extern "C" __global__ void avg_pool_bwd_##S(size_t n, size_t h, size_t w, size_t oh, size_t ow, size_t k,     \
                                              size_t s, size_t p, T scale, const T* grad, T* dx) {              \
    avg_pool_bwd(n, h, w, oh, ow, k, s, p, scale, grad, dx);                                                    \
  }

POOL_KERNELS(float, f32)
POOL_KERNELS(double, f64)
