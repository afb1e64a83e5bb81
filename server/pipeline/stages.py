"""The detection pipeline's stages around the model: letterbox before it, box decoding after it.

Each stage is a thin, device-agnostic call into :mod:`peregrine.kernels`: NumPy arrays run on the native
CPU kernels, CuPy arrays on the CUDA kernels (on ``stream``).

- :class:`Letterbox`: frames of any size (uint8 [H, W, 3]) into rows of the model's input tensor
  (resize keeping the aspect ratio, by default exactly as ``cv2.resize`` does on uint8; pad, channel
  order, scale to float, NCHW), and the parameters that map boxes back. An RT-DETR head's frames are
  stretched to the input size instead, as ultralytics' RTDETRPredictor does.
- :class:`BoxDecoder`: the model's head into boxes in each frame's own pixels (decode the layout,
  threshold, class-aware NMS, map back), per run of requests that share post-processing options. An
  RT-DETR head is first made into end-to-end rows in frame pixels (:func:`rtdetr_rows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ... import kernels
from ..config.model import DetectionConfig
from ..core.types import FrameRequest
from .head import RTDETR, HeadInfo
from .masks import with_masks


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


class BoxDecoder:
    """The head's output into packed detections: (dets [n, max_det, 6], counts [n]) on the head's device,
    rows in request order."""

    def __init__(self, head: HeadInfo, cfg: DetectionConfig) -> None:
        self.rtdetr = head.layout == RTDETR  # decoded as end-to-end rows already in frame pixels
        self.ranked = head.ranked
        self.layout = "end2end" if self.rtdetr else head.layout
        self.extra = head.extra  # cut off each batch's head: [N, 4+C+extra, A] by rows, else [N, K, cols+extra]
        self._rows_first = kernels.LAYOUTS[self.layout] == 0
        self.max_detections = cfg.max_detections
        self.max_candidates = cfg.max_candidates
        self.input_size = (head.height, head.width)

    def __call__(self, head: Any, params: Any, sizes: Any, requests: Sequence[FrameRequest],
                 stream: Any = None, protos: Any = None) -> tuple[Any, Any]:
        """``protos``: a segmentation export's prototype masks [n, M, h, w], for answering only the boxes
        that have a mask (:mod:`.masks`); those heads are decoded on the host (dets and counts come back as
        NumPy arrays then)."""
        xp: Any = np
        if protos is not None and not isinstance(head, np.ndarray):
            head, protos = head.get(), protos.get()  # a box at a time on the host: see masks.py
        if not isinstance(head, np.ndarray):
            import cupy

            xp = cupy
        coefficients = None
        if self.extra:  # a segmentation or pose head: the detection columns alone, as the kernels read them
            if protos is not None:  # and a segmentation head's mask coefficients, a box's after its columns
                coefficients = head[:, head.shape[1] - self.extra :] if self._rows_first else head[..., -self.extra :]
            cut = head[:, : head.shape[1] - self.extra] if self._rows_first else head[..., : -self.extra]
            head = xp.ascontiguousarray(cut)
        if self.rtdetr:
            head = rtdetr_rows(head, np.asarray(sizes), xp, self.ranked)
        n = len(sizes)
        dets = xp.zeros((n, self.max_detections, 6), np.float32)
        counts = xp.zeros((n,), np.int32)
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
            if coefficients is not None:
                part = slice(row, row + k)
                out = self._masked(rows, coefficients[part], protos[part], params[part], sizes[part], opts)
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
        return dets, counts

    def _masked(self, head: np.ndarray, coefficients: np.ndarray, protos: np.ndarray, params: Any, sizes: Any,
                opts: Any) -> kernels.Detections:
        """A segmentation head's detections as ultralytics' SegmentationPredictor answers them: decoded and
        suppressed as any head's (the same kernels, unfused, to know each kept box's anchor), then only the
        boxes whose mask is not empty (masks.py), mapped back to the frames."""
        end_to_end = kernels.LAYOUTS[self.layout] == 2
        c = kernels.decode(head, self.layout, conf=opts.score_threshold, classes=list(opts.classes) or None,
                           max_candidates=opts.max_detections if end_to_end else self.max_candidates)
        if not end_to_end:
            keep, kept = kernels.nms(c.boxes, c.scores, c.class_ids, c.counts, iou=opts.iou_threshold,
                                     max_det=opts.max_detections, agnostic=opts.agnostic)
        n = len(head)
        dets = np.zeros((n, opts.max_detections, 6), np.float32)
        counts = np.zeros(n, np.int32)
        height, width = self.input_size
        for i in range(n):
            at = np.arange(c.counts[i]) if end_to_end else keep[i, : kept[i]]
            anchors = c.anchor_ids[i, at]
            coeffs = coefficients[i][:, anchors].T if self._rows_first else coefficients[i][anchors]
            boxes = c.boxes[i, at]
            has = with_masks(protos[i], coeffs, boxes, height, width)
            m = int(has.sum())
            if m:
                dets[i, :m, :4] = kernels.map_boxes(np.ascontiguousarray(boxes[has][None]), params[i : i + 1],
                                                    sizes[i : i + 1])[0]
                dets[i, :m, 4] = c.scores[i, at][has]
                dets[i, :m, 5] = c.class_ids[i, at][has]
            counts[i] = m
        return kernels.Detections(dets, counts)
