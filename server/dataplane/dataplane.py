"""The data plane: every request, from any transport, goes through it once.

A transport opens a :class:`RequestScope` when a call arrives, decodes the wire message with its codec,
hands the plain request to the scope and encodes what comes back; the scope does the rest, once, in one
place: admission (bytes in flight, rate), look-up, tracing, validation, submission to the model's
scheduler, waiting, statistics and metrics. Streams are a policy over the same scopes (:mod:`.streams`).

Everything runs on the server's event loop: a call costs no thread while it waits. Validation that
decodes images (a detection model's) runs in a small pool of decode threads, and a model's batches run in
its instances' threads; nothing else leaves the loop.

The data plane imports no transport: the transport describes its call with :class:`Call`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeVar

from ..config.override import parse_triton_override, triton_config_text
from ..core.errors import InvalidArgument, NotFound, PeregrineError, clipped, status_name
from ..core.stats import ModelStats
from ..core.types import DetectRequest, FrameResult, InferRequest, InferResponse, ModelDescription
from ..models.base import ModelVersion
from ..models.detection import DetectionModel
from ..observability import logs
from ..observability.drift import DriftMonitor
from ..observability.logsettings import LogSettings
from ..observability.metrics import Metrics
from ..observability.otel import OtelTracing, frame_stages, infer_stages
from ..observability.tracing import Tracer
from ..scheduling.loop import EventLoopThread
from .admission import Admission, Limits
from .cache import ResponseCache, request_key
from .classification import INLINE_CLASSES, classify_outputs, strings_to_make
from .ladders import Ladders
from .lifecycle import Lifecycle
from .model_files import check_files
from .repository import ModelRepository
from .shm import RequestRegions, SharedMemoryRegistry, cuda_available
from .streams import StreamAdapter, StreamDriver, StreamPolicy
from .switches import ObservabilitySwitches

log = logging.getLogger(__name__)

M = TypeVar("M")
R = TypeVar("R")
T = TypeVar("T")

EXTENSIONS = ["classification", "model_repository", "model_configuration", "schedule_policy", "statistics",
              "parameters", "logging", "trace", "binary_tensor_data"]


class Call(Protocol):
    """What the data plane needs of a transport's call."""

    started_ns: int  # time.monotonic_ns() when the call arrived
    deadline: float | None  # on the time.monotonic() clock; None: none
    connection: str  # the client's connection (its address and port): bounds per connection
    identity: str  # who the client is (its bearer token, else its address): the rate limit's key

    def header(self, name: str) -> str | None:
        """A request header (gRPC metadata, HTTP header) by its lower-case name: W3C trace context."""
        ...


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: list[str]


# gRPC's clock and ours may disagree by this much about when a call's deadline passed.
_DEADLINE_SLACK_S = 0.002


