"""Which boxes of a segmentation export have a mask: ultralytics' SegmentationPredictor answers only those.

An ultralytics segmentation export gives, beside each box, mask coefficients, and a second output of
prototype masks [N, M, H/4, W/4]. Its predictor makes each kept box's mask (``process_mask``): the
coefficients times the prototypes, upsampled bilinearly to the input size (``align_corners=False``), above 0,
zeroed outside the box (pixel columns x1 <= c < x2, rows likewise, in model pixels); and it drops the boxes
whose mask is then empty. The pipeline answers the same boxes: for each box it computes its mask's logits
inside the box only and keeps the box when one is above 0; and each kept box's mask as the polygon
ultralytics' ``Results.masks.xy`` gives (:func:`outline`: the mask's outer contours, joined into one path).

On the host, a box at a time (a box's region is at most the input's size).
"""

from __future__ import annotations

import math

import cv2
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


def box_masks(protos: np.ndarray, coefficients: np.ndarray, boxes: np.ndarray, height: int,
              width: int) -> list[tuple[np.ndarray, int, int] | None]:
    """Each of k boxes' mask inside the box, from one image's ``protos`` [M, h, w] and the boxes'
    ``coefficients`` [k, M] at the ``height`` x ``width`` input: (bool [rows, cols] logits above 0, first row,
    first column) in model pixels, None for a box that covers no pixel. ``boxes``: float32 [k, 4] x1, y1, x2,
    y2 in model pixels."""
    k = len(boxes)
    if k == 0:
        return []
    m, mh, mw = protos.shape
    logits = (coefficients.astype(np.float32) @ protos.reshape(m, mh * mw).astype(np.float32)).reshape(k, mh, mw)
    out: list[tuple[np.ndarray, int, int] | None] = []
    for j in range(k):
        x1, y1, x2, y2 = (float(v) for v in boxes[j])
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            out.append(None)
            continue
        r0, r1 = max(math.ceil(y1), 0), min(math.ceil(y2), height)  # rows r with y1 <= r < y2
        c0, c1 = max(math.ceil(x1), 0), min(math.ceil(x2), width)
        if r1 <= r0 or c1 <= c0:
            out.append(None)
            continue
        h0, h1, hl0, hl1 = _taps(r0, r1, mh, height)
        w0, w1, wl0, wl1 = _taps(c0, c1, mw, width)
        field = logits[j]
        top, bottom = field[h0], field[h1]  # [rows, mw]
        region = (hl0[:, None] * (wl0[None, :] * top[:, w0] + wl1[None, :] * top[:, w1])
                  + hl1[:, None] * (wl0[None, :] * bottom[:, w0] + wl1[None, :] * bottom[:, w1]))
        out.append((region > 0, r0, c0))
    return out


def outline(mask: np.ndarray, row: int, column: int) -> np.ndarray:
    """A box's mask (bool [rows, cols] whose top-left pixel is (``column``, ``row``) of the input) as the
    polygon ultralytics' ``Results.masks.xy`` gives, in input pixels (int32 [P, 2] x, y): the mask's outer
    contours (``cv2.findContours``, RETR_EXTERNAL, CHAIN_APPROX_SIMPLE; the mask is zero outside the box, so
    its region with a border of zeros finds the same contours as the whole input does), several joined into
    one path by :func:`join`; [0, 2] for an empty mask."""
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    contours = cv2.findContours(padded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    if not contours:
        return np.zeros((0, 2), np.int32)
    points = join([c.reshape(-1, 2) for c in contours]) if len(contours) > 1 else contours[0].reshape(-1, 2)
    return (points + np.array([column - 1, row - 1], np.int32)).astype(np.int32)


def _nearest(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """Indices of the closest pair of points, one of ``a`` [p, 2] and one of ``b`` [q, 2] (the first in
    row-major order among equals)."""
    d = ((a[:, None, :].astype(np.int64) - b[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    return int(i), int(j)


def join(contours: list[np.ndarray]) -> np.ndarray:
    """Several closed contours [p_i, 2] as one path, as ultralytics joins a mask's contours into its polygon:
    each contour is tied to the next at their closest points; the path walks the first contour from its tie
    round to it again, each middle contour from its tie to the previous one round to its tie to the next (a
    contour walked backwards where that is the shorter way in its own order), the last one whole, then back
    through the middle contours' remaining points, last to first."""
    parts = list(contours)
    ties: list[list[int]] = [[] for _ in parts]
    for i in range(1, len(parts)):
        a, b = _nearest(parts[i - 1], parts[i])
        ties[i - 1].append(a)
        ties[i].append(b)
    last = len(parts) - 1
    path = []
    for i, tie in enumerate(ties):
        if len(tie) == 2 and tie[0] > tie[1]:
            tie = [len(parts[i]) - 1 - t for t in tie]
            parts[i] = parts[i][::-1]
        parts[i] = np.roll(parts[i], -tie[0], axis=0)
        parts[i] = np.concatenate([parts[i], parts[i][:1]])  # closed: back to its first point
        path.append(parts[i] if i in (0, last) else parts[i][: tie[1] - tie[0] + 1])
    for i in range(last - 1, 0, -1):
        path.append(parts[i][abs(ties[i][1] - ties[i][0]) :])
    return np.concatenate(path)
