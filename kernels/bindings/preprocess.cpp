// Bindings of the resize family (letterbox, stretch, center crop all reduce to resize_nchw + placements).
#include <array>
#include <optional>
#include <string>
#include <vector>

#include "common.hpp"
#include "peregrine/kernels.hpp"

namespace peregrine::bindings {
namespace {

struct ResizeArgs {
  std::vector<Frame> frames;
  std::vector<Placement> placements;
  PixelTransform transform{};
};

ResizeArgs read_args(const py::sequence& frames, const Array<std::int32_t>& placements,
                     const std::array<int, 3>& src_channel, const std::array<float, 3>& mul,
                     const std::array<float, 3>& add, const std::array<float, 3>& pad,
                     const std::optional<Array<float>>& lut, const std::array<double, 3>& lut_scale) {
  ResizeArgs args;
  const py::ssize_t n = py::len(frames);
  to_int32(n, "frames");
  check_shape(placements, "placements", {n, 4}, "[len(frames), 4] (resized_w, resized_h, left, top)");
  auto p = placements.unchecked<2>();
  for (py::ssize_t i = 0; i < n; ++i) {
    py::object item = frames[i];
    const std::string name = "frames[" + std::to_string(i) + "]";
    if (!py::isinstance<py::array>(item)) {
      type_error(name + ": expected a numpy.ndarray, got " + type_name(item));
    }
    py::array a = py::reinterpret_borrow<py::array>(item);
    if (!a.dtype().equal(py::dtype::of<std::uint8_t>())) {
      type_error(name + ": expected uint8 [H, W, 3], got " + describe(a));
    }
    if (a.ndim() != 3 || a.shape(2) != 3) value_error(name + ": expected uint8 [H, W, 3], got " + describe(a));
    if (a.shape(0) < 1 || a.shape(1) < 1) value_error(name + ": expected a non-empty frame, got " + describe(a));
    if (a.shape(0) > (1 << 20) || a.shape(1) > (1 << 20)) value_error(name + ": frame too large: " + describe(a));
    // rows may be padded (a crop of a wider buffer); the pixels of a row must be contiguous
    // A dimension of length 1 never uses its stride (NumPy calls such arrays contiguous whatever it is).
    if (a.strides(2) != 1 || (a.shape(1) > 1 && a.strides(1) != 3) ||
        (a.shape(0) > 1 && a.strides(0) < 3 * a.shape(1))) {
      value_error(name + ": expected a C-contiguous array or rows of contiguous pixels (strides [>= 3 * width, 3, " +
                  "1]), got strides [" + std::to_string(a.strides(0)) + ", " + std::to_string(a.strides(1)) + ", " +
                  std::to_string(a.strides(2)) + "]");
    }
    args.frames.push_back(Frame{static_cast<const std::uint8_t*>(a.data()), static_cast<std::int32_t>(a.shape(0)),
                                static_cast<std::int32_t>(a.shape(1)),
                                a.shape(0) > 1 ? static_cast<std::int64_t>(a.strides(0))
                                               : 3 * static_cast<std::int64_t>(a.shape(1))});
    Placement pl{p(i, 0), p(i, 1), p(i, 2), p(i, 3)};
    if (pl.resized_w < 1 || pl.resized_h < 1 || pl.resized_w > (1 << 20) || pl.resized_h > (1 << 20) ||
        pl.left < -(1 << 20) || pl.left > (1 << 20) || pl.top < -(1 << 20) || pl.top > (1 << 20)) {
      value_error("placements[" + std::to_string(i) + "]: expected resized sizes in [1, 2^20] and offsets in " +
                  "[-2^20, 2^20], got (" + std::to_string(pl.resized_w) + ", " + std::to_string(pl.resized_h) +
                  ", " + std::to_string(pl.left) + ", " + std::to_string(pl.top) + ")");
    }
    args.placements.push_back(pl);
  }
  for (int c = 0; c < 3; ++c) {
    if (src_channel[c] < 0 || src_channel[c] > 2) {
      value_error("src_channel: expected three indices in [0, 2], got " + std::to_string(src_channel[c]));
    }
    args.transform.src_channel[c] = src_channel[c];
    args.transform.mul[c] = mul[c];
    args.transform.add[c] = add[c];
    args.transform.pad[c] = pad[c];
    args.transform.lut_scale[c] = lut_scale[c];
  }
  if (lut) {
    check_shape(*lut, "lut", {3, 256}, "[3, 256] (the output value of each uint8 value, per output channel)");
    args.transform.lut = lut->data();
  }
  return args;
}

TensorType tensor_type(const py::dtype& dtype, const char* name) {
  if (dtype.equal(py::dtype::of<float>())) return TensorType::kFloat32;
  if (dtype.equal(py::dtype("float16"))) return TensorType::kFloat16;
  type_error(std::string(name) + ": expected float32 or float16, got " + std::string(py::str(dtype)));
}

void check_out_size(py::ssize_t h, py::ssize_t w) {
  if (h < 1 || w < 1 || h > (1 << 16) || w > (1 << 16)) {
    value_error("size: expected an output height and width in [1, 65536], got " + std::to_string(h) + " x " +
                std::to_string(w));
  }
}

void resize_into(const py::object& out, const py::sequence& frames, const Array<std::int32_t>& placements,
                 const std::array<int, 3>& src_channel, const std::array<float, 3>& mul,
                 const std::array<float, 3>& add, const std::array<float, 3>& pad, const std::string& resize,
                 int num_threads, const std::optional<Array<float>>& lut, const std::array<double, 3>& lut_scale) {
  check_threads(num_threads);
  const ResizeMode mode = resize_mode(resize);
  ResizeArgs args = read_args(frames, placements, src_channel, mul, add, pad, lut, lut_scale);
  if (!py::isinstance<py::array>(out)) {
    type_error("out: expected a numpy.ndarray, got " + type_name(out));
  }
  py::array a = py::reinterpret_borrow<py::array>(out);
  const TensorType type = tensor_type(a.dtype(), "out");
  if (a.ndim() != 4 || a.shape(0) != static_cast<py::ssize_t>(args.frames.size()) || a.shape(1) != 3) {
    value_error("out: expected [len(frames)=" + std::to_string(args.frames.size()) + ", 3, H, W], got " +
                describe(a));
  }
  check_out_size(a.shape(2), a.shape(3));
  py::array checked = output_array(out, "out", a.dtype(), {a.shape(0), 3, a.shape(2), a.shape(3)});
  const auto h = static_cast<std::int32_t>(a.shape(2));
  const auto w = static_cast<std::int32_t>(a.shape(3));
  void* data = checked.mutable_data();
  py::gil_scoped_release nogil;
  resize_nchw_cpu(args.frames.data(), args.placements.data(), static_cast<std::int32_t>(args.frames.size()), h, w,
                  args.transform, mode, type, data, num_threads);
}

py::array resize(const py::sequence& frames, const Array<std::int32_t>& placements, py::ssize_t out_h,
                 py::ssize_t out_w, const std::array<int, 3>& src_channel, const std::array<float, 3>& mul,
                 const std::array<float, 3>& add, const std::array<float, 3>& pad, const py::object& dtype,
                 const std::string& resize, int num_threads, const std::optional<Array<float>>& lut,
                 const std::array<double, 3>& lut_scale) {
  check_out_size(out_h, out_w);
  const py::dtype dt = py::dtype::from_args(dtype);
  tensor_type(dt, "dtype");
  py::array out(dt, std::vector<py::ssize_t>{static_cast<py::ssize_t>(py::len(frames)), 3, out_h, out_w});
  resize_into(out, frames, placements, src_channel, mul, add, pad, resize, num_threads, lut, lut_scale);
  return out;
}

}  // namespace

void bind_preprocess(py::module_& m) {
  m.def("resize_nchw", &resize, py::arg("frames"), py::arg("placements").noconvert(), py::arg("out_h"),
        py::arg("out_w"), py::arg("src_channel"), py::arg("mul"), py::arg("add"), py::arg("pad"),
        py::arg("dtype") = "float32", py::arg("resize") = "linear", py::arg("num_threads") = 0,
        py::arg("lut").noconvert() = py::none(), py::arg("lut_scale") = std::array<double, 3>{},
        R"doc(Resize uint8 HWC frames into one NCHW tensor.

frames: sequence of uint8 [H, W, 3] arrays, each its own size, whose rows are contiguous pixels
    (C-contiguous, or padded rows: strides [>= 3 * W, 3, 1]).
placements: int32 [N, 4] = resized_w, resized_h, left, top of each resized frame in the output (offsets
    may be negative: the frame is cropped); output pixels it does not cover get `pad`.
resize: "linear" (the uint8 bytes of cv2.resize INTER_LINEAR), "area" (of cv2.resize INTER_AREA) or
    "float" (INTER_LINEAR coordinates, blended in float without rounding to uint8).
out[c] = resized[..., src_channel[c]] * mul[c] + add[c] for "float"; for "linear" and "area", with `lut`
(float32 [3, 256]) out[c] = lut[c, v] of the uint8 value v of resized[..., src_channel[c]] (FP16: rounded
from it), without it v * mul[c] + add[c] in float. lut_scale: optional; where lut[c] is v * lut_scale[c]
correctly rounded to float32 for every v (checked), float32 outputs compute it instead of looking it up.
pad is already in output units.
Returns float32 or float16 [N, 3, out_h, out_w]. Raises ValueError/TypeError on bad arguments.)doc");
  m.def("resize_nchw_into", &resize_into, py::arg("out"), py::arg("frames"), py::arg("placements").noconvert(),
        py::arg("src_channel"), py::arg("mul"), py::arg("add"), py::arg("pad"), py::arg("resize") = "linear",
        py::arg("num_threads") = 0, py::arg("lut").noconvert() = py::none(),
        py::arg("lut_scale") = std::array<double, 3>{},
        "resize_nchw writing into out (float32 or float16 [N, 3, H, W], C-contiguous, writeable).");
}

}  // namespace peregrine::bindings
