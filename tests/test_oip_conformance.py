"""The Open Inference Protocol as tritonclient (a client nobody here wrote) speaks it."""

from __future__ import annotations

import json
import queue
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support import onnx_models
from support.onnx_models import ALL_TYPES
from support.tensors import random_tensor
from tritonclient.utils import InferenceServerException


@pytest.fixture
def client(url: str) -> tc.InferenceServerClient:
    return tc.InferenceServerClient(url)


def test_server_health_and_metadata(client: tc.InferenceServerClient) -> None:
    assert client.is_server_live()
    # Strict readiness (Triton's default): the repository's 'broken' model failed to load.
    assert not client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "peregrine"
    assert "model_repository" in meta.extensions


def test_model_metadata_reports_graph_with_dynamic_dims(client: tc.InferenceServerClient) -> None:
    meta = client.get_model_metadata("simple")
    assert meta.versions == ["1"]
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("INPUT0", "INT32", [-1, 16]), ("INPUT1", "INT32", [-1, 16])]
    cfg = client.get_model_config("simple").config
    assert cfg.max_batch_size == 8
    assert [list(i.dims) for i in cfg.input] == [[16], [16]]
    assert cfg.parameters["execution_providers"].string_value.split(",")[-1] == "CPUExecutionProvider"
    nobatch = client.get_model_config("simple_nobatch").config
    assert nobatch.max_batch_size == 0
    assert list(nobatch.input[0].dims) == [16]


def test_model_ready(client: tc.InferenceServerClient) -> None:
    assert client.is_model_ready("simple")
    assert client.is_model_ready("simple", "1")
    assert not client.is_model_ready("simple", "2")
    assert not client.is_model_ready("broken")
    assert not client.is_model_ready("no_such_model")


@pytest.mark.parametrize("dt", ALL_TYPES)
def test_raw_round_trip_every_datatype(client: tc.InferenceServerClient, dt: str) -> None:
    rng = np.random.default_rng(hash(dt) % 2**32)
    x = random_tensor(dt, (3, 5), rng)
    inp = tc.InferInput("INPUT0", list(x.shape), dt)
    inp.set_data_from_numpy(x)
    result = client.infer(f"identity_{dt.lower()}", [inp], request_id="r1")
    out = result.as_numpy("OUTPUT0")
    assert result.get_response().id == "r1"
    assert out.shape == x.shape
    np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize("dt", ["BOOL", "INT32", "INT64", "UINT32", "UINT64", "FP32", "FP64", "BYTES"])
def test_typed_contents_are_answered_in_raw_output_contents_as_triton_does(url: str, dt: str) -> None:
    """Clients may send the typed `contents` fields; as Triton, the answer is always in
    `raw_output_contents` (clients written for Triton read only those: typed outputs crashed them)."""
    from peregrine.proto import grpc_service_pb2 as pb
    from peregrine.proto import grpc_service_pb2_grpc as pb_grpc
    from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

    rng = np.random.default_rng(7)
    x = random_tensor(dt, (2, 3), rng)
    field = {"BOOL": "bool_contents", "INT32": "int_contents", "INT64": "int64_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents", "BYTES": "bytes_contents"}[dt]
    req = pb.ModelInferRequest(model_name=f"identity_{dt.lower()}")
    t = req.inputs.add(name="INPUT0", datatype=dt, shape=[2, 3])
    getattr(t.contents, field).extend(x.reshape(-1).tolist())
    with grpc.insecure_channel(url) as ch:
        resp = pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req)
    assert not resp.outputs[0].HasField("contents")
    assert len(resp.raw_output_contents) == 1
    raw = resp.raw_output_contents[0]
    got = deserialize_bytes_tensor(raw) if dt == "BYTES" else np.frombuffer(raw, triton_to_np_dtype(dt))
    assert list(resp.outputs[0].shape) == [2, 3]
    np.testing.assert_array_equal(got.reshape(2, 3), x)


