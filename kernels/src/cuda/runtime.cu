// Device queries. The runtime is linked statically and loads the driver lazily, so these work (and say
// "no device") on machines without a driver.
#include "common.cuh"
#include "peregrine/kernels.hpp"

namespace peregrine::cuda {

int device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return 0;
  }
  return count;
}

int max_shared_memory_per_block() {
  int device = 0;
  detail::check(cudaGetDevice(&device), "cudaGetDevice");
  int bytes = 0;
  detail::check(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
                "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
  return bytes;
}

}  // namespace peregrine::cuda
