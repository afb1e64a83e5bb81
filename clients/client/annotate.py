"""Pictures of detections: boxes, labels and scores drawn on images and videos (OpenCV).

``draw_detections(image, detections)`` draws on a copy of a BGR image; ``annotate_image(src, detections, dst)``
reads a file, draws and writes the result. ``annotate_video(src, detections_by_frame, dst)`` does it for every
frame of a video file; ``detect_video(client, src, dst)`` asks a server for the boxes of each frame over one
``DetectStream`` (frames pipelined, answers in order) and writes the annotated video.

``peregrine-annotate`` (``python -m peregrine.client.annotate``) does it for image and video files (a video is
told by its suffix: .mp4, .avi, .mkv, .mov, .webm), with the detections from a server or from a JSON Lines
results file: one object per image (``{"image": "a.jpg", "detections": [{"x1": .., "y1": .., "x2": ..,
"y2": .., "score": .., "class_id": .., "label": ".."}, ...]}``; ``path`` or ``source`` in place of ``image``,
``boxes`` in place of ``detections``: the lines ``peregrine batch`` and jobs write), or for a video one line
per frame as a video job or ``peregrine batch`` writes them (``{"source": "frame 12", "boxes": [...]}``).

Each class has its own colour (ultralytics' palette, so pictures look as users of that library expect); a
label ``"<name> <score>"`` sits on a filled tab above the box's top-left corner (inside the box when the box
touches the top edge). Lower scores are drawn first, so the best box of a cluster stays on top.

A video is written with the frame rate and size of its source, every frame of it: with ``--stride N`` every
N-th frame (0, N, 2N, ...) is asked for and drawn and the frames between are written unchanged, so the video
keeps its length and timing. The codec follows the output's container (:data:`FOURCC_BY_SUFFIX`; ``--fourcc``
picks another); where OpenCV has no encoder for it the call fails naming the codec, before any frame is read.

Needs OpenCV (``opencv-python-headless``, the project's ``[annotate]`` extra) besides the client.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import queue
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np

from .detection import Detection, DetectionClient, FrameResult
from .errors import PeregrineClientError
from .keypoints import keypoints_of, limbs, polygon_of, shown
from .version import client_version

# ultralytics' 20-colour palette (utils/plotting.py Colors), as hex RGB.
PALETTE_HEX = ("FF3838", "FF9D97", "FF701F", "FFB21D", "CFD231", "48F90A", "92CC17", "3DDB86", "1A9334", "00D4BB",
               "2C99A8", "00C2FF", "344593", "6473FF", "0018EC", "8438FF", "520085", "CB38FF", "FF95C8", "FF37C7")
FONT = cv2.FONT_HERSHEY_SIMPLEX
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")
# The codec (OpenCV VideoWriter fourcc) each container is written with: MPEG-4 Part 2 in MP4 and QuickTime
# (OpenCV's wheels encode it everywhere; they bring no H.264 encoder), Motion JPEG in AVI, lossless FFV1 in
# Matroska, VP8 in WebM.
FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "FFV1", ".webm": "VP80"}
# Frame rate written when a video does not say its own.
DEFAULT_FPS = 30.0
# Frames of a video sent ahead of their answers (a DetectStream's max_in_flight: the server allows 1..64).
DEFAULT_IN_FLIGHT = 8
MAX_IN_FLIGHT = 64
_FRAME_SOURCE = re.compile(r"frame (\d+)")


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


def _draw_keypoints(out: np.ndarray, d: Detection, colour: tuple[int, int, int], thickness: int) -> None:
    height, width = out.shape[:2]
    at = [(min(max(round(p.x), 0), width - 1), min(max(round(p.y), 0), height - 1)) for p in d.keypoints]
    for a, b in limbs(d.keypoints):
        cv2.line(out, at[a], at[b], colour, thickness, cv2.LINE_AA)
    for point, visible in zip(at, shown(d.keypoints), strict=True):
        if visible:
            cv2.circle(out, point, thickness + 2, colour, cv2.FILLED, cv2.LINE_AA)


def draw_detections(image: np.ndarray, detections: Iterable[Detection], style: Style = Style()) -> np.ndarray:
    """A copy of ``image`` (uint8 BGR ``[H, W, 3]``, or grey ``[H, W]``, drawn in colour) with each detection's
    box (corners rounded to whole pixels, clipped to the image), colour by class, and label tab drawn; a pose
    model's keypoints as dots (those whose visibility score is at least 0.5), joined by COCO's person skeleton
    when there are 17; a segmentation model's mask polygon as a closed outline.

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
        if d.polygon:  # a segmentation model's mask outline
            outline = np.round(np.array(d.polygon, np.float64)).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(out, [outline], True, colour, max(1, thickness - 1), cv2.LINE_AA)
        if d.keypoints:
            _draw_keypoints(out, d, colour, thickness)
        text = label_text(d)
        (tw, th), baseline = cv2.getTextSize(text, FONT, font_scale, text_thickness)
        tab_h = th + baseline + 2
        # Above the box when there is room, else just inside its top edge.
        top = y1 - tab_h if y1 - tab_h >= 0 else y1
        cv2.rectangle(out, (x1, top), (x1 + tw + 2, top + tab_h), colour, cv2.FILLED, cv2.LINE_8)
        cv2.putText(out, text, (x1 + 1, top + th + 1), FONT, font_scale, text_colour(colour), text_thickness,
                    cv2.LINE_AA)
    return out


