"""Detection post-processing, the Python side of ``bindings/postprocess.cpp``: ``decode``, ``nms``,
``map_boxes`` and the fused ``detect_postprocess`` (and their ``_into`` forms), with the head ``LAYOUTS`` and
the ``Candidates`` / ``Detections`` results.

Arguments are checked here, then the tier is picked by where the head lives (see ``_tiers``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from . import _tiers
from ._tiers import NATIVE_CPU, _array, _check_threads, _describe, _is_device_array, _native, _numba

#: Head layouts by name: YOLOv8/YOLO11 [N, 4+C, A]; YOLOv5 [N, A, 5+C]; end-to-end (NMS-free) [N, K, 6].
LAYOUTS = {"yolov8": 0, "yolo11": 0, "yolov5": 1, "end2end": 2, "yolov10": 2}
_LAYOUT_SHAPES = ("yolov8 [N, 4+C, A]", "yolov5 [N, A, 5+C]", "end2end [N, K, 6]")


class Candidates(NamedTuple):
    """Decoded candidates, per image sorted by score desc then anchor asc (end-to-end heads: in the head's
    own order, see ``decode``); rows past counts[i] are 0 / -1."""

    boxes: Any  #: float32 [N, K, 4] x1, y1, x2, y2 in model pixels
    scores: Any  #: float32 [N, K]
    class_ids: Any  #: int32 [N, K]
    anchor_ids: Any  #: int32 [N, K] anchor (column/row of the head) each candidate came from
    counts: Any  #: int32 [N]


class Detections(NamedTuple):
    """Detections packed per image; rows past counts[i] are zeros."""

    dets: Any  #: float32 [N, max_det, 6]: x1, y1, x2, y2, score, class id (as float)
    counts: Any  #: int32 [N]

    def split(self) -> list[Any]:
        """Per-image [counts[i], 6] views (counts are read on the host)."""
        counts = self.counts.get() if hasattr(self.counts, "get") else self.counts
        return [self.dets[i, : int(c)] for i, c in enumerate(counts)]


def _unit(value: float, name: str) -> float:
    if not isinstance(value, (int, float, np.integer, np.floating)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
    return float(value)


def _positive_int(value: int, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 1 <= value <= 2**31 - 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    return int(value)


def _head(head: Any, layout: str) -> tuple[int, int, int, int, bool]:
    """(layout id, batch, anchors, classes, on_device) of a detection head."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {sorted(LAYOUTS)}, got {layout!r}")
    lid = LAYOUTS[layout]
    _array(head, "head", np.float32, 3, _LAYOUT_SHAPES[lid])
    n, d1, d2 = (int(v) for v in head.shape)
    if (lid == 0 and d1 < 5) or (lid == 1 and d2 < 6) or (lid == 2 and d2 != 6):
        raise ValueError(f"head: expected {_LAYOUT_SHAPES[lid]} (C >= 1), got {_describe(head)}")
    anchors, classes = (d2, d1 - 4) if lid == 0 else (d1, d2 - 5) if lid == 1 else (d1, 0)
    return lid, n, anchors, classes, _is_device_array(head)


def _class_mask(classes: Sequence[int] | None) -> np.ndarray | None:
    if classes is None:
        return None
    ids = list(classes)
    for c in ids:
        if not isinstance(c, (int, np.integer)) or isinstance(c, bool) or not 0 <= c < 2**31:
            raise ValueError(f"classes: expected non-negative class ids, got {c!r}")
    mask = np.zeros(max([1, *(int(c) + 1 for c in ids)]), np.uint8)  # at least one entry: empty = none allowed
    mask[[int(c) for c in ids]] = 1
    return mask


def _map_inputs(params: Any, orig_sizes: Any, n: int) -> tuple[Any, Any]:
    if (params is None) != (orig_sizes is None):
        raise ValueError("params, orig_sizes: expected both (to map boxes back) or neither")
    if params is None:
        return None, None
    params = np.asarray(params.get() if _is_device_array(params) else params)
    sizes = np.asarray(orig_sizes.get() if _is_device_array(orig_sizes) else orig_sizes)
    if params.dtype != np.float32 or params.shape != (n, 4):
        raise ValueError(f"params: expected float32 [{n}, 4] (scale_x, scale_y, pad_x, pad_y), got {_describe(params)}")
    if not np.issubdtype(sizes.dtype, np.integer) or sizes.shape != (n, 2):
        raise ValueError(f"orig_sizes: expected integers [{n}, 2] (height, width), got {_describe(sizes)}")
    if not (params[:, :2] > 0).all():
        raise ValueError("params: expected scales > 0")
    if not (sizes >= 1).all() or not (sizes < 2**31).all():
        raise ValueError("orig_sizes: expected sizes >= 1")
    # Host arrays either way: the CUDA tier uploads them on the launch's own stream (see _cuda._upload).
    return np.ascontiguousarray(params), np.ascontiguousarray(sizes, np.int32)


