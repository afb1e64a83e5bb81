"""Triton model repositories served as they are: config.pbtxt (issue 16, item 2), repository diagnostics
and ``--check-repository`` (item 3), and a warm-up that never makes a valid model unavailable (item 6).

The repositories are written here in the structure of Triton's published examples (``densenet_onnx``:
an image classifier with ``reshape``, ``format`` and a labels file; ``simple``: INT32 add/sub with
max_batch_size 8), with small ONNX graphs built by the onnx helper, and served by a real server that
``tritonclient.grpc`` and ``tritonclient.http`` talk to over loopback.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
from onnx import TensorProto, helper
from peregrine.server.config.triton import parse_triton_config
from peregrine.server.core.errors import ModelLoadError
from support import onnx_models
from tritonclient.utils import InferenceServerException

DENSENET_CONFIG = """
name: "densenet_onnx"
platform: "onnxruntime_onnx"
max_batch_size : 0
input [
  {
    name: "data_0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 4, 4 ]
    reshape { shape: [ 1, 3, 4, 4 ] }
  }
]
output [
  {
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ 3 ]
    reshape { shape: [ 1, 3, 1, 1 ] }
    label_filename: "densenet_labels.txt"
  }
]
"""

SIMPLE_CONFIG = """
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "INPUT0"
    data_type: TYPE_INT32
    dims: [ 16 ]
  },
  {
    name: "INPUT1"
    data_type: TYPE_INT32
    dims: [ 16 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_INT32
    dims: [ 16 ]
  },
  {
    name: "OUTPUT1"
    data_type: TYPE_INT32
    dims: [ 16 ]
  }
]
"""

# The model: max_batch_size 4 with a dynamic batcher was served at 8, unbatched, silently.
BATCH4_CONFIG = """
backend: "onnxruntime"
max_batch_size: 4
dynamic_batching {
  preferred_batch_size: [ 4 ]
  max_queue_delay_microseconds: 2000000
}
instance_group [ { count: 1 kind: KIND_CPU } ]
"""


def _densenet_like() -> onnx_models.onnx.ModelProto:
    """data_0 [1,3,4,4] -> per-channel mean -> fc6_1 [1,3,1,1], densenet's shapes in small."""
    return onnx_models._model(
        [helper.make_node("ReduceMean", ["data_0"], ["fc6_1"], axes=[2, 3], keepdims=1)],
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("fc6_1", TensorProto.FLOAT, [1, 3, 1, 1])],
    )


def _write(repo: Path, name: str, model: object, pbtxt: str | None, version: int = 1) -> Path:
    d = onnx_models.write(repo, name, model, version=version)  # type: ignore[arg-type]
    if pbtxt is not None:
        (d / "config.pbtxt").write_text(pbtxt)
    return d


def triton_repository(root: Path) -> Path:
    d = _write(root, "densenet_onnx", _densenet_like(), DENSENET_CONFIG)
    (d / "densenet_labels.txt").write_text("RED\nGREEN\nBLUE\n")
    _write(root, "simple", onnx_models.add_sub(["N", 16]), SIMPLE_CONFIG)
    _write(root, "batch4", onnx_models.identity("FP32", ["N", 4]), BATCH4_CONFIG)
    return root


