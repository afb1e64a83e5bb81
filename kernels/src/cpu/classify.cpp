// Classification post-processing on the CPU: row-wise softmax and top-k.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "parallel.hpp"
#include "peregrine/kernels.hpp"
#include "simd.hpp"

namespace peregrine {

void softmax_cpu(const float* in, float* out, std::int32_t n, std::int32_t c, int num_threads) {
  auto body = [&](std::int64_t row, int) {
    const float* x = in + row * c;
    float* y = out + row * c;
    float m = x[0];
    for (std::int32_t i = 1; i < c; ++i) m = std::max(m, x[i]);
    float sum = 0.0f;
    for (std::int32_t i = 0; i < c; ++i) {
      y[i] = std::exp(x[i] - m);
      sum += y[i];
    }
    const float inv = 1.0f / sum;
    for (std::int32_t i = 0; i < c; ++i) y[i] *= inv;
  };
  detail::parallel_for(n, num_threads, body);
}

void topk_cpu(const float* in, std::int32_t n, std::int32_t c, std::int32_t k, float* values,
              std::int32_t* indices, int num_threads) {
  const int threads = detail::resolve_threads(num_threads, n);
  std::vector<std::vector<std::int32_t>> order(static_cast<std::size_t>(threads),
                                               std::vector<std::int32_t>(static_cast<std::size_t>(c)));
  std::vector<std::vector<std::uint32_t>> keys(static_cast<std::size_t>(threads),
                                               std::vector<std::uint32_t>(static_cast<std::size_t>(c)));
  auto body = [&](std::int64_t row, int worker) {
    const float* x = in + row * c;
    std::vector<std::int32_t>& idx = order[worker];
    std::vector<std::uint32_t>& key = keys[worker];
    for (std::int32_t i = 0; i < c; ++i) key[i] = detail::orderable(x[i]);
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](std::int32_t a, std::int32_t b) {
      return key[a] > key[b] || (key[a] == key[b] && a < b);
    });
    for (std::int32_t i = 0; i < k; ++i) {
      values[row * k + i] = x[idx[i]];
      indices[row * k + i] = idx[i];
    }
  };
  detail::parallel_for(n, threads, body);
}

}  // namespace peregrine
