"""The one dispatch point of ``peregrine.kernels``: checks arguments and picks the tier by where the
arrays live.

* NumPy arrays run on the native CPU kernels (``_native``), or on the numba tier when ``_native`` cannot be
  imported or ``PEREGRINE_KERNELS=numba`` is set.
* Arrays that expose ``__cuda_array_interface__`` (CuPy) run on the native CUDA kernels, on the current
  CuPy stream (or the ``stream`` argument).

Argument errors raise ``ValueError`` (shapes, sizes, ranges) or ``TypeError`` (dtypes, array kinds) with a
message naming the argument, what was expected and what came, before any tier runs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

try:
    from . import _native  # type: ignore[attr-defined]  # compiled; absent in a pure-Python checkout
except ImportError:  # the numba tier serves
    _native = None

NATIVE_CPU = "native-cpu"
NATIVE_CUDA = "native-cuda"
NUMBA = "numba"
_NONE = "none"


def _initial_cpu_tier() -> str:
    requested = os.environ.get("PEREGRINE_KERNELS", "auto").strip().lower()
    if requested in ("", "auto"):
        return NATIVE_CPU if _native is not None else NUMBA
    if requested in ("numba",):
        return NUMBA
    if requested in ("native", NATIVE_CPU):
        if _native is None:
            raise ImportError("PEREGRINE_KERNELS=native but peregrine.kernels._native is not importable")
        return NATIVE_CPU
    raise ValueError(f"PEREGRINE_KERNELS: expected auto, native or numba, got {requested!r}")


_cpu_tier = _initial_cpu_tier()


def active_tier(device: str = "cpu") -> str:
    """The tier that runs for arrays on ``device``.

    ``device="cpu"`` (NumPy arrays): ``"native-cpu"`` or ``"numba"``. ``device="cuda"`` (CuPy arrays):
    ``"native-cuda"`` when the native module has CUDA kernels and a device is usable, else ``"none"``.
    """
    if device == "cpu":
        return _cpu_tier
    if device == "cuda":
        return NATIVE_CUDA if cuda_available() else _NONE
    raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")


def set_cpu_tier(tier: str) -> str:
    """Choose the tier for NumPy arrays (``"native-cpu"`` or ``"numba"``); returns the previous one.

    Meant for tests and benchmarks; servers set ``PEREGRINE_KERNELS`` instead.
    """
    global _cpu_tier
    if tier not in (NATIVE_CPU, NUMBA):
        raise ValueError(f"tier: expected {NATIVE_CPU!r} or {NUMBA!r}, got {tier!r}")
    if tier == NATIVE_CPU and _native is None:
        raise RuntimeError("tier 'native-cpu': peregrine.kernels._native is not importable")
    previous, _cpu_tier = _cpu_tier, tier
    return previous


def has_native() -> bool:
    """Whether the native module imports (whatever tier is selected)."""
    return _native is not None


def cuda_available() -> bool:
    """Whether CUDA arrays can be processed: a CUDA build of the native module and at least one device."""
    return _native is not None and _native.has_cuda() and _native.cuda_device_count() > 0


def _numba():
    from . import _numba as module  # imported on first use: numba takes a while to import

    return module


# ------------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------------


def _is_device_array(obj: object) -> bool:
    return hasattr(type(obj), "__cuda_array_interface__")


def _describe(obj: object) -> str:
    if isinstance(obj, np.ndarray) or _is_device_array(obj):
        kind = "" if isinstance(obj, np.ndarray) else f"{type(obj).__module__}.{type(obj).__name__} "
        return f"{kind}{obj.dtype} {list(obj.shape)}"  # type: ignore[attr-defined]
    return type(obj).__name__


def _c_contiguous(a: Any) -> bool:
    return bool(a.flags.c_contiguous)


def _check_threads(num_threads: int) -> int:
    if not isinstance(num_threads, (int, np.integer)) or isinstance(num_threads, bool) or num_threads < 0:
        raise ValueError(f"num_threads: expected an int >= 0 (0 = all cores), got {num_threads!r}")
    return int(num_threads)


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        height = width = int(size)
    else:
        try:
            height, width = (int(v) for v in size)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise ValueError(f"size: expected an int or (height, width), got {size!r}") from None
    if not (1 <= height <= 65536 and 1 <= width <= 65536):
        raise ValueError(f"size: expected height and width in [1, 65536], got ({height}, {width})")
    return height, width


def _triple(value: float | Sequence[float] | None, name: str, default: float) -> tuple[float, float, float]:
    if value is None:
        return (default, default, default)
    values: tuple[float, ...]
    if isinstance(value, (int, float, np.integer, np.floating)):
        values = (float(value),) * 3
    else:
        try:
            values = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected a number or 3 numbers, got {value!r}") from None
        if len(values) != 3:
            raise ValueError(f"{name}: expected a number or 3 numbers, got {len(values)} values")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name}: expected finite numbers, got {values}")
    return values[0], values[1], values[2]


# ------------------------------------------------------------------------------------------------------
# Pre-processing
# ------------------------------------------------------------------------------------------------------

#: Columns of the per-frame parameter array returned by the resize family: a point maps from the original
#: frame to the model input as ``model = original * scale + pad``.
PARAM_SCALE_X, PARAM_SCALE_Y, PARAM_PAD_X, PARAM_PAD_Y = 0, 1, 2, 3


class PixelTransform(NamedTuple):
    src_channel: tuple[int, int, int]
    mul: tuple[float, float, float]
    add: tuple[float, float, float]
    pad: tuple[float, float, float]


def _pixel_transform(swap_rb: bool, scale: float, mean: Any, std: Any, pad_value: Any) -> PixelTransform:
    if not isinstance(scale, (int, float, np.integer, np.floating)) or not math.isfinite(scale) or scale == 0:
        raise ValueError(f"scale: expected a finite non-zero number, got {scale!r}")
    means = _triple(mean, "mean", 0.0)
    stds = _triple(std, "std", 1.0)
    if any(s == 0 for s in stds):
        raise ValueError(f"std: expected non-zero values, got {stds}")
    pads = _triple(pad_value, "pad_value", 0.0)
    mul = tuple(float(np.float32(scale / s)) for s in stds)
    add = tuple(float(np.float32(-m / s)) for m, s in zip(means, stds, strict=True))
    pad = tuple(float(np.float32(p * mu + a)) for p, mu, a in zip(pads, mul, add, strict=True))
    src = (2, 1, 0) if swap_rb else (0, 1, 2)
    return PixelTransform(src, mul, add, pad)  # type: ignore[arg-type]


def _frames(frames: Any) -> tuple[list[Any], bool]:
    """The frames as a list of [h, w, 3] uint8 arrays, and whether they live on a CUDA device."""
    if isinstance(frames, np.ndarray) or _is_device_array(frames):
        if frames.ndim != 4:
            raise ValueError(
                f"frames: expected a sequence of uint8 [H, W, 3] frames or one uint8 [N, H, W, 3] array, "
                f"got {_describe(frames)}"
            )
        items = list(frames)
    elif isinstance(frames, (list, tuple)):
        items = list(frames)
    else:
        raise TypeError(f"frames: expected a list of arrays or an [N, H, W, 3] array, got {_describe(frames)}")
    on_device = None
    for i, frame in enumerate(items):
        device = _is_device_array(frame)
        if not device and not isinstance(frame, np.ndarray):
            raise TypeError(f"frames[{i}]: expected a numpy or CuPy array, got {_describe(frame)}")
        if on_device is not None and device != on_device:
            raise TypeError("frames: expected all frames on the host (NumPy) or all on a CUDA device, got a mix")
        on_device = device
        if frame.dtype != np.uint8:
            raise TypeError(f"frames[{i}]: expected uint8 [H, W, 3], got {_describe(frame)}")
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frames[{i}]: expected uint8 [H, W, 3] (3 channels), got {_describe(frame)}")
        if frame.shape[0] < 1 or frame.shape[1] < 1:
            raise ValueError(f"frames[{i}]: expected a non-empty frame, got {_describe(frame)}")
        if frame.shape[0] > (1 << 20) or frame.shape[1] > (1 << 20):
            raise ValueError(f"frames[{i}]: expected height and width <= 2^20, got {_describe(frame)}")
        if not _c_contiguous(frame):
            raise ValueError(f"frames[{i}]: expected a C-contiguous array (use np.ascontiguousarray)")
    return items, bool(on_device)


def _placements(
    mode: str, shapes: list[tuple[int, int]], height: int, width: int, scaleup: bool, resize_shorter: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """int32 [N, 4] (resized_w, resized_h, left, top) and float32 [N, 4] params for each frame."""
    placements = np.empty((len(shapes), 4), np.int32)
    params = np.empty((len(shapes), 4), np.float32)
    for i, (h, w) in enumerate(shapes):
        if mode == "letterbox":
            # ultralytics LetterBox(auto=False, center=True), Python's round() included
            r = min(height / h, width / w)
            if not scaleup:
                r = min(r, 1.0)
            new_w, new_h = max(1, round(w * r)), max(1, round(h * r))
            dw, dh = (width - new_w) / 2, (height - new_h) / 2
            left, top = round(dw - 0.1), round(dh - 0.1)
            placements[i] = (new_w, new_h, left, top)
            params[i] = (r, r, left, top)
        elif mode == "stretch":
            placements[i] = (width, height, 0, 0)
            params[i] = (width / w, height / h, 0, 0)
        else:  # center crop
            if resize_shorter is None:
                r = max(height / h, width / w)
                new_w, new_h = max(width, round(w * r)), max(height, round(h * r))
            elif w <= h:  # torchvision Resize(int): the shorter side becomes resize_shorter exactly
                new_w, new_h = resize_shorter, max(1, int(resize_shorter * h / w))
            else:
                new_w, new_h = max(1, int(resize_shorter * w / h)), resize_shorter
            left, top = -round((new_w - width) / 2), -round((new_h - height) / 2)
            placements[i] = (new_w, new_h, left, top)
            params[i] = (new_w / w, new_h / h, left, top)
    return placements, params


def _resize_family(
    mode: str,
    out: Any,
    frames: Any,
    size: int | Sequence[int] | None,
    *,
    swap_rb: bool,
    scale: float,
    mean: Any,
    std: Any,
    pad_value: Any,
    dtype: Any,
    scaleup: bool = True,
    resize_shorter: int | None = None,
    num_threads: int = 0,
    stream: Any = None,
) -> tuple[Any, np.ndarray]:
    items, on_device = _frames(frames)
    num_threads = _check_threads(num_threads)
    transform = _pixel_transform(bool(swap_rb), scale, mean, std, pad_value)
    if resize_shorter is not None and (
        not isinstance(resize_shorter, (int, np.integer)) or not 1 <= resize_shorter <= 65536
    ):
        raise ValueError(f"resize_shorter: expected an int in [1, 65536] or None, got {resize_shorter!r}")
    if out is None:
        if size is None:
            raise ValueError("size: expected an int or (height, width), got None")
        height, width = _size(size)
        dt = np.dtype(dtype)
        if dt not in (np.float32, np.float16):
            raise TypeError(f"dtype: expected float32 or float16, got {dt}")
    else:
        if on_device != _is_device_array(out) or not (on_device or isinstance(out, np.ndarray)):
            where = "a CuPy array" if on_device else "a numpy.ndarray"
            raise TypeError(f"out: expected {where} like the frames, got {_describe(out)}")
        if out.dtype not in (np.float32, np.float16):
            raise TypeError(f"out: expected float32 or float16 [N, 3, H, W], got {_describe(out)}")
        if out.ndim != 4 or out.shape[0] != len(items) or out.shape[1] != 3:
            raise ValueError(f"out: expected [{len(items)}, 3, H, W], got {_describe(out)}")
        height, width = _size(out.shape[2:])
        if not _c_contiguous(out):
            raise ValueError("out: expected a C-contiguous array")
    shapes = [(int(f.shape[0]), int(f.shape[1])) for f in items]
    placements, params = _placements(mode, shapes, height, width, scaleup, resize_shorter)
    if on_device:
        from . import _cuda

        result = _cuda.resize_nchw(out, items, placements, height, width, transform, dtype, stream)
        return result, params
    if out is None:
        out = np.empty((len(items), 3, height, width), np.dtype(dtype))
    elif not out.flags.writeable:
        raise ValueError("out: expected a writeable array")
    if _cpu_tier == NATIVE_CPU:
        _native.resize_nchw_into(out, items, placements, *transform, num_threads=num_threads)
    else:
        nb = _numba()
        src_channel = np.asarray(transform.src_channel, np.int64)
        mul, add, pad = (np.asarray(v, np.float32) for v in transform[1:])
        target = out if out.dtype == np.float32 else np.empty(out.shape, np.float32)
        for i, frame in enumerate(items):
            nb.resize_frame(frame, *(int(v) for v in placements[i]), src_channel, mul, add, pad, target[i])
        if target is not out:
            out[...] = target
    return out, params


_RESIZE_DOC = """
    frames: a list of uint8 [h, w, 3] frames (each its own size) or one uint8 [N, h, w, 3] array; NumPy
        arrays run on the CPU tier, CuPy arrays on the CUDA tier. Frames must be C-contiguous.
    size: model input size, an int or (height, width) in pixels.
    swap_rb: reverse the channel order (BGR frames -> RGB tensor).
    scale, mean, std: out = (pixel * scale - mean) / std per output channel (mean/std: a number or three,
        in output channel order; None means 0 and 1).
    pad_value: fill of the uncovered area, in pixel units before scale/mean/std (a number or three).
    dtype: float32 or float16 output.
    num_threads: CPU threads (0 = all cores). stream: CUDA stream (a cupy Stream or a raw handle; default
        the current CuPy stream).

    Returns (tensor [N, 3, height, width] of dtype, params float32 [N, 4]) where params holds, per frame,
    scale_x, scale_y, pad_x, pad_y with model = original * scale + pad (pixels); ``map_boxes`` undoes it.
    Bilinear resizing follows OpenCV INTER_LINEAR (half-pixel centres, clamped borders).
    Raises ValueError (shape, size, range) or TypeError (dtype, array kind) naming the argument.
