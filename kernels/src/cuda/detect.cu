// Detection post-processing on the GPU, in two kernels on the caller's stream:
//
//  1. candidates_kernel (one thread per anchor or input candidate): threshold, best class, and a 64-bit
//     rank key (score desc, index asc) appended to the image's key list in the caller's scratch. End-to-end
//     rows are keyed by their position alone (ultralytics keeps the head's order), their class filter is
//     applied in select_kernel after the first max_det (decode: capacity) rows are taken.
//  2. select_kernel (one block per image): radix-select the top `capacity` keys when there are more,
//     bitonic-sort them in shared memory, then either write the candidates (decode), or run greedy NMS
//     (chunks of candidates checked in parallel against the boxes kept so far, then one warp settles the
//     chunk in order) and write keep indices (nms) or mapped detections (detect_postprocess).
//
// Box and IoU arithmetic uses the _rn intrinsics (never contracted into FMAs) in the same order as the
// CPU kernels and the NumPy reference, so kept indices agree exactly across tiers.
#include <algorithm>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include "common.cuh"
#include "peregrine/kernels.hpp"

namespace peregrine::cuda {
namespace {

using detail::key_index;
using detail::key_score;
using detail::rank_key;

constexpr int kThreads = 512;  // select_kernel block size == NMS chunk size
constexpr int kCandidateThreads = 256;

enum class Mode : int { kDecode = 0, kNms = 1, kDetect = 2 };

struct Args {
  Mode mode;
  HeadShape shape;  // decode/detect: the head; nms: layout unused, anchors = K candidates per image
  const float* head;
  DecodeOptions decode;
  // nms inputs
  const float* boxes;
  const float* scores;
  const std::int32_t* class_ids;
  const std::int32_t* in_counts;
  // scratch: keys [batch, anchors], classes [batch, anchors], counts [batch]
  DetectScratch scratch;
  std::int32_t capacity;  // candidates kept after selection
  std::int32_t sort_size;  // power of two >= capacity (shared memory keys)
  float iou;
  std::int32_t max_det;
  bool agnostic;
  const float* params;
  const std::int32_t* orig_sizes;
  // outputs
  Candidates cand;  // decode
  std::int32_t* keep;  // nms [batch, max_det]
  std::int32_t* kept;  // nms [batch]
  float* dets;  // detect [batch, max_det, 6]
  std::int32_t* det_counts;  // detect [batch]
};

__device__ __forceinline__ bool allowed(const DecodeOptions& o, std::int32_t cls) {
  return o.allowed == nullptr || (cls >= 0 && cls < o.allowed_size && o.allowed[cls] != 0);
}

// End-to-end rows (as the CPU kernels): the class id is the class column rounded (half to even), -1 when
// not finite; the class filter keeps rows whose class column equals an allowed id (ultralytics' isin).
__device__ __forceinline__ std::int32_t end_to_end_class(float c) {
  return (c >= -1e9f && c <= 1e9f) ? __float2int_rn(c) : -1;
}

__device__ __forceinline__ bool end_to_end_allowed(const DecodeOptions& o, float c) {
  if (o.allowed == nullptr) return true;
  const std::int32_t cls = end_to_end_class(c);
  return static_cast<float>(cls) == c && allowed(o, cls);
}

__device__ __forceinline__ std::int64_t head_image_size(const HeadShape& s) {
  const std::int64_t A = s.anchors;
  return s.layout == HeadLayout::kYoloV8   ? (4 + s.classes) * A
         : s.layout == HeadLayout::kYoloV5 ? A * (5 + s.classes)
                                           : A * 6;
}

__global__ void __launch_bounds__(kCandidateThreads) candidates_kernel(Args args) {
  const std::int32_t b = blockIdx.y;
  const std::int32_t a = blockIdx.x * blockDim.x + threadIdx.x;
  const std::int64_t A = args.shape.anchors;
  if (a >= A) return;
  std::uint64_t* keys = args.scratch.keys + b * A;
  if (args.mode == Mode::kNms) {
    const std::int32_t n = args.in_counts ? args.in_counts[b] : static_cast<std::int32_t>(A);
    if (a >= n) return;
    const float s = args.scores[b * A + a];
    if (s != s) return;
    keys[atomicAdd(args.scratch.counts + b, 1)] = rank_key(s, a);
    return;
  }
  const HeadShape& shape = args.shape;
  const float* img = args.head + b * head_image_size(shape);
  const float conf = args.decode.conf;
  float score;
  std::int32_t cls = 0;
  if (shape.layout == HeadLayout::kYoloV8) {
    const float* col = img + 4 * A + a;
    score = __ldg(col);
    for (std::int32_t c = 1; c < shape.classes; ++c) {
      const float v = __ldg(col + c * A);
      if (v > score) {
        score = v;
        cls = c;
      }
    }
  } else if (shape.layout == HeadLayout::kYoloV5) {
    const float* row = img + a * static_cast<std::int64_t>(5 + shape.classes);
    const float obj = __ldg(row + 4);
    if (!(obj > conf)) return;
    float best = __ldg(row + 5);
    for (std::int32_t c = 1; c < shape.classes; ++c) {
      const float v = __ldg(row + 5 + c);
      if (v > best) {
        best = v;
        cls = c;
      }
    }
    score = __fmul_rn(obj, best);
  } else {
    // end-to-end: every row above the threshold, ranked by its position alone (the head's order); the
    // class filter comes after the first max_det / max_candidates are taken (select_kernel)
    const float* row = img + a * 6;
    if (!(__ldg(row + 4) > conf)) return;
    keys[atomicAdd(args.scratch.counts + b, 1)] = rank_key(0.0f, a);
    args.scratch.classes[b * A + a] = end_to_end_class(__ldg(row + 5));
    return;
  }
  if (!(score > conf) || !allowed(args.decode, cls)) return;
  keys[atomicAdd(args.scratch.counts + b, 1)] = rank_key(score, a);
  args.scratch.classes[b * A + a] = cls;
}

__device__ __forceinline__ void anchor_box(const Args& args, std::int32_t b, std::uint32_t a, float box[4]) {
  const HeadShape& s = args.shape;
  if (args.mode == Mode::kNms) {
    const float* p = args.boxes + (b * static_cast<std::int64_t>(s.anchors) + a) * 4;
    for (int i = 0; i < 4; ++i) box[i] = p[i];
    return;
  }
  const float* img = args.head + b * head_image_size(s);
  if (s.layout == HeadLayout::kEndToEnd) {
    for (int i = 0; i < 4; ++i) box[i] = img[a * 6 + i];
    return;
  }
  float cx, cy, w, h;
  if (s.layout == HeadLayout::kYoloV8) {
    const std::int64_t A = s.anchors;
    cx = img[a];
    cy = img[A + a];
    w = img[2 * A + a];
    h = img[3 * A + a];
  } else {
    const float* row = img + a * static_cast<std::int64_t>(5 + s.classes);
    cx = row[0];
    cy = row[1];
    w = row[2];
    h = row[3];
  }
  const float hw = __fdiv_rn(w, 2.0f), hh = __fdiv_rn(h, 2.0f);
  box[0] = __fsub_rn(cx, hw);
  box[1] = __fsub_rn(cy, hh);
  box[2] = __fadd_rn(cx, hw);
  box[3] = __fadd_rn(cy, hh);
}

// The score of a candidate: from its key, or for end-to-end rows (keyed by position) from the head.
__device__ __forceinline__ float candidate_score(const Args& args, std::int32_t b, std::uint64_t key) {
  if (args.mode != Mode::kNms && args.shape.layout == HeadLayout::kEndToEnd) {
    return args.head[b * head_image_size(args.shape) + key_index(key) * 6 + 4];
  }
  return key_score(key);
}

// Whether an end-to-end candidate passes the class filter (always true for other layouts: filtered earlier).
__device__ __forceinline__ bool passes_filter(const Args& args, std::int32_t b, std::uint32_t a) {
  if (args.mode == Mode::kNms || args.shape.layout != HeadLayout::kEndToEnd) return true;
  return end_to_end_allowed(args.decode, args.head[b * head_image_size(args.shape) + a * 6 + 5]);
}

// Ultralytics' per-class NMS runs on boxes shifted by class * max_wh (7680), in float32; so does this one, so
// that an IoU next to the threshold falls on the same side (detect.cpp's class_offset).
constexpr float kMaxWh = 7680.0f;

__device__ __forceinline__ float class_offset(std::int32_t cls, bool agnostic) {
  return agnostic ? 0.0f : __fmul_rn(static_cast<float>(cls), kMaxWh);
}

__device__ __forceinline__ float box_area(float x1, float y1, float x2, float y2) {
  return __fmul_rn(__fsub_rn(x2, x1), __fsub_rn(y2, y1));
}

__device__ __forceinline__ bool iou_above(float ax1, float ay1, float ax2, float ay2, float aarea, float bx1,
                                          float by1, float bx2, float by2, float barea, float thr) {
  float w = __fsub_rn(fminf(ax2, bx2), fmaxf(ax1, bx1));
  float h = __fsub_rn(fminf(ay2, by2), fmaxf(ay1, by1));
  w = w > 0.0f ? w : 0.0f;
  h = h > 0.0f ? h : 0.0f;
  const float inter = __fmul_rn(w, h);
  return __fdiv_rn(inter, __fsub_rn(__fadd_rn(aarea, barea), inter)) > thr;
}

__device__ __forceinline__ float clip(float v, float hi) { return fminf(fmaxf(v, 0.0f), hi); }

struct Shared {
  std::uint64_t* keys;  // [sort_size]
  float *cx1, *cy1, *cx2, *cy2, *carea;  // [kThreads] one chunk of candidates
  std::int32_t *ccls, *cflag;
  float *kx1, *ky1, *kx2, *ky2, *karea;  // [max_det] kept boxes
  std::int32_t *kcls, *kpos;
};

__device__ Shared carve(unsigned char* base, std::int32_t sort_size, std::int32_t max_det) {
  Shared s;
  s.keys = reinterpret_cast<std::uint64_t*>(base);
  auto* f = reinterpret_cast<float*>(s.keys + sort_size);
  s.cx1 = f;
  s.cy1 = s.cx1 + kThreads;
  s.cx2 = s.cy1 + kThreads;
  s.cy2 = s.cx2 + kThreads;
  s.carea = s.cy2 + kThreads;
  s.ccls = reinterpret_cast<std::int32_t*>(s.carea + kThreads);
  s.cflag = s.ccls + kThreads;
  s.kx1 = reinterpret_cast<float*>(s.cflag + kThreads);
  s.ky1 = s.kx1 + max_det;
  s.kx2 = s.ky1 + max_det;
  s.ky2 = s.kx2 + max_det;
  s.karea = s.ky2 + max_det;
  s.kcls = reinterpret_cast<std::int32_t*>(s.karea + max_det);
  s.kpos = s.kcls + max_det;
  return s;
}

// The exact key of the k-th largest of keys[0, n) (keys are distinct), by 8-bit radix selection.
__device__ std::uint64_t kth_largest(const std::uint64_t* keys, std::int32_t n, std::int32_t k, unsigned* hist,
                                     std::uint64_t* shared_prefix, std::int32_t* shared_k) {
  if (threadIdx.x == 0) {
    *shared_prefix = 0;
    *shared_k = k;
  }
  std::uint64_t mask = 0;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    const std::uint64_t prefix = *shared_prefix;
    for (std::int32_t i = threadIdx.x; i < n; i += blockDim.x) {
      const std::uint64_t key = keys[i];
      if ((key & mask) == prefix) atomicAdd(hist + ((key >> shift) & 0xFF), 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      std::int32_t remaining = *shared_k;
      for (int d = 255; d >= 0; --d) {
        const auto c = static_cast<std::int32_t>(hist[d]);
        if (c >= remaining) {
          *shared_prefix = prefix | (static_cast<std::uint64_t>(d) << shift);
          break;
        }
        remaining -= c;
      }
      *shared_k = remaining;
    }
    mask |= std::uint64_t{0xFF} << shift;
    __syncthreads();
  }
  return *shared_prefix;
}

__device__ void bitonic_sort_desc(std::uint64_t* s, std::int32_t n) {
  for (std::int32_t k = 2; k <= n; k <<= 1) {
    for (std::int32_t j = k >> 1; j > 0; j >>= 1) {
      for (std::int32_t i = threadIdx.x; i < n; i += blockDim.x) {
        const std::int32_t l = i ^ j;
        if (l > i) {
          const std::uint64_t a = s[i], b = s[l];
          const bool descending = (i & k) == 0;
          if (descending ? a < b : a > b) {
            s[i] = b;
            s[l] = a;
          }
        }
      }
      __syncthreads();
    }
  }
}

__global__ void __launch_bounds__(kThreads) select_kernel(Args args) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ unsigned hist[256];
  __shared__ std::uint64_t threshold;
  __shared__ std::int32_t shared_k, selected, kept_count;
  const std::int32_t b = blockIdx.x;
  const std::int32_t tid = threadIdx.x;
  const std::int64_t A = args.shape.anchors;
  const std::int32_t max_det = args.max_det;
  Shared s = carve(smem, args.sort_size, args.mode == Mode::kDecode ? 0 : max_det);
  const std::uint64_t* keys = args.scratch.keys + b * A;
  const std::int32_t count = min(args.scratch.counts[b], static_cast<std::int32_t>(A));
  const std::int32_t m = min(count, args.capacity);

