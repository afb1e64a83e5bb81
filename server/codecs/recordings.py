"""Robot recordings in, standard messages out: camera frames read from ROS 1 bags, ROS 2 bags and MCAP files,
and detections written as ``vision_msgs/Detection2DArray`` into an MCAP file that Foxglove and ROS 2 tools read.

Reading::

    for frame in iter_frames("drive.bag", ["/camera/image_raw"]):       # or a rosbag2 directory, or x.mcap
        frame.image, frame.stamp_ns, frame.frame_id, frame.topic        # uint8 BGR [H, W, 3], header stamp (ns)

Writing::

    with DetectionMcapWriter("detections.mcap") as out:
        out.write(frame, boxes)     # on "<frame.topic>/detections", with the frame's header stamp and frame id

Recordings are read with ``rosbags`` (ROS 1 ``.bag`` files, rosbag2 directories in SQLite or MCAP storage,
bare ``.mcap`` and ``.db3`` files; no ROS installation needed, message definitions come from the recording)
and written with ``mcap`` + ``mcap-ros2-support`` (the project's ``[ros]`` extra). Images become BGR as
OpenCV's and ``cv_bridge``'s conventions have them: ``sensor_msgs/Image`` in rgb8, bgr8, rgba8, bgra8,
mono8, mono16, 8UC1/8UC3/8UC4/16UC1, rgb16, bgr16, yuv422 (UYVY), yuv422_yuy2/yuyv (YUYV) and the bayer
patterns (8 and 16 bit), converted by the native kernels (``peregrine.kernels.convert_raw``, the conversion
Detect uses for raw camera frames), and ``sensor_msgs/CompressedImage`` (JPEG, PNG). 16-bit images keep
their 8 most significant bits.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import cv2
import numpy as np
from peregrine.client.keypoints import limbs, shown

from ... import kernels

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
DETECTIONS_TYPE = "vision_msgs/msg/Detection2DArray"
DETECTIONS_SUFFIX = "/detections"
ANNOTATIONS_TYPE = "foxglove_msgs/msg/ImageAnnotations"
ANNOTATIONS_SUFFIX = "/annotations"


class RecordingError(ValueError):
    """A recording that cannot be read as asked: an unknown topic, a topic that is not an image, an image
    encoding that is not supported, a corrupt image. The message names the topic and what was expected."""


@dataclass(frozen=True)
class Frame:
    """One camera image of a recording: ``image`` uint8 BGR ``[H, W, 3]``; ``stamp_ns`` the message header's
    stamp (the capture time, nanoseconds since the epoch of the robot's clock); ``frame_id`` the header's
    frame id; ``topic`` the topic it was recorded on; ``log_time_ns`` when the recorder received it;
    ``encoding`` the source encoding (``rgb8``, ``bayer_rggb8``, ``jpeg``, ...)."""

    image: np.ndarray
    stamp_ns: int
    frame_id: str
    topic: str
    log_time_ns: int = 0
    encoding: str = ""


class Box(Protocol):
    """What :class:`DetectionMcapWriter` writes: a box in image pixels (x1, y1 top-left, x2, y2
    bottom-right), its score, class id and class name (the client's and the server's detections have these;
    a pose box may have ``keypoints`` too, drawn in the Foxglove annotations)."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    class_id: int
    label: str


# -- reading --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _opened(path: str | Path) -> Iterator[Any]:
    """An open rosbags ``AnyReader`` over one recording (closed on exit)."""
    from rosbags.highlevel import AnyReader, AnyReaderError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no recording at {path}")
    with contextlib.ExitStack() as stack:
        named = path
        suffix = _suffix_of(path) if path.is_file() and path.suffix not in _SUFFIXES else ""
        if suffix:  # rosbags tells formats by name: a file named otherwise (a job's payload) is read via a link
            named = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="peregrine-rec-"))) / f"r{suffix}"
            named.symlink_to(path.resolve())
        try:
            reader = AnyReader([named])
            reader.open()
        except AnyReaderError as e:
            raise RecordingError(f"{path}: not a ROS 1 bag, rosbag2 directory or MCAP file ({e})") from None
        try:
            yield reader
        finally:
            reader.close()


_SUFFIXES = {".bag": b"#ROSBAG", ".mcap": b"\x89MCAP", ".db3": b"SQLite format 3\x00"}


