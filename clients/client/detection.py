"""``DetectionClient``: frames in, boxes out, over ``peregrine.v1.DetectionService``.

The server decodes, letterboxes, runs the detector in batches and returns boxes in the original image's
pixels, so the client sends an image and gets :class:`Detection` objects back::

    from peregrine.client import DetectionClient

    with DetectionClient("127.0.0.1:8001") as client:
        boxes = client.detect("images/astronaut.jpg", deadline_s=0.1)            # a file, sent as it is
        boxes = client.detect(frame, score_threshold=0.5)             # a uint8 [H, W, 3] RGB array
        for result in client.stream(camera_frames, deadline_s=0.05):  # one camera, one stream
            ...

An image is a path (the file's bytes are sent as they are: JPEG, PNG, BMP, TIFF, WebP), encoded bytes, a
uint8 array ``[H, W]`` / ``[H, W, C]`` (sent raw; the server takes 1, 3 or 4 channels, in the pipeline's
channel order, RGB by default), or a :class:`RawFrame`: a camera frame's bytes in a ``sensor_msgs`` encoding
(Bayer, YUV 4:2:2, 16-bit, ...) that the server converts. This module also holds what the asyncio client
(:mod:`peregrine.client.detection_aio`) shares: result types, message building and parsing.
"""

from __future__ import annotations

import enum
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import numpy as np
from peregrine.proto import detection_pb2 as det

from .channel import DEFAULT_DEADLINE_S, DETECTION_SERVICE, MAX_MESSAGE_BYTES, ChannelSettings, RetryPolicy, TlsOptions
from .errors import PeregrineClientError, status_code
from .keypoints import Keypoint

# No model named: the server runs its only detection pipeline (and says which are ready when it has several).
DEFAULT_MODEL = ""


@dataclass(frozen=True)
class RawFrame:
    """A camera frame's bytes as its driver gives them, sent as they are for the server to convert.

    ``encoding`` is a ``sensor_msgs/image_encodings`` name (rgb8, bgr8, mono16, yuv422, yuv422_yuy2,
    bayer_rggb8, ...; one the server does not take is INVALID_ARGUMENT, listing those it does), ``step`` the
    bytes per row (0: packed), ``is_bigendian`` the byte order of 16-bit samples. ``data`` is bytes or a
    C-contiguous array (its bytes are sent), ``height`` x ``width`` pixels. A ROS ``sensor_msgs/Image`` maps
    field for field::

        RawFrame(msg.data, msg.height, msg.width, msg.encoding, msg.step, bool(msg.is_bigendian))
    """

    data: bytes | bytearray | memoryview | np.ndarray
    height: int
    width: int
    encoding: str
    step: int = 0
    is_bigendian: bool = False


# What detect() and stream() take as one image.
ImageInput: TypeAlias = str | os.PathLike[str] | bytes | bytearray | memoryview | np.ndarray | RawFrame
# What stream() takes as one frame: an image, or an image and its capture time (microseconds, any clock).
FrameInput: TypeAlias = ImageInput | tuple[ImageInput, int] | tuple[ImageInput, int, str]


# -- results -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Detection:
    """One box in original-image pixels (x1, y1 top-left; x2, y2 bottom-right), its score in [0, 1],
    its class id and the class name (from the model's labels; ``class<i>`` when it has none); a pose
    model's box carries its keypoints, in the model's order (COCO's 17 for person pose), and a segmentation
    model's its mask's polygon ((x, y) points, ultralytics' ``masks.xy``), others none."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    class_id: int
    label: str = ""
    keypoints: tuple[Keypoint, ...] = ()
    polygon: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class StageTimings:
    """Where the server spent a request's time, in microseconds. The pre/infer/post stages run per batch,
    so they are the figures of the batch (of ``batch_size`` images) the request ran in."""

    decode_us: int  # image decoding before queueing
    queue_us: int  # waiting for a batch and a free instance
    pre_us: int  # letterbox + normalize
    infer_us: int  # the model
    post_us: int  # decode head + NMS + map back to image pixels
    total_us: int  # arrival at the server to result ready
    batch_size: int

    @classmethod
    def from_proto(cls, msg: det.StageTimings) -> StageTimings:
        return cls(msg.decode_us, msg.queue_us, msg.pre_us, msg.infer_us, msg.post_us, msg.total_us, msg.batch_size)


@dataclass(frozen=True)
class DetectResult:
    """The whole answer to one ``Detect`` call: per image (in request order) its detections and its size
    ``(height, width)`` as the server decoded it, the server's stage timings, and what served it."""

    detections: list[list[Detection]]
    image_sizes: list[tuple[int, int]]
    timings: StageTimings
    model: str
    version: str
    request_id: str = ""


