"""Fuzzing for a fixed budget (issue 14): hypothesis over ModelInferRequest decoding (the codec directly, and
generated and mutated requests against a real server), BYTES decoding, config.toml parsing and Triton JSON
load overrides.

Only documented outcomes pass: a decoded request, or a PeregrineError with its status (INVALID_ARGUMENT,
NOT_FOUND, UNIMPLEMENTED); never another exception, never an allocation out of proportion to the bytes
sent (tracemalloc's peak, which NumPy's buffers count in), and for the server a live, correct server after.
Every test has a fixed number of examples, derandomized, with no example database: the same inputs on
every run, well under 60 s for the file on two cores.
"""

from __future__ import annotations

import json
import math
import struct
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.utils.shared_memory as shm
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from peregrine.proto import grpc_service_pb2 as pb
from peregrine.proto import grpc_service_pb2_grpc as pb_grpc
from peregrine.server.app import PeregrineServer
from peregrine.server.codecs import kserve_v1, metadata
from peregrine.server.codecs.oip import decode_bytes_tensor, decode_infer_request, encode_bytes_tensor
from peregrine.server.config import ServerConfig
from peregrine.server.config.model import ModelConfig, parse_model_config
from peregrine.server.config.override import apply_override, parse_triton_override, triton_config_text
from peregrine.server.core.errors import InvalidArgument, ModelLoadError, PeregrineError
from peregrine.server.core.types import ModelDescription, TensorSpec
from peregrine.server.dataplane import model_files
from peregrine.server.dataplane.shm import SharedMemoryRegistry
from support import onnx_models

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
DECODING_CODES = {"INVALID_ARGUMENT", "NOT_FOUND", "UNIMPLEMENTED"}
MESSAGE_BOUND = 4096  # characters of any error message: client strings in it are clipped to 256
REGION_BYTES = 256

# -- strategies ---------------------------------------------------------------------------------------
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
             "FP64", "BYTES"]
_dims = st.one_of(
    st.integers(0, 4),
    st.integers(-3, -1),
    st.sampled_from([1 << 20, 1 << 29, 1 << 31, 1 << 32, 1 << 40, 1 << 62, (1 << 63) - 1]),
    st.integers(-(1 << 63), (1 << 63) - 1),
)
shapes = st.one_of(st.lists(_dims, max_size=6), st.lists(st.just(1), min_size=30, max_size=70))
names = st.one_of(st.sampled_from(["INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1", "DATA", ""]),
                  st.text(max_size=12), st.text(min_size=300, max_size=400))
_int64 = st.integers(-(1 << 63), (1 << 63) - 1)
_uint64 = st.integers(0, (1 << 64) - 1)
CONTENTS = {
    "bool_contents": st.lists(st.booleans(), max_size=8),
    "int_contents": st.lists(st.integers(-(1 << 31), (1 << 31) - 1), max_size=8),
    "int64_contents": st.lists(_int64, max_size=8),
    "uint_contents": st.lists(st.integers(0, (1 << 32) - 1), max_size=8),
    "uint64_contents": st.lists(_uint64, max_size=8),
    "fp32_contents": st.lists(st.floats(width=32), max_size=8),
    "fp64_contents": st.lists(st.floats(), max_size=8),
    "bytes_contents": st.lists(st.binary(max_size=8), max_size=8),
}


@st.composite
def bytes_payloads(draw: st.DrawFn) -> bytes:
    """BYTES serializations, well-formed or not (lengths that lie, short prefixes, trailing bytes)."""
    items = draw(st.lists(st.binary(max_size=12), max_size=6))
    out = b"".join(struct.pack("<I", len(b)) + b for b in items)
    damage = draw(st.sampled_from(["none", "cut", "extra", "lie"]))
    if damage == "cut" and out:
        out = out[: draw(st.integers(0, len(out) - 1))]
    elif damage == "extra":
        out += draw(st.binary(min_size=1, max_size=5))
    elif damage == "lie":
        out = struct.pack("<I", draw(st.sampled_from([5, 1 << 16, (1 << 32) - 1]))) + out
    return out


