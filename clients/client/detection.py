"""``DetectionClient``: typed detection over ``peregrine.v1.DetectionService`` (frames in, boxes out).

The service is planned, not yet served: docs/CLIENTS.md ("Detection service (planned)") gives the proto this
client is written against. Until ``peregrine.proto.detection_pb2`` carries those messages, constructing a
``DetectionClient`` raises PeregrineClientError(UNIMPLEMENTED); use OIP ``ModelInfer`` with
:mod:`peregrine.client.images` meanwhile (see ``clients/examples/robot_loop.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from .channel import DEFAULT_DEADLINE_S, MAX_MESSAGE_BYTES, ChannelSettings, RetryPolicy, TlsOptions
from .errors import PeregrineClientError

SERVICE = "peregrine.v1.DetectionService"


@dataclass(frozen=True)
class Detection:
    """One box in original-image pixels (x1, y1 top-left; x2, y2 bottom-right), its score in [0, 1],
    its class index and, when the model has labels, its class name."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    class_id: int
    label: str = ""


@dataclass(frozen=True)
class FrameResult:
    """The answer to one frame of a stream: ``detections`` when it ran, else ``error`` (e.g. DEADLINE_EXCEEDED
    for a frame that missed its deadline, ABORTED for one superseded by a newer frame: latest frame wins)."""

    frame_id: int
    detections: list[Detection] = field(default_factory=list)
    error: PeregrineClientError | None = None
    server_latency_us: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


def _proto() -> Any:
    from peregrine.proto import detection_pb2

    if not hasattr(detection_pb2, "DetectRequest"):
        raise PeregrineClientError(grpc.StatusCode.UNIMPLEMENTED,
                                   "this build has no peregrine.v1 detection messages (the DetectionService is "
                                   "not available yet); use OIP ModelInfer")
    return detection_pb2


class DetectionClient:
    """Frames in, boxes out, over the typed detection service. Same connection options, deadline and error
    behaviour as :class:`~peregrine.client.InferenceClient`; Detect is retried only by gRPC's transparent
    retries (never after it reached the server).

    Raises PeregrineClientError(UNIMPLEMENTED) at construction when the detection protocol is missing."""

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        *,
        tls: TlsOptions | None = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        deadline_s: float | None = DEFAULT_DEADLINE_S,
        retry: RetryPolicy | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._pb = _proto()
        self.settings = ChannelSettings(url, tls, token, dict(headers or {}), deadline_s, retry or RetryPolicy(),
                                        max_message_bytes, tuple(channel_options))
        self._channel = self.settings.channel()
        self._metadata = self.settings.metadata()
        self._detect = self._channel.unary_unary(
            f"/{SERVICE}/Detect", request_serializer=self._pb.DetectRequest.SerializeToString,
            response_deserializer=self._pb.DetectResponse.FromString)
        self._stream = self._channel.stream_stream(
            f"/{SERVICE}/DetectStream", request_serializer=self._pb.DetectRequest.SerializeToString,
            response_deserializer=self._pb.DetectResponse.FromString)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> DetectionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, image: np.ndarray | bytes, model: str, frame_id: int, score_threshold: float,
                 iou_threshold: float, max_detections: int, frame_deadline_us: int, priority: int) -> Any:
        pb = self._pb
        if isinstance(image, bytes | bytearray | memoryview):
            img = pb.Image(encoded=bytes(image))
        else:
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"image: expected uint8 [H,W,3] RGB or encoded bytes, got {image.dtype} "
                                 f"{list(image.shape)}")
            h, w, c = image.shape
            img = pb.Image(raw=pb.RawImage(height=h, width=w, channels=c,
                                           data=np.ascontiguousarray(image).tobytes()))
        return pb.DetectRequest(model_name=model, frame_id=frame_id, image=img, score_threshold=score_threshold,
                                iou_threshold=iou_threshold, max_detections=max_detections,
                                deadline_us=frame_deadline_us, priority=priority)

    @staticmethod
    def _detections(msg: Any) -> list[Detection]:
        return [Detection(b.x1, b.y1, b.x2, b.y2, b.score, b.class_id, b.label) for b in msg.boxes]

    def detect(self, image: np.ndarray | bytes, *, model: str = "yolov8n", score_threshold: float = 0.0,
               iou_threshold: float = 0.0, max_detections: int = 0, priority: int = 0,
               deadline_s: float | None = None) -> list[Detection]:
        """Detect objects in one image: a uint8 ``[H,W,3]`` RGB array or encoded JPEG/PNG bytes.
        Thresholds and ``max_detections`` of 0 use the model's defaults. ``deadline_s`` as in ``infer``.

        Raises PeregrineClientError (NOT_FOUND, INVALID_ARGUMENT, DEADLINE_EXCEEDED, ...)."""
        request = self._request(image, model, 0, score_threshold, iou_threshold, max_detections, 0, priority)
        try:
            msg = self._detect(request, timeout=self.settings.timeout(deadline_s), metadata=self._metadata)
        except grpc.RpcError as e:
            raise PeregrineClientError.from_rpc_error(e, "Detect") from None
        return self._detections(msg)

    def stream(self, frames: Iterable[np.ndarray | bytes], *, model: str = "yolov8n",
               frame_deadline_ms: float = 0.0, score_threshold: float = 0.0, iou_threshold: float = 0.0,
               max_detections: int = 0) -> Iterator[FrameResult]:
        """Send frames over one DetectStream and yield a :class:`FrameResult` per frame, numbered from 0 in
        the order sent. ``frame_deadline_ms`` (0: none) is each frame's budget from its arrival at the server;
        a late or superseded frame comes back with ``error`` set and the stream goes on.

        Raises PeregrineClientError when the stream itself fails; stopping the iteration cancels it."""
        deadline_us = round(frame_deadline_ms * 1000)
        requests = (self._request(f, model, i, score_threshold, iou_threshold, max_detections, deadline_us, 0)
                    for i, f in enumerate(frames))
        call = self._stream(requests, metadata=self._metadata)
        try:
            for msg in call:
                error = None
                if msg.error_code:
                    error = PeregrineClientError(_status(msg.error_code), msg.error_message, "DetectStream")
                yield FrameResult(msg.frame_id, self._detections(msg), error, msg.server_latency_us)
        except grpc.RpcError as e:
            raise PeregrineClientError.from_rpc_error(e, "DetectStream") from None
        finally:
            call.cancel()


def _status(code: int) -> grpc.StatusCode:
    """The StatusCode of a google.rpc.Code number."""
    return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
