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
  T row_max, sum;
  agm_softmax_row(xr, k, pr, scratch, row_max, sum);
  // From the logits, not from the rounded (possibly underflowed) probability of the label.
  if (threadIdx.x == 0) loss[row] = row_max + log(sum) - xr[labels[row]];
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