@st.composite
def parameters(draw: st.DrawFn, target: Any, keys: list[str]) -> None:
    for key in draw(st.lists(st.sampled_from(keys) | st.text(max_size=8), max_size=3, unique=True)):
        which = draw(st.sampled_from(["bool_param", "int64_param", "string_param", "double_param", "uint64_param"]))
        value = draw({"bool_param": st.booleans(), "int64_param": _int64, "string_param": st.text(max_size=300),
                      "double_param": st.floats(), "uint64_param": _uint64}[which])
        setattr(target[key], which, value)


SHM_KEYS = ["shared_memory_region", "shared_memory_offset", "shared_memory_byte_size"]


@st.composite
def shm_parameters(draw: st.DrawFn, target: Any) -> None:
    """Shared-memory placement: the registered region "r0" or another name, offsets and sizes in and out
    of it, of the right parameter type or not."""
    if draw(st.booleans()):
        target["shared_memory_region"].string_param = draw(st.sampled_from(["r0", "r0", "nope", ""]))
    for key in SHM_KEYS[1:]:
        if draw(st.integers(0, 3)):
            value = draw(st.one_of(st.integers(0, REGION_BYTES + 8), st.sampled_from([1 << 40, (1 << 63) - 1]),
                                   st.integers(-5, -1)))
            if value < 0 or draw(st.booleans()):
                target[key].int64_param = value
            else:
                target[key].uint64_param = value


@st.composite
def infer_requests(draw: st.DrawFn, models: list[str]) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=draw(st.sampled_from(models) | st.text(max_size=10)),
                               model_version=draw(st.sampled_from(["", "", "1", "2", "0_1", " 1"])))
    raw: list[bytes] = []
    for _ in range(draw(st.integers(0, 3))):
        datatype = draw(st.sampled_from(DATATYPES) | st.sampled_from(["FLOAT", "", "TYPE_FP32"]))
        t = req.inputs.add(name=draw(names), datatype=datatype, shape=draw(shapes))
        carrier = draw(st.sampled_from(["raw", "raw", "typed", "shm", "none"]))
        if carrier == "raw":
            if datatype == "BYTES":
                raw.append(draw(bytes_payloads()))
            else:
                size = math.prod(d for d in t.shape if 0 <= d <= 64) if all(0 <= d <= 64 for d in t.shape) else 0
                raw.append(draw(st.binary(max_size=64) | st.just(bytes(size * 4)) | st.just(bytes(size))))
        elif carrier == "typed":
            field = draw(st.sampled_from(sorted(CONTENTS)))
            getattr(t.contents, field).extend(draw(CONTENTS[field]))
        elif carrier == "shm":
            draw(shm_parameters(t.parameters))
    if raw and draw(st.integers(0, 5)):
        req.raw_input_contents.extend(raw)
    for _ in range(draw(st.integers(0, 2))):
        o = req.outputs.add(name=draw(names))
        if draw(st.integers(0, 3)) == 0:
            draw(shm_parameters(o.parameters))
    draw(parameters(req.parameters, ["priority", "timeout", "sequence_id"]))
    return req


_NUMPY = {"INT32": np.int32, "FP32": np.float32, "BOOL": np.bool_}
_TYPED_FIELD = {"INT32": "int_contents", "FP32": "fp32_contents", "BOOL": "bool_contents", "BYTES": "bytes_contents"}