  // 1. the best m keys into shared memory
  if (count > args.capacity) {
    const std::uint64_t t = kth_largest(keys, count, args.capacity, hist, &threshold, &shared_k);
    if (tid == 0) selected = 0;
    __syncthreads();
    for (std::int32_t i = tid; i < count; i += blockDim.x) {
      if (keys[i] >= t) s.keys[atomicAdd(&selected, 1)] = keys[i];
    }
  } else {
    for (std::int32_t i = tid; i < count; i += blockDim.x) s.keys[i] = keys[i];
  }
  std::int32_t sorted = 1;
  while (sorted < m) sorted <<= 1;
  for (std::int32_t i = m + tid; i < sorted; i += blockDim.x) s.keys[i] = 0;
  __syncthreads();
  bitonic_sort_desc(s.keys, sorted);

  // 2a. decode: write the sorted candidates
  if (args.mode == Mode::kDecode) {
    const Candidates& c = args.cand;
    const std::int64_t base = b * static_cast<std::int64_t>(c.capacity);
    std::int32_t n = m;
    if (args.shape.layout == HeadLayout::kEndToEnd && args.decode.allowed != nullptr) {
      // the class filter after the cap: one warp compacts the allowed keys in order
      if (tid < 32) {
        std::int32_t kept = 0;
        for (std::int32_t start = 0; start < m; start += 32) {
          const std::int32_t i = start + tid;
          const std::uint64_t key = i < m ? s.keys[i] : 0;
          const bool ok = i < m && passes_filter(args, b, key_index(key));
          const unsigned mask = __ballot_sync(0xFFFFFFFFu, ok);  // every lane has read its key
          if (ok) s.keys[kept + __popc(mask & ((1u << tid) - 1u))] = key;  // never past position i
          kept += __popc(mask);
          __syncwarp();
        }
        if (tid == 0) kept_count = kept;
      }
      __syncthreads();
      n = kept_count;
    }
    for (std::int32_t i = tid; i < c.capacity; i += blockDim.x) {
      float* box = c.boxes + (base + i) * 4;
      if (i < n) {
        const std::uint32_t a = key_index(s.keys[i]);
        anchor_box(args, b, a, box);
        c.scores[base + i] = candidate_score(args, b, s.keys[i]);
        c.class_ids[base + i] = args.scratch.classes[b * A + a];
        c.anchor_ids[base + i] = static_cast<std::int32_t>(a);
      } else {
        for (int j = 0; j < 4; ++j) box[j] = 0.0f;
        c.scores[base + i] = 0.0f;
        c.class_ids[base + i] = -1;
        c.anchor_ids[base + i] = -1;
      }
    }
    if (tid == 0) c.counts[b] = n;
    return;
  }

