// Batch norm over the channel dimension of x [B, C, S] (S = the product of the spatial dims).
// Per-channel reductions accumulate in double, as the CPU does, in two steps so that a large
// channel fills the GPU: blocks (channel, part) reduce consecutive parts of a channel's elements,
// then one thread per channel combines its parts in order. The elementwise kernels use the
// __d*_rn intrinsics where the CPU rounds every step, so that nvcc's fused multiply-adds cannot
// make them round differently.
#include "common.cuh"

// Walks the elements j = first, first + blockDim.x, ... of one channel over rows [0, ...) of
// x [B, C, S] without a division per element: (row, within) is j in base S, and each step adds
// blockDim.x as (rows, remainder) with at most one carry.
struct ChannelCursor {
  size_t row, within, step_rows, step_within, s, c, channel;
  __device__ ChannelCursor(size_t first, size_t s, size_t c, size_t channel)
      : row(first / s), within(first % s), step_rows(blockDim.x / s), step_within(blockDim.x % s), s(s), c(c),
        channel(channel) {}
  __device__ size_t offset() const { return (row * c + channel) * s + within; }
  __device__ void advance() {
    row += step_rows;
    within += step_within;
    if (within >= s) {
      within -= s;
      ++row;
    }
  }
};

// The elements [first, last) of a channel that part `part` of `parts` reduces.
__device__ __forceinline__ void part_range(size_t count, size_t parts, size_t part, size_t* first, size_t* last) {
  const size_t chunk = (count + parts - 1) / parts;
  *first = min(count, part * chunk);
  *last = min(count, *first + chunk);
}

// The rows of the statistics a batch norm reads (see `row` in src/batch_norm.rs): row r of
// channel `channel` is at stats[r * c + channel].
#define BN_MEAN 0
#define BN_VAR 1
#define BN_RSTD 2
#define BN_FIXED_MEAN 3
#define BN_FIXED_RSTD 4
#define BN_RUNNING_MEAN 5
#define BN_RUNNING_VAR 6

// (1 − m)·running + m·batch, each step rounded (in double, or in T for the stored statistics,
// as candle's ops on T tensors round them on the CPU).
template <typename T>
__device__ __forceinline__ T moved(T running, T batch, double m) {
  return agm_add(agm_mul(running, (T)(1.0 - m)), agm_mul(batch, (T)m));
}

// Block (channel, part): the element count, mean and sum of squared deviations (two passes, in
// double) of part `part` of the channel's elements over the first `rows` rows, into
// partials[(channel · parts + part) · 3 + {0, 1, 2}].
template <typename T>
__device__ void batch_norm_partial_moments(size_t rows, size_t c, size_t s, size_t parts, const T* x,
                                           double* partials) {
  __shared__ double scratch[32];
  const size_t channel = blockIdx.x, part = blockIdx.y;
  size_t first, last;
  part_range(rows * s, parts, part, &first, &last);
  double mean = 0.0, squares = 0.0;
  if (last > first) {
    double sum = 0.0;
    ChannelCursor at(first + threadIdx.x, s, c, channel);
    for (size_t j = first + threadIdx.x; j < last; j += blockDim.x, at.advance()) sum += (double)x[at.offset()];
    mean = agm_block_sum(sum, scratch) / (double)(last - first);
    double local = 0.0;
    ChannelCursor again(first + threadIdx.x, s, c, channel);
    for (size_t j = first + threadIdx.x; j < last; j += blockDim.x, again.advance()) {
      const double d = (double)x[again.offset()] - mean;
      local += d * d;
    }
    squares = agm_block_sum(local, scratch);
  }
  if (threadIdx.x == 0) {
    double* out = partials + (channel * parts + part) * 3;
    out[0] = (double)(last - first);
    out[1] = mean;
    out[2] = squares;
  }
}

// One thread per channel: combines the channel's `parts` partial moments in order (Chan's
// pairwise update) into the mean and biased variance over `count` elements, then writes every
// statistics row of the channel: 1/sqrt(var + eps); with running statistics, those the
// evaluation rows use (updated by this batch first when `update`, as PyTorch's train() then
// eval() would see them) and those to store. A row with nothing to hold is zero, as on the CPU.
template <typename T>
__device__ void batch_norm_stats(size_t count, size_t c, size_t parts, const double* partials, const T* running_mean,
                                 const T* running_var, int has_running, int update, double momentum, double eps,
                                 double* stats) {
  AGM_FOR_EACH(channel, c) {
    double n = 0.0, mean = 0.0, squares = 0.0;
    for (size_t part = 0; part < parts; ++part) {
      const double* p = partials + (channel * parts + part) * 3;
      if (p[0] == 0.0) continue;
      const double total = n + p[0], delta = p[1] - mean;
      mean += delta * (p[0] / total);
      squares += p[2] + delta * delta * (n * p[0] / total);
      n = total;
    }
    const double var = count > 0 ? squares / (double)count : 0.0;
    double fixed_mean = 0.0, fixed_rstd = 0.0, stored_mean = 0.0, stored_var = 0.0;
    if (has_running) {
      const T r_mean = running_mean[channel], r_var = running_var[channel];
      double fixed_var = (double)r_var;
      fixed_mean = stored_mean = (double)r_mean;
      stored_var = fixed_var;
      if (update && count > 0) {
        const double total = (double)count, unbiased = __dmul_rn(var, total) / fmax(total - 1.0, 1.0);
        fixed_mean = moved((double)r_mean, mean, momentum);
        fixed_var = moved((double)r_var, unbiased, momentum);
        stored_mean = (double)moved(r_mean, (T)mean, momentum);
        stored_var = (double)moved(r_var, (T)unbiased, momentum);
      }
      fixed_rstd = 1.0 / sqrt(fixed_var + eps);
    }
    stats[BN_MEAN * c + channel] = mean;
    stats[BN_VAR * c + channel] = var;
    stats[BN_RSTD * c + channel] = count > 0 ? 1.0 / sqrt(var + eps) : 0.0;
    stats[BN_FIXED_MEAN * c + channel] = fixed_mean;
    stats[BN_FIXED_RSTD * c + channel] = fixed_rstd;
    stats[BN_RUNNING_MEAN * c + channel] = stored_mean;
    stats[BN_RUNNING_VAR * c + channel] = stored_var;
  }
}

