"""The dynamic batcher end to end: tritonclient over real gRPC against an in-process server.

Synchronisation is by what the server reports (ModelStatistics over gRPC, the queue-depth gauge on
the metrics port), polled in bounded loops; never by sleeping for a guessed time. To make an instance
busy for a known while, the ``slow`` model runs a MatMul chain whose time grows with the batch; its
input's second dimension is free, and requests with different widths never share a batch, so a long
batch of width 2 or 3 holds the instance while width-1 requests queue behind it.
"""

from __future__ import annotations

import concurrent.futures
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.grpc as tc
from onnx import TensorProto, helper, numpy_helper
from peregrine.server.app import PeregrineServer
from peregrine.server.config import ServerConfig
from support import onnx_models
from tritonclient.utils import InferenceServerException

SLOW_TARGET_SECONDS = 0.6  # how long one long batch of the slow model should hold the instance


def slow_model(width: int = 512, layers: int = 16) -> onnx.ModelProto:
    """Y[n] = mean(tanh(... tanh(mean(X[n]) * W0 ...) W_L)): time proportional to N, any second dim."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("ReduceMean", ["X"], ["m"], axes=[1], keepdims=1),
             helper.make_node("MatMul", ["m", "W0"], ["h0"])]
    inits = [numpy_helper.from_array(rng.standard_normal((1, width)).astype(np.float32), "W0")]
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"W{i + 1}"))
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"W{i + 1}"], [f"p{i}"]))
        nodes.append(helper.make_node("Tanh", [f"p{i}"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("ReduceMean", [f"h{layers}"], ["Y"], axes=[1], keepdims=1))
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", "D"])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 1])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


SLOW_CONFIG = """
max_batch_size = 65536
warmup = false  # a warm-up at the largest batch would take seconds; the fixture calibrates instead
[instance_group]
count = {instances}
[onnxruntime]
intra_op_num_threads = 1
[dynamic_batching]
max_queue_size = {queue}
preserve_ordering = {ordered}
"""

# Batches form only when full (the window is far longer than any test), so batch sizes are exact.
FULL_BATCHES_ONLY = """
max_batch_size = 4
[instance_group]
count = 1
[dynamic_batching]
max_queue_delay_us = 20_000_000
"""


@dataclass
class Served:
    server: PeregrineServer
    url: str
    metrics_url: str
    slow_rows: int  # rows that keep the slow model busy for about SLOW_TARGET_SECONDS

    def client(self) -> tc.InferenceServerClient:
        return tc.InferenceServerClient(self.url)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    repo: Path = tmp_path_factory.mktemp("models")
    slow = slow_model().SerializeToString()
    onnx_models.write(repo, "slow", slow, SLOW_CONFIG.format(instances=1, queue=4, ordered="false"))
    onnx_models.write(repo, "ordered", slow, SLOW_CONFIG.format(instances=2, queue=0, ordered="true"))
    onnx_models.write(repo, "identity", onnx_models.identity("FP32", ["N", 4]), FULL_BATCHES_ONLY)
    onnx_models.write(repo, "gather", onnx_models.gather(4), FULL_BATCHES_ONLY)
    server = PeregrineServer(ServerConfig(model_repository=repo, grpc_port=0, http_port=0))
    port = server.start()
    served = Served(server, f"127.0.0.1:{port}", f"http://127.0.0.1:{server.http_port}/metrics", 0)
    # Calibrate the slow model on this machine: time per row of a long batch.
    client = served.client()
    for _ in range(2):
        start = time.perf_counter()
        client.infer("slow", [tensor("X", np.ones((2048, 2), np.float32))])
        per_row = (time.perf_counter() - start) / 2048
    served.slow_rows = int(min(max(SLOW_TARGET_SECONDS / per_row, 2048), 65536))
    client.close()
    yield served
    server.stop(grace=1.0)


# -- helpers -----------------------------------------------------------------------------------
def tensor(name: str, array: np.ndarray) -> tc.InferInput:
    dt = {np.float32: "FP32", np.int64: "INT64"}[array.dtype.type]
    t = tc.InferInput(name, list(array.shape), dt)
    t.set_data_from_numpy(array)
    return t


class Call:
    """One asynchronous infer: ``result()`` returns the outputs or raises the call's error."""

    def __init__(self) -> None:
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.context: Any = None

    def __call__(self, result: Any, error: InferenceServerException | None) -> None:
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)

    def status(self, timeout: float = 30) -> str:
        """'OK' or the gRPC status name of the error."""
        try:
            self.future.result(timeout)
        except InferenceServerException as e:
            return str(e.status()).removeprefix("StatusCode.")
        return "OK"


