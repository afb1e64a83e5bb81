"""Which boxes of a segmentation export have a mask: ultralytics' SegmentationPredictor answers only those.

An ultralytics segmentation export gives, beside each box, mask coefficients, and a second output of
prototype masks [N, M, H/4, W/4]. Its predictor makes each kept box's mask (``process_mask``): the
coefficients times the prototypes, upsampled bilinearly to the input size (``align_corners=False``), above 0,
zeroed outside the box (pixel columns x1 <= c < x2, rows likewise, in model pixels); and it drops the boxes
whose mask is then empty. The pipeline serves boxes, not masks, but answers the same boxes: for each box it
computes its mask's logits inside the box only and keeps the box when one is above 0.

On the host, a box at a time (a box's region is at most the input's size).
"""

from __future__ import annotations

import math

import numpy as np


def _taps(first: int, stop: int, size_in: int, size_out: int) -> tuple[np.ndarray, ...]:
    """Bilinear taps (align_corners=False, as torch computes them in float32) of output pixels
    first..stop-1 over an input axis of ``size_in``: (lower index, upper index, lower weight, upper weight)."""
    scale = np.float32(size_in) / np.float32(size_out)
    src = (np.arange(first, stop, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    low = np.floor(src).astype(np.int64)
    high = np.minimum(low + 1, size_in - 1)
    upper = (src - low.astype(np.float32)).astype(np.float32)
    lower = (np.float32(1) - upper).astype(np.float32)
    return low, high, lower, upper


def with_masks(protos: np.ndarray, coefficients: np.ndarray, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """bool [k]: whether each of k boxes (float32 [k, 4] x1, y1, x2, y2 in model pixels) has a non-empty mask
    at the ``height`` x ``width`` input, from one image's ``protos`` [M, h, w] and the boxes' ``coefficients``
    [k, M]."""
    k = len(boxes)
    keep = np.zeros(k, bool)
    if k == 0:
        return keep
    m, mh, mw = protos.shape
    logits = (coefficients.astype(np.float32) @ protos.reshape(m, mh * mw).astype(np.float32)).reshape(k, mh, mw)
    for j in range(k):
        x1, y1, x2, y2 = (float(v) for v in boxes[j])
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            continue
        r0, r1 = max(math.ceil(y1), 0), min(math.ceil(y2), height)  # rows r with y1 <= r < y2
        c0, c1 = max(math.ceil(x1), 0), min(math.ceil(x2), width)
        if r1 <= r0 or c1 <= c0:
            continue
        h0, h1, hl0, hl1 = _taps(r0, r1, mh, height)
        w0, w1, wl0, wl1 = _taps(c0, c1, mw, width)
        field = logits[j]
        top, bottom = field[h0], field[h1]  # [rows, mw]
        region = (hl0[:, None] * (wl0[None, :] * top[:, w0] + wl1[None, :] * top[:, w1])
                  + hl1[:, None] * (wl0[None, :] * bottom[:, w0] + wl1[None, :] * bottom[:, w1]))
        keep[j] = bool((region > 0).any())
    return keep
