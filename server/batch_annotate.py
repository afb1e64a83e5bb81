"""``peregrine batch --annotate DIR``: each input drawn with its boxes, labels and scores, beside the JSON Lines.

What lands in DIR:

- an image file of a directory or a glob: ``DIR/<its path under the deepest directory holding every input>``,
  in its own format (its suffix);
- an image of an archive: ``DIR/<its member name>``;
- a frame of a recording (bag, MCAP): ``DIR/<topic>/<header stamp in ns>.png``;
- a video: one video, ``DIR/<its name>`` (a container :mod:`peregrine.client.annotate` does not write:
  ``.mkv``), every frame of it at its frame rate and size, the frames that have a line drawn (with
  ``--stride N`` the frames between are written unchanged).

Items that failed get no picture. Drawing is :mod:`peregrine.client.annotate`'s (OpenCV: the ``[annotate]``
extra). In this process each picture is drawn, in worker threads, as its item's boxes come, and is on disk
before the checkpoint that counts its item: a resumed run starts after that item, so what is done is not drawn
again. A video is written once, after the boxes of its last frame, from the result. For a job on a server
(``--server``) the pictures are drawn after the result is downloaded, from the local inputs, matched to the
result's lines by item index. Every file is written under a temporary name and renamed: a picture in DIR is
whole.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

from .core.types import FrameResult
from .jobs import sources
from .jobs.results import detection_line

DRAWING_THREADS = 2


def annotate_module() -> ModuleType:
    """:mod:`peregrine.client.annotate`; ValueError naming the extra when OpenCV is not installed."""
    try:
        from peregrine.client import annotate
    except ImportError as e:
        if (e.name or "").split(".")[0] == "peregrine":
            raise
        raise ValueError(f"--annotate: needs OpenCV, the [annotate] extra (module '{e.name}' is not installed): "
                         "pip install 'peregrine[annotate]'") from None
    return annotate


def check_kind(kind: str) -> None:
    """ValueError for an input kind that has no pictures to draw (tensors)."""
    if kind == "tensor":
        raise ValueError("--annotate: a tensor input has no pictures to draw (it is for images, archives, "
                         "videos and recordings)")


def check_remote(files: list[Path] | None, inputs: list[str], kind: str) -> None:
    """ValueError, before a job is submitted, for an input whose pictures cannot be drawn here afterwards:
    tensors, and a list of image paths (read by the server, where they are)."""
    if files is not None:
        return
    kind = kind or sources.sniff(Path(inputs[0]))
    check_kind(kind)
    if kind == "images":
        raise ValueError("--annotate: a list of image paths is read by the server, not here; draw its result "
                         "with peregrine-annotate --results")
    annotate_module()


def _safe_parts(name: str) -> PurePosixPath:
    """``name`` as a relative path that stays inside the directory it is joined to (no root, no ``..``)."""
    return PurePosixPath(*[p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("/", ".", "..")])


class PictureWriter:
    """Draws items' boxes into ``directory``, each under the name the module docstring gives its kind."""

    def __init__(self, directory: Path, source: sources.Source) -> None:
        self.annotate = annotate_module()
        self.directory = directory
        self.files: list[Path] | None = None
        if isinstance(source, sources.FilesSource):
            self.files = [p.absolute() for p in source.paths]
            self.base = Path(os.path.commonpath([p.parent for p in self.files])) if self.files else Path()
        self.drawn = self.failed = 0

    def destination(self, item: sources.Item) -> Path:
        """Where item ``item``'s picture goes."""
        if self.files is not None:
            return self.directory / self.files[item.index].relative_to(self.base)
        if item.pixels is not None:  # a recording's frame, named by its topic and stamp
            stamp = item.stamp_ns if item.stamp_ns is not None else item.index
            return self.directory / _safe_parts(item.name) / f"{stamp}.png"
        name = _safe_parts(item.name)
        return self.directory / (name if name.parts else f"{item.index:08d}.png")

    def draw(self, item: sources.Item, boxes: list[dict[str, Any]]) -> None:
        """Draws one item's boxes (JSON objects of a result line) and writes its picture. A picture that cannot
        be drawn or written is reported on stderr and counted in ``failed``; the batch goes on."""
        try:
            detections = [self.annotate.detection_of(b) for b in boxes]
            image = item.pixels if item.pixels is not None else (item.encoded or b"")
            self.annotate.annotate_image(image, detections, self.destination(item))
        except (OSError, ValueError) as e:
            print(f"peregrine batch: --annotate: item {item.index} ({item.name}): {e}", file=sys.stderr)
            self.failed += 1
            return
        self.drawn += 1


class PictureQueue:
    """Draws pictures in worker threads while the batch runs: at most ``limit`` waiting to be drawn (the
    event loop waits for the oldest beyond that); :meth:`flush` waits for all of them (before a checkpoint)."""

    def __init__(self, writer: PictureWriter, limit: int) -> None:
        self.writer = writer
        self.limit = max(1, limit)
        self._pool = ThreadPoolExecutor(DRAWING_THREADS, thread_name_prefix="peregrine-annotate")
        self._pending: collections.deque[asyncio.Future[None]] = collections.deque()

    async def add(self, item: sources.Item, result: Any, error: str) -> None:
        """Queues the picture of an item that ran (its boxes); nothing for a failed item or a tensor's."""
        if error or item.error or not isinstance(result, FrameResult):
            return
        boxes = detection_line(item, result)["boxes"]
        loop = asyncio.get_running_loop()
        self._pending.append(loop.run_in_executor(self._pool, self.writer.draw, item, boxes))
        while len(self._pending) > self.limit:
            await self._pending.popleft()

    async def flush(self) -> None:
        while self._pending:
            await self._pending.popleft()

    def close(self) -> None:
        """Stops the workers; pictures not yet drawn are dropped (their items are not checkpointed)."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def video_destination(directory: Path, video: Path) -> Path:
    annotate = annotate_module()
    return directory / (video.name if annotate.is_video(video) else video.with_suffix(".mkv").name)


def draw_video(video: Path, result: Path, directory: Path) -> int:
    """Writes ``video`` annotated with the boxes of ``result`` (JSON Lines, one line per frame that ran) into
    ``directory``; the number of frames drawn. Raises ValueError naming ``--annotate`` when the video cannot be
    read or written (no encoder for its container here, say)."""
    annotate = annotate_module()
    try:
        summary = annotate.annotate_video(video, annotate.read_video_results(result),
                                          video_destination(directory, video))
    except OSError as e:
        raise ValueError(f"--annotate: {e}") from None
    return int(summary.annotated)


def _lines(result: Path) -> Iterator[dict[str, Any]]:
    with open(result, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def draw_result(source: sources.Source, result: Path, directory: Path) -> int:
    """Draws the pictures of a finished result (a job's, downloaded) from the local ``source`` it was made
    from, each item matched to the line with its index; the number drawn. Raises as :func:`draw_video` for
    a video."""
    if source.kind == "video":
        assert isinstance(source, sources.VideoSource)
        return draw_video(source.path, result, directory)
    writer = PictureWriter(directory, source)
    lines = _lines(result)
    line = next(lines, None)
    for item in source.items():
        while line is not None and line.get("index", -1) < item.index:
            line = next(lines, None)
        if line is not None and line.get("index") == item.index and "boxes" in line and not item.error:
            writer.draw(item, line["boxes"])
    return writer.drawn
