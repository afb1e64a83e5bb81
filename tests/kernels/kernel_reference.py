"""Plainly written NumPy references for the kernels (float64 unless a comparison needs float32 steps)."""

from __future__ import annotations

import numpy as np


def bilinear_resize(img: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    """cv2.resize(img, (new_w, new_h), INTER_LINEAR) without rounding: float64 [new_h, new_w, 3]."""
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
    new_w, new_h = max(1, int(round(w * r))), max(1, int(round(h * r)))
    dw, dh = (width - new_w) / 2, (height - new_h) / 2
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    return new_w, new_h, left, top, right, bottom, r


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


def letterbox(img: np.ndarray, height: int, width: int, pad: float = 114, swap_rb: bool = True,
              scale: float = 1 / 255, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)) -> np.ndarray:
    new_w, new_h, left, top, _, _, _ = letterbox_geometry(img.shape[0], img.shape[1], height, width)
    canvas = place(bilinear_resize(img, new_w, new_h), left, top, height, width, pad)
    return to_tensor(canvas, swap_rb, scale, mean, std)