  // 2b. greedy NMS (end-to-end heads: no NMS; the first max_det rows were selected, the class filter drops
  // some of them here)
  const bool skip_nms = args.mode == Mode::kDetect && args.shape.layout == HeadLayout::kEndToEnd;
  if (tid == 0) kept_count = 0;
  __syncthreads();
  for (std::int32_t start = 0; start < m; start += kThreads) {
    const std::int32_t nk_before = kept_count;
    if (nk_before >= max_det) break;
    const std::int32_t i = start + tid;
    if (i < m) {
      const std::uint32_t a = key_index(s.keys[i]);
      float box[4];
      anchor_box(args, b, a, box);
      const std::int32_t cls = args.mode == Mode::kNms ? args.class_ids[b * A + a] : args.scratch.classes[b * A + a];
      const float off = class_offset(cls, args.agnostic);
      for (int j = 0; j < 4; ++j) box[j] = __fadd_rn(box[j], off);  // as NMS sees it; the output is read again
      const float area = box_area(box[0], box[1], box[2], box[3]);
      bool hit = skip_nms && !passes_filter(args, b, a);
      if (!skip_nms) {
        for (std::int32_t k = 0; k < nk_before && !hit; ++k) {
          hit = (args.agnostic || s.kcls[k] == cls) &&
                iou_above(box[0], box[1], box[2], box[3], area, s.kx1[k], s.ky1[k], s.kx2[k], s.ky2[k],
                          s.karea[k], args.iou);
        }
      }
      s.cx1[tid] = box[0];
      s.cy1[tid] = box[1];
      s.cx2[tid] = box[2];
      s.cy2[tid] = box[3];
      s.carea[tid] = area;
      s.ccls[tid] = cls;
      s.cflag[tid] = hit ? 1 : 0;
    }
    __syncthreads();
    if (tid < 32) {  // one warp settles the chunk in rank order
      const std::int32_t lane = tid;
      std::int32_t nk = nk_before;
      const std::int32_t end = min(m - start, kThreads);
      for (std::int32_t j = 0; j < end && nk < max_det; ++j) {
        if (s.cflag[j]) continue;
        bool hit = false;
        if (!skip_nms) {
          const float x1 = s.cx1[j], y1 = s.cy1[j], x2 = s.cx2[j], y2 = s.cy2[j], area = s.carea[j];
          const std::int32_t cls = s.ccls[j];
          for (std::int32_t k = nk_before + lane; k < nk && !hit; k += 32) {
            hit = (args.agnostic || s.kcls[k] == cls) &&
                  iou_above(x1, y1, x2, y2, area, s.kx1[k], s.ky1[k], s.kx2[k], s.ky2[k], s.karea[k], args.iou);
          }
        }
        if (__any_sync(0xFFFFFFFFu, hit)) continue;
        if (lane == 0) {
          s.kx1[nk] = s.cx1[j];
          s.ky1[nk] = s.cy1[j];
          s.kx2[nk] = s.cx2[j];
          s.ky2[nk] = s.cy2[j];
          s.karea[nk] = s.carea[j];
          s.kcls[nk] = s.ccls[j];
          s.kpos[nk] = start + j;
        }
        ++nk;
        __syncwarp();
      }
      if (lane == 0) kept_count = nk;
    }
    __syncthreads();
  }
  const std::int32_t nk = kept_count;

