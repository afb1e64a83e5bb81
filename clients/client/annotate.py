"""Pictures of detections: boxes, labels and scores drawn on images (OpenCV).

``draw_detections(image, detections)`` draws on a copy of a BGR image; ``annotate_image(src, detections, dst)``
reads a file, draws and writes the result. ``peregrine-annotate`` (``python -m peregrine.client.annotate``)
does it for image files, with the detections from a server's ``Detect`` answer or from a JSON Lines results
file (one object per image: ``{"image": "a.jpg", "detections": [{"x1": .., "y1": .., "x2": .., "y2": ..,
"score": .., "class_id": .., "label": ".."}, ...]}``; ``path`` is accepted in place of ``image``).

Each class has its own colour (ultralytics' palette, so pictures look as users of that library expect); a
label ``"<name> <score>"`` sits on a filled tab above the box's top-left corner (inside the box when the box
touches the top edge). Lower scores are drawn first, so the best box of a cluster stays on top.

Needs OpenCV (``opencv-python-headless``, the project's ``[annotate]`` extra) besides the client.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .detection import Detection, DetectionClient
from .errors import PeregrineClientError
from .version import client_version

# ultralytics' 20-colour palette (utils/plotting.py Colors), as hex RGB.
PALETTE_HEX = ("FF3838", "FF9D97", "FF701F", "FFB21D", "CFD231", "48F90A", "92CC17", "3DDB86", "1A9334", "00D4BB",
               "2C99A8", "00C2FF", "344593", "6473FF", "0018EC", "8438FF", "520085", "CB38FF", "FF95C8", "FF37C7")
FONT = cv2.FONT_HERSHEY_SIMPLEX
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def colour_of(class_id: int) -> tuple[int, int, int]:
    """The BGR colour of a class: the palette's colour ``class_id % 20``."""
    h = PALETTE_HEX[int(class_id) % len(PALETTE_HEX)]
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return (b, g, r)


def text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light tabs, white on dark ones (ITU-R BT.601 luma of the BGR background)."""
    b, g, r = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


@dataclass(frozen=True)
class Style:
    """Line thickness and font scale; ``None`` picks them from the image size (thicker on larger images)."""

    thickness: int | None = None
    font_scale: float | None = None

    def resolve(self, height: int, width: int) -> tuple[int, float]:
        thickness = self.thickness or max(1, round((height + width) / 2 * 0.003))
        font_scale = self.font_scale or max(0.4, thickness / 4)
        return thickness, font_scale


def label_text(d: Detection) -> str:
    """``"<label> <score>"``: the class name (``class<i>`` when there is none) and the score to 2 decimals."""
    return f"{d.label or f'class{d.class_id}'} {d.score:.2f}"


def draw_detections(image: np.ndarray, detections: Iterable[Detection], style: Style = Style()) -> np.ndarray:
    """A copy of ``image`` (uint8 BGR ``[H, W, 3]``, or grey ``[H, W]``, drawn in colour) with each detection's
    box (corners rounded to whole pixels, clipped to the image), colour by class, and label tab drawn.

    Raises ValueError for an image that is not uint8 ``[H, W]`` or ``[H, W, 3]``."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"image: expected uint8 [H, W, 3] BGR or [H, W] grey, got {image.dtype} {list(image.shape)}")
    out = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else np.ascontiguousarray(image).copy()
    height, width = out.shape[:2]
    thickness, font_scale = style.resolve(height, width)
    text_thickness = max(1, thickness - 1)
    for d in sorted(detections, key=lambda d: d.score):
        x1 = min(max(round(d.x1), 0), width - 1)
        y1 = min(max(round(d.y1), 0), height - 1)
        x2 = min(max(round(d.x2), 0), width - 1)
        y2 = min(max(round(d.y2), 0), height - 1)
        colour = colour_of(d.class_id)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_8)
        text = label_text(d)
        (tw, th), baseline = cv2.getTextSize(text, FONT, font_scale, text_thickness)
        tab_h = th + baseline + 2
        # Above the box when there is room, else just inside its top edge.
        top = y1 - tab_h if y1 - tab_h >= 0 else y1
        cv2.rectangle(out, (x1, top), (x1 + tw + 2, top + tab_h), colour, cv2.FILLED, cv2.LINE_8)
        cv2.putText(out, text, (x1 + 1, top + th + 1), FONT, font_scale, text_colour(colour), text_thickness,
                    cv2.LINE_AA)
    return out