# -- config.pbtxt served unchanged ------------------------------------------------------------------
def test_triton_example_repository_serves_over_grpc_and_http(tmp_path: Path, start_server) -> None:
    server = start_server(triton_repository(tmp_path), http_port=0)
    g = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
    h = th.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    for name in ("densenet_onnx", "simple", "batch4"):
        assert g.is_model_ready(name) and h.is_model_ready(name), name

    # densenet_onnx: clients send [3,4,4] (dims), the session takes [1,3,4,4] (reshape), and back.
    image = np.random.default_rng(1).random((3, 4, 4), dtype=np.float32)
    expected = image.mean(axis=(1, 2))
    for client, mod in ((g, tc), (h, th)):
        inp = mod.InferInput("data_0", [3, 4, 4], "FP32")
        inp.set_data_from_numpy(image)
        out = client.infer("densenet_onnx", [inp]).as_numpy("fc6_1")
        assert out.shape == (3,)
        np.testing.assert_allclose(out, expected, rtol=1e-6)
    meta = g.get_model_metadata("densenet_onnx")
    assert [list(i.shape) for i in meta.inputs] == [[3, 4, 4]]
    assert [list(o.shape) for o in meta.outputs] == [[3]]
    # ModelConfig reports what Triton's clients read (image_client: the input's format and dims).
    dense = g.get_model_config("densenet_onnx").config
    assert dense.input[0].format == dense.input[0].FORMAT_NCHW and list(dense.input[0].dims) == [3, 4, 4]
    assert list(dense.input[0].reshape.shape) == [1, 3, 4, 4] and list(dense.output[0].reshape.shape) == [1, 3, 1, 1]

    # simple: Triton's simple_grpc_infer_client / simple_http_infer_client, in short.
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    for client, mod in ((g, tc), (h, th)):
        inputs = [mod.InferInput("INPUT0", [1, 16], "INT32"), mod.InferInput("INPUT1", [1, 16], "INT32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        result = client.infer("simple", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    cfg = g.get_model_config("simple").config
    assert cfg.max_batch_size == 8 and cfg.platform == "onnxruntime_onnx"


def test_max_batch_size_and_dynamic_batching_come_from_config_pbtxt(tmp_path: Path, start_server) -> None:
    """max_batch_size 4 is served at 4 (not the default 8), and requests are batched as dynamic_batching
    says: four single requests within the 2 s window run as one batch of the preferred size 4."""
    server = start_server(triton_repository(tmp_path), http_port=0)
    g = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
    h = th.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    cfg = g.get_model_config("batch4").config
    assert cfg.max_batch_size == 4
    assert cfg.HasField("dynamic_batching") and list(cfg.dynamic_batching.preferred_batch_size) == [4]
    assert h.get_model_config("batch4")["max_batch_size"] == 4

    too_big = tc.InferInput("INPUT0", [5, 4], "FP32")
    too_big.set_data_from_numpy(np.zeros((5, 4), np.float32))
    with pytest.raises(InferenceServerException) as e:
        g.infer("batch4", [too_big])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"

    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            x = np.full((1, 4), i, np.float32)
            inp = tc.InferInput("INPUT0", [1, 4], "FP32")
            inp.set_data_from_numpy(x)
            results.append(tc.InferenceServerClient(f"127.0.0.1:{server.port}").infer("batch4", [inp])
                           .as_numpy("OUTPUT0"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(results) == 4
    stats = g.get_inference_statistics("batch4").model_stats[0]
    assert stats.inference_count == 4
    assert stats.execution_count == 1, "the four requests should have run as one batch"
    assert [b.batch_size for b in stats.batch_stats] == [4]


# -- mapping, reported fields, errors --------------------------------------------------------------
RICH_CONFIG = """
name: "m"
platform: "onnxruntime_onnx"
max_batch_size: 16
version_policy: { latest { num_versions: 2 } }
input [ { name: "x" data_type: TYPE_STRING dims: [ -1 ] allow_ragged_batch: true } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 500
  priority_levels: 2
  default_priority_level: 1
  default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 1000 max_queue_size: 64 }
  priority_queue_policy { key: 1 value: { max_queue_size: 8 } }
}
instance_group [ { count: 2 kind: KIND_CPU rate_limiter { resources [ { name: "R1" count: 4 } ] } } ]
optimization {
  graph { level: -1 }
  execution_accelerators { gpu_execution_accelerator : [ { name : "tensorrt" } ] }
  input_pinned_memory { enable: true }
}
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
response_cache { enable: true }
model_warmup [
  { name: "w" batch_size: 1 inputs { key: "x" value { data_type: TYPE_STRING dims: [ 1 ] zero_data: true } } }
]
metric_tags { key: "team" value: "vision" }
"""


def test_every_field_is_mapped_or_reported_by_name() -> None:
    parsed = parse_triton_config(RICH_CONFIG, "m/config.pbtxt")
    c = parsed.config
    assert c.max_batch_size == 16 and c.version_policy == {"latest": 2}
    assert c.input[0].data_type == "BYTES" and c.input[0].dims == [-1]
    db = c.dynamic_batching
    assert db is not None and db.preferred_batch_sizes == [4, 8] and db.max_queue_delay_us == 500
    assert (db.priority_levels, db.default_priority_level) == (2, 1)
    assert db.default_queue_policy.timeout_action == "delay" and db.default_queue_policy.max_queue_size == 64
    assert db.priority_queue_policy[1].max_queue_size == 8
    assert (c.instance_group.count, c.instance_group.device) == (2, "cpu")
    assert c.onnxruntime.graph_optimization_level == "basic"
    assert c.onnxruntime.execution_providers == ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                 "CPUExecutionProvider"]
    assert c.onnxruntime.intra_op_num_threads == 2 and c.parameters == {"intra_op_thread_count": "2"}
    assert c.response_cache is True and c.warmup is True
    # Fields Peregrine's schema lacks (rate_limiter) and fields it has no use for, by name.
    assert set(parsed.unmapped) == {"instance_group.rate_limiter", "input.allow_ragged_batch",
                                    "optimization.input_pinned_memory.enable", "metric_tags"}


def test_config_pbtxt_without_model_warmup_has_no_warmup_as_in_triton() -> None:
    assert parse_triton_config('platform: "onnxruntime_onnx"').config.warmup is False


@pytest.mark.parametrize(("text", "expected"), [
    ('platform: "tensorflow_graphdef"', "tensorflow_graphdef"),
    ('backend: "python"', "backend"),
    ('max_batch_size: 4\ninput [ { name: "x" data_type: TYPE_FLOAT32 } ]', "2:"),  # the parser's line:column
    ("dynamic_batching {\n  max_queue_delay_microseconds: 100000000000\n}", "max_queue_delay_microseconds"),
    ('instance_group [ { kind: KIND_MODEL } ]', "KIND_MODEL"),
    ("optimization { graph { level: 3 } }", "optimization.graph.level"),
])
def test_config_pbtxt_errors_name_the_file_and_the_field(text: str, expected: str) -> None:
    with pytest.raises(ModelLoadError) as e:
        parse_triton_config(text, "m/config.pbtxt")
    assert e.value.message.startswith("m/config.pbtxt: ") and expected in e.value.message


def test_unmapped_fields_warn_once_or_fail_under_strict(tmp_path: Path, start_server, caplog) -> None:
    _write(tmp_path, "tagged", onnx_models.identity("FP32", ["N", 4]),
           'max_batch_size: 2\nmetric_tags { key: "team" value: "vision" }\n'
           'instance_group [ { kind: KIND_CPU rate_limiter { priority: 1 } } ]\n')
    with caplog.at_level(logging.WARNING, logger="peregrine.server.dataplane.repository"):
        server = start_server(tmp_path)
    g = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert g.is_model_ready("tagged") and g.get_model_config("tagged").config.max_batch_size == 2
    lines = [r.getMessage() for r in caplog.records if "no equivalent" in r.getMessage()]
    assert len(lines) == 1 and "metric_tags" in lines[0] and "instance_group.rate_limiter" in lines[0]

    strict = start_server(tmp_path, strict_model_config=True)
    gs = tc.InferenceServerClient(f"127.0.0.1:{strict.port}")
    assert not gs.is_model_ready("tagged")
    row = next(m for m in gs.get_model_repository_index().models if m.name == "tagged")
    assert row.state == "UNAVAILABLE" and "metric_tags" in row.reason and "--strict-model-config" in row.reason


def test_both_config_files_is_a_load_error_naming_both(tmp_path: Path, start_server) -> None:
    d = _write(tmp_path, "both", onnx_models.identity("FP32", ["N", 4]), "max_batch_size: 2\n")
    (d / "config.toml").write_text("max_batch_size = 2\n")
    server = start_server(tmp_path)
    g = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
    row = next(m for m in g.get_model_repository_index().models if m.name == "both")
    assert row.state == "UNAVAILABLE" and "both/config.toml" in row.reason and "both/config.pbtxt" in row.reason


# -- repository diagnostics -------------------------------------------------------------------------
def _diagnostics_repository(root: Path) -> Path:
    model = onnx_models.identity("FP32", ["N", 4])
    onnx_models.write(root, "good", model)
    (root / "no_version").mkdir()
    (root / "no_version" / "model.onnx").write_bytes(model.SerializeToString())
    onnx_models.write(root, "zero_version", model, version=0)
    (root / "yaml_config" / "0").mkdir(parents=True)
    (root / "yaml_config" / "config.yaml").write_text("max_batch_size: 4\n")
    (root / "empty_version" / "1").mkdir(parents=True)
    (root / "empty_version" / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\n')
    return root


REASONS = {
    "no_version": "no version directory",
    "zero_version": "version directory 0",
    "yaml_config": "config.yaml",
    "empty_version": "no model.onnx",
}


def test_directories_not_served_say_why_in_the_log_and_the_index(tmp_path: Path, start_server, caplog) -> None:
    with caplog.at_level(logging.INFO):
        server = start_server(_diagnostics_repository(tmp_path), http_port=0)
    g = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
    h = th.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    assert g.is_model_ready("good")
    grpc_index = {m.name: m for m in g.get_model_repository_index().models}
    http_index = {m["name"]: m for m in h.get_model_repository_index()}
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    for name, why in REASONS.items():
        assert grpc_index[name].state == "UNAVAILABLE" and why in grpc_index[name].reason, grpc_index[name]
        assert http_index[name]["state"] == "UNAVAILABLE" and why in http_index[name]["reason"], http_index[name]
        said = [m for m in messages if f"'{name}'" in m and why in m]
        assert len(said) == 1, (name, said)


def test_version_zero_beside_real_versions_is_ignored_and_said(tmp_path: Path, start_server, caplog) -> None:
    model = onnx_models.identity("FP32", ["N", 4])
    onnx_models.write(tmp_path, "m", model, "version_policy = 'all'\n")
    onnx_models.write(tmp_path, "m", model, version=0)
    with caplog.at_level(logging.INFO, logger="peregrine.server.dataplane.repository"):
        server = start_server(tmp_path)
    g = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert list(g.get_model_metadata("m").versions) == ["1"]
    assert any("version directory 0 is ignored" in r.getMessage() for r in caplog.records)


# -- --check-repository, as CI runs it --------------------------------------------------------------
def _check(repo: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peregrine.server", "--check-repository", str(repo), *options],
                          capture_output=True, text=True, timeout=120, check=False)


def test_check_repository_passes_a_good_repository(tmp_path: Path) -> None:
    done = _check(triton_repository(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("OK") and "simple" in line and "max_batch_size 8" in line for line in lines)
    assert any("batch4" in line and "max_batch_size 4, dynamic batching" in line for line in lines)
    # densenet_onnx's label_filename has no equivalent: said, but not a failure.
    assert any(line.startswith("WARN") and "densenet_onnx" in line and "label_filename" in line for line in lines)
    assert _check(tmp_path, "--strict-model-config").returncode == 1


def test_check_repository_fails_naming_each_bad_directory(tmp_path: Path) -> None:
    _diagnostics_repository(tmp_path)
    _write(tmp_path, "bad_dims", onnx_models.identity("FP32", ["N", 4]),
           'max_batch_size: 2\ninput [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 5 ] } ]\n')
    _write(tmp_path, "bad_text", onnx_models.identity("FP32", ["N", 4]), "max_batch_size: 2\nnot_a_field {\n")
    done = _check(tmp_path)
    assert done.returncode == 1
    lines = {line.split()[1].rstrip(":"): line for line in done.stdout.splitlines() if line[:4] in ("OK  ", "FAIL")}
    assert lines["good"].startswith("OK")
    for name, why in [*REASONS.items(), ("bad_dims", "do not fit"), ("bad_text", "config.pbtxt")]:
        assert lines[name].startswith("FAIL") and why in lines[name], lines[name]


# -- warm-up never makes a valid model unavailable ---------------------------------------------------
def _parse_numbers() -> onnx_models.onnx.ModelProto:
    """A BYTES model that parses numbers: Cast(STRING -> FLOAT) fails on text that is not a number
    (warm-up used to feed b"warmup", and the model failed to load)."""
    return onnx_models._model(
        [helper.make_node("Cast", ["TEXT"], ["VALUE"], to=TensorProto.FLOAT)],
        [helper.make_tensor_value_info("TEXT", TensorProto.STRING, ["N", 1])],
        [helper.make_tensor_value_info("VALUE", TensorProto.FLOAT, ["N", 1])],
    )


def _offset_gather() -> onnx_models.onnx.ModelProto:
    """OUTPUT0[n] = DATA[n, INDEX[n] + 10]: only indices -10..-7 are valid, so every synthetic input
    (zeros, small random numbers) fails the run while real requests succeed."""
    return onnx_models._model(
        [helper.make_node("Constant", [], ["TEN"], value=helper.make_tensor("ten", TensorProto.INT64, [], [10])),
         helper.make_node("Add", ["INDEX", "TEN"], ["SHIFTED"]),
         helper.make_node("GatherElements", ["DATA", "SHIFTED"], ["OUTPUT0"], axis=1)],
        [helper.make_tensor_value_info("DATA", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("INDEX", TensorProto.INT64, ["N", 1])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["N", 1])],
    )


def test_warmup_failure_on_synthetic_data_leaves_the_model_served(tmp_path: Path, start_server) -> None:
    onnx_models.write(tmp_path, "parse_numbers", _parse_numbers(), "[instance_group]\ndevice = 'cpu'\n")
    onnx_models.write(tmp_path, "offset_gather", _offset_gather(), "[instance_group]\ndevice = 'cpu'\n")
    server = start_server(tmp_path)
    g = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert g.is_model_ready("parse_numbers") and g.is_model_ready("offset_gather")

    text = tc.InferInput("TEXT", [2, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"2.5"], [b"-1"]], dtype=object))
    np.testing.assert_array_equal(g.infer("parse_numbers", [text]).as_numpy("VALUE"), [[2.5], [-1.0]])

    data = tc.InferInput("DATA", [1, 4], "FP32")
    data.set_data_from_numpy(np.array([[1, 2, 3, 4]], np.float32))
    index = tc.InferInput("INDEX", [1, 1], "INT64")
    index.set_data_from_numpy(np.array([[-8]], np.int64))
    np.testing.assert_array_equal(g.infer("offset_gather", [data, index]).as_numpy("OUTPUT0"), [[3.0]])


def test_load_errors_start_with_tritons_words(tmp_path: Path, start_server) -> None:
    """Clients written for Triton match on "failed to load '<model>'"; Peregrine's detail follows, over gRPC
    and HTTP alike, with the status it had."""
    onnx_models.write(tmp_path, "broken", b"this is not an onnx model")
    onnx_models.write(tmp_path, "good", onnx_models.identity("FP32", ["N", 4]))
    server = start_server(tmp_path, http_port=0, model_control_mode="explicit", load_models=["good"])
    grpc_client = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
    http_client = th.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    try:
        for client in (grpc_client, http_client):
            with pytest.raises(InferenceServerException) as e:
                client.load_model("broken")
            assert e.value.message().startswith("failed to load 'broken': "), e.value.message()
            with pytest.raises(InferenceServerException) as e:
                client.load_model("absent")
            assert e.value.message().startswith("failed to load 'absent': no model directory 'absent'")
            assert str(e.value.status()) in ("StatusCode.NOT_FOUND", "404")  # the status it had
        grpc_client.load_model("good")  # a good one still loads
    finally:
        grpc_client.close()
        http_client.close()
