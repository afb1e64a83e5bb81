"""Model configuration: parsing, validation messages, and how it meets the ONNX graph."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as tc
from peregrine.server.config import ModelConfig, parse_model_config
from peregrine.server.core.errors import ModelLoadError
from support import onnx_models
from tritonclient.utils import InferenceServerException


def test_defaults_when_empty() -> None:
    cfg = parse_model_config("")
    assert cfg == ModelConfig()
    assert cfg.instance_group.device == "auto"
    assert cfg.max_batch_size is None  # inferred from the graph


def test_full_config_parses() -> None:
    cfg = parse_model_config("""
max_batch_size = 16
version_policy = { latest = 2 }
[instance_group]
count = 2
device = "cpu"
[onnxruntime]
intra_op_num_threads = 2
graph_optimization_level = "extended"
execution_providers = ["CPUExecutionProvider"]
[[input]]
name = "images"
data_type = "TYPE_FP32"
dims = [3, 640, 640]
[dynamic_batching]
max_queue_delay_us = 500
preferred_batch_sizes = [4, 8]
priority_levels = 2
default_priority_level = 2
window = "adaptive"
[dynamic_batching.default_queue_policy]
timeout_action = "delay"
default_timeout_us = 100000
""")
    assert cfg.max_batch_size == 16
    assert cfg.input[0].data_type == "FP32"
    assert cfg.dynamic_batching is not None and cfg.dynamic_batching.window == "adaptive"
    assert cfg.select_versions([1, 2, 3]) == [2, 3]


@pytest.mark.parametrize(("text", "key"), [
    ("max_batch_size = -1", "max_batch_size"),
    ("max_batch_sise = 4", "max_batch_sise"),
    ("[instance_group]\ndevice = 'tpu'", "instance_group.device"),
    ("[[input]]\nname = 'x'\ndata_type = 'FLOAT'", "input.0.data_type"),
    ("[[input]]\nname = 'x'\ndims = [0, 3]", "input.0.dims"),
    ("version_policy = 'newest'", "version_policy"),
    ("[dynamic_batching]\npriority_levels = 2\ndefault_priority_level = 3", "dynamic_batching"),
    ("[dynamic_batching]\nbatch_buckets = [0, 4]", "dynamic_batching.batch_buckets"),
    ("[dynamic_batching]\nbatch_buckets = 'all'", "dynamic_batching.batch_buckets"),
    ("[dynamic_batching]\nbatch_buckets = [2.5]", "dynamic_batching.batch_buckets"),
    ("max_batch_size = 8\n[dynamic_batching]\nbatch_buckets = [4, 16]", "dynamic_batching.batch_buckets"),
    ("max_batch_size = 0\n[dynamic_batching]\nbatch_buckets = [4]", "dynamic_batching.batch_buckets"),
    ("max_batch_size = [", "not valid TOML"),
])
def test_errors_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ModelLoadError) as e:
        parse_model_config(text, "m/config.toml")
    assert key in e.value.message
    assert "m/config.toml" in e.value.message


@pytest.mark.parametrize(("text", "expected", "got"), [
    ("[dynamic_batching]\nbatch_buckets = [0, 4]", "positive", "[0, 4]"),
    ("[dynamic_batching]\nbatch_buckets = 'all'", "'auto'", "'all'"),
    ("max_batch_size = 8\n[dynamic_batching]\nbatch_buckets = [4, 16]", "1..max_batch_size (8)", "[4, 16]"),
    ("max_batch_size = 0\n[dynamic_batching]\nbatch_buckets = [4]", "max_batch_size is 0", "[4]"),
    ("platform = 'peregrine_detection'\nmax_batch_size = 8\n[detection]\n[dynamic_batching]\n"
     "batch_buckets = [4, 16]", "1..max_batch_size (8)", "[4, 16]"),
])
def test_batch_bucket_errors_say_what_was_expected_and_what_came(text: str, expected: str, got: str) -> None:
    with pytest.raises(ModelLoadError) as e:
        parse_model_config(text, "m/config.toml")
    assert expected in e.value.message and got in e.value.message


def test_batch_buckets_parse() -> None:
    assert parse_model_config("[dynamic_batching]").dynamic_batching.batch_buckets == "auto"  # type: ignore[union-attr]
    cfg = parse_model_config("max_batch_size = 16\n[dynamic_batching]\nbatch_buckets = [8, 2, 2]")
    assert cfg.dynamic_batching is not None and cfg.dynamic_batching.batch_buckets == [2, 8]
    assert parse_model_config("max_batch_size = 8\n[dynamic_batching]\nbatch_buckets = []").dynamic_batching


def test_version_policies() -> None:
    assert parse_model_config("version_policy = 'all'").select_versions([3, 1]) == [1, 3]
    assert parse_model_config("version_policy = {specific = [1, 4]}").select_versions([1, 2, 3, 4]) == [1, 4]
    assert parse_model_config("").select_versions([1, 10, 2]) == [10]


BAD_MODELS = {
    "bad_toml": (onnx_models.identity("FP32", ["N", 2]), "max_batch_size = ["),
    "bad_key": (onnx_models.identity("FP32", ["N", 2]), "batch = 4"),
    "override_unknown_input": (onnx_models.identity("FP32", ["N", 2]), "[[input]]\nname = 'nope'"),
    "override_wrong_type": (onnx_models.identity("FP32", ["N", 2]), "[[input]]\nname = 'INPUT0'\ndata_type = 'INT8'"),
    "override_wrong_dims": (onnx_models.identity("FP32", ["N", 2]), "[[input]]\nname = 'INPUT0'\ndims = [3]"),
    "batch_without_dynamic_dim": (onnx_models.identity("FP32", [1, 2]), "max_batch_size = 4"),
    # max_batch_size inferred at load: 8 for a dynamic first dimension, 0 for a fixed one.
    "buckets_above_inferred_max": (onnx_models.identity("FP32", ["N", 2]), "[dynamic_batching]\nbatch_buckets = [16]"),
    "buckets_without_batching": (onnx_models.identity("FP32", [1, 2]), "[dynamic_batching]\nbatch_buckets = [1]"),
    "not_onnx": (b"\x00garbage", None),
    "cuda_without_gpu_build": (onnx_models.identity("FP32", ["N", 2]), "[instance_group]\ndevice = 'cuda'"),
    "name_mismatch": (onnx_models.identity("FP32", ["N", 2]), "name = 'other'"),
}


def test_bad_models_fail_to_load_and_the_server_keeps_serving(tmp_path: Path, start_server) -> None:
    for name, (model, config) in BAD_MODELS.items():
        onnx_models.write(tmp_path, name, model, config)
    onnx_models.write(tmp_path, "good", onnx_models.identity("FP32", ["N", 2]))
    (tmp_path / "no_versions").mkdir()
    (tmp_path / "no_versions" / "config.toml").write_text("")
    server = start_server(tmp_path)
    c = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
    index = {m.name: m for m in c.get_model_repository_index().models}
    assert index["good"].state == "READY"
    for name in [*BAD_MODELS, "no_versions"]:
        assert index[name].state == "UNAVAILABLE", name
        assert index[name].reason, name
        with pytest.raises(InferenceServerException) as e:
            c.load_model(name)
        assert e.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT), (name, e.value)
    # The server keeps serving the good model; strictly it is not ready while models failed to load.
    assert c.is_server_live() and not c.is_server_ready() and c.is_model_ready("good")


def test_overrides_narrow_dynamic_dims(tmp_path: Path, start_server) -> None:
    onnx_models.write(tmp_path, "m", onnx_models.identity("FP32", ["N", None]),
                      "max_batch_size = 4\n[[input]]\nname = 'INPUT0'\ndims = [3]\n")
    server = start_server(tmp_path)
    c = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert list(c.get_model_metadata("m").inputs[0].shape) == [-1, 3]
    assert list(c.get_model_metadata("m").outputs[0].shape) == [-1, -1]


def test_allow_spinning_reaches_the_session(tmp_path: Path) -> None:
    from peregrine.server.runtime.onnx import OnnxSession

    path = onnx_models.write(tmp_path, "m", onnx_models.identity("FP32", ["N", 4])) / "1" / "model.onnx"
    text = "[onnxruntime]\nallow_spinning = false\n[instance_group]\ndevice = 'cpu'"
    quiet = OnnxSession(path, parse_model_config(text))
    options = quiet.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    default = OnnxSession(path, parse_model_config("[instance_group]\ndevice = 'cpu'"))
    try:
        spinning = default.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
    except Exception:  # not set: ORT's default, spinning on
        spinning = "1"
    assert spinning != "0"


# -- bounds (issue 14): every number has an upper bound, documented in docs/MODEL_CONFIG.md ----------------
@pytest.mark.parametrize(("text", "key"), [
    ("max_batch_size = 1000000000000", "max_batch_size"),
    ("[instance_group]\ncount = 65", "instance_group.count"),
    ("[instance_group]\ngpus = [256]", "instance_group.gpus"),
    ("[onnxruntime]\nintra_op_num_threads = 100000", "onnxruntime.intra_op_num_threads"),
    ("[dynamic_batching]\nmax_queue_delay_us = 60000001", "dynamic_batching.max_queue_delay_us"),
    ("[dynamic_batching]\nmax_queue_size = 1000001", "dynamic_batching.max_queue_size"),
    ("[dynamic_batching]\npriority_levels = 1001", "dynamic_batching.priority_levels"),
    ("[dynamic_batching]\npreferred_batch_sizes = [2000000]", "dynamic_batching.preferred_batch_sizes"),
    ("[dynamic_batching.default_queue_policy]\ndefault_timeout_us = 3600000001", "default_timeout_us"),
    ("[dynamic_batching]\npriority_levels = 2\ndefault_priority_level = 1\n"
     "[dynamic_batching.priority_queue_policy.3]\nmax_queue_size = 1", "priority_queue_policy"),
    ("version_policy = { latest = 0 }", "version_policy"),
    ("version_policy = { latest = [1] }", "version_policy"),
    ("version_policy = { specific = [-1] }", "version_policy"),
    ("default_model_filename = '../../model.onnx'", "default_model_filename"),
    ("default_model_filename = ''", "default_model_filename"),
    ("[[input]]\nname = 'x'\ndims = [3000000000]", "input.0.dims"),
    ("platform = 'peregrine_detection'\n[detection]\nmax_pixels = 2000000000", "detection.max_pixels"),
    ("platform = 'peregrine_detection'\n[detection]\nscale = nan", "detection.scale"),
])
def test_numbers_past_their_bounds_are_errors_naming_the_key(text: str, key: str) -> None:
    with pytest.raises(ModelLoadError) as e:
        parse_model_config(text, "m/config.toml")
    assert key in e.value.message, e.value.message


def test_the_bounds_themselves_are_accepted() -> None:
    cfg = parse_model_config("max_batch_size = 1048576\n[instance_group]\ncount = 64\n[dynamic_batching]\n"
                             "max_queue_delay_us = 60000000\nmax_queue_size = 1000000\npriority_levels = 1000\n"
                             "default_priority_level = 1000\n")
    assert cfg.max_batch_size == 1 << 20 and cfg.instance_group.count == 64


@pytest.mark.parametrize("text", [
    "a = " + "[" * 100_000,  # recursion in the parser
    "a = " + "[" * 40 + "]" * 40,  # parsed, but deeper than any configuration
    "a = " + "9" * 5000,  # more digits than int() takes
    "x = 1\n" * 200_000,  # over MAX_CONFIG_BYTES
])
def test_hostile_toml_is_a_load_error(text: str) -> None:
    with pytest.raises(ModelLoadError):
        parse_model_config(text, "m/config.toml")


def test_messages_clip_what_came(tmp_path: Path) -> None:
    long_key = "k" * 5000
    with pytest.raises(ModelLoadError) as e:
        parse_model_config(f"{long_key} = 1\n" + "".join(f"x{i} = 1\n" for i in range(50)), "m/config.toml")
    assert len(e.value.message) < 4096 and "(5000 characters)" in e.value.message and "more" in e.value.message


def test_config_that_is_not_utf8_is_a_load_error(tmp_path: Path) -> None:
    from peregrine.server.config.model import load_model_config

    (tmp_path / "config.toml").write_bytes(b"max_batch_size = 4 # \xff\xfe\n")
    with pytest.raises(ModelLoadError) as e:
        load_model_config(tmp_path)
    assert "UTF-8" in e.value.message


def test_only_plain_ascii_version_directories_are_versions(tmp_path: Path, start_server) -> None:
    """Version directories "01", "²", Arabic-Indic "1", "1_0" and " 2" are not versions (int() or
    str.isdigit() took them, and "²" failed the whole load)."""
    model = onnx_models.identity("FP32", ["N", 2])
    onnx_models.write(tmp_path, "m", model, "version_policy = 'all'\n")
    for odd in ("01", "²", "\u0661", "1_0", " 2"):
        (tmp_path / "m" / odd).mkdir()
        (tmp_path / "m" / odd / "model.onnx").write_bytes(model.SerializeToString())
    server = start_server(tmp_path)
    c = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert c.is_model_ready("m")
    assert list(c.get_model_metadata("m").versions) == ["1"]
