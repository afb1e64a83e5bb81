"""Seeded YOLO detectors built layer by layer with the `onnx` package (no torch, no model hub).

Three output layouts, the ones a detection server meets in practice:

* `yolov8_detector`  -> `output0` [N, 4+C, A]: ultralytics YOLOv8 (cx, cy, w, h in input pixels, then C class
  scores after sigmoid; A = 8400 anchors at 640 for strides 8, 16, 32). Same layers as YOLOv8n.
* `yolov5_detector`  -> `output0` [N, 3*A', 5+C]: YOLOv5 (cx, cy, w, h, objectness, C class scores, all
  decoded and after sigmoid; 25200 rows at 640).
* `end2end_detector` -> `output0` [N, K, 6]: NMS-free exports (YOLOv10/YOLO26 style): x1, y1, x2, y2, score,
  class, the top K anchors by best class score, sorted by score.

The weights are random but calibrated (see `graph.py`): BatchNorm statistics are folded from a synthetic
calibration batch, and the class biases are set so that an ordinary letterboxed photograph gives tens of
candidate boxes above a 0.25 confidence (a random head with zero bias gives none, and NMS is never exercised).
Which anchors fire depends on the image. The models detect nothing meaningful.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from .calibration import calibration_batch
from .coco import COCO80
from .graph import FLOAT, GraphBuilder, Tensor, tensor_info

OPSET = 17  # what ultralytics exports by default; fully covered by ONNX Runtime's CPU and CUDA providers
STRIDES = (8, 16, 32)
REG_MAX = 16  # DFL bins per box side
GENERATOR_VERSION = "1"

# ultralytics model scales: (depth multiple, width multiple, max channels)
YOLOV8_SCALES: dict[str, tuple[float, float, int]] = {
    "n": (0.33, 0.25, 1024),
    "s": (0.33, 0.50, 1024),
    "m": (0.67, 0.75, 768),
    "l": (1.00, 1.00, 512),
    "x": (1.00, 1.25, 512),
}
YOLOV5_SCALES: dict[str, tuple[float, float, int]] = {
    "n": (0.33, 0.25, 1024),
    "s": (0.33, 0.50, 1024),
    "m": (0.67, 0.75, 1024),
}
YOLOV5_ANCHORS = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)

# Calibration targets, chosen so letterboxed skimage photographs give ~20-200 candidates above 0.25 at 640.
CANDIDATE_FRACTION = 0.007  # of anchors above 0.25 on the synthetic calibration images
CLASS_LOGIT_GAIN = 1.5  # class logits = gain * standardised feature + bias: spreads scores over 0.05..0.9
DFL_BIN_DECAY = 0.3  # DFL bin prior -decay*k: mean distance ~3 bins, so boxes are ~6 strides wide
CONF_THRESHOLD = 0.25


@dataclass(frozen=True)
class _Arch:
    depth: float
    width: float
    max_channels: int

    def ch(self, c: int) -> int:
        return int(math.ceil(min(c, self.max_channels) * self.width / 8) * 8)

    def n(self, repeats: int) -> int:
        return max(round(repeats * self.depth), 1)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _check_imgsz(imgsz: int) -> None:
    if imgsz < 128 or imgsz % 32:
        raise ValueError(f"imgsz must be a multiple of 32 and at least 128, got {imgsz}")


def _class_names(class_names: Sequence[str] | None) -> tuple[str, ...]:
    names = COCO80 if class_names is None else tuple(class_names)
    if not names:
        raise ValueError("class_names must not be empty")
    return names


def _metadata(
    arch_name: str, layout: str, seed: int, imgsz: int, names: Sequence[str], extra: dict[str, str] | None = None,
    dynamic: bool = False,
) -> dict[str, str]:
    """ultralytics-style metadata_props (values are Python literals as strings), plus Peregrine's own keys.
    ``args.dynamic`` says, as ultralytics' export does, whether the input's height and width are dynamic (its
    Triton client then letterboxes each image to its own minimal rectangle, else to ``imgsz``)."""
    meta = {
        "description": f"Peregrine generated {arch_name} ({layout} output layout), seeded random weights "
        f"(seed={seed}) with calibrated BatchNorm and class biases; not trained, detects nothing meaningful",
        "author": "Peregrine (peregrine.modelgen)",
        "version": GENERATOR_VERSION,
        "license": "Apache-2.0",
        "stride": str(max(STRIDES)),
        "task": "detect",
        "batch": "1",
        "imgsz": str([imgsz, imgsz]),
        "names": str(dict(enumerate(names))),
        "channels": "3",
        "args": str({"batch": 1, "dynamic": dynamic, "half": False, "imgsz": imgsz}),
        "peregrine_layout": layout,
        "peregrine_seed": str(seed),
    }
    meta.update(extra or {})
    return meta


# ---- ultralytics blocks -----------------------------------------------------------------------------
def _c2f(b: GraphBuilder, x: Tensor, c2: int, n: int, shortcut: bool, prefix: str) -> Tensor:
    """CSP bottleneck with 2 convolutions (YOLOv8): cv1 -> Split -> n bottlenecks -> Concat -> cv2."""
    c = c2 // 2
    y = b.conv_bn_silu(x, 2 * c, 1, 1, f"{prefix}/cv1")
    ys = b.split(y, [c, c], prefix)
    for i in range(n):
        h = b.conv_bn_silu(ys[-1], c, 3, 1, f"{prefix}/m.{i}/cv1")
        h = b.conv_bn_silu(h, c, 3, 1, f"{prefix}/m.{i}/cv2")
        ys.append(b.add(ys[-1], h, f"{prefix}/m.{i}") if shortcut else h)
    return b.conv_bn_silu(b.concat(ys, prefix), c2, 1, 1, f"{prefix}/cv2")


def _c3(b: GraphBuilder, x: Tensor, c2: int, n: int, shortcut: bool, prefix: str) -> Tensor:
    """CSP bottleneck with 3 convolutions (YOLOv5): cv3(cat(m(cv1(x)), cv2(x)))."""
    c = c2 // 2
    h = b.conv_bn_silu(x, c, 1, 1, f"{prefix}/cv1")
    for i in range(n):
        inner = b.conv_bn_silu(h, c, 1, 1, f"{prefix}/m/m.{i}/cv1")
        inner = b.conv_bn_silu(inner, c, 3, 1, f"{prefix}/m/m.{i}/cv2")
        h = b.add(h, inner, f"{prefix}/m/m.{i}") if shortcut else inner
    side = b.conv_bn_silu(x, c, 1, 1, f"{prefix}/cv2")
    return b.conv_bn_silu(b.concat([h, side], prefix), c2, 1, 1, f"{prefix}/cv3")


def _sppf(b: GraphBuilder, x: Tensor, c2: int, k: int, prefix: str) -> Tensor:
    """Spatial pyramid pooling - fast: cv1, three chained 5x5 max pools, Concat, cv2."""
    ys = [b.conv_bn_silu(x, x.channels // 2, 1, 1, f"{prefix}/cv1")]
    for _ in range(3):
        ys.append(b.maxpool(ys[-1], k, f"{prefix}/m"))
    return b.conv_bn_silu(b.concat(ys, prefix), c2, 1, 1, f"{prefix}/cv2")


def _yolov8_features(b: GraphBuilder, images: Tensor, arch: _Arch) -> tuple[Tensor, Tensor, Tensor]:
    """YOLOv8 backbone + PAN neck (ultralytics yolov8.yaml layers 0-21); returns P3, P4, P5 features."""
    ch, n = arch.ch, arch.n
    x = b.conv_bn_silu(images, ch(64), 3, 2, "/model.0")
    x = b.conv_bn_silu(x, ch(128), 3, 2, "/model.1")
    x = _c2f(b, x, ch(128), n(3), True, "/model.2")
    x = b.conv_bn_silu(x, ch(256), 3, 2, "/model.3")
    p3 = _c2f(b, x, ch(256), n(6), True, "/model.4")
    x = b.conv_bn_silu(p3, ch(512), 3, 2, "/model.5")
    p4 = _c2f(b, x, ch(512), n(6), True, "/model.6")
    x = b.conv_bn_silu(p4, ch(1024), 3, 2, "/model.7")
    x = _c2f(b, x, ch(1024), n(3), True, "/model.8")
    p5 = _sppf(b, x, ch(1024), 5, "/model.9")
    x = b.concat([b.upsample2x(p5, "/model.10"), p4], "/model.11")
    h4 = _c2f(b, x, ch(512), n(3), False, "/model.12")
    x = b.concat([b.upsample2x(h4, "/model.13"), p3], "/model.14")
    out3 = _c2f(b, x, ch(256), n(3), False, "/model.15")
    x = b.concat([b.conv_bn_silu(out3, ch(256), 3, 2, "/model.16"), h4], "/model.17")
    out4 = _c2f(b, x, ch(512), n(3), False, "/model.18")
    x = b.concat([b.conv_bn_silu(out4, ch(512), 3, 2, "/model.19"), p5], "/model.20")
    out5 = _c2f(b, x, ch(1024), n(3), False, "/model.21")
    return out3, out4, out5


def _standardise(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (1/std, -mean/std) over batch and space."""
    mean = raw.mean(axis=(0, 2, 3), dtype=np.float64)
    std = raw.std(axis=(0, 2, 3), dtype=np.float64) + 1e-6
    return 1.0 / std, -mean / std