class FrameStatus(enum.IntEnum):
    """What became of a streamed frame (``StreamResult.Status``)."""

    OK = 0  # it ran: detections and timings are set
    DROPPED = 1  # a newer frame superseded it while it waited (latest frame wins); never run
    DEADLINE_EXCEEDED = 2  # its deadline passed before it could run; never run
    ERROR = 3  # a bad frame or a failed batch: see ``error``

    # Python 3.11 made an IntEnum print as its number; a log line or a print should say what happened.
    def __str__(self) -> str:
        return self.name

    def __format__(self, spec: str) -> str:
        return format(self.name, spec)


@dataclass(frozen=True)
class FrameResult:
    """The answer to one frame of :meth:`DetectionClient.stream`, in the order the frames were sent.

    ``sequence`` is the number the client gave the frame (0, 1, 2, ... in the order sent) and
    ``capture_time_us`` the capture time it carried (echoed by the server). ``status`` says whether it ran;
    when it did not, ``error`` holds the gRPC status the server gave (ABORTED for a dropped frame,
    DEADLINE_EXCEEDED, INVALID_ARGUMENT, ...). ``dropped_total`` counts the frames the server dropped on
    this stream so far. ``latency_s`` is measured by the client: from handing the frame to gRPC to receiving
    its result (seconds)."""

    sequence: int
    capture_time_us: int
    status: FrameStatus
    detections: list[Detection] = field(default_factory=list)
    image_size: tuple[int, int] = (0, 0)  # (height, width); (0, 0) when the frame did not run
    timings: StageTimings | None = None
    error: PeregrineClientError | None = None
    dropped_total: int = 0
    latency_s: float = math.nan
    frame_id: str = ""  # the camera frame the client named (a ROS header's frame_id), echoed

    @property
    def ok(self) -> bool:
        return self.status is FrameStatus.OK


# -- messages ------------------------------------------------------------------------------------------
def image_message(image: ImageInput) -> det.Image:
    """An ``Image`` message: a path's file bytes or encoded bytes as ``encoded``, a uint8 array or a
    :class:`RawFrame` (with its encoding, step and byte order) as ``raw``.

    Raises OSError when a file cannot be read, ValueError for an array that is not uint8 ``[H, W]`` or
    ``[H, W, C]`` or a RawFrame whose sizes a message cannot hold, TypeError for anything else. Encodings,
    channel counts and sizes are the server's to judge."""
    if isinstance(image, RawFrame):
        return det.Image(raw=raw_message(image))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"image: expected a uint8 [H, W] or [H, W, C] array, got {image.dtype} "
                             f"{list(image.shape)}")
        h, w = image.shape[:2]
        c = image.shape[2] if image.ndim == 3 else 1
        return det.Image(raw=det.RawImage(height=h, width=w, channels=c, data=np.ascontiguousarray(image).tobytes()))
    if isinstance(image, bytes | bytearray | memoryview):
        return det.Image(encoded=bytes(image))
    if isinstance(image, str | os.PathLike):
        return det.Image(encoded=Path(image).read_bytes())
    raise TypeError(f"image: expected a path, encoded bytes or a uint8 array, got {type(image).__name__}")


def raw_message(frame: RawFrame) -> det.RawImage:
    """The ``RawImage`` of a :class:`RawFrame`. Raises ValueError for a size or step that is negative or over
    2^32 - 1, or data that is a non-contiguous array; TypeError for data that is not bytes or an array."""
    for name in ("height", "width", "step"):
        value = getattr(frame, name)
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value < 1 << 32:
            raise ValueError(f"RawFrame.{name}: expected an int in [0, 2^32), got {value!r}")
    data = frame.data
    if isinstance(data, np.ndarray):
        if not data.flags.c_contiguous:
            raise ValueError("RawFrame.data: expected a C-contiguous array (its bytes are sent as they are)")
        data = data.tobytes()
    elif not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"RawFrame.data: expected bytes or a numpy array, got {type(data).__name__}")
    return det.RawImage(height=int(frame.height), width=int(frame.width), encoding=frame.encoding,
                        step=int(frame.step), is_bigendian=bool(frame.is_bigendian), data=bytes(data))


