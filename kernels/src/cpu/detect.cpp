// Detection post-processing on the CPU: decode a YOLO head, top-k, greedy NMS, map boxes back. End-to-end
// heads (NMS done by the model) follow ultralytics' non_max_suppression for them instead: rows above the
// threshold in the head's order, the first max_det, then the class filter.
//
// Compiled with -ffp-contract=off: IoUs must round exactly like the NumPy reference (no fused
// multiply-adds), so that kept indices compare equal, not merely close.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "parallel.hpp"
#include "peregrine/kernels.hpp"
#include "simd.hpp"

namespace peregrine {
namespace {

struct Candidate {
  float score;
  std::int32_t index;  // anchor (decode) or candidate row (nms)
  std::int32_t cls;
};

// Score desc, then index asc: a strict total order for distinct indices (scores are never NaN here).
inline bool ranks_before(const Candidate& a, const Candidate& b) {
  return a.score > b.score || (a.score == b.score && a.index < b.index);
}

void keep_best(std::vector<Candidate>& c, std::int32_t k) {
  if (static_cast<std::int64_t>(c.size()) > k) {
    std::nth_element(c.begin(), c.begin() + k, c.end(), ranks_before);
    c.resize(static_cast<std::size_t>(k));
  }
  std::sort(c.begin(), c.end(), ranks_before);
}

inline bool allowed(const DecodeOptions& o, std::int32_t cls) {
  return o.allowed == nullptr || (cls >= 0 && cls < o.allowed_size && o.allowed[cls] != 0);
}

// The class id an end-to-end row reports: its class column rounded (half to even), -1 when not finite.
inline std::int32_t end_to_end_class(float c) {
  return (c >= -1e9f && c <= 1e9f) ? static_cast<std::int32_t>(std::nearbyint(c)) : -1;
}

// ultralytics' class filter on end-to-end rows, isin(row[5], classes): the class column equal to an
// allowed id (2.4 is not class 2).
inline bool end_to_end_allowed(const DecodeOptions& o, float c) {
  if (o.allowed == nullptr) return true;
  const std::int32_t cls = end_to_end_class(c);
  return static_cast<float>(cls) == c && allowed(o, cls);
}

constexpr std::int32_t kAnchorBlock = 256;
constexpr float kMaxWh = 7680.0f;  // ultralytics' max_wh: the class offset of its NMS

// Per-anchor maximum over the class rows of a YOLOv8 head [4 + C, A] for anchors [a0, a0 + len): the
// running maxima stay in L1 while the block's class rows stream past once (and stay in L2 for the
// argmax of the few anchors above the threshold).
PEREGRINE_CLONES
void block_class_max(const float* __restrict scores, std::int32_t classes, std::int32_t anchors, std::int32_t a0,
                     std::int32_t len, float* __restrict best) {
  const float* first = scores + a0;
  for (std::int32_t j = 0; j < len; ++j) best[j] = first[j];
  for (std::int32_t c = 1; c < classes; ++c) {
    const float* row = scores + static_cast<std::int64_t>(c) * anchors + a0;
    for (std::int32_t j = 0; j < len; ++j) {
      const float b = best[j], r = row[j];  // by value: std::max on references does not vectorize
      best[j] = std::max(b, r);
    }
  }
}

// First class whose score is greater than all earlier ones, i.e. argmax with the first maximum winning.
inline std::int32_t class_argmax(const float* scores, std::int32_t classes, std::int64_t anchors, std::int32_t a) {
  float best = scores[a];
  std::int32_t cls = 0;
  for (std::int32_t c = 1; c < classes; ++c) {
    const float v = scores[c * anchors + a];
    if (v > best) {
      best = v;
      cls = c;
    }
  }
  return cls;
}

struct Scratch {
  std::vector<float> best;
  std::vector<Candidate> candidates;
  std::vector<float> x1, y1, x2, y2, area;  // sorted candidates' boxes as NMS sees them (class_offset)
  std::vector<std::int32_t> cls;
  std::vector<float> kx1, ky1, kx2, ky2, karea;  // kept boxes
  std::vector<std::int32_t> kcls, kept;
};

// End-to-end heads [K, 6] (the model did the NMS), in ultralytics' order: the rows scoring above the
// threshold in the head's own order (not re-sorted), the first `limit` of them, then the class filter (so
// a filter can leave fewer than `limit`).
void collect_end_to_end(const float* head, const HeadShape& s, const DecodeOptions& o, std::int32_t limit,
                        Scratch& w) {
  w.candidates.clear();
  for (std::int32_t a = 0; a < s.anchors && static_cast<std::int32_t>(w.candidates.size()) < limit; ++a) {
    const float* row = head + static_cast<std::int64_t>(a) * 6;
    if (row[4] > o.conf) w.candidates.push_back({row[4], a, end_to_end_class(row[5])});
  }
  if (o.allowed != nullptr) {
    const auto rejected = [&](const Candidate& c) {
      return !end_to_end_allowed(o, head[static_cast<std::int64_t>(c.index) * 6 + 5]);
    };
    w.candidates.erase(std::remove_if(w.candidates.begin(), w.candidates.end(), rejected), w.candidates.end());
  }
}

// Candidates of one image: for the YOLOv8/v5 layouts those above the threshold whose best class is
// allowed, the top `limit` of them by score (desc, then anchor asc), sorted; end-to-end heads see
// collect_end_to_end.
void collect(const float* head, const HeadShape& s, const DecodeOptions& o, std::int32_t limit, Scratch& w) {
  if (s.layout == HeadLayout::kEndToEnd) {
    collect_end_to_end(head, s, o, limit, w);
    return;
  }
  w.candidates.clear();
  const std::int32_t A = s.anchors;
  if (s.layout == HeadLayout::kYoloV8) {
    const float* scores = head + 4 * static_cast<std::int64_t>(A);
    for (std::int32_t a0 = 0; a0 < A; a0 += kAnchorBlock) {
      const std::int32_t len = std::min(kAnchorBlock, A - a0);
      block_class_max(scores, s.classes, A, a0, len, w.best.data());
      for (std::int32_t j = 0; j < len; ++j) {
        if (!(w.best[j] > o.conf)) continue;
        const std::int32_t cls = class_argmax(scores, s.classes, A, a0 + j);
        if (allowed(o, cls)) w.candidates.push_back({w.best[j], a0 + j, cls});
      }
    }
  } else if (s.layout == HeadLayout::kYoloV5) {
    const std::int64_t stride = 5 + s.classes;
    for (std::int32_t a = 0; a < A; ++a) {
      const float* row = head + a * stride;
      const float obj = row[4];
      if (!(obj > o.conf)) continue;
      float best = row[5];
      std::int32_t cls = 0;
      for (std::int32_t c = 1; c < s.classes; ++c) {
        if (row[5 + c] > best) {
          best = row[5 + c];
          cls = c;
        }
      }
      const float score = obj * best;
      if (score > o.conf && allowed(o, cls)) w.candidates.push_back({score, a, cls});
    }
  }
  keep_best(w.candidates, limit);
}

// x1, y1, x2, y2 of one anchor.
inline void anchor_box(const float* head, const HeadShape& s, std::int32_t a, float box[4]) {
  if (s.layout == HeadLayout::kYoloV8) {
    const std::int64_t A = s.anchors;
    const float cx = head[a], cy = head[A + a], w = head[2 * A + a], h = head[3 * A + a];
    box[0] = cx - w / 2;
    box[1] = cy - h / 2;
    box[2] = cx + w / 2;
    box[3] = cy + h / 2;
  } else if (s.layout == HeadLayout::kYoloV5) {
    const float* row = head + static_cast<std::int64_t>(a) * (5 + s.classes);
    box[0] = row[0] - row[2] / 2;
    box[1] = row[1] - row[3] / 2;
    box[2] = row[0] + row[2] / 2;
    box[3] = row[1] + row[3] / 2;
  } else {
    const float* row = head + static_cast<std::int64_t>(a) * 6;
    for (int i = 0; i < 4; ++i) box[i] = row[i];
  }
}

// Whether a box overlaps (IoU > thr) one of the nk kept boxes of its class (any class when agnostic).
// The IoU is computed as torchvision's nms computes it, in float: inter / ((area_a + area_b) - inter), on
// the boxes shifted by class_offset.
PEREGRINE_CLONES
int overlaps_kept(const float* __restrict kx1, const float* __restrict ky1, const float* __restrict kx2,
                  const float* __restrict ky2, const float* __restrict karea, const std::int32_t* __restrict kcls,
                  std::int32_t nk, float x1, float y1, float x2, float y2, float area, std::int32_t cls,
                  int agnostic, float thr) {
  int hit = 0;
  for (std::int32_t k = 0; k < nk; ++k) {
    const float xx1 = std::max(x1, kx1[k]);
    const float yy1 = std::max(y1, ky1[k]);
    const float xx2 = std::min(x2, kx2[k]);
    const float yy2 = std::min(y2, ky2[k]);
    float w = xx2 - xx1;
    float h = yy2 - yy1;
    w = w > 0.0f ? w : 0.0f;
    h = h > 0.0f ? h : 0.0f;
    const float inter = w * h;
    const float iou = inter / ((area + karea[k]) - inter);
    hit |= static_cast<int>(iou > thr) & (agnostic | static_cast<int>(kcls[k] == cls));
  }
  return hit;
}

// Greedy NMS over w.x1.. (n boxes in rank order); fills w.kept with positions into that order.
void greedy(Scratch& w, std::int32_t n, float thr, std::int32_t max_det, bool agnostic) {
  w.kept.clear();
  std::int32_t nk = 0;
  for (std::int32_t i = 0; i < n && nk < max_det; ++i) {
    if (overlaps_kept(w.kx1.data(), w.ky1.data(), w.kx2.data(), w.ky2.data(), w.karea.data(), w.kcls.data(), nk,
                      w.x1[i], w.y1[i], w.x2[i], w.y2[i], w.area[i], w.cls[i], agnostic ? 1 : 0, thr)) {
      continue;
    }
    w.kx1[nk] = w.x1[i];
    w.ky1[nk] = w.y1[i];
    w.kx2[nk] = w.x2[i];
    w.ky2[nk] = w.y2[i];
    w.karea[nk] = w.area[i];
    w.kcls[nk] = w.cls[i];
    ++nk;
    w.kept.push_back(i);
  }
}

void reserve(Scratch& w, std::int32_t anchors, std::int32_t capacity, std::int32_t max_det) {
  w.best.resize(static_cast<std::size_t>(kAnchorBlock));
  w.candidates.reserve(static_cast<std::size_t>(anchors));
  for (auto* v : {&w.x1, &w.y1, &w.x2, &w.y2, &w.area}) v->resize(static_cast<std::size_t>(capacity));
  w.cls.resize(static_cast<std::size_t>(capacity));
  for (auto* v : {&w.kx1, &w.ky1, &w.kx2, &w.ky2, &w.karea}) v->resize(static_cast<std::size_t>(max_det));
  w.kcls.resize(static_cast<std::size_t>(max_det));
  w.kept.reserve(static_cast<std::size_t>(max_det));
}

// Ultralytics' per-class NMS shifts each box by its class times max_wh (7680) and runs torchvision's nms on
// the shifted boxes, in float32. The shift rounds the coordinates (by up to 1/128 px at class 14), which can
// move an IoU next to the threshold across it: NMS sees the boxes shifted the same way, so it keeps and drops
// what ultralytics keeps and drops. Agnostic NMS: no shift.
inline float class_offset(std::int32_t cls, bool agnostic) {
  return agnostic ? 0.0f : static_cast<float>(cls) * kMaxWh;
}

inline void set_box(Scratch& w, std::int32_t i, const float box[4], std::int32_t cls, bool agnostic) {
  const float off = class_offset(cls, agnostic);
  w.x1[i] = box[0] + off;
  w.y1[i] = box[1] + off;
  w.x2[i] = box[2] + off;
  w.y2[i] = box[3] + off;
  w.area[i] = (w.x2[i] - w.x1[i]) * (w.y2[i] - w.y1[i]);
  w.cls[i] = cls;
}

inline float clip(float v, float hi) { return std::min(std::max(v, 0.0f), hi); }

// model -> original: (v - pad) / scale, clipped to the image.
inline void unmap(const float* params, const std::int32_t* size, const float* in, float* out) {
  const float h = static_cast<float>(size[0]), w = static_cast<float>(size[1]);
  out[0] = clip((in[0] - params[2]) / params[0], w);
  out[1] = clip((in[1] - params[3]) / params[1], h);
  out[2] = clip((in[2] - params[2]) / params[0], w);
  out[3] = clip((in[3] - params[3]) / params[1], h);
}

std::int64_t head_image_size(const HeadShape& s) {
  const std::int64_t A = s.anchors;
  switch (s.layout) {
    case HeadLayout::kYoloV8: return (4 + s.classes) * A;
    case HeadLayout::kYoloV5: return A * (5 + s.classes);
    default: return A * 6;
  }
}

}  // namespace

void decode_cpu(const float* head, const HeadShape& shape, const DecodeOptions& options, const Candidates& out,
                int num_threads) {
  const int threads = detail::resolve_threads(num_threads, shape.batch);
  std::vector<Scratch> scratch(static_cast<std::size_t>(threads));
  for (Scratch& w : scratch) reserve(w, shape.anchors, 0, 0);
  DecodeOptions opts = options;
  opts.max_candidates = std::min(options.max_candidates, out.capacity);
  const std::int64_t cap = out.capacity;
  auto body = [&](std::int64_t b, int worker) {
    Scratch& w = scratch[worker];
    const float* img = head + b * head_image_size(shape);
    collect(img, shape, opts, opts.max_candidates, w);
    const auto n = static_cast<std::int32_t>(w.candidates.size());
    float* boxes = out.boxes + b * cap * 4;
    for (std::int32_t i = 0; i < n; ++i) {
      const Candidate& c = w.candidates[i];
      anchor_box(img, shape, c.index, boxes + 4 * i);
      out.scores[b * cap + i] = c.score;
      out.class_ids[b * cap + i] = c.cls;
      out.anchor_ids[b * cap + i] = c.index;
    }
    std::fill(boxes + 4 * static_cast<std::int64_t>(n), boxes + 4 * cap, 0.0f);
    std::fill(out.scores + b * cap + n, out.scores + (b + 1) * cap, 0.0f);
    std::fill(out.class_ids + b * cap + n, out.class_ids + (b + 1) * cap, -1);
    std::fill(out.anchor_ids + b * cap + n, out.anchor_ids + (b + 1) * cap, -1);
    out.counts[b] = n;
  };
  detail::parallel_for(shape.batch, threads, body);
}

void nms_cpu(const float* boxes, const float* scores, const std::int32_t* class_ids, const std::int32_t* counts,
             std::int32_t batch, std::int32_t k, float iou, std::int32_t max_det, bool agnostic,
             std::int32_t* keep, std::int32_t* kept, int num_threads) {
  const int threads = detail::resolve_threads(num_threads, batch);
  std::vector<Scratch> scratch(static_cast<std::size_t>(threads));
  for (Scratch& w : scratch) reserve(w, k, k, max_det);
  auto body = [&](std::int64_t b, int worker) {
    Scratch& w = scratch[worker];
    const std::int64_t base = b * static_cast<std::int64_t>(k);
    const std::int32_t n = counts ? std::clamp(counts[b], 0, k) : k;
    w.candidates.clear();
    for (std::int32_t i = 0; i < n; ++i) {
      const float s = scores[base + i];
      if (s == s) w.candidates.push_back({s, i, class_ids[base + i]});
    }
    std::sort(w.candidates.begin(), w.candidates.end(), ranks_before);
    const auto m = static_cast<std::int32_t>(w.candidates.size());
    for (std::int32_t i = 0; i < m; ++i) {
      set_box(w, i, boxes + 4 * (base + w.candidates[i].index), w.candidates[i].cls, agnostic);
    }
    greedy(w, m, iou, max_det, agnostic);
    const auto nk = static_cast<std::int32_t>(w.kept.size());
    std::int32_t* dst = keep + b * static_cast<std::int64_t>(max_det);
    for (std::int32_t i = 0; i < nk; ++i) dst[i] = w.candidates[w.kept[i]].index;
    std::fill(dst + nk, dst + max_det, -1);
    kept[b] = nk;
  };
  detail::parallel_for(batch, threads, body);
}

void map_boxes_cpu(const float* in, float* out, std::int32_t batch, std::int32_t k, std::int32_t row_stride,
                   const float* params, const std::int32_t* orig_sizes, int num_threads) {
  auto body = [&](std::int64_t b, int) {
    for (std::int32_t i = 0; i < k; ++i) {
      const std::int64_t at = (b * k + i) * row_stride;
      unmap(params + 4 * b, orig_sizes + 2 * b, in + at, out + at);
    }
  };
  detail::parallel_for(batch, num_threads, body);
}

void detect_postprocess_cpu(const float* head, const HeadShape& shape, const PostprocessOptions& options,
                            float* dets, std::int32_t* counts, int num_threads) {
  const int threads = detail::resolve_threads(num_threads, shape.batch);
  const bool end_to_end = shape.layout == HeadLayout::kEndToEnd;
  const std::int32_t max_det = options.max_det;
  // end-to-end heads: no candidate cap but max_det (taken before the class filter, as ultralytics does)
  const std::int32_t limit = end_to_end ? max_det : options.decode.max_candidates;
  const std::int32_t capacity = std::min(limit, shape.anchors);
  std::vector<Scratch> scratch(static_cast<std::size_t>(threads));
  for (Scratch& w : scratch) reserve(w, shape.anchors, capacity, max_det);
  auto body = [&](std::int64_t b, int worker) {
    Scratch& w = scratch[worker];
    const float* img = head + b * head_image_size(shape);
    collect(img, shape, options.decode, limit, w);
    const auto n = static_cast<std::int32_t>(w.candidates.size());
    for (std::int32_t i = 0; i < n; ++i) {
      float box[4];
      anchor_box(img, shape, w.candidates[i].index, box);
      set_box(w, i, box, w.candidates[i].cls, options.agnostic);
    }
    if (end_to_end) {  // the rows as collect_end_to_end left them (at most max_det)
      w.kept.clear();
      for (std::int32_t i = 0; i < n; ++i) w.kept.push_back(i);
    } else {
      greedy(w, n, options.iou, max_det, options.agnostic);
    }
    const auto nk = static_cast<std::int32_t>(w.kept.size());
    float* row = dets + b * static_cast<std::int64_t>(max_det) * 6;
    for (std::int32_t i = 0; i < nk; ++i, row += 6) {
      const std::int32_t at = w.kept[i];
      float box[4];  // as the head gave it (NMS saw it shifted)
      anchor_box(img, shape, w.candidates[at].index, box);
      if (options.params != nullptr) {
        unmap(options.params + 4 * b, options.orig_sizes + 2 * b, box, row);
      } else {
        std::copy(box, box + 4, row);
      }
      row[4] = w.candidates[at].score;
      row[5] = static_cast<float>(w.candidates[at].cls);
    }
    std::fill(row, dets + (b + 1) * static_cast<std::int64_t>(max_det) * 6, 0.0f);
    counts[b] = nk;
  };
  detail::parallel_for(shape.batch, threads, body);
}

}  // namespace peregrine