def _dfl_calibration(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inv_std, shift = _standardise(raw)
    bins = np.arange(raw.shape[1]) % REG_MAX
    return inv_std, shift - DFL_BIN_DECAY * bins


def _class_calibration(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class logits = gain * z + t, with t putting CANDIDATE_FRACTION of anchors' best class above 0.25."""
    inv_std, shift = _standardise(raw)
    z = raw * inv_std[None, :, None, None] + shift[None, :, None, None]
    best = CLASS_LOGIT_GAIN * z.max(axis=1).ravel()
    k = max(1, round(CANDIDATE_FRACTION * best.size))
    kth = np.partition(best, best.size - k)[best.size - k]
    t = _logit(CONF_THRESHOLD) - kth + 1e-3
    return CLASS_LOGIT_GAIN * inv_std, CLASS_LOGIT_GAIN * shift + t


@dataclass(frozen=True)
class _V8Head:
    x1y1: str  # [N, 2, A] in grid units
    x2y2: str  # [N, 2, A] in grid units
    strides: str  # [1, A]
    scores: str  # [N, C, A] after sigmoid
    num_anchors: int


def _anchor_grid(imgsz: int) -> tuple[np.ndarray, np.ndarray]:
    """Anchor centres [2, A] (grid units, +0.5) and strides [1, A], in ultralytics' make_anchors order."""
    points, strides = [], []
    for s in STRIDES:
        g = imgsz // s
        sy, sx = np.meshgrid(np.arange(g) + 0.5, np.arange(g) + 0.5, indexing="ij")
        points.append(np.stack([sx.ravel(), sy.ravel()]))
        strides.append(np.full(g * g, s))
    return np.concatenate(points, 1).astype(np.float32), np.concatenate(strides)[None].astype(np.float32)


def _dynamic_anchor_grid(b: GraphBuilder, levels: Sequence[str]) -> tuple[str, str]:
    """Anchor centres [2, A] and strides [1, A] computed in the graph from each level's feature map
    [N, C, h, w] (as ultralytics' make_anchors does when exported with dynamic=True): any input size."""
    hw_index = b.const_i64("model.22.grid.index_hw", [2, 3])
    zero = b.initializer("model.22.grid.zero", np.array(0, np.int64))
    one = b.initializer("model.22.grid.one", np.array(1, np.int64))
    half = b.initializer("model.22.grid.half", np.array(0.5, np.float32))
    nothing = b.initializer("model.22.grid.nothing", np.array(0.0, np.float32))
    axis0, axis1 = b.const_i64("model.22.grid.axis0", [0]), b.const_i64("model.22.grid.axis1", [1])
    flat = b.const_i64("model.22.grid.flat", [1, -1])
    points, strides = [], []
    for i, (level, s) in enumerate(zip(levels, STRIDES, strict=True)):
        p = f"/model.22/grid{i}"
        hw = b.node("Gather", [b.node("Shape", [level], f"{p}/Shape")[0], hw_index], f"{p}/Gather")[0]  # [h, w]
        h, w = b.node("Split", [hw], f"{p}/Split", n_outputs=2, axis=0)
        h, w = (b.node("Squeeze", [t, axis0], f"{p}/Squeeze")[0] for t in (h, w))  # scalars for Range
        xs, ys = (b.node("Cast", [b.node("Range", [zero, t, one], f"{p}/Range")[0]], f"{p}/Cast", to=FLOAT)[0]
                  for t in (w, h))
        xs = b.node("Add", [b.node("Unsqueeze", [xs, axis0], f"{p}/Unsqueeze")[0], half], f"{p}/Add")[0]  # [1, w]
        ys = b.node("Add", [b.node("Unsqueeze", [ys, axis1], f"{p}/Unsqueeze")[0], half], f"{p}/Add")[0]  # [h, 1]
        sx = b.node("Reshape", [b.node("Expand", [xs, hw], f"{p}/Expand")[0], flat], f"{p}/Reshape")[0]
        sy = b.node("Reshape", [b.node("Expand", [ys, hw], f"{p}/Expand")[0], flat], f"{p}/Reshape")[0]
        points.append(b.node("Concat", [sx, sy], f"{p}/Concat", axis=0)[0])  # [2, h*w], x fastest
        stride = b.initializer(f"model.22.grid{i}.stride", np.array(float(s), np.float32))
        strides.append(b.node("Add", [b.node("Mul", [sx, nothing], f"{p}/Mul")[0], stride], f"{p}/Add")[0])
    anchors = b.node("Concat", points, "/model.22/grid/Concat", axis=1)[0]
    return anchors, b.node("Concat", strides, "/model.22/grid/Concat", axis=1)[0]


def _yolov8_head(b: GraphBuilder, feats: Sequence[Tensor], nc: int, imgsz: int, dynamic: bool = False) -> _V8Head:
    """ultralytics `Detect` (model.22): per level box branch (cv2) and class branch (cv3), DFL decoding.
    ``dynamic``: the anchors and the number of them come from the feature maps' shapes (any input size)."""
    c2 = max(16, feats[0].channels // 4, REG_MAX * 4)
    c3 = max(feats[0].channels, min(nc, 100))
    no = 4 * REG_MAX + nc
    shape_flat = b.const_i64("model.22.level_shape", [0, no, -1])
    flat, levels = [], []
    for i, x in enumerate(feats):
        box = b.conv_bn_silu(x, c2, 3, 1, f"/model.22/cv2.{i}/cv2.{i}.0")
        box = b.conv_bn_silu(box, c2, 3, 1, f"/model.22/cv2.{i}/cv2.{i}.1")
        box = b.head_conv(box, 4 * REG_MAX, f"/model.22/cv2.{i}/cv2.{i}.2", _dfl_calibration)
        cls = b.conv_bn_silu(x, c3, 3, 1, f"/model.22/cv3.{i}/cv3.{i}.0")
        cls = b.conv_bn_silu(cls, c3, 3, 1, f"/model.22/cv3.{i}/cv3.{i}.1")
        cls = b.head_conv(cls, nc, f"/model.22/cv3.{i}/cv3.{i}.2", _class_calibration)
        cat = b.concat([box, cls], f"/model.22/level{i}")
        levels.append(cat.name)
        flat.append(b.node("Reshape", [cat.name, shape_flat], "/model.22/Reshape")[0])
    dense = b.node("Concat", flat, "/model.22/Concat", axis=2)[0]
    split = b.const_i64("model.22.split_box_cls", [4 * REG_MAX, nc])
    box_flat, cls_flat = b.node("Split", [dense, split], "/model.22/Split", n_outputs=2, axis=1)

    # DFL: softmax over the 16 bins of each side, then the expectation as a 1x1 conv with weights 0..15.
    a = sum((imgsz // s) ** 2 for s in STRIDES)
    bins_shape = b.const_i64("model.22.dfl.shape_bins", [0, 4, REG_MAX, -1 if dynamic else a])
    d = b.node("Reshape", [box_flat, bins_shape], "/model.22/dfl/Reshape")[0]
    d = b.node("Transpose", [d], "/model.22/dfl/Transpose", perm=[0, 2, 1, 3])[0]
    d = b.node("Softmax", [d], "/model.22/dfl/Softmax", axis=1)[0]
    w = b.initializer("model.22.dfl.conv.weight", np.arange(REG_MAX, dtype=np.float32).reshape(1, REG_MAX, 1, 1))
    d = b.node("Conv", [d, w], "/model.22/dfl/conv/Conv", kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0])[0]
    d = b.node("Reshape", [d, b.const_i64("model.22.dfl.shape_out", [0, 4, -1 if dynamic else a])],
               "/model.22/dfl/Reshape")[0]

    # dist2bbox: distances (left, top, right, bottom) from the anchor centre, in grid units.
    lt, rb = b.node("Split", [d, b.const_i64("model.22.split_ltrb", [2, 2])], "/model.22/Split", n_outputs=2, axis=1)
    if dynamic:
        anchors, stride_row = _dynamic_anchor_grid(b, levels)
    else:
        points, strides = _anchor_grid(imgsz)
        anchors, stride_row = b.initializer("model.22.anchors", points), b.initializer("model.22.strides", strides)
    x1y1 = b.node("Sub", [anchors, lt], "/model.22/Sub")[0]
    x2y2 = b.node("Add", [anchors, rb], "/model.22/Add")[0]
    scores = b.node("Sigmoid", [cls_flat], "/model.22/Sigmoid")[0]
    return _V8Head(x1y1, x2y2, stride_row, scores, a)


def _build_yolov8(seed: int, scale: str, imgsz: int, nc: int, dynamic: bool = False
                  ) -> tuple[GraphBuilder, _V8Head, tuple[Tensor, Tensor, Tensor]]:
    if scale not in YOLOV8_SCALES:
        raise ValueError(f"unknown YOLOv8 scale {scale!r}, expected one of {sorted(YOLOV8_SCALES)}")
    _check_imgsz(imgsz)
    b = GraphBuilder(seed)
    images = Tensor("images", calibration_batch(imgsz))
    feats = _yolov8_features(b, images, _Arch(*YOLOV8_SCALES[scale]))
    return b, _yolov8_head(b, feats, nc, imgsz, dynamic), feats


def _images_input(imgsz: int, dynamic: bool = False) -> onnx.ValueInfoProto:
    return tensor_info("images", FLOAT, ["batch", 3, "height", "width"] if dynamic else ["batch", 3, imgsz, imgsz])


def yolov8_detector(
    seed: int = 0, *, scale: str = "n", imgsz: int = 640, class_names: Sequence[str] | None = None,
    dynamic: bool = False,
) -> onnx.ModelProto:
    """A YOLOv8 detector with ultralytics' layers and output layout, seeded random weights.

    ``dynamic``: input height and width dynamic (``[batch, 3, height, width]``, any multiple of 32), the
    anchors computed in the graph from the feature maps, as an ultralytics export with ``dynamic=True``;
    the same weights, and at ``imgsz`` the same output, as the fixed-size model of the same seed.

    Input `images` float32 [batch, 3, imgsz, imgsz], RGB in [0, 1] (letterboxed, /255); output `output0`
    float32 [batch, 4 + C, A]: rows 0-3 are box centre x, y, width, height in input pixels, rows 4.. the
    class scores after sigmoid; A = sum((imgsz/s)^2 for s in 8, 16, 32) (8400 at 640). C = len(class_names)
    (COCO's 80 by default). Scale "n" at 640 measures 3,151,904 parameters and 8.74 GFLOPs (2 x conv MACs,
    see `count_flops`), matching ultralytics' fused YOLOv8n (3,151,904 and 8.7 G). Opset 17, ONNX IR 8.

    Same seed, scale, imgsz and names give byte-identical models (on one NumPy/BLAS build: the BatchNorm
    statistics are computed with NumPy). Raises ValueError for an unknown scale or an imgsz that is not a
    multiple of 32 (or below 128).
    """
    names = _class_names(class_names)
    b, head, _ = _build_yolov8(seed, scale, imgsz, len(names), dynamic)
    b.node("Concat", [_v8_boxes(b, head), head.scores], "/model.22/Concat", outputs=["output0"], axis=1)
    output = tensor_info("output0", FLOAT, ["batch", 4 + len(names), "anchors" if dynamic else head.num_anchors])
    meta = _metadata(f"YOLOv8{scale}", "yolov8", seed, imgsz, names, dynamic=dynamic)
    return b.model([_images_input(imgsz, dynamic)], [output], f"peregrine_yolov8{scale}", meta, OPSET)


def _v8_boxes(b: GraphBuilder, head: _V8Head) -> str:
    """The head's boxes as ultralytics' Detect gives them: [N, 4, A] centre x, y, width, height in input pixels."""
    c_xy = b.node("Add", [head.x1y1, head.x2y2], "/model.22/Add")[0]
    c_xy = b.node("Div", [c_xy, b.initializer("model.22.two", np.array(2.0, np.float32))], "/model.22/Div")[0]
    wh = b.node("Sub", [head.x2y2, head.x1y1], "/model.22/Sub")[0]
    dbox = b.node("Concat", [c_xy, wh], "/model.22/Concat", axis=1)[0]
    return b.node("Mul", [dbox, head.strides], "/model.22/Mul")[0]


KEYPOINT_SPREAD = 0.5  # raw keypoint offsets ~ N(0, spread): each keypoint within a few strides of its anchor


def _keypoint_calibration(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inv_std, shift = _standardise(raw)
    return KEYPOINT_SPREAD * inv_std, KEYPOINT_SPREAD * shift


def yolov8_pose(
    seed: int = 0, *, scale: str = "n", imgsz: int = 640, class_names: Sequence[str] | None = ("person",),
    kpt_shape: tuple[int, int] = (17, 3),
) -> onnx.ModelProto:
    """A YOLOv8 pose model with ultralytics' layers and output layout (its ``Pose`` head), seeded random weights.

    The detector's graph (for the same seed, scale, imgsz and names, the same weights and boxes as
    `yolov8_detector`'s) with the keypoint branch (cv4: two 3x3 Convs and a 1x1 conv of K*D channels per
    level) and its decoding as ultralytics exports it: per keypoint x = (raw * 2 + anchor x - 0.5) * stride,
    y likewise, then (D = 3) a visibility score sigmoid(raw). Output `output0` float32 [batch, 4 + C + K*D,
    A]: the detector's rows, then each keypoint's x, y(, score) in input pixels. Metadata: task ``pose``,
    ``kpt_shape`` [K, D]. Raises ValueError as `yolov8_detector`, and for a ``kpt_shape`` whose D is not 2 or
    3 or whose K is not positive.
    """
    k, d = kpt_shape
    if k < 1 or d not in (2, 3):
        raise ValueError(f"kpt_shape: expected [keypoints >= 1, 2 or 3 values], got {list(kpt_shape)}")
    names = _class_names(class_names)
    b, head, feats = _build_yolov8(seed, scale, imgsz, len(names))
    nk = k * d
    c4 = max(feats[0].channels // 4, nk)
    shape_flat = b.const_i64("model.22.kpt_level_shape", [0, nk, -1])
    levels = []
    for i, x in enumerate(feats):
        y = b.conv_bn_silu(x, c4, 3, 1, f"/model.22/cv4.{i}/cv4.{i}.0")
        y = b.conv_bn_silu(y, c4, 3, 1, f"/model.22/cv4.{i}/cv4.{i}.1")
        y = b.head_conv(y, nk, f"/model.22/cv4.{i}/cv4.{i}.2", _keypoint_calibration)
        levels.append(b.node("Reshape", [y.name, shape_flat], "/model.22/Reshape")[0])
    kpts = b.node("Concat", levels, "/model.22/Concat", axis=2)[0]  # [N, K*D, A]
    kpts = b.node("Reshape", [kpts, b.const_i64("model.22.kpt_shape", [0, k, d, head.num_anchors])],
                  "/model.22/Reshape")[0]
    points, _ = _anchor_grid(imgsz)
    origin = b.initializer("model.22.kpt_origin", points - np.float32(0.5))  # [2, A]: anchors - 0.5
    axis = b.const_i64("model.22.kpt_axis", [2])
    xy = b.node("Slice", [kpts, b.const_i64("model.22.kpt_xy_start", [0]), b.const_i64("model.22.kpt_xy_end", [2]),
                          axis], "/model.22/Slice")[0]
    xy = b.node("Mul", [xy, b.initializer("model.22.kpt_two", np.array(2.0, np.float32))], "/model.22/Mul")[0]
    xy = b.node("Add", [xy, origin], "/model.22/Add")[0]
    xy = b.node("Mul", [xy, head.strides], "/model.22/Mul")[0]
    parts = [xy]
    if d == 3:
        score = b.node("Slice", [kpts, b.const_i64("model.22.kpt_score_start", [2]),
                                 b.const_i64("model.22.kpt_score_end", [3]), axis], "/model.22/Slice")[0]
        parts.append(b.node("Sigmoid", [score], "/model.22/Sigmoid")[0])
    decoded = b.node("Concat", parts, "/model.22/Concat", axis=2)[0] if d == 3 else xy
    decoded = b.node("Reshape", [decoded, b.const_i64("model.22.kpt_flat", [0, nk, head.num_anchors])],
                     "/model.22/Reshape")[0]
    b.node("Concat", [_v8_boxes(b, head), head.scores, decoded], "/model.22/Concat", outputs=["output0"], axis=1)
    output = tensor_info("output0", FLOAT, ["batch", 4 + len(names) + nk, head.num_anchors])
    meta = _metadata(f"YOLOv8{scale}-pose", "yolov8", seed, imgsz, names,
                     {"task": "pose", "kpt_shape": str([k, d])})
    return b.model([_images_input(imgsz)], [output], f"peregrine_yolov8{scale}_pose", meta, OPSET)


def end2end_detector(
    seed: int = 0,
    *,
    scale: str = "n",
    imgsz: int = 640,
    max_detections: int = 300,
    class_names: Sequence[str] | None = None,
) -> onnx.ModelProto:
    """An NMS-free end-to-end detector (YOLOv10/YOLO26 export layout) on the YOLOv8 backbone and head.

    Output `output0` float32 [batch, K, 6], K = max_detections: x1, y1, x2, y2 (input pixels), score, class
    index (as float), the K anchors with the highest best-class score in descending order (TopK + Gather in
    the graph; low-score rows are kept, callers threshold). For the same seed/scale/imgsz the weights equal
    `yolov8_detector`'s, so both see the same candidates. Raises ValueError when K exceeds the anchor count.
    """
    names = _class_names(class_names)
    b, head, _ = _build_yolov8(seed, scale, imgsz, len(names))
    if not 0 < max_detections <= head.num_anchors:
        raise ValueError(f"max_detections must be in 1..{head.num_anchors}, got {max_detections}")
    xyxy = b.node("Concat", [head.x1y1, head.x2y2], "/model.23/Concat", axis=1)[0]
    xyxy = b.node("Mul", [xyxy, head.strides], "/model.23/Mul")[0]
    xyxy = b.node("Transpose", [xyxy], "/model.23/Transpose", perm=[0, 2, 1])[0]  # [N, A, 4]
    best = b.node("ReduceMax", [head.scores], "/model.23/ReduceMax", axes=[1], keepdims=1)[0]  # [N, 1, A]
    label = b.node("ArgMax", [head.scores], "/model.23/ArgMax", axis=1, keepdims=1)[0]
    label = b.node("Cast", [label], "/model.23/Cast", to=FLOAT)[0]
    extra = b.node("Concat", [best, label], "/model.23/Concat", axis=1)[0]  # [N, 2, A]
    extra = b.node("Transpose", [extra], "/model.23/Transpose", perm=[0, 2, 1])[0]
    rows = b.node("Concat", [xyxy, extra], "/model.23/Concat", axis=2)[0]  # [N, A, 6]
    best_flat = b.node("Squeeze", [best, b.const_i64("model.23.axis1", [1])], "/model.23/Squeeze")[0]
    k = b.const_i64("model.23.k", [max_detections])
    _, index = b.node("TopK", [best_flat, k], "/model.23/TopK", n_outputs=2, axis=1, largest=1, sorted=1)
    index = b.node("Unsqueeze", [index, b.const_i64("model.23.axis2", [2])], "/model.23/Unsqueeze")[0]
    index = b.node("Tile", [index, b.const_i64("model.23.tile", [1, 1, 6])], "/model.23/Tile")[0]
    b.node("GatherElements", [rows, index], "/model.23/GatherElements", outputs=["output0"], axis=1)
    output = tensor_info("output0", FLOAT, ["batch", max_detections, 6])
    meta = _metadata(
        f"YOLOv8{scale}-end2end", "end2end", seed, imgsz, names,
        {"end2end": "True", "max_det": str(max_detections)},
    )  # fmt: skip
    return b.model([_images_input(imgsz)], [output], f"peregrine_yolov8{scale}_e2e", meta, OPSET)


# ---- YOLOv5 -----------------------------------------------------------------------------------------
def _yolov5_features(b: GraphBuilder, images: Tensor, arch: _Arch) -> tuple[Tensor, Tensor, Tensor]:
    """YOLOv5 v6/v7 backbone + PANet head (yolov5*.yaml layers 0-23); returns P3, P4, P5 features."""
    ch, n = arch.ch, arch.n
    x = b.conv_bn_silu(images, ch(64), 6, 2, "/model.0", pad=2)
    x = b.conv_bn_silu(x, ch(128), 3, 2, "/model.1")
    x = _c3(b, x, ch(128), n(3), True, "/model.2")
    x = b.conv_bn_silu(x, ch(256), 3, 2, "/model.3")
    p3 = _c3(b, x, ch(256), n(6), True, "/model.4")
    x = b.conv_bn_silu(p3, ch(512), 3, 2, "/model.5")
    p4 = _c3(b, x, ch(512), n(9), True, "/model.6")
    x = b.conv_bn_silu(p4, ch(1024), 3, 2, "/model.7")
    x = _c3(b, x, ch(1024), n(3), True, "/model.8")
    x = _sppf(b, x, ch(1024), 5, "/model.9")
    h10 = b.conv_bn_silu(x, ch(512), 1, 1, "/model.10")
    x = b.concat([b.upsample2x(h10, "/model.11"), p4], "/model.12")
    x = _c3(b, x, ch(512), n(3), False, "/model.13")
    h14 = b.conv_bn_silu(x, ch(256), 1, 1, "/model.14")
    x = b.concat([b.upsample2x(h14, "/model.15"), p3], "/model.16")
    out3 = _c3(b, x, ch(256), n(3), False, "/model.17")
    x = b.concat([b.conv_bn_silu(out3, ch(256), 3, 2, "/model.18"), h14], "/model.19")
    out4 = _c3(b, x, ch(512), n(3), False, "/model.20")
    x = b.concat([b.conv_bn_silu(out4, ch(512), 3, 2, "/model.21"), h10], "/model.22")
    out5 = _c3(b, x, ch(1024), n(3), False, "/model.23")
    return out3, out4, out5


V5_BOX_GAIN = 0.5  # xy/wh logits = 0.5 * z: centres jitter within the cell, sizes stay near the anchor
V5_CLASS_MEDIAN = 0.5  # typical best-class probability; objectness then decides which anchors fire


Calibration = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def _yolov5_calibration(nc: int) -> Calibration:
    """Head calibration of one YOLOv5 level: box logits near zero, class and objectness logits as below."""
    no = 5 + nc

    def calibrate(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inv_std, shift = _standardise(raw)
        scale = np.full(raw.shape[1], V5_BOX_GAIN) * inv_std
        bias = V5_BOX_GAIN * shift
        z = (raw * inv_std[None, :, None, None] + shift[None, :, None, None]).reshape(
            raw.shape[0], 3, no, *raw.shape[2:]
        )
        cls_best = CLASS_LOGIT_GAIN * z[:, :, 5:].max(axis=2).ravel()
        t_cls = _logit(V5_CLASS_MEDIAN) - float(np.median(cls_best))
        p_cls = 1.0 / (1.0 + np.exp(-(cls_best + t_cls)))
        obj = CLASS_LOGIT_GAIN * z[:, :, 4].ravel()
        # Bisect the objectness bias so CANDIDATE_FRACTION of anchors have obj * best class > 0.25.
        target = max(1, round(CANDIDATE_FRACTION * obj.size))
        lo, hi = -30.0, 30.0
        for _ in range(60):
            mid = (lo + hi) / 2
            count = int(np.count_nonzero(p_cls / (1.0 + np.exp(-(obj + mid))) > CONF_THRESHOLD))
            lo, hi = (mid, hi) if count < target else (lo, mid)
        t_obj = hi
        for a in range(3):
            o = slice(a * no + 4, a * no + 5)
            c = slice(a * no + 5, (a + 1) * no)
            scale[o] = CLASS_LOGIT_GAIN * inv_std[o]
            bias[o] = CLASS_LOGIT_GAIN * shift[o] + t_obj
            scale[c] = CLASS_LOGIT_GAIN * inv_std[c]
            bias[c] = CLASS_LOGIT_GAIN * shift[c] + t_cls
        return scale, bias

    return calibrate


def yolov5_detector(
    seed: int = 0, *, scale: str = "n", imgsz: int = 640, class_names: Sequence[str] | None = None
) -> onnx.ModelProto:
    """A YOLOv5 (v6/v7 layout: C3 blocks, SPPF, PANet, anchor-based Detect) detector, seeded random weights.

    Input `images` float32 [batch, 3, imgsz, imgsz] RGB in [0, 1]; output `output0` float32
    [batch, 3 * A, 5 + C] (25200 x 85 at 640): cx, cy, w, h in input pixels, objectness, C class scores, all
    decoded as YOLOv5's export does (sigmoid; xy = (2s - 0.5 + grid) * stride, wh = (2s)^2 * anchor).
    Rows run level by level (strides 8, 16, 32), then anchor, then y, then x. Scale "n" at 640: 1,867,405
    parameters and 4.47 GFLOPs, as ultralytics' YOLOv5n (1,867,405 and 4.5 G).
    Raises ValueError for an unknown scale or a bad imgsz.
    """
    if scale not in YOLOV5_SCALES:
        raise ValueError(f"unknown YOLOv5 scale {scale!r}, expected one of {sorted(YOLOV5_SCALES)}")
    _check_imgsz(imgsz)
    names = _class_names(class_names)
    nc, no = len(names), 5 + len(names)
    b = GraphBuilder(seed)
    feats = _yolov5_features(b, Tensor("images", calibration_batch(imgsz)), _Arch(*YOLOV5_SCALES[scale]))
    split = b.const_i64("model.24.split_xy_wh_conf", [2, 2, nc + 1])
    two = b.initializer("model.24.two", np.array(2.0, np.float32))
    rows = []
    for i, (x, s) in enumerate(zip(feats, STRIDES, strict=True)):
        g = imgsz // s
        p = b.head_conv(x, 3 * no, f"/model.24/m.{i}", _yolov5_calibration(nc))
        y = b.node("Reshape", [p.name, b.const_i64(f"model.24.shape5d.{i}", [-1, 3, no, g, g])], "/model.24/Reshape")[0]
        y = b.node("Transpose", [y], "/model.24/Transpose", perm=[0, 1, 3, 4, 2])[0]  # [N, 3, g, g, no]
        y = b.node("Sigmoid", [y], "/model.24/Sigmoid")[0]
        xy, wh, conf = b.node("Split", [y, split], "/model.24/Split", n_outputs=3, axis=4)
        gy, gx = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
        grid = (np.stack([gx, gy], -1)[None, None].astype(np.float32) - 0.5) * s  # [1, 1, g, g, 2], pixels
        anchor = np.asarray(YOLOV5_ANCHORS[i], dtype=np.float32).reshape(1, 3, 1, 1, 2)
        xy_scale = b.initializer(f"model.24.xy_scale.{i}", np.array(2.0 * s, np.float32))
        xy = b.node("Mul", [xy, xy_scale], "/model.24/Mul")[0]
        xy = b.node("Add", [xy, b.initializer(f"model.24.grid.{i}", grid)], "/model.24/Add")[0]
        wh = b.node("Mul", [wh, two], "/model.24/Mul")[0]
        wh = b.node("Pow", [wh, two], "/model.24/Pow")[0]
        wh = b.node("Mul", [wh, b.initializer(f"model.24.anchor_grid.{i}", anchor)], "/model.24/Mul")[0]
        y = b.node("Concat", [xy, wh, conf], "/model.24/Concat", axis=4)[0]
        row_shape = b.const_i64(f"model.24.shape_rows.{i}", [0, -1, no])
        rows.append(b.node("Reshape", [y, row_shape], "/model.24/Reshape")[0])
    b.node("Concat", rows, "/model.24/Concat", outputs=["output0"], axis=1)
    a = 3 * sum((imgsz // s) ** 2 for s in STRIDES)
    output = tensor_info("output0", FLOAT, ["batch", a, no])
    meta = _metadata(f"YOLOv5{scale}", "yolov5", seed, imgsz, names)
    return b.model([_images_input(imgsz)], [output], f"peregrine_yolov5{scale}", meta, OPSET)