def options_message(score_threshold: float | None = None, iou_threshold: float | None = None,
                    max_detections: int | None = None, classes: Sequence[int] | None = None) -> det.DetectOptions:
    """``DetectOptions`` with only the given overrides set (None: the model's default).

    Raises ValueError for values the message cannot hold (a negative max_detections); range checks
    ([0, 1] thresholds, known class ids) are the server's (INVALID_ARGUMENT)."""
    msg = det.DetectOptions()
    if score_threshold is not None:
        msg.score_threshold = score_threshold
    if iou_threshold is not None:
        msg.iou_threshold = iou_threshold
    if max_detections is not None:
        msg.max_detections = max_detections
    if classes:
        msg.classes.extend(classes)
    return msg


def detect_request(images: Sequence[ImageInput], model: str, version: str = "", score_threshold: float | None = None,
                   iou_threshold: float | None = None, max_detections: int | None = None,
                   classes: Sequence[int] | None = None, priority: int = 0, timeout_us: int | None = None,
                   request_id: str = "") -> det.DetectRequest:
    """A ``DetectRequest`` of several images. Raises as :func:`image_message`, and TypeError when
    ``images`` is a single image rather than a sequence of them."""
    if isinstance(images, np.ndarray | str | bytes | bytearray | memoryview | os.PathLike | RawFrame):
        raise TypeError("images: expected a sequence of images; use detect() for one image")
    return det.DetectRequest(model_name=model, model_version=version, id=request_id,
                             images=[image_message(i) for i in images],
                             options=options_message(score_threshold, iou_threshold, max_detections, classes),
                             priority=priority, timeout_us=timeout_us or 0)


def detection_methods(channel: Any) -> tuple[Any, Any]:
    """The ``Detect`` and ``DetectStream`` callables of a channel (``grpc`` or ``grpc.aio``)."""
    detect = channel.unary_unary(f"/{DETECTION_SERVICE}/Detect", request_serializer=det.DetectRequest.SerializeToString,
                                 response_deserializer=det.DetectResponse.FromString)
    stream = channel.stream_stream(f"/{DETECTION_SERVICE}/DetectStream",
                                   request_serializer=det.StreamFrame.SerializeToString,
                                   response_deserializer=det.StreamResult.FromString)
    return detect, stream


def detections_of(msg: det.ImageDetections) -> list[Detection]:
    return [Detection(b.x1, b.y1, b.x2, b.y2, b.score, b.class_id, b.label,
                      tuple(Keypoint(p.x, p.y, p.score if p.HasField("score") else None) for p in b.keypoints),
                      tuple(zip(b.polygon[0::2], b.polygon[1::2], strict=True)))
            for b in msg.boxes]


def detect_result(msg: det.DetectResponse) -> DetectResult:
    return DetectResult([detections_of(r) for r in msg.results], [(r.height, r.width) for r in msg.results],
                        StageTimings.from_proto(msg.timings), msg.model_name, msg.model_version, msg.id)


