"""``peregrine.v1.DetectionService``: typed detection, one call (``Detect``) or a camera stream
(``DetectStream``: latest frame wins)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc

from ...codecs import detection as codecs
from ...dataplane.dataplane import DataPlane, RequestScope
from ...dataplane.streams import DETECT_STREAM, StreamAnswer
from .status import GrpcCall, status_of, unary


class DetectionServicer(det_grpc.DetectionServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    @unary
    def Detect(self, request: det.DetectRequest, context: grpc.ServicerContext) -> det.DetectResponse:
        call = GrpcCall(context)
        with self.dataplane.scope(call, request.model_name) as scope:
            result = scope.detect(codecs.decode_detect_request(request, scope.deadline))
            return codecs.encode_detect_response(request, result)

    def DetectStream(self, request_iterator: Iterator[det.StreamFrame],
                     context: grpc.ServicerContext) -> Iterator[det.StreamResult]:
        call = GrpcCall(context)
        return self.dataplane.stream(call, request_iterator, _FrameStream(call), DETECT_STREAM)


class _FrameStream:
    """The codec of one DetectStream, for the data plane's stream driver."""

    def __init__(self, call: GrpcCall) -> None:
        self.call = call
        self.frames = codecs.StreamFrameDecoder()

    def model_of(self, message: det.StreamFrame) -> str:
        return self.frames.model_of(message)

    def decode(self, message: det.StreamFrame, scope: RequestScope) -> Any:
        return self.frames.decode(message, scope.started_ns / 1e9, self.call.deadline)

    def answer(self, message: det.StreamFrame, scope: RequestScope, answer: StreamAnswer) -> det.StreamResult:
        if answer.error is None:
            return codecs.encode_stream_result(message, answer.result, answer.dropped_total)
        code, text = status_of(answer.error)
        return codecs.stream_failure(message, codecs.stream_status(answer.outcome), code.value[0], text,
                                     answer.dropped_total)

    def shed(self, message: det.StreamFrame) -> None:
        message.ClearField("image")
