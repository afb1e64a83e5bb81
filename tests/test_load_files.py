"""RepositoryModelLoad with model files (Triton's file override), as tritonclient's
``load_model(name, config=..., files={"file:1/model.onnx": data})`` sends them over gRPC (bytes) and HTTP
(base64): the model is served from those files until it is unloaded or loaded from the repository again;
names that would leave the model's directory, and every other malformed parameter, are refused before a byte
is written; a load on demand after an idle unload comes back as it was last loaded."""

from __future__ import annotations

import json
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
from onnx import TensorProto, helper
from peregrine.proto import grpc_service_pb2 as pb
from peregrine.proto import grpc_service_pb2_grpc as pb_grpc
from peregrine.server.app import PeregrineServer
from peregrine.server.dataplane import model_files
from support import onnx_models
from tritonclient.utils import InferenceServerException

IDENTITY_CONFIG = {
    "name": "fresh", "backend": "onnxruntime", "max_batch_size": 4,
    "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [3]}],
    "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [3]}],
    "dynamic_batching": {"max_queue_delay_microseconds": 500},
}


def identity_bytes(width: int | None = 3) -> bytes:
    return onnx_models.identity("FP32", ["N", width]).SerializeToString()


@pytest.fixture
def server(tmp_path: Path, start_server: Callable[..., PeregrineServer]) -> PeregrineServer:
    onnx_models.write(tmp_path, "simple", onnx_models.add_sub(["N", 16]), "max_batch_size = 8\n")
    return start_server(tmp_path, http_port=0)


@pytest.fixture
def client(server: PeregrineServer) -> tc.InferenceServerClient:
    return tc.InferenceServerClient(f"127.0.0.1:{server.port}")


def held_dirs(server: PeregrineServer) -> list[Path]:
    root = server.repository.files._root
    return sorted(p for p in root.glob("*/*") if p.is_dir()) if root is not None else []


def infer_identity(client: tc.InferenceServerClient, model: str, x: np.ndarray) -> np.ndarray:
    inp = tc.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy("OUTPUT0")


def test_a_model_not_in_the_repository_loads_from_files_and_goes_with_its_unload(
        client: tc.InferenceServerClient, server: PeregrineServer) -> None:
    client.load_model("fresh", config=json.dumps(IDENTITY_CONFIG), files={"file:1/model.onnx": identity_bytes()})
    assert client.is_model_ready("fresh")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(infer_identity(client, "fresh", x), x)
    cfg = client.get_model_config("fresh").config
    assert cfg.max_batch_size == 4 and cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(m.name, m.version, m.state) for m in client.get_model_repository_index().models
            if m.name == "fresh"] == [("fresh", "1", "READY")]
    [held] = held_dirs(server)
    assert (held / "1" / "model.onnx").read_bytes() == identity_bytes()
    assert oct(held.stat().st_mode & 0o777) == "0o700"

    client.unload_model("fresh")
    assert not held.exists() and held_dirs(server) == []
    with pytest.raises(InferenceServerException) as e:
        client.load_model("fresh")  # its files went with the unload, and the repository has no such model
    assert e.value.status() == "StatusCode.NOT_FOUND"


def test_files_replace_a_repository_model_until_it_is_loaded_from_the_repository_again(
        client: tc.InferenceServerClient, server: PeregrineServer) -> None:
    config = {"name": "simple", "max_batch_size": 2}  # the inputs and outputs come from the model, as Triton's
    client.load_model("simple", config=json.dumps(config), files={"file:3/model.onnx": identity_bytes(None)})
    assert [m.version for m in client.get_model_repository_index().models if m.name == "simple"] == ["3"]
    x = np.ones((2, 5), np.float32)
    np.testing.assert_array_equal(infer_identity(client, "simple", x), x)
    [held] = held_dirs(server)

    # A second load with other files swaps them in and lets the first ones go.
    client.load_model("simple", config=json.dumps({"name": "simple"}),
                      files={"file:7/model.onnx": identity_bytes(None), "file:7/notes/a/b.txt": b"kept"})
    assert not held.exists()
    [held] = held_dirs(server)
    assert (held / "7" / "notes" / "a" / "b.txt").read_bytes() == b"kept"

    with pytest.raises(InferenceServerException):  # no model.onnx where the default file name says
        client.load_model("simple", config="{}", files={"file:1/elsewhere.onnx": identity_bytes()})
    assert len(held_dirs(server)) == 1  # the failed load's files are gone, the served ones kept
    np.testing.assert_array_equal(infer_identity(client, "simple", x), x)

    client.load_model("simple")  # the repository's model again, and no files held
    assert held_dirs(server) == []
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [tc.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for i in inputs:
        i.set_data_from_numpy(a)
    np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), a * 2)