class FrameSender:
    """Numbers a stream's frames, turns them into ``StreamFrame`` messages and matches results to them.

    Shared by the sync and asyncio clients. Every frame carries the model, options, deadline and priority
    (the server reads them per frame); the first also carries ``max_in_flight``. An exception raised while
    taking or encoding a frame is kept in ``failure`` and ends the input; the caller raises it once the
    results of the frames already sent have been delivered."""

    def __init__(self, model: str, version: str, options: det.DetectOptions, deadline_s: float | None,
                 max_in_flight: int | None, priority: int) -> None:
        self.model = model
        self.version = version
        self.options = options
        self.deadline_us = 0 if deadline_s is None else max(1, round(deadline_s * 1e6))
        self.max_in_flight = max_in_flight or 0
        self.priority = priority
        self.next_sequence = 0
        self.sent_at: dict[int, float] = {}
        self.failure: BaseException | None = None

    def message(self, item: FrameInput) -> det.StreamFrame:
        """The message of the next frame; stamps its send time. Raises as :func:`image_message`, and
        TypeError for a tuple that is not (image, capture time in µs)."""
        image: ImageInput
        frame_id = ""
        if isinstance(item, tuple):
            if len(item) not in (2, 3) or isinstance(item[1], bool) or not isinstance(item[1], int | np.integer) \
                    or (len(item) == 3 and not isinstance(item[2], str)):
                raise TypeError("frame: expected an image, (image, capture_time_us: int) or (image, "
                                "capture_time_us: int, frame_id: str), got a tuple of "
                                + ", ".join(type(x).__name__ for x in item))
            image, capture_us = item[0], int(item[1])
            frame_id = item[2] if len(item) == 3 else ""
        else:
            image, capture_us = item, time.monotonic_ns() // 1000
        msg = det.StreamFrame(model_name=self.model, model_version=self.version, sequence=self.next_sequence,
                              capture_time_us=int(capture_us), image=image_message(image), options=self.options,
                              deadline_us=self.deadline_us, priority=self.priority, frame_id=frame_id)
        if self.next_sequence == 0:
            msg.max_in_flight = self.max_in_flight
        self.sent_at[self.next_sequence] = time.monotonic()
        self.next_sequence += 1
        return msg

    def messages(self, frames: Iterable[FrameInput]) -> Iterator[det.StreamFrame]:
        """The request iterator of a sync stream (gRPC pulls it from its own thread)."""
        try:
            for item in frames:
                yield self.message(item)
        except Exception as e:
            self.failure = e

    def result(self, msg: det.StreamResult) -> FrameResult:
        sent = self.sent_at.pop(msg.sequence, None)
        latency = math.nan if sent is None else time.monotonic() - sent
        status = FrameStatus(msg.status)
        if status is FrameStatus.OK:
            d = msg.detections
            return FrameResult(msg.sequence, msg.capture_time_us, status, detections_of(d), (d.height, d.width),
                               StageTimings.from_proto(msg.timings), None, msg.dropped_total, latency, msg.frame_id)
        error = PeregrineClientError(status_code(msg.error_code), msg.error_message, "DetectStream")
        return FrameResult(msg.sequence, msg.capture_time_us, status, error=error, dropped_total=msg.dropped_total,
                           latency_s=latency, frame_id=msg.frame_id)


