// Per-sample cross-entropy (src/loss.rs): one block of AGM_BLOCK threads per row of logits for
// the forward pass (blockIdx.x = row), a grid-stride loop for the backward. The labels are on
// the device and were checked against the class count on the host before the launch.
#include "common.cuh"

// loss[row] = max + log(sum) - logits[label] with sum = sum(exp(x - max)), and the row's softmax
// into probs for the backward pass, in the CPU's order of operations.
template <typename T>
__device__ void cross_entropy_fwd(size_t rows, size_t k, const T* logits, const uint32_t* labels, T* probs, T* loss) {
  __shared__ T scratch[32];
  const size_t row = blockIdx.x;
  if (row >= rows) return;  // the whole block leaves together
  const T* xr = logits + row * k;
  T* pr = probs + row * k;
  // `v > m` skips NaNs as the CPU's fold does, so no NaN reaches the block maximum.
  T m = negative_infinity<T>();
  for (size_t j = threadIdx.x; j < k; j += blockDim.x) m = xr[j] > m ? xr[j] : m;
  const T row_max = agm_block_max(m, scratch, negative_infinity<T>());
  T sum = T(0);
  for (size_t j = threadIdx.x; j < k; j += blockDim.x) {
    const T e = exp(xr[j] - row_max);
    pr[j] = e;
    sum += e;
  }
  sum = agm_block_sum(sum, scratch);
  // From the logits, not from the rounded (possibly underflowed) probability of the label.
  if (threadIdx.x == 0) loss[row] = row_max + log(sum) - xr[labels[row]];
  const T inv = T(1) / sum;
  // Each thread rescales the elements it wrote itself: no barrier needed.
  for (size_t j = threadIdx.x; j < k; j += blockDim.x) pr[j] *= inv;
}

// dx[row, j] = probs[row, j] * g[row], less g[row] where j is the row's label.
template <typename T>
__device__ void cross_entropy_bwd(size_t rows, size_t k, const T* grad, const T* probs, const uint32_t* labels, T* dx) {
  AGM_FOR_EACH(i, rows * k) {
    const size_t row = i / k;
    const T g = grad[row];
    T v = probs[i] * g;
    if (i - row * k == (size_t)labels[row]) v -= g;
    dx[i] = v;
  }
}

#define LOSS_KERNELS(T, S)                                                                                       \
  extern "C" __global__ void cross_entropy_fwd_##S(size_t rows, size_t k, const T* logits, const uint32_t* labels, \
                                                   T* probs, T* loss) {                                          \
    cross_entropy_fwd(rows, k, logits, labels, probs, loss);                                                     \
  }                                                                                                              \
  extern "C" __global__ void cross_entropy_bwd_##S(size_t rows, size_t k, const T* grad, const T* probs,          \
                                                   const uint32_t* labels, T* dx) {                              \
    cross_entropy_bwd(rows, k, grad, probs, labels, dx);                                                         \
  }

LOSS_KERNELS(float, f32)
LOSS_KERNELS(double, f64)
