"""The pre-encoded ModelInferResponse: the same wire bytes as protobuf's own, without copying the outputs."""

from __future__ import annotations

import numpy as np
import pytest
from peregrine.proto import grpc_service_pb2 as pb
from peregrine.server.codecs import oip
from peregrine.server.core.types import InferResponse


@pytest.mark.parametrize("elements", [0, 1, 127, 128, 16384, 1 << 21])  # varint lengths of 1, 2, 3 and 4 bytes
def test_pre_encoded_bytes_equal_protobufs_own(elements: int) -> None:
    rng = np.random.default_rng(elements)
    outputs = {
        "f": rng.random(elements, np.float32),
        "b": rng.random(elements) > 0.5,
        "s": np.array([b"x" * (i % 5) for i in range(min(elements, 100))], dtype=object),
        "t": rng.random((3, 4))[:, ::2],  # not contiguous
        "e": np.zeros((0, 16), np.int32),  # no elements
    }
    encoded = oip.encode_infer_response(InferResponse("m", "1", "id-9", outputs))
    wire = encoded.SerializeToString()
    assert wire == encoded.to_message().SerializeToString()
    assert len(wire) == encoded.ByteSize()
    parsed = pb.ModelInferResponse.FromString(wire)
    assert parsed.id == "id-9" and [o.name for o in parsed.outputs] == ["f", "b", "s", "t", "e"]
    np.testing.assert_array_equal(np.frombuffer(parsed.raw_output_contents[0], np.float32), outputs["f"])
    np.testing.assert_array_equal(np.frombuffer(parsed.raw_output_contents[1], np.bool_), outputs["b"])
    np.testing.assert_array_equal(np.frombuffer(parsed.raw_output_contents[3], np.float64).reshape(3, 2),
                                  outputs["t"])

    stream = oip.EncodedStreamResponse(encoded).SerializeToString()
    as_message = pb.ModelStreamInferResponse(infer_response=encoded.to_message()).SerializeToString()
    assert stream == as_message


def test_the_outputs_are_not_copied_before_serialization() -> None:
    big = np.zeros(1 << 20, np.float32)
    encoded = oip.encode_infer_response(InferResponse("m", "1", "", {"y": big}))
    (buffer,) = encoded.raw
    assert isinstance(buffer, memoryview) and np.shares_memory(np.asarray(buffer), big)
