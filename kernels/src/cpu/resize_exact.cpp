// cv2.resize on the uint8 frame, byte for byte (INTER_LINEAR or INTER_AREA, see shared/opencv_resize.hpp),
// fused with pad/crop + channel order + scale/normalize + HWC -> NCHW float32/float16.
//
// Nothing is resized into a uint8 image first: each output row is made from per-thread rows that stay in
// L1/L2. Bilinear: the horizontal pass runs once per source row (two rows cached per thread) into three
// planar int32 rows, and the vertical pass rounds and converts straight into the three output planes.
// Box and area modes make one planar uint8 row per output row and convert it. Each uint8 value becomes the
// caller's float for it (PixelTransform::lut; see Channel). Exact arithmetic needs no implicit fused
// multiply-adds in the float parts (area weights, the v * mul + add fallback): this file is compiled with
// -ffp-contract=off; the one fma it uses is written out.
#include "resize_exact.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../shared/opencv_resize.hpp"
#include "parallel.hpp"
#include "simd.hpp"

#if defined(__GNUC__)
#define PEREGRINE_INLINE inline __attribute__((always_inline))
#else
#define PEREGRINE_INLINE inline
#endif

// The horizontal bilinear pass gathers pixel pairs at table offsets, which compilers do not vectorize; it
// has an AVX2 version written with intrinsics, picked at run time like the clones.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(PEREGRINE_NO_CLONES)
#define PEREGRINE_AVX2_HORIZONTAL 1
#include <immintrin.h>
#endif

namespace peregrine::detail {
namespace {

using opencv::ResizeKind;

// One frame: which algorithm, where it lands, and its per-axis tables for the covered output positions.
struct Plan {
  Frame frame{};
  ResizeKind kind = ResizeKind::kCopy;
  std::int32_t x_begin = 0, x_end = 0, y_begin = 0, y_end = 0;  // covered output columns / rows
  std::int32_t left = 0, top = 0;                                // output position of resized (0, 0)
  std::int32_t box_x = 1, box_y = 1;
  float inv_area = 1.0f;
  // bilinear: byte offsets of both taps in a source row and their 11-bit weights, per covered column;
  // source rows and weights per covered row
  std::vector<std::int32_t> x_off0, x_off1, x_w0, x_w1;
  std::vector<std::int16_t> x_pairs;  // per column int16 [w0, w1, w0, w1, w0, w1, 0, 0] (pmaddwd weights)
  std::int32_t x_simd = 0;            // leading columns whose 8-byte load at x_off0 stays inside the row
  std::vector<std::int32_t> y_row0, y_row1, y_w0, y_w1;
  // fractional area: the source cell of every covered column / row
  std::vector<opencv::AreaTaps> x_area, y_area;