  // 3. outputs
  if (args.mode == Mode::kNms) {
    for (std::int32_t i = tid; i < max_det; i += blockDim.x) {
      args.keep[b * static_cast<std::int64_t>(max_det) + i] =
          i < nk ? static_cast<std::int32_t>(key_index(s.keys[s.kpos[i]])) : -1;
    }
    if (tid == 0) args.kept[b] = nk;
    return;
  }
  for (std::int32_t i = tid; i < max_det; i += blockDim.x) {
    float* row = args.dets + (b * static_cast<std::int64_t>(max_det) + i) * 6;
    if (i >= nk) {
      for (int j = 0; j < 6; ++j) row[j] = 0.0f;
      continue;
    }
    float box[4];  // as the head gave it (NMS saw it shifted)
    anchor_box(args, b, key_index(s.keys[s.kpos[i]]), box);
    if (args.params != nullptr) {
      const float* p = args.params + 4 * b;
      const float h = static_cast<float>(args.orig_sizes[2 * b]), w = static_cast<float>(args.orig_sizes[2 * b + 1]);
      box[0] = clip(__fdiv_rn(__fsub_rn(box[0], p[2]), p[0]), w);
      box[1] = clip(__fdiv_rn(__fsub_rn(box[1], p[3]), p[1]), h);
      box[2] = clip(__fdiv_rn(__fsub_rn(box[2], p[2]), p[0]), w);
      box[3] = clip(__fdiv_rn(__fsub_rn(box[3], p[3]), p[1]), h);
    }
    for (int j = 0; j < 4; ++j) row[j] = box[j];
    row[4] = candidate_score(args, b, s.keys[s.kpos[i]]);
    row[5] = static_cast<float>(s.kcls[i]);
  }
  if (tid == 0) args.det_counts[b] = nk;
}

__global__ void map_boxes_kernel(const float* in, float* out, std::int64_t total, std::int32_t k,
                                 const float* params, const std::int32_t* sizes) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  const std::int64_t b = i / k;
  const float* p = params + 4 * b;
  const float h = static_cast<float>(sizes[2 * b]), w = static_cast<float>(sizes[2 * b + 1]);
  const float* src = in + i * 4;
  float* dst = out + i * 4;
  const float x1 = src[0], y1 = src[1], x2 = src[2], y2 = src[3];
  dst[0] = clip(__fdiv_rn(__fsub_rn(x1, p[2]), p[0]), w);
  dst[1] = clip(__fdiv_rn(__fsub_rn(y1, p[3]), p[1]), h);
  dst[2] = clip(__fdiv_rn(__fsub_rn(x2, p[2]), p[0]), w);
  dst[3] = clip(__fdiv_rn(__fsub_rn(y2, p[3]), p[1]), h);
}