def decode(
    head: Any,
    layout: str = "yolov8",
    *,
    conf: float = 0.25,
    max_candidates: int = 8192,
    classes: Sequence[int] | None = None,
    num_threads: int = 0,
    stream: Any = None,
) -> Candidates:
    """Decode a detection head into candidates (boxes as x1, y1, x2, y2 in model pixels).

    head: float32 C-contiguous; ``layout`` "yolov8"/"yolo11" [N, 4+C, A] (cx, cy, w, h, class scores;
    score = max class score), "yolov5" [N, A, 5+C] (cx, cy, w, h, objectness, class scores; kept when
    objectness > conf and score = objectness * max class score > conf), "end2end"/"yolov10" [N, K, 6]
    (x1, y1, x2, y2, score, class). Keeps score > ``conf`` (in [0, 1]).

    YOLOv8/v5 layouts: the class is the best one (first on ties) and with ``classes`` only those ids are kept
    (like ultralytics: the best class must be allowed); at most ``max_candidates`` per image, chosen and
    ordered by score desc then anchor asc.

    End-to-end layouts, as ultralytics' ``non_max_suppression`` treats them: the rows above ``conf`` in the
    head's own order (not re-sorted by score), the first ``max_candidates`` of them, and only then the
    ``classes`` filter (rows whose class column equals one of the ids), which may leave fewer. The class id
    reported is the class column rounded.

    Returns ``Candidates`` with K = min(max_candidates, A), on the head's device.
    """
    lid, n, anchors, _, device = _head(head, layout)
    conf = _unit(conf, "conf")
    max_candidates = _positive_int(max_candidates, "max_candidates")
    num_threads = _check_threads(num_threads)
    mask = _class_mask(classes)
    if device:
        from . import _cuda

        return Candidates(*_cuda.decode(head, lid, anchors, conf, max_candidates, mask, stream))
    if _tiers._cpu_tier == NATIVE_CPU:
        return Candidates(*_native.decode(head, lid, conf, max_candidates, mask, num_threads))
    nb = _numba()
    cap = max(1, min(max_candidates, anchors))
    out = Candidates(
        np.zeros((n, cap, 4), np.float32),
        np.zeros((n, cap), np.float32),
        np.full((n, cap), -1, np.int32),
        np.full((n, cap), -1, np.int32),
        np.zeros(n, np.int32),
    )
    nb_mask = mask if mask is not None else np.zeros(0, np.uint8)
    for i in range(n):
        scores, anchor_ids, class_ids, boxes = nb.collect(head[i], lid, conf, cap, nb_mask)
        k = scores.shape[0]
        out.boxes[i, :k], out.scores[i, :k], out.class_ids[i, :k], out.anchor_ids[i, :k] = (
            boxes,
            scores,
            class_ids,
            anchor_ids,
        )
        out.counts[i] = k
    return out


def nms(
    boxes: Any,
    scores: Any,
    class_ids: Any,
    counts: Any = None,
    *,
    iou: float = 0.7,
    max_det: int = 300,
    agnostic: bool = False,
    num_threads: int = 0,
    stream: Any = None,
) -> tuple[Any, Any]:
    """Greedy non-maximum suppression, batched over images.

    boxes float32 [N, K, 4] (x1, y1, x2, y2), scores float32 [N, K], class_ids int32 [N, K], counts int32
    [N] or None (only the first counts[i] candidates of image i take part; None: all K). Candidates rank
    by score desc then index asc (NaN scores are never kept); a candidate is dropped when its IoU with an
    already kept box of the same class (any class with ``agnostic``) is > ``iou``. At most ``max_det``.
    Returns (keep int32 [N, max_det]: indices into K in rank order, -1 padded; kept int32 [N]).
    """
    device = _is_device_array(boxes)
    _array(boxes, "boxes", np.float32, 3, "[N, K, 4]", device)
    if boxes.shape[2] != 4:
        raise ValueError(f"boxes: expected float32 [N, K, 4], got {_describe(boxes)}")
    n, k = int(boxes.shape[0]), int(boxes.shape[1])
    _array(scores, "scores", np.float32, 2, "[N, K]", device)
    _array(class_ids, "class_ids", np.int32, 2, "[N, K]", device)
    for name, a in (("scores", scores), ("class_ids", class_ids)):
        if tuple(a.shape) != (n, k):
            raise ValueError(f"{name}: expected [{n}, {k}] like boxes, got {_describe(a)}")
    if counts is not None:
        _array(counts, "counts", np.int32, 1, "[N]", device)
        if tuple(counts.shape) != (n,):
            raise ValueError(f"counts: expected int32 [{n}], got {_describe(counts)}")
    iou = _unit(iou, "iou")
    max_det = _positive_int(max_det, "max_det")
    num_threads = _check_threads(num_threads)
    if device:
        from . import _cuda

        return _cuda.nms(boxes, scores, class_ids, counts, iou, max_det, bool(agnostic), stream)
    if counts is not None and ((counts < 0).any() or (counts > k).any()):
        raise ValueError(f"counts: expected values in [0, {k}]")
    if _tiers._cpu_tier == NATIVE_CPU:
        return _native.nms(boxes, scores, class_ids, counts, iou, max_det, bool(agnostic), num_threads)
    nb = _numba()
    keep = np.full((n, max_det), -1, np.int32)
    kept = np.zeros(n, np.int32)
    for i in range(n):
        order = nb.rank(scores[i], k if counts is None else int(counts[i]))
        chosen = order[nb.greedy_nms(boxes[i][order], class_ids[i][order], iou, max_det, bool(agnostic))]
        keep[i, : len(chosen)] = chosen
        kept[i] = len(chosen)
    return keep, kept


