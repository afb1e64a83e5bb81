// Raw camera frames to uint8 RGB/BGR: interleaved 8/16-bit pixels, YUV 4:2:2 and Bayer mosaics, with the
// arithmetic of the cv2.cvtColor codes cv_bridge uses, so that the bytes equal OpenCV's:
//
// - YUV 4:2:2 (COLOR_YUV2BGR_UYVY / _YUY2): BT.601 limited range in 20-bit fixed point, the constants and
//   rounding of OpenCV's color_yuv (y' = max(0, Y - 16) * 1.164, chroma centred on 128, + 2^19, >> 20,
//   saturated to 0..255).
// - Bayer (COLOR_Bayer*2BGR): OpenCV's bilinear demosaic. At a red or blue sample the other of the two is
//   the mean of the 4 diagonal samples and green the mean of the 4 adjacent ones ((sum + 2) >> 2); at a
//   green sample the colour of its row is the mean of its left and right samples, the other colour the
//   mean of those above and below ((sum + 1) >> 1). Only pixels with all 8 neighbours are computed; the
//   first and last columns copy their neighbour, then the first and last rows copy theirs; a frame with a
//   side under 3 pixels is black.
// - 16-bit samples keep their most significant byte (cv_bridge's scaling to 8 bits), before demosaicing.
//
// A 16-bit sample's most significant byte is a plain byte at a fixed offset (1 little endian, 0 big
// endian), so every layout reads bytes with a stride of 1 or 2 from a row pointer shifted by that offset.
// Work is split in blocks of rows over the kernels' thread pool; every output byte is written once.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "parallel.hpp"
#include "peregrine/kernels.hpp"
#include "simd.hpp"

