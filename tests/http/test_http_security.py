"""The HTTP port keeps gRPC's bounds: bearer tokens by the same call categories, the message limit on
bodies (plain or compressed), and the per-client rate limit."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from peregrine.server.app import PeregrineServer
from support import onnx_models
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.timeout(120)


def _repo(root: Path) -> Path:
    onnx_models.write(root, "id", onnx_models.identity("FP32", ["N", None]))
    return root


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _infer(client: httpclient.InferenceServerClient, headers: dict[str, str] | None = None,
           elements: int = 4) -> httpclient.InferResult:
    inp = httpclient.InferInput("INPUT0", [1, elements], "FP32")
    inp.set_data_from_numpy(np.ones((1, elements), np.float32))
    return client.infer("id", [inp], headers=headers)


def test_tokens_guard_categories_as_on_grpc(start_server: Callable[..., PeregrineServer], tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("full-token\nreader-token metadata,statistics\n")
    server = start_server(_repo(tmp_path / "models"), http_port=0, auth_token_file=tokens)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    try:
        assert client.is_server_live() and client.is_server_ready()  # health is open by default
        for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic full-token"}):
            with pytest.raises(InferenceServerException) as e:
                _infer(client, headers)
            assert str(e.value.status()) == "401", headers
        with pytest.raises(InferenceServerException) as e:
            _infer(client, {"Authorization": "Bearer reader-token"})
        assert str(e.value.status()) == "403"
        assert client.get_model_metadata("id", headers={"Authorization": "Bearer reader-token"})["name"] == "id"
        with pytest.raises(InferenceServerException) as e:
            client.get_model_metadata("id")
        assert str(e.value.status()) == "401"
        result = _infer(client, {"Authorization": "Bearer full-token"})
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.ones((1, 4), np.float32))
    finally:
        client.close()


def test_http_bodies_are_bounded_by_tritons_http_max_input_size(start_server: Callable[..., PeregrineServer],
                                                                 tmp_path: Path) -> None:
    """Triton's --http-max-input-size (default 64 MiB, below the gRPC message bound): a larger body is 413
    naming it, whatever gRPC takes."""
    from peregrine.server.config import ServerConfig

    assert ServerConfig().http_max_input_bytes == 64 * 1024 * 1024 < ServerConfig().max_message_bytes
    server = start_server(_repo(tmp_path), http_port=0, http_max_input_bytes=64 * 1024)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    try:
        _infer(client, elements=1024)
        with pytest.raises(InferenceServerException) as e:
            _infer(client, elements=32 * 1024)
        assert str(e.value.status()) == "413" and "--http-max-input-size" in e.value.message()
    finally:
        client.close()


def test_bodies_over_the_message_limit_are_refused(start_server: Callable[..., PeregrineServer],
                                                  tmp_path: Path) -> None:
    server = start_server(_repo(tmp_path), http_port=0, max_message_bytes=64 * 1024)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    url = f"http://127.0.0.1:{server.http_port}/v2/models/id/infer"
    try:
        _infer(client, elements=1024)  # 4 KiB fits
        with pytest.raises(InferenceServerException) as e:
            _infer(client, elements=32 * 1024)  # 128 KiB does not
        assert str(e.value.status()) == "413"
        bomb = gzip.compress(b'{"inputs": [' + b" " * (1024 * 1024) + b"]}")  # 1 KiB that inflates to 1 MiB
        status, body = _post(url, bomb, {"Content-Encoding": "gzip"})
        assert status == 413 and "error" in body
        status, body = _post(url, b"\x1f\x8b not gzip", {"Content-Encoding": "gzip"})
        assert status == 400 and "error" in body
        status, body = _post(url, b"{}", {"Content-Encoding": "br"})
        assert status == 400 and "error" in body
    finally:
        client.close()


def test_the_rate_limit_holds_on_http(start_server: Callable[..., PeregrineServer], tmp_path: Path) -> None:
    server = start_server(_repo(tmp_path), http_port=0, rate_limit=0.001, rate_burst=2)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    try:
        _infer(client)
        _infer(client)
        with pytest.raises(InferenceServerException) as e:
            _infer(client)
        assert str(e.value.status()) == "429"
    finally:
        client.close()
