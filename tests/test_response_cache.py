"""The response cache: what makes a key, the byte bound under churn, and hits over a real server."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from peregrine.server.core.types import InferRequest, InferResponse
from peregrine.server.dataplane.cache import ENTRY_OVERHEAD, ResponseCache, request_key
from support import onnx_models
from tritonclient.utils import InferenceServerException


def _request(x: np.ndarray, name: str = "x", outputs: tuple[str, ...] = (), **params: Any) -> InferRequest:
    return InferRequest(model_name="m", id="r", inputs={name: x}, requested_outputs=list(outputs),
                        parameters=dict(params))


def _response(nbytes: int, model: str = "m") -> InferResponse:
    return InferResponse(model_name=model, model_version="1", id="",
                         outputs={"y": np.zeros(nbytes, np.uint8)})


# -- the key ------------------------------------------------------------------------------------------
def test_the_key_changes_with_everything_that_decides_the_answer() -> None:
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    base = request_key("m", 1, _request(x))
    assert request_key("m", 1, _request(x.copy())) == base  # the same bytes, another buffer
    different = [
        request_key("n", 1, _request(x)),  # model
        request_key("m", 2, _request(x)),  # version
        request_key("m", 1, _request(x.reshape(2, 8))),  # shape, same bytes
        request_key("m", 1, _request(x.view(np.int32))),  # datatype, same bytes
        request_key("m", 1, _request(x, name="y")),  # input name
        request_key("m", 1, _request(x + np.float32(1e-6) * (np.arange(16) == 3))),  # one value
        request_key("m", 1, _request(x, outputs=("OUTPUT0",))),  # requested outputs
        request_key("m", 1, _request(x, threshold=0.5)),  # a parameter the model may read
    ]
    assert len({base, *different}) == len(different) + 1
    # Parameters that only schedule the request do not change its answer.
    assert request_key("m", 1, _request(x, priority=2, timeout=1000)) == base


def test_bytes_tensors_are_keyed_by_their_elements_not_their_concatenation() -> None:
    a = np.array([b"ab", b"c"], dtype=object)
    b = np.array([b"a", b"bc"], dtype=object)
    assert request_key("m", 1, _request(a)) != request_key("m", 1, _request(b))


# -- the bound ----------------------------------------------------------------------------------------
def test_churn_never_takes_the_cache_past_its_bound_and_evicts_the_least_recently_used() -> None:
    cache = ResponseCache(64 * 1024)
    rng = random.Random(7)
    for i in range(5000):
        cache.put(i.to_bytes(4, "little"), _response(rng.randrange(1, 8192)))
        if i % 3 == 0:
            cache.get(rng.randrange(i + 1).to_bytes(4, "little"), "again")
        assert cache.used <= cache.capacity
    assert cache.counters.evictions > 0

    lru = ResponseCache(3 * (1000 + ENTRY_OVERHEAD))
    for k in (b"a", b"b", b"c"):
        assert lru.put(k, _response(1000))
    assert lru.get(b"a", "1") is not None  # a is now the most recently used
    lru.put(b"d", _response(1000))
    assert lru.get(b"b", "2") is None  # b was the least recently used
    assert all(lru.get(k, "3") is not None for k in (b"a", b"c", b"d"))


def test_an_answer_larger_than_the_cache_is_not_stored_and_stored_answers_are_read_only() -> None:
    cache = ResponseCache(4096)
    assert not cache.put(b"big", _response(8192))
    assert len(cache) == 0 and cache.used == 0
    engine_buffer = np.zeros(64, np.uint8)
    view = InferResponse(model_name="m", model_version="1", id="", outputs={"y": engine_buffer[:32]})
    assert cache.put(b"k", view)
    engine_buffer[:] = 9  # the engine reuses its buffer: the cached answer does not change
    hit = cache.get(b"k", "req-7")
    assert hit is not None and hit.id == "req-7" and not hit.outputs["y"].any()
    with pytest.raises(ValueError):
        hit.outputs["y"][0] = 1


def test_dropping_a_model_forgets_its_answers_only() -> None:
    cache = ResponseCache(1 << 20)
    cache.put(b"1", _response(100, "a"))
    cache.put(b"2", _response(100, "b"))
    cache.drop_model("a")
    assert cache.get(b"1", "") is None and cache.get(b"2", "") is not None
    assert cache.used == 100 + ENTRY_OVERHEAD


# -- over a real server ----------------------------------------------------------------------------------
def _statistics(client: grpcclient.InferenceServerClient, model: str) -> Any:
    return client.get_inference_statistics(model).model_stats[0]


def _infer(client: grpcclient.InferenceServerClient, model: str, x: np.ndarray, request_id: str) -> np.ndarray:
    tensor = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(model, [tensor], request_id=request_id)
    assert result.get_response().id == request_id
    return result.as_numpy("OUTPUT0")


def test_a_repeated_request_is_answered_from_the_cache(tmp_path: Path, start_server: Any) -> None:
    onnx_models.write(tmp_path, "cached", onnx_models.identity("FP32", ["N", None]),
                      "max_batch_size = 8\nresponse_cache = true\n")
    onnx_models.write(tmp_path, "uncached", onnx_models.identity("FP32", ["N", None]), "max_batch_size = 8\n")
    server = start_server(tmp_path)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    x = np.arange(8, dtype=np.float32).reshape(1, 8)
    for i in range(3):
        np.testing.assert_array_equal(_infer(client, "cached", x, f"id-{i}"), x)
    np.testing.assert_array_equal(_infer(client, "cached", x + 1, "other"), x + 1)
    s = _statistics(client, "cached")
    st = s.inference_stats
    assert (st.cache_miss.count, st.cache_hit.count) == (2, 2)
    assert st.success.count == 4 and st.queue.count == 4  # hits count as successes, as in Triton
    assert s.execution_count == 2 and s.inference_count == 2  # nothing ran for the hits
    assert st.cache_hit.ns > 0 and st.cache_miss.ns > 0

    for i in range(2):
        _infer(client, "uncached", x, f"u-{i}")
    u = _statistics(client, "uncached")
    assert u.execution_count == 2 and u.inference_stats.cache_hit.count == 0 == u.inference_stats.cache_miss.count


def test_errors_are_never_cached(tmp_path: Path, start_server: Any) -> None:
    onnx_models.write(tmp_path, "gather", onnx_models.gather(),
                      "max_batch_size = 4\nresponse_cache = true\n[instance_group]\ndevice = 'cpu'\n")
    server = start_server(tmp_path)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    data = grpcclient.InferInput("DATA", [1, 4], "FP32")
    data.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4))
    index = grpcclient.InferInput("INDEX", [1, 1], "INT64")
    index.set_data_from_numpy(np.array([[9]], np.int64))  # out of range: the run fails
    for _ in range(2):
        with pytest.raises(InferenceServerException):
            client.infer("gather", [data, index])
    st = _statistics(client, "gather").inference_stats
    assert st.cache_hit.count == 0 and st.fail.count == 2
    assert server.dataplane.cache.counters.inserts == 0


def test_a_server_cache_of_zero_bytes_turns_it_off(tmp_path: Path, start_server: Any) -> None:
    onnx_models.write(tmp_path, "cached", onnx_models.identity("FP32", ["N", None]),
                      "max_batch_size = 8\nresponse_cache = true\n")
    server = start_server(tmp_path, response_cache_bytes=0)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    x = np.ones((1, 4), np.float32)
    for i in range(2):
        _infer(client, "cached", x, str(i))
    s = _statistics(client, "cached")
    assert s.execution_count == 2 and s.inference_stats.cache_hit.count == 0
