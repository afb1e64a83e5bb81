"""One driver for every bidirectional stream (``ModelStreamInfer``, ``DetectStream``), on the event loop.

A reader task takes messages off the wire, decodes them with the transport's adapter (its codec) and admits
them into the stream's window; a launcher task validates and queues them as the window allows (or the reader
does, for streams whose flow control always leaves a slot); the call's own task answers them, each exactly
once, in arrival order. A stream costs no thread, however long it stays open or idle. What differs between
streams is a :class:`StreamPolicy`:

- **Flow control**: at most ``max_unanswered`` messages, and at most ``Limits.max_stream_bytes`` of them
  and of their results (made, or expected at the rate this stream's results have come), read and not yet
  written back (at least one message), and no reading while the server's bytes in flight are
  over their bound; beyond that the reader stops reading, so gRPC's flow control holds a client that sends
  faster than the model runs (or does not read its answers) instead of the server buffering its backlog.
- **The window** (:class:`~peregrine.server.scheduling.frames.FrameWindow`): how many run at once and how
  many wait; a message arriving when the waiting room is full pushes out the oldest waiting one, answered
  as dropped (latest frame wins), its bytes let go at once. With room for everything read ahead, nothing is
  ever dropped.
- **Draining**: when the server shuts down, the reader stops reading, what was read is answered and the
  stream ends (OK).

Every message goes through the data plane as any unary request does (:class:`~.dataplane.RequestScope`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ..core.errors import Aborted, Cancelled, DeadlineExceeded, InvalidArgument, NotReady, Unavailable
from ..core.types import DetectRequest, InferRequest, InferResponse
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
# Requests of one ModelStreamInfer stream read off the wire and not yet answered.
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

    def size(self, message: M_contra) -> int:
        """The bytes a message holds while it is read and not yet answered."""
        ...

    def shed(self, message: M_contra) -> Any:
        """What a message's answer needs of it, without its payload (tensors, pixels): the driver keeps this
        instead of the message once it is decoded (or dropped), so the message's bytes are freed at once."""
        ...


@dataclass(frozen=True)
class StreamPolicy:
    """``answer``: "infer" (OIP responses) or "detect" (boxes, from detection pipelines only).
    ``max_unanswered``: flow control (None: none). ``window(model, first_request)``: the stream's window,
    made when its first message is admitted. ``launch_inline``: the reader validates and queues each
    message itself, with no launcher task; only for streams whose flow control keeps a slot free for every
    message read (``max_unanswered`` <= the window's ``max_in_flight``), and whose validation is cheap
    enough not to hold up reading."""

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
# Frames of one DetectStream read and not yet answered: beyond them a client that does not read its answers
# is held back by flow control (dropped frames keep no pixels, but every frame is answered).
DETECT_MAX_UNANSWERED = 128
# DetectStream: a camera; latest frame wins, with the window the pipeline's settings (or the stream) ask for.
DETECT_STREAM = StreamPolicy("detect", DETECT_MAX_UNANSWERED, _detection_window)


@dataclass(eq=False)
class _Item:
    """One message read off the stream, answered exactly once."""

    message: Any
    scope: RequestScope
    nbytes: int
    model: ModelVersion | None = None
    request: InferRequest | None = None
    task: asyncio.Task[Any] | None = None
    failure: StreamAnswer | None = None  # answered without a result
    result_nbytes: int = 0  # its result's bytes, held from when it is made until its answer is written
    awaiting_result: bool = True  # read, and its result (or failure) not yet made
    answered: asyncio.Event | None = None  # set once it has its failure or its task is done