def _suffix_of(path: Path) -> str:
    """The suffix rosbags reads a recording file by, told from its first bytes ("" when none fits)."""
    with open(path, "rb") as f:
        head = f.read(16)
    return next((suffix for suffix, magic in _SUFFIXES.items() if head.startswith(magic)), "")


def image_topics(path: str | Path) -> dict[str, str]:
    """The image topics of a recording: ``{topic: message type}`` for ``sensor_msgs/Image`` and
    ``sensor_msgs/CompressedImage``. Raises FileNotFoundError, or RecordingError for a file that is not a
    recording."""
    with _opened(path) as reader:
        return {c.topic: c.msgtype for c in reader.connections if c.msgtype in IMAGE_TYPES}


def iter_frames(path: str | Path, topics: Sequence[str] | None = None) -> Iterator[Frame]:
    """The frames of ``topics`` (default: every image topic) in the order they were recorded.

    ``path`` is a ROS 1 ``.bag``, a rosbag2 directory, or an ``.mcap``/``.db3`` file. Raises
    FileNotFoundError; RecordingError when a topic is missing or not an image topic (naming the image topics
    there are), or when an image cannot be decoded (naming its topic, encoding and log time)."""
    with _opened(path) as reader:
        by_topic = {c.topic: c.msgtype for c in reader.connections}
        available = sorted(t for t, m in by_topic.items() if m in IMAGE_TYPES)
        wanted = list(topics) if topics else available
        for topic in wanted:
            if topic not in by_topic:
                raise RecordingError(f"{path}: no topic {topic!r}; its image topics: {', '.join(available) or 'none'}")
            if by_topic[topic] not in IMAGE_TYPES:
                raise RecordingError(f"{path}: topic {topic!r} is {by_topic[topic]}, not sensor_msgs/Image or "
                                     f"CompressedImage; its image topics: {', '.join(available) or 'none'}")
        connections = [c for c in reader.connections if c.topic in set(wanted)]
        if not connections:
            return
        for connection, log_time_ns, raw in reader.messages(connections=connections):
            msg = reader.deserialize(raw, connection.msgtype)
            try:
                if connection.msgtype.endswith("CompressedImage"):
                    image, encoding = decode_compressed(msg.format, msg.data)
                else:
                    image, encoding = decode_image(msg.encoding, msg.height, msg.width, msg.step,
                                                   bool(msg.is_bigendian), msg.data), msg.encoding
            except RecordingError as e:
                raise RecordingError(f"{path}: {connection.topic} at {log_time_ns} ns: {e}") from None
            stamp = msg.header.stamp
            yield Frame(image, int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec), str(msg.header.frame_id),
                        connection.topic, int(log_time_ns), encoding)


# sensor_msgs/image_encodings names: the kernels' list (their exact spellings; the YUV and Bayer names are
# also taken in upper case, as this reader always has). The conversion is the native kernels', which make
# cv_bridge's colours: cv2.cvtColor's bytes for the code cv_bridge uses (ROS's rggb is OpenCV's BayerBG).
SUPPORTED_ENCODINGS = kernels.RAW_ENCODINGS
_CASELESS = {name for name in SUPPORTED_ENCODINGS if name.startswith(("bayer_", "yuv", "uyvy", "yuy"))}


def decode_image(encoding: str, height: int, width: int, step: int, is_bigendian: bool, data: Any) -> np.ndarray:
    """A ``sensor_msgs/Image`` as uint8 BGR ``[height, width, 3]`` (converted by ``peregrine.kernels``; the
    last row's padding may be missing). Raises RecordingError for an unsupported encoding or data that does
    not fit its size."""
    if height <= 0 or width <= 0:
        raise RecordingError(f"empty image ({height}x{width})")
    name = encoding.strip()
    name = name.lower() if name.lower() in _CASELESS else name
    if name not in SUPPORTED_ENCODINGS:
        raise RecordingError(f"encoding {encoding!r} is not supported; expected one of "
                             f"{', '.join(SUPPORTED_ENCODINGS)}")
    if isinstance(data, np.ndarray):
        buf = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    else:
        buf = np.frombuffer(data if isinstance(data, bytes | bytearray | memoryview) else bytes(data), np.uint8)
    row_bytes = kernels.raw_encoding(name).row_bytes(width)
    if step < row_bytes or buf.size < step * (height - 1) + row_bytes:
        raise RecordingError(f"{height}x{width} image with step {step}: expected at least {row_bytes} bytes per "
                             f"row and {step * height} in all, got {buf.size}")
    try:
        return kernels.convert_raw(buf, name, height, width, step=step, is_bigendian=is_bigendian, order="bgr")
    except ValueError as e:  # an odd width for YUV 4:2:2
        raise RecordingError(f"{height}x{width} {name} image: {e}") from None