@st.composite
def plausible_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    """Requests an identity model [N, -1] could take (datatype, shape and bytes agree), sometimes with empty or
    huge dimensions beside a 0, so that the fuzz reaches validation and the model, not only the decoder."""
    datatype = draw(st.sampled_from(["INT32", "FP32", "BOOL", "BYTES"]))
    shape = draw(st.sampled_from([[1, 1], [2, 3], [1, 0], [0, 4], [3, 1 << 39], [0, 1 << 39], [1 << 39, 0]])
                 | st.lists(st.integers(0, 4), min_size=2, max_size=2))
    req = pb.ModelInferRequest(model_name=f"identity_{datatype.lower()}")
    t = req.inputs.add(name="INPUT0", datatype=datatype, shape=shape)
    count = math.prod(shape)
    if count > 64:  # only a lie can carry it: the decoder must refuse before allocating
        req.raw_input_contents.append(b"")
        return req
    if datatype == "BYTES":
        items = draw(st.lists(st.text(max_size=4).map(str.encode), min_size=count, max_size=count))
    else:
        items = draw(st.lists(st.integers(0, 100), min_size=count, max_size=count))
    if draw(st.booleans()):
        field = getattr(t.contents, _TYPED_FIELD[datatype])
        field.extend([bool(x) for x in items] if datatype == "BOOL" else items)
    elif datatype == "BYTES":
        req.raw_input_contents.append(b"".join(struct.pack("<I", len(b)) + b for b in items))
    else:
        req.raw_input_contents.append(np.array(items, _NUMPY[datatype]).tobytes())
    if draw(st.booleans()):
        req.outputs.add(name=draw(st.sampled_from(["OUTPUT0", "OUTPUT0", "OUTPUT9"])))
    return req


# -- (a) ModelInferRequest decoding, the codec directly --------------------------------------------------
@pytest.fixture(scope="module")
def registry() -> Iterator[SharedMemoryRegistry]:
    """A shared-memory registry holding one small system region, "r0", for the codec to resolve."""
    key = f"/pg_fuzz_{uuid.uuid4().hex[:12]}"
    handle = shm.create_shared_memory_region("r0", key, REGION_BYTES, create_only=True)
    shm.set_shared_memory_region(handle, [np.frombuffer(np.random.default_rng(5).bytes(REGION_BYTES), np.uint8)])
    reg = SharedMemoryRegistry()
    reg.register_system("r0", key, 0, REGION_BYTES)
    yield reg
    reg.close()
    shm.destroy_shared_memory_region(handle)


def _peak_growth(fn: Any) -> tuple[Any, int]:
    """``fn()``'s outcome (its result or the exception it raised) and the peak of memory it allocated,
    traced only while it runs (tracing hypothesis too would cost most of the budget)."""
    tracemalloc.start()
    try:
        try:
            outcome = fn()
        except Exception as e:
            outcome = e
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return outcome, peak


def _memory_bound(nbytes: int) -> int:
    # Decoded BYTES hold at most ~7x their serialization (an object pointer and a bytes object per element);
    # typed contents become one NumPy array. Anything near a declared shape's size would be far above this.
    return (1 << 20) + 64 * nbytes


@FUZZ
@given(infer_requests(["identity_int32", "simple", "m"]) | plausible_requests())
def test_decoding_any_request_gives_a_request_or_a_documented_error(registry: SharedMemoryRegistry,
                                                                    msg: pb.ModelInferRequest) -> None:
    regions = registry.use()
    try:
        outcome, grew = _peak_growth(lambda: decode_infer_request(msg, regions=regions))
    finally:
        regions.release()
    assert grew < _memory_bound(msg.ByteSize()), f"decoding a {msg.ByteSize()}-byte request allocated {grew} bytes"
    event(outcome.code if isinstance(outcome, PeregrineError) else type(outcome).__name__)
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, PeregrineError), repr(outcome)
        assert outcome.code in DECODING_CODES, (outcome.code, outcome.message)
        assert len(outcome.message) < MESSAGE_BOUND
        return
    for tensor in msg.inputs:
        assert tuple(outcome.inputs[tensor.name].shape) == tuple(tensor.shape)