def send(client: tc.InferenceServerClient, model: str, inputs: list[tc.InferInput], **kw: Any) -> Call:
    call = Call()
    call.context = client.async_infer(model, inputs, call, **kw)
    return call


def slow_input(rows: int, width: int) -> list[tc.InferInput]:
    return [tensor("X", np.ones((rows, width), np.float32))]


def stats(client: tc.InferenceServerClient, model: str) -> Any:
    return client.get_inference_statistics(model).model_stats[0]


def queue_depth(served: Served, model: str) -> float:
    text = urllib.request.urlopen(served.metrics_url, timeout=5).read().decode()
    m = re.search(rf'^peregrine_queue_depth{{model="{model}",version="1"}} (\S+)$', text, re.M)
    assert m, "no queue depth for the model on the metrics port"
    return float(m.group(1))


def poll(condition: Callable[[], bool], what: str, limit_s: float = 20.0) -> None:
    """Wait until the server reports ``condition`` (bounded: a failure, never a hang)."""
    end = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def occupy_slow_model(served: Served, client: tc.InferenceServerClient, model: str = "slow") -> list[Call]:
    """Two long batches of different widths (never batched together): once one is queued behind the
    other, the instance is busy for about SLOW_TARGET_SECONDS and then again as long."""
    busy = [send(client, model, slow_input(served.slow_rows, 2)), send(client, model, slow_input(served.slow_rows, 3))]
    poll(lambda: queue_depth(served, model) == 1, "one long batch to run and the other to queue")
    return busy


# -- tests -------------------------------------------------------------------------------------
def test_concurrent_clients_are_served_in_batches(served: Served) -> None:
    before = stats(served.client(), "identity")

    def one_client(i: int) -> np.ndarray:
        client = served.client()
        try:
            data = np.full((1, 4), i, np.float32)
            return client.infer("identity", [tensor("INPUT0", data)]).as_numpy("OUTPUT0")
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(one_client, range(8)))
    for i, out in enumerate(outputs):  # each client got its own rows back out of the shared batch
        np.testing.assert_array_equal(out, np.full((1, 4), i, np.float32))
    after = stats(served.client(), "identity")
    assert after.execution_count - before.execution_count == 2
    assert after.inference_count - before.inference_count == 8
    by_size = {b.batch_size: b.compute_infer.count for b in after.batch_stats}
    assert by_size.get(4, 0) >= 2 and max(by_size) == 4


def test_a_request_carrying_several_rows_counts_them_against_the_batch(served: Served) -> None:
    client = served.client()
    before = stats(client, "identity")
    calls = [send(client, "identity", [tensor("INPUT0", np.full((n, 4), n, np.float32))]) for n in (3, 1)]
    results = [c.future.result(30) for c in calls]
    assert [r.as_numpy("OUTPUT0").shape for r in results] == [(3, 4), (1, 4)]
    after = stats(client, "identity")
    assert after.execution_count - before.execution_count == 1
    assert after.inference_count - before.inference_count == 4


def test_expired_and_cancelled_requests_are_never_executed(served: Served) -> None:
    client = served.client()
    before = stats(client, "slow")
    busy = occupy_slow_model(served, client)

    cancelled = send(client, "slow", slow_input(1, 1))
    poll(lambda: queue_depth(served, "slow") == 2, "the request to be cancelled to queue")
    cancelled.context.cancel()
    poll(lambda: queue_depth(served, "slow") == 1, "the cancelled request to leave the queue")

    # Both expire well before the long batch ends (or they would jump the queued one by deadline order).
    by_call_deadline = send(client, "slow", slow_input(1, 1), client_timeout=0.1)
    by_queue_timeout = send(client, "slow", slow_input(1, 1), timeout=100_000)  # microseconds
    assert by_call_deadline.status() == "DEADLINE_EXCEEDED"
    assert by_queue_timeout.status() == "DEADLINE_EXCEEDED"
    assert cancelled.status() == "CANCELLED"
    assert [c.status() for c in busy] == ["OK", "OK"]

    after = stats(client, "slow")
    assert after.execution_count - before.execution_count == 2  # only the two long batches ran
    assert after.inference_count - before.inference_count == 2 * served.slow_rows
    assert after.inference_stats.fail.count - before.inference_stats.fail.count >= 1  # the queue timeout


