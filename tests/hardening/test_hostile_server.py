"""Hostile clients against the server as a whole (issue 14): metric labels clients cannot grow, readiness
that does not lie, an HTTP port that serves only its routes, start-up errors that say what is wrong.
Real servers on real sockets."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from peregrine.proto import grpc_service_pb2 as pb
from peregrine.proto import grpc_service_pb2_grpc as pb_grpc
from peregrine.server.app import PeregrineServer
from support import onnx_models

pytestmark = pytest.mark.timeout(120)


def _good_repository(root: Path) -> Path:
    onnx_models.write(root, "id", onnx_models.identity("FP32", ["N", 4]))
    return root


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_unknown_model_names_do_not_grow_the_metrics(tmp_path: Path,
                                                     start_server: Callable[..., PeregrineServer]) -> None:
    server = start_server(_good_repository(tmp_path), http_port=0)
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    _, before = _get(f"http://127.0.0.1:{server.http_port}/metrics")
    for i in range(200):
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(pb.ModelInferRequest(model_name=f"nope-{i}-" + "x" * 2000), timeout=5)
    _, after = _get(f"http://127.0.0.1:{server.http_port}/metrics")
    assert b"nope-" not in after
    assert b'model="(unknown)",status="NOT_FOUND"' in after
    assert len(after) - len(before) < 20_000  # one label set, not 200 of 2 KB


def test_readiness_is_strict_and_the_http_port_serves_only_its_routes(
        tmp_path: Path, start_server: Callable[..., PeregrineServer]) -> None:
    """Unknown routes are 404 and a known route with the wrong method 405, with JSON errors (tests/http)."""
    repo = _good_repository(tmp_path)
    onnx_models.write(repo, "broken", b"not an onnx model")
    server = start_server(repo, http_port=0)
    client = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.is_server_live() and not client.is_server_ready()  # 'broken' is UNAVAILABLE
    base = f"http://127.0.0.1:{server.http_port}"
    assert _get(f"{base}/v2/health/live")[0] == 200
    assert _get(f"{base}/v2/health/ready")[0] == 400
    assert _get(f"{base}/metrics")[0] == 200
    for path in ("/", "/anything", "/metrics/../x"):
        status, body = _get(base + path)
        assert status == 404 and b"peregrine_" not in body, path
    assert _get(f"{base}/v2/models/id/infer")[0] == 405  # a POST route
    client.unload_model("broken")  # asked not to serve it any more: no longer waited for
    assert client.is_server_ready() and _get(f"{base}/v2/health/ready")[0] == 200
    client.close()


def test_readiness_can_be_lenient(tmp_path: Path, start_server: Callable[..., PeregrineServer]) -> None:
    repo = _good_repository(tmp_path)
    onnx_models.write(repo, "broken", b"not an onnx model")
    server = start_server(repo, strict_readiness=False)
    assert tc.InferenceServerClient(f"127.0.0.1:{server.port}").is_server_ready()


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peregrine.server", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_a_port_in_use_is_said_in_one_line(tmp_path: Path, start_server: Callable[..., PeregrineServer]) -> None:
    server = start_server(_good_repository(tmp_path))
    run = _cli("--model-repository", str(tmp_path), "--grpc-port", str(server.port), "--http-port", "-1")
    assert run.returncode == 2
    assert f"127.0.0.1:{server.port}" in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) <= 3, run.stderr


def test_exit_on_error_stops_at_start(tmp_path: Path) -> None:
    repo = _good_repository(tmp_path)
    onnx_models.write(repo, "broken", b"not an onnx model")
    run = _cli("--model-repository", str(repo), "--grpc-port", "0", "--http-port", "-1", "--exit-on-error",
               "--log-level", "ERROR")
    assert run.returncode == 1 and "broken" in run.stderr.splitlines()[-1]


def test_grpc_connections_over_the_bound_are_closed_and_the_others_served(
        tmp_path: Path, start_server: Callable[..., PeregrineServer]) -> None:
    """Each port keeps at most max_connections open (by default a third of the descriptors, at most 4096): a
    gRPC message received in part is held by gRPC before the server sees it, so the connections, the calls
    on each and the message size are what bound them (docs/SECURITY.md)."""
    server = start_server(_good_repository(tmp_path), max_connections=4)

    def client(i: int) -> tc.InferenceServerClient:  # its own connection: channels of other arguments share none
        return tc.InferenceServerClient(f"127.0.0.1:{server.port}", channel_args=[("peregrine.test.connection", i)])

    def infer(c: tc.InferenceServerClient) -> None:
        tensor = tc.InferInput("INPUT0", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
        c.infer("id", [tensor], client_timeout=10)

    held = [client(i) for i in range(4)]
    for c in held:
        infer(c)
    extra = client(4)
    with pytest.raises(tc.InferenceServerException, match="UNAVAILABLE"):
        infer(extra)
    extra.close()  # else its channel goes on reconnecting, and may take the place freed below first
    for c in held:  # the connections within the bound still serve
        infer(c)
    held.pop().close()
    # A connection freed is one a new client may open, once the server has seen it close (it learns that
    # from the socket, a moment after the client closed it).
    deadline = time.monotonic() + 10
    for i in itertools.count(5):
        fresh = client(i)
        try:
            infer(fresh)
            break
        except tc.InferenceServerException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
        finally:
            fresh.close()