std::int32_t pow2_at_least(std::int32_t n) {
  std::int32_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

// The dynamic shared memory limit of select_kernel on the current device: the opt-in maximum less the
// kernel's static shared memory. Set on the kernel once per device and never lowered: the attribute is
// the kernel's, shared by every thread launching it, so setting it to each launch's own size would let
// one thread's smaller value fail another's larger launch.
int select_dynamic_limit() {
  static std::mutex mutex;
  static std::unordered_map<int, int> limits;
  int device = 0;
  detail::check(cudaGetDevice(&device), "cudaGetDevice");
  const std::lock_guard<std::mutex> lock(mutex);
  if (const auto it = limits.find(device); it != limits.end()) return it->second;
  cudaFuncAttributes attributes{};
  detail::check(cudaFuncGetAttributes(&attributes, select_kernel), "cudaFuncGetAttributes(select_kernel)");
  const int limit = max_shared_memory_per_block() - static_cast<int>(attributes.sharedSizeBytes);
  detail::check(cudaFuncSetAttribute(select_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, limit),
                "cudaFuncSetAttribute(select_kernel)");
  limits.emplace(device, limit);
  return limit;
}

void launch(Args& args, std::uintptr_t stream) {
  if (args.shape.batch == 0) return;
  const cudaStream_t st = detail::as_stream(stream);
  args.sort_size = pow2_at_least(std::max(args.capacity, 1));
  const std::size_t bytes = detect_shared_bytes(args.capacity, args.mode == Mode::kDecode ? 0 : args.max_det);
  const int limit = select_dynamic_limit();
  if (bytes > static_cast<std::size_t>(limit)) {
    throw std::invalid_argument("max_candidates/max_det need " + std::to_string(bytes) +
                                " bytes of shared memory per block; this GPU allows " + std::to_string(limit));
  }
  detail::check(cudaMemsetAsync(args.scratch.counts, 0, sizeof(std::int32_t) * args.shape.batch, st),
                "cudaMemsetAsync(counts)");
  if (args.shape.anchors > 0) {
    const dim3 grid((args.shape.anchors + kCandidateThreads - 1) / kCandidateThreads, args.shape.batch);
    candidates_kernel<<<grid, kCandidateThreads, 0, st>>>(args);
    detail::check_launch("candidates_kernel launch");
  }
  select_kernel<<<args.shape.batch, kThreads, bytes, st>>>(args);
  detail::check_launch("select_kernel launch");
}

}  // namespace

