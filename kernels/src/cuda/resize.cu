// Fused resize + pad/crop + channel order + normalize + HWC -> NCHW on the GPU.
// One thread per output pixel writes its three planes; frame descriptors travel by value in the launch
// parameters (chunks of kFramesPerLaunch), so nothing is allocated or copied before the launch.
//
// ResizeMode::kLinear / kArea: the uint8 bytes of cv2.resize, with the same integer and float arithmetic as
// the CPU kernels (shared/opencv_resize.hpp; every float step is an explicit round-to-nearest intrinsic,
// so nvcc fuses nothing). Each thread recomputes its own taps: no tables, deterministic. Each byte then
// becomes the caller's float for it (PixelTransform::lut, 3 x 256 floats in device memory, read through
// the read-only cache), the same table the CPU tiers use.
// ResizeMode::kFloat: INTER_LINEAR coordinates, blended in float.
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "../shared/opencv_resize.hpp"
#include "common.cuh"
#include "peregrine/kernels.hpp"

namespace peregrine::cuda {
namespace {

constexpr int kFramesPerLaunch = 32;  // 32 descriptors stay under the 4 KiB parameter limit (static_assert below)

struct FrameDesc {
  opencv::ExactFrame frame;  // the frame, its resized size, OpenCV's scales and algorithm
  std::int32_t left, top;
};

struct FrameChunk {
  FrameDesc frames[kFramesPerLaunch];
};

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }

// Source index pair and weight for one resized coordinate, exactly as the CPU tables.
__device__ __forceinline__ void axis(std::int32_t dst, double scale, std::int32_t src_len, std::int32_t& i0,
                                     std::int32_t& i1, float& weight) {
  float f = static_cast<float>((dst + 0.5) * scale - 0.5);
  const float fl = floorf(f);
  const auto s = static_cast<std::int32_t>(fl);
  weight = f - fl;
  i0 = min(max(s, 0), src_len - 1);
  i1 = min(max(s + 1, 0), src_len - 1);
}

template <class T>
__global__ void __launch_bounds__(256) resize_float_kernel(FrameChunk chunk, PixelTransform t, std::int32_t out_h,
                                                           std::int32_t out_w, T* out) {
  const std::int32_t ox = blockIdx.x * blockDim.x + threadIdx.x;
  const std::int32_t oy = blockIdx.y * blockDim.y + threadIdx.y;
  if (ox >= out_w || oy >= out_h) return;
  const FrameDesc& d = chunk.frames[blockIdx.z];
  const opencv::ExactFrame& f = d.frame;
  const std::int64_t plane = static_cast<std::int64_t>(out_h) * out_w;
  T* dst = out + blockIdx.z * 3 * plane + static_cast<std::int64_t>(oy) * out_w + ox;
  const std::int32_t rx = ox - d.left, ry = oy - d.top;
  if (rx < 0 || rx >= f.resized_w || ry < 0 || ry >= f.resized_h) {
    store(dst, t.pad[0]);
    store(dst + plane, t.pad[1]);
    store(dst + 2 * plane, t.pad[2]);
    return;
  }
  std::int32_t x0, x1, y0, y1;
  float wx, wy;
  axis(rx, f.x.scale, f.width, x0, x1, wx);
  axis(ry, f.y.scale, f.height, y0, y1, wy);
  const std::uint8_t* r0 = f.data + f.row_stride * y0;
  const std::uint8_t* r1 = f.data + f.row_stride * y1;
  float px[3];
  for (int c = 0; c < 3; ++c) {
    // vertical first, then horizontal, like the CPU kernel
    const float a0 = __ldg(r0 + 3 * x0 + c), b0 = __ldg(r1 + 3 * x0 + c);
    const float a1 = __ldg(r0 + 3 * x1 + c), b1 = __ldg(r1 + 3 * x1 + c);
    const float v0 = a0 + wy * (b0 - a0);
    const float v1 = a1 + wy * (b1 - a1);
    px[c] = v0 + wx * (v1 - v0);
  }
  for (int c = 0; c < 3; ++c) {
    const int s = t.src_channel[c];
    const float v = (s == 0 ? px[0] : s == 1 ? px[1] : px[2]) * t.mul[c] + t.add[c];
    store(dst + c * plane, v);
  }
}

template <class T>
__global__ void __launch_bounds__(256) resize_exact_kernel(FrameChunk chunk, PixelTransform t, std::int32_t out_h,
                                                           std::int32_t out_w, T* out) {
  const std::int32_t ox = blockIdx.x * blockDim.x + threadIdx.x;
  const std::int32_t oy = blockIdx.y * blockDim.y + threadIdx.y;
  if (ox >= out_w || oy >= out_h) return;
  const FrameDesc& d = chunk.frames[blockIdx.z];
  const opencv::ExactFrame& f = d.frame;
  const std::int64_t plane = static_cast<std::int64_t>(out_h) * out_w;
  T* dst = out + blockIdx.z * 3 * plane + static_cast<std::int64_t>(oy) * out_w + ox;
  const std::int32_t rx = ox - d.left, ry = oy - d.top;
  if (rx < 0 || rx >= f.resized_w || ry < 0 || ry >= f.resized_h) {
    store(dst, t.pad[0]);
    store(dst + plane, t.pad[1]);
    store(dst + 2 * plane, t.pad[2]);
    return;
  }
  std::int32_t v[3];
  opencv::exact_pixel(f, rx, ry, v);
  for (int c = 0; c < 3; ++c) {
    const int s = t.src_channel[c];
    const std::int32_t value = s == 0 ? v[0] : s == 1 ? v[1] : v[2];
    // the caller's value of this byte (the same table as the CPU tiers), FP16 rounded from it
    const float out = t.lut != nullptr ? __ldg(t.lut + 256 * c + value)
                                       : opencv::fadd(opencv::fmul(static_cast<float>(value), t.mul[c]), t.add[c]);
    store(dst + c * plane, out);
  }
}

template <class T>
void launch(ResizeMode mode, const dim3& grid, const dim3& block, cudaStream_t stream, const FrameChunk& chunk,
            const PixelTransform& t, std::int32_t out_h, std::int32_t out_w, T* out) {
  if (mode == ResizeMode::kFloat) {
    resize_float_kernel<T><<<grid, block, 0, stream>>>(chunk, t, out_h, out_w, out);
  } else {
    resize_exact_kernel<T><<<grid, block, 0, stream>>>(chunk, t, out_h, out_w, out);
  }
}

}  // namespace

