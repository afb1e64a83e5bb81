"""``peregrine.v1.DetectionService``: typed detection, one call (``Detect``) or a camera stream
(``DetectStream``: latest frame wins)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc

from ...codecs import detection as codecs
from ...core.errors import PeregrineError
from ...dataplane.dataplane import DataPlane, RequestScope
from ...dataplane.streams import DETECT_STREAM, StreamAnswer
from .status import GrpcCall, check, status_of, unary


class DetectionServicer(det_grpc.DetectionServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    @unary
    async def Detect(self, request: det.DetectRequest, context: grpc.aio.ServicerContext) -> det.DetectResponse:
        call = GrpcCall(context)
        with self.dataplane.scope(call, request.model_name, nbytes=request.ByteSize()) as scope:
            t = time.perf_counter_ns()
            decoded = codecs.decode_detect_request(request, scope.deadline)
            scope.decode_ns = time.perf_counter_ns() - t
            result = await scope.detect(decoded)
            t = time.perf_counter_ns()
            answer = codecs.encode_detect_response(request, result)
            scope.encode_ns = time.perf_counter_ns() - t
            return answer

    async def DetectStream(self, request_iterator: AsyncIterator[det.StreamFrame],
                           context: grpc.aio.ServicerContext) -> AsyncIterator[det.StreamResult]:
        call = GrpcCall(context)
        try:
            answers = self.dataplane.stream(call, request_iterator, _FrameStream(call), DETECT_STREAM)
        except PeregrineError as e:  # no room for another stream
            code, message = status_of(e)
            await context.abort(code, message)
        try:
            async for answer in answers:
                yield answer
        finally:
            await answers.aclose()  # type: ignore[attr-defined]  # the driver's own clean-up, now


class _FrameStream:
    """The codec of one DetectStream, for the data plane's stream driver."""

    def __init__(self, call: GrpcCall) -> None:
        self.call = call
        self.frames = codecs.StreamFrameDecoder()

    def model_of(self, message: det.StreamFrame) -> str:
        return self.frames.model_of(message)

    def decode(self, message: det.StreamFrame, scope: RequestScope) -> Any:
        check(message)
        t = time.perf_counter_ns()
        request = self.frames.decode(message, scope.started_ns / 1e9, self.call.deadline)
        scope.decode_ns = time.perf_counter_ns() - t
        return request

    def answer(self, message: det.StreamFrame, scope: RequestScope, answer: StreamAnswer) -> det.StreamResult:
        if answer.error is None:
            t = time.perf_counter_ns()
            encoded = codecs.encode_stream_result(message, answer.result, answer.dropped_total)
            scope.encode_ns = time.perf_counter_ns() - t
            return encoded
        code, text = status_of(answer.error)
        return codecs.stream_failure(message, codecs.stream_status(answer.outcome), code.value[0], text,
                                     answer.dropped_total)

    def size(self, message: det.StreamFrame) -> int:
        return int(message.ByteSize())

    def shed(self, message: det.StreamFrame) -> det.StreamFrame:
        """What a frame's answer needs once it is decoded (or dropped): its sequence, capture time and frame
        id, not its pixels."""
        return det.StreamFrame(sequence=message.sequence, capture_time_us=message.capture_time_us,
                               frame_id=codecs.echoed_frame_id(message))
