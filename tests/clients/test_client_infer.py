"""InferenceClient / AsyncInferenceClient against a real in-process Peregrine server."""

from __future__ import annotations

import asyncio

import client_support
import grpc
import numpy as np
import pytest
from client_support import ALL_TYPES
from peregrine.client import (
    AsyncInferenceClient,
    InferenceClient,
    InferRequest,
    PeregrineClientError,
    TensorMetadata,
)
from peregrine.client.tensors import NUMPY_OF

# Fixtures shared with the other client tests (see client_support).
peregrine_server = client_support.peregrine_server
peregrine_url = client_support.peregrine_url


def sample(datatype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Seeded data over the datatype's whole range, extremes included; BYTES with empty elements, NULs and
    multi-byte characters (UTF-8: ONNX string tensors hold text)."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    if datatype == "BYTES":
        alphabet = list("abc xyz\x00\n\u00e9\u4e2d\U0001f600")
        items = [b"", b"\x00\x01", "\u00e9".encode(), bytes(range(128))]
        items += ["".join(rng.choice(alphabet, size=int(rng.integers(0, 40)))).encode() for _ in range(n)]
        out = np.empty(n, dtype=object)
        out[:] = items[:n]
        return out.reshape(shape)
    if datatype == "BOOL":
        return (rng.random(shape) < 0.5)
    dt = NUMPY_OF[datatype]
    if dt.kind in "iu":
        info = np.iinfo(dt)
        a = rng.integers(info.min, info.max, size=n, dtype=dt, endpoint=True)
        a[:2] = [info.min, info.max]
    else:
        a = (rng.standard_normal(n) * 1e3).astype(dt)
        a[:4] = [np.finfo(dt).max, np.finfo(dt).tiny, -0.0, np.inf]
    return a.reshape(shape)


@pytest.fixture
def client(peregrine_url: str) -> InferenceClient:
    with InferenceClient(peregrine_url, deadline_s=10.0) as c:
        yield c


@pytest.mark.parametrize("datatype", ALL_TYPES)
def test_every_datatype_round_trips_through_an_identity_model(client: InferenceClient, datatype: str) -> None:
    data = sample(datatype, (3, 7), seed=len(datatype))
    out = client.infer(f"identity_{datatype.lower()}", {"INPUT0": data})
    result = out["OUTPUT0"]
    assert result.shape == data.shape
    if datatype == "BYTES":
        assert result.dtype == object and result.tolist() == data.tolist()
    else:
        assert result.dtype == NUMPY_OF[datatype]
        assert result.tobytes() == data.tobytes()  # bit for bit, NaN/-0.0/inf included


def test_str_and_fixed_width_arrays_travel_as_bytes(client: InferenceClient) -> None:
    text = np.array([["grüße", ""], ["a", "ok"]])  # dtype <U5
    assert client.infer("identity_bytes", {"INPUT0": text})["OUTPUT0"].tolist() == \
        [[s.encode() for s in row] for row in text.tolist()]
    raw = np.array([[b"x\x00y", b"z"]], dtype="S3")
    assert client.infer("identity_bytes", {"INPUT0": raw})["OUTPUT0"].tolist() == [[b"x\x00y", b"z"]]


def test_big_endian_and_non_contiguous_inputs_are_sent_correctly(client: InferenceClient) -> None:
    a = np.arange(24, dtype=">f4").reshape(4, 6)[:, ::2]
    out = client.infer("identity_fp32", {"INPUT0": a})["OUTPUT0"]
    np.testing.assert_array_equal(out, a.astype("<f4"))


def test_selected_outputs_and_several_inputs(client: InferenceClient) -> None:
    x = np.arange(32, dtype=np.int32).reshape(2, 16)
    y = np.ones((2, 16), dtype=np.int32)
    both = client.infer("simple", {"INPUT0": x, "INPUT1": y})
    np.testing.assert_array_equal(both["OUTPUT0"], x + y)
    np.testing.assert_array_equal(both["OUTPUT1"], x - y)
    only = client.infer("simple", {"INPUT0": x, "INPUT1": y}, outputs=["OUTPUT1"])
    assert list(only) == ["OUTPUT1"]


def test_health_metadata_config_statistics_and_index(client: InferenceClient) -> None:
    assert client.server_live() and client.server_ready()
    assert client.model_ready("identity_fp32")
    assert not client.model_ready("no_such_model")
    assert client.server_metadata().name == "peregrine"
    meta = client.model_metadata("identity_fp16")
    assert meta.inputs == (TensorMetadata("INPUT0", "FP16", (-1, -1)),)
    assert meta.versions == ("1",)
    assert client.model_config("simple").max_batch_size == 8
    before = client.model_statistics("identity_int8")[0].inference_count
    client.infer("identity_int8", {"INPUT0": np.zeros((2, 2), np.int8)})
    after = client.model_statistics("identity_int8")[0]
    assert after.name == "identity_int8" and after.inference_count == before + 2
    index = {m.name: m for m in client.repository_index()}
    assert index["identity_fp32"].state == "READY"
    assert {m.name for m in client.repository_index(ready_only=True)} <= set(index)


def test_unknown_model_is_not_found(client: InferenceClient) -> None:
    with pytest.raises(PeregrineClientError) as e:
        client.infer("no_such_model", {"INPUT0": np.zeros((1, 1), np.float32)})
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    assert e.value.method == "ModelInfer"
    with pytest.raises(PeregrineClientError) as e:
        client.model_metadata("no_such_model")
    assert e.value.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("inputs", [
    {"INPUT0": np.zeros((2,), np.float32)},  # rank 1 for a rank-2 model
    {"INPUT0": np.zeros((1, 4), np.int32)},  # wrong datatype
    {"WRONG": np.zeros((1, 4), np.float32)},  # wrong name
])
def test_bad_requests_are_invalid_argument(client: InferenceClient, inputs: dict[str, np.ndarray]) -> None:
    with pytest.raises(PeregrineClientError) as e:
        client.infer("identity_fp32", inputs)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details


def test_arguments_the_protocol_cannot_carry_fail_before_sending(client: InferenceClient) -> None:
    with pytest.raises(ValueError, match="complex"):
        client.infer("identity_fp32", {"INPUT0": np.zeros((1, 1), np.complex64)})
    with pytest.raises(ValueError, match="deadline_s"):
        client.infer("identity_fp32", {"INPUT0": np.zeros((1, 1), np.float32)}, deadline_s=0)
    with pytest.raises(ValueError, match="priority"):
        client.infer("identity_fp32", {"INPUT0": np.zeros((1, 1), np.float32)}, priority=-1)


def test_stream_answers_every_request_in_order_and_survives_a_bad_one(client: InferenceClient) -> None:
    requests = [InferRequest("identity_int64", {"INPUT0": np.full((1, 3), i, np.int64)}, id=f"r{i}")
                for i in range(6)]
    requests[3] = InferRequest("identity_int64", {"INPUT0": np.zeros((3,), np.int64)}, id="bad")
    results = list(client.stream_infer(iter(requests)))
    assert [r.id for r in results] == ["r0", "r1", "r2", "bad", "r4", "r5"]
    assert [r.ok for r in results] == [True, True, True, False, True, True]
    assert results[3].error
    for i in (0, 1, 2, 4, 5):
        np.testing.assert_array_equal(results[i].outputs["OUTPUT0"], np.full((1, 3), i, np.int64))


def test_load_and_unload(client: InferenceClient) -> None:
    x = {"INPUT0": np.arange(4, dtype=np.int32)[None]}
    client.unload_model("spare")
    assert not client.model_ready("spare")
    with pytest.raises(PeregrineClientError) as e:
        client.infer("spare", x)
    assert e.value.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE)
    client.load_model("spare")
    assert client.model_ready("spare")
    np.testing.assert_array_equal(client.infer("spare", x)["OUTPUT0"], x["INPUT0"])
    with pytest.raises(PeregrineClientError) as e:
        client.load_model("not_in_the_repository")
    assert e.value.code != grpc.StatusCode.OK


