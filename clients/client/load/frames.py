"""Payloads of the detection modes: real images (files, directories of them, or scikit-image's
photographs) turned into camera frames of a given size, JPEG- or PNG-encoded, or raw RGB.

Decoding, resizing and encoding use Pillow.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..detection import ImageInput

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle")
Encoding = Literal["jpeg", "png", "raw"]
_MAGIC = {"jpeg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}


@dataclass(frozen=True)
class FramePayload:
    """The images a run sends in turn (encoded bytes, or uint8 [H, W, 3] arrays for raw frames) and a line
    saying what they are."""

    images: list[ImageInput]
    description: str


def parse_frame_size(text: str) -> tuple[int, int]:
    """``"1920x1080"`` -> (width, height). Raises ValueError for anything else."""
    w, sep, h = text.lower().partition("x")
    try:
        size = (int(w), int(h))
    except ValueError:
        size = (0, 0)
    if not sep or min(size) < 1:
        raise ValueError(f"--frame-size {text}: expected WIDTHxHEIGHT in pixels, e.g. 1920x1080")
    return size


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """The image files named, directories expanded to the image files directly in them (sorted by name).

    Raises FileNotFoundError for a path that does not exist, ValueError when no image file is found."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    if not found:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, paths))}")
    return found


def sample_photos() -> list[np.ndarray]:
    """scikit-image's photographs (RGB uint8, 300 to 640 pixels a side). Raises ImportError without it."""
    try:
        import skimage.data
    except ImportError:
        raise ImportError("no images given and scikit-image is not installed: give --image FILE|DIR, "
                          "or pip install scikit-image") from None
    photos = []
    for name in SAMPLE_PHOTOS:
        if name == "motorcycle":
            photos.append(skimage.data.stereo_motorcycle()[0])
        else:
            photos.append(getattr(skimage.data, name)())
    return [np.ascontiguousarray(p[..., :3]) for p in photos]


def _pil() -> Any:
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ImportError("detection payloads need Pillow (pip install pillow)") from None
    return Image, ImageOps


def _frame(source: bytes | np.ndarray, frame_size: tuple[int, int] | None, encoding: Encoding,
           quality: int) -> ImageInput:
    Image, ImageOps = _pil()
    if isinstance(source, bytes):
        if frame_size is None and encoding != "raw" and source.startswith(_MAGIC[encoding]):
            return source  # already what is asked for: sent as the file is
        img = Image.open(io.BytesIO(source)).convert("RGB")
    else:
        img = Image.fromarray(source, "RGB")
    if frame_size is not None and img.size != frame_size:
        # Cover the frame and crop the middle, as a camera would frame the scene: no stretching, no bars.
        img = ImageOps.fit(img, frame_size, method=Image.Resampling.BILINEAR)
    if encoding == "raw":
        return np.ascontiguousarray(np.asarray(img, np.uint8))
    buf = io.BytesIO()
    if encoding == "jpeg":
        img.save(buf, "JPEG", quality=quality)
    else:
        img.save(buf, "PNG")
    return buf.getvalue()


def frame_payload(paths: Sequence[str | Path] = (), frame_size: tuple[int, int] | None = None,
                  encoding: Encoding = "jpeg", quality: int = 90) -> FramePayload:
    """Frames from the image files or directories in ``paths`` (scikit-image's photographs when empty),
    each fitted to ``frame_size`` (width, height; None: as they are) and JPEG/PNG-encoded or raw.
    A file that already is in the asked encoding and needs no resizing is sent as it is.

    Raises FileNotFoundError/ValueError (see :func:`image_files`), ImportError without Pillow (or without
    scikit-image when no path is given), OSError for a file Pillow cannot read."""
    if encoding not in ("jpeg", "png", "raw"):
        raise ValueError(f"encoding: expected jpeg, png or raw, got '{encoding}'")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality: expected 1..100, got {quality}")
    sources: list[bytes | np.ndarray]
    if paths:
        files = image_files(paths)
        sources = [f.read_bytes() for f in files]
        origin = f"{len(files)} image file{'s' if len(files) > 1 else ''}"
    else:
        sources = list(sample_photos())
        origin = f"{len(sources)} scikit-image photographs"
    images = [_frame(s, frame_size, encoding, quality) for s in sources]
    sizes = [len(i) if isinstance(i, bytes) else int(np.asarray(i).nbytes) for i in images]
    size = f"{frame_size[0]}x{frame_size[1]}" if frame_size else "at their own sizes"
    what = f"JPEG q{quality}" if encoding == "jpeg" else encoding.upper() if encoding == "png" else "raw RGB"
    if all(i is s for i, s in zip(images, sources, strict=True)):
        what = f"{encoding.upper()} files as they are,"
    return FramePayload(images, f"{origin}, {what} {size}, {np.mean(sizes) / 1024:.0f} KiB mean")
