"""Plainly written NumPy references for the kernels (float64 unless a comparison needs float32 steps).

The resize family's default modes (resize="linear" / "area") are compared with cv2 itself, not with a
reference of ours; ``bilinear_resize`` and ``letterbox`` here describe resize="float" (the float blend).
"""

from __future__ import annotations

import numpy as np


def bilinear_resize(img: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    """resize="float": INTER_LINEAR's coordinates, blended without rounding to uint8: float64 [new_h, new_w, 3]."""
    h, w = img.shape[:2]

    def axis(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scale = 1.0 / (dst / src)
        pos = ((np.arange(dst) + 0.5) * scale - 0.5).astype(np.float32)
        base = np.floor(pos)
        frac = (pos - base).astype(np.float64)
        i0 = np.clip(base.astype(np.int64), 0, src - 1)
        i1 = np.clip(base.astype(np.int64) + 1, 0, src - 1)
        return i0, i1, frac

    x0, x1, fx = axis(w, new_w)
    y0, y1, fy = axis(h, new_h)
    src = img.astype(np.float64)
    top = src[y0][:, x0] * (1 - fx)[None, :, None] + src[y0][:, x1] * fx[None, :, None]
    bottom = src[y1][:, x0] * (1 - fx)[None, :, None] + src[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


def letterbox_geometry(h: int, w: int, height: int, width: int, scaleup: bool = True) -> tuple[int, ...]:
    """ultralytics LetterBox(auto=False, center=True): (new_w, new_h, left, top, right, bottom) and r."""
    r = min(height / h, width / w)
    if not scaleup:
        r = min(r, 1.0)
    new_w, new_h = max(1, round(w * r)), max(1, round(h * r))
    dw, dh = (width - new_w) / 2, (height - new_h) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    return new_w, new_h, left, top, right, bottom, r


def letterbox_params(shape: tuple[int, ...], new_w: int, new_h: int, left: int, top: int) -> list[float]:
    """The params a letterbox answers for a frame of ``shape`` (h, w, ...): ultralytics' scale_boxes maps boxes
    back by each side's own scale, the rounded new size over the old one, after taking off the pad."""
    return [new_w / shape[1], new_h / shape[0], left, top]


def place(resized: np.ndarray, left: int, top: int, height: int, width: int, pad: float) -> np.ndarray:
    """The resized frame pasted at (left, top) on a height x width canvas of pad (crop where negative)."""
    canvas = np.full((height, width, 3), pad, np.float64)
    rh, rw = resized.shape[:2]
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(height, top + rh), min(width, left + rw)
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] = resized[y0 - top : y1 - top, x0 - left : x1 - left]
    return canvas


def to_tensor(canvas: np.ndarray, swap_rb: bool, scale: float, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
    """HWC pixels -> CHW float64 after channel swap, scale and normalisation."""
    if swap_rb:
        canvas = canvas[..., ::-1]
    out = (canvas * scale - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)
    return out.transpose(2, 0, 1)


def letterbox(
    img: np.ndarray,
    height: int,
    width: int,
    pad: float = 114,
    swap_rb: bool = True,
    scale: float = 1 / 255,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
) -> np.ndarray:
    new_w, new_h, left, top, _, _, _ = letterbox_geometry(img.shape[0], img.shape[1], height, width)
    canvas = place(bilinear_resize(img, new_w, new_h), left, top, height, width, pad)
    return to_tensor(canvas, swap_rb, scale, mean, std)


# ---------------------------------------------------------------------------------------------------------
# Detection post-processing. Box and IoU arithmetic is float32, step by step, like the kernels.
# ---------------------------------------------------------------------------------------------------------


def end_to_end_rows(head: np.ndarray, conf: float, limit: int, classes=None) -> np.ndarray:
    """ultralytics' ``non_max_suppression`` for an end-to-end head [K, 6], written out: ``out =
    pred[pred[:, 4] > conf][:max_det]``, then only with ``classes`` ``out = out[isin(out[:, 5], classes)]``.
    The indices of the rows kept, in the head's own order (never re-sorted by score)."""
    idx = np.nonzero(head[:, 4] > np.float32(conf))[0][:limit]
    if classes is not None:
        idx = idx[np.isin(head[idx, 5], list(classes))]
    return idx


def decode_image(head: np.ndarray, layout: str, conf: float, max_candidates: int, classes=None):
    """One image: (boxes [k, 4] x1y1x2y2, scores [k], class ids [k], anchor ids [k]) by score desc, anchor asc;
    end-to-end heads: ``end_to_end_rows`` with max_candidates as the limit."""
    if layout == "end2end":
        idx = end_to_end_rows(head, conf, max_candidates, classes)
        cls = np.rint(head[idx, 5]).astype(np.int32)
        return head[idx, :4].astype(np.float32), head[idx, 4].astype(np.float32), cls, idx.astype(np.int32)
    if layout == "yolov8":
        rows = head.T  # [A, 4 + C]
        cls_scores = rows[:, 4:]
        scores = cls_scores.max(axis=1)
        cls = cls_scores.argmax(axis=1)
        keep = scores > np.float32(conf)
    elif layout == "yolov5":
        rows = head
        cls = rows[:, 5:].argmax(axis=1)
        scores = rows[:, 4] * rows[:, 5:].max(axis=1)
        keep = (rows[:, 4] > np.float32(conf)) & (scores > np.float32(conf))
    if classes is not None:
        keep &= np.isin(cls, list(classes))
    idx = np.nonzero(keep)[0]
    idx = idx[np.lexsort((idx, -scores[idx]))][:max_candidates]
    cx, cy, w, h = (rows[idx, j] for j in range(4))
    two = np.float32(2)
    boxes = np.stack([cx - w / two, cy - h / two, cx + w / two, cy + h / two], axis=1)
    return boxes, scores[idx].astype(np.float32), cls[idx].astype(np.int32), idx.astype(np.int32)


def nms_image(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, max_det: int, agnostic: bool = False
) -> list[int]:
    """Classic greedy NMS: indices kept, in the order they were kept. As ultralytics' (torchvision's nms on
    boxes shifted by class * 7680 unless agnostic), in float32."""
    n = len(scores)
    valid = np.nonzero(~np.isnan(scores))[0]
    order = valid[np.lexsort((valid, -scores[valid]))]
    shift = np.zeros(n, np.float32) if agnostic else classes.astype(np.float32) * np.float32(7680)
    x1, y1, x2, y2 = (boxes[:, j].astype(np.float32) + shift for j in range(4))
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(n, bool)
    keep: list[int] = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in order:
            if suppressed[i]:
                continue
            keep.append(int(i))
            if len(keep) == max_det:
                break
            w = np.maximum(np.float32(0), np.minimum(x2[i], x2) - np.maximum(x1[i], x1))
            h = np.maximum(np.float32(0), np.minimum(y2[i], y2) - np.maximum(y1[i], y1))
            inter = w * h
            overlap = inter / ((areas[i] + areas) - inter)
            same = np.ones(n, bool) if agnostic else classes == classes[i]
            suppressed |= (overlap > np.float32(iou)) & same
    return keep


def map_back(boxes: np.ndarray, params: np.ndarray, height: int, width: int) -> np.ndarray:
    sx, sy, px, py = (np.float32(v) for v in params)
    out = np.empty_like(boxes, dtype=np.float32)
    out[:, [0, 2]] = np.clip((boxes[:, [0, 2]] - px) / sx, 0, width)
    out[:, [1, 3]] = np.clip((boxes[:, [1, 3]] - py) / sy, 0, height)
    return out


def detect_image(
    head, layout, conf, iou, max_det, classes=None, agnostic=False, params=None, size=None, max_candidates=8192
) -> np.ndarray:
    """[k, 6] detections of one image: decode -> NMS -> map back; end-to-end heads: ``end_to_end_rows`` with
    max_det as the limit (no NMS, max_candidates unused)."""
    if layout == "end2end":
        boxes, scores, cls, _ = decode_image(head, layout, conf, max_det, classes)
        keep = list(range(len(scores)))
    else:
        boxes, scores, cls, _ = decode_image(head, layout, conf, max_candidates, classes)
        keep = nms_image(boxes, scores, cls, iou, max_det, agnostic)
    boxes = boxes[keep]
    if params is not None:
        boxes = map_back(boxes, params, *size)
    return np.concatenate([boxes, scores[keep, None], cls[keep, None].astype(np.float32)], axis=1)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.stack([np.lexsort((np.arange(x.shape[1]), -row))[:k] for row in x])
    return np.take_along_axis(x, idx, axis=1), idx.astype(np.int32)
