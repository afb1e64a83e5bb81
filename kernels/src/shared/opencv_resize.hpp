// OpenCV's uint8 resize arithmetic (cv::resize on CV_8UC3, INTER_LINEAR and INTER_AREA), written once for
// the CPU kernels (src/cpu/resize_exact.cpp) and the CUDA kernels (src/cuda/resize.cu), so that both give
// the bytes cv2.resize gives. Internal to src/; plain C++17 that nvcc also compiles (PEREGRINE_HD).
//
// What cv2.resize(src, (rw, rh), interpolation) runs for a 3-channel uint8 frame (opencv-python 4.x/5.x
// x86 wheels; IPP is not used for these two modes because its results differ from OpenCV's own):
//   * (rw, rh) == (w, h): a copy.
//   * INTER_LINEAR, both axes exactly halved: the 2x2 box average, (a + b + c + d + 2) >> 2.
//   * INTER_LINEAR otherwise: separable fixed point. Per axis, src = (dst + 0.5) * scale - 0.5 in double,
//     rounded to float; weights round((1 - f) * 2048) and round(f * 2048) (11 bits, half to even).
//     Horizontal first, exact in int32: H = p0 * a0 + p1 * a1, with coordinates outside the frame clamped
//     to the edge pixel with weights (2048, 0). Vertical on two clamped rows with unclamped weights, in
//     the truncating form of OpenCV's SIMD code (which its scalar code copies):
//     v = (((b0 * (H0 >> 4)) >> 16) + ((b1 * (H1 >> 4)) >> 16) + 2) >> 2.
//   * INTER_AREA, scale >= 1 on both axes, both integer (to DBL_EPSILON): box sums; 2x2 rounds as
//     (sum + 2) >> 2, other factors as round_half_even(float(sum) * (1.f / (ix * iy))).
//   * INTER_AREA, scale >= 1 on both axes, not both integer: float weights per source pixel (the cell
//     each output pixel covers), accumulated per source row in order, then per output row:
//     sum = sum + beta * row, rounded half to even and saturated. No fused multiply-adds anywhere.
//   * INTER_AREA with an upscale on either axis: the linear fixed-point path with OpenCV's "area"
//     coordinates: s = floor(d * scale), f = (d + 1) - (s + 1) / scale, f = f <= 0 ? 0 : f - floor(f).
//
// scale is always 1 / (dst / src) computed in double, as OpenCV does (not src / dst).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define PEREGRINE_HD __host__ __device__ __forceinline__
#else
#define PEREGRINE_HD inline
#endif

