#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_native, m) {
  m.doc() = "Peregrine native kernels";
  m.def("has_cuda", [] {
#ifdef PEREGRINE_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "Whether this build contains the CUDA kernels.");
}
