"""``peregrine batch --output detections.mcap``: a recording's detections as an MCAP file Foxglove and ROS 2
tools read, one ``vision_msgs/Detection2DArray`` per frame.

    peregrine batch --model yolov8n_detect --input drive.mcap --topic /cam/image_raw --output detections.mcap

The messages are :class:`~.codecs.recordings.DetectionMcapWriter`'s: on ``<image topic>/detections``, with the
frame's header stamp and frame id, logged at the image's log time (``--image-annotations``: also
``foxglove_msgs/ImageAnnotations`` on ``<image topic>/annotations``). A frame with no boxes gets an empty
array; a frame that failed gets no message (its error is in the JSON Lines, below).

Resuming: an MCAP file cannot be appended to once finished, and one not finished has no summary (most readers
refuse it). So the run's record stays the JSON Lines result that ``peregrine batch`` commits every half second
and resumes; the MCAP file is rendered from it once every frame is done, under a temporary name then renamed
(a run killed while rendering renders again when run again). The JSON Lines are kept beside the MCAP file as
``<output>.jsonl``: they list the failed frames too. The JSON Lines carry each frame's topic, stamp and frame
id; the log times come from a second pass over the recording's message index (no image is decoded again),
frame ``i`` of the pass being line ``i`` of the result.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from peregrine.client.keypoints import Keypoint, keypoints_of, polygon_of

MCAP_SUFFIX = ".mcap"


_KIND_WORDS = {"images": "image files", "archive": "an archive", "tensor": "a tensor file", "video": "a video"}


def wants_mcap(output: Path) -> bool:
    """Whether ``output`` names an MCAP file (its suffix, in any case)."""
    return output.suffix.lower() == MCAP_SUFFIX


def record_path(output: Path) -> Path:
    """Where the JSON Lines an MCAP output is rendered from are kept: ``<output>.jsonl``."""
    return output.with_name(output.name + ".jsonl")


def check_kind(kind: str, output: Path) -> None:
    """ValueError naming ``--output`` when an MCAP output is asked of an input that is not a recording."""
    if kind != "recording":
        what = _KIND_WORDS.get(kind, "an input of no known kind")
        instead = ".npz" if kind == "tensor" else ".jsonl"
        raise ValueError(f"--output: an .mcap output holds a recording's detections (a vision_msgs/Detection2DArray "
                         f"per camera frame); expected a recording input (ROS 1 bag, rosbag2 directory, MCAP) for "
                         f"{output.name}, got {what}: name the output {instead}")


@dataclass(frozen=True)
class _Box:
    """A box of a JSON line, as :class:`~.codecs.recordings.DetectionMcapWriter` takes it."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    class_id: int
    label: str
    keypoints: tuple[Keypoint, ...] = ()  # a pose model's
    polygon: tuple[tuple[float, float], ...] = ()  # a segmentation model's mask outline


def frame_log_times(recording: Path, topics: Sequence[str] | None, stride: int) -> Iterator[tuple[str, int]]:
    """(topic, log time in ns) of the frames a recording source gives for ``topics`` (None: every image topic)
    and ``stride``, in its order, read from the recording's index (messages are not decoded)."""
    from .codecs import recordings

    with recordings._opened(recording) as reader:  # as iter_frames opens it, so the frames come in its order
        wanted = set(topics) if topics else {c.topic for c in reader.connections if c.msgtype in recordings.IMAGE_TYPES}
        connections = [c for c in reader.connections if c.topic in wanted]
        if not connections:
            return
        for n, (connection, log_time_ns, _) in enumerate(reader.messages(connections=connections)):
            if n % stride == 0:
                yield connection.topic, int(log_time_ns)


def render(result: Path, recording: Path, topics: Sequence[str] | None, stride: int, output: Path,
           annotations: bool = False) -> int:
    """Writes the MCAP file ``output`` from the JSON Lines ``result`` of ``recording`` (read with ``topics``
    and ``stride``): one Detection2DArray per line with boxes, none for a failed line. Returns the number of
    frames written. Raises ValueError when the result does not match the recording (it changed since)."""
    from .codecs.recordings import DetectionMcapWriter, Frame

    no_pixels = np.empty((0, 0, 3), np.uint8)  # the writer reads a frame's stamps, ids and topic only
    tmp = output.with_name(output.name + ".tmp")
    frames = frame_log_times(recording, topics, stride)
    try:
        with DetectionMcapWriter(tmp, annotations=annotations) as writer, open(result, encoding="utf-8") as lines:
            for n, text in enumerate(lines):
                line = json.loads(text)
                topic, log_time_ns = next(frames, (None, 0))
                if topic is None or line.get("index") != n:
                    raise ValueError(f"{result}: line {n + 1} is not frame {n} of {recording} (the recording "
                                     "changed since the run?): pass --restart")
                if "boxes" not in line:
                    continue  # a failed frame: its error is in the JSON Lines
                if line.get("source") != topic:
                    raise ValueError(f"{result}: line {n + 1} is a frame of {line.get('source')!r}, the recording's "
                                     f"frame {n} one of {topic!r} (the recording changed since the run?): "
                                     "pass --restart")
                frame = Frame(no_pixels, int(line.get("stamp_ns", 0)), str(line.get("frame_id", "")), topic,
                              log_time_ns)
                writer.write(frame, [_Box(b["x1"], b["y1"], b["x2"], b["y2"], b["score"], b["class_id"], b["label"],
                                          keypoints_of(b.get("keypoints", ())), polygon_of(b.get("polygon", ())))
                                     for b in line["boxes"]])
        os.replace(tmp, output)
    finally:
        frames.close()
        tmp.unlink(missing_ok=True)
    return writer.messages
