"""RepositoryModelLoad with a configuration override, as tritonclient's load_model(name, config=...)
sends it: Triton's JSON keys mapped onto config.toml for that load only; unsupported keys refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import tritonclient.grpc as tc
from peregrine.server.app import PeregrineServer
from peregrine.server.config import parse_model_config
from peregrine.server.config.override import apply_override, parse_triton_override
from peregrine.server.core.errors import InvalidArgument
from support import onnx_models
from tritonclient.utils import InferenceServerException


@pytest.fixture
def client(tmp_path: Path, start_server: Callable[..., PeregrineServer]) -> tc.InferenceServerClient:
    onnx_models.write(tmp_path, "simple", onnx_models.add_sub(["N", 16]),
                      "max_batch_size = 8\n\n[dynamic_batching]\nmax_queue_delay_us = 100\n")
    server = start_server(tmp_path)
    return tc.InferenceServerClient(f"127.0.0.1:{server.port}")


def test_override_applies_for_that_load_only(client: tc.InferenceServerClient) -> None:
    override = {
        "max_batch_size": 4,
        "dynamic_batching": {"max_queue_delay_microseconds": "2500", "preferred_batch_size": [2, 4],
                             "default_queue_policy": {"timeout_action": "DELAY", "max_queue_size": "16"}},
        "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
        "parameters": {"note": {"string_value": "from the load call"}},
    }
    client.load_model("simple", config=json.dumps(override))
    cfg = client.get_model_config("simple").config
    assert cfg.max_batch_size == 4
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2500
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4]
    assert cfg.dynamic_batching.default_queue_policy.max_queue_size == 16
    assert cfg.instance_group[0].count == 2 and cfg.instance_group[0].kind == cfg.instance_group[0].KIND_CPU
    assert client.is_model_ready("simple")
    client.load_model("simple")  # no override: config.toml again
    cfg = client.get_model_config("simple").config
    assert cfg.max_batch_size == 8 and cfg.dynamic_batching.max_queue_delay_microseconds == 100


@pytest.mark.parametrize(("config", "words"), [
    ("{not json", ["parameters.config", "invalid JSON"]),
    (json.dumps({"input": [{"name": "INPUT0"}]}), ["parameters.config.input", "not supported"]),
    (json.dumps({"name": "other"}), ["parameters.config.name", "'simple'"]),
    (json.dumps({"backend": "tensorrt"}), ["parameters.config.backend"]),
    (json.dumps({"max_batch_size": "lots"}), ["parameters.config.max_batch_size", "integer"]),
    (json.dumps({"dynamic_batching": {"max_queue_delay_microseconds": 10, "oops": 1}}),
     ["parameters.config.dynamic_batching.oops"]),
    (json.dumps({"instance_group": [{"count": 1}, {"count": 1}]}), ["instance_group", "one group"]),
    (json.dumps({"instance_group": [{"kind": "KIND_MODEL"}]}), ["instance_group[0].kind"]),
    (json.dumps({"max_batch_size": -1}), ["max_batch_size"]),
])
def test_bad_overrides_are_invalid_argument_and_the_model_keeps_serving(
        client: tc.InferenceServerClient, config: str, words: list[str]) -> None:
    with pytest.raises(InferenceServerException) as e:
        client.load_model("simple", config=config)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    for word in words:
        assert word in e.value.message(), e.value.message()
    assert client.is_model_ready("simple")
    assert client.get_model_config("simple").config.max_batch_size == 8


def test_translation_of_triton_keys() -> None:
    got = parse_triton_override(json.dumps({
        "version_policy": {"specific": {"versions": ["1", 3]}},
        "dynamic_batching": {"priority_levels": 2, "default_priority_level": 1, "preserve_ordering": True,
                             "priority_queue_policy": {"1": {"default_timeout_microseconds": "5000"}}},
        "instance_group": [{"kind": "KIND_GPU", "gpus": [1]}],
    }), "m")
    assert got == {"version_policy": {"specific": [1, 3]},
                   "dynamic_batching": {"priority_levels": 2, "default_priority_level": 1, "preserve_ordering": True,
                                        "priority_queue_policy": {1: {"default_timeout_us": 5000}}},
                   "instance_group": {"device": "cuda", "gpus": [1]}}
    base = parse_model_config("max_batch_size = 8\n[onnxruntime]\nintra_op_num_threads = 2\n")
    merged = apply_override(base, {"dynamic_batching": {"max_queue_delay_us": 7}}, "m")
    assert merged.max_batch_size == 8 and merged.onnxruntime.intra_op_num_threads == 2
    assert merged.dynamic_batching is not None and merged.dynamic_batching.max_queue_delay_us == 7
    assert parse_triton_override(json.dumps({"version_policy": {"all": {}}}), "m") == {"version_policy": "all"}
    with pytest.raises(InvalidArgument):
        apply_override(base, {"dynamic_batching": {"priority_levels": 2, "default_priority_level": 5}}, "m")


@pytest.mark.parametrize(("config", "words"), [
    ("[" * 100_000 + "]" * 100_000, ["parameters.config", "nested"]),
    (json.dumps({"max_batch_size": 10**12}), ["max_batch_size", "1048576"]),
    (json.dumps({"max_batch_size": " 4 "}), ["max_batch_size", "integer"]),
    (json.dumps({"max_batch_size": "\u0664"}), ["max_batch_size", "integer"]),  # an Arabic-Indic 4
    ('{"max_batch_size": Infinity}', ["max_batch_size", "integer"]),
    (json.dumps({"dynamic_batching": {"max_queue_delay_microseconds": str(10**30)}}), ["max_queue_delay", "digits"]),
    (json.dumps({"dynamic_batching": {"max_queue_delay_microseconds": 10**9}}), ["max_queue_delay_us", "60000000"]),
    (json.dumps({"instance_group": [{"count": 65}]}), ["instance_group.count"]),
    (json.dumps({"version_policy": {"specific": {"versions": 3}}}), ["version_policy.specific.versions"]),
    (json.dumps({"parameters": {"k": {"string_value": "\ud800"}}}), ["parameters.config", "surrogate"]),
    (" " * (1 << 20) + "{}", ["parameters.config", "bytes"]),
])
def test_hostile_overrides_are_invalid_argument(client: tc.InferenceServerClient, config: str,
                                                words: list[str]) -> None:
    with pytest.raises(InferenceServerException) as e:
        client.load_model("simple", config=config)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT", e.value.message()
    for word in words:
        assert word in e.value.message(), e.value.message()
    assert client.is_model_ready("simple")
    assert client.get_model_config("simple").config.max_batch_size == 8  # still answers: nothing out of range


def test_integers_as_protobuf_json_writes_them() -> None:
    got = parse_triton_override(json.dumps({"max_batch_size": "4", "dynamic_batching": {
        "max_queue_delay_microseconds": 100.0, "priority_levels": "-1"}}), "m")
    assert got == {"max_batch_size": 4, "dynamic_batching": {"max_queue_delay_us": 100, "priority_levels": -1}}
    for bad in ("0_1", " 1", "1.5", "0x10", "", "1e3"):
        with pytest.raises(InvalidArgument):
            parse_triton_override(json.dumps({"max_batch_size": bad}), "m")
    with pytest.raises(InvalidArgument):
        parse_triton_override(json.dumps({"max_batch_size": 1.5}), "m")


def test_load_names_that_are_not_one_directory(client: tc.InferenceServerClient) -> None:
    for name in ("", "..", "../simple", "a/b", "a\\b", "a\x00b", "x" * 256):
        with pytest.raises(InferenceServerException) as e:
            client.load_model(name)
        assert e.value.status() in ("StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND"), (name, e.value)
        assert len(e.value.message()) < 1024
    assert "" not in {m.name for m in client.get_model_repository_index().models}