class RequestScope:
    """One request's passage through the data plane, from its arrival to its answer. Closing the scope
    (leaving its ``with`` block, or :meth:`close`) records the outcome in the metrics, ends the request's
    trace, returns its shared-memory leases and its bytes in flight."""

    def __init__(self, plane: DataPlane, call: Call, model_name: str, started_ns: int | None = None,
                 nbytes: int = 0) -> None:
        self.plane = plane
        self.call = call
        self.model_name = model_name
        self.started_ns = call.started_ns if started_ns is None else started_ns
        self.request: InferRequest | None = None  # as validated, once it is
        self._acquired: str | None = None  # the model this request holds in use (see Lifecycle.acquire)
        self._ladder: ModelVersion | None = None  # the ladder's top, when the model has one
        self._rung: str | None = None  # the rung below the top that runs the request, held in use
        self._routed: tuple[str, float, float] | None = None  # (rung, when routed, seconds expected from then)
        self.kind = "ModelInfer"  # what the request is, for its OpenTelemetry span
        self._frame: FrameResult | None = None  # a detection's answer (its stage durations, for its span)
        self._traceparent: str | bool | None = False  # the call's W3C traceparent, looked up once; False: not yet
        self._ran: ModelVersion | None = None  # the model version that answered (its stages' label)
        # The transport's decoding of the wire message and encoding of the answer (time.perf_counter_ns()
        # durations), set by the transport around its codec calls; None: not measured (a job's item).
        self.decode_ns: int | None = None
        self.encode_ns: int | None = None
        self._regions: RequestRegions | None = None
        self._held = 0
        self._closed = False
        if nbytes:
            plane.admission.hold(call.connection, nbytes, "request")
            self._held = nbytes

    @property
    def deadline(self) -> float | None:
        return self.call.deadline

    def _header(self, name: str) -> str | None:
        """A header of the call (gRPC metadata, HTTP header); None when it has none or its transport has no
        headers (a job's item)."""
        header = getattr(self.call, "header", None)
        return header(name) if header is not None else None

    def traceparent(self) -> str | None:
        """The W3C ``traceparent`` the call carried (None: none), looked up in its metadata once."""
        if self._traceparent is False:
            self._traceparent = self._header("traceparent")
        return self._traceparent  # type: ignore[return-value]

    def trace_id(self) -> str:
        """The W3C trace id the call carried, or "" (log lines about the request name it)."""
        return logs.trace_id_of(self.traceparent())

    @property
    def regions(self) -> RequestRegions:
        """The shared-memory regions this request reads and writes, leased until the scope closes."""
        if self._regions is None:
            self._regions = self.plane.shared_memory.use()
        return self._regions

    # -- one call, start to end -------------------------------------------------------------------
    async def infer(self, request: InferRequest) -> InferResponse:
        """Run an OIP request on the model it names and wait for the answer."""
        model = self.route(await self.acquire(request.model_name, request.model_version), request)
        cache = self.plane.cache
        if not (model.config.response_cache and cache.enabled):
            prepared = await self.prepare(model, request)
            return await self.run(model, prepared, "infer")
        start = time.perf_counter_ns()
        key = request_key(model.name, model.version, request)
        if self._regions is not None:
            self._regions.verify_inputs()  # the key hashed what was in shared memory: it must have been there
        hit = cache.get(key, request.id)
        if hit is not None:  # answered at once: nothing is queued or run
            self._ran = model
            model.stats.record_cache_hit(time.monotonic_ns() - self.started_ns, time.perf_counter_ns() - start)
            return hit
        lookup = time.perf_counter_ns() - start
        result: InferResponse = await self.run(model, await self.prepare(model, request), "infer")
        start = time.perf_counter_ns()
        cache.put(key, result)  # only answers: an error raised above is never stored
        model.stats.record_cache_miss(lookup + time.perf_counter_ns() - start)
        return result

    async def detect(self, request: DetectRequest) -> FrameResult:
        """Run a typed detection request on the detection pipeline it names (or the only one) and wait for
        the boxes."""
        self.kind = "Detect"
        if request.model_name:
            model = self.plane.require_detection(await self.acquire(request.model_name, request.model_version))
        else:
            model = self.plane.detection_model("", request.model_version)
        self.model_name = model.name
        model = self.route(model, request)
        prepared = await self.prepare(model, request)
        return await self.run(model, prepared, "detect")  # type: ignore[no-any-return]

    async def acquire(self, name: str, version: str) -> ModelVersion:
        """The model version the request names, loaded first if it comes on demand (a cold start, within the
        request's deadline); held in use until the scope closes (an idle model is unloaded only when none
        is in use)."""
        model = await self.plane.lifecycle.acquire(name, version, self.deadline)
        self._acquired = model.name
        return model

    def route(self, model: ModelVersion, request: InferRequest) -> ModelVersion:
        """The variant that runs ``request``: ``model`` itself, or when it declares an SLO ladder the rung its
        deadline calls for (held in use until the scope closes; the answer names it)."""
        if model.config.ladder is None:
            return model
        rung, expected = self.plane.ladders.choose(model, request)
        self._ladder = model
        self._routed = (rung.name, time.monotonic(), expected)
        if rung is not model:
            self.plane.lifecycle.hold(rung.name)
            self._rung = rung.name
        return rung

    def _name_in_logs(self, request_id: str) -> None:
        """Have the lines logged while this request's task runs name it and its trace (observability/logs.py).
        With OpenTelemetry on, the call's traceparent is looked up now (its span needs it anyway); with JSON
        logs or at DEBUG, only when a line is logged. Setting the context variable gives the task a context
        of its own, built and freed with it: a request with neither an id nor a trace sets nothing, unless an
        earlier request of its task (a stream's) left its own there."""
        plane = self.plane
        trace: str | Callable[[], str] = ""
        if plane.otel is not None:
            trace = self.trace_id()
        elif plane.trace_ids:
            trace = self.trace_id
        if request_id or trace or logs.request_context.get() is not None:
            logs.request_context.set((request_id, trace))

    # -- the steps, for drivers that interleave them (streams) --------------------------------------
    async def prepare(self, model: ModelVersion, request: InferRequest) -> InferRequest:
        """Begin the request's trace (when sampled) and validate it against ``model``: in a decode thread
        when validating decodes images, else on the loop. What :meth:`run` runs."""
        request.trace = self.plane.tracer.begin(model.name, str(model.version), request.id, self.started_ns)
        self._name_in_logs(request.id)
        if model.validate_decodes:
            began = time.perf_counter()
            prepared = await (self.plane.off_loop_background(model.validate, request) if request.background
                              else self.plane.off_loop(model.validate, request))
            if self._ladder is not None:
                self.plane.ladders.observe_lead(self._ladder.name, time.perf_counter() - began)
        else:
            prepared = model.validate(request)
        if prepared.trace is not None:
            prepared.trace.stamp("QUEUE_START")
        self.request = prepared
        return prepared

    async def run(self, model: ModelVersion, request: InferRequest, answer: str) -> Any:
        """Queue a prepared request on the model's scheduler and wait for it: "infer" answers an
        InferResponse, "detect" a FrameResult (a detection model's); the stage times go to the metrics on close.
        Cancelling the caller drops the request from the queue (or ignores its batch's answer)."""
        result = await (model.detect(request) if answer == "detect" else model.infer(request))  # type: ignore[attr-defined]
        if answer == "infer" and request.classification:
            batched = getattr(model, "max_batch_size", 0) > 0
            ranked = functools.partial(classify_outputs, result.outputs, request.classification, batched)
            # a few strings on the loop; many (a large output, a large count) in a worker thread
            inline = strings_to_make(result.outputs, request.classification, batched) <= INLINE_CLASSES
            result.outputs = ranked() if inline else await asyncio.to_thread(ranked)
        if self._regions is not None:
            self._regions.verify_inputs()  # a region that shrank while the model read it fails the request
        if self._ladder is not None:  # the answer is the ladder's, made by the rung that ran it
            result.variant = model.name
            result.model_name, result.model_version = self._ladder.name, str(self._ladder.version)
        self._ran = model
        if isinstance(result, FrameResult) and self.plane.otel is not None:
            self._frame = result
        return result

    # -- the end ------------------------------------------------------------------------------
    def close(self, error: BaseException | None = None) -> None:
        """The request is answered: with its result (``error`` None) or with ``error``."""
        if self._closed:
            return
        self._closed = True
        try:
            elapsed_ns = time.monotonic_ns() - self.started_ns
            status = "OK" if error is None else self._cancelled() if isinstance(error, asyncio.CancelledError) \
                else status_name(error)
            ran = (self._ran.name, self._ran.version) if error is None and self._ran is not None else None
            self.plane.metrics.observe(self.model_name, status, elapsed_ns, ran, self.request, self.decode_ns,
                                       self.encode_ns)
            if self._routed is not None and status in ("OK", "DEADLINE_EXCEEDED"):
                rung, routed_at, expected = self._routed  # how its ladder's estimate held
                self.plane.ladders.observe_answer(self._ladder.name, rung, expected,  # type: ignore[union-attr]
                                                  time.monotonic() - routed_at, missed=status != "OK")
            if error is None and self.request is not None:
                self.plane.tracer.finish(self.request.trace, self.request.compute)
            otel = self.plane.otel  # sampling decided first: an unsampled request builds nothing
            if otel is not None and otel.sampled(self.traceparent()):
                self._span(otel, status)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("request %s: model %s, %s in %.2f ms", self.request.id if self.request else "",
                          self.model_name, status, elapsed_ns / 1e6)
        finally:
            if self._acquired is not None:
                self.plane.lifecycle.release(self._acquired)
            if self._rung is not None:
                self.plane.lifecycle.release(self._rung)
            if self._regions is not None:
                self._regions.release()
            if self._held:
                self.plane.admission.release(self.call.connection, self._held)

    def _cancelled(self) -> str:
        """The status of a request cancelled under it: gRPC cancels a call whose deadline passes, and then
        its client saw DEADLINE_EXCEEDED (a request its deadline overtook while it ran is a miss, for the
        metrics and for the ladder's estimates); else the client went away, CANCELLED."""
        deadline = self.call.deadline
        return "DEADLINE_EXCEEDED" if deadline is not None and time.monotonic() >= deadline - _DEADLINE_SLACK_S \
            else "CANCELLED"

    def _span(self, otel: OtelTracing, status: str) -> None:
        """Hand the answered request, sampled, to OpenTelemetry."""
        try:
            traceparent = self.traceparent()
            ended = time.monotonic_ns()
            request = self.request
            if self._frame is not None:
                stages = frame_stages(self._frame.stages(), self.started_ns, ended)
            else:
                stages = infer_stages(request.queue_ns, request.compute) if request is not None else []
            attributes = {"peregrine.model": self.model_name}
            if request is not None:
                attributes["peregrine.request_id"] = request.id
                attributes["peregrine.model_version"] = request.model_version
            tracestate = self._header("tracestate") if traceparent is not None else None
            otel.record(self.kind, traceparent, tracestate, self.started_ns, ended, attributes, stages, status)
        except Exception:  # tracing must never fail a request
            log.exception("OpenTelemetry span not recorded")

    def __enter__(self) -> RequestScope:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(error)