def annotate_image(src: str | Path, detections: Iterable[Detection], dst: str | Path,
                   style: Style = Style()) -> Path:
    """Reads image file ``src``, draws ``detections`` (in its pixels) and writes ``dst`` (format from its suffix;
    parent directories are made). Returns ``dst``. Raises OSError when ``src`` cannot be read as an image or
    ``dst`` cannot be written."""
    image = cv2.imread(str(src), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read {src} as an image")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(dst), draw_detections(image, detections, style)):
        raise OSError(f"cannot write {dst} (is its suffix an image format OpenCV writes?)")
    return dst


def detection_of(obj: Mapping[str, Any]) -> Detection:
    """A :class:`Detection` from a JSON object with x1, y1, x2, y2, score, class_id and optional label.
    Raises ValueError naming the missing or malformed field."""
    try:
        return Detection(float(obj["x1"]), float(obj["y1"]), float(obj["x2"]), float(obj["y2"]),
                         float(obj["score"]), int(obj["class_id"]), str(obj.get("label", "")))
    except KeyError as e:
        raise ValueError(f"detection: missing field {e.args[0]!r} (expected x1, y1, x2, y2, score, class_id)") from None
    except (TypeError, ValueError) as e:
        raise ValueError(f"detection: {e}") from None


def read_results(path: Path) -> Iterator[tuple[Path, list[Detection]]]:
    """``(image path, detections)`` per line of a JSON Lines results file; blank lines are skipped. A relative
    image path is taken from the working directory, or else from the results file's directory.
    Raises ValueError with the line number for a line that is not such an object."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                image = record.get("image", record.get("path"))
                if not isinstance(image, str):
                    raise ValueError("expected an 'image' (or 'path') string")
                detections = [detection_of(d) for d in record.get("detections", [])]
            except (ValueError, AttributeError) as e:
                raise ValueError(f"{path}:{number}: {e}") from None
            image_path = Path(image)
            if not image_path.is_absolute() and not image_path.exists():
                image_path = path.parent / image_path
            yield image_path, detections


def _output_path(src: Path, out: Path, single: bool) -> Path:
    if single and out.suffix.lower() in IMAGE_SUFFIXES:
        return out
    return out / src.name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peregrine-annotate",
        description="Draw detections (boxes, labels, scores) on images: asked of a Peregrine server's Detect, or "
        "read from a JSON Lines results file.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {client_version()}")
    parser.add_argument("images", nargs="*", type=Path,
                        help="image files (with --results: only these of the file's images; default all)")
    parser.add_argument("-o", "--output", type=Path, default=Path("annotated"),
                        help="output directory, or a file name when there is one image (default: annotated/)")
    parser.add_argument("--results", type=Path, help="a JSON Lines file of detections instead of asking a server")
    parser.add_argument("-u", "--url", default="127.0.0.1:8001", help="server host:port (default: 127.0.0.1:8001)")
    parser.add_argument("--model", default="", help="detection pipeline (default: the server's only one)")
    parser.add_argument("--score-threshold", type=float, help="drop boxes below this score")
    parser.add_argument("--deadline-s", type=float, default=10.0, help="each Detect call's deadline (default: 10)")
    parser.add_argument("--thickness", type=int, help="box line thickness in pixels (default: from the image size)")
    return parser


def _work(args: argparse.Namespace) -> Iterator[tuple[Path, list[Detection]]]:
    if args.results is not None:
        wanted = {p.resolve() for p in args.images}
        for image, detections in read_results(args.results):
            if not wanted or image.resolve() in wanted:
                if args.score_threshold is not None:
                    detections = [d for d in detections if d.score >= args.score_threshold]
                yield image, detections
        return
    with DetectionClient(args.url, deadline_s=args.deadline_s) as client:
        for image in args.images:
            yield image, client.detect(image, model=args.model, score_threshold=args.score_threshold)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI. Exit status 0 done, 1 a server call or a file failed (the others are still drawn),
    2 bad arguments."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.results is None and not args.images:
        parser.error("give image files, or --results FILE")
    if args.results is not None and not args.results.is_file():
        parser.error(f"--results {args.results}: no such file")
    single = len(args.images) == 1
    style = Style(thickness=args.thickness)
    status = 0
    try:
        for image, detections in _work(args):
            try:
                dst = annotate_image(image, detections, _output_path(image, args.output, single), style)
            except OSError as e:
                print(f"peregrine-annotate: {e}", file=sys.stderr)
                status = 1
                continue
            print(f"{dst}  {len(detections)} boxes")
    except PeregrineClientError as e:
        print(f"peregrine-annotate: {e.code.name}: {e.details}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        print(f"peregrine-annotate: {e}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
