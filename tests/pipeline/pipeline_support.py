"""A plain reference detection pipeline and the fixtures of the pipeline tests.

The reference is ultralytics' predictor written out with OpenCV and NumPy only, step by step, sharing no
code with Peregrine's kernels:

- ``LetterBox(auto=False, scaleup=True, center=True)``: ``cv2.resize`` of the **uint8** frame with
  INTER_LINEAR to ``round(w * r), round(h * r)`` (OpenCV's 8-bit path: 11-bit fixed-point weights, each
  pixel rounded), grey 114 borders split ``round(d - 0.1), round(d + 0.1)``, then /255 in RGB order.
- ONNX Runtime on the CPU.
- ``non_max_suppression``: candidates whose best class score is above ``conf`` (strictly), the ``classes``
  filter, at most ``max_nms`` = 30000 candidates by score, boxes offset by ``class * 7680`` (0 when
  ``agnostic``), greedy IoU suppression in descending score order (``torchvision.ops.nms``), the first
  ``max_det`` kept. YOLOv5 heads (``[A, 5 + C]``, from the yolov5 repository): objectness above ``conf``,
  class scores times objectness. End-to-end heads ``[K, 6]``: rows above ``conf`` in the model's order,
  the first ``max_det``, then the ``classes`` filter (ultralytics' order).
- ``scale_boxes`` (ultralytics 8.4: each side's gain the rounded new size over the old one, pad
  ``round(d - 0.1)``) and ``clip_boxes``.
- RT-DETR exports (``rtdetr_reference``): ultralytics' RTDETRPredictor, the frame stretched to the input.

Score ties are broken by anchor order (a stable sort), as Peregrine's kernels do; torch leaves them
unspecified.

Not a conftest.py: see tests/clients/client_support.py for why.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import skimage.data

sys.path.insert(0, str(Path(__file__).parent.parent))

from peregrine.modelgen import end2end_detector, yolov5_detector, yolov8_detector
from peregrine.server.app import PeregrineServer
from peregrine.server.config import ServerConfig
from support import onnx_models

MAX_WH = 7680  # ultralytics' class offset for batched NMS
MAX_NMS = 30000  # ultralytics' cap on candidates entering NMS
CONF, IOU, MAX_DET = 0.25, 0.7, 300


# -- reference pipeline ----------------------------------------------------------------------------
def letterbox(rgb: np.ndarray, height: int, width: int, interpolation: int = cv2.INTER_LINEAR,
              ) -> tuple[np.ndarray, tuple[float, float], tuple[int, int]]:
    """ultralytics LetterBox(auto=False, scaleup=True, center=True) + ToTensor: [1, 3, H, W] float32, and
    what scale_boxes maps boxes back with: the gains (x, y) and the pad (left, top)."""
    h, w = rgb.shape[:2]
    r = min(height / h, width / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = (width - new_w) / 2, (height - new_h) / 2
    img = rgb
    if (w, h) != (new_w, new_h):
        img = cv2.resize(rgb, (new_w, new_h), interpolation=interpolation)  # uint8 in, uint8 out
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    tensor = np.ascontiguousarray(img.transpose(2, 0, 1)[None]).astype(np.float32) / np.float32(255.0)
    return tensor, (new_w / w, new_h / h), (left, top)


def _xywh2xyxy(x: np.ndarray) -> np.ndarray:
    y = np.empty_like(x)
    y[:, 0] = x[:, 0] - x[:, 2] / 2
    y[:, 1] = x[:, 1] - x[:, 3] / 2
    y[:, 2] = x[:, 0] + x[:, 2] / 2
    y[:, 3] = x[:, 1] + x[:, 3] / 2
    return y


def _greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """torchvision.ops.nms: keep boxes in descending score order, drop those overlapping a kept one > iou."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    suppressed = np.zeros(len(boxes), bool)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        xx1 = np.maximum(boxes[i, 0], boxes[:, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[:, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[:, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[:, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        overlap = inter / (areas[i] + areas - inter)
        suppressed |= overlap > iou
    return keep