@FUZZ
@given(st.data())
def test_decoding_mutated_requests_gives_a_request_or_a_documented_error(registry: SharedMemoryRegistry,
                                                                         data: st.DataObject) -> None:
    data_bytes = bytearray(_valid_request().SerializeToString())
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(data_bytes) - 1))
        op = data.draw(st.sampled_from(["set", "cut", "insert"]))
        if op == "set":
            data_bytes[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del data_bytes[pos : pos + data.draw(st.integers(1, 8))]
        else:
            data_bytes[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        msg = pb.ModelInferRequest.FromString(bytes(data_bytes))
    except Exception:  # not a message at all: gRPC answers that before any of our code runs
        return
    regions = registry.use()
    try:
        outcome, grew = _peak_growth(lambda: decode_infer_request(msg, regions=regions))
    finally:
        regions.release()
    assert grew < _memory_bound(len(data_bytes))
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, PeregrineError) and outcome.code in DECODING_CODES, repr(outcome)


def _valid_request() -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="simple")
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    for name in ("INPUT0", "INPUT1"):
        req.inputs.add(name=name, datatype="INT32", shape=[2, 16])
        req.raw_input_contents.append(a.tobytes())
    req.outputs.add(name="OUTPUT1")
    return req


# -- (b) BYTES decoding -------------------------------------------------------------------------------
@FUZZ
@given(bytes_payloads(), st.one_of(st.integers(0, 10), st.sampled_from([1 << 29, 1 << 40, (1 << 63) - 1])),
       st.sampled_from(["bytes", "memoryview", "uint8 array"]))
def test_bytes_decoding_checks_the_count_against_the_bytes(raw: bytes, count: int, form: str) -> None:
    source: Any = {"bytes": raw, "memoryview": memoryview(raw), "uint8 array": np.frombuffer(raw, np.uint8)}[form]
    outcome, grew = _peak_growth(lambda: decode_bytes_tensor(source, count, "INPUT0"))
    assert grew < _memory_bound(len(raw))
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, InvalidArgument), repr(outcome)
        assert "INPUT0" in outcome.message
        return
    assert outcome.shape == (count,) and outcome.dtype == object
    assert encode_bytes_tensor(outcome) == raw  # what decodes, re-encodes to the same bytes


@FUZZ
@given(st.lists(st.binary(max_size=40) | st.text(max_size=10), max_size=40))
def test_bytes_round_trip(items: list[bytes | str]) -> None:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    decoded = decode_bytes_tensor(encode_bytes_tensor(array), len(items), "x")
    assert list(decoded) == [x.encode() if isinstance(x, str) else x for x in items]


# -- (c) config.toml and Triton JSON overrides --------------------------------------------------------
CONFIG_KEYS = ["name", "platform", "max_batch_size", "default_model_filename", "version_policy", "warmup",
               "parameters", "instance_group", "count", "device", "gpus", "onnxruntime", "intra_op_num_threads",
               "dynamic_batching", "max_queue_delay_us", "preferred_batch_sizes", "max_queue_size",
               "priority_levels", "default_priority_level", "default_queue_policy", "priority_queue_policy",
               "default_timeout_us", "timeout_action", "batch_buckets", "window", "input", "output", "dims",
               "data_type", "detection", "max_pixels", "input_size", "max_candidates", "scale", "latest",
               "specific", "1", "2"]
_numbers = st.one_of(st.integers(-3, 70), st.sampled_from([0, 1, 8, 64, 1 << 20, 10**12, 2**63 - 1, 10**30]),
                     st.floats(allow_nan=True, allow_infinity=True))
_scalars = st.one_of(_numbers, st.booleans(), st.text(max_size=12),
                     st.sampled_from(["auto", "cpu", "latest", "all", "reject", "delay", "adaptive", "FP32"]))
