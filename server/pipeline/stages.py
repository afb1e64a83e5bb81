"""The detection pipeline's stages around the model: letterbox before it, box decoding after it.

Each stage is a thin, device-agnostic call into :mod:`peregrine.kernels`: NumPy arrays run on the native
CPU kernels, CuPy arrays on the CUDA kernels (on ``stream``).

- :class:`Letterbox`: frames of any size (uint8 [H, W, 3]) into rows of the model's input tensor
  (resize keeping the aspect ratio, by default exactly as ``cv2.resize`` does on uint8; pad, channel
  order, scale to float, NCHW), and the parameters that map boxes back.
- :class:`BoxDecoder`: the model's head into boxes in each frame's own pixels (decode the layout,
  threshold, class-aware NMS, map back), per run of requests that share post-processing options.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ... import kernels
from ..config.model import DetectionConfig
from ..core.types import FrameRequest
from .head import HeadInfo


class Letterbox:
    """Frames into the model's input rows; returns the per-frame parameters that map boxes back."""

    def __init__(self, cfg: DetectionConfig) -> None:
        self.swap_rb = cfg.frame_channel_order != cfg.model_channel_order
        self.scale = cfg.scale
        self.pad_value = cfg.pad_value
        self.resize = cfg.resize

    def __call__(self, out: Any, frames: Sequence[Any], stream: Any = None) -> Any:
        return kernels.letterbox_into(out, frames, swap_rb=self.swap_rb, scale=self.scale, pad_value=self.pad_value,
                                      resize=self.resize, stream=stream)


class BoxDecoder:
    """The head's output into packed detections: (dets [n, max_det, 6], counts [n]) on the head's device,
    rows in request order."""

    def __init__(self, head: HeadInfo, cfg: DetectionConfig) -> None:
        self.layout = head.layout
        self.extra = head.extra  # cut off each batch's head: [N, 4+C+extra, A] by rows, else [N, K, cols+extra]
        self._rows_first = kernels.LAYOUTS[head.layout] == 0
        self.max_detections = cfg.max_detections
        self.max_candidates = cfg.max_candidates

    def __call__(self, head: Any, params: Any, sizes: Any, requests: Sequence[FrameRequest],
                 stream: Any = None) -> tuple[Any, Any]:
        xp: Any = np
        if not isinstance(head, np.ndarray):
            import cupy

            xp = cupy
        if self.extra:  # a segmentation or pose head: the detection columns alone, as the kernels read them
            cut = head[:, : head.shape[1] - self.extra] if self._rows_first else head[..., : -self.extra]
            head = xp.ascontiguousarray(cut)
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
            out = kernels.detect_postprocess(
                head[row : row + k], self.layout, conf=opts.score_threshold, iou=opts.iou_threshold,
                max_det=opts.max_detections, classes=list(opts.classes) or None, agnostic=opts.agnostic,
                params=params[row : row + k], orig_sizes=sizes[row : row + k],
                max_candidates=self.max_candidates, stream=stream,
            )
            dets[row : row + k, : opts.max_detections] = out.dets
            counts[row : row + k] = out.counts
            row += k
            i = j
        return dets, counts
