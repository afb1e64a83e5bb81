"""What each image format costs a request to decode (``pipeline/images.py``), against the reader ultralytics
uses for it: OpenCV's ``imdecode`` (pi-heif through Pillow for HEIC, which OpenCV does not read). One 1080p
photograph in every format, the file's size, the header read (``open_encoded``: size checked before any
pixel is decoded) and the decode. One core, in-process.

    python benchmarks/bench_formats.py [--out benchmarks/results/formats.md]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import skimage.data
from _common import machine
from peregrine.server.pipeline import images
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import image_files  # the tests' writers (HEIC through pillow-heif)


def per_call(fn: Callable[[], object], number: int, pick: Callable[[list[float]], float]) -> float:
    """Seconds one call of ``fn`` takes: ``pick`` (min or median) of 5 runs of ``number`` calls."""
    return pick(timeit.repeat(fn, number=number, repeat=5)) / number


def heic_reference(data: bytes) -> np.ndarray:
    from pi_heif import open_heif

    return np.asarray(open_heif(io.BytesIO(data)).to_pillow().convert("RGB"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    photo = cv2.resize(skimage.data.astronaut(), (1920, 1080), interpolation=cv2.INTER_AREA)
    files = {
        "JPEG (quality 90)": image_files.encode(photo, "JPEG", quality=90),
        "PNG": image_files.encode(photo, "PNG"),
        "WebP (quality 80)": image_files.encode(photo, "WEBP", quality=80),
        "AVIF (quality 75)": image_files.encode(photo, "AVIF", quality=75),
        "HEIC (quality 90)": image_files.heic(photo),
        "JPEG 2000 (lossless)": image_files.encode(photo, "JPEG2000"),
        "GIF (palette)": image_files.encode(photo, "GIF"),
    }
    lines = [f"Machine: {machine()}. One 1080p photograph (scikit-image's astronaut, resized) in each format. "
             "Header: `open_encoded`, best of 5 x 200; decode: `decode_image` and the reference reader, "
             "medians of 5 x 5.", "",
             "| format | file KB | header µs | decode ms | reference reader | reference ms | decode / reference |",
             "|---|---|---|---|---|---|---|"]
    for label, data in files.items():
        header = per_call(lambda d=data: images.open_encoded(d, "x"), 200, min)  # type: ignore[misc]
        decode = per_call(lambda d=data: images.decode_image(d, "x"), 5, statistics.median)  # type: ignore[misc]
        if label.startswith("HEIC"):
            name, reference = "Pillow + pi-heif", lambda d=data: heic_reference(d)
        else:
            name, reference = "cv2.imdecode", lambda d=data: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR)
        ref = per_call(reference, 5, statistics.median)
        lines.append(f"| {label} | {len(data) / 1024:.0f} | {header * 1e6:.0f} | {decode * 1e3:.2f} | {name} | "
                     f"{ref * 1e3:.2f} | {decode / ref:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text("# Decoding each image format\n\n`python benchmarks/bench_formats.py`\n\n" + text)


if __name__ == "__main__":
    Image.init()
    main()