_keys = st.sampled_from(CONFIG_KEYS) | st.text(min_size=1, max_size=8)
values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
                      max_leaves=12)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string, or (escaped surrogates) invalid TOML: also an outcome
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"


def _describe(cfg: ModelConfig) -> ModelDescription:
    """What a model loaded with ``cfg`` reports, for the ModelConfig encoding."""
    return ModelDescription(name="m", version=1, platform=cfg.platform, inputs=(), outputs=(),
                            max_batch_size=cfg.max_batch_size or 0, config=cfg, instances=cfg.instance_group.count,
                            device="cpu", gpus=tuple(cfg.instance_group.gpus), providers=("CPUExecutionProvider",))


def _check_config_outcome(outcome: Any, error: type[PeregrineError]) -> None:
    event("refused" if isinstance(outcome, BaseException) else "accepted")
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, error), repr(outcome)
        assert len(outcome.message) < MESSAGE_BOUND, len(outcome.message)
        return
    # Every configuration accepted fits Triton's ModelConfig message (a value out of its range was an
    # INTERNAL on ModelConfig before the bounds).
    assert isinstance(outcome, ModelConfig)
    metadata.model_config(_describe(outcome)).SerializeToString()


_queue_policy = st.fixed_dictionaries({}, optional={
    "timeout_action": st.sampled_from(["reject", "delay"]) | _scalars, "default_timeout_us": _numbers,
    "allow_timeout_override": st.booleans() | _scalars, "max_queue_size": _numbers})
config_tables = st.fixed_dictionaries({}, optional={
    "max_batch_size": _numbers,
    "version_policy": st.sampled_from(["latest", "all"]) | st.fixed_dictionaries({"latest": _numbers | values})
    | st.fixed_dictionaries({"specific": st.lists(_numbers, max_size=3) | values}),
    "default_model_filename": st.sampled_from(["model.onnx", "../model.onnx", "a/b.onnx", "", "..", "x" * 300]),
    "parameters": st.dictionaries(st.text(max_size=5), st.text(max_size=5) | _scalars, max_size=2),
    "instance_group": st.fixed_dictionaries({}, optional={
        "count": _numbers, "device": st.sampled_from(["cpu", "cuda", "auto"]) | _scalars,
        "gpus": st.lists(_numbers, max_size=3)}),
    "onnxruntime": st.fixed_dictionaries({}, optional={"intra_op_num_threads": _numbers,
                                                       "inter_op_num_threads": _numbers}),
    "dynamic_batching": st.fixed_dictionaries({}, optional={
        "max_queue_delay_us": _numbers, "preferred_batch_sizes": st.lists(_numbers, max_size=3),
        "max_queue_size": _numbers, "priority_levels": _numbers, "default_priority_level": _numbers,
        "default_queue_policy": _queue_policy, "batch_buckets": st.lists(_numbers, max_size=3) | _scalars,
        "priority_queue_policy": st.dictionaries(st.sampled_from(["1", "2", "0", "-1", "x", str(10**30)]),
                                                 _queue_policy, max_size=2)}),
    "input": st.lists(st.fixed_dictionaries({"name": st.text(max_size=4)}, optional={
        "dims": st.lists(_numbers, max_size=4), "data_type": _scalars}), max_size=2),
})


@FUZZ
@given(st.dictionaries(_keys, values, max_size=6) | config_tables)
def test_config_toml_gives_a_config_or_a_load_error(table: dict[str, Any]) -> None:
    text = "\n".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items())
    outcome, grew = _peak_growth(lambda: parse_model_config(text, "m/config.toml"))
    assert grew < _memory_bound(len(text))
    _check_config_outcome(outcome, ModelLoadError)


VALID_TOML = """max_batch_size = 8
[instance_group]
count = 2
[dynamic_batching]
max_queue_delay_us = 100
preferred_batch_sizes = [2, 4]
priority_levels = 2
default_priority_level = 1
[dynamic_batching.priority_queue_policy.1]
max_queue_size = 4
"""


