"""The detector's head: which input takes the image, at what size, and how to read its output.

Layouts (``peregrine.kernels.LAYOUTS``): yolov8/yolo11 [N, 4+C, A], yolov5 [N, A, 5+C], end-to-end
[N, K, 6] (yolov10, YOLO26 and other NMS-free exports); and ``rtdetr``, ultralytics' RT-DETR export, its
input stretched to size rather than letterboxed (``HeadInfo.stretch``), no NMS: [N, K, 4+C], per query a box
as fractions of the input (centre x, centre y, width, height) and C class scores, no objectness; or, since
its decoder ranks its own answers (ultralytics 8.4, ``head`` RTDETRDecoder in the metadata), [N, K, 6]: the
best K (query, class) pairs in descending score, each the query's box as fractions, the score and the class
index (``HeadInfo.ranked``). Read once, when the model loads, from the graph and one probe run.

Ultralytics' segmentation and pose exports carry the same head with more after each box's class scores
(end-to-end ones: after its class id): 32 mask coefficients (a second, 4-D output holds the prototype
masks) or 17 x 3 keypoint values. The pipeline serves their boxes, reading the columns a detector has
(``HeadInfo.extra`` counts the rest), with a pose export's keypoints (``HeadInfo.keypoints``) or a
segmentation export's mask polygons (``HeadInfo.proto_name``); rotated boxes (``task: obb``) are refused,
not misread.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ... import kernels
from ..config.model import DetectionConfig
from ..core.errors import ModelLoadError, clipped
from ..runtime.metadata import export_size, parse_labels
from ..runtime.onnx import OnnxSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadInfo:
    """What the pipeline needs to know of a detector: its image input and its head."""

    input_name: str
    input_dtype: np.dtype[Any]
    height: int
    width: int
    output_name: str
    layout: str
    num_classes: int  # end-to-end heads: as many as labels or metadata name; 0 when nothing says
    fixed_batch: int  # the model's static batch size, 0 when dynamic
    extra: int = 0  # values after each box's detection columns (mask coefficients, keypoints), not read
    task: str = "detect"  # the export's task: "detect", or "segment" / "pose" served as their boxes (and keypoints)
    ranked: bool = False  # rtdetr: rows of (box, score, class) its decoder ranked, not C scores a query
    proto_name: str = ""  # an ultralytics segmentation export's prototypes: boxes with a mask answer, with its polygon
    keypoints: tuple[int, int] = (0, 0)  # a pose export's kpt_shape: keypoints a box, values each (x, y[, score])

    @property
    def stretch(self) -> bool:
        """Whether frames are stretched to the input size (RT-DETR, as ultralytics' RTDETRPredictor does)
        instead of letterboxed."""
        return self.layout == RTDETR


# Ultralytics' RT-DETR export: its own layout, decoded by the pipeline into end-to-end rows (see BoxDecoder).
RTDETR = "rtdetr"
RTDETR_DECODER = "RTDETRDecoder"  # the ``head`` metadata of an RT-DETR export (ultralytics 8.4)


# Ultralytics' tasks (the ``task`` metadata of an export) and whether the pipeline serves them.
SERVED_TASKS = ("detect", "segment", "pose")
MAX_KEYPOINTS = 1024  # a pose export's keypoints a box (COCO person pose has 17, animal and hand models tens)


def detect_layout(shape: Sequence[int], extra: int = 0, size: tuple[int, int] | None = None) -> str:
    """The head layout of an output of shape [N, d1, d2] whose boxes carry ``extra`` values after their
    detection columns, for an input of ``size`` (height, width). Where the size is known, a head whose
    anchors are those of the feature maps at that size is read by them first: [N, 4+C+extra, A] yolov8 with
    A one anchor a cell, [N, A, 5+C+extra] yolov5 with A three (a one-class YOLOv5 has the six columns of an
    end-to-end head; a YOLOv8 of more classes than anchors, more rows than columns). Otherwise:
    [N, K, 6 + extra] end2end, [N, 4+C+extra, A] yolov8 with fewer rows than columns, else yolov5."""
    _, d1, d2 = shape
    if size is not None:
        p5, p6 = cells(*size)
        if d2 in (p5, p6) and d1 - extra >= 5:
            return "yolov8"
        if d1 in (3 * p5, 3 * p6) and d2 - extra >= 6:
            return "yolov5"
    if d2 - extra == 6 and d1 != d2:
        return "end2end"
    return "yolov8" if d1 < d2 else "yolov5"


def cells(height: int, width: int) -> tuple[int, int]:
    """The cells of a detector's feature maps for a ``height`` x ``width`` input: strides 8, 16 and 32 (P5
    models), or 8 to 64 (P6); a stride-2 convolution rounds a side up."""
    def count(strides: tuple[int, ...]) -> int:
        return sum(-(-height // s) * -(-width // s) for s in strides)

    return count((8, 16, 32)), count((8, 16, 32, 64))


def reads_as_rtdetr(shape: Sequence[int], names: int) -> bool:
    """Whether a head of ``shape`` [N, K, 4+C], of a model whose metadata names C classes, is ultralytics'
    RT-DETR export: boxes and class scores without objectness (a yolov5 head has one column more)."""
    return names > 0 and len(shape) == 3 and shape[2] == 4 + names and shape[1] != shape[2]


def rtdetr_decoder(metadata: dict[str, str]) -> bool:
    """Whether an export's metadata names its head RTDETRDecoder (ultralytics 8.4 records the head it exported)."""
    return metadata.get("head", "").strip() == RTDETR_DECODER


