"""The data plane: every request, from any transport, goes through it once.

A transport opens a :class:`RequestScope` when a call arrives, decodes the wire message with its codec,
hands the plain request to the scope and encodes what comes back; the scope does the rest, once, in one
place: look-up, tracing, validation (in the caller's thread, so that image decoding never blocks the event
loop), submission to the model's scheduler, waiting (cancelled when the call ends), statistics and
metrics. Streams are a policy over the same scopes (:mod:`.streams`).

The data plane imports no transport: the transport describes its call with :class:`Call`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeVar

from ..config.override import parse_triton_override
from ..core.errors import InvalidArgument, NotFound, PeregrineError, status_name
from ..core.stats import ModelStats
from ..core.types import DetectRequest, FrameResult, InferRequest, InferResponse, ModelDescription
from ..models.base import ModelVersion
from ..models.detection import DetectionModel
from ..observability.logsettings import LogSettings
from ..observability.metrics import Metrics
from ..observability.tracing import Tracer
from ..scheduling.loop import EventLoopThread
from .repository import ModelRepository
from .shm import RequestRegions, SharedMemoryRegistry, cuda_available
from .streams import StreamAdapter, StreamDriver, StreamPolicy

log = logging.getLogger(__name__)

M = TypeVar("M")
R = TypeVar("R")

EXTENSIONS = ["model_repository", "model_configuration", "schedule_policy", "statistics", "parameters", "logging",
              "trace"]


class Call(Protocol):
    """What the data plane needs of a transport's call."""

    started_ns: int  # time.monotonic_ns() when the call arrived
    deadline: float | None  # on the time.monotonic() clock; None: none

    def on_end(self, callback: Callable[[], object]) -> bool:
        """Run ``callback`` when the call ends (answered, cancelled or past its deadline); False when it
        has ended already (the callback is not registered)."""
        ...

    def is_active(self) -> bool: ...


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: list[str]


class RequestScope:
    """One request's passage through the data plane, from its arrival to its answer. Closing the scope
    (leaving its ``with`` block, or :meth:`close`) records the outcome in the metrics, ends the request's
    trace and returns its shared-memory leases."""

    def __init__(self, plane: DataPlane, call: Call, model_name: str, started_ns: int | None = None) -> None:
        self.plane = plane
        self.call = call
        self.model_name = model_name
        self.started_ns = call.started_ns if started_ns is None else started_ns
        self.request: InferRequest | None = None  # as validated, once it is
        self._regions: RequestRegions | None = None
        self._closed = False

    @property
    def deadline(self) -> float | None:
        return self.call.deadline

    @property
    def regions(self) -> RequestRegions:
        """The shared-memory regions this request reads and writes, leased until the scope closes."""
        if self._regions is None:
            self._regions = self.plane.shared_memory.use()
        return self._regions

    # -- one call, start to end -------------------------------------------------------------------
    def infer(self, request: InferRequest) -> InferResponse:
        """Run an OIP request on the model it names and wait for the answer (in the caller's thread)."""
        model = self.plane.repository.get(request.model_name, request.model_version)
        return self.result(self.launch(model, self.prepare(model, request), "infer"))

    def detect(self, request: DetectRequest) -> FrameResult:
        """Run a typed detection request on the detection pipeline it names (or the only one) and wait for
        the boxes."""
        model = self.plane.detection_model(request.model_name, request.model_version)
        self.model_name = model.name
        return self.result(self.launch(model, self.prepare(model, request), "detect"))

    # -- the steps, for drivers that interleave them (streams) --------------------------------------
    def prepare(self, model: ModelVersion, request: InferRequest) -> InferRequest:
        """Begin the request's trace (when sampled) and validate it against ``model`` (which may decode
        its images): what :meth:`launch` runs."""
        request.trace = self.plane.tracer.begin(model.name, str(model.version), request.id, self.started_ns)
        prepared = model.validate(request)
        if prepared.trace is not None:
            prepared.trace.stamp("QUEUE_START")
        self.request = prepared
        return prepared

    def launch(self, model: ModelVersion, request: InferRequest, answer: str,
               cancel_on_end: bool = True) -> concurrent.futures.Future[Any]:
        """Queue a prepared request on the model's scheduler; ``answer`` is "infer" (an InferResponse) or
        "detect" (a FrameResult, from a detection model). With ``cancel_on_end`` the request is dropped (or
        its run's answer ignored) when the call ends; a stream cancels what it has in flight itself."""
        run = model.detect(request) if answer == "detect" else model.infer(request)  # type: ignore[attr-defined]
        future = self.plane.loop.submit(run)
        if cancel_on_end and not self.call.on_end(future.cancel):
            future.cancel()
        return future

    def result(self, future: concurrent.futures.Future[Any]) -> Any:
        """The answer of a launched request (raises its error); a detection's stage times go to the metrics."""
        result = future.result()
        if isinstance(result, FrameResult):
            self.plane.metrics.observe_stages(self.model_name, result.stages())
        return result

    # -- the end ------------------------------------------------------------------------------
    def close(self, error: BaseException | None = None) -> None:
        """The request is answered: with its result (``error`` None) or with ``error``."""
        if self._closed:
            return
        self._closed = True
        try:
            seconds = (time.monotonic_ns() - self.started_ns) / 1e9
            self.plane.metrics.observe_request(self.model_name, "OK" if error is None else status_name(error), seconds)
            if error is None and self.request is not None:
                self.plane.tracer.finish(self.request.trace, self.request.compute)
        finally:
            if self._regions is not None:
                self._regions.release()

    def __enter__(self) -> RequestScope:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(error)


