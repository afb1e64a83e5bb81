// The OpenCV-exact resize modes of resize_nchw_cpu (internal to src/cpu): resize.cpp dispatches here for
// ResizeMode::kLinear and kArea.
#pragma once

#include <cstdint>

#include "peregrine/kernels.hpp"

namespace peregrine::detail {

void resize_exact_nchw_cpu(const Frame* frames, const Placement* placements, std::int32_t n, std::int32_t out_h,
                           std::int32_t out_w, const PixelTransform& transform, TensorType type, void* out,
                           bool area, int num_threads);

}  // namespace peregrine::detail