def map_boxes(boxes: Any, params: Any, orig_sizes: Any, *, num_threads: int = 0, stream: Any = None) -> Any:
    """Boxes float32 [N, K, 4] (x1, y1, x2, y2) from model pixels back to original frame pixels.

    ``params`` float32 [N, 4] as returned by ``letterbox``/``resize``/``center_crop``; ``orig_sizes``
    integers [N, 2] (height, width). x = (x - pad_x) / scale_x (y likewise), clipped to [0, width] x
    [0, height]. Returns a new array on the boxes' device.
    """
    out = np.empty_like(boxes) if isinstance(boxes, np.ndarray) else None
    return _map_boxes(out, boxes, params, orig_sizes, num_threads, stream)


def map_boxes_into(
    out: Any, boxes: Any, params: Any, orig_sizes: Any, *, num_threads: int = 0, stream: Any = None
) -> Any:
    """``map_boxes`` writing into ``out`` (float32 [N, K, 4]; may be ``boxes`` itself). Returns out."""
    return _map_boxes(out, boxes, params, orig_sizes, num_threads, stream)


def _map_boxes(out: Any, boxes: Any, params: Any, orig_sizes: Any, num_threads: int, stream: Any) -> Any:
    device = _is_device_array(boxes)
    _array(boxes, "boxes", np.float32, 3, "[N, K, 4]", device)
    if boxes.shape[2] != 4:
        raise ValueError(f"boxes: expected float32 [N, K, 4], got {_describe(boxes)}")
    num_threads = _check_threads(num_threads)
    n = int(boxes.shape[0])
    params, sizes = _map_inputs(params, orig_sizes, n)
    if params is None:
        raise ValueError("params, orig_sizes: expected arrays, got None")
    if device:
        from . import _cuda

        return _cuda.map_boxes(out, boxes, params, sizes, stream)
    if out is None or not isinstance(out, np.ndarray):
        raise TypeError(f"out: expected a numpy.ndarray, got {_describe(out)}")
    if out.dtype != np.float32 or out.shape != boxes.shape:
        raise ValueError(f"out: expected float32 {list(boxes.shape)}, got {_describe(out)}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out: expected a C-contiguous, writeable array")
    if _tiers._cpu_tier == NATIVE_CPU:
        _native.map_boxes_into(out, boxes, params, sizes, num_threads)
    else:
        nb = _numba()
        for i in range(n):
            nb.map_boxes(boxes[i], params[i], int(sizes[i, 0]), int(sizes[i, 1]), out[i])
    return out


def detect_postprocess(
    head: Any,
    layout: str = "yolov8",
    *,
    conf: float = 0.25,
    iou: float = 0.7,
    max_det: int = 300,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
    params: Any = None,
    orig_sizes: Any = None,
    max_candidates: int = 8192,
    num_threads: int = 0,
    stream: Any = None,
) -> Detections:
    """Fused detection post-processing: ``decode`` -> ``nms`` -> ``map_boxes`` (when ``params`` and
    ``orig_sizes`` are given; else boxes stay in model pixels).

    YOLOv8/v5 layouts: the top ``max_candidates`` by score, greedy NMS, at most ``max_det`` kept.
    End-to-end heads (NMS done by the model) follow ultralytics exactly: ``out = rows[score > conf][:max_det]``
    in the head's own order (not re-sorted), then, with ``classes``, ``out[isin(out[:, 5], classes)]``: the
    first ``max_det`` rows above ``conf`` are taken before the class filter, so a filter can leave fewer than
    ``max_det`` although more rows of those classes exist. ``iou``, ``agnostic`` and ``max_candidates`` are
    not used for them.

    See ``decode`` for head layouts, ``conf``, ``classes`` and ``max_candidates``; ``nms`` for ``iou``,
    ``max_det`` and ``agnostic``; ``map_boxes`` for ``params`` / ``orig_sizes``.
    Returns ``Detections(dets float32 [N, max_det, 6], counts int32 [N])`` on the head's device.
    """
    return _detect(
        None,
        None,
        head,
        layout,
        conf,
        iou,
        max_det,
        classes,
        agnostic,
        params,
        orig_sizes,
        max_candidates,
        num_threads,
        stream,
    )


