// Bindings of the CUDA kernels: device buffers arrive as integer pointers (read from
// __cuda_array_interface__ by the Python layer) plus a stream handle; nothing is allocated here.
#include "common.hpp"
#include "peregrine/kernels.hpp"

namespace peregrine::bindings {

void bind_cuda(py::module_& m) {
  m.def("cuda_device_count", [] {
#ifdef PEREGRINE_WITH_CUDA
    return cuda::device_count();
#else
    return 0;
#endif
  }, "Number of CUDA devices usable by this build; 0 without CUDA, a driver or a device (never raises).");
}

}  // namespace peregrine::bindings
