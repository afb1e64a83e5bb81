"""Pre-processing, the Python side of ``bindings/preprocess.cpp``: ``letterbox``, ``resize`` and
``center_crop`` (and their ``_into`` forms) all reduce to one batched resize into an NCHW tensor with a
placement per frame; ``PARAM_*`` name the columns of the params array they return. Their ``resize``
argument (``RESIZE_MODES``) picks how frames are resized: cv2's INTER_LINEAR or INTER_AREA bytes, or the
float blend.

Arguments are checked here, then the tier is picked by where the frames live (see ``_tiers``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from . import _tiers
from ._tiers import NATIVE_CPU, _c_contiguous, _check_threads, _describe, _is_device_array, _native, _numba

#: Columns of the per-frame parameter array returned by the resize family: a point maps from the original
#: frame to the model input as ``model = original * scale + pad``.
PARAM_SCALE_X, PARAM_SCALE_Y, PARAM_PAD_X, PARAM_PAD_Y = 0, 1, 2, 3

#: Values of the resize family's ``resize`` argument (see ``_RESIZE_DOC``).
RESIZE_MODES = ("linear", "area", "float")


def _resize_mode(resize: Any) -> str:
    if not isinstance(resize, str) or resize not in RESIZE_MODES:
        raise ValueError(f"resize: expected one of 'linear', 'area', 'float', got {resize!r}")
    return resize


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


class PixelTransform(NamedTuple):
    """What the kernels make of a pixel. resize="float": out[c] = src[src_channel[c]] * mul[c] + add[c]. The
    exact modes: out[c] = lut[c, v] of the uint8 value v (see ``_exact_values``); lut_scale[c] = scale /
    std[c] lets the native CPU tier compute the table instead of looking it up where it is that pure scaling
    (it checks). pad: the pad value in output units, for the exact modes computed as the table is."""

    src_channel: tuple[int, int, int]
    mul: tuple[float, float, float]
    add: tuple[float, float, float]
    pad: tuple[float, float, float]
    lut: np.ndarray | None  # float32 [3, 256] (exact modes) or None (float)
    lut_scale: tuple[float, float, float]


@functools.lru_cache(maxsize=64)
def _exact_values(
    scale: float, means: tuple[float, ...], stds: tuple[float, ...], pads: tuple[float, ...]
) -> tuple[np.ndarray, tuple[float, ...]]:
    """The exact modes' values: (value * scale - mean[c]) / std[c] computed in double and rounded to float32
    once, for each of the 256 uint8 values per output channel (float32 [3, 256], read-only, shared by the
    calls with these arguments) and for each channel's pad value. For scale = 1/255, mean 0, std 1 that is
    float32(v) / float32(255), the correctly rounded quotient of ultralytics' ``im.float() / 255``;
    v * float32(1/255) would be 1 ULP off for 126 of the 256 byte values."""
    mean = np.asarray(means, np.float64)
    std = np.asarray(stds, np.float64)
    with np.errstate(over="ignore"):  # a huge scale / tiny std overflows to inf, as the float path does
        lut = ((np.arange(256, dtype=np.float64)[None, :] * scale - mean[:, None]) / std[:, None]).astype(np.float32)
        pad = ((np.asarray(pads, np.float64) * scale - mean) / std).astype(np.float32)
    lut.flags.writeable = False
    return lut, tuple(float(p) for p in pad)


def _pixel_transform(
    swap_rb: bool, scale: float, mean: Any, std: Any, pad_value: Any, exact: bool = True
) -> PixelTransform:
    if not isinstance(scale, (int, float, np.integer, np.floating)) or not math.isfinite(scale) or scale == 0:
        raise ValueError(f"scale: expected a finite non-zero number, got {scale!r}")
    means = _triple(mean, "mean", 0.0)
    stds = _triple(std, "std", 1.0)
    if any(s == 0 for s in stds):
        raise ValueError(f"std: expected non-zero values, got {stds}")
    pads = _triple(pad_value, "pad_value", 0.0)
    mul = tuple(float(np.float32(scale / s)) for s in stds)
    add = tuple(float(np.float32(-m / s)) for m, s in zip(means, stds, strict=True))
    src = (2, 1, 0) if swap_rb else (0, 1, 2)
    lut_scale = tuple(float(scale) / s for s in stds)
    if not exact:  # resize="float": as before issue 13
        pad = tuple(float(np.float32(p * mu + a)) for p, mu, a in zip(pads, mul, add, strict=True))
        return PixelTransform(src, mul, add, pad, None, lut_scale)  # type: ignore[arg-type]
    lut, pad = _exact_values(float(scale), means, stds, pads)
    return PixelTransform(src, mul, add, pad, lut, lut_scale)  # type: ignore[arg-type]


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
        if not _rows_of_pixels(frame):
            raise ValueError(
                f"frames[{i}]: expected a C-contiguous array or rows of contiguous pixels (strides "
                f"[>= 3 * width, 3, 1]), got strides {list(frame.strides)} (use np.ascontiguousarray)"
            )
    return items, bool(on_device)


def _rows_of_pixels(frame: Any) -> bool:
    """Whether each row of the [h, w, 3] uint8 frame is w contiguous pixels (rows may be padded: a crop of a
    wider buffer), rows in increasing memory order."""
    row, pixel, channel = (int(v) for v in frame.strides)
    # As NumPy's own contiguity: the stride of a dimension of length 1 is never used, so it may be anything.
    return (channel == 1 and (pixel == 3 or frame.shape[1] == 1)
            and (frame.shape[0] == 1 or row >= 3 * frame.shape[1]))


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
            # boxes go back by each side's own scale, the rounded new size over the old one: ultralytics'
            # scale_boxes in 8.4 (older releases used r for both), and the inverse of the resize itself
            params[i] = (new_w / w, new_h / h, left, top)
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
    resize: Any = "linear",
    scaleup: bool = True,
    resize_shorter: int | None = None,
    num_threads: int = 0,
    stream: Any = None,
) -> tuple[Any, np.ndarray]:
    method = _resize_mode(resize)
    items, on_device = _frames(frames)
    num_threads = _check_threads(num_threads)
    transform = _pixel_transform(bool(swap_rb), scale, mean, std, pad_value, exact=method != "float")
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

        result = _cuda.resize_nchw(out, items, placements, height, width, transform, method, dtype, stream)
        return result, params
    if out is None:
        out = np.empty((len(items), 3, height, width), np.dtype(dtype))
    elif not out.flags.writeable:
        raise ValueError("out: expected a writeable array")
    if _tiers._cpu_tier == NATIVE_CPU:
        _native.resize_nchw_into(
            out,
            items,
            placements,
            transform.src_channel,
            transform.mul,
            transform.add,
            transform.pad,
            resize=method,
            num_threads=num_threads,
            lut=transform.lut,
            lut_scale=transform.lut_scale,
        )
    else:
        nb = _numba()
        src_channel = np.asarray(transform.src_channel, np.int64)
        mul, add, pad = (np.asarray(v, np.float32) for v in transform[1:4])
        target = out if out.dtype == np.float32 else np.empty(out.shape, np.float32)  # FP16: rounded from FP32
        for i, frame in enumerate(items):
            placement = tuple(int(v) for v in placements[i])
            if method == "float":
                nb.resize_frame(frame, *placement, src_channel, mul, add, pad, target[i])
            else:
                nb.resize_frame_exact(frame, method == "area", *placement, src_channel, transform.lut, pad, target[i])
        if target is not out:
            out[...] = target
    return out, params


_RESIZE_DOC = """
    frames: a list of uint8 [h, w, 3] frames (each its own size) or one uint8 [N, h, w, 3] array; NumPy
        arrays run on the CPU tier, CuPy arrays on the CUDA tier. Each row of a frame must be contiguous
        pixels (C-contiguous frames, or crops of wider buffers: strides [>= 3 * w, 3, 1]).
    size: model input size, an int or (height, width) in pixels.
    resize: how the frame is resized, before the pixels are converted to float:
        "linear" (default): exactly cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR) on
            the uint8 frame, byte for byte (OpenCV's fixed-point arithmetic; ultralytics' letterbox);
        "area": exactly cv2.resize(..., interpolation=cv2.INTER_AREA), byte for byte;
        "float": INTER_LINEAR's coordinates, blended in float with no rounding to uint8 (Peregrine's
            resize before issue 13, for models validated that way).
        The frame is never resized into an intermediate uint8 image; the rounding happens per pixel.
    swap_rb: reverse the channel order (BGR frames -> RGB tensor).
    scale, mean, std: out = (pixel * scale - mean) / std per output channel (mean/std: a number or three,
        in output channel order; None means 0 and 1). With resize="linear"/"area" each output value is that
        expression computed in double and rounded once to float32 (FP16: rounded from that float32), for the
        pixels and the pad alike: with the defaults exactly ultralytics' float32(pixel) / 255. With
        resize="float" it is the float blend * float32(scale / std) + float32(-mean / std).
    pad_value: fill of the uncovered area, in pixel units before scale/mean/std (a number or three).
    dtype: float32 or float16 output.
    num_threads: CPU threads (0 = all cores). stream: CUDA stream (a cupy Stream or a raw handle; default
        the current CuPy stream).

    Returns (tensor [N, 3, height, width] of dtype, params float32 [N, 4]) where params holds, per frame,
    scale_x, scale_y, pad_x, pad_y with model = original * scale + pad (pixels); ``map_boxes`` undoes it.
    Raises ValueError (shape, size, range, unknown resize mode) or TypeError (dtype, array kind) naming
    the argument.
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
    resize: str = "linear",
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
        resize=resize,
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
    resize: str = "linear",
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
        resize=resize,
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
    resize: str = "linear",
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
        resize=resize,
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
    resize: str = "linear",
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
        resize=resize,
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
    resize: str = "linear",
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
        resize=resize,
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
    resize: str = "linear",
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
        resize=resize,
        num_threads=num_threads,
        stream=stream,
    )[1]


for _f in (letterbox, resize, center_crop):
    _f.__doc__ = (_f.__doc__ or "") + _RESIZE_DOC