# -- the client ----------------------------------------------------------------------------------------
class DetectionClient:
    """A blocking client of ``peregrine.v1.DetectionService``.

    Connection options, deadlines and errors as :class:`~peregrine.client.InferenceClient`: every call has
    a deadline (its ``deadline_s`` argument in seconds, else the client's ``deadline_s``; ``math.inf`` or
    None: none). ``Detect`` is retried on UNAVAILABLE per ``retry`` (a detection pipeline is stateless, so
    a repeat can only cost compute; all attempts stay within the deadline; ``NO_RETRY`` turns it off);
    ``DetectStream`` is never retried. A failed call raises :class:`PeregrineClientError` with the gRPC
    status in ``.code``. Thread-safe; ``close()`` or use ``with``."""

    def __init__(
        self,
        url: str | Sequence[str] = "127.0.0.1:8001",
        *,
        tls: TlsOptions | None = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        deadline_s: float | None = DEFAULT_DEADLINE_S,
        retry: RetryPolicy | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.settings = ChannelSettings.of(url, tls, token, headers, deadline_s, retry, max_message_bytes,
                                           channel_options)
        self._channel = self.settings.channel()
        self._metadata = self.settings.metadata()
        self._detect, self._stream = detection_methods(self._channel)

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> DetectionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- Detect --------------------------------------------------------------------------------------
    def detect(
        self,
        image: ImageInput,
        *,
        model: str = DEFAULT_MODEL,
        version: str = "",
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[int] | None = None,
        priority: int = 0,
        timeout_us: int | None = None,
        deadline_s: float | None = None,
    ) -> list[Detection]:
        """The detections in one image: a path, encoded bytes or a uint8 array. Arguments and errors as
        :meth:`detect_with_timings`."""
        return self.detect_with_timings(
            [image], model=model, version=version, score_threshold=score_threshold, iou_threshold=iou_threshold,
            max_detections=max_detections, classes=classes, priority=priority, timeout_us=timeout_us,
            deadline_s=deadline_s).detections[0]

    def detect_many(
        self,
        images: Sequence[ImageInput],
        *,
        model: str = DEFAULT_MODEL,
        version: str = "",
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[int] | None = None,
        priority: int = 0,
        timeout_us: int | None = None,
        deadline_s: float | None = None,
    ) -> list[list[Detection]]:
        """The detections of each image (in order), all sent in one request. Arguments and errors as
        :meth:`detect_with_timings`."""
        return self.detect_with_timings(
            images, model=model, version=version, score_threshold=score_threshold, iou_threshold=iou_threshold,
            max_detections=max_detections, classes=classes, priority=priority, timeout_us=timeout_us,
            deadline_s=deadline_s).detections

    def detect_with_timings(
        self,
        images: Sequence[ImageInput],
        *,
        model: str = DEFAULT_MODEL,
        version: str = "",
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[int] | None = None,
        priority: int = 0,
        timeout_us: int | None = None,
        deadline_s: float | None = None,
        request_id: str = "",
    ) -> DetectResult:
        """Detect objects in several images in one request (they run in one batch) and return the whole
        answer, the server's :class:`StageTimings` included.

        ``model``: the detection pipeline; empty (the default) lets a server that serves exactly one choose
        it. ``score_threshold``/``iou_threshold`` in [0, 1], ``max_detections`` (1 .. the model's limit) and
        ``classes`` (keep only these class ids) override the model's defaults for this request; None keeps
        them. ``priority``: the model's priority level (1 most urgent; 0 default). ``timeout_us``: the
        server-side queue timeout. ``deadline_s``: the call's deadline (see the class).

        Raises PeregrineClientError: NOT_FOUND unknown model, INVALID_ARGUMENT a bad image (corrupt, empty,
        too large, wrong channel count), bad options, too many images or a model that is not a detection
        pipeline; DEADLINE_EXCEEDED; UNAVAILABLE queue full or server unreachable. OSError, ValueError,
        TypeError for images that cannot be sent (see :func:`image_message`)."""
        request = detect_request(images, model, version, score_threshold, iou_threshold, max_detections, classes,
                                 priority, timeout_us, request_id)
        try:
            msg = self._detect(request, timeout=self.settings.timeout(deadline_s), metadata=self._metadata)
        except grpc.RpcError as e:
            raise PeregrineClientError.from_rpc_error(e, "Detect") from None
        return detect_result(msg)

    # -- DetectStream --------------------------------------------------------------------------------
    def stream(
        self,
        frames: Iterable[FrameInput],
        *,
        model: str = DEFAULT_MODEL,
        version: str = "",
        deadline_s: float | None = None,
        max_in_flight: int | None = None,
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[int] | None = None,
        priority: int = 0,
        stream_deadline_s: float | None = None,
    ) -> Iterator[FrameResult]:
        """Send one camera's frames over a ``DetectStream`` and yield one :class:`FrameResult` per frame,
        in the order sent.

        ``frames`` yields images (as :meth:`detect` takes them) or ``(image, capture_time_us)`` pairs; the
        client numbers them 0, 1, 2, ... and, without a capture time, stamps the client's monotonic clock
        when it takes the frame. gRPC pulls frames from its own thread as fast as the iterable gives them, so
        a camera iterable paces the stream. ``deadline_s``: each frame's budget from its arrival at the
        server (None: the client's ``deadline_s``; ``math.inf``: none); a frame past it is never run and
        comes back DEADLINE_EXCEEDED. ``max_in_flight``: frames the server runs at once for this stream
        (None: the model's ``stream_max_in_flight``); when it falls behind it drops the oldest waiting frame
        (DROPPED). Options as :meth:`detect_with_timings`, for every frame. ``stream_deadline_s`` bounds the
        whole stream (None: no limit).

        A frame that fails (bad image, a failed batch) comes back with status ERROR and the stream goes on.
        Raises PeregrineClientError when the stream itself fails (e.g. UNAVAILABLE); an exception raised by
        ``frames``, or a frame that cannot be sent (OSError, ValueError, TypeError), ends the input and is
        raised after the results of the frames sent before it. Stopping the iteration cancels the stream."""
        sender = FrameSender(model, version, options_message(score_threshold, iou_threshold, max_detections, classes),
                             self.settings.timeout(deadline_s), max_in_flight, priority)
        timeout = None if stream_deadline_s is None else self.settings.timeout(stream_deadline_s)
        call = self._stream(sender.messages(frames), timeout=timeout, metadata=self._metadata)
        try:
            for msg in call:
                yield sender.result(msg)
        except grpc.RpcError as e:
            if sender.failure is not None:
                raise sender.failure from None
            raise PeregrineClientError.from_rpc_error(e, "DetectStream") from None
        finally:
            call.cancel()
        if sender.failure is not None:
            raise sender.failure
