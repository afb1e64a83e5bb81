// Bindings of the detection post-processing family: decode, nms, map_boxes, detect_postprocess.
#include <optional>
#include <string>
#include <vector>

#include "common.hpp"
#include "peregrine/kernels.hpp"

namespace peregrine::bindings {
namespace {

constexpr const char* kLayouts = "0 (yolov8 [N, 4+C, A]), 1 (yolov5 [N, A, 5+C]) or 2 (end-to-end [N, K, 6])";

HeadShape head_shape(const Array<float>& head, int layout) {
  if (layout < 0 || layout > 2) value_error("layout: expected " + std::string(kLayouts) + ", got " + std::to_string(layout));
  if (head.ndim() != 3) value_error("head: expected a 3-D float32 array, got " + describe(head));
  HeadShape s{static_cast<HeadLayout>(layout), to_int32(head.shape(0), "head"), 0, 0};
  if (s.layout == HeadLayout::kYoloV8) {
    if (head.shape(1) < 5) value_error("head: expected yolov8 [N, 4 + C, A] with C >= 1, got " + describe(head));
    s.classes = to_int32(head.shape(1) - 4, "head");
    s.anchors = to_int32(head.shape(2), "head");
  } else if (s.layout == HeadLayout::kYoloV5) {
    if (head.shape(2) < 6) value_error("head: expected yolov5 [N, A, 5 + C] with C >= 1, got " + describe(head));
    s.anchors = to_int32(head.shape(1), "head");
    s.classes = to_int32(head.shape(2) - 5, "head");
  } else {
    if (head.shape(2) != 6) value_error("head: expected end-to-end [N, K, 6], got " + describe(head));
    s.anchors = to_int32(head.shape(1), "head");
  }
  return s;
}

DecodeOptions decode_options(float conf, int max_candidates, const std::optional<Array<std::uint8_t>>& allowed) {
  check_unit(conf, "conf");
  if (max_candidates < 1) value_error("max_candidates: expected >= 1, got " + std::to_string(max_candidates));
  DecodeOptions o{conf, max_candidates, nullptr, 0};
  if (allowed) {
    if (allowed->ndim() != 1) value_error("allowed: expected a 1-D uint8 class mask, got " + describe(*allowed));
    o.allowed = allowed->data();
    o.allowed_size = to_int32(allowed->shape(0), "allowed");
  }
  return o;
}

struct MapArgs {
  const float* params = nullptr;
  const std::int32_t* sizes = nullptr;
};

MapArgs map_args(const std::optional<Array<float>>& params, const std::optional<Array<std::int32_t>>& sizes,
                 py::ssize_t batch) {
  if (params.has_value() != sizes.has_value()) {
    value_error("params, orig_sizes: expected both (to map boxes back) or neither");
  }
  MapArgs m;
  if (params) {
    check_shape(*params, "params", {batch, 4}, "[N, 4] (scale_x, scale_y, pad_x, pad_y)");
    check_shape(*sizes, "orig_sizes", {batch, 2}, "[N, 2] (height, width)");
    auto p = params->unchecked<2>();
    auto z = sizes->unchecked<2>();
    for (py::ssize_t i = 0; i < batch; ++i) {
      if (!(p(i, 0) > 0.0f) || !(p(i, 1) > 0.0f)) value_error("params: expected scales > 0 in row " + std::to_string(i));
      if (z(i, 0) < 1 || z(i, 1) < 1) value_error("orig_sizes: expected sizes >= 1 in row " + std::to_string(i));
    }
    m.params = params->data();
    m.sizes = sizes->data();
  }
  return m;
}

void decode_into(const py::object& boxes, const py::object& scores, const py::object& class_ids,
                 const py::object& anchor_ids, const py::object& counts, const Array<float>& head, int layout,
                 float conf, int max_candidates, const std::optional<Array<std::uint8_t>>& allowed,
                 int num_threads) {
  check_threads(num_threads);
  const HeadShape s = head_shape(head, layout);
  const DecodeOptions o = decode_options(conf, max_candidates, allowed);
  if (!py::isinstance<py::array>(scores)) type_error("scores: expected a numpy.ndarray");
  const py::ssize_t cap = py::reinterpret_borrow<py::array>(scores).ndim() == 2
                              ? py::reinterpret_borrow<py::array>(scores).shape(1)
                              : -1;
  if (cap < 1) value_error("scores: expected float32 [N, K] with K >= 1");
  const py::ssize_t n = s.batch;
  Candidates c{};
  c.boxes = output<float>(boxes, "boxes", {n, cap, 4}).mutable_data();
  c.scores = output<float>(scores, "scores", {n, cap}).mutable_data();
  c.class_ids = output<std::int32_t>(class_ids, "class_ids", {n, cap}).mutable_data();
  c.anchor_ids = output<std::int32_t>(anchor_ids, "anchor_ids", {n, cap}).mutable_data();
  c.counts = output<std::int32_t>(counts, "counts", {n}).mutable_data();
  c.capacity = to_int32(cap, "scores");
  py::gil_scoped_release nogil;
  decode_cpu(head.data(), s, o, c, num_threads);
}

py::tuple decode(const Array<float>& head, int layout, float conf, int max_candidates,
                 const std::optional<Array<std::uint8_t>>& allowed, int num_threads) {
  const HeadShape s = head_shape(head, layout);
  decode_options(conf, max_candidates, allowed);
  const py::ssize_t n = s.batch, cap = std::max(1, std::min(max_candidates, s.anchors));
  Array<float> boxes({n, cap, py::ssize_t{4}}), scores({n, cap});
  Array<std::int32_t> class_ids({n, cap}), anchor_ids({n, cap}), counts({n});
  decode_into(boxes, scores, class_ids, anchor_ids, counts, head, layout, conf, max_candidates, allowed, num_threads);
  return py::make_tuple(boxes, scores, class_ids, anchor_ids, counts);
}

struct NmsArgs {
  std::int32_t batch, k;
  const std::int32_t* counts;
};

NmsArgs nms_args(const Array<float>& boxes, const Array<float>& scores, const Array<std::int32_t>& class_ids,
                 const std::optional<Array<std::int32_t>>& counts, float iou, int max_det) {
  check_unit(iou, "iou");
  if (max_det < 1) value_error("max_det: expected >= 1, got " + std::to_string(max_det));
  if (boxes.ndim() != 3 || boxes.shape(2) != 4) value_error("boxes: expected float32 [N, K, 4], got " + describe(boxes));
  const py::ssize_t n = boxes.shape(0), k = boxes.shape(1);
  check_shape(scores, "scores", {n, k}, "[N, K] like boxes");
  check_shape(class_ids, "class_ids", {n, k}, "[N, K] like boxes");
  NmsArgs a{to_int32(n, "boxes"), to_int32(k, "boxes"), nullptr};
  if (counts) {
    check_shape(*counts, "counts", {n}, "[N]");
    auto c = counts->unchecked<1>();
    for (py::ssize_t i = 0; i < n; ++i) {
      if (c(i) < 0 || c(i) > k) value_error("counts: expected values in [0, K], got " + std::to_string(c(i)));
    }
    a.counts = counts->data();
  }
  return a;
}

void nms_into(const py::object& keep, const py::object& kept, const Array<float>& boxes, const Array<float>& scores,
              const Array<std::int32_t>& class_ids, const std::optional<Array<std::int32_t>>& counts, float iou,
              int max_det, bool agnostic, int num_threads) {
  check_threads(num_threads);
  const NmsArgs a = nms_args(boxes, scores, class_ids, counts, iou, max_det);
  std::int32_t* keep_p = output<std::int32_t>(keep, "keep", {a.batch, max_det}).mutable_data();
  std::int32_t* kept_p = output<std::int32_t>(kept, "kept", {a.batch}).mutable_data();
  py::gil_scoped_release nogil;
  nms_cpu(boxes.data(), scores.data(), class_ids.data(), a.counts, a.batch, a.k, iou, max_det, agnostic, keep_p,
          kept_p, num_threads);
}

py::tuple nms(const Array<float>& boxes, const Array<float>& scores, const Array<std::int32_t>& class_ids,
              const std::optional<Array<std::int32_t>>& counts, float iou, int max_det, bool agnostic,
              int num_threads) {
  const NmsArgs a = nms_args(boxes, scores, class_ids, counts, iou, max_det);
  Array<std::int32_t> keep({py::ssize_t{a.batch}, py::ssize_t{max_det}}), kept({py::ssize_t{a.batch}});
  nms_into(keep, kept, boxes, scores, class_ids, counts, iou, max_det, agnostic, num_threads);
  return py::make_tuple(keep, kept);
}

void map_boxes_into(const py::object& out, const Array<float>& boxes, const Array<float>& params,
                    const Array<std::int32_t>& orig_sizes, int num_threads) {
  check_threads(num_threads);
  if (boxes.ndim() != 3 || boxes.shape(2) != 4) value_error("boxes: expected float32 [N, K, 4], got " + describe(boxes));
  const MapArgs m = map_args(params, orig_sizes, boxes.shape(0));
  float* dst = output<float>(out, "out", {boxes.shape(0), boxes.shape(1), 4}).mutable_data();
  const auto n = to_int32(boxes.shape(0), "boxes");
  const auto k = to_int32(boxes.shape(1), "boxes");
  py::gil_scoped_release nogil;
  map_boxes_cpu(boxes.data(), dst, n, k, 4, m.params, m.sizes, num_threads);
}

Array<float> map_boxes(const Array<float>& boxes, const Array<float>& params, const Array<std::int32_t>& orig_sizes,
                       int num_threads) {
  if (boxes.ndim() != 3 || boxes.shape(2) != 4) value_error("boxes: expected float32 [N, K, 4], got " + describe(boxes));
  Array<float> out({boxes.shape(0), boxes.shape(1), py::ssize_t{4}});
  map_boxes_into(out, boxes, params, orig_sizes, num_threads);
  return out;
}

void postprocess_into(const py::object& dets, const py::object& counts, const Array<float>& head, int layout,
                      float conf, float iou, int max_det, int max_candidates,
                      const std::optional<Array<std::uint8_t>>& allowed, bool agnostic,
                      const std::optional<Array<float>>& params, const std::optional<Array<std::int32_t>>& orig_sizes,
                      int num_threads) {
  check_threads(num_threads);
  const HeadShape s = head_shape(head, layout);
  PostprocessOptions o{};
  o.decode = decode_options(conf, max_candidates, allowed);
  check_unit(iou, "iou");
  if (max_det < 1) value_error("max_det: expected >= 1, got " + std::to_string(max_det));
  o.iou = iou;
  o.max_det = max_det;
  o.agnostic = agnostic;
  const MapArgs m = map_args(params, orig_sizes, s.batch);
  o.params = m.params;
  o.orig_sizes = m.sizes;
  const py::ssize_t n = s.batch;
  float* dets_p = output<float>(dets, "dets", {n, max_det, 6}).mutable_data();
  std::int32_t* counts_p = output<std::int32_t>(counts, "counts", {n}).mutable_data();
  py::gil_scoped_release nogil;
  detect_postprocess_cpu(head.data(), s, o, dets_p, counts_p, num_threads);
}

py::tuple postprocess(const Array<float>& head, int layout, float conf, float iou, int max_det, int max_candidates,
                      const std::optional<Array<std::uint8_t>>& allowed, bool agnostic,
                      const std::optional<Array<float>>& params, const std::optional<Array<std::int32_t>>& orig_sizes,
                      int num_threads) {
  const HeadShape s = head_shape(head, layout);
  if (max_det < 1) value_error("max_det: expected >= 1, got " + std::to_string(max_det));
  Array<float> dets({py::ssize_t{s.batch}, py::ssize_t{max_det}, py::ssize_t{6}});
  Array<std::int32_t> counts({py::ssize_t{s.batch}});
  postprocess_into(dets, counts, head, layout, conf, iou, max_det, max_candidates, allowed, agnostic, params,
                   orig_sizes, num_threads);
  return py::make_tuple(dets, counts);
}

}  // namespace

void bind_postprocess(py::module_& m) {
  m.def("decode", &decode, py::arg("head").noconvert(), py::arg("layout"), py::arg("conf"),
        py::arg("max_candidates"), py::arg("allowed").noconvert() = py::none(), py::arg("num_threads") = 0,
        R"doc(Decode a detection head into candidates sorted by score desc then anchor asc.

head: float32 C-contiguous, layout 0 = yolov8 [N, 4+C, A], 1 = yolov5 [N, A, 5+C] (score = obj * cls),
2 = end-to-end [N, K, 6]. Keeps score > conf and (with `allowed`, a uint8 mask by class id) allowed
classes; at most max_candidates per image. End-to-end heads (ultralytics' order): the rows above conf in
the head's own order, the first max_candidates of them, then the class filter (class column == an allowed
id). Returns (boxes float32 [N, K, 4] x1 y1 x2 y2,
scores float32 [N, K], class_ids int32 [N, K], anchor_ids int32 [N, K], counts int32 [N]) with
K = min(max_candidates, A); rows past counts[i] are 0 / -1.)doc");
  m.def("decode_into", &decode_into, py::arg("boxes"), py::arg("scores"), py::arg("class_ids"),
        py::arg("anchor_ids"), py::arg("counts"), py::arg("head").noconvert(), py::arg("layout"), py::arg("conf"),
        py::arg("max_candidates"), py::arg("allowed").noconvert() = py::none(), py::arg("num_threads") = 0,
        "decode writing into caller buffers (K taken from scores.shape[1]).");
  m.def("nms", &nms, py::arg("boxes").noconvert(), py::arg("scores").noconvert(), py::arg("class_ids").noconvert(),
        py::arg("counts").noconvert() = py::none(), py::arg("iou"), py::arg("max_det"), py::arg("agnostic") = false,
        py::arg("num_threads") = 0,
        R"doc(Greedy NMS per image over the first counts[i] of K candidates (all K without counts).

Candidates rank by score desc then index asc; NaN scores are never kept. A candidate is dropped when its
IoU with a kept box of the same class (any class if agnostic) is > iou. Returns (keep int32 [N, max_det]
indices into K in rank order, -1 padded; kept int32 [N]).)doc");
  m.def("nms_into", &nms_into, py::arg("keep"), py::arg("kept"), py::arg("boxes").noconvert(),
        py::arg("scores").noconvert(), py::arg("class_ids").noconvert(), py::arg("counts").noconvert() = py::none(),
        py::arg("iou"), py::arg("max_det"), py::arg("agnostic") = false, py::arg("num_threads") = 0,
        "nms writing into keep [N, max_det] and kept [N] (int32).");
  m.def("map_boxes", &map_boxes, py::arg("boxes").noconvert(), py::arg("params").noconvert(),
        py::arg("orig_sizes").noconvert(), py::arg("num_threads") = 0,
        "Boxes [N, K, 4] from model to original pixels: (v - pad) / scale, clipped to [0, w] x [0, h].");
  m.def("map_boxes_into", &map_boxes_into, py::arg("out"), py::arg("boxes").noconvert(),
        py::arg("params").noconvert(), py::arg("orig_sizes").noconvert(), py::arg("num_threads") = 0,
        "map_boxes writing into out (may be boxes itself).");
  m.def("detect_postprocess", &postprocess, py::arg("head").noconvert(), py::arg("layout"), py::arg("conf"),
        py::arg("iou"), py::arg("max_det"), py::arg("max_candidates"), py::arg("allowed").noconvert() = py::none(),
        py::arg("agnostic") = false, py::arg("params").noconvert() = py::none(),
        py::arg("orig_sizes").noconvert() = py::none(), py::arg("num_threads") = 0,
        "decode -> NMS -> map back; end-to-end heads: the first max_det rows above conf in the head's order, "
        "then the class filter (ultralytics' order; no NMS, max_candidates unused). Returns (dets float32 "
        "[N, max_det, 6] x1 y1 x2 y2 score class, counts int32 [N]).");
  m.def("detect_postprocess_into", &postprocess_into, py::arg("dets"), py::arg("counts"),
        py::arg("head").noconvert(), py::arg("layout"), py::arg("conf"), py::arg("iou"), py::arg("max_det"),
        py::arg("max_candidates"), py::arg("allowed").noconvert() = py::none(), py::arg("agnostic") = false,
        py::arg("params").noconvert() = py::none(), py::arg("orig_sizes").noconvert() = py::none(),
        py::arg("num_threads") = 0, "detect_postprocess writing into dets and counts.");
}

}  // namespace peregrine::bindings