"""


def letterbox(
    frames: Any,
    size: int | Sequence[int] = 640,
    *,
    swap_rb: bool = True,
    scale: float = 1 / 255,
    mean: Any = None,
    std: Any = None,
    pad_value: Any = 114,
    dtype: Any = np.float32,
    scaleup: bool = True,
    num_threads: int = 0,
    stream: Any = None,
) -> tuple[Any, np.ndarray]:
    """Letterbox a batch of frames into one NCHW tensor, exactly as ultralytics' LetterBox places them.

    r = min(H / h, W / w) (at most 1 when ``scaleup`` is False); the frame is resized to
    (round(w * r), round(h * r)) (at least 1 pixel) and centred with left = round(dw - 0.1),
    top = round(dh - 0.1) where dw, dh are half the leftover width and height.
    """
    return _resize_family(
        "letterbox",
        None,
        frames,
        size,
        swap_rb=swap_rb,
        scale=scale,
        mean=mean,
        std=std,
        pad_value=pad_value,
        dtype=dtype,
        scaleup=scaleup,
        num_threads=num_threads,
        stream=stream,
    )


def letterbox_into(
    out: Any,
    frames: Any,
    *,
    swap_rb: bool = True,
    scale: float = 1 / 255,
    mean: Any = None,
    std: Any = None,
    pad_value: Any = 114,
    scaleup: bool = True,
    num_threads: int = 0,
    stream: Any = None,
) -> np.ndarray:
    """``letterbox`` writing into ``out`` (float32/float16 [N, 3, H, W], C-contiguous, writeable, on the
    frames' device; the model size is read from it). Returns the params array."""
    return _resize_family(
        "letterbox",
        out,
        frames,
        None,
        swap_rb=swap_rb,
        scale=scale,
        mean=mean,
        std=std,
        pad_value=pad_value,
        dtype=None,
        scaleup=scaleup,
        num_threads=num_threads,
        stream=stream,
    )[1]


def resize(
    frames: Any,
    size: int | Sequence[int] = 640,
    *,
    swap_rb: bool = True,
    scale: float = 1 / 255,
    mean: Any = None,
    std: Any = None,
    dtype: Any = np.float32,
    num_threads: int = 0,
    stream: Any = None,
) -> tuple[Any, np.ndarray]:
    """Stretch every frame to the model size (no aspect preservation, no padding) into one NCHW tensor."""
    return _resize_family(
        "stretch",
        None,
        frames,
        size,
        swap_rb=swap_rb,
        scale=scale,
        mean=mean,
        std=std,
        pad_value=0,
        dtype=dtype,
        num_threads=num_threads,
        stream=stream,
    )


def resize_into(
    out: Any,
    frames: Any,
    *,
    swap_rb: bool = True,
    scale: float = 1 / 255,
    mean: Any = None,
    std: Any = None,
    num_threads: int = 0,
    stream: Any = None,
) -> np.ndarray:
    """``resize`` writing into ``out``; returns the params array."""
    return _resize_family(
        "stretch",
        out,
        frames,
        None,
        swap_rb=swap_rb,
        scale=scale,
        mean=mean,
        std=std,
        pad_value=0,
        dtype=None,
        num_threads=num_threads,
        stream=stream,
    )[1]


def center_crop(
    frames: Any,
    size: int | Sequence[int] = 224,
    *,
    resize_shorter: int | None = None,
    swap_rb: bool = True,
    scale: float = 1 / 255,
    mean: Any = None,
    std: Any = None,
    pad_value: Any = 0,
    dtype: Any = np.float32,
    num_threads: int = 0,
    stream: Any = None,
) -> tuple[Any, np.ndarray]:
    """Resize the shorter side, then crop the centre (classifier pre-processing).

    With ``resize_shorter`` the shorter side becomes exactly that many pixels and the longer one
    int(resize_shorter * long / short) (torchvision ``Resize(int)``); without it the frame is scaled by
    max(H / h, W / w) so that it covers the crop. The crop starts at round((new - size) / 2)
    (torchvision ``CenterCrop``); if the resized frame is smaller than the crop the rest is ``pad_value``.
    """
    return _resize_family(
        "crop",
        None,
        frames,
        size,
        swap_rb=swap_rb,
        scale=scale,
        mean=mean,
        std=std,
        pad_value=pad_value,
        dtype=dtype,
        resize_shorter=resize_shorter,
        num_threads=num_threads,
        stream=stream,
    )


def center_crop_into(
    out: Any,
    frames: Any,
    *,
    resize_shorter: int | None = None,
    swap_rb: bool = True,
    scale: float = 1 / 255,
    mean: Any = None,
    std: Any = None,
    pad_value: Any = 0,
    num_threads: int = 0,
    stream: Any = None,
) -> np.ndarray:
    """``center_crop`` writing into ``out``; returns the params array."""
    return _resize_family(
        "crop",
        out,
        frames,
        None,
        swap_rb=swap_rb,
        scale=scale,
        mean=mean,
        std=std,
        pad_value=pad_value,
        dtype=None,
        resize_shorter=resize_shorter,
        num_threads=num_threads,
        stream=stream,
    )[1]


for _f in (letterbox, resize, center_crop):
    _f.__doc__ = (_f.__doc__ or "") + _RESIZE_DOC


# ------------------------------------------------------------------------------------------------------
# Detection post-processing
# ------------------------------------------------------------------------------------------------------

#: Head layouts by name: YOLOv8/YOLO11 [N, 4+C, A]; YOLOv5 [N, A, 5+C]; end-to-end (NMS-free) [N, K, 6].
LAYOUTS = {"yolov8": 0, "yolo11": 0, "yolov5": 1, "end2end": 2, "yolov10": 2}
_LAYOUT_SHAPES = ("yolov8 [N, 4+C, A]", "yolov5 [N, A, 5+C]", "end2end [N, K, 6]")


class Candidates(NamedTuple):
    """Decoded candidates, per image sorted by score desc then anchor asc; rows past counts[i] are 0 / -1."""

    boxes: Any  #: float32 [N, K, 4] x1, y1, x2, y2 in model pixels
    scores: Any  #: float32 [N, K]
    class_ids: Any  #: int32 [N, K]
    anchor_ids: Any  #: int32 [N, K] anchor (column/row of the head) each candidate came from
    counts: Any  #: int32 [N]


class Detections(NamedTuple):
    """Detections packed per image; rows past counts[i] are zeros."""

    dets: Any  #: float32 [N, max_det, 6]: x1, y1, x2, y2, score, class id (as float)
    counts: Any  #: int32 [N]

    def split(self) -> list[Any]:
        """Per-image [counts[i], 6] views (counts are read on the host)."""
        counts = self.counts.get() if hasattr(self.counts, "get") else self.counts
        return [self.dets[i, : int(c)] for i, c in enumerate(counts)]


def _array(obj: Any, name: str, dtype: Any, ndim: int, shape_text: str, device: bool | None = None) -> Any:
    on_device = _is_device_array(obj)
    if not on_device and not isinstance(obj, np.ndarray):
        raise TypeError(f"{name}: expected a numpy or CuPy {np.dtype(dtype)} {shape_text}, got {_describe(obj)}")
    if device is not None and on_device != device:
        where = "a CuPy array (like the other inputs)" if device else "a numpy.ndarray (like the other inputs)"
        raise TypeError(f"{name}: expected {where}, got {_describe(obj)}")
    if obj.dtype != np.dtype(dtype):
        raise TypeError(f"{name}: expected {np.dtype(dtype)} {shape_text}, got {_describe(obj)}")
    if obj.ndim != ndim:
        raise ValueError(f"{name}: expected {np.dtype(dtype)} {shape_text}, got {_describe(obj)}")
    if not _c_contiguous(obj):
        raise ValueError(f"{name}: expected a C-contiguous array")
    return obj


def _unit(value: float, name: str) -> float:
    if not isinstance(value, (int, float, np.integer, np.floating)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
    return float(value)


def _positive_int(value: int, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 1 <= value <= 2**31 - 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    return int(value)


def _head(head: Any, layout: str) -> tuple[int, int, int, int, bool]:
    """(layout id, batch, anchors, classes, on_device) of a detection head."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {sorted(LAYOUTS)}, got {layout!r}")
    lid = LAYOUTS[layout]
    _array(head, "head", np.float32, 3, _LAYOUT_SHAPES[lid])
    n, d1, d2 = (int(v) for v in head.shape)
    if (lid == 0 and d1 < 5) or (lid == 1 and d2 < 6) or (lid == 2 and d2 != 6):
        raise ValueError(f"head: expected {_LAYOUT_SHAPES[lid]} (C >= 1), got {_describe(head)}")
    anchors, classes = (d2, d1 - 4) if lid == 0 else (d1, d2 - 5) if lid == 1 else (d1, 0)
    return lid, n, anchors, classes, _is_device_array(head)


def _class_mask(classes: Sequence[int] | None) -> np.ndarray | None:
    if classes is None:
        return None
    ids = list(classes)
    for c in ids:
        if not isinstance(c, (int, np.integer)) or isinstance(c, bool) or not 0 <= c < 2**31:
            raise ValueError(f"classes: expected non-negative class ids, got {c!r}")
    mask = np.zeros(max([1, *(int(c) + 1 for c in ids)]), np.uint8)  # at least one entry: empty = none allowed
    mask[[int(c) for c in ids]] = 1
    return mask


def _map_inputs(params: Any, orig_sizes: Any, n: int) -> tuple[Any, Any]:
    if (params is None) != (orig_sizes is None):
        raise ValueError("params, orig_sizes: expected both (to map boxes back) or neither")
    if params is None:
        return None, None
    params = np.asarray(params.get() if _is_device_array(params) else params)
    sizes = np.asarray(orig_sizes.get() if _is_device_array(orig_sizes) else orig_sizes)
    if params.dtype != np.float32 or params.shape != (n, 4):
        raise ValueError(f"params: expected float32 [{n}, 4] (scale_x, scale_y, pad_x, pad_y), got {_describe(params)}")
    if not np.issubdtype(sizes.dtype, np.integer) or sizes.shape != (n, 2):
        raise ValueError(f"orig_sizes: expected integers [{n}, 2] (height, width), got {_describe(sizes)}")
    if not (params[:, :2] > 0).all():
        raise ValueError("params: expected scales > 0")
    if not (sizes >= 1).all() or not (sizes < 2**31).all():
        raise ValueError("orig_sizes: expected sizes >= 1")
    # Host arrays either way: the CUDA tier uploads them on the launch's own stream (see _cuda._upload).
    return np.ascontiguousarray(params), np.ascontiguousarray(sizes, np.int32)


def decode(
    head: Any,
    layout: str = "yolov8",
    *,
    conf: float = 0.25,
    max_candidates: int = 8192,
    classes: Sequence[int] | None = None,
    num_threads: int = 0,
    stream: Any = None,
) -> Candidates:
    """Decode a detection head into candidates (boxes as x1, y1, x2, y2 in model pixels).

    head: float32 C-contiguous; ``layout`` "yolov8"/"yolo11" [N, 4+C, A] (cx, cy, w, h, class scores;
    score = max class score), "yolov5" [N, A, 5+C] (cx, cy, w, h, objectness, class scores; kept when
    objectness > conf and score = objectness * max class score > conf), "end2end"/"yolov10" [N, K, 6]
    (x1, y1, x2, y2, score, class). Keeps score > ``conf`` (in [0, 1]); the class is the best one (first on
    ties) and with ``classes`` only those ids are kept (like ultralytics: the best class must be allowed).
    At most ``max_candidates`` per image, chosen by score desc then anchor asc.
    Returns ``Candidates`` with K = min(max_candidates, A), on the head's device.
    """
    lid, n, anchors, _, device = _head(head, layout)
    conf = _unit(conf, "conf")
    max_candidates = _positive_int(max_candidates, "max_candidates")
    num_threads = _check_threads(num_threads)
    mask = _class_mask(classes)
    if device:
        from . import _cuda

        return Candidates(*_cuda.decode(head, lid, anchors, conf, max_candidates, mask, stream))
    if _cpu_tier == NATIVE_CPU:
        return Candidates(*_native.decode(head, lid, conf, max_candidates, mask, num_threads))
    nb = _numba()
    cap = max(1, min(max_candidates, anchors))
    out = Candidates(
        np.zeros((n, cap, 4), np.float32),
        np.zeros((n, cap), np.float32),
        np.full((n, cap), -1, np.int32),
        np.full((n, cap), -1, np.int32),
        np.zeros(n, np.int32),
    )
    nb_mask = mask if mask is not None else np.zeros(0, np.uint8)
    for i in range(n):
        scores, anchor_ids, class_ids, boxes = nb.collect(head[i], lid, conf, cap, nb_mask)
        k = scores.shape[0]
        out.boxes[i, :k], out.scores[i, :k], out.class_ids[i, :k], out.anchor_ids[i, :k] = (
            boxes,
            scores,
            class_ids,
            anchor_ids,
        )
        out.counts[i] = k
    return out


def nms(
    boxes: Any,
    scores: Any,
    class_ids: Any,
    counts: Any = None,
    *,
    iou: float = 0.7,
    max_det: int = 300,
    agnostic: bool = False,
    num_threads: int = 0,
    stream: Any = None,
) -> tuple[Any, Any]:
    """Greedy non-maximum suppression, batched over images.

    boxes float32 [N, K, 4] (x1, y1, x2, y2), scores float32 [N, K], class_ids int32 [N, K], counts int32
    [N] or None (only the first counts[i] candidates of image i take part; None: all K). Candidates rank
    by score desc then index asc (NaN scores are never kept); a candidate is dropped when its IoU with an
    already kept box of the same class (any class with ``agnostic``) is > ``iou``. At most ``max_det``.
    Returns (keep int32 [N, max_det]: indices into K in rank order, -1 padded; kept int32 [N]).
    """
    device = _is_device_array(boxes)
    _array(boxes, "boxes", np.float32, 3, "[N, K, 4]", device)
    if boxes.shape[2] != 4:
        raise ValueError(f"boxes: expected float32 [N, K, 4], got {_describe(boxes)}")
    n, k = int(boxes.shape[0]), int(boxes.shape[1])
    _array(scores, "scores", np.float32, 2, "[N, K]", device)
    _array(class_ids, "class_ids", np.int32, 2, "[N, K]", device)
    for name, a in (("scores", scores), ("class_ids", class_ids)):
        if tuple(a.shape) != (n, k):
            raise ValueError(f"{name}: expected [{n}, {k}] like boxes, got {_describe(a)}")
    if counts is not None:
        _array(counts, "counts", np.int32, 1, "[N]", device)
        if tuple(counts.shape) != (n,):
            raise ValueError(f"counts: expected int32 [{n}], got {_describe(counts)}")
    iou = _unit(iou, "iou")
    max_det = _positive_int(max_det, "max_det")
    num_threads = _check_threads(num_threads)
    if device:
        from . import _cuda

        return _cuda.nms(boxes, scores, class_ids, counts, iou, max_det, bool(agnostic), stream)
    if counts is not None and ((counts < 0).any() or (counts > k).any()):
        raise ValueError(f"counts: expected values in [0, {k}]")
    if _cpu_tier == NATIVE_CPU:
        return _native.nms(boxes, scores, class_ids, counts, iou, max_det, bool(agnostic), num_threads)
    nb = _numba()
    keep = np.full((n, max_det), -1, np.int32)
    kept = np.zeros(n, np.int32)
    for i in range(n):
        order = nb.rank(scores[i], k if counts is None else int(counts[i]))
        chosen = order[nb.greedy_nms(boxes[i][order], class_ids[i][order], iou, max_det, bool(agnostic))]
        keep[i, : len(chosen)] = chosen
        kept[i] = len(chosen)
    return keep, kept


def map_boxes(boxes: Any, params: Any, orig_sizes: Any, *, num_threads: int = 0, stream: Any = None) -> Any:
    """Boxes float32 [N, K, 4] (x1, y1, x2, y2) from model pixels back to original frame pixels.

    ``params`` float32 [N, 4] as returned by ``letterbox``/``resize``/``center_crop``; ``orig_sizes``
    integers [N, 2] (height, width). x = (x - pad_x) / scale_x (y likewise), clipped to [0, width] x
    [0, height]. Returns a new array on the boxes' device.
    """
    out = np.empty_like(boxes) if isinstance(boxes, np.ndarray) else None
    return _map_boxes(out, boxes, params, orig_sizes, num_threads, stream)


def map_boxes_into(
    out: Any, boxes: Any, params: Any, orig_sizes: Any, *, num_threads: int = 0, stream: Any = None
) -> Any:
    """``map_boxes`` writing into ``out`` (float32 [N, K, 4]; may be ``boxes`` itself). Returns out."""
    return _map_boxes(out, boxes, params, orig_sizes, num_threads, stream)


def _map_boxes(out: Any, boxes: Any, params: Any, orig_sizes: Any, num_threads: int, stream: Any) -> Any:
    device = _is_device_array(boxes)
    _array(boxes, "boxes", np.float32, 3, "[N, K, 4]", device)
    if boxes.shape[2] != 4:
        raise ValueError(f"boxes: expected float32 [N, K, 4], got {_describe(boxes)}")
    num_threads = _check_threads(num_threads)
    n = int(boxes.shape[0])
    params, sizes = _map_inputs(params, orig_sizes, n)
    if params is None:
        raise ValueError("params, orig_sizes: expected arrays, got None")
    if device:
        from . import _cuda

        return _cuda.map_boxes(out, boxes, params, sizes, stream)
    if out is None or not isinstance(out, np.ndarray):
        raise TypeError(f"out: expected a numpy.ndarray, got {_describe(out)}")
    if out.dtype != np.float32 or out.shape != boxes.shape:
        raise ValueError(f"out: expected float32 {list(boxes.shape)}, got {_describe(out)}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out: expected a C-contiguous, writeable array")
    if _cpu_tier == NATIVE_CPU:
        _native.map_boxes_into(out, boxes, params, sizes, num_threads)
    else:
        nb = _numba()
        for i in range(n):
            nb.map_boxes(boxes[i], params[i], int(sizes[i, 0]), int(sizes[i, 1]), out[i])
    return out


def detect_postprocess(
    head: Any,
    layout: str = "yolov8",
    *,
    conf: float = 0.25,
    iou: float = 0.7,
    max_det: int = 300,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
    params: Any = None,
    orig_sizes: Any = None,
    max_candidates: int = 8192,
    num_threads: int = 0,
    stream: Any = None,
) -> Detections:
    """Fused detection post-processing: ``decode`` -> ``nms`` (skipped for end-to-end heads, which only keep
    the best ``max_det``) -> ``map_boxes`` (when ``params`` and ``orig_sizes`` are given; else boxes stay in
    model pixels).

    See ``decode`` for head layouts, ``conf``, ``classes`` and ``max_candidates``; ``nms`` for ``iou``,
    ``max_det`` and ``agnostic``; ``map_boxes`` for ``params`` / ``orig_sizes``.
    Returns ``Detections(dets float32 [N, max_det, 6], counts int32 [N])`` on the head's device.
    """
    return _detect(
        None,
        None,
        head,
        layout,
        conf,
        iou,
        max_det,
        classes,
        agnostic,
        params,
        orig_sizes,
        max_candidates,
        num_threads,
        stream,
    )


def detect_postprocess_into(
    dets: Any,
    counts: Any,
    head: Any,
    layout: str = "yolov8",
    *,
    conf: float = 0.25,
    iou: float = 0.7,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
    params: Any = None,
    orig_sizes: Any = None,
    max_candidates: int = 8192,
    num_threads: int = 0,
    stream: Any = None,
) -> Detections:
    """``detect_postprocess`` writing into ``dets`` (float32 [N, max_det, 6]; max_det read from it) and
    ``counts`` (int32 [N]), both on the head's device. Returns them as ``Detections``."""
    if not (isinstance(dets, np.ndarray) or _is_device_array(dets)) or dets.ndim != 3:
        raise ValueError(f"dets: expected float32 [N, max_det, 6], got {_describe(dets)}")
    return _detect(
        dets,
        counts,
        head,
        layout,
        conf,
        iou,
        int(dets.shape[1]),
        classes,
        agnostic,
        params,
        orig_sizes,
        max_candidates,
        num_threads,
        stream,
    )


def _detect(
    dets: Any,
    counts: Any,
    head: Any,
    layout: str,
    conf: float,
    iou: float,
    max_det: int,
    classes: Any,
    agnostic: bool,
    params: Any,
    orig_sizes: Any,
    max_candidates: int,
    num_threads: int,
    stream: Any,
) -> Detections:
    lid, n, anchors, _, device = _head(head, layout)
    conf = _unit(conf, "conf")
    iou = _unit(iou, "iou")
    max_det = _positive_int(max_det, "max_det")
    max_candidates = _positive_int(max_candidates, "max_candidates")
    num_threads = _check_threads(num_threads)
    mask = _class_mask(classes)
    params, sizes = _map_inputs(params, orig_sizes, n)
    if dets is not None:
        _array(dets, "dets", np.float32, 3, f"[{n}, max_det, 6]", device)
        if tuple(dets.shape) != (n, max_det, 6):
            raise ValueError(f"dets: expected float32 [{n}, max_det, 6], got {_describe(dets)}")
        _array(counts, "counts", np.int32, 1, f"[{n}]", device)
        if tuple(counts.shape) != (n,):
            raise ValueError(f"counts: expected int32 [{n}], got {_describe(counts)}")
        if not device and not (dets.flags.writeable and counts.flags.writeable):
            raise ValueError("dets, counts: expected writeable arrays")
    if device:
        from . import _cuda

        return Detections(
            *_cuda.detect_postprocess(
                dets,
                counts,
                head,
                lid,
                anchors,
                conf,
                iou,
                max_det,
                max_candidates,
                mask,
                bool(agnostic),
                params,
                sizes,
                stream,
            )
        )
    if dets is None:
        dets = np.empty((n, max_det, 6), np.float32)
        counts = np.empty(n, np.int32)
    if _cpu_tier == NATIVE_CPU:
        _native.detect_postprocess_into(
            dets,
            counts,
            head,
            lid,
            conf,
            iou,
            max_det,
            max_candidates,
            mask,
            bool(agnostic),
            params,
            sizes,
            num_threads,
        )
        return Detections(dets, counts)
    nb = _numba()
    nb_mask = mask if mask is not None else np.zeros(0, np.uint8)
    dets[...] = 0
    for i in range(n):
        scores, _, class_ids, boxes = nb.collect(head[i], lid, conf, max_candidates, nb_mask)
        if lid == 2:
            chosen = np.arange(min(len(scores), max_det))
        else:
            chosen = nb.greedy_nms(boxes, class_ids, iou, max_det, bool(agnostic))
        k = len(chosen)
        if params is not None:
            nb.map_boxes(boxes[chosen], params[i], int(sizes[i, 0]), int(sizes[i, 1]), dets[i, :k])
        else:
            dets[i, :k, :4] = boxes[chosen]
        dets[i, :k, 4] = scores[chosen]
        dets[i, :k, 5] = class_ids[chosen]
        counts[i] = k
    return Detections(dets, counts)


# ------------------------------------------------------------------------------------------------------
# Classification post-processing
# ------------------------------------------------------------------------------------------------------


def _logits(x: Any, name: str) -> Any:
    _array(x, name, np.float32, 2, "[N, C]")
    if x.shape[1] < 1:
        raise ValueError(f"{name}: expected float32 [N, C] with C >= 1, got {_describe(x)}")
    return x


def softmax(logits: Any, *, num_threads: int = 0, stream: Any = None) -> Any:
    """Row-wise softmax of float32 [N, C] logits (max subtracted first), on the logits' device."""
    _logits(logits, "logits")
    num_threads = _check_threads(num_threads)
    if _is_device_array(logits):
        from . import _cuda

        return _cuda.softmax(None, logits, stream)
    return softmax_into(np.empty_like(logits), logits, num_threads=num_threads)


def softmax_into(out: Any, logits: Any, *, num_threads: int = 0, stream: Any = None) -> Any:
    """``softmax`` writing into ``out`` (float32 [N, C]; may be ``logits``). Returns out."""
    _logits(logits, "logits")
    num_threads = _check_threads(num_threads)
    device = _is_device_array(logits)
    _array(out, "out", np.float32, 2, "[N, C]", device)
    if tuple(out.shape) != tuple(logits.shape):
        raise ValueError(f"out: expected float32 {list(logits.shape)}, got {_describe(out)}")
    if device:
        from . import _cuda

        return _cuda.softmax(out, logits, stream)
    if not out.flags.writeable:
        raise ValueError("out: expected a writeable array")
    if _cpu_tier == NATIVE_CPU:
        _native.softmax_into(out, logits, num_threads)
    else:
        _numba().softmax(logits, out)
    return out


def topk(values: Any, k: int = 5, *, num_threads: int = 0, stream: Any = None) -> tuple[Any, Any]:
    """Row-wise top-k of float32 [N, C] by value desc then index asc (NaN last).

    Returns (values float32 [N, k], indices int32 [N, k]) on the input's device; 1 <= k <= C.
    """
    _logits(values, "values")
    num_threads = _check_threads(num_threads)
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= values.shape[1]:
        raise ValueError(f"k: expected an int in [1, C={values.shape[1]}], got {k!r}")
    k = int(k)
    if _is_device_array(values):
        from . import _cuda

        return _cuda.topk(values, k, stream)
    if _cpu_tier == NATIVE_CPU:
        return _native.topk(values, k, num_threads)
    out_values = np.empty((values.shape[0], k), np.float32)
    out_indices = np.empty((values.shape[0], k), np.int32)
    _numba().topk(values, k, out_values, out_indices)
    return out_values, out_indices


def classify_postprocess(
    logits: Any, k: int = 5, *, apply_softmax: bool = True, num_threads: int = 0, stream: Any = None
) -> tuple[Any, Any]:
    """Softmax (unless the model already outputs probabilities) then top-k: (scores float32 [N, k],
    class ids int32 [N, k])."""
    probs = softmax(logits, num_threads=num_threads, stream=stream) if apply_softmax else logits
    return topk(probs, k, num_threads=num_threads, stream=stream)
