"""Fixtures and small servers for the client and load-harness tests.

Not a conftest.py on purpose: conftest files outside packages all import as module ``conftest`` and replace
each other in ``sys.modules``, which breaks ``from conftest import ...`` elsewhere in the suite. Test modules
import the fixtures they use from here.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from peregrine.proto import detection_pb2_grpc as det_grpc
from peregrine.proto import grpc_service_pb2 as pb
from peregrine.proto import grpc_service_pb2_grpc as pb_grpc

sys.path.insert(0, str(Path(__file__).parent.parent))

from peregrine.modelgen import yolov5_detector
from peregrine.server.app import PeregrineServer
from peregrine.server.config import ServerConfig
from support import onnx_models
from support.certificates import Certificates, make_certificates  # noqa: F401 (re-exported)

ALL_TYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES"]
# A request to "slow" waits in the batcher for a fuller batch for this long: from the client's side, a
# model whose run takes 5 s.
SLOW_WINDOW_US = 5_000_000


@pytest.fixture(scope="module")
def peregrine_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeregrineServer]:
    """A real Peregrine server, in-process on port 0, owned by these tests (they load and unload models)."""
    repo = tmp_path_factory.mktemp("client_models")
    for dt in ALL_TYPES:
        onnx_models.write(repo, f"identity_{dt.lower()}", onnx_models.identity(dt, ["N", None]))
    onnx_models.write(repo, "slow", onnx_models.identity("FP32", ["N", 4]),
                      f"max_batch_size = 8\n\n[dynamic_batching]\nmax_queue_delay_us = {SLOW_WINDOW_US}\n")
    onnx_models.write(repo, "simple", onnx_models.add_sub(["N", 16]), "max_batch_size = 8\n")
    onnx_models.write(repo, "spare", onnx_models.identity("INT32", ["N", 4]))
    server = PeregrineServer(ServerConfig(model_repository=repo, grpc_port=0, http_port=None))
    server.start()
    yield server
    server.stop(grace=0.5)


@pytest.fixture(scope="module")
def peregrine_url(peregrine_server: PeregrineServer) -> str:
    return f"127.0.0.1:{peregrine_server.port}"


# Detection pipelines over a small YOLOv5 (320x320 input, seeded weights that find tens of boxes in photos).
# "det_slow" holds a lone frame for DET_SLOW_WINDOW_US waiting for a fuller batch and runs one frame per
# stream at a time with one waiting: a server guaranteed to fall behind a camera.
DET_SIZE = 320
DET_SLOW_WINDOW_US = 400_000


def pipeline_config(detector: str, extra: str = "", max_batch: int = 8, window_us: int = 2000) -> str:
    return (f'platform = "peregrine_detection"\nmax_batch_size = {max_batch}\n\n'
            f'[detection]\ndetector = "{detector}"\n{extra}\n'
            f"[dynamic_batching]\nmax_queue_delay_us = {window_us}\n")


@pytest.fixture(scope="module")
def detection_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeregrineServer]:
    """A real Peregrine server with detection pipelines "det" and "det_slow" and a plain OIP model "plain"."""
    repo = tmp_path_factory.mktemp("detection_models")
    onnx_models.write(repo, "yolov5n", yolov5_detector(0, imgsz=DET_SIZE), "max_batch_size = 8\n")
    onnx_models.write(repo, "plain", onnx_models.identity("FP32", ["N", 4]))
    for name, config in (
        ("det", pipeline_config("yolov5n")),
        ("det_slow", pipeline_config("yolov5n", "stream_max_in_flight = 1\nstream_max_waiting = 1\n",
                                     window_us=DET_SLOW_WINDOW_US)),
    ):
        (repo / name).mkdir()
        (repo / name / "config.toml").write_text(config)
    server = PeregrineServer(ServerConfig(model_repository=repo, grpc_port=0, http_port=None))
    server.start()
    yield server
    server.stop(grace=0.5)


@pytest.fixture(scope="module")
def detection_url(detection_server: PeregrineServer) -> str:
    return f"127.0.0.1:{detection_server.port}"


@contextmanager
def serve(servicer: pb_grpc.GRPCInferenceServiceServicer, workers: int = 4,
          credentials: grpc.ServerCredentials | None = None,
          interceptors: tuple[grpc.ServerInterceptor, ...] = ()) -> Iterator[int]:
    """Run ``servicer`` on a gRPC server on 127.0.0.1, port 0; yields the bound port."""
    server = grpc.server(ThreadPoolExecutor(workers), interceptors=interceptors,
                         options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    address = "127.0.0.1:0"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=0).wait()


@contextmanager
def serve_detection(servicer: det_grpc.DetectionServiceServicer, workers: int = 4) -> Iterator[int]:
    """Run a ``peregrine.v1.DetectionService`` servicer on 127.0.0.1, port 0; yields the bound port."""
    server = grpc.server(ThreadPoolExecutor(workers), options=[("grpc.so_reuseport", 0)])
    det_grpc.add_DetectionServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=0).wait()


class FlakyServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Answers UNAVAILABLE to the first ``failures`` calls of every method, then succeeds; counts calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _maybe_fail(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls[method] += 1
            n = self.calls[method]
        if n <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{method}: try {n} fails on purpose")

    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> pb.ServerLiveResponse:
        self._maybe_fail("ServerLive", context)
        return pb.ServerLiveResponse(live=True)

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> pb.ModelMetadataResponse:
        self._maybe_fail("ModelMetadata", context)
        return pb.ModelMetadataResponse(name=request.name, versions=["1"], platform="fake")

    def RepositoryIndex(self, request: Any, context: grpc.ServicerContext) -> pb.RepositoryIndexResponse:
        self._maybe_fail("RepositoryIndex", context)
        return pb.RepositoryIndexResponse()

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        self._maybe_fail("ModelInfer", context)
        return pb.ModelInferResponse(model_name=request.model_name)

    def RepositoryModelLoad(self, request: Any, context: grpc.ServicerContext) -> pb.RepositoryModelLoadResponse:
        self._maybe_fail("RepositoryModelLoad", context)
        return pb.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request: Any,
                              context: grpc.ServicerContext) -> pb.RepositoryModelUnloadResponse:
        self._maybe_fail("RepositoryModelUnload", context)
        return pb.RepositoryModelUnloadResponse()


class SlowServicer(pb_grpc.GRPCInferenceServiceServicer):
    """A server that stalls: every ModelInfer takes ``delay_s``; with ``workers`` threads the server
    completes at most ``workers / delay_s`` requests per second and queues the rest."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.started: list[float] = []

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        self.started.append(time.perf_counter())
        time.sleep(self.delay_s)
        return pb.ModelInferResponse(model_name=request.model_name)


