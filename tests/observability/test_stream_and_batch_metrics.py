"""Batch sizes and stream outcomes on /metrics move by exactly what was executed and answered (issue 19, item 1)."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
from peregrine.proto import grpc_service_pb2 as pb
from peregrine.proto import grpc_service_pb2_grpc as pb_grpc
from peregrine.server.app import PeregrineServer
from prometheus_client.parser import text_string_to_metric_families
from support import onnx_models


def _request(i: int) -> pb.ModelInferRequest:
    x = np.full((1, 4), i, np.float32)
    return pb.ModelInferRequest(model_name="id", id=str(i), raw_input_contents=[x.tobytes()],
                                inputs=[pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP32",
                                                                              shape=[1, 4])])


def _samples(server: PeregrineServer, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10).read().decode()
    return {(s.name, *sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name.startswith(name)}


def test_batch_sizes_and_stream_answers(tmp_path: Path, start_server: Callable[..., PeregrineServer]) -> None:
    onnx_models.write(tmp_path, "id", onnx_models.identity("FP32", ["N", 4]),
                      "max_batch_size = 8\n[dynamic_batching]\nmax_queue_delay_us = 200000\n")
    server = start_server(tmp_path, http_port=0)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        answers = list(stub.ModelStreamInfer(iter([_request(i) for i in range(5)]), timeout=30))
        assert len(answers) == 5 and not any(a.error_message for a in answers)
        stub.ModelInfer(_request(9), timeout=30)
    stats = server.dataplane.repository.get("id", "").stats
    batches = _samples(server, "peregrine_batch_size")
    labels = (("model", "id"), ("version", "1"))
    assert batches[("peregrine_batch_size_count", *labels)] == stats.execution_count
    assert batches[("peregrine_batch_size_sum", *labels)] == stats.inference_count == 6
    assert batches[("peregrine_batch_size_bucket", ("le", "+Inf"), *labels)] == stats.execution_count
    frames = _samples(server, "peregrine_stream_frames")
    assert frames[("peregrine_stream_frames_total", ("model", "id"), ("outcome", "ok"))] == 5
