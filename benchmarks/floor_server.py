"""The floor: a bare Python gRPC OIP server that echoes its input, with nothing of Peregrine in it.

What any Python server's request path costs before it does any work of its own (protobuf, gRPC, the
interpreter): the line Peregrine's per-request overhead is measured against (docs/BENCHMARKS.md). It serves
just what perf_analyzer needs from one model, ``identity_fp32`` (FP32 [-1, -1] -> same): ServerLive,
ServerReady, ServerMetadata, ModelReady, ModelMetadata, ModelConfig and ModelInfer (raw tensors in, the same bytes out),
in one of two concurrency models:

- ``--mode threaded``: ``grpc.server`` with a thread pool (a call holds a thread while it runs);
- ``--mode aio``: ``grpc.aio.server`` on one asyncio event loop (``--uvloop`` to run it on uvloop).

    python benchmarks/floor_server.py --mode aio --port 8401
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from peregrine.proto import grpc_service_pb2 as pb
from peregrine.proto import grpc_service_pb2_grpc as pb_grpc
from peregrine.proto import model_config_pb2 as mc

MODEL = "identity_fp32"
OPTIONS = [("grpc.max_send_message_length", 1 << 29), ("grpc.max_receive_message_length", 1 << 29),
           ("grpc.so_reuseport", 0)]


def metadata() -> pb.ModelMetadataResponse:
    return pb.ModelMetadataResponse(
        name=MODEL, versions=["1"], platform="onnxruntime_onnx",
        inputs=[pb.ModelMetadataResponse.TensorMetadata(name="INPUT0", datatype="FP32", shape=[-1, -1])],
        outputs=[pb.ModelMetadataResponse.TensorMetadata(name="OUTPUT0", datatype="FP32", shape=[-1, -1])])


def config() -> pb.ModelConfigResponse:
    return pb.ModelConfigResponse(config=mc.ModelConfig(
        name=MODEL, platform="onnxruntime_onnx", max_batch_size=16,
        input=[mc.ModelInput(name="INPUT0", data_type=mc.TYPE_FP32, dims=[-1])],
        output=[mc.ModelOutput(name="OUTPUT0", data_type=mc.TYPE_FP32, dims=[-1])]))


def echo(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
    for tensor in request.inputs:
        response.outputs.add(name="OUTPUT0", datatype=tensor.datatype, shape=tensor.shape)
    response.raw_output_contents.extend(request.raw_input_contents)
    return response


class Threaded(pb_grpc.GRPCInferenceServiceServicer):
    def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request: Any, context: Any) -> Any:
        return pb.ModelReadyResponse(ready=request.name == MODEL)

    def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(name="floor", version="0")

    def ModelMetadata(self, request: Any, context: Any) -> Any:
        return metadata()

    def ModelConfig(self, request: Any, context: Any) -> Any:
        return config()

    def ModelInfer(self, request: Any, context: Any) -> Any:
        return echo(request)


class Aio(pb_grpc.GRPCInferenceServiceServicer):
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return pb.ModelReadyResponse(ready=request.name == MODEL)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(name="floor", version="0")

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        return metadata()

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        return config()

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        return echo(request)


def serve_threaded(host: str, port: int, workers: int) -> None:
    server = grpc.server(ThreadPoolExecutor(workers), options=OPTIONS)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Threaded(), server)
    server.add_insecure_port(f"{host}:{port}")
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()


async def serve_aio(host: str, port: int) -> None:
    server = grpc.aio.server(options=OPTIONS)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Aio(), server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["threaded", "aio"], default="threaded")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8401)
    p.add_argument("--workers", type=int, default=64, help="threaded mode: gRPC worker threads")
    p.add_argument("--uvloop", action="store_true", help="aio mode: run on uvloop")
    a = p.parse_args()
    if a.mode == "threaded":
        serve_threaded(a.host, a.port, a.workers)
    elif a.uvloop:
        import uvloop

        uvloop.run(serve_aio(a.host, a.port))
    else:
        asyncio.run(serve_aio(a.host, a.port))


if __name__ == "__main__":
    main()