@FUZZ
@given(st.data())
def test_mutated_config_toml_gives_a_config_or_a_load_error(data: st.DataObject) -> None:
    text = VALID_TOML
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(text)))
        text = text[:pos] + data.draw(st.sampled_from(["[", "]", "{", "=", "\n", "9" * 30, "-", '"', "[[a]]\n",
                                                        "a.b.c = 1\n", "x" * 5])) + text[pos:]
    _check_config_outcome(_peak_growth(lambda: parse_model_config(text))[0], ModelLoadError)


OVERRIDE_KEYS = ["name", "platform", "backend", "max_batch_size", "dynamic_batching", "instance_group",
                 "version_policy", "parameters", "max_queue_delay_microseconds", "preferred_batch_size",
                 "priority_levels", "default_priority_level", "preserve_ordering", "default_queue_policy",
                 "priority_queue_policy", "timeout_action", "default_timeout_microseconds",
                 "allow_timeout_override", "max_queue_size", "count", "kind", "gpus", "latest", "all", "specific",
                 "num_versions", "versions", "string_value", "1", "KIND_CPU", "REJECT", "DELAY", "input"]
_json_scalars = st.one_of(_numbers, st.booleans(), st.none(), st.text(max_size=12),
                          st.sampled_from(["m", "onnxruntime", "KIND_CPU", "KIND_GPU", "REJECT", "DELAY", "8", " 8",
                                           "\ud800", str(10**30)]))
json_values = st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from(OVERRIDE_KEYS) | st.text(max_size=6), inner, max_size=4),
                           max_leaves=14)


def _override(text: str) -> ModelConfig:
    return apply_override(ModelConfig(), parse_triton_override(text, "m"), "m: parameters.config")


_json_policy = st.fixed_dictionaries({}, optional={
    "timeout_action": st.sampled_from(["REJECT", "DELAY"]) | _json_scalars, "default_timeout_microseconds":
    _json_scalars, "allow_timeout_override": _json_scalars, "max_queue_size": _json_scalars})
triton_overrides = st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(["m", "other", ""]) | _json_scalars,
    "backend": st.sampled_from(["onnxruntime", "tensorrt"]),
    "max_batch_size": _json_scalars,
    "dynamic_batching": st.fixed_dictionaries({}, optional={
        "max_queue_delay_microseconds": _json_scalars, "preferred_batch_size": st.lists(_json_scalars, max_size=3),
        "priority_levels": _json_scalars, "default_priority_level": _json_scalars,
        "preserve_ordering": _json_scalars, "default_queue_policy": _json_policy,
        "priority_queue_policy": st.dictionaries(st.sampled_from(["1", "2", "0", "x", " 1", str(10**30)]),
                                                 _json_policy, max_size=2)}),
    "instance_group": st.lists(st.fixed_dictionaries({}, optional={
        "count": _json_scalars, "kind": st.sampled_from(["KIND_CPU", "KIND_GPU", "KIND_MODEL"]),
        "gpus": st.lists(_json_scalars, max_size=2) | _json_scalars}), max_size=2),
    "version_policy": st.just({"all": {}})
    | st.fixed_dictionaries({"latest": st.fixed_dictionaries({}, optional={"num_versions": _json_scalars})})
    | st.fixed_dictionaries({"specific": st.fixed_dictionaries({}, optional={
        "versions": st.lists(_json_scalars, max_size=3) | _json_scalars})}),
    "parameters": st.dictionaries(st.text(max_size=4) | st.just("k\ud800"),
                                  st.fixed_dictionaries({"string_value": _json_scalars}), max_size=2),
})


@FUZZ
@given(st.dictionaries(st.sampled_from(OVERRIDE_KEYS) | st.text(max_size=6), json_values, max_size=5)
       | triton_overrides)
