// Shared by the CUDA kernels (internal to src/cuda): error checks and float keys.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace peregrine::cuda::detail {

[[noreturn]] inline void fail(cudaError_t err, const char* what) {
  throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorName(err) + ": " +
                           cudaGetErrorString(err));
}

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) fail(err, what);
}

// After a launch: configuration errors come back from cudaGetLastError (the error is cleared).
inline void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) fail(err, kernel);
}

inline cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

// Larger value first, NaN after everything, -0 equal to +0 (as detail::orderable on the CPU).
__device__ __forceinline__ std::uint32_t orderable(float value) {
  if (value != value) return 0u;
  const std::uint32_t bits = __float_as_uint(value + 0.0f);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ float from_orderable(std::uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
}

// Descending order of these keys is score desc, then index asc; 0 is never a valid key.
__device__ __forceinline__ std::uint64_t rank_key(float score, std::uint32_t index) {
  return (static_cast<std::uint64_t>(orderable(score)) << 32) | (0xFFFFFFFFu - index);
}

__device__ __forceinline__ std::uint32_t key_index(std::uint64_t key) {
  return 0xFFFFFFFFu - static_cast<std::uint32_t>(key & 0xFFFFFFFFu);
}

__device__ __forceinline__ float key_score(std::uint64_t key) {
  return from_orderable(static_cast<std::uint32_t>(key >> 32));
}

}  // namespace peregrine::cuda::detail