def test_async_client(peregrine_url: str) -> None:
    async def main() -> None:
        async with AsyncInferenceClient(peregrine_url, deadline_s=10.0) as client:
            assert await client.server_ready()
            assert (await client.model_metadata("identity_uint16")).inputs[0].datatype == "UINT16"
            assert (await client.model_config("simple")).max_batch_size == 8
            assert await client.repository_index()
            assert await client.model_statistics("identity_fp32")
            calls = [client.infer(f"identity_{dt.lower()}", {"INPUT0": sample(dt, (2, 5))}) for dt in ALL_TYPES]
            for dt, out in zip(ALL_TYPES, await asyncio.gather(*calls), strict=True):
                got, want = out["OUTPUT0"], sample(dt, (2, 5))
                assert got.tolist() == want.tolist() if dt == "BYTES" else got.tobytes() == want.tobytes()
            with pytest.raises(PeregrineClientError) as e:
                await client.infer("no_such_model", {"INPUT0": np.zeros((1, 1), np.float32)})
            assert e.value.code == grpc.StatusCode.NOT_FOUND

            async def requests():  # type: ignore[no-untyped-def]
                for i in range(4):
                    yield InferRequest("identity_fp32", {"INPUT0": np.full((1, 2), i, np.float32)}, id=str(i))

            results = [r async for r in client.stream_infer(requests())]
            assert [r.id for r in results] == ["0", "1", "2", "3"] and all(r.ok for r in results)

    asyncio.run(main())
