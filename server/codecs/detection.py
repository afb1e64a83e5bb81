"""``peregrine.v1`` detection messages <-> plain detection requests and results.

Like :mod:`.oip` for OIP, the only place that turns detection protobufs into plain data and back. Images
are not decoded here: a request carries the bytes the client sent (:class:`EncodedImage`,
:class:`RawImage`) and the detection model decodes them, off the event loop. A ``DetectStream``'s state
(the model, options, deadline and priority that later frames inherit; sequence numbers that must grow)
is wire semantics, kept here by :class:`StreamFrameDecoder`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from peregrine.proto import detection_pb2 as det

from ..core.errors import InvalidArgument
from ..core.types import DetectRequest, EncodedImage, FrameResult, OptionOverrides, RawImage

_US = 1000
MAX_FRAME_ID_BYTES = 256  # a StreamFrame's frame_id (ROS frame ids are short names)


def _overrides(msg: det.DetectOptions) -> OptionOverrides:
    return OptionOverrides(
        msg.score_threshold if msg.HasField("score_threshold") else None,
        msg.iou_threshold if msg.HasField("iou_threshold") else None,
        msg.max_detections if msg.HasField("max_detections") else None,
        list(msg.classes),
        field_prefix="options.",
    )


def _check_stream_options(msg: det.DetectOptions) -> None:
    """What can be checked of a stream frame's options without its model (thresholds in [0, 1], class ids
    not negative): InvalidArgument naming the field. The model checks the rest (max_detections and class
    ids against its own) as it validates each frame."""
    for name in ("score_threshold", "iou_threshold"):
        if msg.HasField(name) and not 0.0 <= getattr(msg, name) <= 1.0:  # NaN fails both comparisons
            raise InvalidArgument(f"options.{name}: expected a number in [0, 1], got {getattr(msg, name)!r}")
    bad = [c for c in msg.classes if c < 0]
    if bad:
        raise InvalidArgument(f"options.classes: expected class ids >= 0, got {bad[:8]}")


def decode_image(image: det.Image, field: str) -> EncodedImage | RawImage:
    """One ``Image`` message as the bytes it carries. Raises InvalidArgument naming ``field``."""
    kind = image.WhichOneof("data")
    if kind == "encoded":
        return EncodedImage(image.encoded, field)
    if kind == "raw":
        raw = image.raw
        return RawImage(raw.data, raw.height, raw.width, raw.channels, field, raw.encoding, raw.step, raw.is_bigendian)
    raise InvalidArgument(f"{field}: expected an image (encoded bytes or raw pixels), got none")


def decode_detect_request(msg: det.DetectRequest, deadline: float | None) -> DetectRequest:
    """A ``DetectRequest`` as a plain :class:`DetectRequest` (images still as sent)."""
    images = [decode_image(img, f"images[{i}]") for i, img in enumerate(msg.images)]
    params: dict[str, Any] = {"timeout": msg.timeout_us} if msg.timeout_us else {}
    return DetectRequest(msg.model_name, msg.model_version, msg.id, parameters=params, deadline=deadline,
                         priority=msg.priority, images=images, overrides=_overrides(msg.options))


class StreamFrameDecoder:
    """The frames of one ``DetectStream`` as plain requests. Model, options, deadline and priority stay
    in force for later frames until a frame sets them again; sequence numbers must grow."""

    def __init__(self) -> None:
        self.model_name = ""
        self.model_version = ""
        self.last_sequence: int | None = None
        self.options = det.DetectOptions()
        self.deadline_us = 0
        self.priority = 0

    def model_of(self, msg: det.StreamFrame) -> str:
        return msg.model_name or self.model_name

    def decode(self, msg: det.StreamFrame, arrival: float, call_deadline: float | None) -> DetectRequest:
        """A ``StreamFrame`` as a one-image :class:`DetectRequest`; its deadline is the earlier of the
        frame's ``deadline_us`` (from ``arrival``, a monotonic time) and the call's."""
        if len(msg.frame_id.encode("utf-8", "surrogatepass")) > MAX_FRAME_ID_BYTES:
            raise InvalidArgument(f"frame_id: expected at most {MAX_FRAME_ID_BYTES} bytes (a camera frame's name), "
                                  f"got {len(msg.frame_id.encode('utf-8', 'surrogatepass'))}")
        if self.last_sequence is not None and msg.sequence <= self.last_sequence:
            raise InvalidArgument(f"sequence: expected more than the previous frame's {self.last_sequence}, "
                                  f"got {msg.sequence}")
        self.last_sequence = msg.sequence
        if msg.model_name:
            self.model_name, self.model_version = msg.model_name, msg.model_version
        if msg.HasField("options"):
            _check_stream_options(msg.options)  # a frame's bad options answer that frame and are not kept
            self.options.CopyFrom(msg.options)
        self.deadline_us = msg.deadline_us or self.deadline_us
        self.priority = msg.priority or self.priority
        image = decode_image(msg.image, "image")
        deadline = call_deadline
        if self.deadline_us:
            own = arrival + self.deadline_us / 1e6
            deadline = own if deadline is None else min(deadline, own)
        return DetectRequest(self.model_name, self.model_version, f"frame-{msg.sequence}", deadline=deadline,
                             priority=self.priority, arrival=arrival, images=[image],
                             overrides=_overrides(self.options), sequence=msg.sequence,
                             max_in_flight=msg.max_in_flight)


# A Box's keypoints (field 8) in protobuf's wire format, made for all boxes at once: per keypoint the field's
# tag and length, then Keypoint's x, y (and score) as fixed32 fields (tags 0x0D, 0x15, 0x1D). Merged into each
# Box, they parse as the repeated Keypoint messages; one .add() per keypoint costs ~4x as much in Python.
_KEYPOINT_XY = [("tag", "u1"), ("length", "u1"), ("x_tag", "u1"), ("x", "<f4"), ("y_tag", "u1"), ("y", "<f4")]
_KEYPOINT_WIRE = {2: np.dtype(_KEYPOINT_XY), 3: np.dtype([*_KEYPOINT_XY, ("score_tag", "u1"), ("score", "<f4")])}


def _keypoint_wire(points: np.ndarray) -> tuple[bytes, int]:
    """float32 [k, K, D] keypoints as wire bytes (each box's in turn) and the bytes a box's take."""
    k, n, d = points.shape
    wire = np.empty((k, n), _KEYPOINT_WIRE[d])
    wire["tag"], wire["length"] = 0x42, wire.itemsize - 2  # field 8, length-delimited; the Keypoint's bytes
    wire["x_tag"], wire["x"], wire["y_tag"], wire["y"] = 0x0D, points[..., 0], 0x15, points[..., 1]
    if d == 3:
        wire["score_tag"], wire["score"] = 0x1D, points[..., 2]
    return wire.tobytes(), n * wire.itemsize


def _boxes(result: FrameResult, frame: int, height: int, width: int) -> det.ImageDetections:
    """The ``frame``-th image's boxes (and a pose model's keypoints, a segmentation model's mask polygons) as
    an ``ImageDetections``."""
    out = det.ImageDetections(height=height, width=width)
    wire, size = (b"", 0) if result.keypoints is None else _keypoint_wire(result.keypoints[frame])
    outlines = None if result.polygons is None else result.polygons[frame]
    for j, (x1, y1, x2, y2, score, cls) in enumerate(result.detections[frame].tolist()):
        c = int(cls)
        box = out.boxes.add(x1=x1, y1=y1, x2=x2, y2=y2, score=score, class_id=c, label=result.label(c))
        if size:
            box.MergeFromString(wire[j * size : (j + 1) * size])
        if outlines is not None:
            box.polygon.extend(outlines[j].ravel().tolist())
    return out


def timings(result: FrameResult) -> det.StageTimings:
    t = result.times
    return det.StageTimings(decode_us=result.decode_ns // _US, queue_us=result.queue_ns // _US,
                            pre_us=t.pre_ns // _US, infer_us=t.infer_ns // _US, post_us=t.post_ns // _US,
                            total_us=result.total_ns // _US, batch_size=t.batch_size)


def encode_detect_response(msg: det.DetectRequest, result: FrameResult) -> det.DetectResponse:
    response = det.DetectResponse(model_name=result.model_name, model_version=result.model_version, id=msg.id,
                                  timings=timings(result), variant=result.variant)
    for i, (height, width) in enumerate(result.sizes):
        response.results.append(_boxes(result, i, height, width))
    return response


def encode_stream_result(msg: det.StreamFrame, result: FrameResult, dropped_total: int) -> det.StreamResult:
    height, width = result.sizes[0]
    return det.StreamResult(sequence=msg.sequence, capture_time_us=msg.capture_time_us, status=det.StreamResult.OK,
                            detections=_boxes(result, 0, height, width),
                            timings=timings(result), dropped_total=dropped_total, frame_id=echoed_frame_id(msg),
                            variant=result.variant)


def stream_failure(msg: det.StreamFrame, status: int, code: int, message: str, dropped_total: int) -> det.StreamResult:
    return det.StreamResult(sequence=msg.sequence, capture_time_us=msg.capture_time_us, status=status,  # type: ignore[arg-type]
                            error_code=code, error_message=message, dropped_total=dropped_total,
                            frame_id=echoed_frame_id(msg))


def echoed_frame_id(msg: det.StreamFrame) -> str:
    """A frame's ``frame_id`` to echo: itself, or "" when it is over the bound (that frame is refused)."""
    frame_id = getattr(msg, "frame_id", "")
    return frame_id if len(frame_id.encode("utf-8", "surrogatepass")) <= MAX_FRAME_ID_BYTES else ""


def stream_status(outcome: str) -> int:
    """The ``StreamResult.status`` of a frame's outcome ("ok", "dropped", "deadline", "error")."""
    return {"ok": det.StreamResult.OK, "dropped": det.StreamResult.DROPPED,
            "deadline": det.StreamResult.DEADLINE_EXCEEDED}.get(outcome, det.StreamResult.ERROR)
