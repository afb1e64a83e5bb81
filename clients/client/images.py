"""Client-side image preparation for detection models that take ``[N,3,H,W]`` FP32 input.

For calling a plain detector model over OIP (the harness's ``--image``); a detection pipeline model does
all this on the server (see :class:`~peregrine.client.DetectionClient`). Resizing uses OpenCV when it is
installed (bilinear), else NumPy (nearest neighbour).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD_VALUE = 114  # YOLO's grey


@dataclass(frozen=True)
class LetterboxParams:
    """How an image was placed into the model's input: ``model x = original x * scale_x + pad_x`` (y likewise);
    each side's scale is its resized length over its original one (ultralytics' ``scale_boxes``)."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Map ``[..., 4]`` x1, y1, x2, y2 boxes from model pixels back to original-image pixels."""
        out = np.array(boxes, dtype=np.float32, copy=True)
        out[..., [0, 2]] = (out[..., [0, 2]] - self.pad_x) / self.scale_x
        out[..., [1, 3]] = (out[..., [1, 3]] - self.pad_y) / self.scale_y
        return out


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a ``[H,W,C]`` uint8 image to ``[height,width,C]``."""
    try:
        import cv2
    except ImportError:
        rows = (np.arange(height) * image.shape[0] / height).astype(np.intp)
        cols = (np.arange(width) * image.shape[1] / width).astype(np.intp)
        return image[rows[:, None], cols[None, :]]
    return np.asarray(cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR))


def letterbox_hwc(image: np.ndarray, height: int, width: int) -> tuple[np.ndarray, LetterboxParams]:
    """Fit a ``[H,W,3]`` uint8 image into ``[height,width,3]`` keeping its aspect ratio, padding with grey,
    placed as ultralytics' ``LetterBox`` places it (the server's detection pipelines do the same).

    Raises ValueError for anything but a non-empty uint8 ``[H,W,3]`` array."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"expected a uint8 [H,W,3] image, got {image.dtype} {list(image.shape)}")
    h, w = image.shape[:2]
    scale = min(height / h, width / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = round((height - nh) / 2 - 0.1), round((width - nw) / 2 - 0.1)
    out = np.full((height, width, 3), PAD_VALUE, dtype=np.uint8)
    out[top:top + nh, left:left + nw] = resize(image, nw, nh)
    return out, LetterboxParams(nw / w, nh / h, float(left), float(top))


def letterbox_nchw(image: np.ndarray, height: int = 640, width: int = 640) -> tuple[np.ndarray, LetterboxParams]:
    """A ``[1,3,height,width]`` FP32 tensor in [0, 1] from a ``[H,W,3]`` uint8 RGB image, letterboxed."""
    boxed, params = letterbox_hwc(image, height, width)
    tensor = np.ascontiguousarray(boxed.transpose(2, 0, 1)[None], dtype=np.float32)
    tensor *= 1.0 / 255.0
    return tensor, params


def load_image(path: str) -> np.ndarray:
    """A ``[H,W,3]`` uint8 RGB image from a ``.npy`` file (already HWC uint8) or any file OpenCV can read.

    Raises ValueError when the file is not an image, ImportError when reading it needs OpenCV."""
    if path.endswith(".npy"):
        image = np.load(path)
    else:
        try:
            import cv2
        except ImportError:
            raise ImportError(f"{path}: reading image files needs OpenCV (opencv-python-headless); "
                              "or pass a uint8 [H,W,3] .npy file") from None
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{path}: not an image OpenCV can read")
        image = np.ascontiguousarray(bgr[:, :, ::-1])
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{path}: expected a uint8 [H,W,3] image, got {image.dtype} {list(image.shape)}")
    return image
