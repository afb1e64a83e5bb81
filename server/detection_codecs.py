"""``peregrine.v1`` detection messages <-> frame requests and results (the detection API's codecs).

Like :mod:`peregrine.server.codecs` for OIP, this is the only place that turns detection protobufs
into arrays and back. Decoding images happens here, in the transport's thread, never on the event loop.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from peregrine.proto import detection_pb2 as det

from .errors import InvalidArgument
from .pipeline.detection import DetectionPipeline, FrameRequest, FrameResult

_US = 1000


def _options(pipeline: DetectionPipeline, msg: det.DetectOptions, prefix: str) -> Any:
    return pipeline.options(
        msg.score_threshold if msg.HasField("score_threshold") else None,
        msg.iou_threshold if msg.HasField("iou_threshold") else None,
        msg.max_detections if msg.HasField("max_detections") else None,
        list(msg.classes),
        prefix=prefix,
    )


def decode_image(pipeline: DetectionPipeline, image: det.Image, field: str) -> np.ndarray:
    """One ``Image`` message as a uint8 [H, W, 3] frame. Raises InvalidArgument naming ``field``."""
    kind = image.WhichOneof("data")
    if kind == "encoded":
        return pipeline.frame_from_bytes(image.encoded, f"{field}.encoded")
    if kind == "raw":
        raw = image.raw
        return pipeline.frame_from_raw(raw.data, raw.height, raw.width, raw.channels, f"{field}.raw")
    raise InvalidArgument(f"{field}: expected an image (encoded bytes or raw pixels), got none")


def decode_detect_request(msg: det.DetectRequest, pipeline: DetectionPipeline, deadline: float | None) -> FrameRequest:
    """A ``DetectRequest`` as a :class:`FrameRequest` (images decoded, options checked)."""
    arrival = time.monotonic()
    t0 = time.perf_counter_ns()
    pipeline.check_count(len(msg.images), "images")
    frames = [decode_image(pipeline, img, f"images[{i}]") for i, img in enumerate(msg.images)]
    options = _options(pipeline, msg.options, "options.")
    params: dict[str, Any] = {"timeout": msg.timeout_us} if msg.timeout_us else {}
    return FrameRequest(msg.model_name, msg.model_version, msg.id, parameters=params, deadline=deadline,
                        priority=msg.priority, arrival=arrival, frames=frames, options=options,
                        decode_ns=time.perf_counter_ns() - t0)


def _boxes(pipeline: DetectionPipeline, dets: np.ndarray, height: int, width: int) -> det.ImageDetections:
    out = det.ImageDetections(height=height, width=width)
    for x1, y1, x2, y2, score, cls in dets.tolist():
        c = int(cls)
        out.boxes.add(x1=x1, y1=y1, x2=x2, y2=y2, score=score, class_id=c, label=pipeline.label(c))
    return out


def timings(result: FrameResult) -> det.StageTimings:
    t = result.times
    return det.StageTimings(decode_us=result.decode_ns // _US, queue_us=result.queue_ns // _US,
                            pre_us=t.pre_ns // _US, infer_us=t.infer_ns // _US, post_us=t.post_ns // _US,
                            total_us=result.total_ns // _US, batch_size=t.batch_size)


def encode_detect_response(pipeline: DetectionPipeline, request: FrameRequest,
                           result: FrameResult) -> det.DetectResponse:
    response = det.DetectResponse(model_name=pipeline.name, model_version=str(pipeline.version), id=request.id,
                                  timings=timings(result))
    for frame, dets in zip(request.frames, result.detections, strict=True):
        response.results.append(_boxes(pipeline, dets, frame.shape[0], frame.shape[1]))
    return response


def decode_stream_frame(msg: det.StreamFrame, pipeline: DetectionPipeline, arrival: float,
                        call_deadline: float | None) -> FrameRequest:
    """A ``StreamFrame`` as a one-frame :class:`FrameRequest`; its deadline is the earlier of the frame's
    ``deadline_us`` (from ``arrival``, a monotonic time) and the call's."""
    t0 = time.perf_counter_ns()
    frame = decode_image(pipeline, msg.image, "image")
    options = _options(pipeline, msg.options, "options.")
    deadline = call_deadline
    if msg.deadline_us:
        own = arrival + msg.deadline_us / 1e6
        deadline = own if deadline is None else min(deadline, own)
    return FrameRequest(msg.model_name, msg.model_version, f"frame-{msg.sequence}", deadline=deadline,
                        priority=msg.priority, arrival=arrival, frames=[frame], options=options,
                        decode_ns=time.perf_counter_ns() - t0)


def encode_stream_result(pipeline: DetectionPipeline, msg: det.StreamFrame, request: FrameRequest,
                         result: FrameResult, dropped_total: int) -> det.StreamResult:
    frame = request.frames[0]
    return det.StreamResult(sequence=msg.sequence, capture_time_us=msg.capture_time_us, status=det.StreamResult.OK,
                            detections=_boxes(pipeline, result.detections[0], frame.shape[0], frame.shape[1]),
                            timings=timings(result), dropped_total=dropped_total)


def stream_failure(msg: det.StreamFrame, status: int, code: int, message: str, dropped_total: int) -> det.StreamResult:
    return det.StreamResult(sequence=msg.sequence, capture_time_us=msg.capture_time_us, status=status,  # type: ignore[arg-type]
                            error_code=code, error_message=message, dropped_total=dropped_total)
