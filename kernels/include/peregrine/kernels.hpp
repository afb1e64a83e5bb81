// Peregrine's native pre-/post-processing kernels: the one header shared by the CPU (src/cpu) and CUDA
// (src/cuda) implementations and the pybind11 bindings. Plain C++17, no Python and no CUDA types here:
// device buffers travel as raw pointers and streams as integers.
//
// Every function takes pre-validated arguments (the bindings check shapes, dtypes and ranges); none
// allocates on the device; CPU functions may allocate small host scratch once per call.
#pragma once

#include <cstddef>
#include <cstdint>

namespace peregrine {

// ------------------------------------------------------------------------------------------------
// Pre-processing: resize + pad/crop + channel order + scale/normalize + HWC uint8 -> NCHW float.
// ------------------------------------------------------------------------------------------------

// One 3-channel interleaved uint8 frame (HWC). row_stride is in bytes (>= 3 * width).
struct Frame {
  const std::uint8_t* data;
  std::int32_t height;
  std::int32_t width;
  std::int64_t row_stride;
};

// Where the resized frame lands in the output: the frame is resized to resized_w x resized_h (see
// ResizeMode) and its top-left corner placed at output pixel (left, top). left/top may be negative
// (center crop); output pixels outside the resized frame get the pad value.
struct Placement {
  std::int32_t resized_w;
  std::int32_t resized_h;
  std::int32_t left;
  std::int32_t top;
};

// out[c] = src[src_channel[c]] * mul[c] + add[c] (ResizeMode::kFloat); pad[c] is the already transformed pad
// value. The exact modes (kLinear, kArea) resize to uint8 values v and write out[c] = lut[256 * c + v] of
// v = src[src_channel[c]] (FP16: that float rounded to half): the caller's table, so that each value is what
// the caller defines (Python: float32((v * scale - mean[c]) / std[c]) computed in double, which for
// scale = 1/255 is ultralytics' float32(v) / 255). lut is host memory for the CPU kernels, device memory for
// the CUDA ones; nullptr means v * mul[c] + add[c] in float.
struct PixelTransform {
  std::int32_t src_channel[3];
  float mul[3];
  float add[3];
  float pad[3];
  const float* lut;  // nullptr or [3][256]
  // Optional, CPU float32 output only: when the table is a pure scaling, lut[256 * c + v] == float(v *
  // lut_scale[c]) correctly rounded for all 256 v (checked per call), the value is computed, vectorized,
  // instead of looked up. Any value is safe (0: the table is used).
  double lut_scale[3];
};

enum class TensorType : std::int32_t { kFloat32 = 0, kFloat16 = 1 };

// How frames are resized. kLinear and kArea give, before the pixel transform, exactly the uint8 values of
// cv2.resize(frame, (resized_w, resized_h), interpolation=INTER_LINEAR / INTER_AREA) (OpenCV's own
// fixed-point and area arithmetic, see src/shared/opencv_resize.hpp). kFloat blends in float with
// INTER_LINEAR's coordinates and no rounding to uint8.
enum class ResizeMode : std::int32_t { kFloat = 0, kLinear = 1, kArea = 2 };

// out: [n, 3, out_h, out_w] of `type`, C-contiguous. num_threads <= 0 means all cores.
void resize_nchw_cpu(const Frame* frames, const Placement* placements, std::int32_t n, std::int32_t out_h,
                     std::int32_t out_w, const PixelTransform& transform, ResizeMode mode, TensorType type,
                     void* out, int num_threads);

// ------------------------------------------------------------------------------------------------
// Raw camera frames (sensor_msgs/image_encodings layouts) -> uint8 [height, width, 3] RGB or BGR, with
// cv_bridge's colours: the pixels of cv2.cvtColor(frame, code) for the code cv_bridge uses, byte for byte
// (YUV 4:2:2: OpenCV's fixed-point BT.601; Bayer: OpenCV's bilinear demosaic and its border rule).
// ------------------------------------------------------------------------------------------------

enum class RawLayout : std::int32_t {
  kPixels = 0,  // interleaved samples, RawFormat::channels per pixel
  kUyvy = 1,    // YUV 4:2:2, U Y0 V Y1 per two pixels (sensor_msgs "yuv422")
  kYuyv = 2,    // YUV 4:2:2, Y0 U Y1 V per two pixels ("yuv422_yuy2")
  kBayer = 3,   // one sample per pixel under a 2x2 colour filter (two greens, one red, one blue)
};

struct RawFormat {
  RawLayout layout;
  std::int32_t channels;      // kPixels: 1 (grey, replicated), 3, or 4 (the fourth, alpha, is dropped)
  std::int32_t sample_bytes;  // 1, or 2 (16-bit samples: the most significant byte is kept)
  bool big_endian;            // byte order of 16-bit samples
  bool blue_first;            // kPixels with 3 or 4 channels: BGR(A) rather than RGB(A)
  std::int32_t red_x;         // kBayer: column (0 or 1) of the red sample in the 2x2 pattern
  std::int32_t red_y;         // kBayer: its row (0 or 1); blue is at (1 - red_x, 1 - red_y)
};

// Bytes of one packed row of `width` pixels; kUyvy/kYuyv need an even width.
std::int64_t raw_row_bytes(const RawFormat& format, std::int32_t width);

// data: height rows of `step` bytes (>= raw_row_bytes; the last row may stop after its pixels). out:
// [height, width, 3] uint8, C-contiguous, RGB (BGR when bgr). Bayer: pixels in rows and columns 1 .. n-2 are
// interpolated, the outer ones copy their inner neighbour, and a frame with a side under 3 comes out black
// (as OpenCV does). 16-bit samples are narrowed before any interpolation.
void convert_raw_cpu(const std::uint8_t* data, std::int32_t height, std::int32_t width, std::int64_t step,
                     const RawFormat& format, bool bgr, std::uint8_t* out, int num_threads);

// ------------------------------------------------------------------------------------------------
// Post-processing: decode a detection head, NMS, map boxes back, classification.
// ------------------------------------------------------------------------------------------------

enum class HeadLayout : std::int32_t {
  kYoloV8 = 0,     // [batch, 4 + classes, anchors]: cx, cy, w, h, class scores (no objectness)
  kYoloV5 = 1,     // [batch, anchors, 5 + classes]: cx, cy, w, h, objectness, class scores
  kEndToEnd = 2,   // [batch, anchors, 6]: x1, y1, x2, y2, score, class (NMS already done by the model)
};
// End-to-end heads follow ultralytics' non_max_suppression for them: the rows with score > conf in the
// head's own order (never re-sorted), the first max_det of them (decode: max_candidates), and only then the
// class filter, which keeps rows whose class column equals an allowed id. No NMS, no other cap.

struct HeadShape {
  HeadLayout layout;
  std::int32_t batch;
  std::int32_t anchors;
  std::int32_t classes;  // 0 for kEndToEnd
};

struct DecodeOptions {
  float conf;                    // keep score > conf
  std::int32_t max_candidates;   // top-k by (score desc, anchor asc) before NMS (end-to-end: see above)
  const std::uint8_t* allowed;   // nullptr, or a mask of allowed_size entries: allowed[class] != 0
  std::int32_t allowed_size;
};

// Candidates of one batch, sorted by score desc then anchor asc (end-to-end heads: in the head's order, see
// kEndToEnd); rows >= counts[i] are zero / -1.
struct Candidates {
  float* boxes;              // [batch, capacity, 4] x1, y1, x2, y2
  float* scores;             // [batch, capacity]
  std::int32_t* class_ids;   // [batch, capacity]
  std::int32_t* anchor_ids;  // [batch, capacity]
  std::int32_t* counts;      // [batch]
  std::int32_t capacity;
};

void decode_cpu(const float* head, const HeadShape& shape, const DecodeOptions& options, const Candidates& out,
                int num_threads);

// Greedy NMS per image: candidates ordered by score desc then index asc (NaN scores never kept); a box is
// dropped when its IoU with an already kept box of the same class (any class if agnostic) is > iou.
// keep: [batch, max_det] indices into the k candidates, -1 after kept[i].
void nms_cpu(const float* boxes, const float* scores, const std::int32_t* class_ids, const std::int32_t* counts,
             std::int32_t batch, std::int32_t k, float iou, std::int32_t max_det, bool agnostic,
             std::int32_t* keep, std::int32_t* kept, int num_threads);

// Letterbox parameters per image: model = original * scale + pad, i.e. {scale_x, scale_y, pad_x, pad_y}.
// orig_sizes: [batch, 2] = height, width of the original image (boxes are clipped to [0, w] x [0, h]).
// in and out may be the same buffer.
void map_boxes_cpu(const float* in, float* out, std::int32_t batch, std::int32_t k, std::int32_t row_stride,
                   const float* params, const std::int32_t* orig_sizes, int num_threads);

struct PostprocessOptions {
  DecodeOptions decode;
  float iou;
  std::int32_t max_det;
  bool agnostic;
  const float* params;             // nullptr: leave boxes in model space
  const std::int32_t* orig_sizes;  // with params
};

// Fused decode -> NMS -> map back (end-to-end heads: their rows as kEndToEnd says, max_candidates and iou
// unused). dets: [batch, max_det, 6] x1, y1, x2, y2, score, class (zeros after counts[i]); counts: [batch].
void detect_postprocess_cpu(const float* head, const HeadShape& shape, const PostprocessOptions& options,
                            float* dets, std::int32_t* counts, int num_threads);

// Row-wise softmax of [n, c] float32.
void softmax_cpu(const float* in, float* out, std::int32_t n, std::int32_t c, int num_threads);

// Row-wise top-k of [n, c] float32 by value desc then index asc (NaN last): values/indices [n, k].
void topk_cpu(const float* in, std::int32_t n, std::int32_t c, std::int32_t k, float* values,
              std::int32_t* indices, int num_threads);

int hardware_threads();

// SIGBUS guard for shared mappings of files other processes may shrink (src/cpu/mapping_guard.cpp). A
// fault inside a guarded mapping replaces the whole mapping with private zero pages and sets its flag
// instead of killing the process. guard_mapping returns the slot, or -1 (table full, no handler).
constexpr int kMappingGuardSlots = 16384;
int guard_mapping(void* address, std::size_t length);
bool mapping_faulted(int slot);
void unguard_mapping(int slot);

// ------------------------------------------------------------------------------------------------
// CUDA: the same operations on device memory, launched on the caller's stream (a cudaStream_t as an
// integer; 0 is the legacy default stream). Defined only when built with PEREGRINE_WITH_CUDA; errors are
// thrown as std::runtime_error carrying the CUDA message.
// ------------------------------------------------------------------------------------------------
namespace cuda {

// Number of usable devices; 0 (never an error) when there is no driver or no device.
int device_count() noexcept;
// Largest dynamic shared memory per block on the current device (opt-in), in bytes.
int max_shared_memory_per_block();
// Largest dynamic shared memory the detection select kernel may use on the current device (the opt-in
// maximum less its static shared memory), in bytes; compare with detect_shared_bytes().
int detect_max_shared_bytes();

// frames[i].data are device pointers; the frame table itself is host memory (passed by value to the
// kernel in chunks).
void resize_nchw(const Frame* frames, const Placement* placements, std::int32_t n, std::int32_t out_h,
                 std::int32_t out_w, const PixelTransform& transform, ResizeMode mode, TensorType type, void* out,
                 std::uintptr_t stream);

// Device scratch the caller provides for the detection kernels: keys [batch, anchors] uint64,
// classes [batch, anchors] int32, counts [batch] int32.
struct DetectScratch {
  std::uint64_t* keys;
  std::int32_t* classes;
  std::int32_t* counts;
};

// Bytes of dynamic shared memory the select/sort kernel needs for a candidate capacity.
std::size_t detect_shared_bytes(std::int32_t capacity, std::int32_t max_det);

void decode(const float* head, const HeadShape& shape, const DecodeOptions& options, const Candidates& out,
            const DetectScratch& scratch, std::uintptr_t stream);
void detect_postprocess(const float* head, const HeadShape& shape, const PostprocessOptions& options,
                        float* dets, std::int32_t* counts, const DetectScratch& scratch, std::uintptr_t stream);
void nms(const float* boxes, const float* scores, const std::int32_t* class_ids, const std::int32_t* counts,
         std::int32_t batch, std::int32_t k, float iou, std::int32_t max_det, bool agnostic, std::int32_t* keep,
         std::int32_t* kept, const DetectScratch& scratch, std::uintptr_t stream);
void map_boxes(const float* in, float* out, std::int32_t batch, std::int32_t k, std::int32_t row_stride,
               const float* params, const std::int32_t* orig_sizes, std::uintptr_t stream);
void softmax(const float* in, float* out, std::int32_t n, std::int32_t c, std::uintptr_t stream);
void topk(const float* in, std::int32_t n, std::int32_t c, std::int32_t k, float* values, std::int32_t* indices,
          std::uintptr_t stream);

}  // namespace cuda
}  // namespace peregrine