  std::int32_t cols() const { return x_end - x_begin; }
  bool empty() const { return x_end <= x_begin || y_end <= y_begin; }
};

Plan make_plan(const Frame& frame, const Placement& p, std::int32_t out_h, std::int32_t out_w, bool area) {
  Plan plan;
  plan.frame = frame;
  plan.left = p.left;
  plan.top = p.top;
  plan.x_begin = std::max(0, p.left);
  plan.x_end = std::min(out_w, p.left + p.resized_w);
  plan.y_begin = std::max(0, p.top);
  plan.y_end = std::min(out_h, p.top + p.resized_h);
  if (plan.empty()) return plan;
  plan.kind = opencv::choose_kind(frame.width, frame.height, p.resized_w, p.resized_h, area, &plan.box_x,
                                  &plan.box_y);
  plan.inv_area = 1.0f / static_cast<float>(plan.box_x * plan.box_y);
  const std::int32_t cols = plan.cols(), rows = plan.y_end - plan.y_begin;
  if (plan.kind == ResizeKind::kLinear || plan.kind == ResizeKind::kLinearArea) {
    const bool area_coords = plan.kind == ResizeKind::kLinearArea;
    const opencv::AxisScale ax = opencv::axis_scale(frame.width, p.resized_w);
    const opencv::AxisScale ay = opencv::axis_scale(frame.height, p.resized_h);
    plan.x_off0.resize(cols);
    plan.x_off1.resize(cols);
    plan.x_w0.resize(cols);
    plan.x_w1.resize(cols);
    for (std::int32_t k = 0; k < cols; ++k) {
      std::int32_t s, w0, w1;
      opencv::linear_tap(plan.x_begin + k - p.left, ax, frame.width, area_coords, true, &s, &w0, &w1);
      plan.x_off0[k] = 3 * s;
      plan.x_off1[k] = 3 * std::min(s + 1, frame.width - 1);
      plan.x_w0[k] = w0;
      plan.x_w1[k] = w1;
    }
    // Offsets never decrease; a column whose 8 bytes at x_off0 lie inside the row has its second tap at
    // x_off0 + 3 (or weight 0 there), which is what the SIMD pass reads.
    while (plan.x_simd < cols && plan.x_off0[plan.x_simd] + 8 <= 3 * frame.width) ++plan.x_simd;
    plan.x_simd -= plan.x_simd % 8;
    plan.x_pairs.assign(static_cast<std::size_t>(8) * plan.x_simd, 0);
    for (std::int32_t k = 0; k < plan.x_simd; ++k) {
      for (int c = 0; c < 3; ++c) {
        plan.x_pairs[8 * k + 2 * c] = static_cast<std::int16_t>(plan.x_w0[k]);
        plan.x_pairs[8 * k + 2 * c + 1] = static_cast<std::int16_t>(plan.x_w1[k]);
      }
    }
    plan.y_row0.resize(rows);
    plan.y_row1.resize(rows);
    plan.y_w0.resize(rows);
    plan.y_w1.resize(rows);
    for (std::int32_t k = 0; k < rows; ++k) {
      std::int32_t s, w0, w1;
      opencv::linear_tap(plan.y_begin + k - p.top, ay, frame.height, area_coords, false, &s, &w0, &w1);
      plan.y_row0[k] = opencv::clamp_index(s, frame.height);
      plan.y_row1[k] = opencv::clamp_index(s + 1, frame.height);
      plan.y_w0[k] = w0;
      plan.y_w1[k] = w1;
    }
  } else if (plan.kind == ResizeKind::kArea) {
    const double sx = opencv::axis_scale(frame.width, p.resized_w).scale;
    const double sy = opencv::axis_scale(frame.height, p.resized_h).scale;
    plan.x_area.resize(cols);
    plan.y_area.resize(rows);
    for (std::int32_t k = 0; k < cols; ++k) plan.x_area[k] = opencv::area_taps(plan.x_begin + k - p.left, sx, frame.width);
    for (std::int32_t k = 0; k < rows; ++k) plan.y_area[k] = opencv::area_taps(plan.y_begin + k - p.top, sy, frame.height);
  }
  return plan;
}

// ------------------------------------------------------------------------------------------------
// Hot loops. Each is compiled for x86-64-v3 and the baseline (PEREGRINE_CLONES); the bodies are shared
// inline templates so the float32 and float16 versions stay one piece of code.
// ------------------------------------------------------------------------------------------------

PEREGRINE_INLINE float to_out(float v, float*) { return v; }
PEREGRINE_INLINE std::uint16_t to_out(float v, std::uint16_t*) { return float_to_half(v); }

// One output plane's recipe: its source channel, the output value of each of the 256 uint8 values (the
// caller's table, PixelTransform::lut; FP16 rounded from it) and the pad value.
//
// Looking values up does not vectorize (x86 gathers are slow): the values of a run of pixels are computed
// vectorized, then looked up one by one. Where the table is a pure scaling of float32 output (the default:
// scale 1/255, no mean/std), `scaled` is set and the loops compute instead: fma(v, hi, v * lo) with
// hi + lo = PixelTransform::lut_scale, the correctly rounded product for every v here (checked against the
// table, once per call), as fast as v * mul + add. Only where FMA is in hardware (the x86-64-v3 clones).
template <class T>
struct Channel {
  std::int32_t src;
  bool scaled;
  float hi, lo;
  T lut[256];
  T pad;
};

template <class T>
struct Output {
  Channel<T> channel[3];
};

PEREGRINE_INLINE float scaled_value(std::int32_t v, float hi, float lo) {
  const float x = static_cast<float>(v);
  return __builtin_fmaf(x, hi, x * lo);
}

bool has_fma_clones() {
#if defined(PEREGRINE_CLONES_ACTIVE)
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("x86-64-v3") != 0;  // what the clones' resolver picks
  }();
  return yes;
#else
  return false;
#endif
}

template <class T>
Output<T> make_output(const PixelTransform& t) {
  Output<T> o{};
  for (int c = 0; c < 3; ++c) {
    Channel<T>& ch = o.channel[c];
    ch.src = t.src_channel[c];
    const double scale = t.lut_scale[c];
    const bool usable = std::fabs(scale) <= 1e30;  // finite, and hi, lo finite floats
    ch.hi = usable ? static_cast<float>(scale) : 0.0f;
    ch.lo = usable ? static_cast<float>(scale - static_cast<double>(ch.hi)) : 0.0f;
    // FP16: the table (a half per value looked up beats float_to_half per value)
    ch.scaled = usable && std::is_same_v<T, float> && has_fma_clones();
    for (int v = 0; v < 256; ++v) {
      const float value = t.lut != nullptr ? t.lut[256 * c + v] : static_cast<float>(v) * t.mul[c] + t.add[c];
      ch.lut[v] = to_out(value, static_cast<T*>(nullptr));
      ch.scaled = ch.scaled && float_bits(scaled_value(v, ch.hi, ch.lo)) == float_bits(value);
    }
    ch.pad = to_out(t.pad[c], static_cast<T*>(nullptr));
  }
  return o;
}

// The horizontal pass of one source row into three planar int32 rows (source channel order), columns
// [begin, n).
void horizontal_linear_scalar(const std::uint8_t* __restrict row, const std::int32_t* __restrict o0,
                              const std::int32_t* __restrict o1, const std::int32_t* __restrict w0,
                              const std::int32_t* __restrict w1, std::int32_t begin, std::int32_t n,
                              std::int32_t* __restrict h0, std::int32_t* __restrict h1, std::int32_t* __restrict h2) {
  for (std::int32_t k = begin; k < n; ++k) {
    const std::uint8_t* p = row + o0[k];
    const std::uint8_t* q = row + o1[k];
    const std::int32_t a = w0[k], b = w1[k];
    h0[k] = p[0] * a + q[0] * b;
    h1[k] = p[1] * a + q[1] * b;
    h2[k] = p[2] * a + q[2] * b;
  }
}

#ifdef PEREGRINE_AVX2_HORIZONTAL
// Columns [0, n), n a multiple of 8, each with its two taps in the 8 bytes at row + o0[k]. Per column
// one pmaddwd gives (p0 * w0 + p1 * w1) for the three channels; four registers of two columns each are
// transposed into eight columns of each channel.
// Columns i and j: [H0 H1 H2 0] of column i in the low lane, of column j in the high lane.
__attribute__((target("avx2"), always_inline)) inline __m256i two_columns(const std::uint8_t* row,
                                                                         const std::int32_t* o0,
                                                                         const std::int16_t* pairs, std::int32_t i,
                                                                         std::int32_t j, __m256i spread) {
  const __m128i a = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + o0[i]));
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + o0[j]));
  const __m256i px = _mm256_shuffle_epi8(_mm256_inserti128_si256(_mm256_castsi128_si256(a), b, 1), spread);
  const __m128i wa = _mm_loadu_si128(reinterpret_cast<const __m128i*>(pairs + 8 * i));
  const __m128i wb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(pairs + 8 * j));
  return _mm256_madd_epi16(px, _mm256_inserti128_si256(_mm256_castsi128_si256(wa), wb, 1));
}

