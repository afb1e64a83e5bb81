"""Writes the sample photographs the README and docs use (`images/astronaut.jpg`, ...).

No model hub or image host is reachable from every machine, so the photographs come from a package that ships
them: scikit-image's `skimage.data` (public-domain and CC0 pictures bundled in its wheel). They are written as
JPEG files so that examples, `curl` and the load harness read them as a user's own files.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Photo:
    """A sample photograph: the file name it is written as and how to get its RGB pixels."""

    filename: str
    load: Callable[[], np.ndarray]
    summary: str


def _skimage(name: str, index: int | None = None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        image = getattr(skimage.data, name)()
        return image[index] if index is not None else image

    return load


PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut.jpg", _skimage("astronaut"), "a person in front of a flag, 512x512"),
    Photo("coffee.jpg", _skimage("coffee"), "a cup of coffee on a table, 600x400"),
    Photo("chelsea.jpg", _skimage("chelsea"), "a cat, 451x300"),
    Photo("rocket.jpg", _skimage("rocket"), "a rocket on its launch pad, 640x427"),
    Photo("motorcycle.jpg", _skimage("stereo_motorcycle", 0), "a motorcycle (left image of a stereo pair), 741x500"),
)
JPEG_QUALITY = 92


def photos_available() -> str | None:
    """None when the photographs can be written, else why not (scikit-image is not installed)."""
    try:
        import skimage.data  # noqa: F401
    except ImportError:
        return "scikit-image is not installed (pip install scikit-image, or the project's [test] extra)"
    return None


def write_photos(directory: Path, *, force: bool = False) -> list[tuple[Path, bool]]:
    """Writes every photograph of :data:`PHOTOS` into ``directory`` as JPEG (quality 92).

    Returns ``(path, written)`` per photograph; an existing file is left as it is unless ``force``. Each file
    is written under a temporary name and renamed. Raises ImportError when scikit-image is missing."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    results: list[tuple[Path, bool]] = []
    for photo in PHOTOS:
        path = directory / photo.filename
        if path.exists() and not force:
            results.append((path, False))
            continue
        rgb = np.ascontiguousarray(photo.load(), dtype=np.uint8)
        fd, tmp = tempfile.mkstemp(prefix=f".{photo.filename}.", suffix=".jpg", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                Image.fromarray(rgb).save(f, format="JPEG", quality=JPEG_QUALITY)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        results.append((path, True))
    return results