def test_requested_outputs_and_batch(client: tc.InferenceServerClient) -> None:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, np.int32)
    inputs = [tc.InferInput("INPUT0", [2, 16], "INT32"), tc.InferInput("INPUT1", [2, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    r = client.infer("simple", inputs, outputs=[tc.InferRequestedOutput("OUTPUT1")])
    np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), a - b)
    assert r.as_numpy("OUTPUT0") is None


def test_stream_infer_in_order_with_errors_inline(client: tc.InferenceServerClient) -> None:
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for i in range(8):
            x = np.full((1, 4), i, np.float32)
            inp = tc.InferInput("INPUT0", [1, 4], "FP32")
            inp.set_data_from_numpy(x)
            client.async_stream_infer("identity_fp32", [inp], request_id=str(i))
        bad = tc.InferInput("INPUT0", [1, 4], "INT32")
        bad.set_data_from_numpy(np.zeros((1, 4), np.int32))
        client.async_stream_infer("identity_fp32", [bad], request_id="bad")
        good = tc.InferInput("INPUT0", [1, 4], "FP32")
        good.set_data_from_numpy(np.full((1, 4), 99, np.float32))
        client.async_stream_infer("identity_fp32", [good], request_id="after")
        # what a client written for decoupled models sends: it reads until a response says it is the last
        client.async_stream_infer("identity_fp32", [good], request_id="empty-final", enable_empty_final_response=True)
        got = [results.get(timeout=30) for _ in range(11)]
    finally:
        client.stop_stream()
    for i, (result, error) in enumerate(got[:8]):
        assert error is None
        assert result.get_response().id == str(i)
        assert result.as_numpy("OUTPUT0")[0, 0] == i
    assert got[8][1] is not None  # the bad request is answered with an error...
    assert got[9][0].as_numpy("OUTPUT0")[0, 0] == 99  # ...and the stream goes on
    assert got[10][0].get_response().id == "empty-final"
    for result, _ in got[:8] + got[9:]:  # every answer is its request's last, and says so as Triton's do
        assert result.get_response().parameters["triton_final_response"].bool_param is True


def test_a_long_stream_holds_only_what_is_in_flight(url: str) -> None:
    """A ModelStreamInfer stream's memory stays bounded however many requests it carries: answered
    requests (their inputs, their results) are let go. The client sends in lock step (one request in
    flight), 4 MiB tensors; the process's resident memory is read (results live in ONNX Runtime's
    allocations, which tracemalloc does not see)."""
    import os
    import threading

    from peregrine.proto import grpc_service_pb2 as pb
    from peregrine.proto import grpc_service_pb2_grpc as pb_grpc

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    x = np.ones((1, 1 << 20), np.float32)
    request = pb.ModelInferRequest(
        model_name="identity_fp32",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP32", shape=list(x.shape))],
        raw_input_contents=[x.tobytes()])
    marks: dict[int, int] = {}
    answered = threading.Semaphore(0)
    count = 120

    def requests() -> Iterator[pb.ModelInferRequest]:
        for i in range(count):
            if i:
                answered.acquire()  # one request in flight at a time
            if i in (20, count - 1):
                marks[i] = rss()
            yield request

    options = [("grpc.max_receive_message_length", 1 << 26)]
    ok = 0
    with grpc.insecure_channel(url, options=options) as channel:
        for response in pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests(), timeout=120):
            ok += not response.error_message
            answered.release()
    assert ok == count
    growth = marks[count - 1] - marks[20]
    assert growth < 16 * x.nbytes, f"stream memory grew by {growth / 1e6:.0f} MB over {count - 21} requests"