__attribute__((target("avx2"))) void horizontal_linear_avx2(const std::uint8_t* row, const std::int32_t* o0,
                                                            const std::int16_t* pairs, std::int32_t n,
                                                            std::int32_t* h0, std::int32_t* h1, std::int32_t* h2) {
  // bytes [c0 c1 c2 d0 d1 d2 . .] -> int16 [c0 d0 c1 d1 c2 d2 0 0] (c: first tap, d: second)
  const __m256i spread = _mm256_setr_epi8(0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1,  //
                                          0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1);
  for (std::int32_t k = 0; k < n; k += 8) {
    const __m256i r0 = two_columns(row, o0, pairs, k, k + 4, spread);
    const __m256i r1 = two_columns(row, o0, pairs, k + 1, k + 5, spread);
    const __m256i r2 = two_columns(row, o0, pairs, k + 2, k + 6, spread);
    const __m256i r3 = two_columns(row, o0, pairs, k + 3, k + 7, spread);
    const __m256i t0 = _mm256_unpacklo_epi32(r0, r1), t1 = _mm256_unpacklo_epi32(r2, r3);
    const __m256i t2 = _mm256_unpackhi_epi32(r0, r1), t3 = _mm256_unpackhi_epi32(r2, r3);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(h0 + k), _mm256_unpacklo_epi64(t0, t1));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(h1 + k), _mm256_unpackhi_epi64(t0, t1));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(h2 + k), _mm256_unpacklo_epi64(t2, t3));
  }
}

