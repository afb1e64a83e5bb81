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
# cv2.resize on the uint8 frame, byte for byte (resize="linear" / "area"): the same arithmetic as
# src/shared/opencv_resize.hpp, which says what OpenCV does and why.
# ------------------------------------------------------------------------------------------------------

_KIND_COPY, _KIND_LINEAR, _KIND_LINEAR_AREA, _KIND_BOX_2X2, _KIND_BOX, _KIND_AREA = 0, 1, 2, 3, 4, 5
_DBL_EPSILON = 2.220446049250313e-16
_COEF_ONE = np.float32(2048.0)


@njit(nogil=True, cache=True)
def _exact_kind(w, h, rw, rh, area):
    """(kind, box_x, box_y): which algorithm cv2.resize runs for this size change."""
    if w == rw and h == rh:
        return _KIND_COPY, 1, 1
    scale_x = 1.0 / (rw / w)
    scale_y = 1.0 / (rh / h)
    ix = np.rint(scale_x)
    iy = np.rint(scale_y)
    integer = abs(scale_x - ix) < _DBL_EPSILON and abs(scale_y - iy) < _DBL_EPSILON
    if integer and ix == 2 and iy == 2:
        return _KIND_BOX_2X2, 2, 2
    if not area:
        return _KIND_LINEAR, 1, 1
    if scale_x >= 1 and scale_y >= 1:
        if integer:
            return _KIND_BOX, int(ix), int(iy)
        return _KIND_AREA, 1, 1
    return _KIND_LINEAR_AREA, 1, 1


@njit(nogil=True, cache=True)
def _linear_tap(d, src_len, dst_len, area_coords, clamp):
    """(first source index, weight of it, weight of the next) in 11-bit fixed point."""
    inv_scale = dst_len / src_len
    scale = 1.0 / inv_scale
    if not area_coords:
        f = np.float32((d + 0.5) * scale - 0.5)
        s = int(np.floor(f))
        f = np.float32(f - np.float32(s))
    else:
        s = int(np.floor(d * scale))
        f = np.float32((d + 1) - (s + 1) * inv_scale)
        f = np.float32(0.0) if f <= 0 else np.float32(f - np.float32(np.floor(f)))
    if clamp:
        if s < 0:
            f = np.float32(0.0)
            s = 0
        if s >= src_len - 1:
            f = np.float32(0.0)
            s = src_len - 1
    w0 = int(np.rint(np.float32(np.float32(1.0) - f) * _COEF_ONE))
    w1 = int(np.rint(np.float32(f * _COEF_ONE)))
    return s, w0, w1


@njit(nogil=True, cache=True)
def _area_taps(d, src_len, dst_len):
    """(first source index, count, weights float32 [count]) of output coordinate d's cell."""
    scale = 1.0 / (dst_len / src_len)
    fsx1 = d * scale
    fsx2 = fsx1 + scale
    cell = min(scale, src_len - fsx1)
    sx1 = int(np.ceil(fsx1))
    sx2 = int(np.floor(fsx2))
    sx2 = min(sx2, src_len - 1)
    sx1 = min(sx1, sx2)
    first_partial = sx1 - fsx1 > 1e-3
    last_partial = fsx2 - sx2 > 1e-3
    count = (sx2 - sx1) + (1 if first_partial else 0) + (1 if last_partial else 0)
    weights = np.empty(count, np.float32)
    k = 0
    if first_partial:
        weights[k] = np.float32((sx1 - fsx1) / cell)
        k += 1
    for _ in range(sx1, sx2):
        weights[k] = np.float32(1.0 / cell)
        k += 1
    if last_partial:
        weights[k] = np.float32(min(min(fsx2 - sx2, 1.0), cell) / cell)
    return (sx1 - 1 if first_partial else sx1), count, weights


@njit(nogil=True, cache=True)
def _saturate_u8(v):
    r = np.rint(v)
    return 0 if r < 0 else (255 if r > 255 else int(r))


@njit(nogil=True, cache=True)
def _horizontal(src, row, x_src, x_w0, x_w1, width, dst):
    for j in range(x_src.shape[0]):
        s0 = x_src[j]
        s1 = min(s0 + 1, width - 1)
        for ch in range(3):
            dst[ch, j] = np.int64(src[row, s0, ch]) * x_w0[j] + np.int64(src[row, s1, ch]) * x_w1[j]