def test_a_stream_reads_no_further_ahead_than_its_in_flight_limit(tmp_path: Path, start_server) -> None:
    """A client that sends faster than the model runs is held back by gRPC flow control: the server reads
    at most STREAM_MAX_IN_FLIGHT requests of a stream ahead of its answers instead of buffering them."""
    import threading
    import time

    from peregrine.proto import grpc_service_pb2 as pb
    from peregrine.proto import grpc_service_pb2_grpc as pb_grpc
    from peregrine.server.dataplane.streams import STREAM_MAX_IN_FLIGHT

    # Batches wait up to 1 s to fill 40 rows: with at most 32 requests in flight, each batch waits it out.
    # 4 MiB requests: gRPC's transport buffers hold bytes, and its flow-control window grows to several MiB
    # (BDP probing), so with 1 MiB requests it held up to 22 more than the server read (flaky).
    onnx_models.write(tmp_path, "held", onnx_models.identity("FP32", ["N", 1 << 20]),
                      "max_batch_size = 40\n\n[dynamic_batching]\nmax_queue_delay_us = 1000000\n")
    server = start_server(tmp_path)
    x = np.ones((1, 1 << 20), np.float32)  # 4 MiB
    request = pb.ModelInferRequest(
        model_name="held", raw_input_contents=[x.tobytes()],
        inputs=[pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP32", shape=list(x.shape))])
    pulled = 0
    total = STREAM_MAX_IN_FLIGHT * 2 + 8

    def requests() -> Iterator[pb.ModelInferRequest]:
        nonlocal pulled
        for _ in range(total):
            pulled += 1
            yield request

    seen_early: list[int] = []
    timer = threading.Timer(0.7, lambda: seen_early.append(pulled))  # before the first batch runs
    options = [("grpc.max_receive_message_length", 1 << 26)]
    with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=options) as channel:
        timer.start()
        t0 = time.monotonic()
        answers = list(pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests(), timeout=60))
    assert len(answers) == total and not any(a.error_message for a in answers)
    assert time.monotonic() - t0 >= 1.0
    # gRPC's own buffers hold a few more messages on the way (its flow-control window is a few MiB).
    assert seen_early and seen_early[0] <= STREAM_MAX_IN_FLIGHT + 12, seen_early


def test_statistics_count_requests_and_batches(client: tc.InferenceServerClient) -> None:
    before = client.get_inference_statistics("identity_int16").model_stats[0]
    x = np.ones((2, 3), np.int16)
    inp = tc.InferInput("INPUT0", [2, 3], "INT16")
    inp.set_data_from_numpy(x)
    for _ in range(3):
        client.infer("identity_int16", [inp])
    after = client.get_inference_statistics("identity_int16").model_stats[0]
    assert after.inference_stats.success.count - before.inference_stats.success.count == 3
    assert after.execution_count - before.execution_count == 3
    assert after.inference_count - before.inference_count == 6  # batch elements
    sizes = {b.batch_size: b.compute_infer.count for b in after.batch_stats}
    assert sizes[2] >= 3
    assert after.inference_stats.compute_infer.ns > 0
    everything = client.get_inference_statistics()
    assert {"simple", "identity_int16"} <= {m.name for m in everything.model_stats}


def test_repository_index_reports_failures(client: tc.InferenceServerClient) -> None:
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index["simple"].state == "READY"
    assert index["broken"].state == "UNAVAILABLE"
    assert index["broken"].reason  # says why
    ready = {m.name for m in client.get_model_repository_index().models if m.state == "READY"}
    assert "broken" not in ready


def test_load_and_unload(tmp_path: Path, start_server) -> None:
    onnx_models.write(tmp_path, "m", onnx_models.identity("FP32", ["N", 2]))
    server = start_server(tmp_path, model_control_mode="explicit")
    c = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert not c.is_model_ready("m")
    c.load_model("m")
    assert c.is_model_ready("m")
    inp = tc.InferInput("INPUT0", [1, 2], "FP32")
    inp.set_data_from_numpy(np.ones((1, 2), np.float32))
    assert c.infer("m", [inp]).as_numpy("OUTPUT0").tolist() == [[1.0, 1.0]]
    # A new version on disk is picked up by a reload.
    onnx_models.write(tmp_path, "m", onnx_models.identity("FP32", ["N", 2]), version=2)
    c.load_model("m")
    assert c.get_model_metadata("m").versions == ["2"]
    c.unload_model("m")
    assert not c.is_model_ready("m")
    with pytest.raises(InferenceServerException) as e:
        c.infer("m", [inp])
    # as Triton answers an unloaded model: not found, no version available (not UNAVAILABLE, which clients retry)
    assert e.value.status() == "StatusCode.NOT_FOUND" and "has no available versions" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        c.load_model("does_not_exist")
    assert e.value.status() == "StatusCode.NOT_FOUND"