def nms(head: np.ndarray, layout: str, conf: float = CONF, iou: float = IOU, max_det: int = MAX_DET,
        classes: Sequence[int] | None = None, agnostic: bool = False) -> np.ndarray:
    """One image's head output -> [k, 6] x1, y1, x2, y2, score, class in model pixels."""
    if layout == "end2end":
        x = head[head[:, 4] > conf][:max_det]
        if classes:
            x = x[np.isin(x[:, 5], classes)]
        return x.astype(np.float32)
    if layout == "yolov8":  # [4 + C, A]
        x = head.T
        cls = x[:, 4:]
    else:  # yolov5 [A, 5 + C]: objectness above conf, then class scores times objectness
        x = head[head[:, 4] > conf]
        cls = x[:, 5:] * x[:, 4:5]
    score = cls.max(1)
    cls_id = cls.argmax(1)
    keep = score > conf
    if classes:
        keep &= np.isin(cls_id, classes)
    boxes = _xywh2xyxy(x[keep, :4])
    score, cls_id = score[keep], cls_id[keep]
    if len(score) > MAX_NMS:
        top = np.argsort(-score, kind="stable")[:MAX_NMS]
        boxes, score, cls_id = boxes[top], score[top], cls_id[top]
    offsets = (cls_id[:, None] * (0 if agnostic else MAX_WH)).astype(np.float32)
    kept = _greedy_nms(boxes + offsets, score, iou)[:max_det]
    return np.concatenate([boxes[kept], score[kept, None], cls_id[kept, None]], axis=1).astype(np.float32)


def scale_boxes(dets: np.ndarray, gain: tuple[float, float], pad: tuple[int, int], h: int, w: int) -> np.ndarray:
    """ultralytics scale_boxes + clip_boxes: model pixels -> original pixels."""
    out = dets.copy()
    out[:, [0, 2]] = (out[:, [0, 2]] - pad[0]) / gain[0]
    out[:, [1, 3]] = (out[:, [1, 3]] - pad[1]) / gain[1]
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out


@dataclass
class Reference:
    """The reference pipeline over one ONNX file."""

    session: ort.InferenceSession
    layout: str
    height: int
    width: int

    @classmethod
    def open(cls, path: Path, layout: str, size: int) -> Reference:
        return cls(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), layout, size, size)

    def __call__(self, rgb: np.ndarray, conf: float = CONF, iou: float = IOU, max_det: int = MAX_DET,
                 classes: Sequence[int] | None = None, agnostic: bool = False) -> np.ndarray:
        tensor, gain, pad = letterbox(rgb, self.height, self.width)
        head = self.session.run(None, {self.session.get_inputs()[0].name: tensor})[0][0]
        return scale_boxes(nms(head, self.layout, conf, iou, max_det, classes, agnostic), gain, pad, *rgb.shape[:2])


def _kept_with_values(head: np.ndarray, extra: int, conf: float, iou: float, max_det: int,
                      layout: str) -> tuple[np.ndarray, np.ndarray]:
    """One image's head [4+C+extra, A] (``layout`` end2end: [K, 6+extra]) as ultralytics' NMS keeps it, each
    kept box with the ``extra`` values after its detection columns: ([k, 6] boxes in model pixels, [k, extra]).
    NMS as ``nms`` runs it over the detection columns; end-to-end: the first ``max_det`` rows above ``conf``."""
    if layout == "end2end":
        rows = head[head[:, 4] > conf][:max_det]
        return rows[:, :6].astype(np.float32), rows[:, 6:]
    x = head.T
    classes = x.shape[1] - 4 - extra
    score, cls_id = x[:, 4 : 4 + classes].max(1), x[:, 4 : 4 + classes].argmax(1)
    above = np.flatnonzero(score > conf)
    boxes = _xywh2xyxy(x[above, :4])
    offsets = (cls_id[above, None] * MAX_WH).astype(np.float32)
    anchors = above[_greedy_nms(boxes + offsets, score[above], iou)[:max_det]]
    dets = np.concatenate([_xywh2xyxy(x[anchors, :4]), score[anchors, None], cls_id[anchors, None]], axis=1)
    return dets.astype(np.float32), x[anchors, 4 + classes :]


def segment_reference(session: ort.InferenceSession, rgb: np.ndarray, height: int, width: int, extra: int,
                      conf: float = CONF, iou: float = IOU, max_det: int = MAX_DET,
                      layout: str = "yolov8") -> tuple[np.ndarray, int]:
    """ultralytics' SegmentationPredictor on one frame of a segmentation export (head [1, 4+C+extra, A], or
    ``layout`` end2end [1, K, 6+extra]; prototypes [1, M, h, w]), for its boxes: letterbox, NMS over the
    detection columns (:func:`_kept_with_values`), then each kept box's mask as ``process_mask(...,
    upsample=True)`` makes it (coefficients times prototypes, ``cv2.resize`` INTER_LINEAR to the input size,
    which samples as torch's bilinear ``align_corners=False``, above 0, pixels outside the box zeroed) and
    only the boxes whose mask is not empty, mapped back. Returns those boxes [k, 6] and how many boxes their
    empty masks dropped."""
    tensor, gain, pad = letterbox(rgb, height, width)
    head, protos = session.run(None, {session.get_inputs()[0].name: tensor})[:2]
    dets, coefficients = _kept_with_values(head[0], extra, conf, iou, max_det, layout)
    protos = protos[0]
    m, mh, mw = protos.shape
    logits = (coefficients @ protos.reshape(m, -1)).reshape(-1, mh, mw)
    has = np.zeros(len(dets), bool)
    cols, rows = np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    for j, (x1, y1, x2, y2) in enumerate(dets[:, :4]):
        mask = cv2.resize(logits[j], (width, height), interpolation=cv2.INTER_LINEAR) > 0
        inside = ((rows >= y1) & (rows < y2))[:, None] & ((cols >= x1) & (cols < x2))[None, :]
        has[j] = bool((mask & inside).any())
    return scale_boxes(dets[has], gain, pad, *rgb.shape[:2]), int((~has).sum())