namespace peregrine::opencv {

// How one frame is resized (chosen on the host from the sizes and the mode).
enum class ResizeKind : std::int32_t {
  kCopy = 0,         // resized size == frame size
  kLinear = 1,       // fixed-point bilinear, INTER_LINEAR coordinates
  kLinearArea = 2,   // fixed-point bilinear, INTER_AREA coordinates (area with an upscale)
  kBox2x2 = 3,       // exact 2x2 box, (sum + 2) >> 2
  kBoxInteger = 4,   // exact integer box, rounded float(sum) * (1 / area)
  kArea = 5,         // fractional area weights in float
};

constexpr int kCoefBits = 11;
constexpr int kCoefOne = 1 << kCoefBits;

// IEEE double/float operations that nvcc may not fuse into multiply-adds (host code is compiled with
// -ffp-contract=off, where these are plain operators).
PEREGRINE_HD double dmul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
PEREGRINE_HD double dadd(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
PEREGRINE_HD double dsub(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
PEREGRINE_HD float fmul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
PEREGRINE_HD float fadd(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
// Round half to even (cvRound under the default rounding mode), for |v| < 2^22 (every use here: weights
// up to 2048, pixel values). On the host: adding and subtracting 1.5 * 2^23 leaves v rounded to an
// integer by the FPU's own round-to-nearest-even; no library call, and loops using it vectorize.
PEREGRINE_HD int round_even(float v) {
#if defined(__CUDA_ARCH__)
  return __float2int_rn(v);
#else
  const float magic = 12582912.0f;  // 1.5 * 2^23
  return static_cast<int>((v + magic) - magic);
#endif
}

// The uint8 OpenCV stores for a float result: round half to even, saturate.
PEREGRINE_HD int saturate_u8(float v) {
  const int r = round_even(v);
  return r < 0 ? 0 : (r > 255 ? 255 : r);
}

// Which algorithm cv2.resize runs. Host only. area: the INTER_AREA mode (else INTER_LINEAR). For kBox*,
// *box_x / *box_y receive the integer factors.
inline ResizeKind choose_kind(std::int32_t src_w, std::int32_t src_h, std::int32_t dst_w, std::int32_t dst_h,
                              bool area, std::int32_t* box_x, std::int32_t* box_y) {
  *box_x = *box_y = 1;
  if (src_w == dst_w && src_h == dst_h) return ResizeKind::kCopy;
  const double scale_x = 1.0 / (static_cast<double>(dst_w) / src_w);
  const double scale_y = 1.0 / (static_cast<double>(dst_h) / src_h);
  const double ix = std::nearbyint(scale_x), iy = std::nearbyint(scale_y);
  const double eps = 2.220446049250313e-16;  // DBL_EPSILON
  const bool integer = std::fabs(scale_x - ix) < eps && std::fabs(scale_y - iy) < eps;
  if (integer && ix == 2 && iy == 2) {
    *box_x = *box_y = 2;
    return ResizeKind::kBox2x2;  // INTER_LINEAR becomes INTER_AREA here, and both take the 2x2 path
  }
  if (!area) return ResizeKind::kLinear;
  if (scale_x >= 1 && scale_y >= 1) {
    if (!integer) return ResizeKind::kArea;
    *box_x = static_cast<std::int32_t>(ix);
    *box_y = static_cast<std::int32_t>(iy);
    return ResizeKind::kBoxInteger;
  }
  return ResizeKind::kLinearArea;
}

// One axis of a resize: OpenCV's inv_scale = dst / src and scale = 1 / inv_scale, both in double.
struct AxisScale {
  double scale;
  double inv_scale;
};

inline AxisScale axis_scale(std::int32_t src_len, std::int32_t dst_len) {
  const double inv_scale = static_cast<double>(dst_len) / src_len;
  return AxisScale{1.0 / inv_scale, inv_scale};
}

// Fixed-point bilinear tap of output coordinate d: first source index *src (the second is *src + 1,
// clamped to the frame by the caller) and weights *w0, *w1. area_coords: INTER_AREA's coordinates (an
// upscale in area mode). clamp: move taps outside the frame onto the edge pixel with weights (2048, 0), as
// OpenCV does horizontally; vertically it keeps the weights and clamps only the rows.
PEREGRINE_HD void linear_tap(std::int32_t d, AxisScale axis, std::int32_t src_len, bool area_coords, bool clamp,
                             std::int32_t* src, std::int32_t* w0, std::int32_t* w1) {
  float f;
  std::int32_t s;
  if (!area_coords) {
    f = static_cast<float>(dsub(dmul(d + 0.5, axis.scale), 0.5));
    s = static_cast<std::int32_t>(floorf(f));
    f -= static_cast<float>(s);
  } else {
    s = static_cast<std::int32_t>(floor(dmul(static_cast<double>(d), axis.scale)));
    f = static_cast<float>(dsub(static_cast<double>(d + 1), dmul(static_cast<double>(s + 1), axis.inv_scale)));
    f = f <= 0.0f ? 0.0f : f - floorf(f);
  }
  if (clamp) {
    if (s < 0) {
      f = 0.0f;
      s = 0;
    }
    if (s >= src_len - 1) {
      f = 0.0f;
      s = src_len - 1;
    }
  }
  *src = s;
  *w0 = round_even((1.0f - f) * static_cast<float>(kCoefOne));
  *w1 = round_even(f * static_cast<float>(kCoefOne));
}

PEREGRINE_HD std::int32_t clamp_index(std::int32_t i, std::int32_t len) { return i < 0 ? 0 : (i >= len ? len - 1 : i); }

// The vertical step: two horizontal sums (H = p0 * a0 + p1 * a1) and the row weights into a uint8 value.
PEREGRINE_HD std::int32_t linear_vertical(std::int32_t h0, std::int32_t h1, std::int32_t b0, std::int32_t b1) {
  return (((b0 * (h0 >> 4)) >> 16) + ((b1 * (h1 >> 4)) >> 16) + 2) >> 2;
}

// The source cell of output coordinate d in INTER_AREA's fractional path: taps first .. first + count - 1
// (consecutive); the first tap weighs w_first when partial, the last w_last when partial, the others w_mid.
struct AreaTaps {
  std::int32_t first;
  std::int32_t count;
  bool first_partial;
  bool last_partial;
  float w_first, w_mid, w_last;
};

PEREGRINE_HD float area_weight(const AreaTaps& t, std::int32_t k) {
  if (k == 0 && t.first_partial) return t.w_first;
  if (k == t.count - 1 && t.last_partial) return t.w_last;
  return t.w_mid;
}

PEREGRINE_HD AreaTaps area_taps(std::int32_t d, double scale, std::int32_t src_len) {
  const double fsx1 = dmul(static_cast<double>(d), scale);
  const double fsx2 = dadd(fsx1, scale);
  const double rest = dsub(static_cast<double>(src_len), fsx1);
  const double cell = scale < rest ? scale : rest;
  std::int32_t sx1 = static_cast<std::int32_t>(ceil(fsx1));
  std::int32_t sx2 = static_cast<std::int32_t>(floor(fsx2));
  sx2 = sx2 < src_len - 1 ? sx2 : src_len - 1;
  sx1 = sx1 < sx2 ? sx1 : sx2;
  AreaTaps t{};
  t.first_partial = dsub(static_cast<double>(sx1), fsx1) > 1e-3;
  t.last_partial = dsub(fsx2, static_cast<double>(sx2)) > 1e-3;
  t.first = t.first_partial ? sx1 - 1 : sx1;
  t.count = (sx2 - sx1) + (t.first_partial ? 1 : 0) + (t.last_partial ? 1 : 0);
  t.w_first = static_cast<float>(dsub(static_cast<double>(sx1), fsx1) / cell);
  t.w_mid = static_cast<float>(1.0 / cell);
  double tail = dsub(fsx2, static_cast<double>(sx2));
  tail = tail < 1.0 ? tail : 1.0;
  tail = tail < cell ? tail : cell;
  t.w_last = static_cast<float>(tail / cell);
  return t;
}

// ------------------------------------------------------------------------------------------------
// One output pixel at a time (the CUDA kernel; tests/kernels compiles the same code for the CPU).
// ------------------------------------------------------------------------------------------------

PEREGRINE_HD std::int32_t load_u8(const std::uint8_t* p) {
#if defined(__CUDA_ARCH__)
  return __ldg(p);
#else
  return *p;
#endif
}

// A frame and what it is resized to, with everything the per-pixel code needs.
struct ExactFrame {
  const std::uint8_t* data;
  std::int64_t row_stride;  // bytes
  std::int32_t height, width;
  std::int32_t resized_w, resized_h;
  AxisScale x, y;
  ResizeKind kind;
  std::int32_t box_x, box_y;
  float inv_area;
};

inline ExactFrame exact_frame(const std::uint8_t* data, std::int64_t row_stride, std::int32_t height,
                              std::int32_t width, std::int32_t resized_w, std::int32_t resized_h, bool area) {
  ExactFrame f{};
  f.data = data;
  f.row_stride = row_stride;
  f.height = height;
  f.width = width;
  f.resized_w = resized_w;
  f.resized_h = resized_h;
  f.x = axis_scale(width, resized_w);
  f.y = axis_scale(height, resized_h);
  f.kind = choose_kind(width, height, resized_w, resized_h, area, &f.box_x, &f.box_y);
  f.inv_area = 1.0f / static_cast<float>(f.box_x * f.box_y);
  return f;
}

// The uint8 values cv2.resize gives at resized pixel (rx, ry), in the frame's channel order.
PEREGRINE_HD void exact_pixel(const ExactFrame& f, std::int32_t rx, std::int32_t ry, std::int32_t v[3]) {
  switch (f.kind) {
    case ResizeKind::kCopy: {
      const std::uint8_t* p = f.data + f.row_stride * ry + 3 * rx;
      for (int c = 0; c < 3; ++c) v[c] = load_u8(p + c);
      return;
    }
    case ResizeKind::kLinear:
    case ResizeKind::kLinearArea: {
      const bool area_coords = f.kind == ResizeKind::kLinearArea;
      std::int32_t sx, a0, a1, sy, b0, b1;
      linear_tap(rx, f.x, f.width, area_coords, true, &sx, &a0, &a1);
      linear_tap(ry, f.y, f.height, area_coords, false, &sy, &b0, &b1);
      const std::int32_t x0 = 3 * sx, x1 = 3 * (sx + 1 < f.width ? sx + 1 : f.width - 1);
      const std::uint8_t* r0 = f.data + f.row_stride * clamp_index(sy, f.height);
      const std::uint8_t* r1 = f.data + f.row_stride * clamp_index(sy + 1, f.height);
      for (int c = 0; c < 3; ++c) {
        const std::int32_t h0 = load_u8(r0 + x0 + c) * a0 + load_u8(r0 + x1 + c) * a1;
        const std::int32_t h1 = load_u8(r1 + x0 + c) * a0 + load_u8(r1 + x1 + c) * a1;
        v[c] = linear_vertical(h0, h1, b0, b1);
      }
      return;
    }
    case ResizeKind::kBox2x2:
    case ResizeKind::kBoxInteger: {
      std::int32_t sum[3] = {0, 0, 0};
      for (std::int32_t j = 0; j < f.box_y; ++j) {
        const std::uint8_t* p = f.data + f.row_stride * (ry * f.box_y + j) + 3 * rx * f.box_x;
        for (std::int32_t i = 0; i < 3 * f.box_x; i += 3) {
          for (int c = 0; c < 3; ++c) sum[c] += load_u8(p + i + c);
        }
      }
      for (int c = 0; c < 3; ++c) {
        v[c] = f.kind == ResizeKind::kBox2x2 ? (sum[c] + 2) >> 2
                                            : saturate_u8(fmul(static_cast<float>(sum[c]), f.inv_area));
      }
      return;
    }
    case ResizeKind::kArea: {
      const AreaTaps xt = area_taps(rx, f.x.scale, f.width);
      const AreaTaps yt = area_taps(ry, f.y.scale, f.height);
      float acc[3] = {0.0f, 0.0f, 0.0f};
      for (std::int32_t j = 0; j < yt.count; ++j) {
        const float beta = area_weight(yt, j);
        const std::uint8_t* p = f.data + f.row_stride * (yt.first + j) + 3 * xt.first;
        float buf[3] = {0.0f, 0.0f, 0.0f};
        for (std::int32_t i = 0; i < xt.count; ++i) {
          const float alpha = area_weight(xt, i);
          for (int c = 0; c < 3; ++c) buf[c] = fadd(buf[c], fmul(static_cast<float>(load_u8(p + 3 * i + c)), alpha));
        }
        for (int c = 0; c < 3; ++c) acc[c] = fadd(acc[c], fmul(beta, buf[c]));
      }
      for (int c = 0; c < 3; ++c) v[c] = saturate_u8(acc[c]);
      return;
    }
  }
}

}  // namespace peregrine::opencv