def test_json_override_gives_a_config_or_invalid_argument(raw: dict[str, Any]) -> None:
    text = json.dumps(raw)
    outcome, grew = _peak_growth(lambda: _override(text))
    assert grew < _memory_bound(len(text))
    _check_config_outcome(outcome, InvalidArgument)


@FUZZ
@given(st.text(max_size=60) | st.sampled_from(["[" * 5000, '{"a":' * 3000, "1e999999", "-" + "9" * 5000, "NaN",
                                                "{}" * 3, '{"max_batch_size": 1e400}']))
def test_any_override_text_gives_a_config_or_invalid_argument(text: str) -> None:
    _check_config_outcome(_peak_growth(lambda: _override(text))[0], InvalidArgument)


V1_INPUTS = (TensorSpec("INPUT0", "FP32", (-1, 2)), TensorSpec("WORDS", "BYTES", (-1, 1)),
             TensorSpec("FLAGS", "BOOL", (-1, -1)), TensorSpec("INT", "INT8", (-1, 3)))
_v1_keys = st.sampled_from(["instances", "inputs", "signature_name", "b64", "INPUT0", "WORDS", "FLAGS", "INT",
                            "serving_default"]) | st.text(max_size=6)
_v1_scalars = _json_scalars | st.sampled_from([{"b64": "aGk="}, {"b64": "!!"}, {"b64": 1}, 1e38, -129, 255])
v1_values = st.recursive(_v1_scalars, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(_v1_keys, inner, max_size=3), max_leaves=16)


@FUZZ
@given(st.dictionaries(_v1_keys, v1_values, max_size=3), st.sampled_from([0, 8]))
def test_a_kserve_v1_predict_body_gives_a_request_or_invalid_argument(body: dict[str, Any], max_batch: int) -> None:
    for inputs in (V1_INPUTS, V1_INPUTS[:1], V1_INPUTS[1:2]):
        try:
            request, fmt = kserve_v1.decode_predict("m", "", body, inputs, max_batch)
        except InvalidArgument:
            continue
        assert fmt in (kserve_v1.ROW, kserve_v1.COLUMNAR)
        specs = {s.name: s for s in inputs}
        for name, array in request.inputs.items():
            assert name in specs and isinstance(array, np.ndarray)
            assert array.dtype == (object if specs[name].datatype == "BYTES" else
                                   np.dtype(specs[name].datatype.lower().replace("fp", "float")))


@FUZZ
@given(st.dictionaries(st.text(max_size=3).map(lambda t: "file:" + t)
                       | st.sampled_from(["file:1/m.onnx", "file:1/a/b", "file:1/a", "file:1/..", "file:0/x",
                                          "file:1/" + "é" * 200, "file:1//x", "file:9" * 30 + "/x"])
                       | st.lists(st.sampled_from(["1", "a", "..", ".", "", "b\\c", "d\x00"]), min_size=1,
                                  max_size=10).map(lambda parts: "file:" + "/".join(parts)),
                       st.just(b""), max_size=6))
def test_model_file_names_give_paths_below_a_version_or_invalid_argument(files: dict[str, bytes]) -> None:
    try:
        paths = model_files.check_files(files)
    except InvalidArgument:
        return
    for parts in paths:
        assert parts[0].isdigit() and int(parts[0]) > 0 and not parts[0].startswith("0")
        assert all(p not in ("", ".", "..") and "/" not in p and "\\" not in p for p in parts)


@FUZZ
@given(st.dictionaries(st.sampled_from(["name", "backend", "platform", "max_batch_size", "input", "output",
                                        "dynamic_batching", "instance_group", "dims", "data_type"])
                       | st.text(max_size=6), json_values, max_size=5))
def test_a_config_sent_with_model_files_gives_config_text_or_invalid_argument(raw: dict[str, Any]) -> None:
    try:
        text = triton_config_text(json.dumps(raw), "m")
    except InvalidArgument:
        return
    assert isinstance(text, str)