// y = x · scale + shift with scale = rstd · w and shift = bias − mean · scale, from the batch
// statistics for the first `head_elems` elements and the running ones after; then the ReLU
// when `relu` (zero unless positive, NaN included).
template <typename T>
__device__ void batch_norm_apply(size_t n, size_t c, size_t s, size_t head_elems, const T* x, const T* w,
                                 const T* bias, const double* batch_mean, const double* batch_rstd,
                                 const double* fixed_mean, const double* fixed_rstd, int relu, T* y) {
  AGM_FOR_EACH(i, n) {
    const size_t channel = (i / s) % c;
    const bool batch = i < head_elems;
    const double mean = batch ? batch_mean[channel] : fixed_mean[channel];
    const double rstd = batch ? batch_rstd[channel] : fixed_rstd[channel];
    const double scale = __dmul_rn(rstd, (double)w[channel]);
    const double shift = __dsub_rn((double)bias[channel], __dmul_rn(mean, scale));
    T out = (T)__dadd_rn(__dmul_rn((double)x[i], scale), shift);
    if (relu) out = out > T(0) ? out : T(0);
    y[i] = out;
  }
}

// Block (channel, part): over part `part` of the channel's elements in all `b` rows, Σ g and
// Σ g·x̂ of the first `head` rows (x̂ with the batch statistics) and of the rows after (with the
// running ones), into partials[(channel · parts + part) · 4 + {0, 1, 2, 3}].
template <typename T>
__device__ void batch_norm_partial_grad_sums(size_t b, size_t head, size_t c, size_t s, size_t parts, const T* x,
                                             const T* g, const double* batch_mean, const double* batch_rstd,
                                             const double* fixed_mean, const double* fixed_rstd, double* partials) {
  __shared__ double scratch[32];
  const size_t channel = blockIdx.x, part = blockIdx.y;
  size_t first, last;
  part_range(b * s, parts, part, &first, &last);
  double head_g = 0.0, head_gx = 0.0, tail_g = 0.0, tail_gx = 0.0;
  if (last > first) {
    const double mean = batch_mean[channel], rstd = batch_rstd[channel];
    const double fmean = fixed_mean[channel], frstd = fixed_rstd[channel];
    ChannelCursor at(first + threadIdx.x, s, c, channel);
    for (size_t j = first + threadIdx.x; j < last; j += blockDim.x, at.advance()) {
      const size_t i = at.offset();
      const double gv = (double)g[i];
      if (at.row < head) {
        head_g += gv;
        head_gx += gv * (((double)x[i] - mean) * rstd);
      } else {
        tail_g += gv;
        tail_gx += gv * (((double)x[i] - fmean) * frstd);
      }
    }
  }
  const double sums[4] = {agm_block_sum(head_g, scratch), agm_block_sum(head_gx, scratch),
                          agm_block_sum(tail_g, scratch), agm_block_sum(tail_gx, scratch)};
  if (threadIdx.x == 0) {
    for (int k = 0; k < 4; ++k) partials[(channel * parts + part) * 4 + k] = sums[k];
  }
}

// One thread per channel: adds the channel's `parts` partial sums in order; the batch rows' Σ g
// and Σ g·x̂ go to batch_sums[channel] and batch_sums[c + channel] for batch_norm_grad_input, and
// the weight and bias gradients (sums over all rows, each row group with its own statistics) to
// params[channel] and params[c + channel].
template <typename T>
__device__ void batch_norm_grad_sums(size_t c, size_t parts, const double* partials, double* batch_sums, T* params) {
  AGM_FOR_EACH(channel, c) {
    double sums[4] = {0.0, 0.0, 0.0, 0.0};
    for (size_t part = 0; part < parts; ++part)
      for (int k = 0; k < 4; ++k) sums[k] += partials[(channel * parts + part) * 4 + k];
    batch_sums[channel] = sums[0];
    batch_sums[c + channel] = sums[1];
    params[channel] = (T)(sums[1] + sums[3]);
    params[c + channel] = (T)(sums[0] + sums[2]);
  }
}

