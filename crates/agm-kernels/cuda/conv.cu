// im2col and its adjoint col2im for conv2d on CUDA. The GEMM between them is candle's matmul
// (cuBLAS), so these kernels only move data; the layouts are those of src/conv.rs's Geometry.
#include "common.cuh"

// Columns [C·kh·kw, B·OH·OW] of x [B, C, H, W]: element (row (c, ki, kj), column (b, oy, ox)) is
// x[b, c, oy·stride + ki − pad, ox·stride + kj − pad], zero in the padding. One thread per
// element, consecutive threads along ox, so the writes coalesce.
template <typename T>
__device__ void im2col(size_t total, size_t n_cols, size_t c, size_t h, size_t w, size_t kh, size_t kw,
                       size_t stride, size_t pad, size_t oh, size_t ow, const T* x, T* cols) {
  const size_t positions = oh * ow, taps = kh * kw;
  AGM_FOR_EACH(i, total) {
    const size_t row = i / n_cols, col = i % n_cols;
    const size_t channel = row / taps, tap = row % taps;
    const size_t ki = tap / kw, kj = tap % kw;
    const size_t sample = col / positions, pos = col % positions;
    const size_t oy = pos / ow, ox = pos % ow;
    // A pixel above or left of the input wraps around to a huge unsigned index, so one
    // comparison per axis catches the padding on both sides.
    const size_t iy = oy * stride + ki - pad, ix = ox * stride + kj - pad;
    cols[i] = iy < h && ix < w ? x[((sample * c + channel) * h + iy) * w + ix] : T(0);
  }
}

// The adjoint of im2col as a gather: each input pixel sums the column entries that im2col copied
// from it, so no two threads write one element and no atomics are needed. Taps are visited in
// (ki, kj) row-major order, the order in which the CPU's col2im adds them.
template <typename T>
__device__ void col2im(size_t total, size_t n_cols, size_t c, size_t h, size_t w, size_t kh, size_t kw,
                       size_t stride, size_t pad, size_t oh, size_t ow, const T* cols, T* dx) {
  AGM_FOR_EACH(i, total) {
    const size_t ix = i % w, iy = (i / w) % h, channel = (i / (w * h)) % c, sample = i / (w * h * c);
    const T* channel_cols = cols + channel * kh * kw * n_cols + sample * oh * ow;
    const size_t py = iy + pad, px = ix + pad;
    T sum = T(0);
    // Tap ki reads row iy from output row oy = (iy + pad − ki) / stride, only when that divides
    // exactly: the taps congruent to iy + pad modulo the stride.
    for (size_t ki = py % stride; ki < kh && ki <= py; ki += stride) {
      const size_t oy = (py - ki) / stride;
      if (oy >= oh) continue;  // a larger ki may still land inside the output
      for (size_t kj = px % stride; kj < kw && kj <= px; kj += stride) {
        const size_t ox = (px - kj) / stride;
        if (ox >= ow) continue;
        sum += channel_cols[(ki * kw + kj) * n_cols + oy * ow + ox];
      }
    }
    dx[i] = sum;
  }
}

#define CONV_KERNELS(T, S)                                                                              \
  extern "C" __global__ void im2col_##S(size_t total, size_t n_cols, size_t c, size_t h, size_t w,      \
                                        size_t kh, size_t kw, size_t stride, size_t pad, size_t oh,     \
                                        size_t ow, const T* x, T* cols) {                               \
    im2col(total, n_cols, c, h, w, kh, kw, stride, pad, oh, ow, x, cols);                               \
  }                                                                                                     \
  extern "C" __global__ void col2im_##S(size_t total, size_t n_cols, size_t c, size_t h, size_t w,      \
                                        size_t kh, size_t kw, size_t stride, size_t pad, size_t oh,     \
                                        size_t ow, const T* cols, T* dx) {                              \
    col2im(total, n_cols, c, h, w, kh, kw, stride, pad, oh, ow, cols, dx);                              \
  }

CONV_KERNELS(float, f32)
CONV_KERNELS(double, f64)
