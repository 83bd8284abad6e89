// The SGD update in place and the squared norm for gradient clipping.
#include "common.cuh"

// With d = g + wd*p (the decay skipped when its flag is 0, as the CPU skips it):
// buf <- momentum*buf + (1 - dampening)*d, then p <- p - lr*(d + nesterov_m*buf if nesterov, else
// buf); without a buffer p <- p - lr*d. The first step passes momentum 0 and damp_scale 1.

// Tensors per launch of table_step: the table goes to the kernel as its argument (by value, under
// the 4 KiB that every CUDA version takes).
#define SGD_TABLE_LEN 32
// Elements a block of table_step updates (of one tensor).
#define SGD_TABLE_CHUNK 4096
#define SGD_DECAY 1
#define SGD_DAMPED 2
#define SGD_NESTEROV 4

// Up to SGD_TABLE_LEN tensors' SGD steps: tensor k has n[k] elements, buf[k] null without
// momentum, and owns blocks [first_block[k], first_block[k + 1]). Mirrored by SgdTable in
// src/sgd.rs, field for field.
template <typename T>
struct SgdTable {
  T* p[SGD_TABLE_LEN];
  const T* g[SGD_TABLE_LEN];
  T* buf[SGD_TABLE_LEN];
  size_t n[SGD_TABLE_LEN];
  size_t first_block[SGD_TABLE_LEN + 1];
  T lr[SGD_TABLE_LEN];
  T momentum[SGD_TABLE_LEN];
  T weight_decay[SGD_TABLE_LEN];
  T damp_scale[SGD_TABLE_LEN];
  T nesterov_m[SGD_TABLE_LEN];
  int flags[SGD_TABLE_LEN];
  int count;
};
static_assert(sizeof(SgdTable<float>) == 2064, "SgdTable<float> differs from src/sgd.rs");
static_assert(sizeof(SgdTable<double>) == 2704, "SgdTable<double> differs from src/sgd.rs");

// Block b updates chunk b - first_block[k] of the tensor k that owns it.
template <typename T>
__device__ void table_step(const SgdTable<T>& t) {
  // The last tensor whose first block is at most b (an empty tensor owns no block, and shares
  // its first block with the next).
  int lo = 0, hi = t.count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (t.first_block[mid] <= blockIdx.x) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const int k = lo;
  const size_t start = (blockIdx.x - t.first_block[k]) * (size_t)SGD_TABLE_CHUNK;
  const size_t end = min(t.n[k], start + SGD_TABLE_CHUNK);
  T* p = t.p[k];
  const T* g = t.g[k];
  T* buf = t.buf[k];
  const T lr = t.lr[k], momentum = t.momentum[k], weight_decay = t.weight_decay[k];
  const T damp_scale = t.damp_scale[k], nesterov_m = t.nesterov_m[k];
  const int flags = t.flags[k];
  for (size_t i = start + threadIdx.x; i < end; i += blockDim.x) {
    const T d = (flags & SGD_DECAY) ? agm_add(g[i], agm_mul(weight_decay, p[i])) : g[i];
    if (buf == nullptr) {
      p[i] = agm_sub(p[i], agm_mul(lr, d));
      continue;
    }
    const T b = agm_add(agm_mul(momentum, buf[i]), (flags & SGD_DAMPED) ? agm_mul(damp_scale, d) : d);
    buf[i] = b;
    const T step = (flags & SGD_NESTEROV) ? agm_add(d, agm_mul(nesterov_m, b)) : b;
    p[i] = agm_sub(p[i], agm_mul(lr, step));
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
  extern "C" __global__ void table_step_##S(const SgdTable<T> table) { table_step(table); }                \
  extern "C" __global__ void sum_squares_partial_##S(size_t n, const T* x, double* partials) {         \
    sum_squares_partial(n, x, partials);                                                               \
  }                                                                                                     \
  extern "C" __global__ void sum_partials_##S(size_t count, const double* partials, double* out) {     \
    sum_partials(count, partials, out);                                                                \
  }

SGD_KERNELS(float, f32)
SGD_KERNELS(double, f64)