def rtdetr_export(shape: Sequence[int], metadata: dict[str, str]) -> bool:
    """Whether an export whose first output has ``shape`` reads as ultralytics' RT-DETR by its metadata: its
    ``head`` (8.4) says RTDETRDecoder, or its output has the 4 + C columns of its C named classes."""
    return rtdetr_decoder(metadata) or reads_as_rtdetr(shape, len(parse_labels(metadata)))


def _num_classes(layout: str, shape: Sequence[int], extra: int) -> int:
    lid = kernels.LAYOUTS[layout]
    return shape[1] - 4 - extra if lid == 0 else shape[2] - 5 - extra if lid == 1 else 0


def _task_extra(metadata: dict[str, str], graph_out: Sequence[Any], source: str) -> tuple[str, int, tuple[int, int]]:
    """The export's task, how many values each box carries after its detection columns and, for a pose
    export, its ``kpt_shape`` (keypoints, values each): a segmentation export's mask coefficients (as many as
    its 4-D prototype output has channels; a model with such an output and no ``task`` metadata, as the
    yolov5 repository exports it, is one too), a pose export's keypoints (``kpt_shape`` metadata, 2 or 3
    values a keypoint: x, y and, with 3, its visibility score). ModelLoadError for tasks whose output is not
    axis-aligned boxes."""
    task = metadata.get("task", "").strip().lower()
    protos = [t for t in graph_out if len(t.shape) == 4]
    if not task:
        task = "segment" if protos else "detect"
    if task == "obb":
        raise ModelLoadError(f"{source}: the model's metadata says task 'obb': its boxes are rotated, which the "
                             "detection pipeline does not decode (it returns axis-aligned boxes); serve the "
                             "model as a plain model over OIP")
    if task not in SERVED_TASKS:
        raise ModelLoadError(f"{source}: the model's metadata says task '{clipped(task)}'; a detection pipeline "
                             f"serves ultralytics' {', '.join(SERVED_TASKS)} exports (their boxes)")
    if task == "segment":
        channels = protos[0].shape[1] if protos else -1
        if channels <= 0:
            raise ModelLoadError(f"{source}: a segmentation model needs a prototype-mask output [N, M, H, W] "
                                 "with a fixed number of masks M to tell its mask coefficients from its classes")
        return task, int(channels), (0, 0)
    if task == "pose":
        try:
            shape = ast.literal_eval(metadata.get("kpt_shape", ""))
        except (ValueError, SyntaxError):
            shape = None
        if (not isinstance(shape, (list, tuple)) or len(shape) != 2 or not isinstance(shape[0], int)
                or not 0 < shape[0] <= MAX_KEYPOINTS or shape[1] not in (2, 3)):
            raise ModelLoadError(f"{source}: a pose model's metadata needs 'kpt_shape' [keypoints, values] (at most "
                                 f"{MAX_KEYPOINTS} keypoints of 2 or 3 values: x, y and a visibility score) to tell "
                                 f"its keypoints from its classes, got {clipped(repr(metadata.get('kpt_shape')))}")
        return task, int(shape[0] * shape[1]), (int(shape[0]), int(shape[1]))
    return task, 0, (0, 0)