// dx = w·rstd·(g − mean(g) − x̂·mean(g·x̂)) over the first `head_elems` elements (means over
// `count` elements per channel); the running statistics are constants after: dx = w·rstd·g.
template <typename T>
__device__ void batch_norm_grad_input(size_t n, size_t c, size_t s, size_t head_elems, double count, const T* x,
                                      const T* w, const T* g, const double* batch_mean, const double* batch_rstd,
                                      const double* fixed_rstd, const double* batch_sums, T* dx) {
  AGM_FOR_EACH(i, n) {
    const size_t channel = (i / s) % c;
    const double gv = (double)g[i];
    double out;
    if (i < head_elems) {
      const double rstd = batch_rstd[channel];
      const double k = __dmul_rn((double)w[channel], rstd);
      const double mean_g = batch_sums[channel] / count, mean_gx = batch_sums[c + channel] / count;
      const double xhat = __dmul_rn(__dsub_rn((double)x[i], batch_mean[channel]), rstd);
      out = __dmul_rn(k, __dsub_rn(__dsub_rn(gv, mean_g), __dmul_rn(xhat, mean_gx)));
    } else {
      out = __dmul_rn(__dmul_rn((double)w[channel], fixed_rstd[channel]), gv);
    }
    dx[i] = (T)out;
  }
}

// A row of running statistics (double, holding values of T) into a layer's buffer of T.
template <typename T>
__device__ void batch_norm_store(size_t n, const double* src, T* dst) {
  AGM_FOR_EACH(i, n) { dst[i] = (T)src[i]; }
}

// One more batch on a layer's counter (num_batches_tracked).
template <typename T>
__device__ void batch_norm_count(size_t n, T* counter) {
  AGM_FOR_EACH(i, n) { counter[i] = agm_add(counter[i], (T)1); }
}

#define BATCH_NORM_KERNELS(T, S)                                                                                   \
  extern "C" __global__ void batch_norm_partial_moments_##S(size_t rows, size_t c, size_t s, size_t parts,         \
                                                            const T* x, double* partials) {                        \
    batch_norm_partial_moments(rows, c, s, parts, x, partials);                                                    \
  }                                                                                                                \
  extern "C" __global__ void batch_norm_stats_##S(size_t count, size_t c, size_t parts, const double* partials,    \
                                                  const T* running_mean, const T* running_var, int has_running,    \
                                                  int update, double momentum, double eps, double* stats) {        \
    batch_norm_stats(count, c, parts, partials, running_mean, running_var, has_running, update, momentum, eps,     \
                     stats);                                                                                       \
  }                                                                                                                \
  extern "C" __global__ void batch_norm_apply_##S(size_t n, size_t c, size_t s, size_t head_elems, const T* x,     \
                                                  const T* w, const T* bias, const double* batch_mean,             \
                                                  const double* batch_rstd, const double* fixed_mean,              \
                                                  const double* fixed_rstd, int relu, T* y) {                      \
    batch_norm_apply(n, c, s, head_elems, x, w, bias, batch_mean, batch_rstd, fixed_mean, fixed_rstd, relu, y);    \
  }                                                                                                                \
  extern "C" __global__ void batch_norm_partial_grad_sums_##S(                                                     \
      size_t b, size_t head, size_t c, size_t s, size_t parts, const T* x, const T* g, const double* batch_mean,   \
      const double* batch_rstd, const double* fixed_mean, const double* fixed_rstd, double* partials) {            \
    batch_norm_partial_grad_sums(b, head, c, s, parts, x, g, batch_mean, batch_rstd, fixed_mean, fixed_rstd,       \
                                 partials);                                                                        \
  }                                                                                                                \
  extern "C" __global__ void batch_norm_grad_sums_##S(size_t c, size_t parts, const double* partials,              \
                                                      double* batch_sums, T* params) {                             \
    batch_norm_grad_sums(c, parts, partials, batch_sums, params);                                                  \
  }                                                                                                                \
  extern "C" __global__ void batch_norm_grad_input_##S(                                                            \
      size_t n, size_t c, size_t s, size_t head_elems, double count, const T* x, const T* w, const T* g,           \
      const double* batch_mean, const double* batch_rstd, const double* fixed_rstd, const double* batch_sums,      \
      T* dx) {                                                                                                     \
    batch_norm_grad_input(n, c, s, head_elems, count, x, w, g, batch_mean, batch_rstd, fixed_rstd, batch_sums, dx); \
  }                                                                                                                \
  extern "C" __global__ void batch_norm_store_##S(size_t n, const double* src, T* dst) {                           \
    batch_norm_store(n, src, dst);                                                                                 \
  }                                                                                                                \
  extern "C" __global__ void batch_norm_count_##S(size_t n, T* counter) { batch_norm_count(n, counter); }

BATCH_NORM_KERNELS(float, f32)
BATCH_NORM_KERNELS(double, f64)
