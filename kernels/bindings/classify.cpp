// Bindings of classification post-processing: softmax and top-k.
#include <string>

#include "common.hpp"
#include "peregrine/kernels.hpp"

namespace peregrine::bindings {
namespace {

void check_logits(const Array<float>& x, const char* name) {
  if (x.ndim() != 2 || x.shape(1) < 1) value_error(std::string(name) + ": expected float32 [N, C] with C >= 1, got " + describe(x));
  to_int32(x.shape(0), name);
  to_int32(x.shape(1), name);
}

void softmax_into(const py::object& out, const Array<float>& logits, int num_threads) {
  check_threads(num_threads);
  check_logits(logits, "logits");
  float* dst = output<float>(out, "out", {logits.shape(0), logits.shape(1)}).mutable_data();
  const auto n = static_cast<std::int32_t>(logits.shape(0)), c = static_cast<std::int32_t>(logits.shape(1));
  py::gil_scoped_release nogil;
  softmax_cpu(logits.data(), dst, n, c, num_threads);
}

Array<float> softmax(const Array<float>& logits, int num_threads) {
  check_logits(logits, "logits");
  Array<float> out({logits.shape(0), logits.shape(1)});
  softmax_into(out, logits, num_threads);
  return out;
}

void topk_into(const py::object& values, const py::object& indices, const Array<float>& x, int k, int num_threads) {
  check_threads(num_threads);
  check_logits(x, "values");
  if (k < 1 || k > x.shape(1)) {
    value_error("k: expected 1 <= k <= C = " + std::to_string(x.shape(1)) + ", got " + std::to_string(k));
  }
  float* v = output<float>(values, "out_values", {x.shape(0), k}).mutable_data();
  std::int32_t* i = output<std::int32_t>(indices, "out_indices", {x.shape(0), k}).mutable_data();
  const auto n = static_cast<std::int32_t>(x.shape(0)), c = static_cast<std::int32_t>(x.shape(1));
  py::gil_scoped_release nogil;
  topk_cpu(x.data(), n, c, k, v, i, num_threads);
}

py::tuple topk(const Array<float>& x, int k, int num_threads) {
  check_logits(x, "values");
  if (k < 1 || k > x.shape(1)) {
    value_error("k: expected 1 <= k <= C = " + std::to_string(x.shape(1)) + ", got " + std::to_string(k));
  }
  Array<float> values({x.shape(0), py::ssize_t{k}});
  Array<std::int32_t> indices({x.shape(0), py::ssize_t{k}});
  topk_into(values, indices, x, k, num_threads);
  return py::make_tuple(values, indices);
}

}  // namespace

void bind_classify(py::module_& m) {
  m.def("softmax", &softmax, py::arg("logits").noconvert(), py::arg("num_threads") = 0,
        "Row-wise softmax of float32 [N, C] (max-subtracted, float32).");
  m.def("softmax_into", &softmax_into, py::arg("out"), py::arg("logits").noconvert(), py::arg("num_threads") = 0,
        "softmax writing into out (may be logits itself).");
  m.def("topk", &topk, py::arg("values").noconvert(), py::arg("k"), py::arg("num_threads") = 0,
        "Row-wise top-k of float32 [N, C] by value desc then index asc (NaN last): (values float32 [N, k], "
        "indices int32 [N, k]).");
  m.def("topk_into", &topk_into, py::arg("out_values"), py::arg("out_indices"), py::arg("values").noconvert(),
        py::arg("k"), py::arg("num_threads") = 0, "topk writing into caller buffers.");
}

}  // namespace peregrine::bindings