def decode_compressed(fmt: str, data: Any) -> tuple[np.ndarray, str]:
    """A ``sensor_msgs/CompressedImage`` as uint8 BGR and its codec name (``jpeg``, ``png``). ``format`` is
    ``"jpeg"``, ``"png"`` or image_transport's ``"<encoding>; <codec> compressed <encoding>"``. Raises
    RecordingError for compressed depth images and bytes OpenCV cannot decode."""
    low = fmt.lower()
    if "compresseddepth" in low:
        raise RecordingError(f"format {fmt!r}: compressed depth images are not camera frames")
    buf = np.frombuffer(bytes(data) if not isinstance(data, np.ndarray) else data, np.uint8)
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if image is None:
        raise RecordingError(f"format {fmt!r}: {buf.size} bytes that are not a JPEG or PNG image")
    codec = "png" if "png" in low else "jpeg" if ("jpeg" in low or "jpg" in low) else (low.split()[-1] if low else "")
    return image, codec


# -- writing --------------------------------------------------------------------------------------------
# vision_msgs 4.x (ROS 2 Humble and later) as ros2msg text, dependencies after "=====" lines, as rosbag2
# and Foxglove write them.
_SEP = "=" * 80 + "\n"
DETECTION2D_ARRAY_MSGDEF = "".join([
    "std_msgs/Header header\nvision_msgs/Detection2D[] detections\n",
    _SEP, "MSG: std_msgs/Header\nbuiltin_interfaces/Time stamp\nstring frame_id\n",
    _SEP, "MSG: builtin_interfaces/Time\nint32 sec\nuint32 nanosec\n",
    _SEP, "MSG: vision_msgs/Detection2D\nstd_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\n"
          "vision_msgs/BoundingBox2D bbox\nstring id\n",
    _SEP, "MSG: vision_msgs/ObjectHypothesisWithPose\nvision_msgs/ObjectHypothesis hypothesis\n"
          "geometry_msgs/PoseWithCovariance pose\n",
    _SEP, "MSG: vision_msgs/ObjectHypothesis\nstring class_id\nfloat64 score\n",
    _SEP, "MSG: geometry_msgs/PoseWithCovariance\ngeometry_msgs/Pose pose\nfloat64[36] covariance\n",
    _SEP, "MSG: geometry_msgs/Pose\ngeometry_msgs/Point position\ngeometry_msgs/Quaternion orientation\n",
    _SEP, "MSG: geometry_msgs/Point\nfloat64 x\nfloat64 y\nfloat64 z\n",
    _SEP, "MSG: geometry_msgs/Quaternion\nfloat64 x 0\nfloat64 y 0\nfloat64 z 0\nfloat64 w 1\n",
    _SEP, "MSG: vision_msgs/BoundingBox2D\nvision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n",
    _SEP, "MSG: vision_msgs/Pose2D\nvision_msgs/Point2D position\nfloat64 theta\n",
    _SEP, "MSG: vision_msgs/Point2D\nfloat64 x\nfloat64 y\n",
])


