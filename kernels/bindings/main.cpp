// The module only gathers the op families; each lives in its own binding file.
#include <pybind11/pybind11.h>

#include "peregrine/kernels.hpp"

namespace py = pybind11;

namespace peregrine::bindings {
void bind_preprocess(py::module_& m);
void bind_postprocess(py::module_& m);
void bind_classify(py::module_& m);
void bind_convert(py::module_& m);
void bind_cuda(py::module_& m);
void bind_memory(py::module_& m);
}  // namespace peregrine::bindings

PYBIND11_MODULE(_native, m) {
  m.doc() = "Peregrine native kernels (CPU C++ and, when built with it, CUDA)";
  m.def("has_cuda", [] {
#ifdef PEREGRINE_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "Whether this build contains the CUDA kernels.");
  m.def("hardware_threads", &peregrine::hardware_threads, "Threads the CPU kernels use when num_threads is 0.");
  peregrine::bindings::bind_preprocess(m);
  peregrine::bindings::bind_postprocess(m);
  peregrine::bindings::bind_classify(m);
  peregrine::bindings::bind_convert(m);
  peregrine::bindings::bind_cuda(m);
  peregrine::bindings::bind_memory(m);
}