def test_health_service_per_model(url: str) -> None:
    with grpc.insecure_channel(url) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        serving = health_pb2.HealthCheckResponse.SERVING
        # The server's own services follow its (strict) readiness: the repository's 'broken' model failed.
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert stub.Check(health_pb2.HealthCheckRequest(service="")).status == not_serving
        assert stub.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")).status == \
            not_serving
        assert stub.Check(health_pb2.HealthCheckRequest(service="simple")).status == serving
        with pytest.raises(grpc.RpcError) as e:
            stub.Check(health_pb2.HealthCheckRequest(service="broken"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_services(url: str) -> None:
    with grpc.insecure_channel(url) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        reqs = iter([reflection_pb2.ServerReflectionRequest(list_services=""),
                     reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService")])
        responses = list(stub.ServerReflectionInfo(reqs))
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
    assert responses[1].file_descriptor_response.file_descriptor_proto


def test_metrics_endpoint(server, client: tc.InferenceServerClient) -> None:
    inp = tc.InferInput("INPUT0", [1, 3], "FP64")
    inp.set_data_from_numpy(np.ones((1, 3)))
    client.infer("identity_fp64", [inp])
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10).read().decode()
    assert 'peregrine_inference_request_success_total{model="identity_fp64",version="1"}' in text
    assert "peregrine_queue_depth" in text
    assert 'peregrine_request_duration_seconds_count{model="identity_fp64",status="OK"}' in text


def test_unknown_model_errors_start_with_tritons_words(client: tc.InferenceServerClient) -> None:
    """Clients written for Triton match on its text: 'Request for unknown model'."""
    inp = tc.InferInput("INPUT0", [1, 1], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 1), np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("no_such_model", [inp])
    assert e.value.status() == "StatusCode.NOT_FOUND"
    assert e.value.message().startswith("Request for unknown model: 'no_such_model' is not found")


def _classes(values: np.ndarray, k: int, fmt: str) -> list[bytes]:
    """Triton's classification strings for one batch entry, written out plainly: the k largest values in
    descending order (equal ones by index), "value:index"."""
    order = sorted(range(len(values)), key=lambda i: (-float(values[i]), i))[:k]
    return [f"{values[i]:{fmt}}:{i}".encode() for i in order]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_classification_extension(server, protocol: str) -> None:  # type: ignore[no-untyped-def]
    """tritonclient's class_count (Triton's classification extension) answers the output as its top classes,
    BYTES "value:index" per batch entry, over both protocols: [batch, K] for a batching model, [K] for
    one that does not batch; K over the number of values gives them all; floating point values printed as
    C++'s std::to_string prints them."""
    import tritonclient.http as th

    lib = tc if protocol == "grpc" else th
    client = (tc.InferenceServerClient(f"127.0.0.1:{server.port}") if protocol == "grpc"
              else th.InferenceServerClient(f"127.0.0.1:{server.http_port}"))
    meta = client.get_server_metadata()
    assert "classification" in (meta["extensions"] if protocol == "http" else meta.extensions)
    a = np.array([[3, 9, -2, 9, 0, 7, 1, 1, 5, 4, 8, 2, 6, 0, 11, -5], list(range(16))], np.int32)
    b = np.zeros_like(a)
    inputs = [lib.InferInput("INPUT0", [2, 16], "INT32"), lib.InferInput("INPUT1", [2, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    outputs = [lib.InferRequestedOutput("OUTPUT0", class_count=3), lib.InferRequestedOutput("OUTPUT1")]
    result = client.infer("simple", inputs, outputs=outputs)
    top = result.as_numpy("OUTPUT0")
    assert top.shape == (2, 3) and top.dtype == object
    assert [list(row) for row in top] == [_classes(a[0], 3, "d"), _classes(a[1], 3, "d")]
    assert list(top[0]) == [b"11:14", b"9:1", b"9:3"]  # equal values keep their index order
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)  # an output without a count is as it was
    # a model that does not batch: [K]; more classes than values gives them all
    inputs = [lib.InferInput("INPUT0", [16], "INT32"), lib.InferInput("INPUT1", [16], "INT32")]
    inputs[0].set_data_from_numpy(a[0])
    inputs[1].set_data_from_numpy(b[0])
    top = client.infer("simple_nobatch", inputs,
                       outputs=[lib.InferRequestedOutput("OUTPUT0", class_count=40)]).as_numpy("OUTPUT0")
    assert top.shape == (16,) and list(top) == _classes(a[0], 16, "d")
    # floating point
    x = np.array([[0.1, 0.7, 0.2, 1e-7]], np.float32)
    inp = lib.InferInput("INPUT0", [1, 4], "FP32")
    inp.set_data_from_numpy(x)
    top = client.infer("identity_fp32", [inp],
                       outputs=[lib.InferRequestedOutput("OUTPUT0", class_count=2)]).as_numpy("OUTPUT0")
    assert list(top[0]) == [b"0.700000:1", b"0.200000:2"]


def test_classification_of_what_cannot_be_ranked_is_invalid(server) -> None:  # type: ignore[no-untyped-def]
    import tritonclient.http as th

    client = th.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    inp = th.InferInput("INPUT0", [1, 2], "BYTES")
    inp.set_data_from_numpy(np.array([[b"a", b"b"]], dtype=object))
    with pytest.raises(InferenceServerException) as e:
        client.infer("identity_bytes", [inp], outputs=[th.InferRequestedOutput("OUTPUT0", class_count=1)])
    assert e.value.status() == "400" and "classification" in e.value.message()
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}],
            "outputs": [{"name": "OUTPUT0", "parameters": {"classification": -2}}]}
    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}/v2/models/identity_fp32/infer",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as http_error:
        urllib.request.urlopen(request, timeout=10)
    assert http_error.value.code == 400 and b"parameters.classification" in http_error.value.read()


@pytest.mark.parametrize(("method", "kind"), [("/grpc.health.v1.Health/Check", "unary"),
                                              ("/grpc.health.v1.Health/Watch", "server_stream"),
                                              ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                               "bidi")])
def test_bytes_that_do_not_parse_are_invalid_argument_on_health_and_reflection(url: str, method: str,
                                                                                kind: str) -> None:
    """As on the server's own services (grpc's servicers raised on them: UNKNOWN, a traceback logged)."""
    def same(b: bytes) -> bytes:
        return b

    with grpc.insecure_channel(url) as channel, pytest.raises(grpc.RpcError) as e:
        if kind == "unary":
            channel.unary_unary(method, request_serializer=same, response_deserializer=same)(b"\xff\xff\xff",
                                                                                              timeout=10)
        elif kind == "server_stream":
            list(channel.unary_stream(method, request_serializer=same, response_deserializer=same)(
                b"\xff\xff\xff", timeout=10))
        else:
            list(channel.stream_stream(method, request_serializer=same, response_deserializer=same)(
                iter([b"\xff\xff\xff"]), timeout=10))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid" in e.value.details()
    with grpc.insecure_channel(url) as channel:  # and a good request is answered as before
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING  # this repository has a broken model
        listed = list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
        assert "inference.GRPCInferenceService" in {s.name for s in listed[0].list_services_response.service}
