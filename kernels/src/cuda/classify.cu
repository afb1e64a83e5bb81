// Classification post-processing on the GPU: one block per row for softmax and for top-k.
#include <cstdint>

#include "common.cuh"
#include "peregrine/kernels.hpp"

namespace peregrine::cuda {
namespace {

constexpr int kThreads = 256;

// identity: the value that leaves op unchanged (0 for sums, -inf for max), for lanes past the last warp.
template <class T, class Op>
__device__ T block_reduce(T value, Op op, T identity, T* scratch) {
  for (int offset = 16; offset > 0; offset >>= 1) value = op(value, __shfl_down_sync(0xFFFFFFFFu, value, offset));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // scratch may still be read by the previous reduction
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < (blockDim.x >> 5) ? scratch[lane] : identity;
    for (int offset = 16; offset > 0; offset >>= 1) value = op(value, __shfl_down_sync(0xFFFFFFFFu, value, offset));
    if (lane == 0) scratch[0] = value;
  }
  __syncthreads();
  return scratch[0];
}

struct Max {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct Sum {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct MaxKey {
  __device__ std::uint64_t operator()(std::uint64_t a, std::uint64_t b) const { return a > b ? a : b; }
};

__global__ void __launch_bounds__(kThreads) softmax_kernel(const float* in, float* out, std::int32_t c) {
  __shared__ float fscratch[32];
  const float* x = in + blockIdx.x * static_cast<std::int64_t>(c);
  float* y = out + blockIdx.x * static_cast<std::int64_t>(c);
  float m = -INFINITY;
  for (std::int32_t i = threadIdx.x; i < c; i += blockDim.x) m = fmaxf(m, x[i]);
  m = block_reduce(m, Max{}, -INFINITY, fscratch);
  float sum = 0.0f;
  for (std::int32_t i = threadIdx.x; i < c; i += blockDim.x) sum += expf(x[i] - m);
  sum = block_reduce(sum, Sum{}, 0.0f, fscratch);
  const float inv = 1.0f / sum;
  for (std::int32_t i = threadIdx.x; i < c; i += blockDim.x) y[i] = expf(x[i] - m) * inv;
}

// k rounds of a block-wide max over keys strictly below the previous winner: no marking, no scratch.
__global__ void __launch_bounds__(kThreads) topk_kernel(const float* in, std::int32_t c, std::int32_t k,
                                                        float* values, std::int32_t* indices) {
  __shared__ std::uint64_t kscratch[32];
  const float* x = in + blockIdx.x * static_cast<std::int64_t>(c);
  std::uint64_t previous = ~std::uint64_t{0};
  for (std::int32_t r = 0; r < k; ++r) {
    std::uint64_t best = 0;
    for (std::int32_t i = threadIdx.x; i < c; i += blockDim.x) {
      const std::uint64_t key = (static_cast<std::uint64_t>(detail::orderable(x[i])) << 32) | (0xFFFFFFFFu - i);
      if (key < previous && key > best) best = key;
    }
    best = block_reduce(best, MaxKey{}, std::uint64_t{0}, kscratch);
    if (threadIdx.x == 0) {
      const std::uint32_t index = detail::key_index(best);
      values[blockIdx.x * static_cast<std::int64_t>(k) + r] = x[index];
      indices[blockIdx.x * static_cast<std::int64_t>(k) + r] = static_cast<std::int32_t>(index);
    }
    previous = best;
  }
}

}  // namespace

void softmax(const float* in, float* out, std::int32_t n, std::int32_t c, std::uintptr_t stream) {
  if (n == 0) return;
  softmax_kernel<<<n, kThreads, 0, detail::as_stream(stream)>>>(in, out, c);
  detail::check_launch("softmax_kernel launch");
}

void topk(const float* in, std::int32_t n, std::int32_t c, std::int32_t k, float* values, std::int32_t* indices,
          std::uintptr_t stream) {
  if (n == 0) return;
  topk_kernel<<<n, kThreads, 0, detail::as_stream(stream)>>>(in, c, k, values, indices);
  detail::check_launch("topk_kernel launch");
}

}  // namespace peregrine::cuda