int detect_max_shared_bytes() { return select_dynamic_limit(); }

std::size_t detect_shared_bytes(std::int32_t capacity, std::int32_t max_det) {
  return sizeof(std::uint64_t) * pow2_at_least(std::max(capacity, 1)) + 7 * sizeof(float) * kThreads +
         7 * sizeof(float) * static_cast<std::size_t>(max_det);
}

void decode(const float* head, const HeadShape& shape, const DecodeOptions& options, const Candidates& out,
            const DetectScratch& scratch, std::uintptr_t stream) {
  Args args{};
  args.mode = Mode::kDecode;
  args.shape = shape;
  args.head = head;
  args.decode = options;
  args.scratch = scratch;
  args.capacity = out.capacity;
  args.cand = out;
  launch(args, stream);
}

void detect_postprocess(const float* head, const HeadShape& shape, const PostprocessOptions& options,
                        float* dets, std::int32_t* counts, const DetectScratch& scratch, std::uintptr_t stream) {
  Args args{};
  args.mode = Mode::kDetect;
  args.shape = shape;
  args.head = head;
  args.decode = options.decode;
  args.scratch = scratch;
  // end-to-end heads: the first max_det rows (then the class filter); no other candidate cap
  const std::int32_t limit =
      shape.layout == HeadLayout::kEndToEnd ? options.max_det : options.decode.max_candidates;
  args.capacity = std::max(1, std::min(limit, shape.anchors));
  args.iou = options.iou;
  args.max_det = options.max_det;
  args.agnostic = options.agnostic;
  args.params = options.params;
  args.orig_sizes = options.orig_sizes;
  args.dets = dets;
  args.det_counts = counts;
  launch(args, stream);
}

