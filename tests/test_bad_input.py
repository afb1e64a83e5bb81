"""Malformed requests get the right status and the server keeps serving."""

from __future__ import annotations

import random

import grpc
import numpy as np
import pytest
from peregrine.proto import grpc_service_pb2 as pb
from peregrine.proto import grpc_service_pb2_grpc as pb_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def stub(url: str):
    with grpc.insecure_channel(url, options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
        yield pb_grpc.GRPCInferenceServiceStub(ch)


def _simple(batch: int = 1, **overrides) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="simple")
    a = np.arange(16 * batch, dtype=np.int32).reshape(batch, 16)
    for name in ("INPUT0", "INPUT1"):
        req.inputs.add(name=name, datatype="INT32", shape=[batch, 16])
        req.raw_input_contents.append(a.tobytes())
    for k, v in overrides.items():
        setattr(req, k, v)
    return req


def _code(stub, req) -> tuple[grpc.StatusCode, str]:
    try:
        stub.ModelInfer(req, timeout=30)
    except grpc.RpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


def test_valid_request_is_answered(stub) -> None:
    resp = stub.ModelInfer(_simple(batch=2), timeout=30)
    out = np.frombuffer(resp.raw_output_contents[0], np.int32).reshape(2, 16)
    np.testing.assert_array_equal(out, 2 * np.arange(32, dtype=np.int32).reshape(2, 16))


def test_unknown_model_and_version(stub) -> None:
    req = _simple()
    req.model_name = "nope"
    assert _code(stub, req)[0] == grpc.StatusCode.NOT_FOUND
    req = _simple()
    req.model_version = "7"
    assert _code(stub, req)[0] == grpc.StatusCode.NOT_FOUND
    req.model_version = "latest"  # not a version at all: Triton's INVALID_ARG
    assert _code(stub, req)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_model_that_failed_to_load_is_not_found_with_the_reason(stub) -> None:
    """As Triton answers a model none of whose versions is ready: NOT_FOUND, "has no available versions"
    (a client that retries UNAVAILABLE would wait for a model that is not coming); then why."""
    req = pb.ModelInferRequest(model_name="broken")
    code, message = _code(stub, req)
    assert code == grpc.StatusCode.NOT_FOUND
    assert "Request for unknown model: 'broken' has no available versions" in message and "unavailable" in message


def _mutate(fn):
    req = _simple()
    fn(req)
    return req


CASES = {
    "wrong datatype": lambda r: setattr(r.inputs[0], "datatype", "FP32"),
    "unknown datatype": lambda r: setattr(r.inputs[0], "datatype", "FLOAT"),
    "wrong rank": lambda r: (r.inputs[0].ClearField("shape"), r.inputs[0].shape.extend([16])),
    "wrong dim": lambda r: (r.inputs[0].ClearField("shape"), r.inputs[0].shape.extend([2, 8])),
    "negative dim": lambda r: (r.inputs[0].ClearField("shape"), r.inputs[0].shape.extend([-1, 16])),
    "raw size mismatch": lambda r: r.raw_input_contents.__setitem__(0, b"\x00" * 60),
    "missing input": lambda r: (r.inputs.pop(), r.raw_input_contents.pop()),
    "extra input": lambda r: (r.inputs.add(name="INPUT9", datatype="INT32", shape=[1, 16]),
                              r.raw_input_contents.append(b"\x00" * 64)),
    "duplicate input": lambda r: setattr(r.inputs[1], "name", "INPUT0"),
    "raw count mismatch": lambda r: r.raw_input_contents.pop(),
    "both raw and typed": lambda r: r.inputs[0].contents.int_contents.extend([1] * 16),
    "no data": lambda r: r.ClearField("raw_input_contents"),
    "unknown output": lambda r: r.outputs.add(name="OUTPUT7"),
    "batch over maximum": lambda r: None,  # replaced below
    "bad priority": lambda r: r.parameters["priority"].string_param.__add__("x") or
                    r.parameters["priority"].CopyFrom(pb.InferParameter(string_param="high")),
    "bad timeout": lambda r: r.parameters["timeout"].CopyFrom(pb.InferParameter(int64_param=-5)),
    "empty model name": lambda r: setattr(r, "model_name", ""),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_request_is_invalid_argument(stub, case: str) -> None:
    req = _simple(batch=9) if case == "batch over maximum" else _mutate(CASES[case])
    code, details = _code(stub, req)
    assert code == INVALID, (case, code, details)
    assert details  # a message for the user


def test_messages_name_the_tensor_and_expectation(stub) -> None:
    _, details = _code(stub, _mutate(CASES["wrong datatype"]))
    assert "INPUT0" in details and "INT32" in details and "FP32" in details


def test_a_misspelt_input_is_named_beside_the_missing_one(stub) -> None:
    _, details = _code(stub, _mutate(lambda r: setattr(r.inputs[1], "name", "INPUT_1")))
    assert "missing input(s) INPUT1 (got INPUT_1); expected INPUT0, INPUT1" in details


def test_typed_contents_with_wrong_count_or_field(stub) -> None:
    req = pb.ModelInferRequest(model_name="identity_int32")
    t = req.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 3])
    t.contents.int_contents.extend([1, 2])
    assert _code(stub, req)[0] == INVALID
    req = pb.ModelInferRequest(model_name="identity_int32")
    t = req.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 2])
    t.contents.fp32_contents.extend([1.0, 2.0])
    assert _code(stub, req)[0] == INVALID
    req = pb.ModelInferRequest(model_name="identity_int8")
    t = req.inputs.add(name="INPUT0", datatype="INT8", shape=[1, 1])
    t.contents.int_contents.extend([1000])
    assert _code(stub, req)[0] == INVALID