bool has_avx2() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return yes;
}
#endif

void horizontal_linear(const std::uint8_t* row, const Plan& plan, std::int32_t* h0, std::int32_t* h1,
                       std::int32_t* h2) {
  std::int32_t begin = 0;
#ifdef PEREGRINE_AVX2_HORIZONTAL
  if (has_avx2()) {
    horizontal_linear_avx2(row, plan.x_off0.data(), plan.x_pairs.data(), plan.x_simd, h0, h1, h2);
    begin = plan.x_simd;
  }
#endif
  horizontal_linear_scalar(row, plan.x_off0.data(), plan.x_off1.data(), plan.x_w0.data(), plan.x_w1.data(), begin,
                           plan.cols(), h0, h1, h2);
}

// The vertical step of `n` columns into one output plane.
template <bool Scaled, class T>
PEREGRINE_INLINE void vertical_linear_impl(const std::int32_t* __restrict h0, const std::int32_t* __restrict h1,
                                           std::int32_t b0, std::int32_t b1, const Channel<T>& ch, std::int32_t n,
                                           T* __restrict dst) {
  if (Scaled) {
    const float hi = ch.hi, lo = ch.lo;
    for (std::int32_t k = 0; k < n; ++k) {
      dst[k] = to_out(scaled_value(opencv::linear_vertical(h0[k], h1[k], b0, b1), hi, lo), dst);
    }
    return;
  }
  const T* __restrict lut = ch.lut;
  constexpr std::int32_t kChunk = 256;
  std::int32_t values[kChunk];
  for (std::int32_t k0 = 0; k0 < n; k0 += kChunk) {
    const std::int32_t m = std::min(kChunk, n - k0);
    for (std::int32_t j = 0; j < m; ++j) values[j] = opencv::linear_vertical(h0[k0 + j], h1[k0 + j], b0, b1);
    for (std::int32_t j = 0; j < m; ++j) dst[k0 + j] = lut[values[j]];
  }
}

PEREGRINE_CLONES
void vertical_linear(const std::int32_t* h0, const std::int32_t* h1, std::int32_t b0, std::int32_t b1,
                     const Channel<float>& ch, std::int32_t n, float* dst) {
  ch.scaled ? vertical_linear_impl<true>(h0, h1, b0, b1, ch, n, dst)
            : vertical_linear_impl<false>(h0, h1, b0, b1, ch, n, dst);
}

