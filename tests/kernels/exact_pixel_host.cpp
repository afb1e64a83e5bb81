// The CUDA tier's per-pixel resize (opencv::exact_pixel in kernels/src/shared/opencv_resize.hpp, the code
// resize_exact_kernel runs on each output pixel) compiled for the CPU, so that test_kernels_cuda.py can
// compare it with cv2 byte for byte on machines without a GPU. On the device the float steps are
// round-to-nearest intrinsics; here they are plain operators compiled with -ffp-contract=off: the same
// IEEE operations.
#include <cstdint>

#include "opencv_resize.hpp"

extern "C" void exact_resize(const std::uint8_t* data, std::int64_t row_stride, std::int32_t height,
                             std::int32_t width, std::int32_t resized_w, std::int32_t resized_h, std::int32_t area,
                             std::uint8_t* out) {
  const peregrine::opencv::ExactFrame f =
      peregrine::opencv::exact_frame(data, row_stride, height, width, resized_w, resized_h, area != 0);
  for (std::int32_t ry = 0; ry < resized_h; ++ry) {
    for (std::int32_t rx = 0; rx < resized_w; ++rx) {
      std::int32_t v[3];
      peregrine::opencv::exact_pixel(f, rx, ry, v);
      std::uint8_t* p = out + 3 * (static_cast<std::int64_t>(ry) * resized_w + rx);
      for (int c = 0; c < 3; ++c) p[c] = static_cast<std::uint8_t>(v[c]);
    }
  }
}