def pose_reference(session: ort.InferenceSession, rgb: np.ndarray, height: int, width: int,
                   kpt_shape: tuple[int, int], conf: float = CONF, iou: float = IOU, max_det: int = MAX_DET,
                   layout: str = "yolov8") -> tuple[np.ndarray, np.ndarray]:
    """ultralytics' PosePredictor on one frame of a pose export (head [1, 4+C+K*D, A], or ``layout`` end2end
    [1, N, 6+K*D]): letterbox, NMS over the detection columns (:func:`_kept_with_values`), then each kept
    box's values after them viewed as its K keypoints of D values and mapped back by ``scale_coords`` (x, y
    less the padding, over the gain, clipped to the frame; a visibility score as it is). Returns the boxes
    [k, 6] and their keypoints [k, K, D] in frame pixels."""
    tensor, gain, pad = letterbox(rgb, height, width)
    head = session.run(None, {session.get_inputs()[0].name: tensor})[0]
    dets, values = _kept_with_values(head[0], kpt_shape[0] * kpt_shape[1], conf, iou, max_det, layout)
    points = values.reshape(len(values), *kpt_shape).astype(np.float32)
    h, w = rgb.shape[:2]
    points[..., 0] = ((points[..., 0] - pad[0]) / gain[0]).clip(0, w)
    points[..., 1] = ((points[..., 1] - pad[1]) / gain[1]).clip(0, h)
    return scale_boxes(dets, gain, pad, h, w), points


def rtdetr_reference(session: ort.InferenceSession, rgb: np.ndarray, conf: float = CONF,
                     classes: Sequence[int] | None = None) -> np.ndarray:
    """ultralytics' RTDETRPredictor on one frame: ``LetterBox(auto=False, scale_fill=True)`` (``cv2.resize`` of
    the uint8 frame to the input size with INTER_LINEAR, no padding), /255 in RGB order, ONNX Runtime, then
    ``postprocess``: corners from the centre and size, each query's best class score above ``conf``
    (strictly; and in ``classes``), the boxes times the frame's width and height, in the queries' order and
    not clipped. [k, 6] x1, y1, x2, y2, score, class in frame pixels. An export whose metadata says
    ``head`` RTDETRDecoder (ultralytics 8.4) answers [K, 6] rows its decoder ranked: box, score, class index,
    taken as they are (8.4's postprocess)."""
    h, w = rgb.shape[:2]
    height, width = session.get_inputs()[0].shape[2:]
    img = rgb if (w, h) == (width, height) else cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
    tensor = np.ascontiguousarray(img.transpose(2, 0, 1)[None]).astype(np.float32) / np.float32(255.0)
    head = session.run(None, {session.get_inputs()[0].name: tensor})[0][0]
    if session.get_modelmeta().custom_metadata_map.get("head") == "RTDETRDecoder":
        score, cls_id = head[:, 4], head[:, 5]
    else:
        score, cls_id = head[:, 4:].max(1), head[:, 4:].argmax(1)
    keep = score > conf
    if classes:
        keep &= np.isin(cls_id, classes)
    out = np.concatenate([_xywh2xyxy(head[:, :4]), score[:, None], cls_id[:, None]], axis=1)[keep].astype(np.float32)
    out[:, [0, 2]] *= np.float32(w)
    out[:, [1, 3]] *= np.float32(h)
    return out


# How close a corner must be to the reference's, in frame pixels: float32 arithmetic apart, the same numbers.
# (Mapping boxes back by min(H / h, W / w) instead of each side's rounded scale, as older ultralytics did,
# moves a 333 x 1000 frame's corners by up to 1.3 px at 320; a 1 px tolerance did not see it.)
CORNER_PX = 0.05


