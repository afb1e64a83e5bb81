"""Model lifecycle over a real server: on-demand loads, idle unloads, the memory budget, poll mode."""

from __future__ import annotations

import gc
import shutil
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from support import onnx_models
from tritonclient.utils import InferenceServerException

ON_DEMAND = 'max_batch_size = 8\nload = "on_demand"\n'


def _client(server: Any) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}")


def _infer(client: grpcclient.InferenceServerClient, model: str, value: float = 1.0,
           timeout_s: float | None = None) -> np.ndarray:
    x = np.full((1, 4), value, np.float32)
    tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(x)
    kwargs = {} if timeout_s is None else {"client_timeout": timeout_s}
    return client.infer(model, [tensor], **kwargs).as_numpy("OUTPUT0")


def _states(client: grpcclient.InferenceServerClient) -> dict[str, tuple[str, str]]:
    return {m.name: (m.state, m.reason) for m in client.get_model_repository_index().models}


def _until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def test_an_on_demand_model_loads_once_for_its_first_requests(tmp_path: Path, start_server: Any) -> None:
    onnx_models.write(tmp_path, "lazy", onnx_models.identity("FP32", ["N", None]), ON_DEMAND)
    onnx_models.write(tmp_path, "eager", onnx_models.identity("FP32", ["N", None]), "max_batch_size = 8\n")
    server = start_server(tmp_path)
    client = _client(server)
    state, reason = _states(client)["lazy"]
    assert state == "UNLOADED" and "first request" in reason
    assert not client.is_model_ready("lazy") and client.is_server_ready()  # not waited for: it loads on demand

    answers: list[np.ndarray] = []
    errors: list[Exception] = []

    def first() -> None:
        try:
            answers.append(_infer(_client(server), "lazy", 3.0))
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=first) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(answers) == 8 and all((a == 3.0).all() for a in answers)
    cold = server.lifecycle.cold["lazy"]
    assert cold.loads == 1  # eight first requests, one load
    assert 1 <= cold.requests <= 8 and cold.last_load_seconds > 0
    assert client.is_model_ready("lazy") and _states(client)["lazy"][0] == "READY"
    _infer(client, "lazy")
    assert server.lifecycle.cold["lazy"].loads == 1  # warm now


def test_a_cold_start_is_bounded_by_the_requests_deadline_and_the_load_goes_on(
        tmp_path: Path, start_server: Any) -> None:
    onnx_models.write(tmp_path, "lazy", onnx_models.identity("FP32", ["N", None]), ON_DEMAND)
    server = start_server(tmp_path)
    client = _client(server)
    for _ in range(50):  # a 1 ms deadline may also pass before the request reaches the server: send again
        with pytest.raises(InferenceServerException) as e:
            _infer(client, "lazy", timeout_s=0.001)
        assert "DEADLINE" in str(e.value.status())
        if "lazy" in server.lifecycle.cold:
            break
    assert server.lifecycle.cold["lazy"].requests >= 1  # the server took it, and started the load
    _until(lambda: client.is_model_ready("lazy"), timeout_s=60)  # the load was not abandoned
    assert (_infer(client, "lazy", 2.0) == 2.0).all()


def test_an_idle_model_is_unloaded_its_sessions_freed_and_comes_back(tmp_path: Path, start_server: Any) -> None:
    onnx_models.write(tmp_path, "idle", onnx_models.identity("FP32", ["N", None]),
                      "max_batch_size = 8\nidle_unload_s = 1\n")
    server = start_server(tmp_path)
    client = _client(server)
    _infer(client, "idle")
    (model,) = [m for m in server.repository.ready_models() if m.name == "idle"]
    sessions = [weakref.ref(s.session) for s in model.instances.sessions]
    del model
    _until(lambda: _states(client)["idle"][0] == "UNLOADED", timeout_s=10)
    assert "without a request" in _states(client)["idle"][1]
    assert client.is_server_ready()  # a model let go does not make the server unready
    gc.collect()
    assert all(ref() is None for ref in sessions)  # ONNX Runtime's sessions, and their memory, are gone
    assert (_infer(client, "idle", 5.0) == 5.0).all()  # the next request loads it again
    assert server.lifecycle.cold["idle"].loads == 1