class DataPlane:
    """Look-up, admission, tracing, statistics and metrics for every transport (see the module docstring).

    Thread-safe; its blocking calls run in the transport's threads, the models' schedulers on ``loop``."""

    def __init__(self, repository: ModelRepository, loop: EventLoopThread, shared_memory: SharedMemoryRegistry,
                 tracer: Tracer, metrics: Metrics, name: str, version: str, kernel_tier: str = "",
                 strict_readiness: bool = True) -> None:
        self.repository = repository
        self.loop = loop
        self.shared_memory = shared_memory
        self.tracer = tracer
        self.metrics = metrics
        self.log_settings = LogSettings()
        self.name = name
        self.version = version
        self.kernel_tier = kernel_tier
        self.started = False  # serving: set once start-up is over, cleared when shutdown begins
        self.strict_readiness = strict_readiness

    def scope(self, call: Call, model_name: str, started_ns: int | None = None) -> RequestScope:
        """Open the scope of one request for ``model_name`` (as the client named it) arriving on ``call``
        (at ``started_ns``, time.monotonic_ns(); default: when the call arrived)."""
        return RequestScope(self, call, model_name, started_ns)

    def stream(self, call: Call, messages: Iterator[M], adapter: StreamAdapter[M, R],
               policy: StreamPolicy) -> Iterator[R]:
        """Serve one bidirectional stream: ``adapter`` is the transport's codec for its messages, ``policy``
        its flow control and window (:data:`~.streams.OIP_STREAM`, :data:`~.streams.DETECT_STREAM`)."""
        return StreamDriver(self, call, adapter, policy).run(messages)

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
        model = self.repository.get(name, version)
        if not isinstance(model, DetectionModel):
            pipelines = sorted({m.name for m in self.repository.ready_models() if isinstance(m, DetectionModel)})
            raise InvalidArgument(
                f"model_name: '{name}' is a {model.config.platform} model, not a detection pipeline "
                f"(platform peregrine_detection); detection pipelines here: {', '.join(pipelines) or 'none'}"
            )
        return model

    # -- repository -----------------------------------------------------------------------------
    def repository_index(self, repository: str = "", ready_only: bool = False) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) of every model on disk or loaded."""
        if repository and repository != "models":
            raise NotFound(f"unknown repository '{repository}'; this server has one, 'models'")
        return [row for row in self.repository.index() if not ready_only or row[2] == "READY"]

    def load_model(self, name: str, config_json: str | None = None) -> None:
        """(Re)load a model, with a configuration override in Triton's JSON laid over its config.toml."""
        override = parse_triton_override(config_json, name) if config_json is not None else None
        self.repository.load(name, override)

    def unload_model(self, name: str) -> None:
        self.repository.unload(name)

    # -- trace and log settings -----------------------------------------------------------------
    def trace_settings(self, model: str = "", changes: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
        """The trace settings in force globally or for ``model``, after applying ``changes`` (if any)."""
        if model and model not in {name for name, *_ in self.repository.index()}:
            raise NotFound(f"unknown model '{model}'")
        return self.tracer.update(changes, model) if changes else self.tracer.settings(model)

    def update_log_settings(self, changes: dict[str, Any]) -> dict[str, Any]:
        """The log settings after applying ``changes`` (if any)."""
        return self.log_settings.update(changes) if changes else self.log_settings.current()