@njit(nogil=True, cache=True)
def resize_frame_exact(src, area, resized_w, resized_h, left, top, src_channel, lut, pad, out):
    """One uint8 [h, w, 3] frame into float32 out [3, H, W]: cv2.resize(INTER_LINEAR, or INTER_AREA when
    ``area``) to resized_w x resized_h, then placed and channel-ordered as ``resize_frame``; each uint8 value v
    of output channel c becomes lut[c, v] (float32 [3, 256])."""
    height, width = out.shape[1], out.shape[2]
    h, w = src.shape[0], src.shape[1]
    for c in range(3):
        out[c, :, :] = pad[c]
    xb, xe = max(0, left), min(width, left + resized_w)
    yb, ye = max(0, top), min(height, top + resized_h)
    if xe <= xb or ye <= yb:
        return
    cols = xe - xb
    kind, box_x, box_y = _exact_kind(w, h, resized_w, resized_h, area)
    values = np.empty((3, cols), np.int64)
    linear = kind in (_KIND_LINEAR, _KIND_LINEAR_AREA)
    n_x = cols if linear else 0
    x_src = np.empty(n_x, np.int64)
    x_w0 = np.empty(n_x, np.int64)
    x_w1 = np.empty(n_x, np.int64)
    for j in range(n_x):
        x_src[j], x_w0[j], x_w1[j] = _linear_tap(xb + j - left, w, resized_w, kind == _KIND_LINEAR_AREA, True)
    rows = np.empty((2, 3, n_x), np.int64)
    cached = np.array([-1, -1])
    n_area = cols if kind == _KIND_AREA else 0
    area_first = np.empty(n_area, np.int64)
    area_count = np.empty(n_area, np.int64)
    for j in range(n_area):
        area_first[j], area_count[j], _ = _area_taps(xb + j - left, w, resized_w)
    area_weights = np.empty((n_area, area_count.max() if n_area else 0), np.float32)
    for j in range(n_area):
        area_weights[j, : area_count[j]] = _area_taps(xb + j - left, w, resized_w)[2]
    inv_area = np.float32(1.0) / np.float32(box_x * box_y)
    for oy in range(yb, ye):
        dy = oy - top
        if kind == _KIND_COPY:
            for j in range(cols):
                for ch in range(3):
                    values[ch, j] = src[dy, xb + j - left, ch]
        elif linear:
            sy, b0, b1 = _linear_tap(dy, h, resized_h, kind == _KIND_LINEAR_AREA, False)
            r0 = min(max(sy, 0), h - 1)
            r1 = min(max(sy + 1, 0), h - 1)
            i0 = 0 if cached[0] == r0 else (1 if cached[1] == r0 else -1)
            i1 = 0 if cached[0] == r1 else (1 if cached[1] == r1 else -1)
            if i0 < 0:
                i0 = 1 if i1 == 0 else 0
                _horizontal(src, r0, x_src, x_w0, x_w1, w, rows[i0])
                cached[i0] = r0
            if i1 < 0:
                i1 = 1 - i0
                _horizontal(src, r1, x_src, x_w0, x_w1, w, rows[i1])
                cached[i1] = r1
            for ch in range(3):
                for j in range(cols):
                    values[ch, j] = (
                        ((b0 * (rows[i0, ch, j] >> 4)) >> 16) + ((b1 * (rows[i1, ch, j] >> 4)) >> 16) + 2
                    ) >> 2
        elif kind in (_KIND_BOX_2X2, _KIND_BOX):
            for j in range(cols):
                dx = xb + j - left
                for ch in range(3):
                    total = 0
                    for yy in range(dy * box_y, dy * box_y + box_y):
                        for xx in range(dx * box_x, dx * box_x + box_x):
                            total += np.int64(src[yy, xx, ch])
                    if kind == _KIND_BOX_2X2:
                        values[ch, j] = (total + 2) >> 2
                    else:
                        values[ch, j] = _saturate_u8(np.float32(total) * inv_area)
        else:
            y_first, y_count, y_weights = _area_taps(dy, h, resized_h)
            for j in range(cols):
                x_first = area_first[j]
                for ch in range(3):
                    acc = np.float32(0.0)
                    for t in range(y_count):
                        buf = np.float32(0.0)
                        for i in range(area_count[j]):
                            buf = buf + np.float32(src[y_first + t, x_first + i, ch]) * area_weights[j, i]
                        acc = acc + y_weights[t] * buf
                    values[ch, j] = _saturate_u8(acc)
        for c in range(3):
            ch = src_channel[c]
            for j in range(cols):
                out[c, oy, xb + j] = lut[c, values[ch, j]]


