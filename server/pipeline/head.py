"""The detector's head: which input takes the image, at what size, and how to read its output.

Layouts (``peregrine.kernels.LAYOUTS``): yolov8/yolo11 [N, 4+C, A], yolov5 [N, A, 5+C], end-to-end
[N, K, 6] (yolov10, YOLO26 and other NMS-free exports). Read once, when the model loads, from the graph
and one probe run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ... import kernels
from ..config.model import DetectionConfig
from ..core.errors import ModelLoadError
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


def detect_layout(shape: Sequence[int]) -> str:
    """The head layout of an output of shape [N, d1, d2]: [N, K, 6] end2end, [N, 4+C, A] yolov8 (fewer
    rows than columns), else [N, A, 5+C] yolov5."""
    _, d1, d2 = shape
    if d2 == 6 and d1 != 6:
        return "end2end"
    return "yolov8" if d1 < d2 else "yolov5"


def _num_classes(layout: str, shape: Sequence[int]) -> int:
    lid = kernels.LAYOUTS[layout]
    return shape[1] - 4 if lid == 0 else shape[2] - 5 if lid == 1 else 0


def inspect_head(session: OnnxSession, cfg: DetectionConfig, source: str) -> HeadInfo:
    """Read a detector's input and head from its graph and one probe run; raises ModelLoadError with the
    reason when the model is not a detector this pipeline can serve."""
    graph_in, graph_out = session.tensor_specs()
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
    elif (exported := export_size(session.metadata())) is not None:
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
    layout = detect_layout(head.shape) if cfg.layout == "auto" else cfg.layout
    lid = kernels.LAYOUTS[layout]
    _, d1, d2 = head.shape
    if (lid == 0 and d1 < 5) or (lid == 1 and d2 < 6) or (lid == 2 and d2 != 6):
        raise ModelLoadError(f"{source}: output '{heads[0].name}' {list(head.shape)} does not fit layout '{layout}'")
    names = len(parse_labels(session.metadata()))
    classes = _num_classes(layout, head.shape)
    if cfg.layout == "auto" and layout == "yolov5" and names and classes != names and d2 - 4 == names:
        # [N, K, 4+C] with as many classes as the model names: boxes and class scores without objectness
        # (DETR-style heads such as RT-DETR), which no layout here decodes. Refuse rather than misread it.
        raise ModelLoadError(
            f"{source}: output '{heads[0].name}' {list(head.shape)} has 4 + {names} columns for the model's "
            f"{names} class names, a head without objectness (DETR-style), which Peregrine does not decode; "
            "supported: yolov8/yolo11 [N, 4+C, A], yolov5 [N, A, 5+C], end2end [N, K, 6] "
            "(set detection.layout to force one)")
    if not classes:
        # An end-to-end head [N, K, 6] carries class ids, not one score per class: the classes are the
        # ones the configuration or the model's metadata names.
        classes = len(cfg.labels) or names
    return HeadInfo(spec.name, dtype, height, width, heads[0].name, layout, classes, fixed)