PEREGRINE_CLONES
void vertical_linear(const std::int32_t* h0, const std::int32_t* h1, std::int32_t b0, std::int32_t b1,
                     const Channel<std::uint16_t>& ch, std::int32_t n, std::uint16_t* dst) {
  vertical_linear_impl<false>(h0, h1, b0, b1, ch, n, dst);
}

// uint8 values (Stride apart) into one output plane.
template <bool Scaled, int Stride, class T>
PEREGRINE_INLINE void convert_impl(const std::uint8_t* __restrict v, const Channel<T>& ch, std::int32_t n,
                                   T* __restrict dst) {
  const T* __restrict lut = ch.lut;
  const float hi = ch.hi, lo = ch.lo;
  for (std::int32_t k = 0; k < n; ++k) {
    dst[k] = Scaled ? to_out(scaled_value(v[k * Stride], hi, lo), dst) : lut[v[k * Stride]];
  }
}

PEREGRINE_CLONES
void convert(const std::uint8_t* v, std::int32_t stride, const Channel<float>& ch, std::int32_t n, float* dst) {
  if (ch.scaled) {
    stride == 1 ? convert_impl<true, 1>(v, ch, n, dst) : convert_impl<true, 3>(v, ch, n, dst);
  } else {
    stride == 1 ? convert_impl<false, 1>(v, ch, n, dst) : convert_impl<false, 3>(v, ch, n, dst);
  }
}

PEREGRINE_CLONES
void convert(const std::uint8_t* v, std::int32_t stride, const Channel<std::uint16_t>& ch, std::int32_t n,
             std::uint16_t* dst) {
  stride == 1 ? convert_impl<false, 1>(v, ch, n, dst) : convert_impl<false, 3>(v, ch, n, dst);
}

// Box values of `cols` output columns from the interleaved column sums of their BX source pixels each
// (BX 0: box_x at run time), into three planar rows.
template <int BX>
PEREGRINE_INLINE void box_values_impl(const std::int32_t* __restrict sums, std::int32_t box_x, bool round_2x2,
                                      float inv_area, std::int32_t cols, std::uint8_t* __restrict v0,
                                      std::uint8_t* __restrict v1, std::uint8_t* __restrict v2) {
  const std::int32_t bx = BX > 0 ? BX : box_x;
  for (std::int32_t k = 0; k < cols; ++k) {
    const std::int32_t* p = sums + 3 * bx * k;
    std::int32_t s0 = 0, s1 = 0, s2 = 0;
    for (std::int32_t i = 0; i < bx; ++i) {
      s0 += p[3 * i];
      s1 += p[3 * i + 1];
      s2 += p[3 * i + 2];
    }
    if (round_2x2) {
      v0[k] = static_cast<std::uint8_t>((s0 + 2) >> 2);
      v1[k] = static_cast<std::uint8_t>((s1 + 2) >> 2);
      v2[k] = static_cast<std::uint8_t>((s2 + 2) >> 2);
    } else {
      v0[k] = static_cast<std::uint8_t>(opencv::saturate_u8(static_cast<float>(s0) * inv_area));
      v1[k] = static_cast<std::uint8_t>(opencv::saturate_u8(static_cast<float>(s1) * inv_area));
      v2[k] = static_cast<std::uint8_t>(opencv::saturate_u8(static_cast<float>(s2) * inv_area));
    }
  }
}