def inspect_head(session: OnnxSession, cfg: DetectionConfig, source: str) -> HeadInfo:
    """Read a detector's input and head from its graph and one probe run; raises ModelLoadError with the
    reason when the model is not a detector this pipeline can serve."""
    graph_in, graph_out = session.tensor_specs()
    metadata = session.metadata()
    images_in = [t for t in graph_in if len(t.shape) == 4]
    if len(graph_in) != 1 or not images_in:
        described = ", ".join(f"{t.name} {t.describe()}" for t in graph_in)
        raise ModelLoadError(f"{source}: a detection pipeline needs a model with one image input "
                             f"[N, 3, H, W]; the model has {described}")
    spec = images_in[0]
    if spec.datatype not in ("FP32", "FP16") or spec.shape[1] not in (3, -1):
        raise ModelLoadError(f"{source}: input '{spec.name}': expected FP32 or FP16 [N, 3, H, W], "
                             f"got {spec.describe()}")
    if cfg.input_size is not None:
        height, width = cfg.input_size
        if spec.shape[2] not in (-1, height) or spec.shape[3] not in (-1, width):
            raise ModelLoadError(f"{source}: detection.input_size {cfg.input_size} does not fit input "
                                 f"'{spec.name}' {spec.describe()}")
    elif spec.shape[2] > 0 and spec.shape[3] > 0:
        height, width = spec.shape[2], spec.shape[3]
    elif (exported := export_size(metadata)) is not None:
        height, width = exported  # an ultralytics export with dynamic=True: the size it was exported at
        log.info("%s: input '%s' %s is dynamic; using the exported size %dx%d from the model's 'imgsz' "
                 "metadata (detection.input_size overrides it)", source, spec.name, spec.describe(), height, width)
    else:
        raise ModelLoadError(f"{source}: input '{spec.name}' {spec.describe()} has a dynamic height or width "
                             "and the model carries no 'imgsz' metadata; set detection.input_size = [height, width]")
    heads = [t for t in graph_out if len(t.shape) == 3]
    if not heads:
        described = ", ".join(f"{t.name} {t.describe()}" for t in graph_out)
        raise ModelLoadError(f"{source}: a detection pipeline needs a 3-D detection head output; the model has "
                             f"{described}")
    task, extra, keypoints = _task_extra(metadata, graph_out, source)
    dtype = np.dtype(np.float16 if spec.datatype == "FP16" else np.float32)
    fixed = spec.shape[0] if spec.shape[0] > 0 else 0
    # The head's shape from a real run: dynamic dimensions and the layout are only known then.
    probe = np.full((max(fixed, 1), 3, height, width), 114 / 255, dtype)
    try:
        head = session.run({spec.name: probe}, [heads[0].name])[0]
    except Exception as e:
        raise ModelLoadError(f"{source}: the detector failed on a {height}x{width} probe image: {e}") from None
    if head.ndim != 3:
        raise ModelLoadError(f"{source}: output '{heads[0].name}' came back with shape {list(head.shape)}, "
                             "expected 3 dimensions")
    names = len(parse_labels(metadata))
    if extra and not metadata.get("task") and names:
        # A segmentation export was inferred from a 4-D output alone: when the head has exactly the columns
        # of a detector of the model's named classes without it, that output is something else (a feature
        # map, say) and the head a plain detector's.
        as_plain = _num_classes(detect_layout(head.shape, 0, (height, width)), head.shape, 0)
        as_segment = _num_classes(detect_layout(head.shape, extra, (height, width)), head.shape, extra)
        if as_plain == names != as_segment:
            task, extra = "detect", 0
    decoder = rtdetr_decoder(metadata)
    if cfg.layout == RTDETR or (cfg.layout == "auto" and not extra and (decoder or reads_as_rtdetr(head.shape, names))):
        return _rtdetr_head(spec.name, dtype, height, width, heads[0].name, head, fixed, task, source,
                            len(cfg.labels) or names, decoder)
    layout = detect_layout(head.shape, extra, (height, width)) if cfg.layout == "auto" else cfg.layout
    lid = kernels.LAYOUTS[layout]
    _, d1, d2 = head.shape
    if (lid == 0 and d1 - extra < 5) or (lid == 1 and d2 - extra < 6) or (lid == 2 and d2 - extra != 6):
        after = f" with {extra} values after each box's detection columns (task '{task}')" if extra else ""
        raise ModelLoadError(f"{source}: output '{heads[0].name}' {list(head.shape)}{after} does not fit "
                             f"layout '{layout}'")
    classes = _num_classes(layout, head.shape, extra)
    if not classes:
        # An end-to-end head [N, K, 6] carries class ids, not one score per class: the classes are the
        # ones the configuration or the model's metadata names.
        classes = len(cfg.labels) or names
    # Ultralytics' SegmentationPredictor answers only the boxes whose mask is not empty (masks.py): the
    # pipeline reads an ultralytics segmentation export's prototypes for that (the yolov5 repository's
    # predictor, whose exports carry no task metadata, answers every box).
    protos = [t.name for t in graph_out if len(t.shape) == 4]
    proto_name = protos[0] if task == "segment" and metadata.get("task", "").strip().lower() == "segment" else ""
    if task == "pose":
        log.info("%s: a pose export: its boxes are served with %d keypoints each (%d values a keypoint)", source,
                 *keypoints)
    elif extra:
        log.info("%s: a segmentation export: its boxes are served, the %d mask coefficients after each box's "
                 "detection columns %s", source, extra,
                 "decide which boxes have a mask" if proto_name else "are not read")
    return HeadInfo(spec.name, dtype, height, width, heads[0].name, layout, classes, fixed, extra, task,
                    proto_name=proto_name, keypoints=keypoints)