def test_a_model_in_use_is_not_unloaded_for_idleness(tmp_path: Path, start_server: Any) -> None:
    onnx_models.write(tmp_path, "busy", onnx_models.identity("FP32", ["N", None]),
                      "max_batch_size = 8\nidle_unload_s = 1\n")
    server = start_server(tmp_path)
    client = _client(server)
    stop = time.monotonic() + 3.0
    while time.monotonic() < stop:
        _infer(client, "busy")
        time.sleep(0.1)
    assert _states(client)["busy"][0] == "READY"


def test_the_memory_budget_evicts_the_least_recently_used_idle_model(tmp_path: Path, start_server: Any) -> None:
    for name in ("a", "b", "c"):
        onnx_models.write(tmp_path, name, onnx_models.identity("FP32", ["N", None]), ON_DEMAND)
    size = (tmp_path / "a" / "1" / "model.onnx").stat().st_size
    server = start_server(tmp_path, model_memory_budget_bytes=int(2.5 * size))
    client = _client(server)
    _infer(client, "a")
    _infer(client, "b")
    _infer(client, "a")  # b is now the least recently used
    _infer(client, "c")  # two fit: b goes
    states = _states(client)
    assert states["a"][0] == states["c"][0] == "READY"
    assert states["b"][0] == "UNLOADED" and "memory budget" in states["b"][1]
    assert (_infer(client, "b", 7.0) == 7.0).all()  # and comes back, evicting a (now the oldest)
    assert _states(client)["a"][0] == "UNLOADED"


def test_poll_mode_adds_changes_and_removes_models_without_failing_requests(
        tmp_path: Path, start_server: Any) -> None:
    onnx_models.write(tmp_path, "live", onnx_models.identity("FP32", ["N", None]), "max_batch_size = 8\n")
    onnx_models.write(tmp_path, "gone", onnx_models.identity("FP32", ["N", None]), "max_batch_size = 8\n")
    server = start_server(tmp_path, model_control_mode="poll", repository_poll_s=0.3)
    client = _client(server)
    failures: list[Exception] = []
    served = 0
    stop = threading.Event()

    def load() -> None:  # a client that never stops asking "live" while its files change
        nonlocal served
        own = _client(server)
        while not stop.is_set():
            try:
                _infer(own, "live")
                served += 1
            except Exception as e:
                failures.append(e)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        onnx_models.write(tmp_path, "new", onnx_models.identity("FP32", ["N", None]), "max_batch_size = 8\n")
        _until(lambda: client.is_model_ready("new"))
        onnx_models.write(tmp_path, "live", onnx_models.identity("FP32", ["N", None]), None, version=2)
        _until(lambda: client.is_model_ready("live", "2"))
        shutil.rmtree(tmp_path / "gone")
        _until(lambda: not client.is_model_ready("gone"))
        time.sleep(0.5)
    finally:
        stop.set()
        worker.join()
    assert not failures, failures[:3]
    assert served > 0
    assert (_infer(client, "new", 4.0) == 4.0).all()
    assert "gone" not in {m.name for m in server.repository.ready_models()}


def test_cold_starts_instances_and_the_cache_are_on_the_metrics_page(tmp_path: Path, start_server: Any) -> None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    onnx_models.write(tmp_path, "lazy", onnx_models.identity("FP32", ["N", None]),
                      ON_DEMAND + "response_cache = true\n")
    server = start_server(tmp_path, http_port=0)
    client = _client(server)
    for _ in range(3):
        _infer(client, "lazy", 2.0)  # a cold start, then two answers from the cache
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10).read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("peregrine_model_on_demand_loads_total", (("model", "lazy"),))] == 1
    assert samples[("peregrine_model_cold_start_requests_total", (("model", "lazy"),))] == 1
    assert samples[("peregrine_model_last_load_seconds", (("model", "lazy"),))] > 0
    assert samples[("peregrine_model_instances", (("model", "lazy"), ("version", "1")))] == 1
    assert samples[("peregrine_response_cache_hits_total", ())] == 2
    assert samples[("peregrine_response_cache_inserts_total", ())] == 1
    assert samples[("peregrine_response_cache_entries", ())] == 1