class DataPlane:
    """Look-up, admission, tracing, statistics and metrics for every transport (see the module docstring).

    Runs on ``loop``'s event loop; what may block (loading models, registering CUDA memory) the transport
    runs with :meth:`off_loop`."""

    def __init__(self, repository: ModelRepository, loop: EventLoopThread, shared_memory: SharedMemoryRegistry,
                 tracer: Tracer, metrics: Metrics, name: str, version: str, kernel_tier: str = "",
                 strict_readiness: bool = True, limits: Limits | None = None, decode_threads: int = 0,
                 cache: ResponseCache | None = None, lifecycle: Lifecycle | None = None,
                 otel: OtelTracing | None = None, drift_monitor: DriftMonitor | None = None) -> None:
        self.repository = repository
        self.cache = cache if cache is not None else ResponseCache(0)
        self.lifecycle = lifecycle if lifecycle is not None else Lifecycle(repository)
        self.ladders = Ladders(repository)
        self.otel = otel  # OpenTelemetry tracing; None: off
        self.loop = loop
        self.shared_memory = shared_memory
        self.tracer = tracer
        self.metrics = metrics
        self.admission = Admission(limits or Limits())
        self.log_settings = LogSettings()
        self.switches = ObservabilitySwitches(self, metrics, drift_monitor)
        self.name = name
        self.version = version
        self.kernel_tier = kernel_tier
        self.started = False  # serving: set once start-up is over, cleared when shutdown begins
        self.strict_readiness = strict_readiness
        self.draining = asyncio.Event()  # set when shutdown begins: streams stop reading and end
        self._decode = ThreadPoolExecutor(decode_threads or max(2, os.cpu_count() or 2),
                                          thread_name_prefix="peregrine-decode")
        # Background work (jobs' items) decodes in threads of its own at a lower OS priority (nice 10), so a
        # real-time request's decoding and its model's threads get the cores first when both want them.
        self._background_decode = ThreadPoolExecutor(decode_threads or max(2, os.cpu_count() or 2),
                                                     thread_name_prefix="peregrine-decode-bg",
                                                     initializer=_lower_priority)

    @property
    def trace_ids(self) -> bool:
        """Whether log lines about a request carry its W3C trace id (looked up in the call's headers):
        with OpenTelemetry on, JSON logs or DEBUG."""
        return self.otel is not None or logs.json_active() or log.isEnabledFor(logging.DEBUG)

    def scope(self, call: Call, model_name: str, started_ns: int | None = None, nbytes: int = 0) -> RequestScope:
        """Open the scope of one request for ``model_name`` (as the client named it) arriving on ``call``
        (at ``started_ns``, time.monotonic_ns(); default: when the call arrived). ``nbytes``, the request's
        size, is held in flight until the scope closes: RESOURCE_EXHAUSTED at once when it does not fit, as
        when the client is over its rate."""
        if self.admission.limits.rate:  # who the client is costs a look through its metadata: only when needed
            self.admission.check_rate(call.identity)
        return RequestScope(self, call, model_name, started_ns, nbytes)

    def stream(self, call: Call, messages: AsyncIterator[M], adapter: StreamAdapter[M, R],
               policy: StreamPolicy) -> AsyncIterator[R]:
        """Serve one bidirectional stream: ``adapter`` is the transport's codec for its messages, ``policy``
        its flow control and window (:data:`~.streams.OIP_STREAM`, :data:`~.streams.DETECT_STREAM`).
        RESOURCE_EXHAUSTED when the server or the connection has as many streams open as it may."""
        self.admission.open_stream(call.connection)
        return StreamDriver(self, call, adapter, policy).run(messages)

    def off_loop(self, fn: Any, *args: Any) -> Awaitable[Any]:
        """Run a blocking ``fn(*args)`` in a decode thread (image decoding, model loads) and await it."""
        return asyncio.get_running_loop().run_in_executor(self._decode, fn, *args)

    def off_loop_background(self, fn: Any, *args: Any) -> Awaitable[Any]:
        """:meth:`off_loop` for background work (a job's item): in the lower-priority decode threads."""
        return asyncio.get_running_loop().run_in_executor(self._background_decode, fn, *args)

    def close(self) -> None:
        """Let decoding that is still running finish (before the loop closes under it)."""
        self._decode.shutdown(wait=True, cancel_futures=True)
        self._background_decode.shutdown(wait=True, cancel_futures=True)

    # -- health and metadata --------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Serving and, with strict readiness (the default, as in Triton), every model the server was asked
        to load is ready."""
        return self.started and not (self.strict_readiness and self.repository.unready())

    def server_metadata(self) -> ServerMetadata:
        extensions = list(EXTENSIONS)
        if self.shared_memory.enabled:
            extensions.append("system_shared_memory")
            if cuda_available():
                extensions.append("cuda_shared_memory")
        return ServerMetadata(self.name, self.version, extensions)

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.repository.get(name, version)
        except PeregrineError:
            return False
        return True

    def model(self, name: str, version: str = "") -> ModelDescription:
        """The ready version (the newest when ``version`` is empty). Raises NotFound or Unavailable."""
        return self.repository.get(name, version).describe()

    def ready_versions(self, name: str) -> list[int]:
        return sorted(m.version for m in self.repository.ready_models() if m.name == name)

    def model_statistics(self, name: str = "", version: str = "") -> list[tuple[ModelDescription, ModelStats]]:
        """Statistics of one model version, or (no name) of every ready version, by name and version."""
        if name:
            models = [self.repository.get(name, version)]
        else:
            if version:
                raise InvalidArgument("version: a version needs a model name")
            models = sorted(self.repository.ready_models(), key=lambda m: (m.name, m.version))
        return [(m.describe(), m.stats) for m in models]

    def detection_model(self, name: str, version: str = "") -> DetectionModel:
        """The ready detection pipeline called ``name`` (none named: the server's only one); InvalidArgument
        when it is another kind of model, or when no name is given and there is not exactly one."""
        if not name:
            ready = sorted({m.name for m in self.repository.ready_models() if isinstance(m, DetectionModel)})
            if len(ready) != 1:
                raise InvalidArgument(f"model_name: expected the name of a detection pipeline, got '' (the server "
                                      f"chooses only when it serves exactly one; ready: {', '.join(ready) or 'none'})")
            name = ready[0]
        return self.require_detection(self.repository.get(name, version))

    def require_detection(self, model: ModelVersion) -> DetectionModel:
        """``model`` when it is a detection pipeline, else InvalidArgument naming what it is."""
        if not isinstance(model, DetectionModel):
            pipelines = sorted({m.name for m in self.repository.ready_models() if isinstance(m, DetectionModel)})
            raise InvalidArgument(
                f"model_name: '{model.name}' is a {model.config.platform} model, not a detection pipeline "
                f"(platform peregrine_detection); detection pipelines here: {', '.join(pipelines) or 'none'}"
            )
        return model

    # -- repository -----------------------------------------------------------------------------
    def repository_index(self, repository: str = "", ready_only: bool = False) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) of every model on disk or loaded."""
        if repository and repository != "models":
            raise NotFound(f"unknown repository '{clipped(repository)}'; this server has one, 'models'")
        return [row for row in self.repository.index() if not ready_only or row[2] == "READY"]

    def load_model(self, name: str, config_json: str | None = None, files: dict[str, bytes] | None = None) -> None:
        """(Re)load a model, with a configuration override in Triton's JSON laid over its config.toml; or,
        with ``files`` (``file:<version>/<path>``: bytes), from those files, ``config_json`` then being the
        whole configuration of the directory they make (model_files.py)."""
        try:
            if files:
                if config_json is None:
                    raise InvalidArgument("parameters.config: expected the model's configuration in JSON beside "
                                          f"its files ({len(files)} file: parameters), got none")
                checked = check_files(files)
                self.repository.load_files(name, checked, triton_config_text(config_json, name))
                return
            override = parse_triton_override(config_json, name) if config_json is not None else None
            self.repository.load(name, override)
        except PeregrineError as e:  # Triton's words first ("failed to load 'm', ..."): its clients match on them
            if e.message.startswith("failed to load") or type(e).__init__ is not PeregrineError.__init__:
                raise
            raise type(e)(f"failed to load '{clipped(name)}': {e.message}") from None

    def unload_model(self, name: str) -> None:
        self.repository.unload(name)

    # -- trace and log settings -----------------------------------------------------------------
    def trace_settings(self, model: str = "", changes: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
        """The trace settings in force globally or for ``model``, after applying ``changes`` (if any)."""
        if model and model not in {name for name, *_ in self.repository.index()}:
            raise NotFound(f"unknown model '{clipped(model)}'")
        return self.tracer.update(changes, model) if changes else self.tracer.settings(model)

    def update_log_settings(self, changes: dict[str, Any]) -> dict[str, Any]:
        """The log settings after applying ``changes`` (if any)."""
        return self.log_settings.update(changes) if changes else self.log_settings.current()

    def observability(self, changes: dict[str, Any] | None = None) -> dict[str, Any]:
        """The run-time observability switches after applying ``changes`` (if any; dataplane/switches.py)."""
        return self.switches.update(changes) if changes is not None else self.switches.current()


def _lower_priority() -> None:
    """Lower the calling thread's scheduling priority (Linux: a thread is a task with a nice value of its
    own); elsewhere, or without the right, nothing changes."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
