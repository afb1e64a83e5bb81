// Fused resize + pad/crop + channel order + normalize + HWC -> NCHW. This file holds the float blend
// (ResizeMode::kFloat: OpenCV INTER_LINEAR coordinates, no rounding to uint8) and the dispatch; the
// OpenCV-exact modes are in resize_exact.cpp.
//
// Each output row is made in two passes over a per-thread row of floats: a vertical blend of the two
// source rows it needs (contiguous, vectorizes) and a horizontal blend with precomputed per-column offsets
// and weights that writes the three output planes directly. Nothing is written twice and nothing is
// allocated inside the loops.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "parallel.hpp"
#include "peregrine/kernels.hpp"
#include "resize_exact.hpp"
#include "simd.hpp"

namespace peregrine {
namespace {

// Per-axis tables of one frame, for the output positions covered by the resized frame.
struct Axis {
  std::int32_t begin = 0;  // first covered output position
  std::int32_t end = 0;    // one past the last covered output position
  std::int32_t src_min = 0;
  std::int32_t src_max = 0;
  std::vector<std::int32_t> i0, i1;  // source indices (clamped)
  std::vector<float> weight;         // weight of i1
};

// OpenCV's cv::resize INTER_LINEAR coordinate mapping: src = (dst + 0.5) * scale - 0.5 computed in double
// and rounded to float, the fraction taken after floor, indices clamped to the border.
void build_axis(std::int32_t src_len, std::int32_t resized_len, std::int32_t offset, std::int32_t out_len,
                Axis& axis) {
  axis.begin = std::max(0, offset);
  axis.end = std::min(out_len, offset + resized_len);
  axis.i0.clear();
  axis.i1.clear();
  axis.weight.clear();
  if (axis.end <= axis.begin) return;
  const double scale = 1.0 / (static_cast<double>(resized_len) / src_len);
  for (std::int32_t pos = axis.begin; pos < axis.end; ++pos) {
    const std::int32_t dst = pos - offset;
    float f = static_cast<float>((dst + 0.5) * scale - 0.5);
    const std::int32_t s = static_cast<std::int32_t>(std::floor(f));
    f -= static_cast<float>(s);
    axis.i0.push_back(std::clamp(s, 0, src_len - 1));
    axis.i1.push_back(std::clamp(s + 1, 0, src_len - 1));
    axis.weight.push_back(f);
  }
  axis.src_min = axis.i0.front();
  axis.src_max = axis.i1.back();
}

struct FramePlan {
  Frame frame;
  Axis x, y;
  std::vector<std::int32_t> x_off0, x_off1;  // offsets into the row buffer (3 * (i - src_min))
  std::int32_t top = 0;
};

PEREGRINE_CLONES
void blend_rows(const std::uint8_t* __restrict r0, const std::uint8_t* __restrict r1, float w,
                float* __restrict row, std::int32_t len) {
  for (std::int32_t i = 0; i < len; ++i) {
    const float a = r0[i];
    const float b = r1[i];
    row[i] = a + w * (b - a);
  }
}

// The horizontal pass for one output row: out_c[k] = lerp(row[o0[k] + s_c], row[o1[k] + s_c], w[k]).
PEREGRINE_CLONES
void blend_columns_f32(const float* __restrict row, const std::int32_t* __restrict o0,
                       const std::int32_t* __restrict o1, const float* __restrict w, std::int32_t count,
                       const PixelTransform& t, float* __restrict d0, float* __restrict d1,
                       float* __restrict d2) {
  const std::int32_t s0 = t.src_channel[0], s1 = t.src_channel[1], s2 = t.src_channel[2];
  const float m0 = t.mul[0], m1 = t.mul[1], m2 = t.mul[2];
  const float a0 = t.add[0], a1 = t.add[1], a2 = t.add[2];
  for (std::int32_t k = 0; k < count; ++k) {
    const float* p = row + o0[k];
    const float* q = row + o1[k];
    const float wk = w[k];
    d0[k] = (p[s0] + wk * (q[s0] - p[s0])) * m0 + a0;
    d1[k] = (p[s1] + wk * (q[s1] - p[s1])) * m1 + a1;
    d2[k] = (p[s2] + wk * (q[s2] - p[s2])) * m2 + a2;
  }
}

PEREGRINE_CLONES
void blend_columns_f16(const float* __restrict row, const std::int32_t* __restrict o0,
                       const std::int32_t* __restrict o1, const float* __restrict w, std::int32_t count,
                       const PixelTransform& t, std::uint16_t* __restrict d0, std::uint16_t* __restrict d1,
                       std::uint16_t* __restrict d2) {
  const std::int32_t s0 = t.src_channel[0], s1 = t.src_channel[1], s2 = t.src_channel[2];
  const float m0 = t.mul[0], m1 = t.mul[1], m2 = t.mul[2];
  const float a0 = t.add[0], a1 = t.add[1], a2 = t.add[2];
  for (std::int32_t k = 0; k < count; ++k) {
    const float* p = row + o0[k];
    const float* q = row + o1[k];
    const float wk = w[k];
    d0[k] = detail::float_to_half((p[s0] + wk * (q[s0] - p[s0])) * m0 + a0);
    d1[k] = detail::float_to_half((p[s1] + wk * (q[s1] - p[s1])) * m1 + a1);
    d2[k] = detail::float_to_half((p[s2] + wk * (q[s2] - p[s2])) * m2 + a2);
  }
}

template <class T>
struct Store;

template <>
struct Store<float> {
  static float convert(float v) { return v; }
  static void columns(const float* row, const FramePlan& plan, const PixelTransform& t, float* d0, float* d1,
                      float* d2) {
    blend_columns_f32(row, plan.x_off0.data(), plan.x_off1.data(), plan.x.weight.data(),
                      plan.x.end - plan.x.begin, t, d0, d1, d2);
  }
};

template <>
struct Store<std::uint16_t> {
  static std::uint16_t convert(float v) { return detail::float_to_half(v); }
  static void columns(const float* row, const FramePlan& plan, const PixelTransform& t, std::uint16_t* d0,
                      std::uint16_t* d1, std::uint16_t* d2) {
    blend_columns_f16(row, plan.x_off0.data(), plan.x_off1.data(), plan.x.weight.data(),
                      plan.x.end - plan.x.begin, t, d0, d1, d2);
  }
};

template <class T>
void fill(T* dst, std::int32_t count, T value) {
  std::fill(dst, dst + count, value);
}

template <class T>
void make_rows(const FramePlan& plan, std::int32_t row_begin, std::int32_t row_end, std::int32_t out_h,
               std::int32_t out_w, const PixelTransform& t, T* out_frame, float* row) {
  const std::int64_t plane = static_cast<std::int64_t>(out_h) * out_w;
  const T pad[3] = {Store<T>::convert(t.pad[0]), Store<T>::convert(t.pad[1]), Store<T>::convert(t.pad[2])};
  const Axis& x = plan.x;
  const Axis& y = plan.y;
  const std::int32_t row_len = 3 * (x.src_max - x.src_min + 1);
  for (std::int32_t oy = row_begin; oy < row_end; ++oy) {
    T* dst[3];
    for (int c = 0; c < 3; ++c) dst[c] = out_frame + c * plane + static_cast<std::int64_t>(oy) * out_w;
    if (oy < y.begin || oy >= y.end || x.end <= x.begin) {
      for (int c = 0; c < 3; ++c) fill(dst[c], out_w, pad[c]);
      continue;
    }
    for (int c = 0; c < 3; ++c) {
      fill(dst[c], x.begin, pad[c]);
      fill(dst[c] + x.end, out_w - x.end, pad[c]);
    }
    const std::int32_t k = oy - y.begin;
    const std::uint8_t* base = plan.frame.data + 3 * static_cast<std::int64_t>(x.src_min);
    const std::uint8_t* r0 = base + plan.frame.row_stride * y.i0[k];
    const std::uint8_t* r1 = base + plan.frame.row_stride * y.i1[k];
    blend_rows(r0, r1, y.weight[k], row, row_len);
    Store<T>::columns(row, plan, t, dst[0] + x.begin, dst[1] + x.begin, dst[2] + x.begin);
  }
}

constexpr std::int32_t kRowsPerTask = 16;

template <class T>
void run(const std::vector<FramePlan>& plans, std::int32_t out_h, std::int32_t out_w, const PixelTransform& t,
         T* out, int num_threads) {
  const std::int64_t tasks_per_frame = (out_h + kRowsPerTask - 1) / kRowsPerTask;
  const std::int64_t n_tasks = tasks_per_frame * static_cast<std::int64_t>(plans.size());
  const int threads = detail::resolve_threads(num_threads, n_tasks);
  std::int32_t max_row = 0;
  for (const FramePlan& plan : plans) max_row = std::max(max_row, 3 * (plan.x.src_max - plan.x.src_min + 1));
  const std::int64_t row_stride = (max_row + 15) / 16 * 16;
  std::vector<float> rows(static_cast<std::size_t>(row_stride * threads));
  const std::int64_t frame_elems = 3 * static_cast<std::int64_t>(out_h) * out_w;
  auto body = [&](std::int64_t task, int worker) {
    const std::int64_t f = task / tasks_per_frame;
    const std::int32_t row_begin = static_cast<std::int32_t>(task % tasks_per_frame) * kRowsPerTask;
    const std::int32_t row_end = std::min(out_h, row_begin + kRowsPerTask);
    make_rows(plans[f], row_begin, row_end, out_h, out_w, t, out + f * frame_elems,
              rows.data() + worker * row_stride);
  };
  detail::parallel_for(n_tasks, threads, body);
}

}  // namespace

void resize_nchw_cpu(const Frame* frames, const Placement* placements, std::int32_t n, std::int32_t out_h,
                     std::int32_t out_w, const PixelTransform& transform, ResizeMode mode, TensorType type,
                     void* out, int num_threads) {
  if (mode != ResizeMode::kFloat) {
    detail::resize_exact_nchw_cpu(frames, placements, n, out_h, out_w, transform, type, out,
                                  mode == ResizeMode::kArea, num_threads);
    return;
  }
  std::vector<FramePlan> plans(static_cast<std::size_t>(n));
  for (std::int32_t i = 0; i < n; ++i) {
    FramePlan& plan = plans[i];
    const Placement& p = placements[i];
    plan.frame = frames[i];
    build_axis(frames[i].width, p.resized_w, p.left, out_w, plan.x);
    build_axis(frames[i].height, p.resized_h, p.top, out_h, plan.y);
    plan.x_off0.resize(plan.x.i0.size());
    plan.x_off1.resize(plan.x.i1.size());
    for (std::size_t k = 0; k < plan.x.i0.size(); ++k) {
      plan.x_off0[k] = 3 * (plan.x.i0[k] - plan.x.src_min);
      plan.x_off1[k] = 3 * (plan.x.i1[k] - plan.x.src_min);
    }
  }
  if (type == TensorType::kFloat16) {
    run(plans, out_h, out_w, transform, static_cast<std::uint16_t*>(out), num_threads);
  } else {
    run(plans, out_h, out_w, transform, static_cast<float*>(out), num_threads);
  }
}

}  // namespace peregrine
