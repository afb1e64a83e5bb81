"""The JSON codec alone: whatever a client sends as an inference body, decoding answers a PeregrineError
(a status) or a request, never another exception; binary inputs are views of the body; and protobuf
answers print as Triton prints them."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from peregrine.proto import grpc_service_pb2 as pb
from peregrine.server.codecs import oip_json
from peregrine.server.core.errors import PeregrineError
from peregrine.server.core.types import InferResponse

_scalar = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8)
_json = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=5)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=30)
_tensor = st.fixed_dictionaries({"name": st.sampled_from(["INPUT0", "", 3]),
                                 "datatype": st.sampled_from(["FP32", "BYTES", "INT8", "BOOL", "NOPE"]),
                                 "shape": st.lists(st.integers(-2, 2**41), max_size=4) | _json},
                                optional={"data": _json, "parameters": st.dictionaries(
                                    st.sampled_from(["binary_data_size", "shared_memory_region",
                                                     "shared_memory_byte_size"]), _json, max_size=2)})


@settings(max_examples=300, deadline=None)
@given(header=st.fixed_dictionaries({"inputs": st.lists(_tensor, max_size=3) | _json},
                                     optional={"outputs": _json, "parameters": _json, "id": _json}),
       binary=st.binary(max_size=64))
def test_any_body_decodes_or_answers_a_status(header: dict, binary: bytes) -> None:
    with contextlib.suppress(PeregrineError):
        oip_json.decode_infer_request("m", "", header, memoryview(binary))


def test_binary_inputs_are_views_and_outputs_split_by_request() -> None:
    x = np.arange(6, dtype=np.float32)
    s = np.array([b"ab", b""], dtype=object)
    header = {"inputs": [{"name": "A", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": 24}},
                         {"name": "S", "datatype": "BYTES", "shape": [2], "data": ["ab", ""]}],
              "outputs": [{"name": "A", "parameters": {"binary_data": True}}, {"name": "S"}]}
    body = bytearray(x.tobytes())
    request = oip_json.decode_infer_request("m", "", header, memoryview(body))
    assert np.shares_memory(request.inputs["A"], np.frombuffer(body, np.uint8))
    assert request.inputs["S"].tolist() == s.tolist() and request.requested_outputs == ["A", "S"]
    out, length = oip_json.encode_infer_response(
        InferResponse("m", "1", "", {"A": x.reshape(2, 3), "S": s}), header)
    assert length is not None
    meta = json.loads(out[:length])
    assert meta["outputs"][0]["parameters"] == {"binary_data_size": 24}
    assert meta["outputs"][1]["data"] == ["ab", ""]
    assert out[length:] == x.tobytes()


@pytest.mark.parametrize("extra", [b"x", b""])
def test_binary_sizes_must_account_for_the_body(extra: bytes) -> None:
    header = {"inputs": [{"name": "A", "datatype": "INT8", "shape": [2], "parameters": {"binary_data_size": 2}}]}
    if extra:
        with pytest.raises(PeregrineError):
            oip_json.decode_infer_request("m", "", header, memoryview(b"\x01\x02" + extra))
    else:
        with pytest.raises(PeregrineError):
            oip_json.decode_infer_request("m", "", header, memoryview(b"\x01"))


def test_messages_print_64_bit_integers_as_numbers() -> None:
    msg = pb.ModelMetadataResponse(name="m", versions=["1"])
    msg.inputs.add(name="x", datatype="FP32", shape=[-1, 3])
    assert oip_json.message_json(msg)["inputs"][0]["shape"] == [-1, 3]


@pytest.mark.parametrize(("body", "reason"), [
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [NaN]}]}', "NaN is not a JSON value"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [-Infinity]}]}', "-Infinity is not"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1e400]}]}', "outside FP32's range"),
    (b'{"inputs": [{"name": "x", "datatype": "FP16", "shape": [2], "data": [1, 70000]}]}', "outside FP16's range"),
])
def test_what_is_not_a_json_number_or_not_a_float_is_refused(body: bytes, reason: str) -> None:
    """Python's json reads NaN and Infinity, which JSON has not (Triton's parser refuses them); a number past
    every float (1e400) or past the datatype's range is not silently infinity."""
    with pytest.raises(PeregrineError) as e:
        oip_json.decode_infer_request("m", "", oip_json.parse_object(body), memoryview(b""))
    assert e.value.code == "INVALID_ARGUMENT" and reason in e.value.message


@pytest.mark.parametrize(("header", "message"), [
    ({}, "inputs: expected an array of tensors, got no 'inputs' field"),
    ({"inputs": None}, "inputs: expected an array of tensors, got null"),
    ({"inputs": {"name": "x"}}, "inputs: expected an array of tensors, got an object"),
    ({"inputs": [], "id": 7}, "id: expected a string, got a number"),
    ({"inputs": [], "parameters": [1]}, "parameters: expected an object, got an array"),
    ({"inputs": ["x"]}, "inputs[0]: expected an object, got a string"),
    ({"inputs": [], "outputs": True}, "outputs: expected an array, got a boolean"),
])
def test_a_malformed_request_names_the_field_and_the_json_type_it_got(header: dict[str, object],
                                                                      message: str) -> None:
    """Errors speak JSON to a JSON client: 'got null' or 'got an object', not Python's NoneType or dict."""
    with pytest.raises(PeregrineError) as caught:
        oip_json.decode_infer_request("m", "", header, memoryview(b""))
    assert str(caught.value) == message
