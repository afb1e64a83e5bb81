"""``peregrine.v1.DetectionService``: typed detection, one call or a camera stream."""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc

from .. import detection_codecs as codecs
from ..engine import Engine
from ..errors import Cancelled, DeadlineExceeded, InvalidArgument
from ..metrics import Metrics
from ..pipeline.detection import DetectionPipeline, FrameRequest
from ..repository import ModelRepository
from ..scheduling.frames import FrameWindow
from ..tracing import Tracer
from .status import status_of, unary

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 64
_CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


def _deadline(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class DetectionServicer(det_grpc.DetectionServiceServicer):
    def __init__(self, repository: ModelRepository, engine: Engine, metrics: Metrics,
                 tracer: Tracer | None = None) -> None:
        self.repo = repository
        self.engine = engine
        self.metrics = metrics
        self.tracer = tracer if tracer is not None else Tracer()

    def submit(self, pipeline: DetectionPipeline, req: FrameRequest, started_ns: int) -> Any:
        """Queue a decoded request on its pipeline, traced when the tracer samples it."""
        req.trace = self.tracer.begin(pipeline.name, str(pipeline.version), req.id, started_ns)
        if req.trace is not None:
            req.trace.stamp("QUEUE_START")
        return self.engine.submit(pipeline.detect(req))

    def pipeline(self, name: str, version: str = "") -> DetectionPipeline:
        """The ready detection pipeline called ``name``; InvalidArgument when it is another kind of model."""
        if not name:
            raise InvalidArgument("model_name: expected the name of a detection pipeline model, got ''")
        model = self.repo.get(name, version)
        if not isinstance(model, DetectionPipeline):
            pipelines = sorted({m.name for m in self.repo.ready_models() if isinstance(m, DetectionPipeline)})
            raise InvalidArgument(
                f"model_name: '{name}' is a {model.config.platform} model, not a detection pipeline "
                f"(platform peregrine_detection); detection pipelines here: {', '.join(pipelines) or 'none'}"
            )
        return model

    @unary
    def Detect(self, request: det.DetectRequest, context: grpc.ServicerContext) -> det.DetectResponse:
        start = time.perf_counter()
        started_ns = time.monotonic_ns()
        try:
            pipeline = self.pipeline(request.model_name, request.model_version)
            req = codecs.decode_detect_request(request, pipeline, _deadline(context))
            future = self.submit(pipeline, req, started_ns)
            if not context.add_callback(future.cancel):
                future.cancel()
            result = future.result()
            self.metrics.observe_stages(pipeline.name, result.stages())
            response = codecs.encode_detect_response(pipeline, req, result)
            self.tracer.finish(req.trace)
        except BaseException as e:
            self.metrics.observe_request(request.model_name, status_of(e)[0].name, time.perf_counter() - start)
            raise
        self.metrics.observe_request(request.model_name, "OK", time.perf_counter() - start)
        return response

    def DetectStream(self, request_iterator: Iterator[det.StreamFrame],
                     context: grpc.ServicerContext) -> Iterator[det.StreamResult]:
        return _FrameStream(self, context).run(request_iterator)


@dataclass
class _Slot:
    """One received frame, answered exactly once (in arrival order, which is sequence order)."""

    msg: det.StreamFrame
    arrival: float
    pipeline: DetectionPipeline | None = None
    request: FrameRequest | None = None
    future: concurrent.futures.Future[Any] | None = None
    failure: det.StreamResult | None = None
    answered: threading.Event = field(default_factory=threading.Event)


class _FrameStream:
    """One DetectStream call. A reader thread takes frames off the wire into a latest-frame-wins window,
    a launcher thread decodes and submits them as slots free up, and the call's own thread answers them
    in order."""

    def __init__(self, servicer: DetectionServicer, context: grpc.ServicerContext) -> None:
        self.servicer = servicer
        self.context = context
        self.call_deadline = _deadline(context)
        self.cond = threading.Condition()
        self.window: FrameWindow[_Slot] | None = None
        self.order: queue.Queue[_Slot | None] = queue.Queue()
        self.input_done = False
        self.cancelled = False
        self.model_name = ""
        self.model_version = ""
        self.last_sequence: int | None = None
        self.options = det.DetectOptions()
        self.deadline_us = 0
        self.priority = 0
        # Slots submitted to the engine and not yet finished (by id): what a cancel must cancel. Finished
        # slots leave at once, so a long stream holds only its frames in flight, never its history.
        self.launched: dict[int, _Slot] = {}

    # -- answers -------------------------------------------------------------------------------
    def _fail(self, slot: _Slot, status: int, error: BaseException) -> None:
        code, message = status_of(error)
        slot.failure = codecs.stream_failure(slot.msg, status, code.value[0], message, self._dropped())
        slot.answered.set()

    def _dropped(self) -> int:
        return self.window.dropped if self.window else 0

    # -- reading -------------------------------------------------------------------------------
    def _read(self, frames: Iterator[det.StreamFrame]) -> None:
        try:
            for msg in frames:
                slot = _Slot(msg, time.monotonic())
                self.order.put(slot)
                try:
                    self._admit(slot)
                except Exception as e:
                    self._fail(slot, det.StreamResult.ERROR, e)
        except Exception as e:  # the stream itself broke (the client went away)
            log.debug("detect stream ended: %s", e)
        finally:
            with self.cond:
                self.input_done = True
                self.cond.notify_all()
            self.order.put(None)

    def _admit(self, slot: _Slot) -> None:
        msg = slot.msg
        if self.last_sequence is not None and msg.sequence <= self.last_sequence:
            raise InvalidArgument(f"sequence: expected more than the previous frame's {self.last_sequence}, "
                                  f"got {msg.sequence}")
        self.last_sequence = msg.sequence
        if msg.model_name:
            self.model_name, self.model_version = msg.model_name, msg.model_version
        # Options, deadline and priority stay in force for later frames until a frame sets them again.
        if msg.HasField("options"):
            self.options.CopyFrom(msg.options)
        else:
            msg.options.CopyFrom(self.options)
        self.deadline_us = msg.deadline_us = msg.deadline_us or self.deadline_us
        self.priority = msg.priority = msg.priority or self.priority
        slot.pipeline = self.servicer.pipeline(self.model_name, self.model_version)
        with self.cond:
            if self.window is None:
                settings = slot.pipeline.settings
                wanted = msg.max_in_flight or settings.stream_max_in_flight
                if wanted > MAX_IN_FLIGHT:
                    raise InvalidArgument(f"max_in_flight: expected 0..{MAX_IN_FLIGHT}, got {wanted}")
                self.window = FrameWindow(wanted, settings.stream_max_waiting)
            pushed = self.window.offer(slot)
            for old in pushed:
                old.failure = codecs.stream_failure(
                    old.msg, det.StreamResult.DROPPED, grpc.StatusCode.ABORTED.value[0],
                    f"frame {old.msg.sequence} dropped: frame {msg.sequence} superseded it while it waited "
                    "(latest frame wins)", self.window.dropped)
                old.msg.ClearField("image")  # its answer is made; the pixels need not wait in the queue
                old.answered.set()
            self.cond.notify_all()

    # -- launching -----------------------------------------------------------------------------
    def _next(self) -> _Slot | None:
        with self.cond:
            while True:
                if self.cancelled:
                    return None
                slot = self.window.take() if self.window else None
                if slot is not None:
                    return slot
                if self.input_done and not (self.window and self.window.waiting):
                    return None
                self.cond.wait()

    def _finished(self, slot: _Slot) -> None:
        with self.cond:
            assert self.window is not None
            self.window.finish()
            self.launched.pop(id(slot), None)
            self.cond.notify_all()
        slot.answered.set()

    def _launch(self) -> None:
        while (slot := self._next()) is not None:
            pipeline = slot.pipeline
            assert pipeline is not None
            try:
                req = codecs.decode_stream_frame(slot.msg, pipeline, slot.arrival, self.call_deadline)
                if req.deadline is not None and time.monotonic() >= req.deadline:
                    raise DeadlineExceeded(f"frame {slot.msg.sequence}: its deadline passed before it could run")
                slot.request = req
                slot.future = self.servicer.submit(pipeline, req, int(slot.arrival * 1e9))
            except Exception as e:
                status = det.StreamResult.DEADLINE_EXCEEDED if isinstance(e, DeadlineExceeded) else \
                    det.StreamResult.ERROR
                self._fail(slot, status, e)
                with self.cond:
                    assert self.window is not None
                    self.window.finish()
                continue
            with self.cond:
                self.launched[id(slot)] = slot
            slot.future.add_done_callback(lambda _f, s=slot: self._finished(s))

    def _cancel(self) -> None:
        with self.cond:
            self.cancelled = True
            waiting = self.window.drain() if self.window else []
            launched = list(self.launched.values())
            self.cond.notify_all()
        for slot in waiting:
            self._fail(slot, det.StreamResult.ERROR, Cancelled("stream cancelled by the client"))
        for slot in launched:
            if slot.future is not None:
                slot.future.cancel()

    # -- answering -----------------------------------------------------------------------------
    def _answer(self, slot: _Slot) -> det.StreamResult:
        slot.answered.wait()
        if slot.failure is not None:
            return slot.failure
        assert slot.future is not None and slot.request is not None and slot.pipeline is not None
        try:
            result = slot.future.result()
        except BaseException as e:
            status = det.StreamResult.DEADLINE_EXCEEDED if isinstance(e, DeadlineExceeded) else det.StreamResult.ERROR
            code, message = status_of(e)
            return codecs.stream_failure(slot.msg, status, code.value[0], message, self._dropped())
        self.servicer.metrics.observe_stages(slot.pipeline.name, result.stages())
        answer = codecs.encode_stream_result(slot.pipeline, slot.msg, slot.request, result, self._dropped())
        self.servicer.tracer.finish(slot.request.trace)
        return answer

    def run(self, frames: Iterator[det.StreamFrame]) -> Iterator[det.StreamResult]:
        self.context.add_callback(self._cancel)
        threading.Thread(target=self._read, args=(frames,), name="detect-stream-read", daemon=True).start()
        threading.Thread(target=self._launch, name="detect-stream-launch", daemon=True).start()
        while (slot := self.order.get()) is not None:
            result = self._answer(slot)
            model = self.model_name or slot.msg.model_name
            latency = time.monotonic() - slot.arrival
            code = "OK" if result.status == det.StreamResult.OK else _CODE_NAMES.get(result.error_code, "UNKNOWN")
            self.servicer.metrics.observe_request(model, code, latency)
            yield result