void resize_nchw(const Frame* frames, const Placement* placements, std::int32_t n, std::int32_t out_h,
                 std::int32_t out_w, const PixelTransform& transform, ResizeMode mode, TensorType type, void* out,
                 std::uintptr_t stream) {
  static_assert(sizeof(FrameChunk) <= 4000, "frame descriptors must fit in the kernel parameters");
  const std::int64_t frame_elems = 3 * static_cast<std::int64_t>(out_h) * out_w;
  const dim3 block(32, 8);
  for (std::int32_t begin = 0; begin < n; begin += kFramesPerLaunch) {
    const std::int32_t count = std::min(kFramesPerLaunch, n - begin);
    FrameChunk chunk{};
    for (std::int32_t i = 0; i < count; ++i) {
      const Frame& f = frames[begin + i];
      const Placement& p = placements[begin + i];
      chunk.frames[i] = FrameDesc{opencv::exact_frame(f.data, f.row_stride, f.height, f.width, p.resized_w,
                                                      p.resized_h, mode == ResizeMode::kArea),
                                  p.left, p.top};
    }
    const dim3 grid((out_w + block.x - 1) / block.x, (out_h + block.y - 1) / block.y, count);
    if (type == TensorType::kFloat16) {
      launch(mode, grid, block, detail::as_stream(stream), chunk, transform, out_h, out_w,
             static_cast<__half*>(out) + begin * frame_elems);
    } else {
      launch(mode, grid, block, detail::as_stream(stream), chunk, transform, out_h, out_w,
             static_cast<float*>(out) + begin * frame_elems);
    }
    detail::check_launch("resize_nchw kernel launch");
  }
}

}  // namespace peregrine::cuda