# ------------------------------------------------------------------------------------------------------
# Detection post-processing (one image at a time). Arithmetic stays in float32, in the same order as the
# C++ kernels, so that kept indices agree exactly.
# ------------------------------------------------------------------------------------------------------

_HALF = np.float32(0.5)
_ZERO = np.float32(0.0)
MAX_WH = np.float32(7680.0)  # ultralytics' max_wh: the class offset of its NMS (detect.cpp's class_offset)


@njit(nogil=True, cache=True)
def _allowed(mask, cls):
    return mask.shape[0] == 0 or (0 <= cls < mask.shape[0] and mask[cls] != 0)


@njit(nogil=True, cache=True)
def _end_to_end_class(v):
    return int(np.rint(v)) if (v >= -1e9 and v <= 1e9) else -1


@njit(nogil=True, cache=True, error_model="numpy")
def _collect_end_to_end(head, conf, limit, mask):
    """ultralytics' order for end-to-end rows: score > conf in the head's order, the first ``limit``, then
    the class filter (the class column equal to an allowed id)."""
    conf = np.float32(conf)
    k = head.shape[0]
    rows = np.empty(k, np.int64)
    n = 0
    for a in range(k):
        if n >= limit:
            break
        if head[a, 4] > conf:
            rows[n] = a
            n += 1
    m = 0
    for i in range(n):
        c = head[rows[i], 5]
        cls = _end_to_end_class(c)
        if mask.shape[0] == 0 or (np.float32(cls) == c and _allowed(mask, cls)):
            rows[m] = rows[i]
            m += 1
    out_scores = np.empty(m, np.float32)
    out_anchors = np.empty(m, np.int64)
    out_classes = np.empty(m, np.int64)
    boxes = np.empty((m, 4), np.float32)
    for i in range(m):
        a = rows[i]
        out_scores[i] = head[a, 4]
        out_anchors[i] = a
        out_classes[i] = _end_to_end_class(head[a, 5])
        for t in range(4):
            boxes[i, t] = head[a, t]
    return out_scores, out_anchors, out_classes, boxes


@njit(nogil=True, cache=True, error_model="numpy")
def collect(head, layout, conf, max_candidates, mask):
    """Candidates of one image: (scores f32, anchors i64, classes i64, boxes f32 [n, 4]) sorted by score
    desc then anchor asc, at most max_candidates. ``mask`` of length 0 means every class is allowed.
    End-to-end heads (layout 2): ``_collect_end_to_end`` with max_candidates as the limit."""
    if layout == 2:
        return _collect_end_to_end(head, conf, max_candidates, mask)
    conf = np.float32(conf)
    if layout == 0:
        anchors = head.shape[1]
        classes = head.shape[0] - 4
    else:
        anchors = head.shape[0]
        classes = head.shape[1] - 5
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
        else:
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
        else:
            cx, cy, w, h = head[a, 0], head[a, 1], head[a, 2], head[a, 3]
        boxes[i, 0] = cx - w / two
        boxes[i, 1] = cy - h / two
        boxes[i, 2] = cx + w / two
        boxes[i, 3] = cy + h / two
    return out_scores, out_anchors, out_classes, boxes


@njit(nogil=True, cache=True, error_model="numpy")
def greedy_nms(boxes, classes, iou, max_det, agnostic):
    """Positions kept by greedy NMS over boxes [n, 4] already in rank order, each box shifted by its class
    times ``MAX_WH`` first (none when ``agnostic``), in float32, as ultralytics' NMS shifts them."""
    n = boxes.shape[0]
    thr = np.float32(iou)
    kept = np.empty(min(n, max_det), np.int64)
    shifted = np.empty((n, 4), np.float32)
    area = np.empty(n, np.float32)
    for i in range(n):
        off = _ZERO if agnostic else np.float32(classes[i]) * MAX_WH
        for j in range(4):
            shifted[i, j] = boxes[i, j] + off
        area[i] = (shifted[i, 2] - shifted[i, 0]) * (shifted[i, 3] - shifted[i, 1])
    nk = 0
    for i in range(n):
        if nk >= max_det:
            break
        hit = False
        for t in range(nk):
            k = kept[t]
            if not agnostic and classes[k] != classes[i]:
                continue
            xx1 = max(shifted[i, 0], shifted[k, 0])
            yy1 = max(shifted[i, 1], shifted[k, 1])
            xx2 = min(shifted[i, 2], shifted[k, 2])
            yy2 = min(shifted[i, 3], shifted[k, 3])
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