# -- (a) against a real server: generated and mutated requests, then a live, correct server -----------------
@pytest.fixture(scope="module")
def fuzz_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("fuzz_models")
    for dt in ("INT32", "BYTES", "FP32", "BOOL"):
        onnx_models.write(root, f"identity_{dt.lower()}", onnx_models.identity(dt, ["N", None]))
    onnx_models.write(root, "simple", onnx_models.add_sub(["N", 16]),
                      "max_batch_size = 8\n\n[dynamic_batching]\nmax_queue_delay_us = 100\n")
    server = PeregrineServer(ServerConfig(model_repository=root, grpc_port=0, http_port=None))
    server.start()
    key = f"/pg_fuzz_{uuid.uuid4().hex[:12]}"
    handle = shm.create_shared_memory_region("r0", key, REGION_BYTES, create_only=True)
    url = f"127.0.0.1:{server.port}"
    with grpc.insecure_channel(url) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        stub.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(name="r0", key=key,
                                                                             byte_size=REGION_BYTES), timeout=10)
    try:
        yield url
    finally:
        server.stop(grace=1.0)
        shm.destroy_shared_memory_region(handle)


@pytest.fixture(scope="module")
def fuzz_stub(fuzz_url: str) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(fuzz_url) as ch:
        yield pb_grpc.GRPCInferenceServiceStub(ch)


SERVER_MODELS = ["identity_int32", "identity_bytes", "identity_fp32", "identity_bool", "simple"]
SERVER_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


def _assert_correct(stub: Any) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    resp = stub.ModelInfer(_valid_request(), timeout=30)
    assert not np.frombuffer(resp.raw_output_contents[0], np.int32).any()  # INPUT0 - INPUT1, equal inputs


@settings(FUZZ, max_examples=300)
@given(infer_requests(SERVER_MODELS) | plausible_requests())
def test_generated_requests_against_a_real_server(fuzz_stub: Any, msg: pb.ModelInferRequest) -> None:
    try:
        fuzz_stub.ModelInfer(msg, timeout=30)
        event("OK")
    except grpc.RpcError as e:
        event(e.code().name)
        assert e.code() in SERVER_CODES, (e.code(), e.details())
        assert len(e.details() or "") < MESSAGE_BOUND


@settings(FUZZ, max_examples=300)
@given(st.data())
def test_mutated_requests_against_a_real_server(fuzz_url: str, data: st.DataObject) -> None:
    valid = bytearray(_valid_request().SerializeToString())
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(valid) - 1))
        op = data.draw(st.sampled_from(["set", "cut", "insert"]))
        if op == "set":
            valid[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del valid[pos : pos + data.draw(st.integers(1, 16))]
        else:
            valid[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    with grpc.insecure_channel(fuzz_url) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        try:
            call(bytes(valid), timeout=30)
        except grpc.RpcError as e:
            # INTERNAL only where grpcio itself cannot parse the message, before any of Peregrine's code runs.
            assert e.code() in SERVER_CODES or (e.code(), e.details()) == (
                grpc.StatusCode.INTERNAL, "Exception deserializing request!"), (e.code(), e.details())


@settings(FUZZ, max_examples=20)
@given(st.lists(infer_requests(SERVER_MODELS) | plausible_requests(), min_size=1, max_size=10))
def test_generated_requests_over_one_stream(fuzz_stub: Any, messages: list[pb.ModelInferRequest]) -> None:
    answers = list(fuzz_stub.ModelStreamInfer(iter(messages), timeout=60))
    assert len(answers) == len(messages)  # every request answered, in a response or an error, none dropped
    for a in answers:
        assert len(a.error_message) < MESSAGE_BOUND


def test_the_fuzzed_server_is_live_and_correct_after(fuzz_stub: Any) -> None:
    """Runs after the server fuzzing above (file order): the same server answers right."""
    _assert_correct(fuzz_stub)