PEREGRINE_CLONES
void box_values(const std::int32_t* sums, std::int32_t box_x, bool round_2x2, float inv_area, std::int32_t cols,
                std::uint8_t* v0, std::uint8_t* v1, std::uint8_t* v2) {
  switch (box_x) {
    case 1:
      box_values_impl<1>(sums, box_x, round_2x2, inv_area, cols, v0, v1, v2);
      break;
    case 2:
      box_values_impl<2>(sums, box_x, round_2x2, inv_area, cols, v0, v1, v2);
      break;
    case 3:
      box_values_impl<3>(sums, box_x, round_2x2, inv_area, cols, v0, v1, v2);
      break;
    case 4:
      box_values_impl<4>(sums, box_x, round_2x2, inv_area, cols, v0, v1, v2);
      break;
    default:
      box_values_impl<0>(sums, box_x, round_2x2, inv_area, cols, v0, v1, v2);
  }
}

// acc[i] += row[i] (column sums of a box).
PEREGRINE_CLONES
void accumulate(const std::uint8_t* __restrict row, std::int32_t n, std::int32_t* __restrict acc) {
  for (std::int32_t i = 0; i < n; ++i) acc[i] += row[i];
}

// ------------------------------------------------------------------------------------------------
// Rows
// ------------------------------------------------------------------------------------------------

// Per-thread scratch, sized for the widest frame before the threads start.
struct Scratch {
  std::vector<std::int32_t> hrows;  // bilinear: 2 cached source rows x 3 planes x cols
  std::int32_t cached[2] = {-1, -1};
  std::vector<std::uint8_t> values;  // box / area: 3 planes x cols
  std::vector<std::int32_t> sums;    // box: column sums, cols * box_x * 3
  std::vector<float> buf, acc;       // area: 3 planes x cols each
};

template <class T>
void fill(T* dst, std::int32_t count, T value) {
  std::fill(dst, dst + count, value);
}

// Bilinear output row k (of the covered rows) into dst[c] + x_begin.
template <class T>
void linear_row(const Plan& plan, std::int32_t k, const Output<T>& o, Scratch& s, std::int32_t stride,
                T* const dst[3]) {
  const std::int32_t cols = plan.cols();
  const std::int32_t r0 = plan.y_row0[k], r1 = plan.y_row1[k];
  auto slot_of = [&](std::int32_t r) { return s.cached[0] == r ? 0 : (s.cached[1] == r ? 1 : -1); };
  auto compute = [&](std::int32_t r, int slot) {
    const std::uint8_t* row = plan.frame.data + plan.frame.row_stride * r;
    std::int32_t* h = s.hrows.data() + static_cast<std::size_t>(slot) * 3 * stride;
    horizontal_linear(row, plan, h, h + stride, h + 2 * stride);
    s.cached[slot] = r;
  };
  int i0 = slot_of(r0), i1 = slot_of(r1);
  if (i0 < 0) {
    i0 = i1 == 0 ? 1 : 0;
    compute(r0, i0);
  }
  if (i1 < 0) {
    i1 = 1 - i0;
    compute(r1, i1);
  }
  const std::int32_t* h0 = s.hrows.data() + static_cast<std::size_t>(i0) * 3 * stride;
  const std::int32_t* h1 = s.hrows.data() + static_cast<std::size_t>(i1) * 3 * stride;
  for (int c = 0; c < 3; ++c) {
    const Channel<T>& ch = o.channel[c];
    vertical_linear(h0 + ch.src * stride, h1 + ch.src * stride, plan.y_w0[k], plan.y_w1[k], ch, cols,
                    dst[c] + plan.x_begin);
  }
}

// Box output row (resized row dy) into s.values (3 planes, source channel order).
void box_row(const Plan& plan, std::int32_t dy, Scratch& s, std::int32_t stride) {
  const std::int32_t cols = plan.cols(), bx = plan.box_x, by = plan.box_y;
  const std::int32_t dx0 = plan.x_begin - plan.left;
  const std::int32_t n = 3 * cols * bx;
  std::int32_t* sums = s.sums.data();
  std::fill(sums, sums + n, 0);
  for (std::int32_t j = 0; j < by; ++j) {
    const std::uint8_t* row = plan.frame.data + plan.frame.row_stride * (dy * by + j) + 3 * dx0 * bx;
    accumulate(row, n, sums);
  }
  std::uint8_t* v = s.values.data();
  box_values(sums, bx, plan.kind == ResizeKind::kBox2x2, plan.inv_area, cols, v, v + stride, v + 2 * stride);
}

