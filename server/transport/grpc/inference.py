"""``inference.GRPCInferenceService``: the Open Inference Protocol over gRPC.

Each method converts the message (:mod:`peregrine.server.codecs`), calls the data plane and converts its
answer back; errors leave as statuses through :func:`.status.unary`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from peregrine.proto import grpc_service_pb2 as pb
from peregrine.proto import grpc_service_pb2_grpc as pb_grpc

from ...codecs import metadata, oip
from ...core.errors import InvalidArgument, PeregrineError, clipped
from ...dataplane.dataplane import DataPlane, RequestScope
from ...dataplane.model_files import PREFIX as FILE_PREFIX
from ...dataplane.streams import OIP_STREAM, StreamAnswer
from .status import GrpcCall, check, status_of, unary


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane
        self._stream_ids = itertools.count()

    # -- health and metadata -------------------------------------------------------------------
    @unary
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @unary
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready)

    @unary
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version))

    @unary
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        m = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(name=m.name, version=m.version, extensions=m.extensions)

    @unary
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        model = self.dataplane.model(request.name, request.version)
        return metadata.model_metadata(model, self.dataplane.ready_versions(model.name))

    @unary
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        model = self.dataplane.model(request.name, request.version)
        return pb.ModelConfigResponse(config=metadata.model_config(model, self.dataplane.kernel_tier))

    @unary
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        stats = self.dataplane.model_statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(model_stats=[metadata.model_statistics(m, s) for m, s in stats])

    # -- inference -----------------------------------------------------------------------------
    @unary
    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: grpc.aio.ServicerContext) -> oip.EncodedInferResponse:
        call = GrpcCall(context)
        with self.dataplane.scope(call, request.model_name, nbytes=request.ByteSize()) as scope:
            t = time.perf_counter_ns()
            req = oip.decode_infer_request(request, scope.deadline, regions=scope.regions)
            scope.decode_ns = time.perf_counter_ns() - t
            result = await scope.infer(req)
            t = time.perf_counter_ns()
            answer = oip.encode_infer_response(result, scope.regions)
            scope.encode_ns = time.perf_counter_ns() - t
            return answer

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[pb.ModelInferRequest],
                               context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests of one stream run concurrently (so they can share batches), at most
        ``STREAM_MAX_IN_FLIGHT`` read ahead of their answers; responses come back in request order. An
        error answers that request in ``error_message`` and the stream goes on."""
        adapter = _OipStream(f"stream-{next(self._stream_ids)}")
        try:
            answers = self.dataplane.stream(GrpcCall(context), request_iterator, adapter, OIP_STREAM)
        except PeregrineError as e:  # no room for another stream
            code, message = status_of(e)
            await context.abort(code, message)
        try:
            async for answer in answers:
                yield answer
        finally:
            await answers.aclose()  # type: ignore[attr-defined]  # the driver's own clean-up, now

    # -- repository ----------------------------------------------------------------------------
    @unary
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        return metadata.repository_index(self.dataplane.repository_index(request.repository_name, request.ready))

    @unary
    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest,
                            context: Any) -> pb.RepositoryModelLoadResponse:
        config_json = None
        files: dict[str, bytes] = {}
        for key, value in request.parameters.items():
            choice = value.WhichOneof("parameter_choice")
            if key.startswith(FILE_PREFIX):
                if choice != "bytes_param":
                    raise InvalidArgument(f"parameters.{clipped(key)}: expected the file's contents as bytes_param, "
                                          f"got {choice or 'no value'}")
                files[key] = value.bytes_param
                continue
            if key != "config":
                raise InvalidArgument(f"parameters.{clipped(key)}: not a load parameter; a load takes 'config' (a "
                                      "model configuration in JSON) and 'file:<version>/<path>' (model files)")
            if choice != "string_param":
                raise InvalidArgument("parameters.config: expected a string holding JSON")
            config_json = value.string_param
        await asyncio.to_thread(self.dataplane.load_model, request.model_name, config_json, files)
        return pb.RepositoryModelLoadResponse()

    @unary
    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,
                              context: Any) -> pb.RepositoryModelUnloadResponse:
        await asyncio.to_thread(self.dataplane.unload_model, request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # -- shared memory (Triton's extension) ------------------------------------------------------------
    @unary
    async def SystemSharedMemoryStatus(self, request: pb.SystemSharedMemoryStatusRequest,
                                 context: Any) -> pb.SystemSharedMemoryStatusResponse:
        return metadata.shared_memory_status("system", self.dataplane.shared_memory.status("system", request.name))

    @unary
    async def SystemSharedMemoryRegister(self, request: pb.SystemSharedMemoryRegisterRequest,
                                   context: Any) -> pb.SystemSharedMemoryRegisterResponse:
        await asyncio.to_thread(self.dataplane.shared_memory.register_system, request.name, request.key,
                                request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @unary
    async def SystemSharedMemoryUnregister(self, request: pb.SystemSharedMemoryUnregisterRequest,
                                     context: Any) -> pb.SystemSharedMemoryUnregisterResponse:
        await asyncio.to_thread(self.dataplane.shared_memory.unregister, "system", request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @unary
    async def CudaSharedMemoryStatus(self, request: pb.CudaSharedMemoryStatusRequest,
                               context: Any) -> pb.CudaSharedMemoryStatusResponse:
        return metadata.shared_memory_status("cuda", self.dataplane.shared_memory.status("cuda", request.name))

    @unary
    async def CudaSharedMemoryRegister(self, request: pb.CudaSharedMemoryRegisterRequest,
                                 context: Any) -> pb.CudaSharedMemoryRegisterResponse:
        await asyncio.to_thread(self.dataplane.shared_memory.register_cuda, request.name, request.raw_handle,
                                request.device_id, request.byte_size)
        return pb.CudaSharedMemoryRegisterResponse()

    @unary
    async def CudaSharedMemoryUnregister(self, request: pb.CudaSharedMemoryUnregisterRequest,
                                   context: Any) -> pb.CudaSharedMemoryUnregisterResponse:
        await asyncio.to_thread(self.dataplane.shared_memory.unregister, "cuda", request.name)
        return pb.CudaSharedMemoryUnregisterResponse()

    # -- trace and log settings ----------------------------------------------------------------------
    @unary
    async def TraceSetting(self, request: pb.TraceSettingRequest, context: Any) -> pb.TraceSettingResponse:
        changes = {key: list(value.value) for key, value in request.settings.items()}
        settings = self.dataplane.trace_settings(request.model_name, changes)
        response = pb.TraceSettingResponse()
        for key, values in settings.items():
            response.settings[key].value.extend(values)
        return response

    @unary
    async def LogSettings(self, request: pb.LogSettingsRequest, context: Any) -> pb.LogSettingsResponse:
        changes = {}
        for key, value in request.settings.items():
            kind = value.WhichOneof("parameter_choice")
            if kind is None:
                raise InvalidArgument(f"settings.{clipped(key)}: expected a bool, uint32 or string value, got none")
            changes[key] = getattr(value, kind)
        settings = self.dataplane.update_log_settings(changes)
        response = pb.LogSettingsResponse()
        for key, v in settings.items():
            field = "bool_param" if isinstance(v, bool) else "uint32_param" if isinstance(v, int) else "string_param"
            setattr(response.settings[key], field, v)
        return response


class _OipStream:
    """The codec of one ModelStreamInfer stream, for the data plane's stream driver."""

    def __init__(self, key: str) -> None:
        self.key = key  # requests of one stream keep their order where the model preserves ordering

    def model_of(self, message: pb.ModelInferRequest) -> str:
        return message.model_name

    def decode(self, message: pb.ModelInferRequest, scope: RequestScope) -> Any:
        check(message)
        t = time.perf_counter_ns()
        request = oip.decode_infer_request(message, scope.deadline, ordering_key=self.key, regions=scope.regions)
        scope.decode_ns = time.perf_counter_ns() - t
        return request

    def answer(self, message: pb.ModelInferRequest, scope: RequestScope,
               answer: StreamAnswer) -> pb.ModelStreamInferResponse | oip.EncodedStreamResponse:
        if answer.error is None:
            t = time.perf_counter_ns()
            encoded = oip.encode_infer_response(answer.result, scope.regions)
            encoded.message.parameters[oip.FINAL_RESPONSE].bool_param = True
            scope.encode_ns = time.perf_counter_ns() - t
            return oip.EncodedStreamResponse(encoded)
        _, text = status_of(answer.error)
        failed = pb.ModelInferResponse(model_name=message.model_name, model_version=message.model_version,
                                       id=message.id)
        failed.parameters[oip.FINAL_RESPONSE].bool_param = True
        return pb.ModelStreamInferResponse(error_message=text, infer_response=failed)

    def size(self, message: pb.ModelInferRequest) -> int:
        return int(message.ByteSize())

    def shed(self, message: pb.ModelInferRequest) -> pb.ModelInferRequest:
        """What an answer needs of a request once it is decoded: its names, not its tensors."""
        return pb.ModelInferRequest(model_name=message.model_name, model_version=message.model_version,
                                    id=message.id)
