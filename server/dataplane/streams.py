"""One driver for every bidirectional stream (``ModelStreamInfer``, ``DetectStream``).

A reader thread takes messages off the wire, decodes them with the transport's adapter (its codec) and
admits them into the stream's window; a launcher thread validates and queues them as the window allows
(or the reader does, for streams whose flow control always leaves a slot); the call's own thread answers
them, each exactly once, in arrival order. What differs between streams is
a :class:`StreamPolicy`:

- **Flow control** (``max_unanswered``): at most that many messages read and not yet answered; beyond it
  the reader stops reading, so gRPC's flow control holds a client that sends faster than the model runs
  instead of the server buffering its backlog.
- **The window** (:class:`~peregrine.server.scheduling.frames.FrameWindow`): how many run at once and how
  many wait; a message arriving when the waiting room is full pushes out the oldest waiting one, answered
  as dropped (latest frame wins). With room for everything read ahead, nothing is ever dropped.

Every message goes through the data plane as any unary request does (:class:`~.dataplane.RequestScope`).
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ..core.errors import Aborted, Cancelled, DeadlineExceeded, InvalidArgument
from ..core.types import DetectRequest, InferRequest
from ..models.base import ModelVersion
from ..models.detection import DetectionModel
from ..scheduling.frames import FrameWindow

if TYPE_CHECKING:
    from .dataplane import Call, DataPlane, RequestScope

log = logging.getLogger(__name__)

M = TypeVar("M")
R = TypeVar("R")
M_contra = TypeVar("M_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)

# Most frames a DetectStream may ask to run at once (its first frame's max_in_flight).
MAX_IN_FLIGHT = 64
# Requests of one ModelStreamInfer stream read off the wire and not yet answered. A 640x640 FP32 request
# is about 5 MB decoded.
STREAM_MAX_IN_FLIGHT = 32


@dataclass
class StreamAnswer:
    """How one message of a stream ended: ``outcome`` "ok" (with ``result``), "dropped" (pushed out of the
    window), "deadline" or "error" (with ``error``); ``dropped_total`` is the stream's count so far."""

    outcome: str
    result: Any = None
    error: BaseException | None = None
    dropped_total: int = 0


class StreamAdapter(Protocol[M_contra, R_co]):
    """What a transport lends the driver for one stream: its codec, both ways."""

    def model_of(self, message: M_contra) -> str:
        """The model a message is for, as the client named it (what its metrics are labelled with)."""
        ...

    def decode(self, message: M_contra, scope: RequestScope) -> InferRequest:
        """The message as a plain request (stream state such as options carried from earlier messages
        applied). Raises PeregrineError: that message is answered with the error, the stream goes on."""
        ...

    def answer(self, message: M_contra, scope: RequestScope, answer: StreamAnswer) -> R_co:
        """The wire answer to a message. An exception while encoding a result is answered as an error."""
        ...

    def shed(self, message: M_contra) -> None:
        """Drop what a dropped message carries that its answer does not need (its pixels)."""
        ...


@dataclass(frozen=True)
class StreamPolicy:
    """``answer``: "infer" (OIP responses) or "detect" (boxes, from detection pipelines only).
    ``max_unanswered``: flow control (None: none). ``window(model, first_request)``: the stream's window,
    made when its first message is admitted. ``launch_inline``: the reader validates and queues each
    message itself, with no launcher thread (no hand-off); only for streams whose flow control keeps a
    slot free for every message read (``max_unanswered`` <= the window's ``max_in_flight``), and whose
    validation is cheap enough not to hold up reading."""

    answer: str
    max_unanswered: int | None
    window: Callable[[ModelVersion, InferRequest], FrameWindow[Any]]
    launch_inline: bool = False


def _detection_window(model: ModelVersion, request: InferRequest) -> FrameWindow[Any]:
    assert isinstance(model, DetectionModel)
    settings = model.settings
    wanted = (request.max_in_flight if isinstance(request, DetectRequest) else 0) or settings.stream_max_in_flight
    if wanted > MAX_IN_FLIGHT:
        raise InvalidArgument(f"max_in_flight: expected 0..{MAX_IN_FLIGHT}, got {wanted}")
    return FrameWindow(wanted, settings.stream_max_waiting)