// Fractional area output row k (of the covered rows) into s.values.
void area_row(const Plan& plan, std::int32_t k, Scratch& s, std::int32_t stride) {
  const std::int32_t cols = plan.cols();
  const opencv::AreaTaps& yt = plan.y_area[k];
  float* buf = s.buf.data();
  float* acc = s.acc.data();
  for (std::int32_t j = 0; j < yt.count; ++j) {
    const float beta = opencv::area_weight(yt, j);
    const std::uint8_t* row = plan.frame.data + plan.frame.row_stride * (yt.first + j);
    for (std::int32_t x = 0; x < cols; ++x) {
      const opencv::AreaTaps& xt = plan.x_area[x];
      const std::uint8_t* p = row + 3 * xt.first;
      float b0 = 0.0f, b1 = 0.0f, b2 = 0.0f;
      for (std::int32_t i = 0; i < xt.count; ++i) {
        const float alpha = opencv::area_weight(xt, i);
        b0 = b0 + static_cast<float>(p[3 * i]) * alpha;
        b1 = b1 + static_cast<float>(p[3 * i + 1]) * alpha;
        b2 = b2 + static_cast<float>(p[3 * i + 2]) * alpha;
      }
      buf[x] = b0;
      buf[stride + x] = b1;
      buf[2 * stride + x] = b2;
    }
    // OpenCV: the first source row of an output row starts the sum, the next ones are added (in order)
    for (int c = 0; c < 3; ++c) {
      float* a = acc + c * stride;
      const float* b = buf + c * stride;
      if (j == 0) {
        for (std::int32_t x = 0; x < cols; ++x) a[x] = beta * b[x];
      } else {
        for (std::int32_t x = 0; x < cols; ++x) a[x] = a[x] + beta * b[x];
      }
    }
  }
  for (int c = 0; c < 3; ++c) {
    for (std::int32_t x = 0; x < cols; ++x) {
      s.values[c * stride + x] = static_cast<std::uint8_t>(opencv::saturate_u8(acc[c * stride + x]));
    }
  }
}

template <class T>
void make_rows(const Plan& plan, std::int32_t row_begin, std::int32_t row_end, std::int32_t out_h,
               std::int32_t out_w, const Output<T>& o, T* out_frame, Scratch& s, std::int32_t stride) {
  const std::int64_t plane = static_cast<std::int64_t>(out_h) * out_w;
  const T pad[3] = {o.channel[0].pad, o.channel[1].pad, o.channel[2].pad};
  s.cached[0] = s.cached[1] = -1;  // cached rows belong to one frame
  const std::int32_t cols = plan.cols();
  for (std::int32_t oy = row_begin; oy < row_end; ++oy) {
    T* dst[3];
    for (int c = 0; c < 3; ++c) dst[c] = out_frame + c * plane + static_cast<std::int64_t>(oy) * out_w;
    if (plan.empty() || oy < plan.y_begin || oy >= plan.y_end) {
      for (int c = 0; c < 3; ++c) fill(dst[c], out_w, pad[c]);
      continue;
    }
    for (int c = 0; c < 3; ++c) {
      fill(dst[c], plan.x_begin, pad[c]);
      fill(dst[c] + plan.x_end, out_w - plan.x_end, pad[c]);
    }
    const std::int32_t k = oy - plan.y_begin;
    const std::int32_t dy = oy - plan.top;  // row of the resized frame
    switch (plan.kind) {
      case ResizeKind::kLinear:
      case ResizeKind::kLinearArea:
        linear_row(plan, k, o, s, stride, dst);
        continue;
      case ResizeKind::kCopy: {
        const std::uint8_t* row =
            plan.frame.data + plan.frame.row_stride * dy + 3 * static_cast<std::int64_t>(plan.x_begin - plan.left);
        for (int c = 0; c < 3; ++c) {
          convert(row + o.channel[c].src, 3, o.channel[c], cols, dst[c] + plan.x_begin);
        }
        continue;
      }
      case ResizeKind::kBox2x2:
      case ResizeKind::kBoxInteger:
        box_row(plan, dy, s, stride);
        break;
      case ResizeKind::kArea:
        area_row(plan, k, s, stride);
        break;
    }
    for (int c = 0; c < 3; ++c) {
      convert(s.values.data() + o.channel[c].src * stride, 1, o.channel[c], cols, dst[c] + plan.x_begin);
    }
  }
}

