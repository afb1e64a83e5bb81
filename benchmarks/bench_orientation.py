"""What reading and applying a photograph's EXIF orientation costs a JPEG request (``pipeline/images.py``):
the orientation read from the file's header (every JPEG request pays it), and the decode with the photograph
turned as its tag says, against the same decode of a file without the tag. One core, in-process.

    python benchmarks/bench_orientation.py [--out benchmarks/results/orientation.md]
"""

from __future__ import annotations

import argparse
import io
import statistics
import timeit
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import skimage.data
from _common import machine
from peregrine.server.pipeline import images
from PIL import Image


def jpeg(rgb: np.ndarray, orientation: int | None) -> bytes:
    """A 90%-quality JPEG of ``rgb``, with an EXIF block stating ``orientation`` (None: no EXIF at all)."""
    out = io.BytesIO()
    options = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        exif[0x010F] = "camera"  # Make: the block a camera writes holds more than the orientation
        options["exif"] = exif.tobytes()
    Image.fromarray(rgb).save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def per_call(fn: Callable[[], object], number: int, pick: Callable[[list[float]], float]) -> float:
    """Seconds one call of ``fn`` takes: ``pick`` (min or median) of 5 runs of ``number`` calls."""
    return pick(timeit.repeat(fn, number=number, repeat=5)) / number


def row(label: str, data: bytes, base: float | None) -> tuple[str, float]:
    read = per_call(lambda: images._orientation(images._jpeg_exif(data)), 10000, min)
    header = per_call(lambda: images.open_encoded(data, "x"), 2000, min)
    decode = per_call(lambda: images.decode_image(data, "x"), 20, statistics.median)
    ratio = decode / (base or decode)
    return f"| {label} | {read * 1e6:.1f} | {header * 1e6:.1f} | {decode * 1e3:.2f} | {ratio:.2f} |", decode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    photo = cv2.resize(skimage.data.astronaut(), (1920, 1080), interpolation=cv2.INTER_AREA)
    lines = [f"Machine: {machine()}. 1080p JPEG (quality 90). Header: `open_encoded` (size and orientation "
             "read, best of 5 x 2000); decode: `decode_image`, median of 5 x 20.", "",
             "| file | orientation read µs | header µs | decode ms | decode / untagged |", "|---|---|---|---|---|"]
    base = None
    for label, orientation in (("no EXIF", None), ("EXIF, orientation 1", 1), ("EXIF, orientation 3 (half turn)", 3),
                               ("EXIF, orientation 6 (quarter turn)", 6)):
        line, decode = row(label, jpeg(photo, orientation), base)
        base = base or decode
        lines.append(line)
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
