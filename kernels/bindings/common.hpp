// Argument checks shared by the binding files: every message names the argument, what was expected and
// what came.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "peregrine/kernels.hpp"

namespace peregrine::bindings {

namespace py = pybind11;

template <class T>
using Array = py::array_t<T, py::array::c_style>;

// Messages are built with std::string only: no iostreams (with hidden visibility GCC 13 builds can carry
// their own, never initialised copy of the locale facets and crash inside operator<<).
inline std::string join(const std::vector<py::ssize_t>& dims) {
  std::string s = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

inline std::string shape_of(const py::array& a) {
  return join(std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim()));
}

inline std::string describe(const py::array& a) {
  return std::string(py::str(a.dtype())) + " " + shape_of(a);
}

inline std::string type_name(const py::handle& obj) {
  return std::string(py::str(py::type::handle_of(obj).attr("__name__")));
}

[[noreturn]] inline void value_error(const std::string& message) { throw py::value_error(message); }
[[noreturn]] inline void type_error(const std::string& message) { throw py::type_error(message); }

// Expected shape with -1 as "any"; names the argument and the expectation in the error.
inline void check_shape(const py::array& a, const char* name, std::initializer_list<py::ssize_t> expected,
                        const char* expected_text) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(expected.size());
  py::ssize_t i = 0;
  for (py::ssize_t e : expected) {
    if (ok && e >= 0 && a.shape(i) != e) ok = false;
    ++i;
  }
  if (!ok) value_error(std::string(name) + ": expected shape " + expected_text + ", got " + describe(a));
}

inline std::int32_t to_int32(py::ssize_t value, const char* what) {
  if (value < 0 || value > std::numeric_limits<std::int32_t>::max()) {
    value_error(std::string(what) + ": size " + std::to_string(value) + " does not fit in int32");
  }
  return static_cast<std::int32_t>(value);
}

inline void check_threads(int num_threads) {
  if (num_threads < 0) value_error("num_threads: expected >= 0 (0 = all cores), got " + std::to_string(num_threads));
}

inline void check_unit(float value, const char* name) {
  if (!(value >= 0.0f && value <= 1.0f)) {
    value_error(std::string(name) + ": expected a value in [0, 1], got " + std::to_string(value));
  }
}

// The resize family's `resize` argument.
inline ResizeMode resize_mode(const std::string& name) {
  if (name == "linear") return ResizeMode::kLinear;
  if (name == "area") return ResizeMode::kArea;
  if (name == "float") return ResizeMode::kFloat;
  value_error("resize: expected 'linear', 'area' or 'float', got '" + name + "'");
}

// A caller's output buffer: a writeable, C-contiguous ndarray of exactly this dtype and shape. Never
// converted (a converted copy would take the writes and be thrown away).
inline py::array output_array(const py::object& obj, const char* name, const py::dtype& dtype,
                              const std::vector<py::ssize_t>& shape) {
  if (!py::isinstance<py::array>(obj)) {
    type_error(std::string(name) + ": expected a numpy.ndarray, got " + type_name(obj));
  }
  py::array a = py::reinterpret_borrow<py::array>(obj);
  const std::string want = std::string(py::str(dtype)) + " " + join(shape);
  if (!a.dtype().equal(dtype)) type_error(std::string(name) + ": expected " + want + ", got " + describe(a));
  bool same = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (std::size_t i = 0; same && i < shape.size(); ++i) same = a.shape(i) == shape[i];
  if (!same) value_error(std::string(name) + ": expected " + want + ", got " + describe(a));
  if (!(a.flags() & py::array::c_style)) value_error(std::string(name) + ": expected a C-contiguous array");
  if (!a.writeable()) value_error(std::string(name) + ": expected a writeable array");
  return a;
}

template <class T>
Array<T> output(const py::object& obj, const char* name, const std::vector<py::ssize_t>& shape) {
  return py::reinterpret_borrow<Array<T>>(output_array(obj, name, py::dtype::of<T>(), shape));
}

}  // namespace peregrine::bindings
