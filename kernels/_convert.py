"""Raw camera frames, the Python side of ``bindings/convert.cpp``: ``convert_raw`` (and ``convert_raw_into``)
turn the bytes of a ``sensor_msgs/Image`` in one of :data:`RAW_ENCODINGS` into a uint8 ``[H, W, 3]`` RGB (or
BGR) frame, with cv_bridge's colours: byte for byte what ``cv2.cvtColor`` gives for the code cv_bridge uses
(YUV 4:2:2 with OpenCV's fixed-point BT.601, Bayer with OpenCV's bilinear demosaic and border rule, 16-bit
samples narrowed to their most significant byte first).

Arguments are checked here (``ValueError``/``TypeError`` naming the argument, what was expected and what
came), then the CPU tier runs (see ``_tiers``); there is no CUDA form: frames arrive as host bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _tiers
from ._tiers import NATIVE_CPU, _check_threads, _describe, _native, _numba

_PIXELS, _UYVY, _YUYV, _BAYER = 0, 1, 2, 3


@dataclass(frozen=True)
class RawEncoding:
    """How one ``sensor_msgs/image_encodings`` name lays out its pixels: ``samples`` per pixel as sent (YUV
    4:2:2: 2, one luma and every other pixel's chroma; Bayer: 1) of ``sample_bytes`` each; ``blue_first`` for
    BGR(A) orders; the red sample's column and row (``red_x``, ``red_y``) in a Bayer pattern."""

    name: str
    layout: int
    samples: int
    sample_bytes: int = 1
    blue_first: bool = False
    red_x: int = 0
    red_y: int = 0

    @property
    def even_width(self) -> bool:
        """Whether widths must be even (YUV 4:2:2: two pixels share their U and V)."""
        return self.layout in (_UYVY, _YUYV)

    def row_bytes(self, width: int) -> int:
        """Bytes of one packed row of ``width`` pixels."""
        return width * self.samples * self.sample_bytes


def _table() -> dict[str, RawEncoding]:
    table = {}
    for name, samples, sample_bytes, blue_first in (
        ("rgb8", 3, 1, False), ("bgr8", 3, 1, True), ("8UC3", 3, 1, True),
        ("rgba8", 4, 1, False), ("bgra8", 4, 1, True), ("8UC4", 4, 1, True),
        ("mono8", 1, 1, False), ("8UC1", 1, 1, False), ("mono16", 1, 2, False), ("16UC1", 1, 2, False),
        ("rgb16", 3, 2, False), ("bgr16", 3, 2, True),
    ):
        table[name] = RawEncoding(name, _PIXELS, samples, sample_bytes, blue_first)
    for name in ("yuv422", "uyvy"):
        table[name] = RawEncoding(name, _UYVY, 2)
    for name in ("yuv422_yuy2", "yuyv", "yuy2"):
        table[name] = RawEncoding(name, _YUYV, 2)
    red_at = {"rggb": (0, 0), "bggr": (1, 1), "gbrg": (0, 1), "grbg": (1, 0)}  # (column, row) of red
    for pattern, (red_x, red_y) in red_at.items():
        for bits in (8, 16):
            name = f"bayer_{pattern}{bits}"
            table[name] = RawEncoding(name, _BAYER, 1, bits // 8, red_x=red_x, red_y=red_y)
    return table


_ENCODINGS = _table()
#: The ``sensor_msgs/image_encodings`` names :func:`convert_raw` takes (exactly these spellings). 8UC1, 8UC3
#: and 8UC4 read as mono8, bgr8 and bgra8, 16UC1 as mono16, as cv_bridge reads them.
RAW_ENCODINGS: tuple[str, ...] = tuple(_ENCODINGS)


def raw_encoding(name: Any) -> RawEncoding:
    """The layout of an encoding name. Raises ValueError naming ``encoding`` for a name not in
    :data:`RAW_ENCODINGS`."""
    found = _ENCODINGS.get(name) if isinstance(name, str) else None
    if found is None:
        got = repr(name[:64]) if isinstance(name, str) else type(name).__name__
        raise ValueError(f"encoding: expected one of {', '.join(RAW_ENCODINGS)}, got {got}")
    return found


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ValueError(f"{name}: expected an int in [{low}, {high}], got {value!r}")
    return int(value)


def _bytes(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray):
        if not data.flags.c_contiguous:
            raise ValueError(f"data: expected bytes or a C-contiguous array, got a non-contiguous {_describe(data)}")
        return data.reshape(-1).view(np.uint8)
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            return np.frombuffer(data, np.uint8)
        except ValueError as e:  # a non-contiguous memoryview
            raise ValueError(f"data: expected contiguous bytes ({e})") from None
    raise TypeError(f"data: expected bytes, bytearray, memoryview or a numpy array, got {type(data).__name__}")


def convert_raw(data: Any, encoding: str, height: int, width: int, *, step: int = 0, is_bigendian: bool = False,
                order: str = "rgb", num_threads: int = 0) -> np.ndarray:
    """A raw camera frame as a new uint8 ``[height, width, 3]`` array in ``order`` (``"rgb"`` or ``"bgr"``).

    ``data``: ``height`` rows of ``step`` bytes (0: packed, ``raw_encoding(encoding).row_bytes(width)``); the
    last row may stop after its pixels, bytes past the last row are ignored. ``is_bigendian``: the byte order
    of 16-bit samples. YUV 4:2:2 needs an even width; a Bayer frame with a side under 3 pixels is black (as
    OpenCV makes it). Raises ValueError naming ``encoding``, ``height``/``width``, ``step`` or ``data``, and
    TypeError for data that is not bytes."""
    out = np.empty((_int(height, "height", 1, 1 << 20), _int(width, "width", 1, 1 << 20), 3), np.uint8)
    return convert_raw_into(out, data, encoding, height, width, step=step, is_bigendian=is_bigendian, order=order,
                            num_threads=num_threads)


def convert_raw_into(out: np.ndarray, data: Any, encoding: str, height: int, width: int, *, step: int = 0,
                     is_bigendian: bool = False, order: str = "rgb", num_threads: int = 0) -> np.ndarray:
    """:func:`convert_raw` writing into ``out`` (uint8 ``[height, width, 3]``, C-contiguous, writeable).
    Returns out."""
    enc = raw_encoding(encoding)
    height = _int(height, "height", 1, 1 << 20)
    width = _int(width, "width", 1, 1 << 20)
    num_threads = _check_threads(num_threads)
    if order not in ("rgb", "bgr"):
        raise ValueError(f"order: expected 'rgb' or 'bgr', got {order!r}")
    if enc.even_width and width % 2:
        raise ValueError(f"width: expected an even width for {enc.name} (two pixels share U and V), got {width}")
    row_bytes = enc.row_bytes(width)
    step = _int(step, "step", 0, 1 << 40) or row_bytes
    if step < row_bytes:
        raise ValueError(f"step: expected 0 (packed) or at least {row_bytes} bytes per row ({width} pixels of "
                         f"{enc.name}), got {step}")
    buf = _bytes(data)
    need = step * (height - 1) + row_bytes
    if buf.size < need:
        raise ValueError(f"data: expected at least {need} bytes ({height} rows of {step}), got {buf.size}")
    if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != (height, width, 3):
        raise ValueError(f"out: expected uint8 [{height}, {width}, 3], got {_describe(out)}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out: expected a C-contiguous, writeable array")
    args = (height, width, step, enc.layout, enc.samples if enc.layout == _PIXELS else 1, enc.sample_bytes,
            bool(is_bigendian), enc.blue_first, enc.red_x, enc.red_y, order == "bgr")
    if _tiers._cpu_tier == NATIVE_CPU:
        _native.convert_raw_into(out, buf, *args, num_threads)
    else:
        _numba().convert_raw(buf, *args, out)
    return out
