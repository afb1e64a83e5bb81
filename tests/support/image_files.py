"""Image files for the tests, written with Pillow (and pillow-heif for HEIC: the server reads HEIC with
pi-heif, which has no encoder)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image


def encode(rgb: np.ndarray, fmt: str, mode: str = "RGB", **options: Any) -> bytes:
    """``rgb`` (uint8 [H, W, 3]) as a ``fmt`` file in Pillow ``mode``; "I;16": its first channel times 257."""
    img = Image.fromarray(rgb)
    if mode == "I;16":
        img = Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257)
    elif mode != "RGB":
        img = img.convert(mode)
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def heic(rgb: np.ndarray, quality: int = 90) -> bytes:
    """``rgb`` as a HEIC file."""
    import pillow_heif

    out = io.BytesIO()
    pillow_heif.from_pillow(Image.fromarray(rgb)).save(out, quality=quality)
    return out.getvalue()