# ModelStreamInfer: requests run concurrently (so they can share batches), answered in order; none dropped.
OIP_STREAM = StreamPolicy("infer", STREAM_MAX_IN_FLIGHT,
                          lambda model, request: FrameWindow(STREAM_MAX_IN_FLIGHT, STREAM_MAX_IN_FLIGHT),
                          launch_inline=True)
# DetectStream: a camera; latest frame wins, with the window the pipeline's settings (or the stream) ask for.
DETECT_STREAM = StreamPolicy("detect", None, _detection_window)


@dataclass(eq=False)
class _Item:
    """One message read off the stream, answered exactly once."""

    message: Any
    scope: RequestScope
    model: ModelVersion | None = None
    request: InferRequest | None = None
    future: concurrent.futures.Future[Any] | None = None
    failure: StreamAnswer | None = None  # answered without a result
    # Set once the item has its failure or its future is done; None where the reader launches inline
    # (the item reaches the answering thread already failed or launched: its future is what to wait on).
    answered: threading.Event | None = None


class StreamDriver(Generic[M, R]):
    """One stream call (see the module docstring)."""

    def __init__(self, plane: DataPlane, call: Call, adapter: StreamAdapter[M, R], policy: StreamPolicy) -> None:
        self.plane = plane
        self.call = call
        self.adapter = adapter
        self.policy = policy
        self.cond = threading.Condition()
        self.window: FrameWindow[_Item] | None = None
        self.order: queue.Queue[_Item | None] = queue.Queue()
        self.input_done = False
        self.cancelled = False
        self.unanswered = 0
        # Items queued on their model and not finished (by id): what a cancel must cancel. Finished items
        # leave at once, so a long stream holds only what is in flight, never its history.
        self.launched: dict[int, _Item] = {}

    def _dropped(self) -> int:
        return self.window.dropped if self.window else 0

    def _fail(self, item: _Item, outcome: str, error: BaseException) -> None:
        item.failure = StreamAnswer(outcome, error=error, dropped_total=self._dropped())
        if item.answered is not None:
            item.answered.set()

    # -- reading ---------------------------------------------------------------------------------
    def _read(self, messages: Iterator[M]) -> None:
        try:
            for message in messages:
                item = _Item(message, self.plane.scope(self.call, self.adapter.model_of(message), time.monotonic_ns()))
                with self.cond:
                    self.unanswered += 1
                if self.policy.launch_inline:
                    try:
                        self._admit(item)
                        self._start(self._take_admitted(item))
                    except Exception as e:
                        self._fail(item, "error", e)
                    self.order.put(item)
                else:
                    item.answered = threading.Event()
                    self.order.put(item)
                    try:
                        self._admit(item)
                    except Exception as e:
                        self._fail(item, "error", e)
                if not self._has_room():
                    break
        except Exception as e:  # the stream itself broke (the client went away)
            log.debug("stream ended: %s", e)
        finally:
            with self.cond:
                self.input_done = True
                self.cond.notify_all()
            self.order.put(None)

    def _has_room(self) -> bool:
        """Wait until fewer than ``max_unanswered`` messages are unanswered; False when the call ended."""
        limit = self.policy.max_unanswered
        if limit is None:
            return True
        with self.cond:
            while self.unanswered >= limit:
                if self.cancelled or not self.call.is_active():
                    return False
                self.cond.wait(0.5)
        return True

    def _admit(self, item: _Item) -> None:
        request = self.adapter.decode(item.message, item.scope)
        if self.policy.answer == "detect":
            model: ModelVersion = self.plane.detection_model(request.model_name, request.model_version)
            item.scope.model_name = model.name  # the one the server chose when the stream named none
        else:
            model = self.plane.repository.get(request.model_name, request.model_version)
        item.model, item.request = model, request
        with self.cond:
            if self.window is None:
                self.window = self.policy.window(model, request)
            for old in self.window.offer(item):
                assert old.request is not None
                old.failure = StreamAnswer("dropped", error=Aborted(
                    f"frame {_sequence(old.request)} dropped: frame {_sequence(request)} superseded it while it "
                    "waited (latest frame wins)"), dropped_total=self.window.dropped)
                old.request = None
                self.adapter.shed(old.message)  # its answer is made; the pixels need not wait in the queue
                if old.answered is not None:
                    old.answered.set()
            self.cond.notify_all()

    # -- launching -------------------------------------------------------------------------------
    def _take_admitted(self, item: _Item) -> _Item:
        """With inline launching, the item just admitted: flow control leaves it a free slot."""
        with self.cond:
            assert self.window is not None
            taken = self.window.take()
        if taken is not item:
            raise RuntimeError("inline launch needs max_unanswered <= the window's max_in_flight")
        return item

    def _next(self) -> _Item | None:
        with self.cond:
            while True:
                if self.cancelled:
                    return None
                item = self.window.take() if self.window else None
                if item is not None:
                    return item
                if self.input_done and not (self.window and self.window.waiting):
                    return None
                self.cond.wait()

    def _finished(self, key: int, _future: concurrent.futures.Future[Any]) -> None:
        with self.cond:
            assert self.window is not None
            self.window.finish()
            item = self.launched.pop(key)
            self.cond.notify_all()
        if item.answered is not None:
            item.answered.set()

    def _launch(self) -> None:
        """The launcher thread: start each item as the window gives it a slot."""
        while (item := self._next()) is not None:
            self._start(item)

    def _start(self, item: _Item) -> None:
        """Validate an item taken from the window and queue it on its model (or answer it with the error)."""
        assert item.model is not None and item.request is not None
        try:
            request = item.scope.prepare(item.model, item.request)
            if request.deadline is not None and time.monotonic() >= request.deadline:
                raise DeadlineExceeded(f"frame {_sequence(request)}: its deadline passed before it could run")
            # The stream's own cancel (below) cancels what is in flight: one callback per stream, not
            # one per message kept for the stream's whole life.
            item.future = item.scope.launch(item.model, request, self.policy.answer, cancel_on_end=False)
        except Exception as e:
            self._fail(item, "deadline" if isinstance(e, DeadlineExceeded) else "error", e)
            with self.cond:
                assert self.window is not None
                self.window.finish()
            return
        with self.cond:
            self.launched[id(item)] = item
        # The callback names the item by key, not by reference: a future that refers back to its item
        # would make a cycle that only the garbage collector frees, holding the item's tensors.
        item.future.add_done_callback(functools.partial(self._finished, id(item)))

    def _cancel(self) -> None:
        with self.cond:
            self.cancelled = True
            waiting = self.window.drain() if self.window else []
            launched = list(self.launched.values())
            self.cond.notify_all()
        for item in waiting:
            self._fail(item, "error", Cancelled("stream cancelled by the client"))
        for item in launched:
            if item.future is not None:
                item.future.cancel()

    # -- answering -------------------------------------------------------------------------------
    def _answer(self, item: _Item) -> R:
        if item.answered is not None:
            item.answered.wait()
        answer = item.failure
        if answer is None:
            assert item.future is not None
            try:
                answer = StreamAnswer("ok", result=item.scope.result(item.future), dropped_total=self._dropped())
            except BaseException as e:
                outcome = "deadline" if isinstance(e, DeadlineExceeded) else "error"
                answer = StreamAnswer(outcome, error=e, dropped_total=self._dropped())
        try:
            try:
                out = self.adapter.answer(item.message, item.scope, answer)
            except Exception as e:  # the result could not be encoded (an output that does not fit its region)
                answer = StreamAnswer("error", error=e, dropped_total=answer.dropped_total)
                out = self.adapter.answer(item.message, item.scope, answer)
        finally:
            item.scope.close(answer.error)
        return out

    def run(self, messages: Iterator[M]) -> Iterator[R]:
        self.call.on_end(self._cancel)
        threading.Thread(target=self._read, args=(messages,), name="stream-read", daemon=True).start()
        if not self.policy.launch_inline:
            threading.Thread(target=self._launch, name="stream-launch", daemon=True).start()
        while (item := self.order.get()) is not None:
            try:
                yield self._answer(item)
            finally:
                with self.cond:
                    self.unanswered -= 1
                    self.cond.notify_all()


def _sequence(request: InferRequest) -> Any:
    """How messages name a request: a stream frame's sequence number, else its id."""
    return request.sequence if isinstance(request, DetectRequest) else repr(request.id)
