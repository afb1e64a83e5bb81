"""The detection pipeline's stages around the model: letterbox before it, box decoding after it.

Each stage is a thin, device-agnostic call into :mod:`peregrine.kernels`: NumPy arrays run on the native
CPU kernels, CuPy arrays on the CUDA kernels (on ``stream``).

- :class:`Letterbox`: frames of any size (uint8 [H, W, 3]) into rows of the model's input tensor
  (resize keeping the aspect ratio, by default exactly as ``cv2.resize`` does on uint8; pad, channel
  order, scale to float, NCHW), and the parameters that map boxes back. An RT-DETR head's frames are
  stretched to the input size instead, as ultralytics' RTDETRPredictor does.
- :class:`BoxDecoder`: the model's head into boxes in each frame's own pixels (decode the layout,
  threshold, class-aware NMS, map back), per run of requests that share post-processing options, and a
  pose head's keypoints with them. An RT-DETR head is first made into end-to-end rows in frame pixels
  (:func:`rtdetr_rows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ... import kernels
from ..config.model import DetectionConfig
from ..core.types import FrameRequest
from .head import RTDETR, HeadInfo
from .masks import box_masks, outline


class Letterbox:
    """Frames into the model's input rows; returns the per-frame parameters that map boxes back."""

    def __init__(self, cfg: DetectionConfig, stretch: bool = False) -> None:
        self.swap_rb = cfg.frame_channel_order != cfg.model_channel_order
        self.scale = cfg.scale
        self.pad_value = cfg.pad_value
        self.resize = cfg.resize
        self.stretch = stretch  # to the input size, not keeping the aspect ratio (no padding)

    def __call__(self, out: Any, frames: Sequence[Any], stream: Any = None) -> Any:
        if self.stretch:
            return kernels.resize_into(out, frames, swap_rb=self.swap_rb, scale=self.scale, resize=self.resize,
                                       stream=stream)
        return kernels.letterbox_into(out, frames, swap_rb=self.swap_rb, scale=self.scale, pad_value=self.pad_value,
                                      resize=self.resize, stream=stream)


def rtdetr_rows(head: Any, sizes: Any, xp: Any, ranked: bool = False) -> Any:
    """An RT-DETR head [n, K, 4+C] (boxes as fractions of the input: centre x, centre y, width, height;
    class scores) as end-to-end rows [n, K, 6] (x1, y1, x2, y2 in the frames' own pixels, best score, its
    class), in the queries' order: ultralytics' RTDETRPredictor.postprocess, float32 step for step (corners
    from the centre and half the size, then times the frame's width and height; the boxes of a stretched
    frame need no other mapping, and are not clipped to it). ``ranked``: a head [n, K, 6] of its decoder's
    ranked rows (box as fractions, score, class index), whose score and class are taken as they are."""
    n, k, _ = head.shape
    rows = xp.empty((n, k, 6), np.float32)
    half = head[..., 2:4] / np.float32(2)
    rows[..., 0:2] = head[..., 0:2] - half
    rows[..., 2:4] = head[..., 0:2] + half
    wh = xp.asarray(sizes[:, ::-1].astype(np.float32))  # (width, height) per frame
    rows[..., 0:4] *= xp.tile(wh, 2)[:, None, :]
    if ranked:
        rows[..., 4:6] = head[..., 4:6]
        return rows
    scores = head[..., 4:]
    rows[..., 5] = xp.argmax(scores, axis=-1)
    rows[..., 4] = xp.max(scores, axis=-1)
    return rows


class Decoded(NamedTuple):
    """A batch's detections as :class:`BoxDecoder` answers them, rows in request order."""

    dets: Any  #: float32 [n, max_det, 6] (x1, y1, x2, y2, score, class id) in frame pixels, on the head's device
    counts: Any  #: int32 [n]
    keypoints: np.ndarray | None = None  #: a pose head's: float32 [n, max_det, K, D] in frame pixels, on the host
    #: a segmentation head's: per frame, per box in order, its mask's polygon float32 [P, 2] in frame pixels
    polygons: list[list[np.ndarray]] | None = None