def detect_postprocess_into(
    dets: Any,
    counts: Any,
    head: Any,
    layout: str = "yolov8",
    *,
    conf: float = 0.25,
    iou: float = 0.7,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
    params: Any = None,
    orig_sizes: Any = None,
    max_candidates: int = 8192,
    num_threads: int = 0,
    stream: Any = None,
) -> Detections:
    """``detect_postprocess`` writing into ``dets`` (float32 [N, max_det, 6]; max_det read from it) and
    ``counts`` (int32 [N]), both on the head's device. Returns them as ``Detections``."""
    if not (isinstance(dets, np.ndarray) or _is_device_array(dets)) or dets.ndim != 3:
        raise ValueError(f"dets: expected float32 [N, max_det, 6], got {_describe(dets)}")
    return _detect(
        dets,
        counts,
        head,
        layout,
        conf,
        iou,
        int(dets.shape[1]),
        classes,
        agnostic,
        params,
        orig_sizes,
        max_candidates,
        num_threads,
        stream,
    )


def _detect(
    dets: Any,
    counts: Any,
    head: Any,
    layout: str,
    conf: float,
    iou: float,
    max_det: int,
    classes: Any,
    agnostic: bool,
    params: Any,
    orig_sizes: Any,
    max_candidates: int,
    num_threads: int,
    stream: Any,
) -> Detections:
    lid, n, anchors, _, device = _head(head, layout)
    conf = _unit(conf, "conf")
    iou = _unit(iou, "iou")
    max_det = _positive_int(max_det, "max_det")
    max_candidates = _positive_int(max_candidates, "max_candidates")
    num_threads = _check_threads(num_threads)
    mask = _class_mask(classes)
    params, sizes = _map_inputs(params, orig_sizes, n)
    if dets is not None:
        _array(dets, "dets", np.float32, 3, f"[{n}, max_det, 6]", device)
        if tuple(dets.shape) != (n, max_det, 6):
            raise ValueError(f"dets: expected float32 [{n}, max_det, 6], got {_describe(dets)}")
        _array(counts, "counts", np.int32, 1, f"[{n}]", device)
        if tuple(counts.shape) != (n,):
            raise ValueError(f"counts: expected int32 [{n}], got {_describe(counts)}")
        if not device and not (dets.flags.writeable and counts.flags.writeable):
            raise ValueError("dets, counts: expected writeable arrays")
    if device:
        from . import _cuda

        return Detections(
            *_cuda.detect_postprocess(
                dets,
                counts,
                head,
                lid,
                anchors,
                conf,
                iou,
                max_det,
                max_candidates,
                mask,
                bool(agnostic),
                params,
                sizes,
                stream,
            )
        )
    if dets is None:
        dets = np.empty((n, max_det, 6), np.float32)
        counts = np.empty(n, np.int32)
    if _tiers._cpu_tier == NATIVE_CPU:
        _native.detect_postprocess_into(
            dets,
            counts,
            head,
            lid,
            conf,
            iou,
            max_det,
            max_candidates,
            mask,
            bool(agnostic),
            params,
            sizes,
            num_threads,
        )
        return Detections(dets, counts)
    nb = _numba()
    nb_mask = mask if mask is not None else np.zeros(0, np.uint8)
    dets[...] = 0
    for i in range(n):
        # end-to-end heads: the first max_det rows above conf, then the class filter (ultralytics' order)
        limit = max_det if lid == 2 else max_candidates
        scores, _, class_ids, boxes = nb.collect(head[i], lid, conf, limit, nb_mask)
        chosen = np.arange(len(scores)) if lid == 2 else nb.greedy_nms(boxes, class_ids, iou, max_det, bool(agnostic))
        k = len(chosen)
        if params is not None:
            nb.map_boxes(boxes[chosen], params[i], int(sizes[i, 0]), int(sizes[i, 1]), dets[i, :k])
        else:
            dets[i, :k, :4] = boxes[chosen]
        dets[i, :k, 4] = scores[chosen]
        dets[i, :k, 5] = class_ids[chosen]
        counts[i] = k
    return Detections(dets, counts)