void nms(const float* boxes, const float* scores, const std::int32_t* class_ids, const std::int32_t* counts,
         std::int32_t batch, std::int32_t k, float iou, std::int32_t max_det, bool agnostic, std::int32_t* keep,
         std::int32_t* kept, const DetectScratch& scratch, std::uintptr_t stream) {
  Args args{};
  args.mode = Mode::kNms;
  args.shape = HeadShape{HeadLayout::kYoloV8, batch, k, 0};
  args.boxes = boxes;
  args.scores = scores;
  args.class_ids = class_ids;
  args.in_counts = counts;
  args.scratch = scratch;
  args.capacity = std::max(k, 1);
  args.iou = iou;
  args.max_det = max_det;
  args.agnostic = agnostic;
  args.keep = keep;
  args.kept = kept;
  launch(args, stream);
}

void map_boxes(const float* in, float* out, std::int32_t batch, std::int32_t k, std::int32_t row_stride,
               const float* params, const std::int32_t* orig_sizes, std::uintptr_t stream) {
  if (row_stride != 4) throw std::invalid_argument("map_boxes: row_stride must be 4 on CUDA");
  const std::int64_t total = static_cast<std::int64_t>(batch) * k;
  if (total == 0) return;
  const int threads = 256;
  map_boxes_kernel<<<static_cast<unsigned>((total + threads - 1) / threads), threads, 0, detail::as_stream(stream)>>>(
      in, out, total, k, params, orig_sizes);
  detail::check_launch("map_boxes_kernel launch");
}

}  // namespace peregrine::cuda