namespace peregrine {
namespace {

constexpr std::int32_t kRowsPerTask = 16;

inline std::uint8_t saturate(int v) { return static_cast<std::uint8_t>(std::clamp(v, 0, 255)); }

// -- interleaved pixels ----------------------------------------------------------------------------------
// Rows are made in chunks of kChunk pixels through small buffers where a one-pass loop would not vectorize:
// three planes (arithmetic results, a channel swap), or a row of 16-bit samples narrowed to bytes.
constexpr std::int32_t kChunk = 512;

struct Planes {
  alignas(64) std::uint8_t c[3][kChunk];
};

PEREGRINE_CLONES void interleave(const Planes& planes, std::int32_t count, std::uint8_t* out) {
  const std::uint8_t* p0 = planes.c[0];
  const std::uint8_t* p1 = planes.c[1];
  const std::uint8_t* p2 = planes.c[2];
  for (std::int32_t x = 0; x < count; ++x) {
    out[3 * x] = p0[x];
    out[3 * x + 1] = p1[x];
    out[3 * x + 2] = p2[x];
  }
}

// 16-bit samples to their most significant byte (msb points at the first sample's).
PEREGRINE_CLONES void narrow(const std::uint8_t* msb, std::int32_t count, std::uint8_t* out) {
  for (std::int32_t i = 0; i < count; ++i) out[i] = msb[2 * i];
}

// C one-byte samples per pixel to three: grey replicated, alpha dropped, the first three reversed when Swap.
template <int C, bool Swap>
PEREGRINE_CLONES void pixels_chunk(const std::uint8_t* in, std::int32_t count, std::uint8_t* out) {
  if constexpr (C == 3 && !Swap) {
    std::memcpy(out, in, 3 * static_cast<std::size_t>(count));
  } else if constexpr (C == 3) {  // through planes: a permuted three-byte group does not vectorize in one loop
    Planes planes;
    for (std::int32_t x = 0; x < count; ++x) {
      planes.c[2][x] = in[3 * x];
      planes.c[1][x] = in[3 * x + 1];
      planes.c[0][x] = in[3 * x + 2];
    }
    interleave(planes, count, out);
  } else {
    constexpr int a = C == 1 ? 0 : (Swap ? 2 : 0);
    constexpr int b = C == 1 ? 0 : 1;
    constexpr int c = C == 1 ? 0 : (Swap ? 0 : 2);
    for (std::int32_t x = 0; x < count; ++x) {
      out[3 * x] = in[C * x + a];
      out[3 * x + 1] = in[C * x + b];
      out[3 * x + 2] = in[C * x + c];
    }
  }
}

template <int C, int S, bool Swap>
void pixels_row(const std::uint8_t* in, std::int32_t width, std::uint8_t* out) {
  alignas(64) std::uint8_t bytes[4 * kChunk];
  for (std::int32_t x = 0; x < width; x += kChunk) {
    const std::int32_t count = std::min(kChunk, width - x);
    const std::uint8_t* src = in + static_cast<std::int64_t>(x) * C * S;
    if constexpr (S == 2) {
      narrow(src, C * count, bytes);
      src = bytes;
    }
    pixels_chunk<C, Swap>(src, count, out + 3 * static_cast<std::int64_t>(x));
  }
}

using RowFn = void (*)(const std::uint8_t*, std::int32_t, std::uint8_t*);

template <int C, int S>
RowFn pixels_fn(bool swap) {
  return swap ? &pixels_row<C, S, true> : &pixels_row<C, S, false>;
}

RowFn pick_pixels(std::int32_t channels, std::int32_t sample_bytes, bool swap) {
  if (sample_bytes == 1) {
    if (channels == 1) return &pixels_row<1, 1, false>;
    return channels == 3 ? pixels_fn<3, 1>(swap) : pixels_fn<4, 1>(swap);
  }
  if (channels == 1) return &pixels_row<1, 2, false>;
  return channels == 3 ? pixels_fn<3, 2>(swap) : pixels_fn<4, 2>(swap);
}

// -- YUV 4:2:2 ----------------------------------------------------------------------------------------
constexpr int kShift = 20;
constexpr int kCY = 1220542;    // 1.164 * 2^20
constexpr int kCUB = 2116026;   // 2.018 * 2^20
constexpr int kCUG = -409993;   // -0.391 * 2^20
constexpr int kCVG = -852492;   // -0.813 * 2^20
constexpr int kCVR = 1673527;   // 1.596 * 2^20
constexpr int kHalf = 1 << (kShift - 1);

// Two pixels per 4 bytes; the width is even.
template <bool Uyvy, bool Bgr>
PEREGRINE_CLONES void yuv_planes(const std::uint8_t* in, std::int32_t pairs, Planes& planes) {
  constexpr int iu = Uyvy ? 0 : 1, iy0 = Uyvy ? 1 : 0, iv = Uyvy ? 2 : 3, iy1 = Uyvy ? 3 : 2;
  std::uint8_t* r = planes.c[Bgr ? 2 : 0];
  std::uint8_t* g = planes.c[1];
  std::uint8_t* b = planes.c[Bgr ? 0 : 2];
  for (std::int32_t k = 0; k < pairs; ++k) {
    const std::uint8_t* p = in + 4 * k;
    const int u = int(p[iu]) - 128, v = int(p[iv]) - 128;
    const int ruv = kHalf + kCVR * v;
    const int guv = kHalf + kCVG * v + kCUG * u;
    const int buv = kHalf + kCUB * u;
    const int y0 = std::max(0, int(p[iy0]) - 16) * kCY;
    const int y1 = std::max(0, int(p[iy1]) - 16) * kCY;
    r[2 * k] = saturate((y0 + ruv) >> kShift);
    g[2 * k] = saturate((y0 + guv) >> kShift);
    b[2 * k] = saturate((y0 + buv) >> kShift);
    r[2 * k + 1] = saturate((y1 + ruv) >> kShift);
    g[2 * k + 1] = saturate((y1 + guv) >> kShift);
    b[2 * k + 1] = saturate((y1 + buv) >> kShift);
  }
}

template <bool Uyvy, bool Bgr>
void yuv_row(const std::uint8_t* in, std::int32_t width, std::uint8_t* out) {
  Planes planes;
  for (std::int32_t x = 0; x < width; x += kChunk) {
    const std::int32_t count = std::min(kChunk, width - x);
    yuv_planes<Uyvy, Bgr>(in + 2 * static_cast<std::int64_t>(x), count / 2, planes);
    interleave(planes, count, out + 3 * static_cast<std::int64_t>(x));
  }
}

// -- Bayer ---------------------------------------------------------------------------------------------
// One interior output row from source rows above (a), at (b) and below (c), samples S bytes apart. RedRow:
// the row holds red and green samples (else blue and green); the red or blue samples sit in columns of
// parity `colour_x`. Columns 1 .. width-2 are computed, then the first and last copy their neighbours.
template <int S, bool RedRow, bool Bgr>
PEREGRINE_CLONES void bayer_row(const std::uint8_t* a, const std::uint8_t* b, const std::uint8_t* c,
                                std::int32_t width, std::int32_t colour_x, std::uint8_t* out) {
  constexpr int ir = Bgr ? 2 : 0, ib = Bgr ? 0 : 2;
  auto at = [](const std::uint8_t* row, std::int32_t x) { return int(row[static_cast<std::int64_t>(x) * S]); };
  // A red or blue sample at x: itself, green from the 4 adjacent samples, the other colour from the 4 diagonal.
  auto colour = [&](std::int32_t x, std::uint8_t* o) {
    const int own = at(b, x);
    const int cross = (at(a, x) + at(c, x) + at(b, x - 1) + at(b, x + 1) + 2) >> 2;
    const int diag = (at(a, x - 1) + at(a, x + 1) + at(c, x - 1) + at(c, x + 1) + 2) >> 2;
    o[ir] = static_cast<std::uint8_t>(RedRow ? own : diag);
    o[1] = static_cast<std::uint8_t>(cross);
    o[ib] = static_cast<std::uint8_t>(RedRow ? diag : own);
  };
  // A green sample at x: the row's colour from left and right, the other from above and below.
  auto green = [&](std::int32_t x, std::uint8_t* o) {
    const int across = (at(b, x - 1) + at(b, x + 1) + 1) >> 1;
    const int down = (at(a, x) + at(c, x) + 1) >> 1;
    o[ir] = static_cast<std::uint8_t>(RedRow ? across : down);
    o[1] = static_cast<std::uint8_t>(at(b, x));
    o[ib] = static_cast<std::uint8_t>(RedRow ? down : across);
  };
  const std::int32_t end = width - 1;  // one past the last interpolated column
  std::int32_t x = 1;
  if ((x & 1) != colour_x) {
    green(x, out + 3);
    ++x;
  }
  // Pairs (colour, green) into planes, chunk by chunk, then interleaved (see Planes).
  Planes planes;
  std::uint8_t* pr = planes.c[ir];
  std::uint8_t* pg = planes.c[1];
  std::uint8_t* pb = planes.c[ib];
  while (end - x >= 2) {
    const std::int32_t pairs = std::min((end - x) / 2, kChunk / 2);
    const std::uint8_t* a0 = a + static_cast<std::int64_t>(x) * S;
    const std::uint8_t* b0 = b + static_cast<std::int64_t>(x) * S;
    const std::uint8_t* c0 = c + static_cast<std::int64_t>(x) * S;
    for (std::int32_t k = 0; k < pairs; ++k) {
      const std::int64_t i = 2 * static_cast<std::int64_t>(k) * S;
      // samples at offsets -1, 0, +1, +2 from the colour sample, in each row
      const int am = a0[i - S], a1 = a0[i], ap = a0[i + S];
      const int bm = b0[i - S], b1 = b0[i], bp = b0[i + S], b2 = b0[i + 2 * S];
      const int cm = c0[i - S], c1 = c0[i], cp = c0[i + S];
      const int cross = (a1 + c1 + bm + bp + 2) >> 2;
      const int diag = (am + ap + cm + cp + 2) >> 2;
      const int across = (b1 + b2 + 1) >> 1;
      const int down = (ap + cp + 1) >> 1;
      pr[2 * k] = static_cast<std::uint8_t>(RedRow ? b1 : diag);
      pg[2 * k] = static_cast<std::uint8_t>(cross);
      pb[2 * k] = static_cast<std::uint8_t>(RedRow ? diag : b1);
      pr[2 * k + 1] = static_cast<std::uint8_t>(RedRow ? across : down);
      pg[2 * k + 1] = static_cast<std::uint8_t>(bp);
      pb[2 * k + 1] = static_cast<std::uint8_t>(RedRow ? down : across);
    }
    interleave(planes, 2 * pairs, out + 3 * static_cast<std::int64_t>(x));
    x += 2 * pairs;
  }
  if (x < end) colour(x, out + 3 * static_cast<std::int64_t>(x));
  std::memcpy(out, out + 3, 3);
  std::memcpy(out + 3 * static_cast<std::int64_t>(width - 1), out + 3 * static_cast<std::int64_t>(width - 2), 3);
}

using BayerRowFn = void (*)(const std::uint8_t*, const std::uint8_t*, const std::uint8_t*, std::int32_t,
                            std::int32_t, std::uint8_t*);

template <int S>
BayerRowFn bayer_fn(bool red_row, bool bgr) {
  if (red_row) return bgr ? &bayer_row<S, true, true> : &bayer_row<S, true, false>;
  return bgr ? &bayer_row<S, false, true> : &bayer_row<S, false, false>;
}

template <class Body>
void over_row_blocks(std::int32_t rows, int num_threads, Body& body) {
  const std::int64_t n_tasks = (rows + kRowsPerTask - 1) / kRowsPerTask;
  auto task = [&](std::int64_t t, int) {
    const std::int32_t begin = static_cast<std::int32_t>(t) * kRowsPerTask;
    const std::int32_t end = std::min(rows, begin + kRowsPerTask);
    for (std::int32_t y = begin; y < end; ++y) body(y);
  };
  detail::parallel_for(n_tasks, num_threads, task);
}

void convert_bayer(const std::uint8_t* data, std::int32_t height, std::int32_t width, std::int64_t step,
                   const RawFormat& f, bool bgr, std::uint8_t* out, int num_threads) {
  const std::int64_t out_row = 3 * static_cast<std::int64_t>(width);
  if (height < 3 || width < 3) {  // OpenCV: no pixel has all its neighbours, the frame is black
    std::memset(out, 0, static_cast<std::size_t>(out_row * height));
    return;
  }
  const std::uint8_t* base = data + ((f.sample_bytes == 2 && !f.big_endian) ? 1 : 0);
  const BayerRowFn red_rows = f.sample_bytes == 2 ? bayer_fn<2>(true, bgr) : bayer_fn<1>(true, bgr);
  const BayerRowFn blue_rows = f.sample_bytes == 2 ? bayer_fn<2>(false, bgr) : bayer_fn<1>(false, bgr);
  auto row = [&](std::int32_t i) {  // interior row y = i + 1
    const std::int32_t y = i + 1;
    const std::uint8_t* b = base + step * y;
    const bool red_row = (y & 1) == f.red_y;
    const std::int32_t colour_x = red_row ? f.red_x : 1 - f.red_x;
    (red_row ? red_rows : blue_rows)(b - step, b, b + step, width, colour_x, out + out_row * y);
  };
  over_row_blocks(height - 2, num_threads, row);
  std::memcpy(out, out + out_row, static_cast<std::size_t>(out_row));
  std::memcpy(out + out_row * (height - 1), out + out_row * (height - 2), static_cast<std::size_t>(out_row));
}

}  // namespace

std::int64_t raw_row_bytes(const RawFormat& format, std::int32_t width) {
  switch (format.layout) {
    case RawLayout::kPixels:
      return static_cast<std::int64_t>(width) * format.channels * format.sample_bytes;
    case RawLayout::kUyvy:
    case RawLayout::kYuyv:
      return 2 * static_cast<std::int64_t>(width);
    case RawLayout::kBayer:
      return static_cast<std::int64_t>(width) * format.sample_bytes;
  }
  return 0;
}

void convert_raw_cpu(const std::uint8_t* data, std::int32_t height, std::int32_t width, std::int64_t step,
                     const RawFormat& format, bool bgr, std::uint8_t* out, int num_threads) {
  if (height < 1 || width < 1) return;
  const std::int64_t out_row = 3 * static_cast<std::int64_t>(width);
  if (format.layout == RawLayout::kBayer) {
    convert_bayer(data, height, width, step, format, bgr, out, num_threads);
    return;
  }
  RowFn fn;
  const std::uint8_t* base = data;
  if (format.layout == RawLayout::kPixels) {
    base += (format.sample_bytes == 2 && !format.big_endian) ? 1 : 0;
    fn = pick_pixels(format.channels, format.sample_bytes, format.channels > 1 && format.blue_first != bgr);
  } else {
    const bool uyvy = format.layout == RawLayout::kUyvy;
    fn = uyvy ? (bgr ? &yuv_row<true, true> : &yuv_row<true, false>)
              : (bgr ? &yuv_row<false, true> : &yuv_row<false, false>);
  }
  auto row = [&](std::int32_t y) { fn(base + step * y, width, out + out_row * y); };
  over_row_blocks(height, num_threads, row);
}

}  // namespace peregrine