def annotate_image(src: str | Path | bytes | np.ndarray, detections: Iterable[Detection], dst: str | Path,
                   style: Style = Style()) -> Path:
    """Draws ``detections`` (in its pixels) on image ``src``: a file, a file's bytes, or a uint8 BGR (or grey)
    array; and writes ``dst`` (format from its suffix; parent directories are made). ``dst`` is written under
    a temporary name beside it and renamed, so it is whole or absent. Returns ``dst``. Raises OSError when
    ``src`` cannot be read as an image or ``dst`` cannot be written."""
    if isinstance(src, np.ndarray):
        image: np.ndarray | None = src
    elif isinstance(src, bytes):
        image = cv2.imdecode(np.frombuffer(src, np.uint8), cv2.IMREAD_COLOR) if src else None
    else:
        image = cv2.imread(str(src), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read {'the bytes given' if isinstance(src, bytes) else src} as an image")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(f".{dst.stem}.partial{dst.suffix}")
    try:
        written = cv2.imwrite(str(partial), draw_detections(image, detections, style))
    except cv2.error:
        written = False
    if not written:
        partial.unlink(missing_ok=True)
        raise OSError(f"cannot write {dst} (is its suffix an image format OpenCV writes?)")
    os.replace(partial, dst)
    return dst


def detection_of(obj: Mapping[str, Any]) -> Detection:
    """A :class:`Detection` from a JSON object with x1, y1, x2, y2, score, class_id and optional label,
    keypoints (``[[x, y, score], ...]`` or ``[[x, y], ...]``) and polygon (``[[x, y], ...]``). Raises
    ValueError naming the missing or malformed field."""
    try:
        return Detection(float(obj["x1"]), float(obj["y1"]), float(obj["x2"]), float(obj["y2"]),
                         float(obj["score"]), int(obj["class_id"]), str(obj.get("label", "")),
                         keypoints_of(obj.get("keypoints", ())), polygon_of(obj.get("polygon", ())))
    except KeyError as e:
        raise ValueError(f"detection: missing field {e.args[0]!r} (expected x1, y1, x2, y2, score, class_id)") from None
    except (TypeError, ValueError, IndexError) as e:
        raise ValueError(f"detection: {e}") from None


def _boxes_of(record: Mapping[str, Any]) -> list[Detection]:
    boxes = record.get("detections", record.get("boxes", []))
    if not isinstance(boxes, list):
        raise ValueError(f"'detections': expected a list of boxes, got {type(boxes).__name__}")
    return [detection_of(d) for d in boxes]


def read_results(path: Path) -> Iterator[tuple[Path, list[Detection]]]:
    """``(image path, detections)`` per line of a JSON Lines results file; blank lines are skipped, and so are
    lines with an ``error`` (images the server failed: there is nothing to draw). The image is ``image``,
    ``path`` or ``source``; the boxes ``detections`` or ``boxes``. A relative image path is taken from the
    working directory, or else from the results file's directory.
    Raises ValueError with the line number for a line that is not such an object."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if "error" in record:
                    continue
                image = record.get("image", record.get("path", record.get("source")))
                if not isinstance(image, str):
                    raise ValueError("expected an 'image' (or 'path', 'source') string")
                detections = _boxes_of(record)
            except (ValueError, AttributeError) as e:
                raise ValueError(f"{path}:{number}: {e}") from None
            image_path = Path(image)
            if not image_path.is_absolute() and not image_path.exists():
                image_path = path.parent / image_path
            yield image_path, detections


def read_video_results(path: Path, score_threshold: float | None = None) -> dict[int, list[Detection]]:
    """A video's detections by frame number, from the JSON Lines a video job or ``peregrine batch`` writes for
    it: one line per frame asked for, its ``source`` ``"frame <n>"`` (n counts every frame of the video from 0;
    the line's ``index`` counts only the frames asked for, so with a stride it is not the frame) and its
    ``boxes`` (or ``detections``). Blank lines and lines with an ``error`` are skipped: those frames are
    written unchanged. Boxes scored below ``score_threshold`` are left out.
    Raises ValueError with the line number for a line that is not such an object."""
    frames: dict[int, list[Detection]] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if "error" in record:
                    continue
                source = record.get("source")
                match = _FRAME_SOURCE.fullmatch(source) if isinstance(source, str) else None
                if match is None:
                    raise ValueError(f"'source': expected \"frame <n>\" (a video's line), got {source!r}")
                detections = _boxes_of(record)
            except (ValueError, AttributeError) as e:
                raise ValueError(f"{path}:{number}: {e}") from None
            if score_threshold is not None:
                detections = [d for d in detections if d.score >= score_threshold]
            frames[int(match.group(1))] = detections
    return frames


# -- videos ----------------------------------------------------------------------------------------
def is_video(path: str | Path) -> bool:
    """Whether a file is taken for a video: its suffix is one of :data:`VIDEO_SUFFIXES`."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoSummary:
    """What was written: ``frames`` in all, ``annotated`` of them drawn with detections (``boxes`` boxes in
    all), at ``fps`` frames per second and ``size`` ``(width, height)`` pixels, as the source."""

    path: Path
    frames: int
    annotated: int
    boxes: int
    fps: float
    size: tuple[int, int]


class VideoReader:
    """A video file's frames (uint8 BGR ``[H, W, 3]``, in order) with its frame rate, size and frame count
    (``frames``: the container's figure, which may be approximate, 0 when unknown). ``DEFAULT_FPS`` stands
    for a frame rate the file does not give. Raises OSError when OpenCV cannot open ``path`` as a video."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise OSError(f"cannot read {path}: no such file")
        self._capture = cv2.VideoCapture(str(path))
        if not self._capture.isOpened():
            raise OSError(f"cannot read {path} as a video (OpenCV's FFmpeg does not open it)")
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if math.isfinite(fps) and fps > 0 else DEFAULT_FPS
        self.size = (int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                     int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        self.frames = max(0, int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT)))

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            ok, frame = self._capture.read()
            if not ok:
                return
            yield frame

    def close(self) -> None:
        self._capture.release()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def video_writer(dst: Path, fps: float, size: tuple[int, int], fourcc: str | None = None, *,
                 name: Path | None = None) -> Any:
    """An open ``cv2.VideoWriter`` of ``size`` ``(width, height)`` frames at ``fps``, with ``fourcc`` or the
    codec of ``dst``'s container (:data:`FOURCC_BY_SUFFIX`); ``name``: what messages call the file (default
    ``dst``). Raises ValueError for a suffix that is no video container or a fourcc that is not 4 characters,
    OSError when OpenCV has no such encoder here or cannot write ``dst``."""
    name = name or dst
    suffix = dst.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"{name}: expected a video suffix ({', '.join(VIDEO_SUFFIXES)}), got '{suffix}'")
    fourcc = fourcc or FOURCC_BY_SUFFIX[suffix]
    if len(fourcc) != 4:
        raise ValueError(f"fourcc: expected 4 characters (mp4v, MJPG, FFV1, ...), got {fourcc!r}")
    writer = cv2.VideoWriter(str(dst), cv2.VideoWriter.fourcc(*fourcc), fps, size)
    if not writer.isOpened():
        writer.release()
        raise OSError(f"cannot write {name}: OpenCV here has no '{fourcc}' encoder for {suffix} files (or the "
                      f"directory is not writable); give another --fourcc, or another container: "
                      + ", ".join(f"{s} {c}" for s, c in FOURCC_BY_SUFFIX.items()))
    return writer


def _write_video(reader: VideoReader, frames: Iterable[tuple[np.ndarray, list[Detection] | None]], dst: Path,
                 style: Style, fourcc: str | None, progress: Callable[[int, int], None] | None) -> VideoSummary:
    """Writes ``frames`` (each drawn with its detections, or as it is for None) to ``dst``, whole or not at
    all: into a temporary file beside it, renamed when the last frame is in."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(f".{dst.stem}.partial{dst.suffix}")
    writer = video_writer(partial, reader.fps, reader.size, fourcc, name=dst)
    written = annotated = boxes = 0
    try:
        for image, detections in frames:
            if (image.shape[1], image.shape[0]) != reader.size:
                raise OSError(f"{reader.path}: frame {written} is {image.shape[1]}x{image.shape[0]}, the video "
                              f"{reader.size[0]}x{reader.size[1]}")
            if detections is not None:
                image = draw_detections(image, detections, style)
                annotated += 1
                boxes += len(detections)
            writer.write(image)
            written += 1
            if progress is not None:
                progress(written, reader.frames)
    except BaseException:
        writer.release()
        partial.unlink(missing_ok=True)
        raise
    writer.release()
    if written == 0:
        partial.unlink(missing_ok=True)
        raise OSError(f"{reader.path}: no frame could be read")
    os.replace(partial, dst)
    return VideoSummary(dst, written, annotated, boxes, reader.fps, reader.size)


def annotate_video(src: str | Path, detections: Mapping[int, Iterable[Detection]], dst: str | Path,
                   style: Style = Style(), fourcc: str | None = None,
                   progress: Callable[[int, int], None] | None = None) -> VideoSummary:
    """Reads video ``src`` and writes ``dst`` with the same frame rate, size and frames, frame n drawn with
    ``detections[n]`` (frames are numbered from 0; a frame with no entry is written unchanged). The codec is
    ``fourcc`` or ``dst``'s container's (:data:`FOURCC_BY_SUFFIX`); ``progress(frames written, frames in the
    source or 0)`` is called after each frame. ``dst`` appears only once whole.
    Raises OSError when ``src`` cannot be read or ``dst`` written, ValueError as :func:`video_writer`."""
    with VideoReader(src) as reader:
        frames = ((image, list(detections[n]) if n in detections else None) for n, image in enumerate(reader))
        return _write_video(reader, frames, Path(dst), style, fourcc, progress)


def detect_video(client: DetectionClient, src: str | Path, dst: str | Path, *, model: str = "", stride: int = 1,
                 in_flight: int = DEFAULT_IN_FLIGHT, score_threshold: float | None = None,
                 deadline_s: float | None = None, style: Style = Style(), fourcc: str | None = None,
                 progress: Callable[[int, int], None] | None = None) -> VideoSummary:
    """Annotates video ``src`` into ``dst`` (as :func:`annotate_video`) with the detections a server finds in
    every ``stride``-th frame (0, stride, 2 * stride, ...; the frames between are written unchanged).

    The frames go over one ``DetectStream``, raw (RGB, the pipelines' default ``frame_channel_order``), at most
    ``in_flight`` of them (1..64) sent and not yet answered, and the server is asked to run that many at once,
    so it never has to drop one (frames waiting for their answer, and the frames between them, are held here:
    at most ``2 * in_flight``). A frame the stream does not answer with boxes (dropped, past its deadline,
    failed) is asked again alone with ``Detect``. ``deadline_s``: each frame's (None: the client's).
    Raises ValueError for a stride or in_flight out of range, PeregrineClientError when the server refuses a
    frame (unknown model, bad options) or cannot be reached, and as :func:`annotate_video`."""
    if stride < 1:
        raise ValueError(f"stride: expected an integer >= 1, got {stride}")
    if not 1 <= in_flight <= MAX_IN_FLIGHT:
        raise ValueError(f"in_flight: expected 1..{MAX_IN_FLIGHT}, got {in_flight}")
    with VideoReader(src) as reader:
        frames = _detected_frames(client, reader, model, stride, in_flight, score_threshold, deadline_s)
        try:
            return _write_video(reader, frames, Path(dst), style, fourcc, progress)
        finally:
            frames.close()


def _detected_frames(client: DetectionClient, frames: Iterable[np.ndarray], model: str, stride: int, in_flight: int,
                     score_threshold: float | None, deadline_s: float | None
                     ) -> Generator[tuple[np.ndarray, list[Detection] | None], None, None]:
    """Every frame, in order, with the server's detections for the asked ones (None for the others)."""
    outbox: queue.SimpleQueue[np.ndarray | None] = queue.SimpleQueue()

    def requests() -> Iterator[np.ndarray]:  # pulled by gRPC's own thread
        while (frame := outbox.get()) is not None:
            yield frame

    # stream() is a generator: closing it cancels the call.
    results = cast(Generator[FrameResult, None, None], client.stream(
        requests(), model=model, max_in_flight=in_flight, score_threshold=score_threshold, deadline_s=deadline_s))
    held: deque[tuple[np.ndarray, bool]] = deque()  # read and not yet given back: (frame, asked for)
    unanswered = 0

    def answer() -> tuple[np.ndarray, list[Detection]]:
        frame, asked = held.popleft()
        assert asked
        result: FrameResult | None = next(results, None)
        if result is not None and result.ok:
            return frame, result.detections
        # Dropped, past its deadline, failed, or the stream ended first (a server shutting down): once more,
        # alone; Detect retries UNAVAILABLE and raises what the server says of this frame.
        return frame, client.detect(_rgb(frame), model=model, score_threshold=score_threshold, deadline_s=deadline_s)

    try:
        for n, frame in enumerate(frames):
            asked = n % stride == 0
            held.append((frame, asked))
            if asked:
                outbox.put(_rgb(frame))
                unanswered += 1
            while held and not held[0][1]:
                yield held.popleft()[0], None
            while unanswered and (unanswered >= in_flight or len(held) >= 2 * in_flight):
                yield answer()
                unanswered -= 1
                while held and not held[0][1]:
                    yield held.popleft()[0], None
        outbox.put(None)  # the end of the input: the stream half-closes once the frames before are sent
        while held:
            if held[0][1]:
                yield answer()
            else:
                yield held.popleft()[0], None
    finally:
        outbox.put(None)
        results.close()  # cancels the stream when stopped early


def _rgb(frame: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(frame[:, :, ::-1])


# -- the command -----------------------------------------------------------------------------------
def _output_path(src: Path, out: Path, single: bool) -> Path:
    suffixes = VIDEO_SUFFIXES if is_video(src) else IMAGE_SUFFIXES
    if single and out.suffix.lower() in suffixes:
        return out
    return out / src.name


class _ProgressLine:
    """``<video>: <n>/<total> frames`` on stderr, rewritten in place at most twice a second; only on a
    terminal (a log gets the summary line alone)."""

    def __init__(self, name: Path) -> None:
        self.name = name
        self.shown = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.shown and (now - self.last >= 0.5 or done == total):
            self.last = now
            print(f"\r{self.name}: {done}/{total or '?'} frames", end="", file=sys.stderr, flush=True)

    def end(self) -> None:
        if self.shown and self.last:
            print(file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peregrine-annotate",
        description="Draw detections (boxes, labels, scores) on images and videos: asked of a Peregrine "
        "server, or read from a JSON Lines results file.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {client_version()}")
    parser.add_argument("images", nargs="*", type=Path, metavar="FILE",
                        help="image or video files (videos: " + ", ".join(VIDEO_SUFFIXES) + "); with --results: "
                        "only these of the file's images (default all), or the one video the file is about")
    parser.add_argument("-o", "--output", type=Path, default=Path("annotated"),
                        help="output directory, or a file name when there is one input (default: annotated/)")
    parser.add_argument("--results", type=Path, help="a JSON Lines file of detections instead of asking a server")
    parser.add_argument("-u", "--url", default="127.0.0.1:8001", help="server host:port (default: 127.0.0.1:8001)")
    parser.add_argument("--model", default="", help="detection pipeline (default: the server's only one)")
    parser.add_argument("--score-threshold", type=float, help="drop boxes below this score")
    parser.add_argument("--deadline-s", type=float, default=10.0,
                        help="each Detect call's (each video frame's) deadline (default: 10)")
    parser.add_argument("--thickness", type=int, help="box line thickness in pixels (default: from the image size)")
    parser.add_argument("--stride", type=int, default=1,
                        help="videos: ask for every N-th frame; the frames between are written unchanged "
                        "(default 1; not with --results, which draws the frames it has lines for)")
    parser.add_argument("--in-flight", type=int, default=DEFAULT_IN_FLIGHT,
                        help=f"videos: frames sent ahead of their answers, 1..{MAX_IN_FLIGHT} "
                        f"(default {DEFAULT_IN_FLIGHT})")
    parser.add_argument("--fourcc", help="videos: the codec to write, 4 characters (default: the output's "
                        "container's: " + ", ".join(f"{s} {c}" for s, c in FOURCC_BY_SUFFIX.items()) + ")")
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.results is None and not args.images:
        parser.error("give image or video files, or --results FILE")
    if args.results is not None and not args.results.is_file():
        parser.error(f"--results {args.results}: no such file")
    if args.stride < 1:
        parser.error(f"--stride: expected an integer >= 1, got {args.stride}")
    if not 1 <= args.in_flight <= MAX_IN_FLIGHT:
        parser.error(f"--in-flight: expected 1..{MAX_IN_FLIGHT}, got {args.in_flight}")
    if args.fourcc is not None and len(args.fourcc) != 4:
        parser.error(f"--fourcc: expected 4 characters (mp4v, MJPG, FFV1, ...), got {args.fourcc!r}")
    videos = [p for p in args.images if is_video(p)]
    if args.results is not None and videos:
        if len(args.images) != 1:
            parser.error(f"--results with a video: expected that one video (a results file holds one video's "
                         f"frames), got {len(args.images)} files")
        if args.stride != 1:
            parser.error("--stride: a results file draws the frames it has lines for; --stride is for asking "
                         "a server")


def _images_from_results(args: argparse.Namespace) -> Iterator[tuple[Path, list[Detection]]]:
    wanted = {p.resolve() for p in args.images}
    for image, detections in read_results(args.results):
        if not wanted or image.resolve() in wanted:
            if args.score_threshold is not None:
                detections = [d for d in detections if d.score >= args.score_threshold]
            yield image, detections


def _annotated_image(image: Path, detections: list[Detection], dst: Path, style: Style) -> int:
    try:
        dst = annotate_image(image, detections, dst, style)
    except OSError as e:
        print(f"peregrine-annotate: {e}", file=sys.stderr)
        return 1
    print(f"{dst}  {len(detections)} boxes")
    return 0


def _annotated_video(video: Path, make: Callable[..., VideoSummary]) -> int:
    """Runs ``make(progress=...)`` (:func:`annotate_video` or :func:`detect_video` with its arguments bound)
    and reports it; 1 for a file that cannot be read or written."""
    progress = _ProgressLine(video)
    try:
        summary = make(progress=progress)
    except OSError as e:
        progress.end()
        print(f"peregrine-annotate: {e}", file=sys.stderr)
        return 1
    progress.end()
    print(f"{summary.path}  {summary.frames} frames at {summary.fps:g} fps, {summary.annotated} annotated, "
          f"{summary.boxes} boxes")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI. Exit status 0 done, 1 a server call or a file failed (the others are still drawn),
    2 bad arguments."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    single = len(args.images) == 1
    style = Style(thickness=args.thickness)
    status = 0
    try:
        if args.results is not None and args.images and is_video(args.images[0]):
            video = args.images[0]
            by_frame = read_video_results(args.results, args.score_threshold)
            return _annotated_video(video, functools.partial(
                annotate_video, video, by_frame, _output_path(video, args.output, single), style, args.fourcc))
        if args.results is not None:
            for image, detections in _images_from_results(args):
                status |= _annotated_image(image, detections, _output_path(image, args.output, single), style)
            return status
        with DetectionClient(args.url, deadline_s=args.deadline_s) as client:
            for path in args.images:
                dst = _output_path(path, args.output, single)
                if is_video(path):
                    status |= _annotated_video(path, functools.partial(
                        detect_video, client, path, dst, model=args.model, stride=args.stride,
                        in_flight=args.in_flight, score_threshold=args.score_threshold, style=style,
                        fourcc=args.fourcc))
                else:
                    detections = client.detect(path, model=args.model, score_threshold=args.score_threshold)
                    status |= _annotated_image(path, detections, dst, style)
    except PeregrineClientError as e:
        print(f"peregrine-annotate: {e.code.name}: {e.details}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        print(f"peregrine-annotate: {e}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
