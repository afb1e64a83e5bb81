// Bindings of the CUDA kernels. Device buffers arrive as integer pointers read from
// __cuda_array_interface__ by the Python layer (peregrine.kernels._cuda, which checks shapes and dtypes),
// streams as integer handles; nothing is allocated here. Errors from CUDA become RuntimeError.
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "common.hpp"
#include "peregrine/kernels.hpp"

namespace peregrine::bindings {

#ifdef PEREGRINE_WITH_CUDA
namespace {

using Ptr = std::uintptr_t;

template <class T>
T* device(Ptr p, const char* name) {
  if (p == 0) value_error(std::string(name) + ": expected a device pointer, got NULL");
  return reinterpret_cast<T*>(p);
}

template <class T>
T* optional_device(Ptr p) {
  return reinterpret_cast<T*>(p);
}

HeadShape head_shape(int layout, int batch, int anchors, int classes) {
  if (layout < 0 || layout > 2) value_error("layout: expected 0, 1 or 2, got " + std::to_string(layout));
  if (batch < 0 || anchors < 0 || classes < 0) value_error("head: expected non-negative sizes");
  return HeadShape{static_cast<HeadLayout>(layout), batch, anchors, classes};
}

DecodeOptions decode_options(float conf, int max_candidates, Ptr allowed, int allowed_size) {
  check_unit(conf, "conf");
  if (max_candidates < 1) value_error("max_candidates: expected >= 1");
  if (allowed != 0 && allowed_size < 1) value_error("allowed_size: expected >= 1 with an allowed mask");
  return DecodeOptions{conf, max_candidates, optional_device<const std::uint8_t>(allowed), allowed_size};
}

cuda::DetectScratch scratch(Ptr keys, Ptr classes, Ptr counts) {
  return cuda::DetectScratch{device<std::uint64_t>(keys, "scratch keys"), device<std::int32_t>(classes, "scratch classes"),
                       device<std::int32_t>(counts, "scratch counts")};
}

void resize(Ptr out, bool half, const std::vector<std::array<std::int64_t, 4>>& frames,
            const Array<std::int32_t>& placements, int out_h, int out_w, const std::array<int, 3>& src_channel,
            const std::array<float, 3>& mul, const std::array<float, 3>& add, const std::array<float, 3>& pad,
            const std::string& resize_name, Ptr stream, Ptr lut) {
  const ResizeMode mode = resize_mode(resize_name);
  const auto n = static_cast<py::ssize_t>(frames.size());
  check_shape(placements, "placements", {n, 4}, "[len(frames), 4]");
  if (out_h < 1 || out_w < 1) value_error("size: expected a positive output size");
  std::vector<Frame> fs;
  std::vector<Placement> ps;
  auto p = placements.unchecked<2>();
  for (py::ssize_t i = 0; i < n; ++i) {
    const auto& f = frames[i];  // pointer, height, width, row stride (bytes)
    if (f[1] < 1 || f[2] < 1 || f[3] < 3 * f[2]) value_error("frames[" + std::to_string(i) + "]: bad geometry");
    fs.push_back(Frame{device<const std::uint8_t>(static_cast<Ptr>(f[0]), "frames"), static_cast<std::int32_t>(f[1]),
                       static_cast<std::int32_t>(f[2]), f[3]});
    Placement pl{p(i, 0), p(i, 1), p(i, 2), p(i, 3)};
    if (pl.resized_w < 1 || pl.resized_h < 1) value_error("placements: expected resized sizes >= 1");
    ps.push_back(pl);
  }
  PixelTransform t{};
  for (int c = 0; c < 3; ++c) {
    if (src_channel[c] < 0 || src_channel[c] > 2) value_error("src_channel: expected indices in [0, 2]");
    t.src_channel[c] = src_channel[c];
    t.mul[c] = mul[c];
    t.add[c] = add[c];
    t.pad[c] = pad[c];
  }
  t.lut = optional_device<const float>(lut);
  void* dst = n ? device<void>(out, "out") : nullptr;
  py::gil_scoped_release nogil;
  cuda::resize_nchw(fs.data(), ps.data(), static_cast<std::int32_t>(n), out_h, out_w, t, mode,
                    half ? TensorType::kFloat16 : TensorType::kFloat32, dst, stream);
}

}  // namespace
#endif

void bind_cuda(py::module_& m) {
  m.def("cuda_device_count", [] {
#ifdef PEREGRINE_WITH_CUDA
    return cuda::device_count();
#else
    return 0;
#endif
  }, "Number of CUDA devices usable by this build; 0 without CUDA, a driver or a device (never raises).");
#ifdef PEREGRINE_WITH_CUDA
  m.def("cuda_max_shared_memory", &cuda::max_shared_memory_per_block,
        "Opt-in shared memory per block of the current device, bytes.");
  m.def("cuda_detect_max_shared_bytes", &cuda::detect_max_shared_bytes,
        "Dynamic shared memory the detection select kernel may use on the current device, bytes.");
  m.def("cuda_detect_shared_bytes", &cuda::detect_shared_bytes, py::arg("capacity"), py::arg("max_det"),
        "Shared memory the detection select kernel needs for this candidate capacity and max_det, bytes.");
  m.def("cuda_resize_nchw", &resize, py::arg("out"), py::arg("half"), py::arg("frames"),
        py::arg("placements").noconvert(), py::arg("out_h"), py::arg("out_w"), py::arg("src_channel"),
        py::arg("mul"), py::arg("add"), py::arg("pad"), py::arg("resize"), py::arg("stream"), py::arg("lut") = 0,
        "resize_nchw on device memory: frames are (pointer, height, width, row_stride) tuples; resize is "
        "'linear', 'area' or 'float' as for resize_nchw; lut: 0 or a device pointer to float32 [3, 256], the "
        "output value of each uint8 value per output channel (exact modes; see resize_nchw).");
  m.def(
      "cuda_decode",
      [](Ptr head, int layout, int batch, int anchors, int classes, float conf, int max_candidates, Ptr allowed,
         int allowed_size, Ptr boxes, Ptr scores, Ptr class_ids, Ptr anchor_ids, Ptr counts, int capacity,
         Ptr keys, Ptr scratch_classes, Ptr scratch_counts, Ptr stream) {
        const HeadShape s = head_shape(layout, batch, anchors, classes);
        const DecodeOptions o = decode_options(conf, max_candidates, allowed, allowed_size);
        if (capacity < 1) value_error("capacity: expected >= 1");
        Candidates c{device<float>(boxes, "boxes"), device<float>(scores, "scores"),
                     device<std::int32_t>(class_ids, "class_ids"), device<std::int32_t>(anchor_ids, "anchor_ids"),
                     device<std::int32_t>(counts, "counts"), capacity};
        const cuda::DetectScratch sc = scratch(keys, scratch_classes, scratch_counts);
        const float* h = device<const float>(head, "head");
        py::gil_scoped_release nogil;
        cuda::decode(h, s, o, c, sc, stream);
      },
      py::arg("head"), py::arg("layout"), py::arg("batch"), py::arg("anchors"), py::arg("classes"), py::arg("conf"),
      py::arg("max_candidates"), py::arg("allowed"), py::arg("allowed_size"), py::arg("boxes"), py::arg("scores"),
      py::arg("class_ids"), py::arg("anchor_ids"), py::arg("counts"), py::arg("capacity"), py::arg("keys"),
      py::arg("scratch_classes"), py::arg("scratch_counts"), py::arg("stream"));
  m.def(
      "cuda_detect_postprocess",
      [](Ptr head, int layout, int batch, int anchors, int classes, float conf, float iou, int max_det,
         int max_candidates, Ptr allowed, int allowed_size, bool agnostic, Ptr params, Ptr orig_sizes, Ptr dets,
         Ptr counts, Ptr keys, Ptr scratch_classes, Ptr scratch_counts, Ptr stream) {
        PostprocessOptions o{};
        const HeadShape s = head_shape(layout, batch, anchors, classes);
        o.decode = decode_options(conf, max_candidates, allowed, allowed_size);
        check_unit(iou, "iou");
        if (max_det < 1) value_error("max_det: expected >= 1");
        if ((params == 0) != (orig_sizes == 0)) value_error("params, orig_sizes: expected both or neither");
        o.iou = iou;
        o.max_det = max_det;
        o.agnostic = agnostic;
        o.params = optional_device<const float>(params);
        o.orig_sizes = optional_device<const std::int32_t>(orig_sizes);
        float* d = device<float>(dets, "dets");
        std::int32_t* n = device<std::int32_t>(counts, "counts");
        const cuda::DetectScratch sc = scratch(keys, scratch_classes, scratch_counts);
        const float* h = device<const float>(head, "head");
        py::gil_scoped_release nogil;
        cuda::detect_postprocess(h, s, o, d, n, sc, stream);
      },
      py::arg("head"), py::arg("layout"), py::arg("batch"), py::arg("anchors"), py::arg("classes"), py::arg("conf"),
      py::arg("iou"), py::arg("max_det"), py::arg("max_candidates"), py::arg("allowed"), py::arg("allowed_size"),
      py::arg("agnostic"), py::arg("params"), py::arg("orig_sizes"), py::arg("dets"), py::arg("counts"),
      py::arg("keys"), py::arg("scratch_classes"), py::arg("scratch_counts"), py::arg("stream"));
  m.def(
      "cuda_nms",
      [](Ptr boxes, Ptr scores, Ptr class_ids, Ptr counts, int batch, int k, float iou, int max_det, bool agnostic,
         Ptr keep, Ptr kept, Ptr keys, Ptr scratch_classes, Ptr scratch_counts, Ptr stream) {
        check_unit(iou, "iou");
        if (max_det < 1) value_error("max_det: expected >= 1");
        if (batch < 0 || k < 0) value_error("boxes: expected non-negative sizes");
        const float* b = device<const float>(boxes, "boxes");
        const float* s = device<const float>(scores, "scores");
        const std::int32_t* c = device<const std::int32_t>(class_ids, "class_ids");
        std::int32_t* kp = device<std::int32_t>(keep, "keep");
        std::int32_t* kd = device<std::int32_t>(kept, "kept");
        const cuda::DetectScratch sc = scratch(keys, scratch_classes, scratch_counts);
        py::gil_scoped_release nogil;
        cuda::nms(b, s, c, optional_device<const std::int32_t>(counts), batch, k, iou, max_det, agnostic, kp, kd, sc,
                  stream);
      },
      py::arg("boxes"), py::arg("scores"), py::arg("class_ids"), py::arg("counts"), py::arg("batch"), py::arg("k"),
      py::arg("iou"), py::arg("max_det"), py::arg("agnostic"), py::arg("keep"), py::arg("kept"), py::arg("keys"),
      py::arg("scratch_classes"), py::arg("scratch_counts"), py::arg("stream"));
  m.def(
      "cuda_map_boxes",
      [](Ptr in, Ptr out, int batch, int k, Ptr params, Ptr orig_sizes, Ptr stream) {
        if (batch < 0 || k < 0) value_error("boxes: expected non-negative sizes");
        const float* i = device<const float>(in, "boxes");
        float* o = device<float>(out, "out");
        const float* p = device<const float>(params, "params");
        const std::int32_t* z = device<const std::int32_t>(orig_sizes, "orig_sizes");
        py::gil_scoped_release nogil;
        cuda::map_boxes(i, o, batch, k, 4, p, z, stream);
      },
      py::arg("boxes"), py::arg("out"), py::arg("batch"), py::arg("k"), py::arg("params"), py::arg("orig_sizes"),
      py::arg("stream"));
  m.def(
      "cuda_softmax",
      [](Ptr in, Ptr out, int n, int c, Ptr stream) {
        if (n < 0 || c < 1) value_error("logits: expected [N, C] with C >= 1");
        const float* i = device<const float>(in, "logits");
        float* o = device<float>(out, "out");
        py::gil_scoped_release nogil;
        cuda::softmax(i, o, n, c, stream);
      },
      py::arg("logits"), py::arg("out"), py::arg("n"), py::arg("c"), py::arg("stream"));
  m.def(
      "cuda_topk",
      [](Ptr in, int n, int c, int k, Ptr values, Ptr indices, Ptr stream) {
        if (n < 0 || c < 1 || k < 1 || k > c) value_error("k: expected 1 <= k <= C");
        const float* i = device<const float>(in, "values");
        float* v = device<float>(values, "out_values");
        std::int32_t* x = device<std::int32_t>(indices, "out_indices");
        py::gil_scoped_release nogil;
        cuda::topk(i, n, c, k, v, x, stream);
      },
      py::arg("values"), py::arg("n"), py::arg("c"), py::arg("k"), py::arg("out_values"), py::arg("out_indices"),
      py::arg("stream"));
#endif
}

}  // namespace peregrine::bindings
