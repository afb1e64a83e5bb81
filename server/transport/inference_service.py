"""``inference.GRPCInferenceService``: the Open Inference Protocol over gRPC (threaded server)."""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
from peregrine.proto import grpc_service_pb2 as pb
from peregrine.proto import grpc_service_pb2_grpc as pb_grpc

from .. import codecs
from ..config_override import parse_triton_override
from ..engine import Engine
from ..errors import InvalidArgument, NotFound, PeregrineError
from ..inference import InferRequest
from ..logsettings import LogSettings
from ..metrics import Metrics
from ..model import ModelVersion
from ..repository import ModelRepository
from ..shm import SharedMemoryRegistry, cuda_available
from ..tracing import Trace, Tracer
from .status import status_of, unary

log = logging.getLogger(__name__)

# Requests of one ModelStreamInfer stream read off the wire and not yet answered. Beyond this the server
# stops reading, so gRPC's flow control holds a client that sends faster than the model runs, instead of
# the server buffering its backlog (a 640x640 FP32 request is about 5 MB decoded).
STREAM_MAX_IN_FLIGHT = 32

EXTENSIONS = ["model_repository", "model_configuration", "schedule_policy", "statistics", "parameters", "logging",
              "trace"]


def _deadline(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, repository: ModelRepository, engine: Engine, metrics: Metrics, version: str,
                 name: str = "peregrine", kernel_tier: str = "",
                 shared_memory: SharedMemoryRegistry | None = None, tracer: Tracer | None = None) -> None:
        self.repo = repository
        self.engine = engine
        self.metrics = metrics
        self.version = version
        self.name = name
        self.kernel_tier = kernel_tier
        self.ready = False
        self._stream_ids = itertools.count()
        self.log_settings = LogSettings()
        self.tracer = tracer if tracer is not None else Tracer()
        self.shm = shared_memory if shared_memory is not None else SharedMemoryRegistry()

    # -- health and metadata -------------------------------------------------------------------
    @unary
    def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @unary
    def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready)

    @unary
    def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        try:
            self.repo.get(request.name, request.version)
        except PeregrineError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @unary
    def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        extensions = list(EXTENSIONS)
        if self.shm.enabled:
            extensions.append("system_shared_memory")
            if cuda_available():
                extensions.append("cuda_shared_memory")
        return pb.ServerMetadataResponse(name=self.name, version=self.version, extensions=extensions)

    @unary
    def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        model = self.repo.get(request.name, request.version)
        versions = [m.version for m in self.repo.ready_models() if m.name == model.name]
        return codecs.model_metadata(model, versions)

    @unary
    def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        model = self.repo.get(request.name, request.version)
        return pb.ModelConfigResponse(config=codecs.model_config(model, self.kernel_tier))

    @unary
    def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        if request.name:
            models = [self.repo.get(request.name, request.version)]
        else:
            if request.version:
                raise InvalidArgument("version: a version needs a model name")
            models = sorted(self.repo.ready_models(), key=lambda m: (m.name, m.version))
        return pb.ModelStatisticsResponse(model_stats=[codecs.model_statistics(m) for m in models])

    # -- inference -----------------------------------------------------------------------------
    def _submit(self, request: InferRequest,
                started_ns: int) -> tuple[ModelVersion, concurrent.futures.Future[Any]]:
        model = self.repo.get(request.model_name, request.model_version)
        request.trace = self.tracer.begin(model.name, str(model.version), request.id, started_ns)
        request = model.validate(request)
        if request.trace is not None:
            request.trace.stamp("QUEUE_START")
        return model, self.engine.submit(model.infer(request))

    @unary
    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        start = time.perf_counter()
        started_ns = time.monotonic_ns()
        model_name = request.model_name
        regions = self.shm.use()
        try:
            req = codecs.decode_infer_request(request, _deadline(context), regions=regions)
            _, future = self._submit(req, started_ns)
            # When the call ends early (cancelled, or past its deadline) the queued request is dropped.
            if not context.add_callback(future.cancel):
                future.cancel()
            response = codecs.encode_infer_response(future.result(), regions)
            self.tracer.finish(req.trace)
        except BaseException as e:
            self.metrics.observe_request(model_name, status_of(e)[0].name, time.perf_counter() - start)
            raise
        finally:
            regions.release()
        self.metrics.observe_request(model_name, "OK", time.perf_counter() - start)
        return response

    def ModelStreamInfer(self, request_iterator: Iterator[pb.ModelInferRequest],
                         context: grpc.ServicerContext) -> Iterator[pb.ModelStreamInferResponse]:
        """Requests of one stream run concurrently (so they can share batches), at most
        STREAM_MAX_IN_FLIGHT at a time; responses come back in request order. An error answers that
        request in ``error_message`` and the stream goes on."""
        stream_key = f"stream-{next(self._stream_ids)}"
        pending: queue.Queue[Any] = queue.Queue()
        room = threading.Semaphore(STREAM_MAX_IN_FLIGHT)
        # Requests submitted and not finished: what a cancel must cancel. Finished ones leave at once, so a
        # long stream holds only what is in flight, never its history of results.
        futures: set[concurrent.futures.Future[Any]] = set()
        lock = threading.Lock()

        def cancel_all() -> None:
            with lock:
                running = list(futures)
            for f in running:
                f.cancel()

        def finished(f: concurrent.futures.Future[Any]) -> None:
            with lock:
                futures.discard(f)

        context.add_callback(cancel_all)

        def has_room() -> bool:
            while not room.acquire(timeout=0.5):
                if not context.is_active():
                    return False
            return True

        def read() -> None:
            try:
                while has_room():
                    msg = next(request_iterator, None)
                    if msg is None:
                        break
                    regions = self.shm.use()
                    started_ns = time.monotonic_ns()
                    try:
                        req = codecs.decode_infer_request(msg, _deadline(context), ordering_key=stream_key,
                                                          regions=regions)
                        _, future = self._submit(req, started_ns)
                        with lock:
                            futures.add(future)
                        future.add_done_callback(finished)
                        pending.put((msg, future, None, time.perf_counter(), regions, req.trace))
                    except Exception as e:
                        pending.put((msg, None, e, time.perf_counter(), regions, None))
            except Exception as e:  # the stream itself broke (client went away)
                log.debug("stream %s ended: %s", stream_key, e)
            finally:
                pending.put(None)

        threading.Thread(target=read, name=stream_key, daemon=True).start()
        while (item := pending.get()) is not None:
            try:
                yield self._stream_answer(*item)
            finally:
                room.release()

    def _stream_answer(self, msg: pb.ModelInferRequest, future: concurrent.futures.Future[Any] | None,
                       error: BaseException | None, start: float, regions: Any,
                       trace: Trace | None) -> pb.ModelStreamInferResponse:
        """The response to one request of a stream, once it is done: its result, or its error inline."""
        try:
            if future is not None:
                try:
                    response = codecs.encode_infer_response(future.result(), regions)
                    self.tracer.finish(trace)
                    self.metrics.observe_request(msg.model_name, "OK", time.perf_counter() - start)
                    return pb.ModelStreamInferResponse(infer_response=response)
                except Exception as e:  # the request's failure (CancelledError included), answered inline
                    error = e
        finally:
            regions.release()
        code, message = status_of(error)
        self.metrics.observe_request(msg.model_name, code.name, time.perf_counter() - start)
        return pb.ModelStreamInferResponse(
            error_message=message,
            infer_response=pb.ModelInferResponse(model_name=msg.model_name, model_version=msg.model_version,
                                                 id=msg.id),
        )

    # -- repository ----------------------------------------------------------------------------
    @unary
    def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        if request.repository_name and request.repository_name != "models":
            raise NotFound(f"unknown repository '{request.repository_name}'; this server has one, 'models'")
        msg = pb.RepositoryIndexResponse()
        for name, version, state, reason in self.repo.index():
            if request.ready and state != "READY":
                continue
            msg.models.add(name=name, version=version, state=state, reason=reason)
        return msg

    @unary
    def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest,
                            context: Any) -> pb.RepositoryModelLoadResponse:
        override = None
        for key, value in request.parameters.items():
            if key != "config":
                what = "model files over the API are" if key.startswith("file:") else f"parameter '{key}' is"
                raise InvalidArgument(f"parameters.{key}: {what} not supported; a load takes 'config' (a model "
                                      "configuration in JSON, applied over config.toml for this load)")
            if value.WhichOneof("parameter_choice") != "string_param":
                raise InvalidArgument("parameters.config: expected a string holding JSON")
            override = parse_triton_override(value.string_param, request.model_name)
        self.repo.load(request.model_name, override)
        return pb.RepositoryModelLoadResponse()

    @unary
    def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,
                              context: Any) -> pb.RepositoryModelUnloadResponse:
        self.repo.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # -- shared memory (Triton's extension) ------------------------------------------------------------
    @unary
    def SystemSharedMemoryStatus(self, request: pb.SystemSharedMemoryStatusRequest,
                                 context: Any) -> pb.SystemSharedMemoryStatusResponse:
        return codecs.shared_memory_status("system", self.shm.status("system", request.name))

    @unary
    def SystemSharedMemoryRegister(self, request: pb.SystemSharedMemoryRegisterRequest,
                                   context: Any) -> pb.SystemSharedMemoryRegisterResponse:
        self.shm.register_system(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @unary
    def SystemSharedMemoryUnregister(self, request: pb.SystemSharedMemoryUnregisterRequest,
                                     context: Any) -> pb.SystemSharedMemoryUnregisterResponse:
        self.shm.unregister("system", request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @unary
    def CudaSharedMemoryStatus(self, request: pb.CudaSharedMemoryStatusRequest,
                               context: Any) -> pb.CudaSharedMemoryStatusResponse:
        return codecs.shared_memory_status("cuda", self.shm.status("cuda", request.name))

    @unary
    def CudaSharedMemoryRegister(self, request: pb.CudaSharedMemoryRegisterRequest,
                                 context: Any) -> pb.CudaSharedMemoryRegisterResponse:
        self.shm.register_cuda(request.name, request.raw_handle, request.device_id, request.byte_size)
        return pb.CudaSharedMemoryRegisterResponse()

    @unary
    def CudaSharedMemoryUnregister(self, request: pb.CudaSharedMemoryUnregisterRequest,
                                   context: Any) -> pb.CudaSharedMemoryUnregisterResponse:
        self.shm.unregister("cuda", request.name)
        return pb.CudaSharedMemoryUnregisterResponse()

    # -- trace and log settings ----------------------------------------------------------------------
    @unary
    def TraceSetting(self, request: pb.TraceSettingRequest, context: Any) -> pb.TraceSettingResponse:
        model = request.model_name
        if model and model not in {name for name, *_ in self.repo.index()}:
            raise NotFound(f"unknown model '{model}'")
        changes = {key: list(value.value) for key, value in request.settings.items()}
        settings = self.tracer.update(changes, model) if changes else self.tracer.settings(model)
        response = pb.TraceSettingResponse()
        for key, values in settings.items():
            response.settings[key].value.extend(values)
        return response

    @unary
    def LogSettings(self, request: pb.LogSettingsRequest, context: Any) -> pb.LogSettingsResponse:
        changes = {}
        for key, value in request.settings.items():
            kind = value.WhichOneof("parameter_choice")
            if kind is None:
                raise InvalidArgument(f"settings.{key}: expected a bool, uint32 or string value, got none")
            changes[key] = getattr(value, kind)
        settings = self.log_settings.update(changes) if changes else self.log_settings.current()
        response = pb.LogSettingsResponse()
        for key, v in settings.items():
            field = "bool_param" if isinstance(v, bool) else "uint32_param" if isinstance(v, int) else "string_param"
            setattr(response.settings[key], field, v)
        return response
