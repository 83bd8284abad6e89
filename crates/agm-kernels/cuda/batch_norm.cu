// Batch norm over the channel dimension of x [B, C, S] (S = the product of the spatial dims).
// Per-channel reductions run one block per channel and accumulate in double, as the CPU does;
// the elementwise kernels use the __d*_rn intrinsics where the CPU rounds every step, so that
// nvcc's fused multiply-adds cannot make them round differently.
#include "common.cuh"

// The offset in x of the j-th element of channel `channel` over rows [first_row, ...).
__device__ __forceinline__ size_t channel_offset(size_t j, size_t first_row, size_t c, size_t s, size_t channel) {
  const size_t row = first_row + j / s, within = j % s;
  return (row * c + channel) * s + within;
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

// Block `channel` (one per channel): mean and biased variance (two passes, in double) of the
// channel over the first `rows` rows, then, from thread 0, every statistics row of the channel:
// 1/sqrt(var + eps); with running statistics, those the evaluation rows use (updated by this
// batch first when `update`, as PyTorch's train() then eval() would see them) and those to
// store. A row with nothing to hold is zero, as on the CPU.
template <typename T>
__device__ void batch_norm_stats(size_t rows, size_t c, size_t s, const T* x, const T* running_mean,
                                 const T* running_var, int has_running, int update, double momentum, double eps,
                                 double* stats) {
  __shared__ double scratch[32];
  const size_t channel = blockIdx.x, count = rows * s;
  double mean = 0.0, var = 0.0;
  if (count > 0) {
    double sum = 0.0;
    for (size_t j = threadIdx.x; j < count; j += blockDim.x) sum += (double)x[channel_offset(j, 0, c, s, channel)];
    mean = agm_block_sum(sum, scratch) / (double)count;
    double squares = 0.0;
    for (size_t j = threadIdx.x; j < count; j += blockDim.x) {
      const double d = (double)x[channel_offset(j, 0, c, s, channel)] - mean;
      squares += d * d;
    }
    var = agm_block_sum(squares, scratch) / (double)count;
  }
  if (threadIdx.x != 0) return;
  double fixed_mean = 0.0, fixed_rstd = 0.0, stored_mean = 0.0, stored_var = 0.0;
  if (has_running) {
    const T r_mean = running_mean[channel], r_var = running_var[channel];
    double fixed_var = (double)r_var;
    fixed_mean = stored_mean = (double)r_mean;
    stored_var = fixed_var;
    if (update && count > 0) {
      const double n = (double)count, unbiased = __dmul_rn(var, n) / fmax(n - 1.0, 1.0);
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

// Σ g and Σ g·x̂ of channel `channel` over rows [first_row, last_row), x̂ = (x − mean) · rstd.
// Every thread of the block must call it; every thread gets the sums.
template <typename T>
__device__ void channel_grad_sums(const T* x, const T* g, size_t first_row, size_t last_row, size_t c, size_t s,
                                  size_t channel, double mean, double rstd, double* scratch, double* sum_g,
                                  double* sum_gx) {
  const size_t count = (last_row - first_row) * s;
  double a = 0.0, b = 0.0;
  for (size_t j = threadIdx.x; j < count; j += blockDim.x) {
    const size_t at = channel_offset(j, first_row, c, s, channel);
    const double gv = (double)g[at], xhat = ((double)x[at] - mean) * rstd;
    a += gv;
    b += gv * xhat;
  }
  *sum_g = agm_block_sum(a, scratch);
  *sum_gx = agm_block_sum(b, scratch);
}

// Per channel (one block each): the batch rows' Σ g and Σ g·x̂ into batch_sums[channel] and
// batch_sums[c + channel] for batch_norm_grad_input, and the weight and bias gradients (sums
// over all rows, each row group with its own statistics) into params[channel], params[c + channel].
template <typename T>
__device__ void batch_norm_grad_sums(size_t b, size_t head, size_t c, size_t s, const T* x, const T* g,
                                     const double* batch_mean, const double* batch_rstd, const double* fixed_mean,
                                     const double* fixed_rstd, double* batch_sums, T* params) {
  __shared__ double scratch[32];
  const size_t channel = blockIdx.x;
  double sum_g, sum_gx, tail_g, tail_gx;
  channel_grad_sums(x, g, 0, head, c, s, channel, batch_mean[channel], batch_rstd[channel], scratch, &sum_g, &sum_gx);
  channel_grad_sums(x, g, head, b, c, s, channel, fixed_mean[channel], fixed_rstd[channel], scratch, &tail_g,
                    &tail_gx);
  if (threadIdx.x == 0) {
    batch_sums[channel] = sum_g;
    batch_sums[c + channel] = sum_gx;
    params[channel] = (T)(sum_gx + tail_gx);
    params[c + channel] = (T)(sum_g + tail_g);
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

#define BATCH_NORM_KERNELS(T, S)                                                                                   \
  extern "C" __global__ void batch_norm_stats_##S(size_t rows, size_t c, size_t s, const T* x,                   \
                                                  const T* running_mean, const T* running_var, int has_running,    \
                                                  int update, double momentum, double eps, double* stats) {        \
    batch_norm_stats(rows, c, s, x, running_mean, running_var, has_running, update, momentum, eps, stats);         \
  }                                                                                                                \
  extern "C" __global__ void batch_norm_apply_##S(size_t n, size_t c, size_t s, size_t head_elems, const T* x,     \
                                                  const T* w, const T* bias, const double* batch_mean,             \
                                                  const double* batch_rstd, const double* fixed_mean,              \
                                                  const double* fixed_rstd, int relu, T* y) {                      \
    batch_norm_apply(n, c, s, head_elems, x, w, bias, batch_mean, batch_rstd, fixed_mean, fixed_rstd, relu, y);    \
  }                                                                                                                \
  extern "C" __global__ void batch_norm_grad_sums_##S(size_t b, size_t head, size_t c, size_t s, const T* x,       \
                                                      const T* g, const double* batch_mean,                        \
                                                      const double* batch_rstd, const double* fixed_mean,          \
                                                      const double* fixed_rstd, double* batch_sums, T* params) {   \
    batch_norm_grad_sums(b, head, c, s, x, g, batch_mean, batch_rstd, fixed_mean, fixed_rstd, batch_sums, params); \
  }                                                                                                                \
  extern "C" __global__ void batch_norm_grad_input_##S(                                                            \
      size_t n, size_t c, size_t s, size_t head_elems, double count, const T* x, const T* w, const T* g,           \
      const double* batch_mean, const double* batch_rstd, const double* fixed_rstd, const double* batch_sums,      \
      T* dx) {                                                                                                     \
    batch_norm_grad_input(n, c, s, head_elems, count, x, w, g, batch_mean, batch_rstd, fixed_rstd, batch_sums, dx); \
  }

BATCH_NORM_KERNELS(float, f32)
BATCH_NORM_KERNELS(double, f64)