class StreamDriver(Generic[M, R]):
    """One stream call (see the module docstring)."""

    def __init__(self, plane: DataPlane, call: Call, adapter: StreamAdapter[M, R], policy: StreamPolicy) -> None:
        self.plane = plane
        self.call = call
        self.adapter = adapter
        self.policy = policy
        self.limits = plane.admission.limits
        self.window: FrameWindow[_Item] | None = None
        self.order: asyncio.Queue[_Item | None] = asyncio.Queue()
        self.input_done = False
        self.unanswered = 0
        self.held = 0  # bytes of the messages read and of their results, not yet written back (or dropped)
        # Results to come: the bytes of the messages read whose result is not made yet, and how many result
        # bytes this stream's messages have made per message byte so far (1 until one has a result).
        self.awaiting = 0
        self.made_bytes = [0, 0]  # message bytes, result bytes of the messages with a result
        self.holding: set[_Item] = set()  # the items those bytes belong to
        self.changed = asyncio.Event()  # a slot freed, an answer made, bytes let go, input ended
        # Items queued on their model and not finished: what ending the stream must cancel. Finished items
        # leave at once, so a long stream holds only what is in flight, never its history.
        self.launched: set[_Item] = set()

    def _dropped(self) -> int:
        return self.window.dropped if self.window else 0

    def _fail(self, item: _Item, outcome: str, error: BaseException) -> None:
        item.failure = StreamAnswer(outcome, error=error, dropped_total=self._dropped())
        if item.answered is not None:
            item.answered.set()

    def _resulted(self, item: _Item, result_nbytes: int | None) -> None:
        """Its result is made (``result_nbytes``; None: it has none, it failed or was dropped)."""
        if item.awaiting_result:
            item.awaiting_result = False
            self.awaiting -= item.nbytes
            if result_nbytes is not None:
                item.result_nbytes = result_nbytes
                self.held += result_nbytes
                self.plane.admission.take(self.call.connection, result_nbytes)
                self.made_bytes[0] += item.nbytes
                self.made_bytes[1] += result_nbytes

    def _expected(self) -> float:
        """The result bytes still to come for the messages read, as this stream's results have gone so far."""
        sent, made = self.made_bytes
        return self.awaiting * (made / sent if sent else 1.0)

    def _let_go(self, item: _Item) -> None:
        """Its bytes are no longer held (its answer written, or it was dropped and shed)."""
        self._resulted(item, None)
        if item in self.holding:
            self.holding.discard(item)
            nbytes = item.nbytes + item.result_nbytes
            self.held -= nbytes
            self.plane.admission.release(self.call.connection, nbytes)
            self.changed.set()

    # -- reading ---------------------------------------------------------------------------------
    async def _read(self, messages: AsyncIterator[M]) -> None:
        iterator = messages.__aiter__()
        draining = asyncio.ensure_future(self.plane.draining.wait())
        receive: asyncio.Future[M] | None = None
        try:
            while True:
                receive = asyncio.ensure_future(iterator.__anext__())
                await asyncio.wait({receive, draining}, return_when=asyncio.FIRST_COMPLETED)
                if not receive.done():  # the server is shutting down: read no more
                    receive.cancel()
                    break
                try:
                    message = receive.result()
                except StopAsyncIteration:
                    break
                self._take(message)
                if not await self._room():
                    break
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the stream itself broke (the client went away)
            log.debug("stream ended: %s", e)
        finally:
            draining.cancel()
            if receive is not None:  # a read cut short by the stream's end: nobody waits for its outcome
                if receive.done():
                    if not receive.cancelled():
                        receive.exception()
                else:
                    receive.cancel()
            self.input_done = True
            self.order.put_nowait(None)
            self.changed.set()

    def _take(self, message: M) -> None:
        nbytes = self.adapter.size(message)
        item = _Item(message, self._scope(message), nbytes)
        self.unanswered += 1
        self.held += nbytes
        self.awaiting += nbytes
        self.holding.add(item)
        self.plane.admission.take(self.call.connection, nbytes)
        if not self.policy.launch_inline:
            item.answered = asyncio.Event()
        self.order.put_nowait(item)
        try:
            self.plane.admission.check_rate(self.call.identity)  # each message counts as a request
            self._admit(item)
            if self.policy.launch_inline:
                self._start_inline(self._take_admitted(item))
        except Exception as e:
            self._fail(item, "error", e)

    def _scope(self, message: M) -> RequestScope:
        """A message's own scope (its bytes are the stream's to hold: none held by the scope itself)."""
        from .dataplane import RequestScope

        scope = RequestScope(self.plane, self.call, self.adapter.model_of(message), time.monotonic_ns())
        scope.kind = "DetectStream" if self.policy.answer == "detect" else "ModelStreamInfer"
        return scope

    async def _room(self) -> bool:
        """Wait until the stream may read another message; False when the call is over or the server drains."""
        limit = self.policy.max_unanswered
        admission = self.plane.admission
        while True:
            if self.plane.draining.is_set():
                return False
            if ((limit is None or self.unanswered < limit)
                    and self.held + self._expected() < self.limits.max_stream_bytes
                    and admission.fits(self.call.connection, 0)):
                return True
            self.changed.clear()
            with contextlib.suppress(TimeoutError):  # other streams' and calls' bytes free room too
                await asyncio.wait_for(self.changed.wait(), 0.25)

    def _admit(self, item: _Item) -> None:
        request = self.adapter.decode(item.message, item.scope)
        # Decoding copied its payload out of the message (protobuf hands out copies): the answer needs only
        # the message's names, so the message's own copy of the payload is freed now rather than held with it.
        item.message = self.adapter.shed(item.message)
        try:
            if self.policy.answer == "detect":
                model: ModelVersion = self.plane.detection_model(request.model_name, request.model_version)
                item.scope.model_name = model.name  # the one the server chose when the stream named none
            else:
                model = self.plane.repository.get(request.model_name, request.model_version)
        except NotReady:
            # A stream does not wait for a cold start (its frames would queue behind it): the load starts,
            # this frame is answered UNAVAILABLE, and frames sent once the model is ready are served.
            if request.model_name and self.plane.lifecycle.request_load(request.model_name):
                raise Unavailable(f"model '{request.model_name}' is loading on demand (cold start); frames sent "
                                  "once it is ready are served") from None
            raise
        self.plane.lifecycle.touch(model.name)  # a stream's frames keep its model from idling out
        item.model, item.request = model, request
        if self.window is None:
            self.window = self.policy.window(model, request)
        for old in self.window.offer(item):
            assert old.request is not None
            old.failure = StreamAnswer("dropped", error=Aborted(
                f"frame {_sequence(old.request)} dropped: frame {_sequence(request)} superseded it while it "
                "waited (latest frame wins)"), dropped_total=self.window.dropped)
            old.request = None
            old.message = self.adapter.shed(old.message)  # its answer is made; its bytes need not wait
            self._let_go(old)
            if old.answered is not None:
                old.answered.set()
        self.changed.set()

    # -- launching -------------------------------------------------------------------------------
    def _take_admitted(self, item: _Item) -> _Item:
        """With inline launching, the item just admitted: flow control leaves it a free slot."""
        assert self.window is not None
        if self.window.take() is not item:
            raise RuntimeError("inline launch needs max_unanswered <= the window's max_in_flight")
        return item

    def _start_inline(self, item: _Item) -> None:
        """Validate on the loop and queue (cheap validation only: see StreamPolicy.launch_inline)."""
        assert item.model is not None and item.request is not None
        scope = item.scope
        request = item.request
        request.trace = self.plane.tracer.begin(item.model.name, str(item.model.version), request.id,
                                                scope.started_ns)
        try:
            item.model = scope.route(item.model, request)
            prepared = item.model.validate(request)
        except Exception as e:
            self._fail(item, "error", e)
            self._slot_freed()
            return
        if prepared.trace is not None:
            prepared.trace.stamp("QUEUE_START")
        scope.request = prepared
        self._launch_task(item, prepared)

    async def _start(self, item: _Item) -> None:
        """Validate an item taken from the window (off the loop where it decodes images) and queue it."""
        assert item.model is not None and item.request is not None
        try:
            item.model = item.scope.route(item.model, item.request)
            request = await item.scope.prepare(item.model, item.request)
            if request.deadline is not None and time.monotonic() >= request.deadline:
                raise DeadlineExceeded(f"frame {_sequence(request)}: its deadline passed before it could run")
        except Exception as e:
            self._fail(item, "deadline" if isinstance(e, DeadlineExceeded) else "error", e)
            self._slot_freed()
            return
        self._launch_task(item, request)

    def _launch_task(self, item: _Item, request: InferRequest) -> None:
        assert item.model is not None
        item.task = asyncio.ensure_future(item.scope.run(item.model, request, self.policy.answer))
        self.launched.add(item)
        item.task.add_done_callback(functools.partial(self._finished, item))

    def _slot_freed(self) -> None:
        assert self.window is not None
        self.window.finish()
        self.changed.set()

    def _finished(self, item: _Item, task: asyncio.Task[Any]) -> None:
        self.launched.discard(item)
        # A result waits for the answers before it and for the client to read them: its bytes count against
        # the stream's and the server's bounds like the request's, so a client that does not read holds back
        # its own stream rather than growing the server.
        ok = item in self.holding and not task.cancelled() and task.exception() is None
        self._resulted(item, _result_nbytes(task.result()) if ok else None)
        self._slot_freed()
        if item.answered is not None:
            item.answered.set()

    async def _launch(self) -> None:
        """The launcher task: start each item as the window gives it a slot."""
        while True:
            item = self.window.take() if self.window else None
            if item is not None:
                await self._start(item)
                continue
            if self.input_done and not (self.window and self.window.waiting):
                return
            self.changed.clear()
            await self.changed.wait()

    # -- answering -------------------------------------------------------------------------------
    async def _answer(self, item: _Item) -> R:
        if item.answered is not None:
            await item.answered.wait()
        answer = item.failure
        if answer is None:
            assert item.task is not None
            try:
                answer = StreamAnswer("ok", result=await item.task, dropped_total=self._dropped())
            except asyncio.CancelledError:
                answer = StreamAnswer("error", error=Cancelled("cancelled"), dropped_total=self._dropped())
            except Exception as e:
                outcome = "deadline" if isinstance(e, DeadlineExceeded) else "error"
                answer = StreamAnswer(outcome, error=e, dropped_total=self._dropped())
        self.plane.metrics.observe_stream_answer(item.scope.model_name, answer.outcome)
        try:
            try:
                out = self.adapter.answer(item.message, item.scope, answer)
            except Exception as e:  # the result could not be encoded (an output that does not fit its region)
                answer = StreamAnswer("error", error=e, dropped_total=answer.dropped_total)
                out = self.adapter.answer(item.message, item.scope, answer)
        finally:
            item.scope.close(answer.error)
        return out

    async def run(self, messages: AsyncIterator[M]) -> AsyncIterator[R]:
        reader = asyncio.ensure_future(self._read(messages))
        launcher = None if self.policy.launch_inline else asyncio.ensure_future(self._launch())
        item: _Item | None = None
        try:
            while (item := await self.order.get()) is not None:
                answer = await self._answer(item)
                self.unanswered -= 1
                yield answer
                # gRPC asks for the next answer once this one is written to the transport (within the
                # client's flow-control window): only now are its request's and result's bytes let go.
                self._let_go(item)
                item = None
        finally:
            # The call is over (answered, cancelled or broken): nothing read is kept, nothing queued runs.
            reader.cancel()
            if launcher is not None:
                launcher.cancel()
            for it in list(self.launched):
                if it.task is not None:
                    it.task.cancel()
            pending = list(self.holding)
            while not self.order.empty():
                it = self.order.get_nowait()
                if it is not None and it not in pending:
                    pending.append(it)
            for it in pending:
                it.scope.close(Cancelled("the stream ended before this message was answered"))
                self._let_go(it)
            self.plane.admission.close_stream(self.call.connection)


def _result_nbytes(result: Any) -> int:
    """The bytes a result holds: its output tensors' (a detection result's boxes are small)."""
    if isinstance(result, InferResponse):
        return sum(int(getattr(array, "nbytes", 0)) for array in result.outputs.values())
    return 0


def _sequence(request: InferRequest) -> Any:
    """How messages name a request: a stream frame's sequence number, else its id."""
    return request.sequence if isinstance(request, DetectRequest) else repr(request.id)