constexpr std::int32_t kRowsPerTask = 16;

template <class T>
void run(const std::vector<Plan>& plans, std::int32_t out_h, std::int32_t out_w, const PixelTransform& t, T* out,
         int num_threads) {
  const Output<T> o = make_output<T>(t);
  const std::int64_t tasks_per_frame = (out_h + kRowsPerTask - 1) / kRowsPerTask;
  const std::int64_t n_tasks = tasks_per_frame * static_cast<std::int64_t>(plans.size());
  const int threads = resolve_threads(num_threads, n_tasks);
  std::int32_t cols = 0, box_cols = 0;
  bool linear = false, box = false, area = false;
  for (const Plan& plan : plans) {
    if (plan.empty()) continue;
    cols = std::max(cols, plan.cols());
    linear |= plan.kind == ResizeKind::kLinear || plan.kind == ResizeKind::kLinearArea;
    box |= plan.kind == ResizeKind::kBox2x2 || plan.kind == ResizeKind::kBoxInteger;
    area |= plan.kind == ResizeKind::kArea;
    if (plan.kind == ResizeKind::kBox2x2 || plan.kind == ResizeKind::kBoxInteger) {
      box_cols = std::max(box_cols, plan.cols() * plan.box_x);
    }
  }
  const std::int32_t stride = (cols + 15) / 16 * 16;
  std::vector<Scratch> scratch(static_cast<std::size_t>(threads));
  for (Scratch& s : scratch) {
    if (linear) s.hrows.resize(static_cast<std::size_t>(6) * stride);
    if (box || area) s.values.resize(static_cast<std::size_t>(3) * stride);
    if (box) s.sums.resize(static_cast<std::size_t>(3) * box_cols);
    if (area) {
      s.buf.resize(static_cast<std::size_t>(3) * stride);
      s.acc.resize(static_cast<std::size_t>(3) * stride);
    }
  }
  const std::int64_t frame_elems = 3 * static_cast<std::int64_t>(out_h) * out_w;
  auto body = [&](std::int64_t task, int worker) {
    const std::int64_t f = task / tasks_per_frame;
    const std::int32_t row_begin = static_cast<std::int32_t>(task % tasks_per_frame) * kRowsPerTask;
    const std::int32_t row_end = std::min(out_h, row_begin + kRowsPerTask);
    make_rows(plans[f], row_begin, row_end, out_h, out_w, o, out + f * frame_elems, scratch[worker], stride);
  };
  parallel_for(n_tasks, threads, body);
}

}  // namespace

void resize_exact_nchw_cpu(const Frame* frames, const Placement* placements, std::int32_t n, std::int32_t out_h,
                           std::int32_t out_w, const PixelTransform& transform, TensorType type, void* out,
                           bool area, int num_threads) {
  std::vector<Plan> plans;
  plans.reserve(static_cast<std::size_t>(n));
  for (std::int32_t i = 0; i < n; ++i) plans.push_back(make_plan(frames[i], placements[i], out_h, out_w, area));
  if (type == TensorType::kFloat16) {
    run(plans, out_h, out_w, transform, static_cast<std::uint16_t*>(out), num_threads);
  } else {
    run(plans, out_h, out_w, transform, static_cast<float*>(out), num_threads);
  }
}

}  // namespace peregrine::detail