@pytest.mark.parametrize("raw", [b"\x05\x00\x00\x00abc", b"\x01\x00", b"\x01\x00\x00\x00a\x00", b"\xff\xff\xff\xff"])
def test_malformed_bytes_lengths(stub, raw: bytes) -> None:
    req = pb.ModelInferRequest(model_name="identity_bytes")
    req.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 1])
    req.raw_input_contents.append(raw)
    assert _code(stub, req)[0] == INVALID


def test_non_utf8_bytes_for_a_string_model(stub) -> None:
    req = pb.ModelInferRequest(model_name="identity_bytes")
    req.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 1])
    req.raw_input_contents.append(b"\x02\x00\x00\x00\xff\xfe")
    assert _code(stub, req)[0] == INVALID


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values_where_the_model_forbids_them(stub, value: float) -> None:
    x = np.ones((1, 4), np.float32)
    x[0, 2] = value
    req = pb.ModelInferRequest(model_name="finite")
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(x.tobytes())
    assert _code(stub, req)[0] == INVALID
    req.raw_input_contents[0] = np.ones((1, 4), np.float32).tobytes()
    assert _code(stub, req)[0] == grpc.StatusCode.OK


def test_model_failure_is_internal_with_a_generic_message(stub) -> None:
    req = pb.ModelInferRequest(model_name="gather")
    req.inputs.add(name="DATA", datatype="FP32", shape=[1, 4])
    req.inputs.add(name="INDEX", datatype="INT64", shape=[1, 1])
    req.raw_input_contents.extend([np.ones((1, 4), np.float32).tobytes(), np.array([[9]], np.int64).tobytes()])
    code, details = _code(stub, req)
    assert code in (grpc.StatusCode.INTERNAL, INVALID)
    assert "Traceback" not in details
    req.raw_input_contents[1] = np.array([[2]], np.int64).tobytes()
    assert _code(stub, req)[0] == grpc.StatusCode.OK


def test_random_mutations_of_valid_request_bytes(url: str) -> None:
    """Hundreds of corrupted requests over a raw channel; afterwards the server still answers right."""
    valid = _simple(batch=2).SerializeToString()
    rng = random.Random(1234)
    codes: dict[str, int] = {}
    with grpc.insecure_channel(url) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for _ in range(400):
            data = bytearray(valid)
            for _ in range(rng.randint(1, 8)):
                op = rng.random()
                pos = rng.randrange(len(data))
                if op < 0.5:
                    data[pos] = rng.randrange(256)
                elif op < 0.75:
                    del data[pos : pos + rng.randint(1, 16)]
                else:
                    data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
            try:
                call(bytes(data), timeout=30)
                codes["OK"] = codes.get("OK", 0) + 1
            except grpc.RpcError as e:
                assert e.code() != grpc.StatusCode.UNKNOWN, e.details()
                assert "Traceback" not in (e.details() or "")
                codes[e.code().name] = codes.get(e.code().name, 0) + 1
        assert sum(codes.values()) == 400
        assert set(codes) <= {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "INTERNAL"}, codes
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        resp = stub.ModelInfer(_simple(batch=2), timeout=30)
        out = np.frombuffer(resp.raw_output_contents[1], np.int32)
        assert not out.any()  # INPUT0 - INPUT1 with equal inputs


# -- sizes against the bytes present, and shapes (issue 14) ---------------------------------------------------
def _one(model: str, datatype: str, shape: list[int], raw: bytes | None = None) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="INPUT0", datatype=datatype, shape=shape)
    if raw is not None:
        req.raw_input_contents.append(raw)
    return req


@pytest.mark.parametrize(("datatype", "shape", "raw"), [
    ("BYTES", [1 << 29], b""),  # 34 bytes that made the server allocate 4 GiB
    ("BYTES", [1, 3], b"\x00\x00\x00\x00" * 2),  # one length prefix short
    ("BYTES", [1 << 40], b""),
    ("INT32", [0, (1 << 63) - 1], b""),  # zero elements, but NumPy cannot hold the shape
    ("INT32", [0, (1 << 63) - 1], None),  # the same in typed contents
    ("INT32", [1 << 32, 1 << 32], b""),  # a product past int64
    ("INT32", [1] * 33, b"\x00" * 4),  # more dimensions than MAX_RANK
])
def test_declared_sizes_are_checked_before_allocating(stub, datatype: str, shape: list[int], raw: bytes | None) -> None:
    model = "identity_bytes" if datatype == "BYTES" else "identity_int32"
    code, details = _code(stub, _one(model, datatype, shape, raw))
    assert code == INVALID, details
    assert "INPUT0" in details


def test_typed_bytes_count_must_match_the_shape(stub) -> None:
    req = _one("identity_bytes", "BYTES", [1 << 29])
    req.inputs[0].contents.bytes_contents.append(b"a")
    assert _code(stub, req)[0] == INVALID


def test_empty_tensors_are_answered(stub) -> None:
    resp = stub.ModelInfer(_one("identity_int32", "INT32", [1, 0], b""), timeout=30)
    assert list(resp.outputs[0].shape) == [1, 0]


def test_an_output_requested_twice_is_invalid_argument(stub) -> None:
    req = _simple()
    req.outputs.add(name="OUTPUT0")
    req.outputs.add(name="OUTPUT0")
    code, details = _code(stub, req)
    assert code == INVALID and "OUTPUT0" in details


def test_long_names_are_clipped_in_messages(stub) -> None:
    req = _simple()
    req.inputs[0].name = req.inputs[1].name = "i" * 100_000  # a duplicate: refused while decoding
    code, details = _code(stub, req)
    assert code == INVALID and len(details) < 1024 and "100000 characters" in details
