// Bindings of raw camera frame conversion (sensor_msgs encodings -> uint8 RGB/BGR).
#include <string>

#include "common.hpp"
#include "peregrine/kernels.hpp"

namespace peregrine::bindings {
namespace {

RawFormat raw_format(int layout, int channels, int sample_bytes, bool big_endian, bool blue_first, int red_x,
                     int red_y) {
  if (layout < 0 || layout > 3) value_error("layout: expected 0 (pixels), 1 (uyvy), 2 (yuyv) or 3 (bayer), got " +
                                            std::to_string(layout));
  if (sample_bytes != 1 && sample_bytes != 2) {
    value_error("sample_bytes: expected 1 or 2, got " + std::to_string(sample_bytes));
  }
  const auto kind = static_cast<RawLayout>(layout);
  if (kind == RawLayout::kPixels && channels != 1 && channels != 3 && channels != 4) {
    value_error("channels: expected 1, 3 or 4, got " + std::to_string(channels));
  }
  if ((kind == RawLayout::kUyvy || kind == RawLayout::kYuyv) && sample_bytes != 1) {
    value_error("sample_bytes: expected 1 for YUV 4:2:2, got " + std::to_string(sample_bytes));
  }
  if (kind == RawLayout::kBayer && (red_x < 0 || red_x > 1 || red_y < 0 || red_y > 1)) {
    value_error("red_x, red_y: expected 0 or 1 each, got " + std::to_string(red_x) + ", " + std::to_string(red_y));
  }
  return RawFormat{kind, channels, sample_bytes, big_endian, blue_first, red_x, red_y};
}

void convert_raw_into(const py::object& out, const Array<std::uint8_t>& data, std::int64_t height,
                      std::int64_t width, std::int64_t step, int layout, int channels, int sample_bytes,
                      bool big_endian, bool blue_first, int red_x, int red_y, bool bgr, int num_threads) {
  check_threads(num_threads);
  const RawFormat format = raw_format(layout, channels, sample_bytes, big_endian, blue_first, red_x, red_y);
  if (height < 1 || width < 1 || height > (1 << 20) || width > (1 << 20)) {
    value_error("height, width: expected 1 .. 2^20 each, got " + std::to_string(height) + ", " +
                std::to_string(width));
  }
  const auto h = static_cast<std::int32_t>(height), w = static_cast<std::int32_t>(width);
  if ((format.layout == RawLayout::kUyvy || format.layout == RawLayout::kYuyv) && w % 2 != 0) {
    value_error("width: expected an even width for YUV 4:2:2 (two pixels share U and V), got " +
                std::to_string(w));
  }
  const std::int64_t row_bytes = raw_row_bytes(format, w);
  if (step < row_bytes) {
    value_error("step: expected at least " + std::to_string(row_bytes) + " bytes per row, got " +
                std::to_string(step));
  }
  if (data.ndim() != 1) value_error("data: expected uint8 [bytes], got " + describe(data));
  const std::int64_t need = step * (h - 1) + row_bytes;
  if (data.shape(0) < need) {
    value_error("data: expected at least " + std::to_string(need) + " bytes (" + std::to_string(h) + " rows of " +
                std::to_string(step) + "), got " + std::to_string(data.shape(0)));
  }
  std::uint8_t* dst = output<std::uint8_t>(out, "out", {height, width, 3}).mutable_data();
  const std::uint8_t* src = data.data();
  py::gil_scoped_release nogil;
  convert_raw_cpu(src, h, w, step, format, bgr, dst, num_threads);
}

}  // namespace

void bind_convert(py::module_& m) {
  m.def("convert_raw_into", &convert_raw_into, py::arg("out"), py::arg("data").noconvert(), py::arg("height"),
        py::arg("width"), py::arg("step"), py::arg("layout"), py::arg("channels"), py::arg("sample_bytes"),
        py::arg("big_endian"), py::arg("blue_first"), py::arg("red_x"), py::arg("red_y"), py::arg("bgr"),
        py::arg("num_threads") = 0,
        "A raw camera frame (uint8 [bytes], rows of `step` bytes) converted into out, uint8 [height, width, 3] "
        "RGB (BGR when bgr); see RawFormat in peregrine/kernels.hpp.");
}

}  // namespace peregrine::bindings
