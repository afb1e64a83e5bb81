"""The numba tier: the same kernels as the native module, written with ``numba.njit(nogil=True, cache=True)``.

It is the fallback when ``peregrine.kernels._native`` cannot be imported and the reference the native
kernels are compared with. Functions here take validated arguments (the family modules ``_preprocess``,
``_postprocess`` and ``_classify`` check them) and work on one image at a time; those modules loop over the batch.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def _axis(src_len, resized_len, offset, out_len):
    """OpenCV INTER_LINEAR tables for the output positions [begin, end) covered by the resized frame."""
    begin = max(0, offset)
    end = min(out_len, offset + resized_len)
    n = max(0, end - begin)
    i0 = np.empty(n, np.int64)
    i1 = np.empty(n, np.int64)
    weight = np.empty(n, np.float32)
    scale = 1.0 / (resized_len / src_len)
    for k in range(n):
        dst = begin + k - offset
        f = np.float32((dst + 0.5) * scale - 0.5)
        s = int(np.floor(f))
        weight[k] = f - np.float32(s)
        i0[k] = min(max(s, 0), src_len - 1)
        i1[k] = min(max(s + 1, 0), src_len - 1)
    return begin, end, i0, i1, weight


@njit(nogil=True, cache=True)
def resize_frame(src, resized_w, resized_h, left, top, src_channel, mul, add, pad, out):
    """One uint8 [h, w, 3] frame into float32 out [3, H, W] (see ``_native.resize_nchw``)."""
    height, width = out.shape[1], out.shape[2]
    xb, xe, x0, x1, wx = _axis(src.shape[1], resized_w, left, width)
    yb, ye, y0, y1, wy = _axis(src.shape[0], resized_h, top, height)
    for c in range(3):
        out[c, :, :] = pad[c]
    if xe <= xb or ye <= yb:
        return
    row = np.empty((xe - xb, 2, 3), np.float32)
    for oy in range(yb, ye):
        k = oy - yb
        r0 = y0[k]
        r1 = y1[k]
        w = wy[k]
        for j in range(xe - xb):
            for t in range(2):
                col = x0[j] if t == 0 else x1[j]
                for ch in range(3):
                    a = np.float32(src[r0, col, ch])
                    b = np.float32(src[r1, col, ch])
                    row[j, t, ch] = a + w * (b - a)
        for c in range(3):
            ch = src_channel[c]
            m = mul[c]
            ad = add[c]
            for j in range(xe - xb):
                a = row[j, 0, ch]
                b = row[j, 1, ch]
                out[c, oy, xb + j] = (a + wx[j] * (b - a)) * m + ad


# ------------------------------------------------------------------------------------------------------
# Detection post-processing (one image at a time). Arithmetic stays in float32, in the same order as the
# C++ kernels, so that kept indices agree exactly.
# ------------------------------------------------------------------------------------------------------

_HALF = np.float32(0.5)
_ZERO = np.float32(0.0)


@njit(nogil=True, cache=True)
def _allowed(mask, cls):
    return mask.shape[0] == 0 or (0 <= cls < mask.shape[0] and mask[cls] != 0)


@njit(nogil=True, cache=True, error_model="numpy")
def collect(head, layout, conf, max_candidates, mask):
    """Candidates of one image: (scores f32, anchors i64, classes i64, boxes f32 [n, 4]) sorted by score
    desc then anchor asc, at most max_candidates. ``mask`` of length 0 means every class is allowed."""
    conf = np.float32(conf)
    if layout == 0:
        anchors = head.shape[1]
        classes = head.shape[0] - 4
    elif layout == 1:
        anchors = head.shape[0]
        classes = head.shape[1] - 5
    else:
        anchors = head.shape[0]
        classes = 0
    scores = np.empty(anchors, np.float32)
    found = np.empty(anchors, np.int64)
    cls_of = np.empty(anchors, np.int64)
    n = 0
    for a in range(anchors):
        if layout == 0:
            best = head[4, a]
            cls = 0
            for c in range(1, classes):
                if head[4 + c, a] > best:
                    best = head[4 + c, a]
                    cls = c
            score = best
        elif layout == 1:
            obj = head[a, 4]
            if not obj > conf:
                continue
            best = head[a, 5]
            cls = 0
            for c in range(1, classes):
                if head[a, 5 + c] > best:
                    best = head[a, 5 + c]
                    cls = c
            score = obj * best
        else:
            score = head[a, 4]
            if not score > conf:
                continue
            v = head[a, 5]
            cls = int(np.rint(v)) if (v >= -1e9 and v <= 1e9) else -1
        if score > conf and _allowed(mask, cls):
            scores[n] = score
            found[n] = a
            cls_of[n] = cls
            n += 1
    order = np.argsort(-scores[:n], kind="mergesort")[:max_candidates]
    m = order.shape[0]
    out_scores = np.empty(m, np.float32)
    out_anchors = np.empty(m, np.int64)
    out_classes = np.empty(m, np.int64)
    boxes = np.empty((m, 4), np.float32)
    two = np.float32(2.0)
    cx = cy = w = h = np.float32(0.0)
    for i in range(m):
        j = order[i]
        a = found[j]
        out_scores[i] = scores[j]
        out_anchors[i] = a
        out_classes[i] = cls_of[j]
        if layout == 0:
            cx, cy, w, h = head[0, a], head[1, a], head[2, a], head[3, a]
        elif layout == 1:
            cx, cy, w, h = head[a, 0], head[a, 1], head[a, 2], head[a, 3]
        if layout == 2:
            for t in range(4):
                boxes[i, t] = head[a, t]
        else:
            boxes[i, 0] = cx - w / two
            boxes[i, 1] = cy - h / two
            boxes[i, 2] = cx + w / two
            boxes[i, 3] = cy + h / two
    return out_scores, out_anchors, out_classes, boxes


@njit(nogil=True, cache=True, error_model="numpy")
def greedy_nms(boxes, classes, iou, max_det, agnostic):
    """Positions kept by greedy NMS over boxes [n, 4] already in rank order."""
    n = boxes.shape[0]
    thr = np.float32(iou)
    kept = np.empty(min(n, max_det), np.int64)
    area = np.empty(n, np.float32)
    for i in range(n):
        area[i] = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
    nk = 0
    for i in range(n):
        if nk >= max_det:
            break
        hit = False
        for t in range(nk):
            k = kept[t]
            if not agnostic and classes[k] != classes[i]:
                continue
            xx1 = max(boxes[i, 0], boxes[k, 0])
            yy1 = max(boxes[i, 1], boxes[k, 1])
            xx2 = min(boxes[i, 2], boxes[k, 2])
            yy2 = min(boxes[i, 3], boxes[k, 3])
            w = xx2 - xx1
            h = yy2 - yy1
            w = w if w > _ZERO else _ZERO
            h = h if h > _ZERO else _ZERO
            inter = w * h
            if inter / ((area[i] + area[k]) - inter) > thr:
                hit = True
                break
        if not hit:
            kept[nk] = i
            nk += 1
    return kept[:nk]


@njit(nogil=True, cache=True, error_model="numpy")
def rank(scores, count):
    """Indices of the first ``count`` scores by score desc then index asc, NaN scores left out."""
    valid = np.empty(count, np.int64)
    n = 0
    for i in range(count):
        if scores[i] == scores[i]:
            valid[n] = i
            n += 1
    valid = valid[:n]
    return valid[np.argsort(-scores[valid], kind="mergesort")]


@njit(nogil=True, cache=True, error_model="numpy")
def map_boxes(boxes, params, height, width, out):
    """Rows of boxes [k, >= 4] from model to original pixels into out (may alias boxes)."""
    sx, sy, px, py = params[0], params[1], params[2], params[3]
    h = np.float32(height)
    w = np.float32(width)
    for i in range(boxes.shape[0]):
        for t in range(4):
            if t % 2 == 0:
                v = (boxes[i, t] - px) / sx
                hi = w
            else:
                v = (boxes[i, t] - py) / sy
                hi = h
            out[i, t] = min(max(v, _ZERO), hi)


@njit(nogil=True, cache=True, error_model="numpy")
def softmax(logits, out):
    for r in range(logits.shape[0]):
        m = logits[r, 0]
        for i in range(1, logits.shape[1]):
            m = max(m, logits[r, i])
        total = np.float32(0.0)
        for i in range(logits.shape[1]):
            out[r, i] = np.exp(logits[r, i] - m)
            total += out[r, i]
        inv = np.float32(1.0) / total
        for i in range(logits.shape[1]):
            out[r, i] *= inv


@njit(nogil=True, cache=True)
def topk(values, k, out_values, out_indices):
    for r in range(values.shape[0]):
        row = values[r]
        key = np.where(np.isnan(row), -np.inf, row)
        order = np.argsort(-key, kind="mergesort")
        # NaN after -inf: stable partition of the sorted order
        n = 0
        for j in range(order.shape[0]):
            if n < k and not np.isnan(row[order[j]]):
                out_indices[r, n] = order[j]
                n += 1
        for j in range(order.shape[0]):
            if n < k and np.isnan(row[order[j]]):
                out_indices[r, n] = order[j]
                n += 1
        for j in range(k):
            out_values[r, j] = row[out_indices[r, j]]
