"""The Open Inference Protocol over HTTP/REST as ``tritonclient.http`` (sync, and its asyncio client)
speaks it: health, metadata, configuration, inference in JSON and in Triton's binary tensor extension,
compression, shared memory, statistics, the repository, trace and log settings, and Triton's errors."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
import tritonclient.utils.shared_memory as shm
from peregrine.server.app import PeregrineServer
from support import onnx_models
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def http_url(http_server: PeregrineServer) -> str:
    return f"127.0.0.1:{http_server.http_port}"


@pytest.fixture
def client(http_url: str) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(http_url)
    yield c
    c.close()


def _request(url: str, method: str = "GET", body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(f"http://{url}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def _status(e: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(e.value.status())


def _infer(client: httpclient.InferenceServerClient, model: str, array: np.ndarray, datatype: str,
           binary_in: bool, binary_out: bool, **kwargs: object) -> httpclient.InferResult:
    inp = httpclient.InferInput("INPUT0", list(array.shape), datatype)
    inp.set_data_from_numpy(array, binary_data=binary_in)
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary_out)
    return client.infer(model, [inp], outputs=[out], **kwargs)  # type: ignore[arg-type]


# -- health and metadata ----------------------------------------------------------------------------
def test_health_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("identity_fp32") and client.is_model_ready("identity_fp32", "1")
    assert not client.is_model_ready("no_such_model")
    meta = client.get_server_metadata()
    assert meta["name"] == "peregrine" and "model_repository" in meta["extensions"]
    model = client.get_model_metadata("identity_fp32")
    assert model["name"] == "identity_fp32" and model["versions"] == ["1"]
    assert model["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, -1]}]
    assert client.get_model_metadata("identity_fp32", "1")["name"] == "identity_fp32"


def test_model_config_prints_numbers_as_triton_does(client: httpclient.InferenceServerClient) -> None:
    config = client.get_model_config("simple")
    assert config["name"] == "simple" and config["max_batch_size"] == 8
    assert config["input"][0]["data_type"] == "TYPE_INT32" and config["input"][0]["dims"] == [16]
    assert config["instance_group"][0]["kind"] == "KIND_CPU"


# -- inference --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("binary_in", "binary_out"), [(False, False), (True, True), (True, False), (False, True)])
def test_infer_fp32_json_and_binary(client: httpclient.InferenceServerClient, binary_in: bool,
                                    binary_out: bool) -> None:
    x = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    result = _infer(client, "identity_fp32", x, "FP32", binary_in, binary_out, request_id="r1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)
    response = result.get_response()
    assert response["id"] == "r1" and response["model_name"] == "identity_fp32"


def test_infer_without_requested_outputs_answers_all_in_binary(client: httpclient.InferenceServerClient) -> None:
    inputs = []
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    for name in ("INPUT0", "INPUT1"):
        inp = httpclient.InferInput(name, [2, 16], "INT32")
        inp.set_data_from_numpy(a)
        inputs.append(inp)
    result = client.infer("simple", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - a)


@pytest.mark.parametrize("binary", [False, True])
def test_infer_bytes(client: httpclient.InferenceServerClient, binary: bool) -> None:
    x = np.array([[b"hello", b"", "wörld".encode()]], dtype=object)
    result = _infer(client, "identity_bytes", x, "BYTES", binary, binary)
    got = result.as_numpy("OUTPUT0").tolist()
    assert got == (x.tolist() if binary else [[v.decode() for v in x[0]]])  # JSON answers strings


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_infer_with_compression(client: httpclient.InferenceServerClient, algorithm: str) -> None:
    x = np.arange(4096, dtype=np.float32).reshape(4, 1024)
    inp = httpclient.InferInput("INPUT0", [4, 1024], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("identity_fp32", [inp], request_compression_algorithm=algorithm,
                          response_compression_algorithm=algorithm)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)


def test_asyncio_client(http_url: str) -> None:
    async def run() -> None:
        client = aioclient.InferenceServerClient(http_url)
        try:
            assert await client.is_server_live() and await client.is_server_ready()
            assert (await client.get_model_metadata("identity_fp32"))["name"] == "identity_fp32"
            x = np.random.default_rng(2).standard_normal((2, 7)).astype(np.float32)
            inp = aioclient.InferInput("INPUT0", [2, 7], "FP32")
            inp.set_data_from_numpy(x)
            results = await asyncio.gather(*(client.infer("identity_fp32", [inp]) for _ in range(8)))
            for result in results:
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)
            stats = await client.get_inference_statistics("identity_fp32")
            assert stats["model_stats"][0]["inference_stats"]["success"]["count"] >= 8
            with pytest.raises(InferenceServerException):
                await client.get_model_metadata("no_such_model")
        finally:
            await client.close()

    asyncio.run(run())


def test_statistics_count_requests(client: httpclient.InferenceServerClient) -> None:
    before = client.get_inference_statistics("identity_int32")["model_stats"][0]["inference_stats"]["success"]
    _infer(client, "identity_int32", np.ones((1, 3), np.int32), "INT32", True, True)
    stats = client.get_inference_statistics("identity_int32", "1")["model_stats"][0]
    assert stats["name"] == "identity_int32" and stats["version"] == "1"
    assert stats["inference_stats"]["success"]["count"] == before["count"] + 1
    assert isinstance(stats["inference_stats"]["success"]["ns"], int)
    everything = client.get_inference_statistics()["model_stats"]
    assert {"identity_int32", "identity_fp32"} <= {m["name"] for m in everything}


# -- shared memory ----------------------------------------------------------------------------------
def test_system_shared_memory(client: httpclient.InferenceServerClient) -> None:
    key_in, key_out = f"/pgtest_{uuid.uuid4().hex[:12]}", f"/pgtest_{uuid.uuid4().hex[:12]}"
    x = np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)
    h_in = shm.create_shared_memory_region("http_in", key_in, x.nbytes, create_only=True)
    h_out = shm.create_shared_memory_region("http_out", key_out, x.nbytes, create_only=True)
    try:
        shm.set_shared_memory_region(h_in, [x])
        client.register_system_shared_memory("http_in", key_in, x.nbytes)
        client.register_system_shared_memory("http_out", key_out, x.nbytes)
        status = client.get_system_shared_memory_status()
        assert {r["name"] for r in status} == {"http_in", "http_out"}
        assert client.get_system_shared_memory_status("http_in")[0]["key"] == key_in
        inp = httpclient.InferInput("INPUT0", [2, 8], "FP32")
        inp.set_shared_memory("http_in", x.nbytes)
        out = httpclient.InferRequestedOutput("OUTPUT0")
        out.set_shared_memory("http_out", x.nbytes)
        result = client.infer("identity_fp32", [inp], outputs=[out])
        # the output is in the region, listed bare as Triton lists it (its C++ client, perf_analyzer's, reads
        # any `parameters` there as a binary-data header)
        assert result.get_output("OUTPUT0") == {"name": "OUTPUT0", "datatype": "FP32", "shape": [2, 8]}
        got = shm.get_contents_as_numpy(h_out, np.float32, [2, 8])
        np.testing.assert_array_equal(got, x)
        client.unregister_system_shared_memory("http_in")
        assert [r["name"] for r in client.get_system_shared_memory_status()] == ["http_out"]
        client.unregister_system_shared_memory()
        assert client.get_system_shared_memory_status() == []
        with pytest.raises(InferenceServerException) as e:
            client.get_system_shared_memory_status("http_in")
        assert _status(e) == "404"
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(h_in)
        shm.destroy_shared_memory_region(h_out)


def test_cuda_shared_memory_status_lists_no_region(client: httpclient.InferenceServerClient) -> None:
    assert client.get_cuda_shared_memory_status() == []


# -- repository, trace and log settings ---------------------------------------------------------------
def test_repository_index_load_and_unload(start_server: Callable[..., PeregrineServer], tmp_path: Path) -> None:
    onnx_models.write(tmp_path, "id", onnx_models.identity("FP32", ["N", 4]))
    onnx_models.write(tmp_path, "other", onnx_models.identity("INT32", ["N", 4]))
    server = start_server(tmp_path, http_port=0, model_control_mode="explicit", load_models=["id"])
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    try:
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert index["id"]["state"] == "READY" and index["other"].get("state") != "READY"
        client.load_model("other")
        assert client.is_model_ready("other")
        client.load_model("id", config=json.dumps({"max_batch_size": 2}))
        assert client.get_model_config("id")["max_batch_size"] == 2
        client.unload_model("other")
        assert not client.is_model_ready("other")
        with pytest.raises(InferenceServerException) as e:
            client.load_model("id", files={"file:1/model.onnx": b"x"})
        assert _status(e) == "400"
    finally:
        client.close()


def test_trace_and_log_settings(client: httpclient.InferenceServerClient) -> None:
    settings = client.get_trace_settings()
    assert settings["trace_level"] == ["OFF"] and "trace_rate" in settings
    model = client.update_trace_settings("identity_fp32", {"trace_rate": "7"})
    assert model["trace_rate"] == "7"
    assert client.update_trace_settings("identity_fp32", {"trace_rate": None})["trace_rate"] == settings["trace_rate"]
    assert client.get_trace_settings()["trace_rate"] == settings["trace_rate"]
    logs = client.get_log_settings()
    assert "log_info" in logs
    assert client.update_log_settings({"log_verbose_level": 0})["log_verbose_level"] == 0


# -- errors -----------------------------------------------------------------------------------------
def test_errors_carry_triton_statuses(client: httpclient.InferenceServerClient, http_url: str) -> None:
    x = np.ones((1, 4), np.float32)
    with pytest.raises(InferenceServerException) as e:
        _infer(client, "no_such_model", x, "FP32", True, True)
    assert _status(e) == "404" and "no_such_model" in str(e.value.message())
    bad_shape = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2, 4], "data": [1, 2, 3, 4]}]}
    status, body, _ = _request(f"{http_url}/v2/models/identity_fp32/infer", "POST", json.dumps(bad_shape).encode())
    assert status == 400 and "needs 8 elements" in json.loads(body)["error"]
    with pytest.raises(InferenceServerException) as e:
        _infer(client, "identity_fp32", np.ones((1, 4), np.int32), "INT32", True, True)
    assert _status(e) == "400"
    with pytest.raises(InferenceServerException) as e:
        client.get_model_config("no_such_model")
    assert _status(e) == "404"

    status, body, _ = _request(f"{http_url}/v2/models/identity_fp32/infer", "POST", b"{not json")
    assert status == 400 and "error" in json.loads(body)
    status, body, _ = _request(f"{http_url}/v2/models/identity_fp32/infer", "POST", b"[1, 2]")
    assert status == 400 and "error" in json.loads(body)
    status, body, _ = _request(f"{http_url}/v2/models/identity_fp32/infer", "POST", b'{"inputs": []}',
                               {"Inference-Header-Content-Length": "999"})
    assert status == 400 and "error" in json.loads(body)
    for path in ("/", "/v3", "/v2/models/identity_fp32/nothing", "/v2/health"):
        status, body, _ = _request(http_url + path)
        assert status == 404 and "error" in json.loads(body), path
    status, body, _ = _request(f"{http_url}/v2/models/identity_fp32/infer")  # GET on a POST route
    assert status == 405 and "error" in json.loads(body)
    status, body, _ = _request(f"{http_url}/v2/health/live", "POST", b"")
    assert status == 405


def test_metrics_and_probes_on_the_same_port(client: httpclient.InferenceServerClient, http_url: str) -> None:
    _infer(client, "identity_fp32", np.ones((1, 2), np.float32), "FP32", True, True)
    status, body, headers = _request(f"{http_url}/metrics")
    assert status == 200 and b'peregrine_request_duration_seconds_count{model="identity_fp32",status="OK"}' in body
    assert headers["content-type"].startswith("text/plain")


def test_responses_are_not_held_back_by_nagle(http_url: str) -> None:
    """A response goes out as headers then body: with Nagle's algorithm on, the body waits for the client's
    delayed ACK (40 ms on Linux) and every request takes that long. 25 requests take far less than 25 x 40 ms."""
    host, port = http_url.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("GET", "/v2")  # connect and warm up
    connection.getresponse().read()
    started = time.monotonic()
    for _ in range(25):
        connection.request("GET", "/v2")
        assert connection.getresponse().read()
    connection.close()
    assert time.monotonic() - started < 0.6