def test_a_full_queue_answers_unavailable_at_once(served: Served) -> None:
    client = served.client()
    before = stats(client, "slow")
    busy = occupy_slow_model(served, client)
    queued = [send(client, "slow", slow_input(1, 1)) for _ in range(3)]
    poll(lambda: queue_depth(served, "slow") == 4, "the queue to fill (max_queue_size = 4)")
    rejected = send(client, "slow", slow_input(1, 1))
    assert rejected.status() == "UNAVAILABLE"
    # Answered while the model was still busy with the first long batch, not after the queue drained.
    assert stats(client, "slow").execution_count - before.execution_count <= 1
    assert [c.status() for c in busy + queued] == ["OK"] * 5
    after = stats(client, "slow")
    assert after.inference_count - before.inference_count == 2 * served.slow_rows + 3


def test_a_poisoned_request_fails_alone_and_the_rest_of_its_batch_is_served(served: Served) -> None:
    """A request whose content breaks the model (an index out of range) fails its batch of four; each request
    of that batch then runs alone, so only the poisoned one fails (issue 14, finding 3)."""
    client = served.client()
    data = np.arange(16, dtype=np.float32).reshape(4, 4)

    def gather(row: int, index: int) -> Call:
        return send(client, "gather", [tensor("DATA", data[row : row + 1]),
                                       tensor("INDEX", np.array([[index]], np.int64))])

    before = stats(client, "gather")
    poisoned = [gather(0, 1), gather(1, 99), gather(2, 2), gather(3, 3)]  # one batch of 4, then each alone
    assert [c.status() for c in poisoned] == ["OK", "INTERNAL", "OK", "OK"]
    assert [poisoned[i].future.result().as_numpy("OUTPUT0")[0, 0] for i in (0, 2, 3)] == [1.0, 10.0, 15.0]
    good = [gather(r, r) for r in range(4)]
    assert [c.status() for c in good] == ["OK"] * 4
    assert [c.future.result().as_numpy("OUTPUT0")[0, 0] for c in good] == [0.0, 5.0, 10.0, 15.0]
    after = stats(client, "gather")
    assert after.execution_count - before.execution_count == 3 + 1  # three alone, then a batch; the failed one: none
    assert after.inference_count - before.inference_count == 3 + 4
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == 1
    assert after.inference_stats.success.count - before.inference_stats.success.count == 7


def test_preserve_ordering_answers_each_stream_in_request_order(served: Served) -> None:
    # Two instances: a short request finishes while the long one before it still runs.
    clients = [served.client(), served.client()]
    answers: list[list[tuple[str, int]]] = [[], []]
    done = [concurrent.futures.Future(), concurrent.futures.Future()]
    plan = [(served.slow_rows // 4, 2), (1, 1), (served.slow_rows // 4, 3), (1, 1), (2, 1)]

    def collect(stream: int) -> Callable[[Any, Any], None]:
        def callback(result: Any, error: Any) -> None:
            if error is not None:
                done[stream].set_exception(error)
                return
            answers[stream].append((result.get_response().id, result.as_numpy("Y").shape[0]))
            if len(answers[stream]) == len(plan):
                done[stream].set_result(None)

        return callback

    for s, c in enumerate(clients):
        c.start_stream(collect(s))
    for i, (rows, width) in enumerate(plan):
        for s, c in enumerate(clients):
            c.async_stream_infer("ordered", slow_input(rows, width), request_id=f"{s}-{i}")
    for f in done:
        f.result(60)
    for c in clients:
        c.stop_stream()
    for s in range(2):
        assert answers[s] == [(f"{s}-{i}", rows) for i, (rows, _) in enumerate(plan)]