def test_the_http_load_takes_the_files_in_base64(server: PeregrineServer) -> None:
    http = th.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    http.load_model("fresh", config=json.dumps(IDENTITY_CONFIG), files={"file:1/model.onnx": identity_bytes()})
    assert http.is_model_ready("fresh")
    x = np.full((1, 3), 7.0, np.float32)
    inp = th.InferInput("INPUT0", [1, 3], "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_array_equal(http.infer("fresh", [inp]).as_numpy("OUTPUT0"), x)
    for value, words in (("not base64!", "not valid base64"), (17, "a string")):
        body = json.dumps({"parameters": {"config": "{}", "file:1/model.onnx": value}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}/v2/repository/models/fresh/load",
                                         data=body, method="POST", headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request, timeout=10)
        with e.value:
            assert e.value.code == 400
            error = json.loads(e.value.read())["error"]
        assert "parameters.file:1/model.onnx" in error and words in error, error
    assert http.is_model_ready("fresh")
    http.close()


def _grpc_load(server: PeregrineServer, name: str, params: dict[str, Any]) -> tuple[str, str]:
    """A raw RepositoryModelLoad (tritonclient sends file: parameters as bytes only), refused: its status
    code's name and message."""
    request = pb.RepositoryModelLoadRequest(model_name=name)
    for key, value in params.items():
        if isinstance(value, bytes):
            request.parameters[key].bytes_param = value
        else:
            request.parameters[key].string_param = value
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel, pytest.raises(grpc.RpcError) as e:
        pb_grpc.GRPCInferenceServiceStub(channel).RepositoryModelLoad(request, timeout=30)
    return e.value.code().name, e.value.details()


@pytest.mark.parametrize(("key", "words"), [
    ("file:../model.onnx", ["file:../model.onnx", "version"]),
    ("file:1/../../escape.onnx", ["'..' is not a file name"]),
    ("file:1/./model.onnx", ["'.' is not a file name"]),
    ("file:1//model.onnx", ["'' is not a file name"]),
    ("file:/etc/passwd", ["version ''"]),
    ("file:01/model.onnx", ["version '01'"]),
    ("file:0/model.onnx", ["version '0'"]),
    ("file:1", ["file:<version>/<path>"]),
    ("file:1/a\\b.onnx", ["'\\'"]),
    ("file:1/a\x01.onnx", ["control characters"]),
    ("file:1/" + "x" * 256, ["255 bytes"]),
    ("file:1/" + "/".join("d" * 9), ["at most 8 path parts"]),
])
def test_a_file_name_that_is_not_a_path_below_a_version_is_refused_before_anything_is_written(
        client: tc.InferenceServerClient, server: PeregrineServer, key: str, words: list[str]) -> None:
    before = set(Path(tempfile.gettempdir()).iterdir())
    code, message = _grpc_load(server, "simple", {"config": "{}", key: b"\x00"})
    assert code == "INVALID_ARGUMENT"
    for word in words:
        assert word in message, message
    assert held_dirs(server) == [] and set(Path(tempfile.gettempdir()).iterdir()) - before <= {
        server.repository.files._root}
    assert client.is_model_ready("simple")


@pytest.mark.parametrize(("params", "code", "words"), [
    ({"file:1/model.onnx": b"x"}, "INVALID_ARGUMENT", ["parameters.config", "beside its files"]),
    ({"config": "{}", "file:1/model.onnx": "text"}, "INVALID_ARGUMENT", ["bytes_param", "string_param"]),
    ({"config": '{"oops": 1}', "file:1/model.onnx": b"x"}, "INVALID_ARGUMENT", ["parameters.config", "oops"]),
    ({"config": '{"name": "other"}', "file:1/model.onnx": b"x"}, "INVALID_ARGUMENT", ["config.name", "'simple'"]),
    ({"config": '{"backend": "tensorrt"}', "file:1/model.onnx": b"x"}, "INVALID_ARGUMENT", ["backend"]),
    ({"config": "{}", "file:1/a": b"x", "file:1/a/b": b"y"}, "INVALID_ARGUMENT", ["file:1/a/b needs a directory"]),
    ({"config": "{}", "unknown": "x"}, "INVALID_ARGUMENT", ["parameters.unknown", "not a load parameter"]),
    ({"config": "{}", "file:1/model.onnx": b"not an onnx model"}, None, ["failed to load 'simple'"]),
])
def test_malformed_loads_with_files_are_refused_and_the_model_keeps_serving(
        client: tc.InferenceServerClient, server: PeregrineServer, params: dict[str, Any], code: str | None,
        words: list[str]) -> None:
    got, message = _grpc_load(server, "simple", params)
    assert code is None or got == code, (got, message)
    for word in words:
        assert word in message, message
    assert held_dirs(server) == []
    assert client.is_model_ready("simple") and client.get_model_config("simple").config.max_batch_size == 8


def test_too_many_files_are_refused(client: tc.InferenceServerClient, server: PeregrineServer) -> None:
    files = {f"file:1/f{i}": b"" for i in range(model_files.MAX_FILES + 1)}
    code, message = _grpc_load(server, "simple", {"config": "{}", **files})
    assert code == "INVALID_ARGUMENT" and f"at most {model_files.MAX_FILES}" in message


def test_the_files_of_at_most_so_many_models_are_held(client: tc.InferenceServerClient,
                                                     server: PeregrineServer) -> None:
    limit = model_files.MAX_MODELS_FROM_FILES
    for i in range(limit):
        client.load_model(f"m{i}", config="{}", files={"file:1/model.onnx": identity_bytes()})
    with pytest.raises(InferenceServerException) as e:
        client.load_model("one_more", config="{}", files={"file:1/model.onnx": identity_bytes()})
    assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED" and f"of {limit} models" in e.value.message()
    client.load_model("m0", config="{}", files={"file:2/model.onnx": identity_bytes()})  # a reload still fits
    client.unload_model("m1")
    client.load_model("one_more", config="{}", files={"file:1/model.onnx": identity_bytes()})
    assert client.is_model_ready("one_more") and len(held_dirs(server)) == limit


def test_an_idle_model_comes_back_on_demand_as_it_was_last_loaded(
        tmp_path: Path, start_server: Callable[..., PeregrineServer]) -> None:
    onnx_models.write(tmp_path, "simple", onnx_models.add_sub(["N", 16]), "max_batch_size = 8\n")
    server = start_server(tmp_path)
    client = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
    client.load_model("simple", config=json.dumps({"max_batch_size": 4}))
    assert server.repository.release("simple", "idle for test")
    a = np.ones((1, 16), np.int32)
    inputs = [tc.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for i in inputs:
        i.set_data_from_numpy(a)
    client.infer("simple", inputs)  # loads it on demand
    assert client.get_model_config("simple").config.max_batch_size == 4  # with the override it was loaded with

    client.load_model("fresh", config=json.dumps(IDENTITY_CONFIG), files={"file:1/model.onnx": identity_bytes()})
    [held] = held_dirs(server)
    assert server.repository.release("fresh", "idle for test")
    assert held.exists()  # let go for being idle: its files stay for the next request
    x = np.ones((1, 3), np.float32)
    np.testing.assert_array_equal(infer_identity(client, "fresh", x), x)
    assert client.get_model_config("fresh").config.max_batch_size == 4


def test_a_stopped_server_leaves_no_files(tmp_path: Path, start_server: Callable[..., PeregrineServer]) -> None:
    onnx_models.write(tmp_path, "simple", onnx_models.add_sub(["N", 16]), "max_batch_size = 8\n")
    server = start_server(tmp_path)
    client = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
    client.load_model("fresh", config="{}", files={"file:1/model.onnx": identity_bytes()})
    root = server.repository.files._root
    assert root is not None and any(root.iterdir())
    server.stop(grace=1.0)
    assert not os.path.exists(root)


@pytest.mark.parametrize("location", ["../../../secret.bin", "/etc/hostname"])
def test_sent_model_cannot_read_files_outside_its_directory(
        client: tc.InferenceServerClient, tmp_path: Path, location: str) -> None:
    """An initializer stored as external data names where to read it from; a sent model may name only
    files beside it (ONNX Runtime checks the path against the model's directory)."""
    (tmp_path / "secret.bin").write_bytes(b"SECRETSECRETSECR")
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], vals=np.zeros(4, np.float32).tobytes(), raw=True)
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    entry = w.external_data.add()
    entry.key, entry.value = "location", location
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    with pytest.raises(InferenceServerException) as e:
        client.load_model("leak", config="{}", files={"file:1/model.onnx": model.SerializeToString()})
    assert "failed to load 'leak'" in e.value.message() and "External data path" in e.value.message()
    assert not client.is_model_ready("leak")


def test_a_name_that_is_not_one_directory_is_refused_before_its_files_are_written(server: PeregrineServer) -> None:
    for name in ("../escape", "a/b", ".hidden"):
        code, message = _grpc_load(server, name, {"config": "{}", "file:1/model.onnx": identity_bytes()})
        assert code == "INVALID_ARGUMENT" and "model_name" in message, message
    assert held_dirs(server) == []