def ranked_rows(head: np.ndarray, names: int) -> bool:
    """Whether an [N, K, 6] RT-DETR head reads as its decoder's ranked rows (box, score, class index) rather
    than a box and two class scores: on the probe, every last column a whole class index (below ``names``
    when the model names its classes) and the scores in descending order down each image's rows."""
    if head.shape[2] != 6 or not np.isfinite(head).all():
        return False
    classes, scores = head[..., 5], head[..., 4]
    whole = bool((classes == np.round(classes)).all() and classes.min() >= 0)
    return whole and (names <= 0 or classes.max() < names) and bool((np.diff(scores, axis=1) <= 0).all())


def _rtdetr_head(input_name: str, dtype: np.dtype[Any], height: int, width: int, output_name: str, head: np.ndarray,
                 fixed: int, task: str, source: str, names: int = 0, decoder: bool = False) -> HeadInfo:
    """The head of an RT-DETR export, checked on the probe's answer: each query's box is four fractions of
    the input (sigmoids), so a head whose boxes fall outside [0, 1] is something else and is refused. Six
    columns are the decoder's ranked rows when they read as such (:func:`ranked_rows`); an export whose
    metadata says RTDETRDecoder with six columns that do not is refused (``names``: the classes the
    configuration or the metadata names, 0 when none does)."""
    _, queries, columns = head.shape
    ranked = ranked_rows(head, names) and (decoder or names != 2)
    if decoder and columns == 6 and not ranked:
        raise ModelLoadError(
            f"{source}: output '{output_name}' {list(head.shape)} of an RTDETRDecoder export does not read as "
            "its ranked rows (centre x, centre y, width, height, score in descending order, class index) on a "
            "grey probe image")
    if columns < 5 or task != "detect":
        raise ModelLoadError(f"{source}: output '{output_name}' {list(head.shape)} does not fit layout 'rtdetr' "
                             f"[N, K, 4+C] of a detect model (task '{task}')")
    boxes = head[..., :4]
    if not (np.isfinite(boxes).all() and boxes.min() >= 0.0 and boxes.max() <= 1.0):
        raise ModelLoadError(
            f"{source}: output '{output_name}' {list(head.shape)} reads as an RT-DETR head (4 + C columns for "
            f"the model's C class names, no objectness), but its boxes on a grey probe image span "
            f"[{float(np.nanmin(boxes)):.3g}, {float(np.nanmax(boxes)):.3g}], not fractions of the input in [0, 1] "
            "as ultralytics exports RT-DETR; set detection.layout to the head's layout if it is another")
    log.info("%s: an RT-DETR head of %d %s: frames are stretched to %dx%d, its boxes taken as they are, "
             "without NMS", source, queries, "ranked answers" if ranked else "queries", height, width)
    return HeadInfo(input_name, dtype, height, width, output_name, RTDETR, names if ranked else columns - 4, fixed,
                    0, task, ranked)