# ------------------------------------------------------------------------------------------------------
# Raw camera frames to RGB/BGR (see src/cpu/convert.cpp for the arithmetic and whose it is).
# ------------------------------------------------------------------------------------------------------

_LAYOUT_PIXELS, _LAYOUT_UYVY, _LAYOUT_BAYER = 0, 1, 3  # 2: YUYV


@njit(nogil=True, cache=True)
def _yuv_channel(y, chroma):
    return min(max((y + chroma) >> 20, 0), 255)


@njit(nogil=True, cache=True)
def convert_raw(data, height, width, step, layout, channels, sample_bytes, big_endian, blue_first, red_x, red_y,
                bgr, out):
    """A raw frame (uint8 [bytes], rows of ``step`` bytes) into out, uint8 [height, width, 3] (see
    ``_native.convert_raw_into``)."""
    offset = 1 if sample_bytes == 2 and not big_endian else 0  # the most significant byte of 16-bit samples
    ir = 2 if bgr else 0
    ib = 2 - ir
    if layout == _LAYOUT_PIXELS:
        swap = channels > 1 and blue_first != bgr
        src = np.array([2, 1, 0]) if swap else (np.array([0, 1, 2]) if channels > 1 else np.array([0, 0, 0]))
        for y in range(height):
            row = y * step + offset
            for x in range(width):
                p = row + x * channels * sample_bytes
                for c in range(3):
                    out[y, x, c] = data[p + src[c] * sample_bytes]
    elif layout != _LAYOUT_BAYER:  # YUV 4:2:2
        uyvy = layout == _LAYOUT_UYVY
        for y in range(height):
            for k in range(width // 2):
                p = y * step + 4 * k
                if uyvy:
                    u, y0, v, y1 = int(data[p]), int(data[p + 1]), int(data[p + 2]), int(data[p + 3])
                else:
                    y0, u, y1, v = int(data[p]), int(data[p + 1]), int(data[p + 2]), int(data[p + 3])
                u -= 128
                v -= 128
                ruv = (1 << 19) + 1673527 * v
                guv = (1 << 19) - 852492 * v - 409993 * u
                buv = (1 << 19) + 2116026 * u
                for t in range(2):
                    luma = max(0, (y0 if t == 0 else y1) - 16) * 1220542
                    x = 2 * k + t
                    out[y, x, ir] = _yuv_channel(luma, ruv)
                    out[y, x, 1] = _yuv_channel(luma, guv)
                    out[y, x, ib] = _yuv_channel(luma, buv)
    else:
        if height < 3 or width < 3:  # OpenCV: no pixel has all its neighbours, the frame is black
            out[:, :, :] = 0
            return
        for y in range(1, height - 1):
            red_row = (y & 1) == red_y
            colour_x = red_x if red_row else 1 - red_x
            b = y * step + offset  # the row, the one above (b - step) and below (b + step)
            for x in range(1, width - 1):
                m, p, q = b + (x - 1) * sample_bytes, b + x * sample_bytes, b + (x + 1) * sample_bytes
                if (x & 1) == colour_x:
                    own = int(data[p])
                    near = (int(data[p - step]) + int(data[p + step]) + int(data[m]) + int(data[q]) + 2) >> 2
                    far = (int(data[m - step]) + int(data[q - step]) + int(data[m + step]) + int(data[q + step])
                           + 2) >> 2
                    out[y, x, ir] = own if red_row else far
                    out[y, x, 1] = near
                    out[y, x, ib] = far if red_row else own
                else:
                    across = (int(data[m]) + int(data[q]) + 1) >> 1
                    down = (int(data[p - step]) + int(data[p + step]) + 1) >> 1
                    out[y, x, ir] = across if red_row else down
                    out[y, x, 1] = data[p]
                    out[y, x, ib] = down if red_row else across
            out[y, 0, :] = out[y, 1, :]
            out[y, width - 1, :] = out[y, width - 2, :]
        out[0, :, :] = out[1, :, :]
        out[height - 1, :, :] = out[height - 2, :, :]
