"""``InferenceClient``: a blocking Open Inference Protocol (KServe v2) gRPC client."""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np
from peregrine.proto import grpc_service_pb2 as pb
from peregrine.proto import grpc_service_pb2_grpc as pb_grpc
from peregrine.proto import model_config_pb2 as mc

from .channel import DEFAULT_DEADLINE_S, MAX_MESSAGE_BYTES, ChannelSettings, RetryPolicy, TlsOptions
from .errors import PeregrineClientError
from .metadata import ModelMetadata, RepositoryModel, ServerMetadata, SharedMemoryStatus
from .shm import CLEANUP_DEADLINE_S, SystemSharedMemory
from .tensors import (
    InferRequest,
    SharedMemoryInput,
    SharedMemoryOutput,
    StreamResult,
    build_request,
    parse_response,
    parse_stream_response,
)

R = TypeVar("R")


class InferenceClient:
    """A blocking client for any OIP gRPC server (Peregrine, Triton, KServe runtimes).

    ``url`` is ``host:port``. Every call has a deadline: its ``deadline_s`` argument in seconds, else the
    client's ``deadline_s`` (``math.inf`` or None: no deadline). Idempotent calls (health, metadata, config,
    statistics, index) are retried on UNAVAILABLE per ``retry``; infer, load and unload never are.
    A failed call raises :class:`PeregrineClientError` with the gRPC status in ``.code``; arguments the
    protocol cannot carry raise ValueError before anything is sent. Thread-safe; ``close()`` or use ``with``.
    """

    def __init__(
        self,
        url: str | Sequence[str] = "127.0.0.1:8001",
        *,
        tls: TlsOptions | None = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        deadline_s: float | None = DEFAULT_DEADLINE_S,
        retry: RetryPolicy | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.settings = ChannelSettings.of(url, tls, token, headers, deadline_s, retry, max_message_bytes,
                                           channel_options)
        self._channel = self.settings.channel()
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._metadata = self.settings.metadata()
        # Regions registered with register_shared_memory and not unregistered yet: close() (and each region's
        # own close()) unregisters them, so a program that stops half-way leaves no name taken on the server.
        self._registered: dict[str, SystemSharedMemory] = {}
        self._registered_lock = threading.Lock()

    # -- plumbing --------------------------------------------------------------------------------
    def _call(self, method: str, request: Any, deadline_s: float | None) -> Any:
        fn: Callable[..., Any] = getattr(self._stub, method)
        try:
            return fn(request, timeout=self.settings.timeout(deadline_s), metadata=self._metadata)
        except grpc.RpcError as e:
            raise PeregrineClientError.from_rpc_error(e, method) from None

    def close(self) -> None:
        """Unregister the regions this client registered with ``register_shared_memory`` (best effort), then
        close the channel; calls in flight are cancelled."""
        with self._registered_lock:
            regions, self._registered = list(self._registered.values()), {}
        for region in regions:
            region._remove_close_hook(self)
            self._unregister_quietly(region.name)
        self._channel.close()

    def _unregister_quietly(self, name: str) -> None:
        with contextlib.suppress(PeregrineClientError, ValueError):
            self._call("SystemSharedMemoryUnregister", pb.SystemSharedMemoryUnregisterRequest(name=name),
                       CLEANUP_DEADLINE_S)

    def _forget_region(self, region: SystemSharedMemory) -> None:
        """The region is closing: unregister it here if this client still holds its registration."""
        with self._registered_lock:
            if self._registered.get(region.name) is not region:
                return
            del self._registered[region.name]
        self._unregister_quietly(region.name)

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- health and metadata -----------------------------------------------------------------------
    def server_live(self, *, deadline_s: float | None = None) -> bool:
        """True when the server answers and says it is live."""
        return bool(self._call("ServerLive", pb.ServerLiveRequest(), deadline_s).live)

    def server_ready(self, *, deadline_s: float | None = None) -> bool:
        """True when the server is ready for inference."""
        return bool(self._call("ServerReady", pb.ServerReadyRequest(), deadline_s).ready)

    def model_ready(self, model: str, version: str = "", *, deadline_s: float | None = None) -> bool:
        """True when ``model`` (``version``, or the server's default version) is loaded and ready."""
        return bool(self._call("ModelReady", pb.ModelReadyRequest(name=model, version=version), deadline_s).ready)

    def server_metadata(self, *, deadline_s: float | None = None) -> ServerMetadata:
        return ServerMetadata.from_proto(self._call("ServerMetadata", pb.ServerMetadataRequest(), deadline_s))

    def model_metadata(self, model: str, version: str = "", *, deadline_s: float | None = None) -> ModelMetadata:
        """Inputs and outputs of a model. Raises PeregrineClientError NOT_FOUND for an unknown model."""
        msg = self._call("ModelMetadata", pb.ModelMetadataRequest(name=model, version=version), deadline_s)
        return ModelMetadata.from_proto(msg)

    def model_config(self, model: str, version: str = "", *, deadline_s: float | None = None) -> mc.ModelConfig:
        """The model's configuration as Triton's ``ModelConfig`` message."""
        return self._call("ModelConfig", pb.ModelConfigRequest(name=model, version=version), deadline_s).config

    def model_statistics(self, model: str = "", version: str = "", *,
                         deadline_s: float | None = None) -> list[pb.ModelStatistics]:
        """Statistics of one model, or of every ready model when ``model`` is empty (durations in ns)."""
        msg = self._call("ModelStatistics", pb.ModelStatisticsRequest(name=model, version=version), deadline_s)
        return list(msg.model_stats)

    # -- repository ----------------------------------------------------------------------------------
    def repository_index(self, ready_only: bool = False, *, deadline_s: float | None = None) -> list[RepositoryModel]:
        """Every model of the repository with its state (only READY ones with ``ready_only``)."""
        msg = self._call("RepositoryIndex", pb.RepositoryIndexRequest(ready=ready_only), deadline_s)
        return RepositoryModel.list_from_proto(msg)

    def load_model(self, model: str, *, deadline_s: float | None = None) -> None:
        """Load (or reload) a model from the repository; returns when it is ready. Never retried."""
        self._call("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=model), deadline_s)

    def unload_model(self, model: str, *, deadline_s: float | None = None) -> None:
        """Unload a model; requests already queued finish first. Never retried."""
        self._call("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name=model), deadline_s)

    # -- inference ---------------------------------------------------------------------------------
    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray | SharedMemoryInput],
        outputs: Sequence[str] | None = None,
        version: str = "",
        parameters: Mapping[str, bool | int | float | str] | None = None,
        priority: int | None = None,
        timeout_us: int | None = None,
        deadline_s: float | None = None,
        request_id: str = "",
        outputs_to_shm: Mapping[str, SharedMemoryOutput] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one inference and return its outputs by name.

        ``inputs`` maps names to arrays of any OIP datatype (bool, (u)int8..64, float16/32/64; object, ``S``
        or ``U`` arrays travel as BYTES and come back as object arrays of ``bytes``), or to a
        :class:`SharedMemoryInput` for data in a registered region (sent without its bytes).
        ``outputs_to_shm`` maps output names to region slices the server writes them to; those come back
        as views of the region (overwritten by the next request that uses it). ``outputs`` limits the
        outputs returned (None: all, or only those of ``outputs_to_shm`` when it is given).
        ``priority``: the model's priority level (1 most urgent).
        ``timeout_us``: server-side queue timeout in microseconds. ``deadline_s``: the whole call's deadline
        in seconds; past it the call ends with DEADLINE_EXCEEDED and the server drops the request.
        Never retried. Numeric outputs are read-only arrays.

        Raises PeregrineClientError (NOT_FOUND unknown model, INVALID_ARGUMENT wrong name/shape/datatype,
        DEADLINE_EXCEEDED, UNAVAILABLE queue full or server unreachable, ...); ValueError for an input dtype
        the protocol has no datatype for."""
        request = build_request(InferRequest(model, inputs, outputs, version, parameters, priority, timeout_us,
                                             request_id, outputs_to_shm))
        return parse_response(self._call("ModelInfer", request, deadline_s), outputs_to_shm)

    def stream_infer(self, requests: Iterable[InferRequest], *,
                     deadline_s: float | None = None) -> Iterator[StreamResult]:
        """Send requests over one ModelStreamInfer stream and yield a :class:`StreamResult` per request
        (in request order on Peregrine). A request that fails yields a result with ``error`` set and the
        stream goes on. ``deadline_s`` bounds the whole stream; unlike unary calls, a stream has no
        deadline unless one is given (per-request limits: ``InferRequest.timeout_us``).

        Raises PeregrineClientError when the stream itself fails; stopping the iteration cancels the stream."""
        timeout = None if deadline_s is None else self.settings.timeout(deadline_s)
        slots: deque[Mapping[str, SharedMemoryOutput] | None] = deque()  # answers come in request order

        def messages() -> Iterator[pb.ModelInferRequest]:
            for r in requests:
                slots.append(r.outputs_to_shm)
                yield build_request(r)

        call = self._stub.ModelStreamInfer(messages(), timeout=timeout, metadata=self._metadata)
        try:
            for msg in call:
                yield parse_stream_response(msg, slots.popleft() if slots else None)
        except grpc.RpcError as e:
            raise PeregrineClientError.from_rpc_error(e, "ModelStreamInfer") from None
        finally:
            call.cancel()

    # -- shared memory ---------------------------------------------------------------------------------
    def register_system_shared_memory(self, name: str, key: str, byte_size: int, offset: int = 0, *,
                                      deadline_s: float | None = None) -> None:
        """Register ``byte_size`` bytes at ``offset`` of the POSIX shared-memory object ``key`` as region
        ``name`` (Triton's call). Raises PeregrineClientError: ALREADY_EXISTS name taken, NOT_FOUND no such
        key, INVALID_ARGUMENT bad key or out of bounds, PERMISSION_DENIED key not allowed by the server."""
        self._call("SystemSharedMemoryRegister", pb.SystemSharedMemoryRegisterRequest(
            name=name, key=key, offset=offset, byte_size=byte_size), deadline_s)

    def register_shared_memory(self, region: SystemSharedMemory, *, deadline_s: float | None = None) -> None:
        """Register a whole :class:`SystemSharedMemory` under its name. The registration ends with whichever
        comes first: ``unregister_system_shared_memory``, the region's ``close()`` or this client's ``close()``
        (so leaving a ``with`` block on an exception unregisters it)."""
        self.register_system_shared_memory(region.name, region.key, region.byte_size, deadline_s=deadline_s)
        with self._registered_lock:
            self._registered[region.name] = region
        region._add_close_hook(self, lambda: self._forget_region(region))

    def unregister_system_shared_memory(self, name: str = "", *, deadline_s: float | None = None) -> None:
        """Unregister region ``name``, or every system region when ``name`` is empty (any client's: see
        docs/SHARED_MEMORY.md). An unknown name is not an error."""
        self._call("SystemSharedMemoryUnregister", pb.SystemSharedMemoryUnregisterRequest(name=name), deadline_s)
        with self._registered_lock:
            gone = [r for n, r in self._registered.items() if not name or n == name]
            for region in gone:
                del self._registered[region.name]
        for region in gone:
            region._remove_close_hook(self)

    def system_shared_memory_status(self, name: str = "", *,
                                    deadline_s: float | None = None) -> list[SharedMemoryStatus]:
        """The registered system regions (or the one called ``name``; NOT_FOUND when there is none)."""
        msg = self._call("SystemSharedMemoryStatus", pb.SystemSharedMemoryStatusRequest(name=name), deadline_s)
        return SharedMemoryStatus.list_from_proto(msg)

    def register_cuda_shared_memory(self, name: str, raw_handle: bytes, device_id: int, byte_size: int, *,
                                    deadline_s: float | None = None) -> None:
        """Register a CUDA allocation of this process by its 64-byte ``cudaIpcMemHandle_t`` (raw bytes, not
        base64). UNAVAILABLE from a server without a GPU."""
        self._call("CudaSharedMemoryRegister", pb.CudaSharedMemoryRegisterRequest(
            name=name, raw_handle=raw_handle, device_id=device_id, byte_size=byte_size), deadline_s)

    def unregister_cuda_shared_memory(self, name: str = "", *, deadline_s: float | None = None) -> None:
        """Unregister CUDA region ``name``, or all of them when ``name`` is empty."""
        self._call("CudaSharedMemoryUnregister", pb.CudaSharedMemoryUnregisterRequest(name=name), deadline_s)

    def cuda_shared_memory_status(self, name: str = "", *,
                                  deadline_s: float | None = None) -> list[SharedMemoryStatus]:
        """The registered CUDA regions (or the one called ``name``)."""
        msg = self._call("CudaSharedMemoryStatus", pb.CudaSharedMemoryStatusRequest(name=name), deadline_s)
        return SharedMemoryStatus.list_from_proto(msg)