# Foxglove's Image panel draws foxglove_msgs/ImageAnnotations over the image whose header stamp equals the
# annotations' timestamp (it does not draw vision_msgs), so the writer can put both side by side.
FOXGLOVE_ANNOTATIONS_MSGDEF = "".join([
    "foxglove_msgs/CircleAnnotation[] circles\nfoxglove_msgs/PointsAnnotation[] points\n"
    "foxglove_msgs/TextAnnotation[] texts\n",
    _SEP, "MSG: foxglove_msgs/CircleAnnotation\nbuiltin_interfaces/Time timestamp\nfoxglove_msgs/Point2 position\n"
          "float64 diameter\nfloat64 thickness\nfoxglove_msgs/Color fill_color\nfoxglove_msgs/Color outline_color\n",
    _SEP, "MSG: builtin_interfaces/Time\nint32 sec\nuint32 nanosec\n",
    _SEP, "MSG: foxglove_msgs/Point2\nfloat64 x\nfloat64 y\n",
    _SEP, "MSG: foxglove_msgs/Color\nfloat64 r\nfloat64 g\nfloat64 b\nfloat64 a\n",
    _SEP, "MSG: foxglove_msgs/PointsAnnotation\nbuiltin_interfaces/Time timestamp\nuint8 UNKNOWN=0\nuint8 POINTS=1\n"
          "uint8 LINE_LOOP=2\nuint8 LINE_STRIP=3\nuint8 LINE_LIST=4\nuint8 type\nfoxglove_msgs/Point2[] points\n"
          "foxglove_msgs/Color outline_color\nfoxglove_msgs/Color[] outline_colors\nfoxglove_msgs/Color fill_color\n"
          "float64 thickness\n",
    _SEP, "MSG: foxglove_msgs/TextAnnotation\nbuiltin_interfaces/Time timestamp\nfoxglove_msgs/Point2 position\n"
          "string text\nfloat64 font_size\nfoxglove_msgs/Color text_color\nfoxglove_msgs/Color background_color\n",
])
_POINTS, _LINE_LOOP, _LINE_LIST = 1, 2, 4  # foxglove_msgs/PointsAnnotation types
# ultralytics' first colours (as Peregrine's annotate draws them), RGB in [0, 1].
_ANNOTATION_COLOURS = ((1.0, 0.22, 0.22), (1.0, 0.616, 0.592), (1.0, 0.439, 0.122), (1.0, 0.698, 0.114),
                       (0.812, 0.824, 0.192), (0.282, 0.976, 0.039), (0.573, 0.8, 0.09), (0.239, 0.859, 0.525))


def _shape(stamp: dict[str, int], kind: int, points: Iterable[tuple[float, float]], colour: dict[str, float],
           thickness: float, filled: bool = False) -> dict[str, Any]:
    """One ``foxglove_msgs/PointsAnnotation`` of ``kind`` (points, a closed loop, a line list) in ``colour``."""
    return {"timestamp": stamp, "type": kind, "points": [{"x": float(x), "y": float(y)} for x, y in points],
            "outline_color": colour, "outline_colors": [],
            "fill_color": colour if filled else {"r": 0.0, "g": 0.0, "b": 0.0, "a": 0.0}, "thickness": thickness}