class BoxDecoder:
    """The head's output into packed detections (:class:`Decoded`)."""

    def __init__(self, head: HeadInfo, cfg: DetectionConfig) -> None:
        self.rtdetr = head.layout == RTDETR  # decoded as end-to-end rows already in frame pixels
        self.ranked = head.ranked
        self.layout = "end2end" if self.rtdetr else head.layout
        self.extra = head.extra  # cut off each batch's head: [N, 4+C+extra, A] by rows, else [N, K, cols+extra]
        self.keypoints = head.keypoints if head.task == "pose" else (0, 0)
        self._rows_first = kernels.LAYOUTS[self.layout] == 0
        self.max_detections = cfg.max_detections
        self.max_candidates = cfg.max_candidates
        self.input_size = (head.height, head.width)

    def __call__(self, head: Any, params: Any, sizes: Any, requests: Sequence[FrameRequest],
                 stream: Any = None, protos: Any = None) -> Decoded:
        """``protos``: a segmentation export's prototype masks [n, M, h, w], for answering only the boxes
        that have a mask (:mod:`.masks`). Those heads and pose heads, whose kept boxes' values after their
        detection columns are read, are decoded on the host (dets and counts come back as NumPy arrays)."""
        xp: Any = np
        per_box = protos is not None or self.keypoints[0] > 0  # a kept box's extra values are read
        if per_box and not isinstance(head, np.ndarray):
            head = head.get()  # a box at a time on the host: see masks.py
            protos = None if protos is None else protos.get()
        if not isinstance(head, np.ndarray):
            import cupy

            xp = cupy
        values = None
        if self.extra:  # a segmentation or pose head: the detection columns alone, as the kernels read them
            if per_box:  # and a box's mask coefficients or keypoints, after its columns
                values = head[:, head.shape[1] - self.extra :] if self._rows_first else head[..., -self.extra :]
            cut = head[:, : head.shape[1] - self.extra] if self._rows_first else head[..., : -self.extra]
            head = xp.ascontiguousarray(cut)
        if self.rtdetr:
            head = rtdetr_rows(head, np.asarray(sizes), xp, self.ranked)
        n = len(sizes)
        dets = xp.zeros((n, self.max_detections, 6), np.float32)
        counts = xp.zeros((n,), np.int32)
        points = np.zeros((n, self.max_detections, *self.keypoints), np.float32) if self.keypoints[0] else None
        polygons: list[list[np.ndarray]] | None = [[] for _ in range(n)] if protos is not None else None
        row = 0
        i = 0
        while i < len(requests):  # one kernel call per run of consecutive requests that share options
            opts = requests[i].options
            assert opts is not None
            j, k = i, 0
            while j < len(requests) and requests[j].options == opts:
                k += len(requests[j].frames)
                j += 1
            rows = head[row : row + k]
            if self.rtdetr and opts.classes:
                # RTDETRPredictor filters classes with the score, before the first max_detections are taken
                # (end-to-end heads after it): the other classes' rows drop under any threshold first
                rows = rows.copy()
                rows[..., 4] = xp.where(xp.isin(rows[..., 5], xp.asarray(opts.classes, np.float32)), rows[..., 4], -1)
            if values is not None:  # on the host (above): written in place
                part = slice(row, row + k)
                outlines: list[list[np.ndarray]] | None = None if polygons is None else [[] for _ in range(k)]
                self._per_box(rows, values[part], None if protos is None else protos[part], params[part], sizes[part],
                              opts, dets[part, : opts.max_detections], counts[part],
                              None if points is None else points[part, : opts.max_detections], outlines)
                if polygons is not None and outlines is not None:
                    polygons[part] = outlines
            else:
                out = kernels.detect_postprocess(
                    rows, self.layout, conf=opts.score_threshold, iou=opts.iou_threshold,
                    max_det=opts.max_detections, classes=list(opts.classes) or None, agnostic=opts.agnostic,
                    params=None if self.rtdetr else params[row : row + k],
                    orig_sizes=None if self.rtdetr else sizes[row : row + k],
                    max_candidates=self.max_candidates, stream=stream,
                )
                dets[row : row + k, : opts.max_detections] = out.dets
                counts[row : row + k] = out.counts
            row += k
            i = j
        return Decoded(dets, counts, points, polygons)

    def _per_box(self, head: np.ndarray, values: np.ndarray, protos: np.ndarray | None, params: Any, sizes: Any,
                 opts: Any, dets: np.ndarray, counts: np.ndarray, points: np.ndarray | None,
                 polygons: list[list[np.ndarray]] | None) -> None:
        """A segmentation or pose head's detections as ultralytics' predictors answer them, into ``dets``
        [n, max_det, 6], ``counts`` [n] and, for a pose head, ``points`` [n, max_det, K, D] (zeros): decoded
        and suppressed as any head's (the same kernels, unfused, to know each kept box's anchor), each kept
        box's values after its columns gathered by its anchor; then, for a segmentation head, only the boxes
        whose mask is not empty (masks.py), and into ``polygons`` (a list a frame, filled) each one's mask as
        its polygon; for a pose head, those values are the box's keypoints. Then mapped back to the frames,
        the keypoints' and polygons' x and y as the boxes' corners are (ultralytics' ``scale_coords``: the
        letterbox's padding off, divided by its gain, clipped)."""
        n = len(head)
        end_to_end = kernels.LAYOUTS[self.layout] == 2
        c = kernels.decode(head, self.layout, conf=opts.score_threshold, classes=list(opts.classes) or None,
                           max_candidates=opts.max_detections if end_to_end else self.max_candidates)
        if end_to_end:  # the first max_det rows above the threshold, in the head's order
            order = np.broadcast_to(np.arange(c.scores.shape[1], dtype=np.int32), c.scores.shape)
            kept = c.counts
        else:
            order, kept = kernels.nms(c.boxes, c.scores, c.class_ids, c.counts, iou=opts.iou_threshold,
                                      max_det=opts.max_detections, agnostic=opts.agnostic)
        # All frames' kept candidates at once, up to the most any frame kept (rows past a frame's count point at
        # candidate 0, then are cut).
        width = int(kept.max(initial=0))
        order = order[:, :width]
        real = np.arange(width)[None, :] < kept[:, None]
        at = np.where(real, order, 0)
        frame = np.arange(n)[:, None]
        anchors = np.where(real, c.anchor_ids[frame, at], 0)  # [n, width]
        boxes, scores, classes = c.boxes[frame, at], c.scores[frame, at], c.class_ids[frame, at]
        # [n, width, extra]: a box's values after its columns (rows of a yolov8 head, a row's tail otherwise)
        box_values = values[frame, :, anchors] if self._rows_first else values[frame, anchors]
        if protos is not None:  # a box at a time on the host: see masks.py
            height, width_px = self.input_size
            for i in range(n):
                masks = box_masks(protos[i], box_values[i, : kept[i]], boxes[i, : kept[i]], height, width_px)
                with_mask = [(j, m) for j, m in enumerate(masks) if m is not None and m[0].any()]
                keep = [j for j, _ in with_mask]
                if polygons is not None:  # each kept mask's outline in model pixels, then in the frame's
                    polygons[i] = [_map_points(outline(*mask)[None].astype(np.float32), params[i : i + 1],
                                               sizes[i : i + 1])[0] for _, mask in with_mask]
                real[i] = False
                real[i, : len(keep)] = True
                for a in (boxes, scores, classes):
                    a[i, : len(keep)] = a[i, keep]
            kept = real.sum(axis=1)
        counts[:] = kept
        most = int(kept.max(initial=0))
        if not most:
            return
        real = real[:, :most, None]
        dets[:, :most, :4] = np.where(real, boxes[:, :most], 0)
        dets[:, :most, 4] = np.where(real[..., 0], scores[:, :most], 0)
        dets[:, :most, 5] = np.where(real[..., 0], classes[:, :most], 0)
        # One mapping call for all frames' boxes (and keypoints as zero-size boxes), up to the most any has.
        dets[:, :most, :4] = kernels.map_boxes(np.ascontiguousarray(dets[:, :most, :4]), params, sizes)
        if points is not None:
            kp = np.where(real, box_values[:, :most], 0).reshape(n, most, *self.keypoints).astype(np.float32)
            kp[..., :2] = _map_points(kp[..., :2], params, sizes)
            points[:, :most] = kp


def _map_points(points: np.ndarray, params: Any, sizes: Any) -> np.ndarray:
    """Points float32 [n, ..., 2] (x, y in model pixels, per frame) in their frames' pixels, same shape: mapped
    as boxes' corners are (the same kernel, on zero-size boxes), as ultralytics' ``scale_coords`` maps
    keypoints and mask outlines."""
    corners = np.concatenate([points, points], axis=-1).reshape(len(points), -1, 4)
    return kernels.map_boxes(corners, params, sizes)[..., :2].reshape(points.shape)
