"""Turning what a client sends into frames: uint8 [H, W, 3], C-contiguous, in the pipeline's channel order.

JPEG goes through simplejpeg (libjpeg-turbo, strict: a truncated or corrupt file is an error, not a grey
smear); every other format Pillow opens (PNG, BMP, TIFF, WebP) goes through Pillow. Image sizes are read
from the header and checked against the pixel limit before any pixel is decoded, so a small file that
claims to be 100k x 100k costs nothing.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from ..core.errors import InvalidArgument

ChannelOrder = Literal["rgb", "bgr"]

DEFAULT_MAX_PIXELS = 8192 * 8192
_JPEG_MAGIC = b"\xff\xd8\xff"
_PIL_FORMATS = ["PNG", "BMP", "TIFF", "WEBP", "JPEG"]


def _check_size(field: str, height: int, width: int, max_pixels: int) -> None:
    if height < 1 or width < 1:
        raise InvalidArgument(f"{field}: expected a non-empty image, got {height}x{width} pixels")
    if height * width > max_pixels:
        raise InvalidArgument(
            f"{field}: image of {width}x{height} = {height * width} pixels is over this model's limit of "
            f"{max_pixels} (detection.max_pixels)"
        )


def decode_image(data: bytes, field: str, order: ChannelOrder = "rgb",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode JPEG/PNG/BMP/TIFF/WebP file bytes into a uint8 [H, W, 3] frame.

    ``field`` names the request field in error messages. Raises :class:`InvalidArgument` for empty,
    truncated, corrupt or unsupported data and for images over ``max_pixels``.
    """
    if not data:
        raise InvalidArgument(f"{field}: expected JPEG or PNG file bytes, got 0 bytes")
    if bytes(data[:3]) == _JPEG_MAGIC:
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError as e:
            raise InvalidArgument(f"{field}: not a readable JPEG ({e})") from None
        _check_size(field, height, width, max_pixels)
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB" if order == "rgb" else "BGR", strict=True)
        except ValueError as e:
            raise InvalidArgument(f"{field}: corrupt or truncated JPEG ({e})") from None
    try:
        with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as img:
            width, height = img.size
            _check_size(field, height, width, max_pixels)
            frame = np.asarray(img.convert("RGB"))
    except UnidentifiedImageError:
        raise InvalidArgument(
            f"{field}: expected JPEG, PNG, BMP, TIFF or WebP file bytes, got {len(data)} bytes starting "
            f"{bytes(data[:8]).hex()}"
        ) from None
    except (OSError, ValueError, SyntaxError) as e:  # Pillow's errors for truncated and corrupt files
        raise InvalidArgument(f"{field}: corrupt or truncated image ({e})") from None
    if order == "bgr":
        frame = frame[:, :, ::-1]
    return np.ascontiguousarray(frame)


def raw_frame(array: np.ndarray, field: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Check a decoded uint8 [H, W, C] frame (C = 3, or 1 grey / 4 with alpha, which are converted) and
    return it as a C-contiguous [H, W, 3] array (no copy when it already is one)."""
    if array.dtype != np.uint8:
        raise InvalidArgument(f"{field}: expected uint8 pixels, got {array.dtype}")
    if array.ndim != 3:
        raise InvalidArgument(f"{field}: expected a [height, width, channels] frame, got shape {list(array.shape)}")
    height, width, channels = array.shape
    if channels not in (1, 3, 4):
        raise InvalidArgument(f"{field}: expected 1, 3 or 4 channels, got {channels}")
    _check_size(field, height, width, max_pixels)
    if channels == 1:
        return np.repeat(array, 3, axis=2)
    if channels == 4:
        array = array[:, :, :3]
    return np.ascontiguousarray(array)


def raw_bytes_frame(data: bytes, height: int, width: int, channels: int, field: str,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A frame from raw HWC uint8 bytes and its stated size (a view of ``data`` when it has 3 channels)."""
    if channels not in (1, 3, 4):
        raise InvalidArgument(f"{field}.channels: expected 1, 3 or 4, got {channels}")
    _check_size(field, height, width, max_pixels)
    expected = height * width * channels
    if len(data) != expected:
        raise InvalidArgument(
            f"{field}.data: expected {height}x{width}x{channels} = {expected} bytes, got {len(data)}"
        )
    return raw_frame(np.frombuffer(data, np.uint8).reshape(height, width, channels), field, max_pixels)