def image_annotations(stamp_ns: int, boxes: Iterable[Box]) -> dict[str, Any]:
    """A ``foxglove_msgs/ImageAnnotations`` dict: each box a closed outline (colour by class) and a label
    ``"<name> <score>"`` at its top-left corner, all stamped ``stamp_ns`` (the image's header stamp); a pose
    box's keypoints (a ``keypoints`` attribute of :class:`~peregrine.client.keypoints.Keypoint`) as points,
    those ``peregrine-annotate`` draws, and COCO's skeleton between them as a line list for 17; a segmentation
    box's mask polygon (a ``polygon`` attribute of (x, y) points) as a closed outline."""
    stamp = {"sec": stamp_ns // 1_000_000_000, "nanosec": stamp_ns % 1_000_000_000}
    points, texts = [], []
    for b in boxes:
        r, g, bl = _ANNOTATION_COLOURS[int(b.class_id) % len(_ANNOTATION_COLOURS)]
        colour = {"r": r, "g": g, "b": bl, "a": 1.0}
        points.append(_shape(stamp, _LINE_LOOP, [(b.x1, b.y1), (b.x2, b.y1), (b.x2, b.y2), (b.x1, b.y2)], colour, 2.0))
        texts.append({"timestamp": stamp, "position": {"x": float(b.x1), "y": float(b.y1)},
                      "text": f"{b.label or f'class{b.class_id}'} {b.score:.2f}", "font_size": 12.0,
                      "text_color": {"r": 1.0, "g": 1.0, "b": 1.0, "a": 1.0}, "background_color": colour})
        polygon = getattr(b, "polygon", ())
        if polygon:  # a segmentation model's mask outline
            points.append(_shape(stamp, _LINE_LOOP, polygon, colour, 1.0))
        keypoints = getattr(b, "keypoints", ())
        if keypoints:
            ends = [(keypoints[i].x, keypoints[i].y) for limb in limbs(keypoints) for i in limb]
            if ends:  # a line list: each limb's two ends in turn
                points.append(_shape(stamp, _LINE_LIST, ends, colour, 2.0))
            dots = [(p.x, p.y) for p, seen in zip(keypoints, shown(keypoints), strict=True) if seen]
            points.append(_shape(stamp, _POINTS, dots, colour, 5.0, filled=True))
    return {"circles": [], "points": points, "texts": texts}


def detection2d_array(stamp_ns: int, frame_id: str, boxes: Iterable[Box]) -> dict[str, Any]:
    """A ``vision_msgs/Detection2DArray`` as the dict ``mcap-ros2-support`` encodes: the array's and every
    detection's header carry ``stamp_ns`` and ``frame_id``; each box becomes its centre and size in pixels
    and one hypothesis (``class_id`` the class name, else the class id as text; ``score``)."""
    header = {"stamp": {"sec": stamp_ns // 1_000_000_000, "nanosec": stamp_ns % 1_000_000_000},
              "frame_id": frame_id}
    pose = {"pose": {"position": {"x": 0.0, "y": 0.0, "z": 0.0},
                     "orientation": {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0}},
            "covariance": [0.0] * 36}
    detections = []
    for i, b in enumerate(boxes):
        if not all(math.isfinite(v) for v in (b.x1, b.y1, b.x2, b.y2, b.score)):
            raise ValueError(f"detection {i}: expected finite coordinates and score, got {b!r}")
        detections.append({
            "header": header,
            "results": [{"hypothesis": {"class_id": b.label or str(b.class_id), "score": float(b.score)},
                         "pose": pose}],
            "bbox": {"center": {"position": {"x": (b.x1 + b.x2) / 2, "y": (b.y1 + b.y2) / 2}, "theta": 0.0},
                     "size_x": float(b.x2 - b.x1), "size_y": float(b.y2 - b.y1)},
            "id": str(i),
        })
    return {"header": header, "detections": detections}


class DetectionMcapWriter:
    """An MCAP file (ROS 2 profile, CDR) of ``vision_msgs/Detection2DArray`` messages, one per frame.

    ``write(frame, boxes)`` puts the frame's detections on ``<frame.topic>/detections`` (``topic=`` to choose)
    with the frame's header stamp and frame id, logged at the frame's ``log_time_ns`` (else its stamp), so
    the detections line up with the recording's images in Foxglove or ``ros2 bag play``. ``close()`` (or
    ``with``) finishes the file; a file not finished has no summary and most readers refuse it.
    ``annotations=True`` also writes ``foxglove_msgs/ImageAnnotations`` on ``<frame.topic>/annotations``
    (same stamps), which Foxglove's Image panel draws over the camera stream."""

    def __init__(self, path: str | Path, *, annotations: bool = False) -> None:
        from mcap_ros2.writer import Writer

        self.path = Path(path)
        self._file = open(self.path, "wb")  # noqa: SIM115 - owned until close()
        try:
            self._writer = Writer(self._file)
            self._schema = self._writer.register_msgdef(DETECTIONS_TYPE, DETECTION2D_ARRAY_MSGDEF)
            self._annotations = (self._writer.register_msgdef(ANNOTATIONS_TYPE, FOXGLOVE_ANNOTATIONS_MSGDEF)
                                 if annotations else None)
        except BaseException:
            self._file.close()
            raise
        self.messages = 0

    def write(self, frame: Frame, boxes: Iterable[Box], *, topic: str | None = None) -> None:
        """Write one frame's detections (possibly none: an empty array says the frame was looked at)."""
        log_time = frame.log_time_ns or frame.stamp_ns
        boxes = list(boxes)
        self._writer.write_message(topic or frame.topic + DETECTIONS_SUFFIX, self._schema,
                                   detection2d_array(frame.stamp_ns, frame.frame_id, boxes),
                                   log_time=log_time, publish_time=log_time, sequence=self.messages)
        if self._annotations is not None:
            self._writer.write_message(frame.topic + ANNOTATIONS_SUFFIX, self._annotations,
                                       image_annotations(frame.stamp_ns, boxes), log_time=log_time,
                                       publish_time=log_time, sequence=self.messages)
        self.messages += 1

    def close(self) -> None:
        """Finish the MCAP file (summary, index) and close it. Idempotent."""
        if not self._file.closed:
            try:
                self._writer.finish()
            finally:
                self._file.close()

    def __enter__(self) -> DetectionMcapWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