def assert_same_detections(got: np.ndarray, want: np.ndarray, what: str = "", corner_px: float = CORNER_PX) -> None:
    """Same number of boxes; each reference box has a partner of the same class, corners within
    ``corner_px`` and score within 1e-3 (matched greedily, so near-ties in score may come in either order)."""
    assert len(got) == len(want), f"{what}: {len(got)} detections, reference has {len(want)}"
    used = np.zeros(len(got), bool)
    for k, ref in enumerate(want):
        ok = (~used & (got[:, 5] == ref[5]) & (np.abs(got[:, 4] - ref[4]) <= 1e-3)
              & (np.abs(got[:, :4] - ref[:4]).max(axis=1) <= corner_px))
        assert ok.any(), f"{what}: reference detection {k} {ref.tolist()} has no match in Peregrine's output"
        used[np.flatnonzero(ok)[0]] = True


# -- images ----------------------------------------------------------------------------------------
def photographs() -> dict[str, np.ndarray]:
    """Real photographs of several sizes and aspect ratios (RGB uint8), including 1080p, portrait and tiny."""
    photos = {name: getattr(skimage.data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")}
    photos["motorcycle"] = skimage.data.stereo_motorcycle()[0]
    photos["hubble_1080p"] = cv2.resize(skimage.data.hubble_deep_field(), (1920, 1080), interpolation=cv2.INTER_AREA)
    photos["astronaut_portrait"] = np.ascontiguousarray(photos["astronaut"][:, 128:384])
    photos["coffee_tiny"] = cv2.resize(photos["coffee"], (60, 40), interpolation=cv2.INTER_AREA)
    # tall and narrow: at 320 its width rounds from 106.56 to 107, so each side's own scale matters
    photos["rocket_tall"] = cv2.resize(photos["rocket"], (333, 1000), interpolation=cv2.INTER_CUBIC)
    return photos


def jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    assert ok
    return buf.tobytes()


# -- repository and server -------------------------------------------------------------------------
SMALL = 320  # input size of the yolov5 and end-to-end test detectors
# A pipeline whose batcher holds a request for this long waiting for a fuller batch: a server that is
# guaranteed to fall behind a camera for the stream tests.
SLOW_WINDOW_US = 400_000


def pipeline_config(detector: str, extra: str = "", max_batch: int = 16, window_us: int = 2000) -> str:
    return (f'platform = "peregrine_detection"\nmax_batch_size = {max_batch}\n\n'
            f"[detection]\ndetector = \"{detector}\"\n{extra}\n"
            f"[dynamic_batching]\nmax_queue_delay_us = {window_us}\n")


def write_pipeline(root: Path, name: str, config: str) -> None:
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "config.toml").write_text(config)


@pytest.fixture(scope="module")
def detection_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("detection_models")
    onnx_models.write(root, "yolov8n", yolov8_detector(0), "max_batch_size = 16\n")
    onnx_models.write(root, "yolov5n", yolov5_detector(0, imgsz=SMALL), "max_batch_size = 16\n")
    onnx_models.write(root, "e2e", end2end_detector(0, imgsz=SMALL), "max_batch_size = 16\n")
    onnx_models.write(root, "plain", onnx_models.identity("FP32", ["N", 4]))
    write_pipeline(root, "det_v8", pipeline_config("yolov8n"))
    write_pipeline(root, "det_v5", pipeline_config("yolov5n"))
    write_pipeline(root, "det_e2e", pipeline_config("e2e"))
    write_pipeline(root, "det_v5_agnostic", pipeline_config("yolov5n", "agnostic_nms = true\n"))
    write_pipeline(root, "det_limited", pipeline_config("yolov5n", "max_pixels = 100000\n", max_batch=4))
    write_pipeline(root, "det_slow", pipeline_config(
        "yolov5n", "stream_max_in_flight = 1\nstream_max_waiting = 1\n", max_batch=8, window_us=SLOW_WINDOW_US))
    return root


@pytest.fixture(scope="module")
def detection_server(detection_repo: Path) -> Iterator[PeregrineServer]:
    server = PeregrineServer(ServerConfig(model_repository=detection_repo, grpc_port=0, http_port=0))
    server.start()
    yield server
    server.stop(grace=1.0)


@pytest.fixture(scope="module")
def references(detection_repo: Path) -> dict[str, Reference]:
    return {
        "det_v8": Reference.open(detection_repo / "yolov8n" / "1" / "model.onnx", "yolov8", 640),
        "det_v5": Reference.open(detection_repo / "yolov5n" / "1" / "model.onnx", "yolov5", SMALL),
        "det_e2e": Reference.open(detection_repo / "e2e" / "1" / "model.onnx", "end2end", SMALL),
    }
