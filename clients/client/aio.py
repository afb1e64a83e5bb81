"""``AsyncInferenceClient``: the asyncio (``grpc.aio``) twin of :class:`~peregrine.client.InferenceClient`."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

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


class AsyncInferenceClient:
    """An asyncio OIP client; the same calls, arguments, deadlines, retries and errors as
    :class:`~peregrine.client.InferenceClient`, as coroutines. Create it inside the event loop that uses it;
    ``await close()`` or use ``async with``."""

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
        self._channel = self.settings.aio_channel()
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._metadata = self.settings.metadata()
        # Regions registered with register_shared_memory and not unregistered yet: close() unregisters them.
        self._registered: dict[str, SystemSharedMemory] = {}

    async def _call(self, method: str, request: Any, deadline_s: float | None) -> Any:
        try:
            return await getattr(self._stub, method)(request, timeout=self.settings.timeout(deadline_s),
                                                     metadata=self._metadata)
        except grpc.RpcError as e:
            raise PeregrineClientError.from_rpc_error(e, method) from None

    async def close(self) -> None:
        """Unregister the regions this client registered with ``register_shared_memory`` (best effort), then
        close the channel; calls in flight are cancelled."""
        names, self._registered = list(self._registered), {}
        for name in names:
            with contextlib.suppress(PeregrineClientError, ValueError):
                await self._call("SystemSharedMemoryUnregister", pb.SystemSharedMemoryUnregisterRequest(name=name),
                                 CLEANUP_DEADLINE_S)
        await self._channel.close()

    async def __aenter__(self) -> AsyncInferenceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def server_live(self, *, deadline_s: float | None = None) -> bool:
        return bool((await self._call("ServerLive", pb.ServerLiveRequest(), deadline_s)).live)

    async def server_ready(self, *, deadline_s: float | None = None) -> bool:
        return bool((await self._call("ServerReady", pb.ServerReadyRequest(), deadline_s)).ready)

    async def model_ready(self, model: str, version: str = "", *, deadline_s: float | None = None) -> bool:
        msg = await self._call("ModelReady", pb.ModelReadyRequest(name=model, version=version), deadline_s)
        return bool(msg.ready)

    async def server_metadata(self, *, deadline_s: float | None = None) -> ServerMetadata:
        return ServerMetadata.from_proto(await self._call("ServerMetadata", pb.ServerMetadataRequest(), deadline_s))

    async def model_metadata(self, model: str, version: str = "", *,
                             deadline_s: float | None = None) -> ModelMetadata:
        msg = await self._call("ModelMetadata", pb.ModelMetadataRequest(name=model, version=version), deadline_s)
        return ModelMetadata.from_proto(msg)

    async def model_config(self, model: str, version: str = "", *,
                           deadline_s: float | None = None) -> mc.ModelConfig:
        msg = await self._call("ModelConfig", pb.ModelConfigRequest(name=model, version=version), deadline_s)
        return msg.config

    async def model_statistics(self, model: str = "", version: str = "", *,
                               deadline_s: float | None = None) -> list[pb.ModelStatistics]:
        msg = await self._call("ModelStatistics", pb.ModelStatisticsRequest(name=model, version=version),
                               deadline_s)
        return list(msg.model_stats)

    async def repository_index(self, ready_only: bool = False, *,
                               deadline_s: float | None = None) -> list[RepositoryModel]:
        msg = await self._call("RepositoryIndex", pb.RepositoryIndexRequest(ready=ready_only), deadline_s)
        return RepositoryModel.list_from_proto(msg)

    async def load_model(self, model: str, *, deadline_s: float | None = None) -> None:
        await self._call("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=model), deadline_s)

    async def unload_model(self, model: str, *, deadline_s: float | None = None) -> None:
        await self._call("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name=model), deadline_s)

    async def infer(
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
        """See :meth:`peregrine.client.InferenceClient.infer`."""
        request = build_request(InferRequest(model, inputs, outputs, version, parameters, priority, timeout_us,
                                             request_id, outputs_to_shm))
        return parse_response(await self._call("ModelInfer", request, deadline_s), outputs_to_shm)

    async def stream_infer(self, requests: Iterable[InferRequest] | AsyncIterable[InferRequest], *,
                           deadline_s: float | None = None) -> AsyncIterator[StreamResult]:
        """See :meth:`peregrine.client.InferenceClient.stream_infer`; ``requests`` may be an async iterable."""

        slots: deque[Mapping[str, SharedMemoryOutput] | None] = deque()  # answers come in request order

        async def messages() -> AsyncIterator[pb.ModelInferRequest]:
            if isinstance(requests, AsyncIterable):
                async for r in requests:
                    slots.append(r.outputs_to_shm)
                    yield build_request(r)
            else:
                for r in requests:
                    slots.append(r.outputs_to_shm)
                    yield build_request(r)

        timeout = None if deadline_s is None else self.settings.timeout(deadline_s)
        call = self._stub.ModelStreamInfer(messages(), timeout=timeout, metadata=self._metadata)
        try:
            async for msg in call:
                yield parse_stream_response(msg, slots.popleft() if slots else None)
        except grpc.RpcError as e:
            raise PeregrineClientError.from_rpc_error(e, "ModelStreamInfer") from None
        finally:
            call.cancel()

    # -- shared memory (see InferenceClient) ----------------------------------------------------------
    async def register_system_shared_memory(self, name: str, key: str, byte_size: int, offset: int = 0, *,
                                            deadline_s: float | None = None) -> None:
        """Register ``byte_size`` bytes at ``offset`` of the POSIX shared-memory object ``key`` as region
        ``name`` (Triton's call). Raises PeregrineClientError: ALREADY_EXISTS name taken, NOT_FOUND no such
        key, INVALID_ARGUMENT bad key or out of bounds, PERMISSION_DENIED key not allowed by the server."""
        await self._call("SystemSharedMemoryRegister", pb.SystemSharedMemoryRegisterRequest(
            name=name, key=key, offset=offset, byte_size=byte_size), deadline_s)

    async def register_shared_memory(self, region: SystemSharedMemory, *, deadline_s: float | None = None) -> None:
        """Register a whole :class:`SystemSharedMemory` under its name; this client's ``close()`` unregisters
        it unless ``unregister_system_shared_memory`` did."""
        await self.register_system_shared_memory(region.name, region.key, region.byte_size, deadline_s=deadline_s)
        self._registered[region.name] = region

    async def unregister_system_shared_memory(self, name: str = "", *, deadline_s: float | None = None) -> None:
        """Unregister region ``name``, or every system region when ``name`` is empty (any client's: see
        docs/SHARED_MEMORY.md). An unknown name is not an error."""
        await self._call("SystemSharedMemoryUnregister", pb.SystemSharedMemoryUnregisterRequest(name=name),
                         deadline_s)
        if name:
            self._registered.pop(name, None)
        else:
            self._registered.clear()

    async def system_shared_memory_status(self, name: str = "", *,
                                          deadline_s: float | None = None) -> list[SharedMemoryStatus]:
        """The registered system regions (or the one called ``name``; NOT_FOUND when there is none)."""
        msg = await self._call("SystemSharedMemoryStatus", pb.SystemSharedMemoryStatusRequest(name=name),
                               deadline_s)
        return SharedMemoryStatus.list_from_proto(msg)

    async def register_cuda_shared_memory(self, name: str, raw_handle: bytes, device_id: int, byte_size: int, *,
                                          deadline_s: float | None = None) -> None:
        """Register a CUDA allocation of this process by its 64-byte ``cudaIpcMemHandle_t`` (raw bytes, not
        base64). UNAVAILABLE from a server without a GPU."""
        await self._call("CudaSharedMemoryRegister", pb.CudaSharedMemoryRegisterRequest(
            name=name, raw_handle=raw_handle, device_id=device_id, byte_size=byte_size), deadline_s)

    async def unregister_cuda_shared_memory(self, name: str = "", *, deadline_s: float | None = None) -> None:
        """Unregister CUDA region ``name``, or all of them when ``name`` is empty."""
        await self._call("CudaSharedMemoryUnregister", pb.CudaSharedMemoryUnregisterRequest(name=name),
                         deadline_s)

    async def cuda_shared_memory_status(self, name: str = "", *,
                                        deadline_s: float | None = None) -> list[SharedMemoryStatus]:
        """The registered CUDA regions (or the one called ``name``)."""
        msg = await self._call("CudaSharedMemoryStatus", pb.CudaSharedMemoryStatusRequest(name=name), deadline_s)
        return SharedMemoryStatus.list_from_proto(msg)
